"""Where the configuration comes from: the file's path and the environment's names. Apart from
`config` (which validates it all) so that the container's health probe can find the listen address
without importing pydantic every 30 seconds."""

from __future__ import annotations

import os
from pathlib import Path

ENV_PREFIX = "ETCD_BACKUP_"
ENV_CONFIG = "ETCD_BACKUP_CONFIG"
DEFAULT_CONFIG_PATH = Path("/etc/etcd-backup/config.toml")
DEFAULT_LISTEN = "127.0.0.1:9479"


def resolve_path(cli_path: str | None) -> Path | None:
    if cli_path:
        return Path(cli_path)
    if os.environ.get(ENV_CONFIG):
        return Path(os.environ[ENV_CONFIG])
    if DEFAULT_CONFIG_PATH.is_file():
        return DEFAULT_CONFIG_PATH
    return None
