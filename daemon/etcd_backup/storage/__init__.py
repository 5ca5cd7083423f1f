"""Storage backends behind one protocol; `open_store` is the only provider switch."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from ..config import StorageConfig
from ..errors import ConfigError
from .base import Debris, ObjectInfo, Retention, SnapshotStore, get_bytes, put_bytes

__all__ = [
    "Debris",
    "ObjectInfo",
    "Retention",
    "SnapshotStore",
    "get_bytes",
    "open_copy_store",
    "open_store",
    "put_bytes",
]


def open_copy_store(cfg: StorageConfig) -> SnapshotStore | None:
    """The second store (`storage.copy_to`), or None without one."""
    copy = cfg.copy_storage()
    if copy is None:
        return None
    try:
        setting = "storage.copy_endpoint_url" if cfg.copy_endpoint_url else "storage.endpoint_url (the copy's too)"
        return open_store(copy, profile=cfg.copy_profile, endpoint_setting=setting, copy=True)
    except ConfigError as exc:
        raise ConfigError(f"storage.copy_profile: {exc}") from None


def open_store(
    cfg: StorageConfig,
    *,
    profile: str | None = None,
    endpoint_setting: str = "storage.endpoint_url",
    copy: bool = False,
) -> SnapshotStore:
    """`copy`: the second store, whose failures wait for the next run instead of long retries."""
    url = urlparse(cfg.url)
    if url.scheme == "file":
        # file://./rel and file:///abs both work; netloc holds the first part of a relative path.
        return _local(Path(unquote(url.netloc + url.path)))
    from .s3 import COPY_ATTEMPTS, S3Store

    extra = {"attempts": COPY_ATTEMPTS} if copy else {}
    return S3Store(
        url.netloc,
        url.path,
        endpoint_url=cfg.endpoint_url,
        region=cfg.region,
        sse=cfg.sse,
        kms_key_id=cfg.kms_key_id,
        storage_class=cfg.storage_class,
        part_size=cfg.part_size,
        concurrency=cfg.concurrency,
        verify_tls=not cfg.insecure_skip_tls_verify,
        ca_file=cfg.ca_file,
        addressing_style=cfg.addressing_style,
        checksum=cfg.checksum,
        object_lock=cfg.object_lock,
        lock_for=cfg.lock_for,
        timeout=cfg.timeout,
        profile=profile,
        endpoint_setting=endpoint_setting,
        **extra,
    )


def _local(path: Path) -> SnapshotStore:
    from .local import LocalStore

    return LocalStore(path)
