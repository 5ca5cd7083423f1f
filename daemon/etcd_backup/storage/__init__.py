"""Storage backends behind one protocol; `open_store` is the only provider switch."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from ..config import StorageConfig
from .base import Debris, ObjectInfo, Retention, SnapshotStore, get_bytes, put_bytes

__all__ = ["Debris", "ObjectInfo", "Retention", "SnapshotStore", "get_bytes", "open_store", "put_bytes"]


def open_store(cfg: StorageConfig) -> SnapshotStore:
    url = urlparse(cfg.url)
    if url.scheme == "file":
        # file://./rel and file:///abs both work; netloc holds the first part of a relative path.
        return _local(Path(unquote(url.netloc + url.path)))
    from .s3 import S3Store

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
    )


def _local(path: Path) -> SnapshotStore:
    from .local import LocalStore

    return LocalStore(path)
