"""The storage contract every backend implements."""

from __future__ import annotations

import builtins
import io
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO, Protocol


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str  # relative to the store's prefix
    size: int
    modified: datetime
    sha256: str | None = None  # hex digest of the whole object, when the backend knows it


@dataclass(frozen=True, slots=True)
class Debris:
    """Something half-written: a partial file or an unfinished multipart upload."""

    key: str
    started: datetime
    handle: str  # backend-specific: a path or an upload id


class SnapshotStore(Protocol):
    """Object storage under one prefix. Keys are relative and use '/'.

    `put` reads `source` to EOF; the object becomes visible only when the whole source was read.
    If reading the source raises (a snapshot that failed verification), nothing is left behind
    and the exception propagates. `list` is complete or raises StorageError: never a partial
    listing, so retention never acts on one.
    """

    description: str

    def put(self, key: str, source: BinaryIO) -> ObjectInfo: ...

    def get(self, key: str, dest: BinaryIO) -> int: ...

    def list(self, prefix: str = "") -> list[ObjectInfo]: ...

    def delete(self, key: str) -> None: ...

    def ping(self) -> None: ...

    def list_debris(self) -> builtins.list[Debris]: ...  # `list` is a method here

    def remove_debris(self, debris: Debris) -> None: ...


def put_bytes(store: SnapshotStore, key: str, data: bytes) -> ObjectInfo:
    return store.put(key, io.BytesIO(data))


def get_bytes(store: SnapshotStore, key: str, limit: int = 16 * 1024 * 1024) -> bytes:
    """Small objects only (manifests): refuse to buffer more than `limit` bytes."""
    buf = _LimitedBuffer(limit)
    store.get(key, buf)
    return buf.getvalue()


class _LimitedBuffer(io.BytesIO):
    def __init__(self, limit: int) -> None:
        super().__init__()
        self._limit = limit

    def write(self, data: bytes) -> int:  # type: ignore[override]
        if self.tell() + len(data) > self._limit:
            from ..errors import IntegrityError

            raise IntegrityError(f"object larger than {self._limit} bytes where a manifest was expected")
        return super().write(data)
