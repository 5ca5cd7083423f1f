"""The newest spooled upload, kept readable after its spool file is gone: the second copy's source.

A spool file given to `put` holds exactly the bytes of the object (the SpooledFile contract) and
is deleted when the snapshot ends. `KeepSpool` wraps the primary store: once a put with a spooled
file has succeeded, it holds an open descriptor on that file, so that the copy is made from local
disk instead of downloading the object again. Only one is held: the next put drops it (a copy
target that is down never piles up deleted spool files on the disk).
"""

from __future__ import annotations

import builtins
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from ..errors import Cancelled
from .base import Capabilities, Debris, Digest, ObjectInfo, PartDigests, SnapshotStore, SpooledFile


class _Untracked:
    def get(self, number: int) -> bytes | None:
        return None


class KeptFile:
    """A complete local file behind an open descriptor, as a SpooledFile (its name may be gone)."""

    def __init__(self, key: str, fd: int, size: int) -> None:
        self.key = key
        self.size = size
        self._fd = fd
        self.cancel: threading.Event | None = None

    @property
    def path(self) -> Path:
        # Opens the file even once unlinked (Linux): each reader gets its own offset.
        return Path(f"/proc/self/fd/{self._fd}")

    def wait_bytes(self, target: int) -> tuple[int, bool]:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("copy cancelled (shutting down)")
        return self.size, True

    def wait_complete(self) -> Path:
        return self.path

    def part_digests(self, part_size: int, new: object) -> _Untracked:
        return _Untracked()  # nothing is being appended: the store reads each part

    def sent(self, start: int, length: int) -> None:
        pass  # this file is the copy's source, whole until it is closed

    def pace(self, ahead: int) -> None:
        pass  # complete already: no writer to hold back

    def at(self, start: int, length: int) -> int:
        return start

    def reader(self) -> BinaryIO:
        return open(self.path, "rb")

    def close(self) -> None:
        try:
            os.close(self._fd)
        except OSError:
            pass


class _Whole:
    """A spooled file that stays whole while the store sends it: it is kept for the copy after."""

    def __init__(self, inner: SpooledFile) -> None:
        self._inner = inner

    @property
    def path(self) -> Path:
        return self._inner.path

    def wait_bytes(self, target: int) -> tuple[int, bool]:
        return self._inner.wait_bytes(target)

    def wait_complete(self) -> Path:
        return self._inner.wait_complete()

    def part_digests(self, part_size: int, new: Callable[[], Digest]) -> PartDigests:
        return self._inner.part_digests(part_size, new)

    def sent(self, start: int, length: int) -> None:
        pass

    def pace(self, ahead: int) -> None:
        pass  # nothing sent is freed, so a writer waiting for that would wait forever

    def at(self, start: int, length: int) -> int:
        return self._inner.at(start, length)  # not paced, so never a ring: the file stays whole


class KeepSpool:
    """A SnapshotStore that is `inner`, keeping the newest spooled object's file (see above)."""

    def __init__(self, inner: SnapshotStore) -> None:
        self.inner = inner
        self.description = inner.description
        self.capabilities: Capabilities = inner.capabilities
        self._kept: KeptFile | None = None
        self._lock = threading.Lock()

    def take(self, key: str) -> KeptFile | None:
        """The kept file of `key`, now the caller's to close; None if it is not the one kept."""
        with self._lock:
            kept, self._kept = (self._kept, None) if self._kept and self._kept.key == key else (None, self._kept)
        return kept

    def close(self) -> None:
        self._keep(None)

    def _keep(self, kept: KeptFile | None) -> None:
        with self._lock:
            old, self._kept = self._kept, kept
        if old is not None:
            old.close()

    def put(self, key: str, source: BinaryIO, *, spooled: SpooledFile | None = None) -> ObjectInfo:
        if spooled is not None:
            self._keep(None)  # a new snapshot: the previous one's file goes
        info = self.inner.put(key, source, spooled=_Whole(spooled) if spooled is not None else None)
        if spooled is not None:
            try:
                fd = os.open(spooled.path, os.O_RDONLY)
            except OSError:
                return info  # gone already: the copy downloads the object instead
            if os.fstat(fd).st_size == info.size:
                self._keep(KeptFile(key, fd, info.size))
            else:
                os.close(fd)
        return info

    def get(self, key: str, dest: BinaryIO) -> int:
        return self.inner.get(key, dest)

    def list(self, prefix: str = "", *, start_after: str | None = None) -> builtins.list[ObjectInfo]:
        return self.inner.list(prefix, start_after=start_after)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def ping(self) -> None:
        self.inner.ping()

    def list_debris(self) -> builtins.list[Debris]:
        return self.inner.list_debris()

    def remove_debris(self, debris: Debris) -> None:
        self.inner.remove_debris(debris)


__all__ = ["KeepSpool", "KeptFile"]
