"""The container's health check: `python -m etcd_backup.probe` asks the daemon's /healthz where it
listens, found as the daemon finds it (ETCD_BACKUP_SERVER__LISTEN, else `[server] listen` of the
configuration file named by ETCD_BACKUP_CONFIG or at its default path, else the default). Only that
key is read: the probe neither validates the rest nor prints any of it. Exit 0 when it answers."""

from __future__ import annotations

import os
import sys
import tomllib
import urllib.request

from .configfile import DEFAULT_LISTEN, ENV_PREFIX, resolve_path

# An address the daemon binds on every interface is asked on loopback.
_ANY = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]", "": "127.0.0.1"}


def listen_address() -> str:
    from_env = os.environ.get(f"{ENV_PREFIX}SERVER__LISTEN")
    if from_env:
        return from_env
    path = resolve_path(None)
    if path is not None:
        with path.open("rb") as f:
            server = tomllib.load(f).get("server", {})
        if isinstance(server, dict) and isinstance(server.get("listen"), str):
            return str(server["listen"])
    return DEFAULT_LISTEN


def health_url(listen: str) -> str:
    host, _, port = listen.rpartition(":")
    return f"http://{_ANY.get(host, host)}:{port}/healthz"


def main() -> int:
    try:
        url = health_url(listen_address())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        print(f"etcd-backup probe: reading the configuration: {exc}", file=sys.stderr)
        return 1
    try:
        with urllib.request.urlopen(url, timeout=4) as resp:
            resp.read()
    except OSError as exc:
        print(f"etcd-backup probe: {url}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
