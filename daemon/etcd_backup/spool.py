"""A spool file written by one thread and read, while it grows, by another.

The snapshot stream lands here; the uploader reads behind the writer. The reader does not
return EOF until the snapshot has been verified (`release`), so an upload can only complete
for a good snapshot; `fail` makes the reader raise, which aborts the upload. The file itself
is a scratch file (`scratch.Kind.SPOOL`): locked by its writer, swept when abandoned.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from . import scratch
from .errors import OperationalError
from .storage.base import Digest

_FLUSH_EVERY = 32 * 1024 * 1024
_NEVER = 1 << 62
_IOV_MAX = 1024  # buffers per writev (Linux's IOV_MAX)


_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02


@functools.cache
def _fallocate() -> Callable[[int, int, int, int], int] | None:
    try:
        fn = ctypes.CDLL(None, use_errno=True).fallocate
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fn.restype = ctypes.c_int
    return fn


def punch(fd: int, start: int, length: int) -> bool:
    """Free [start, start+length) of the file (it reads as zeros after): its page-cache pages go
    back at once, without being written out. False where the filesystem cannot (nothing changed)."""
    fn = _fallocate()
    return fn is not None and fn(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, start, length) == 0


class _Flusher:
    """Writes back what has been spooled so far, in the background. When the spool file itself
    becomes the stored object (file:// links it), its final fsync then has little left to flush
    instead of the whole snapshot, and the disk works while the stream is still arriving.

    With `drop`, what has been written back also leaves the page cache (nobody reads it here
    again), so a 1 GiB snapshot reuses a few MiB of pages instead of taking 1 GiB of fresh ones
    (and evicting what the node's etcd keeps cached)."""

    def __init__(self, fd: int, *, drop: bool = False) -> None:
        self._fd = fd
        self._drop = drop
        self._written = 0
        self._dropped = 0
        self._pending = 0
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="spool-flush", daemon=True)
        self._thread.start()

    def wrote(self, n: int) -> None:
        self._written += n
        self._pending += n
        if self._pending >= _FLUSH_EVERY:
            self._pending = 0
            self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stopping:
                return
            upto = self._written  # on the disk once fdatasync returns
            try:
                os.fdatasync(self._fd)
            except OSError:
                return  # the writer reports disk errors; this is only an optimisation
            if self._drop:
                try:
                    os.posix_fadvise(self._fd, self._dropped, upto - self._dropped, os.POSIX_FADV_DONTNEED)
                except OSError:
                    self._drop = False  # a filesystem that cannot: keep writing back, stop dropping
                self._dropped = upto

    def close(self) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join()


class PartTracker:
    """Digests of the consecutive `part_size` ranges of a spool, from offset `start` on, computed
    from the buffers as they are appended: the store's part checksums cost no second read of the
    file, and they are taken from the very bytes that were hashed for the snapshot's own check."""

    def __init__(self, part_size: int, new: Callable[[], Digest], start: int) -> None:
        self._size = part_size
        self._new = new
        self._index = start // part_size  # 0-based part being filled
        self._pos = start  # next offset to digest
        self._digest = new()
        self._filled = 0
        self._done: dict[int, bytes] = {}

    def feed(self, views: Sequence[memoryview], offset: int) -> None:
        """`views` were appended at `offset`."""
        for view in views:
            end = offset + len(view)
            if end > self._pos:
                piece = view[self._pos - offset :] if offset < self._pos else view
                while piece:
                    take = piece[: self._size - self._filled]
                    self._digest.update(take)
                    self._filled += len(take)
                    piece = piece[len(take) :]
                    if self._filled == self._size:
                        self._close_part()
                self._pos = end
            offset = end

    def finish(self) -> None:
        if self._filled:
            self._close_part()

    def _close_part(self) -> None:
        self._done[self._index] = self._digest.digest()
        self._index += 1
        self._digest = self._new()
        self._filled = 0

    def get(self, number: int) -> bytes | None:
        return self._done.get(number - 1)


class Spool:
    """`durable`: the file becomes the stored object (written back as it grows). `disposable`: no
    one here reads what the store has: the ciphertext of an upload, not the plaintext the
    structural check reads at the end. Its pages are then given back or reused as it goes: written
    over as a ring behind what was sent when a consumer paces it (see `pace`), punched out once
    sent otherwise (see `sent`), or, when durable, dropped from the page cache once written back.
    A disposable spool's writer also waits for a consumer that paces it: it is never etcd's
    stream, which nothing may hold back."""

    def __init__(self, directory: str | None, prefix: str, *, durable: bool = False, disposable: bool = False) -> None:
        self._file = scratch.create(directory, scratch.Kind.SPOOL, prefix)
        self._disposable = disposable and not durable
        self.path = self._file.path
        fd = self._fd = self._file.fd
        lock = threading.RLock()
        self._cond = threading.Condition(lock)
        self._room = threading.Condition(lock)  # where a paced writer waits
        self._sent = 0  # bytes sent, in any order
        self._low = 0  # every byte below it was sent
        self._sent_ahead: dict[int, int] = {}  # ranges sent above `_low`: start -> length
        self._ahead = _NEVER
        self._ring = 0  # > 0: the file is a ring of that many bytes (see pace); -1: decided against
        self.written = 0
        # The smallest `written` a waiter waits for: appends below it wake nobody (a part upload
        # waits for 8 MiB, not for each of the 1 MiB appends on the way).
        self._wake_at = _NEVER
        self._finished = False
        self._released = False
        self._error: BaseException | None = None
        self._flusher = _Flusher(fd, drop=disposable) if durable else None
        self._trackers: list[PartTracker] = []

    def append(self, data: bytes | memoryview) -> None:
        self.append_all([data], len(data))

    def append_all(self, buffers: Sequence[bytes | memoryview], size: int) -> None:
        """Append the buffers in order (``size`` is their total length) with vectored writes."""
        if self._error is not None:
            # The upload failed already: stop receiving a snapshot nobody will store.
            raise self._error
        views = [memoryview(b) for b in buffers]
        ring = self._ring_size()
        while views:
            # A ring takes at most a ring's worth per write: it must not overwrite its own bytes.
            piece, views = _split(views, ring) if ring > 0 else (views, [])
            n = sum(len(v) for v in piece)
            with self._cond:
                if self._ahead != _NEVER:
                    self._wait_room(n, ring)
                offset = self.written
            try:
                pos = offset % ring if ring > 0 else offset
                if ring > 0 and pos + n > ring:
                    head, tail = _split(piece, ring - pos)
                    self._write_at(head, pos)
                    self._write_at(tail, 0)
                else:
                    self._write_at(piece, pos)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                    raise OperationalError(
                        f"spool {self.path.parent} is full after {self.written} bytes: {exc.strerror}; "
                        "free space there or point storage.spool_dir at a larger filesystem"
                    ) from exc
                raise OperationalError(f"writing spool {self.path}: {exc.strerror}") from exc
            with self._cond:
                # Digests first: a part is ready for the store as soon as `written` covers it.
                for tracker in self._trackers:
                    tracker.feed(piece, offset)
                self.written += n
                if self.written >= self._wake_at:
                    self._wake_at = _NEVER
                    self._cond.notify_all()
        if self._flusher is not None:
            self._flusher.wrote(size)

    def _write_at(self, views: list[memoryview], pos: int) -> None:
        left = list(views)
        while left:
            n = os.pwritev(self._fd, left[:_IOV_MAX], pos)
            pos += n
            # A short write (rare on a regular file) leaves a tail to retry.
            while left and n >= len(left[0]):
                n -= len(left[0])
                left.pop(0)
            if n:
                left[0] = left[0][n:]

    def _ring_size(self) -> int:
        """Decided by the writer itself, at its first append once paced, so that none of its writes
        can be under way at a plain offset: a ring if all written so far lies in the first `ahead`
        bytes, otherwise never (sent ranges are punched out instead)."""
        with self._cond:
            if self._ring == 0 and self._ahead != _NEVER:
                self._ring = self._ahead if self.written <= self._ahead else -1
            return self._ring

    def finish(self) -> None:
        with self._cond:
            for tracker in self._trackers:
                tracker.finish()
            self._finished = True
            self._cond.notify_all()

    def part_digests(self, part_size: int, new: Callable[[], Digest]) -> PartTracker:
        """Track the digests of each `part_size` range from here on (parts already begun are
        not covered: their `get` is None)."""
        with self._cond:
            start = -(-self.written // part_size) * part_size
            tracker = PartTracker(part_size, new, start)
            self._trackers.append(tracker)
            return tracker

    def sent(self, start: int, length: int) -> None:
        """The store holds these bytes for good. A disposable spool gives their pages back or, as a
        ring, writes over them, so a 1 GiB upload keeps a few parts' worth of page cache instead
        of 1 GiB: on a VM whose every fresh page costs a fault in the host, that is about 2 CPU-s
        per GiB (README, Encryption)."""
        if not self._disposable:
            return
        with self._cond:
            ring = self._ring > 0
        if not ring:
            punch(self._fd, start, length)
        with self._cond:
            self._sent += length
            self._sent_ahead[start] = length
            while self._low in self._sent_ahead:
                self._low += self._sent_ahead.pop(self._low)
            self._room.notify_all()

    def pace(self, ahead: int) -> None:
        """The consumer sends what is written and calls `sent` for every range, in any order, so
        a disposable spool's writer may wait until it is less than `ahead` bytes past what was
        sent. A store slower than etcd then costs the spool `ahead` bytes of ciphertext, not a
        second copy of the snapshot beside the plaintext. `ahead` must hold the parts the consumer
        sends at once plus the one being filled, or its threads wait for each other's parts.

        The ranges sent are of one size (the last may be shorter), each starting at a multiple of
        it, and `ahead` is a multiple of that size: the file then becomes a ring of `ahead` bytes
        whose pages are written over again and again (a page written over costs a copy, a fresh
        one a fault in the host as well), and the consumer finds a range at `at(start, length)`."""
        if self._disposable:
            with self._cond:
                self._ahead = ahead

    def at(self, start: int, length: int) -> int:
        """Where in the file the written, unsent bytes [start, start+length) are."""
        with self._cond:
            ring = self._ring
            if ring <= 0:
                return start
            pos = start % ring
            if start < self._low or start + length > self.written or pos + length > ring:
                raise ValueError(f"spool range {start}+{length} is not in the ring ({self._low}..{self.written})")
            return pos

    def _wait_room(self, n: int, ring: int) -> None:
        """Under the lock, until `n` more bytes may be written: a ring writes over sent bytes only;
        otherwise the writer stays less than `ahead` past the bytes sent."""
        while self._error is None and (
            self.written + n > self._low + ring if ring > 0 else self.written - self._sent >= self._ahead
        ):
            self._room.wait()
        if self._error is not None:
            raise self._error

    def release(self) -> None:
        with self._cond:
            self._released = True
            self._cond.notify_all()

    def fail(self, exc: BaseException) -> None:
        with self._cond:
            if self._error is None:
                self._error = exc
            self._cond.notify_all()
            self._room.notify_all()

    def reader(self) -> SpoolReader:
        return SpoolReader(self)

    def wait_complete(self) -> Path:
        """Block until every byte is written and verified; the path then holds the whole stream."""
        with self._cond:
            while not (self._finished and self._released):
                if self._error is not None:
                    raise self._error
                self._cond.wait()
            if self._error is not None:
                raise self._error
        return self.path

    def wait_bytes(self, target: int) -> tuple[int, bool]:
        """Block until `target` bytes are spooled or the stream ended: (bytes spooled, ended)."""
        with self._cond:
            while True:
                if self._error is not None:
                    raise self._error
                if self.written >= target or self._finished:
                    return self.written, self._finished
                self._wake_at = min(self._wake_at, target)
                self._cond.wait()

    def _wait_for(self, pos: int) -> int:
        """Bytes available at `pos`, 0 at a released end; raises the failure if there is one."""
        with self._cond:
            while True:
                if self._error is not None:
                    raise self._error
                if self.written > pos:
                    return self.written - pos
                if self._finished and self._released:
                    return 0
                self._wake_at = min(self._wake_at, pos + 1)
                self._cond.wait()

    def close(self) -> None:
        if self._flusher is not None:
            self._flusher.close()  # before the fd goes away under it
        self._file.discard()

    def keep(self) -> scratch.Scratch:
        """The finished spool as a scratch file of the caller's (still locked), instead of closing it."""
        if self._flusher is not None:
            self._flusher.close()
        return self._file


class SpoolReader:
    """File-like (read only) view of a Spool, following the writer."""

    def __init__(self, spool: Spool) -> None:
        self._spool = spool
        self._fd = os.open(spool.path, os.O_RDONLY)
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        available = self._spool._wait_for(self._pos)
        if available == 0:
            return b""
        want = available if n is None or n < 0 else min(n, available)
        data = os.pread(self._fd, want, self._spool.at(self._pos, want))
        self._pos += len(data)
        return data

    def wait_complete(self) -> Path:
        """For stores on the same filesystem: the finished spool file, to link instead of copy."""
        return self._spool.wait_complete()

    @property
    def path(self) -> Path:
        return self._spool.path

    def wait_bytes(self, target: int) -> tuple[int, bool]:
        """For stores that upload ranges of the spool file as soon as they are written."""
        return self._spool.wait_bytes(target)

    def part_digests(self, part_size: int, new: Callable[[], Digest]) -> PartTracker:
        """For stores that send a checksum with each range: computed as the bytes arrive."""
        return self._spool.part_digests(part_size, new)

    def sent(self, start: int, length: int) -> None:
        self._spool.sent(start, length)

    def pace(self, ahead: int) -> None:
        self._spool.pace(ahead)

    def at(self, start: int, length: int) -> int:
        return self._spool.at(start, length)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        try:
            os.close(self._fd)
        except OSError:
            pass


def _split(views: list[memoryview], n: int) -> tuple[list[memoryview], list[memoryview]]:
    """The first `n` bytes of `views`, and the rest (a view that straddles is cut, not copied)."""
    head: list[memoryview] = []
    for i, view in enumerate(views):
        if n <= 0:
            return head, views[i:]
        if len(view) > n:
            return [*head, view[:n]], [view[n:], *views[i + 1 :]]
        head.append(view)
        n -= len(view)
    return head, []
