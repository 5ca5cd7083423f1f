"""In-process backend: objects in a dict. For tests of the services and as the reference of the contract."""

from __future__ import annotations

import builtins
import hashlib
import threading
from datetime import UTC, datetime
from typing import BinaryIO

from ..errors import ObjectNotFound, StorageError
from .base import Capabilities, Debris, ObjectInfo, SpooledFile

_CHUNK = 1024 * 1024


class MemoryStore:
    def __init__(self, name: str = "memory") -> None:
        self.description = f"memory://{name}"
        self.capabilities = Capabilities()
        self._objects: dict[str, tuple[bytes, datetime]] = {}
        self._lock = threading.Lock()

    def put(self, key: str, source: BinaryIO, *, spooled: SpooledFile | None = None) -> ObjectInfo:
        # Read to EOF before anything is stored: a source that raises leaves nothing behind.
        chunks: list[bytes] = []
        while chunk := source.read(_CHUNK):
            chunks.append(chunk)
        data = b"".join(chunks)
        modified = datetime.now(UTC)
        with self._lock:
            self._objects[_check(key)] = (data, modified)
        return ObjectInfo(key, len(data), modified, hashlib.sha256(data).hexdigest())

    def get(self, key: str, dest: BinaryIO) -> int:
        with self._lock:
            found = self._objects.get(key)
        if found is None:
            raise ObjectNotFound(f"{self.description}: {key} not found")
        dest.write(found[0])
        return len(found[0])

    def list(self, prefix: str = "", *, start_after: str | None = None) -> list[ObjectInfo]:
        with self._lock:
            items = sorted(self._objects.items())
        return [
            ObjectInfo(key, len(data), modified)
            for key, (data, modified) in items
            if key.startswith(prefix) and (start_after is None or key > start_after)
        ]

    def delete(self, key: str) -> None:
        with self._lock:
            self._objects.pop(key, None)

    def ping(self) -> None:
        return None

    def list_debris(self) -> builtins.list[Debris]:  # `list` is a method here
        return []  # a put either stores the whole object or nothing

    def remove_debris(self, debris: Debris) -> None:
        return None


def _check(key: str) -> str:
    if not key or key.startswith("/") or any(p in {"", ".", ".."} for p in key.split("/")):
        raise StorageError(f"invalid object key {key!r}")
    return key
