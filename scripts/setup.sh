#!/usr/bin/env bash
# Creates .venv and installs etcd-backup with what it needs. Sourced by the other scripts.
# EXTRAS selects the optional dependencies (default: etcd, i.e. the etcd 3.5 binaries).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
EXTRAS="${EXTRAS:-etcd}"

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "etcd-backup needs Python >= 3.11 (set PYTHON=/path/to/python3.11)" >&2
    exit 2
fi
if [ ! -x "$ROOT/.venv/bin/python" ]; then
    "$PYTHON" -m venv "$ROOT/.venv"
fi
# uv (from PyPI) downloads, unpacks and compiles in parallel: this script takes 45 s on a clean
# clone with it, 87 s with pip. It does not read pip's configuration, so where it cannot install
# (a mirror only pip knows of), pip does, as before.
PIP=("$ROOT/.venv/bin/python" -m pip install --quiet --disable-pip-version-check)
if "${PIP[@]}" uv >/dev/null 2>&1 \
    && "$ROOT/.venv/bin/uv" pip install --quiet --python "$ROOT/.venv/bin/python" --compile-bytecode \
        -e "$ROOT[$EXTRAS]"; then
    :
else
    echo "setup: uv could not install; installing with pip" >&2
    "${PIP[@]}" --upgrade pip
    "${PIP[@]}" -e "$ROOT[$EXTRAS]"
fi
# Bytecode for the editable install's own modules: with PYTHONDONTWRITEBYTECODE set (as it is on
# many CI hosts) every etcd-backup process would compile them from source, about 0.3 CPU-s a start.
"$ROOT/.venv/bin/python" -m compileall -q "$ROOT/daemon/etcd_backup" >/dev/null
