"""The storage contract every backend implements, and what a backend can do beyond it."""

from __future__ import annotations

import builtins
import io
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
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


@dataclass(frozen=True, slots=True)
class Retention:
    """An object's S3 Object Lock: it cannot be deleted (or overwritten) before `until`."""

    mode: str  # "governance" or "compliance"
    until: datetime


class LockInspector(Protocol):
    def retention(self, key: str) -> Retention | None:
        """The lock on the object's current version, or None when it is not (or no longer) locked."""
        ...


class ServerCopy(Protocol):
    def copy_from(self, source: object, key: str, *, size: int, sha256: str) -> ObjectInfo | None:
        """`key` of `source` copied to the same key here; None when this store cannot copy from
        that one (then the caller streams the bytes)."""
        ...


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a store does with a snapshot's spool file, declared by the store (never probed).

    `spool_dir`: spool snapshots there (the store's own filesystem), so the finished spool file
    can become the object without a copy. `links_spool`: it does become the object (hard link),
    so the spool is worth writing back to disk while it grows.
    """

    spool_dir: str | None = None
    links_spool: bool = False
    # With S3 Object Lock on, every object written is locked; `delete` then raises ObjectLocked
    # until the lock has passed, and this tells how long an object stays.
    locks: LockInspector | None = None
    # Copies objects from another store without the bytes passing through this host (S3 to S3
    # on one endpoint), proven against the SHA-256 the caller expects.
    server_copy: ServerCopy | None = None


class Digest(Protocol):
    def update(self, data: bytes | memoryview, /) -> None: ...

    def digest(self) -> bytes: ...


class PartDigests(Protocol):
    def get(self, number: int) -> bytes | None:
        """The digest of part `number` (1-based) once its bytes are written; None for a part
        this tracker does not cover (the caller reads it from the file)."""
        ...


class SpooledFile(Protocol):
    """An object's bytes as a local file that is still being written (the snapshot spool).

    Given to `put` beside the stream, it lets a store send ranges of the file as they arrive or
    link the finished file instead of copying it. `wait_complete` returns only once every byte is
    written and verified, and raises if the snapshot failed: nothing may become visible before.
    """

    @property
    def path(self) -> Path: ...

    def wait_bytes(self, target: int) -> tuple[int, bool]:
        """Block until `target` bytes are written or the file ended: (bytes written, ended)."""
        ...

    def wait_complete(self) -> Path: ...

    def part_digests(self, part_size: int, new: Callable[[], Digest]) -> PartDigests:
        """Digests of each `part_size` range, computed by the writer from the bytes it appends (no
        second read of the file). A part is ready when `wait_bytes` has seen its end."""
        ...

    def sent(self, start: int, length: int) -> None:
        """The store holds [start, start+length) for good and will not read it again. A file that
        nobody else reads afterwards may free those bytes (a ciphertext spool does); others ignore it."""
        ...

    def pace(self, ahead: int) -> None:
        """The caller calls `sent` for every range it sends: a writer that may wait (a ciphertext
        spool's, never etcd's stream) can stay less than `ahead` bytes past what was sent. The
        caller sends ranges of one size (the last may be shorter) starting at multiples of it, and
        `ahead` is a multiple of that size: the file may then be a ring of `ahead` bytes."""
        ...

    def at(self, start: int, length: int) -> int:
        """The file offset of the written, unsent range [start, start+length) (itself, unless the
        file is a ring)."""
        ...


class SnapshotStore(Protocol):
    """Object storage under one prefix. Keys are relative and use '/'.

    `put` reads `source` to EOF; the object becomes visible only when the whole source was read.
    If reading the source raises (a snapshot that failed verification), nothing is left behind
    and the exception propagates. With `spooled`, the same bytes are also a local file (see
    SpooledFile) and the store may read that instead.

    `delete` removes the object for good (on a versioned bucket every version, never only a
    delete marker); ObjectLocked if a lock forbids it yet.

    `list` returns keys below `prefix` in lexicographic order; with `start_after`, only keys
    greater than it (a relative key, as S3's StartAfter). It is complete or raises StorageError:
    never a partial listing, so retention never acts on one.
    """

    description: str
    capabilities: Capabilities

    def put(self, key: str, source: BinaryIO, *, spooled: SpooledFile | None = None) -> ObjectInfo: ...

    def get(self, key: str, dest: BinaryIO) -> int: ...

    def list(self, prefix: str = "", *, start_after: str | None = None) -> list[ObjectInfo]: ...

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
    """Bytes of a small object, at most `limit`. Not seekable, so that a store reads it in one
    request (S3: one GET, where a seekable target gets a managed, ranged download)."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self._limit = limit

    def seekable(self) -> bool:
        return False

    def write(self, data: bytes) -> int:  # type: ignore[override]
        if self.tell() + len(data) > self._limit:
            from ..errors import IntegrityError

            raise IntegrityError(f"object larger than {self._limit} bytes where a manifest was expected")
        return super().write(data)
