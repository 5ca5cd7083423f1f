"""One stored object copied into another store, proven to be the bytes the caller expects (the
SHA-256 its manifest records).

Three ways, cheapest first: from a local file that holds the object (the newest snapshot's kept
spool, see kept.py), server-side (S3 to S3 on one endpoint, see s3copy.py), or streamed: the
download feeds the upload through a small bounded pipe, so memory stays flat and nothing is
written to local disk. A failure leaves nothing visible under the key in the destination (an
unfinished upload at most, which the destination's own prune removes as debris).
"""

from __future__ import annotations

import hashlib
import queue
import threading
from dataclasses import dataclass
from typing import BinaryIO

import structlog

from ..errors import Cancelled, EtcdBackupError, IntegrityError, StorageError
from .base import ObjectInfo, SnapshotStore
from .kept import KeptFile

log = structlog.get_logger(__name__)

_PIPE_CHUNKS = 8  # chunks (up to 1 MiB each) between the download and the upload
_POLL = 0.5  # seconds between looks at the cancel flag while the pipe is full or empty


def copy_object(
    source: SnapshotStore,
    dest: SnapshotStore,
    key: str,
    *,
    size: int,
    sha256: str,
    local: KeptFile | None = None,
    cancel: threading.Event | None = None,
) -> ObjectInfo:
    """Copy `key` from `source` to `dest`. ObjectNotFound: `key` is gone from `source` (deleted
    meanwhile); IntegrityError: the bytes are not the expected ones; StorageError: a store failed."""
    job = _Copy(source, dest, key, size, sha256, cancel)
    if local is not None and local.size == size:
        return job.from_file(local)
    server = dest.capabilities.server_copy
    if server is not None:
        info = server.copy_from(source, key, size=size, sha256=sha256)
        if info is not None:
            return info
    return job.streamed()


@dataclass(frozen=True, slots=True)
class _Copy:
    source: SnapshotStore
    dest: SnapshotStore
    key: str
    size: int
    sha256: str
    cancel: threading.Event | None

    def from_file(self, local: KeptFile) -> ObjectInfo:
        local.cancel = self.cancel
        # A store that would link the file into place gets the bytes instead: a second copy must
        # not share the primary's inode.
        spooled = None if self.dest.capabilities.links_spool else local
        with local.reader() as reader:
            info = self.dest.put(self.key, _Cancellable(reader, self.cancel), spooled=spooled)  # type: ignore[arg-type]
        # The file is the object the snapshot verified; the store proved it holds the file's bytes.
        return self.proven(info, hashed=info.sha256 or self.sha256)

    def streamed(self) -> ObjectInfo:
        pipe = _Pipe(self.cancel)

        def download() -> None:
            try:
                self.source.get(self.key, pipe)  # type: ignore[arg-type]
            except BaseException as exc:  # noqa: BLE001 - handed to the upload through the pipe
                pipe.end(exc)
            else:
                pipe.end(None)

        thread = threading.Thread(target=download, name=f"copy-{self.key.rsplit('/', 1)[-1]}", daemon=True)
        thread.start()
        try:
            info = self.dest.put(self.key, pipe)  # type: ignore[arg-type]
        except BaseException:
            if pipe.error is not None:
                raise _source_error(pipe.error) from None
            raise
        finally:
            pipe.close()
            thread.join()
        return self.proven(info, hashed=info.sha256)

    def proven(self, info: ObjectInfo, *, hashed: str | None) -> ObjectInfo:
        if info.size == self.size and hashed is None:
            hashed = _stored_sha256(self.dest, self.key)  # the store hashed nothing on the way: read it back
        if info.size != self.size or hashed != self.sha256:
            what = f"{info.size} bytes, not {self.size}" if info.size != self.size else "not the expected SHA-256"
            try:
                self.dest.delete(self.key)
            except StorageError as exc:
                log.warning("could not remove a copy that failed its check", key=self.key, error=str(exc))
            raise IntegrityError(f"copy of {self.key} to {self.dest.description}: {what} (the source is damaged?)")
        return ObjectInfo(self.key, info.size, info.modified, self.sha256)


def _source_error(exc: BaseException) -> BaseException:
    if isinstance(exc, EtcdBackupError):
        return exc  # ObjectNotFound included: gone from the source
    return StorageError(f"reading the source failed: {exc}")


def _stored_sha256(store: SnapshotStore, key: str) -> str:
    sink = _Hashing()
    store.get(key, sink)  # type: ignore[arg-type]
    return sink.digest.hexdigest()


class _Hashing:
    def __init__(self) -> None:
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return len(data)

    def seekable(self) -> bool:
        return False


class _Cancellable:
    """A reader that raises Cancelled once `cancel` is set: the store's put then aborts."""

    def __init__(self, inner: BinaryIO, cancel: threading.Event | None) -> None:
        self._inner = inner
        self._cancel = cancel

    def read(self, n: int = -1) -> bytes:
        if self._cancel is not None and self._cancel.is_set():
            raise Cancelled("copy cancelled (shutting down)")
        return self._inner.read(n)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False


class _ReaderGone(Exception):
    """The upload ended (failed or cancelled): the download stops."""


class _Pipe:
    """A bounded pipe: the download writes (a non-seekable file, so S3 streams it in order), the
    upload reads; the end of the download (or its error) is the upload's EOF (or error)."""

    def __init__(self, cancel: threading.Event | None) -> None:
        self._queue: queue.Queue[bytes | None] = queue.Queue(_PIPE_CHUNKS)
        self._cancel = cancel
        self._closed = threading.Event()
        self._buf = b""
        self._eof = False
        self.error: BaseException | None = None

    # the download's side
    def write(self, data: bytes) -> int:
        self._put(data if isinstance(data, bytes) else bytes(data))
        return len(data)

    def seekable(self) -> bool:
        return False

    def end(self, error: BaseException | None) -> None:
        self.error = None if isinstance(error, _ReaderGone) else error
        try:
            self._put(None)
        except _ReaderGone:
            pass

    def _put(self, item: bytes | None) -> None:
        while True:
            if self._closed.is_set():
                raise _ReaderGone()
            try:
                self._queue.put(item, timeout=_POLL)
                return
            except queue.Full:
                continue

    # the upload's side
    def read(self, n: int = -1) -> bytes:
        if not self._buf and not self._eof:
            self._buf = self._next()
        if n is None or n < 0 or n >= len(self._buf):
            out, self._buf = self._buf, b""
        else:
            out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def _next(self) -> bytes:
        while True:
            if self._cancel is not None and self._cancel.is_set():
                raise Cancelled("copy cancelled (shutting down)")
            try:
                item = self._queue.get(timeout=_POLL)
            except queue.Empty:
                continue
            if item is None:
                self._eof = True
                if self.error is not None:
                    raise _source_error(self.error)
                return b""
            if item:
                return item

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._closed.set()
        while True:  # unblock a download waiting to put
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return
