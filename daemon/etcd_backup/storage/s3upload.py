"""Uploads to S3: one PutObject or a multipart upload, every request checked by the store, and a
read-back that proves the stored object is what was sent (see s3checksum.py).

Two sources: a stream (read in parts of `part_size`, at most a few parts in memory) and a spool
file still being written (each part sent as a range of the file as soon as it is complete:
memory stays flat at any concurrency and a retried part is simply re-read). A multipart upload
is completed only after the source ended (for a spool: the snapshot verified); any failure
aborts it.
"""

from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import io
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, BinaryIO

import botocore.exceptions
import structlog

from ..errors import StorageError
from .base import ObjectInfo, PartDigests, SpooledFile
from .s3checksum import Checksum

log = structlog.get_logger(__name__)

_READ_MAX = 256 * 1024
_BOTO_ERRORS = (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError)

Part = tuple[int, str, bytes]  # number, ETag, digest
ErrorFn = Callable[[str, Exception, str], StorageError]


class FileRange(io.RawIOBase):
    """A seekable window [start, start+length) of an open file: one part's body."""

    def __init__(self, fd: int, start: int, length: int) -> None:
        super().__init__()
        self._fd = fd
        self._start = start
        self._length = length
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._length}[whence]
        self._pos = max(0, min(self._length, base + pos))
        return self._pos

    def read(self, n: int | None = -1) -> bytes:
        remaining = self._length - self._pos
        # Short reads are allowed (raw I/O) and every consumer loops. Capped below the malloc mmap
        # threshold (cli.main) so each read reuses heap memory instead of faulting in fresh pages.
        want = min(remaining if n is None or n < 0 else n, remaining, _READ_MAX)
        if want <= 0:
            return b""
        data = os.pread(self._fd, want, self._start + self._pos)
        self._pos += len(data)
        return data

    def __len__(self) -> int:
        return self._length


def _read_full(source: BinaryIO, n: int) -> bytes:
    """Up to `n` bytes: short only at the end of the source (a stream may return less per read)."""
    pieces: list[bytes] = []
    got = 0
    while got < n and (chunk := source.read(n - got)):
        pieces.append(chunk)
        got += len(chunk)
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


@dataclass
class Uploader:
    client: Any
    bucket: str
    checksum: Checksum
    part_size: int
    concurrency: int
    write_args: Callable[[], dict[str, Any]]  # SSE, storage class, Object Lock: PutObject, CreateMultipartUpload
    error: ErrorFn  # translates a botocore error: (action, exc, key) -> StorageError
    description: str
    after_write: Callable[[str, str, dict[str, Any]], None]  # (key, full key, HeadObject answer) once proven
    remove: Callable[[str, str], None]  # (key, full key): delete for good

    def put_stream(self, key: str, full: str, source: BinaryIO) -> ObjectInfo:
        whole = hashlib.sha256()
        first = _read_full(source, self.part_size)
        whole.update(first)
        if len(first) < self.part_size:
            digest = self._digest(first)
            try:
                self.client.put_object(
                    Bucket=self.bucket, Key=full, Body=first, **self.write_args(), **self.checksum.request_args(digest)
                )
            except _BOTO_ERRORS as exc:
                raise self.error("upload", exc, key) from exc
            return self.read_back(key, full, len(first), [digest], multipart=False, sha256=whole.hexdigest())
        size = 0

        def jobs() -> Iterator[Callable[[int], Part]]:
            nonlocal size
            chunk = first
            while chunk:
                size += len(chunk)
                yield functools.partial(self._send_bytes, full, upload_id, chunk)
                chunk = _read_full(source, self.part_size)
                whole.update(chunk)

        upload_id = self._create(key, full)
        # Each job holds its part in memory: bound them (concurrency + 1 parts, plus the one read).
        parts = self._multipart(key, full, upload_id, jobs(), max_pending=self.concurrency + 1)
        return self.read_back(key, full, size, [d for _, _, d in parts], multipart=True, sha256=whole.hexdigest())

    def put_spooled(self, key: str, full: str, spooled: SpooledFile) -> ObjectInfo:
        # Registered before anything is sent, so that the writer digests (nearly) every part.
        digests = spooled.part_digests(self.part_size, self.checksum.new)
        # Room for the parts being sent, the one being filled and one ready for the next free thread.
        spooled.pace((self.concurrency + 2) * self.part_size)
        size = 0

        def jobs() -> Iterator[Callable[[int], Part]]:
            nonlocal size
            while True:
                written, ended = spooled.wait_bytes(size + self.part_size)
                length = min(self.part_size, written - size)
                if length > 0:
                    span = (spooled, size, length)
                    yield functools.partial(self._send_range, full, upload_id, span, digests)
                    size += length
                if ended and size >= written:
                    return

        upload_id = self._create(key, full)
        # Verified, or raises: then nothing is completed.
        parts = self._multipart(
            key, full, upload_id, jobs(), max_pending=self.concurrency * 2, before_complete=spooled.wait_complete
        )
        return self.read_back(key, full, size, [d for _, _, d in parts], multipart=True, sha256=None)

    # --- multipart -------------------------------------------------------------------------------

    def _create(self, key: str, full: str) -> str:
        try:
            answer = self.client.create_multipart_upload(
                Bucket=self.bucket, Key=full, **self.write_args(), **self.checksum.create_args()
            )
        except _BOTO_ERRORS as exc:
            raise self.error("upload", exc, key) from exc
        return str(answer["UploadId"])

    def _multipart(
        self,
        key: str,
        full: str,
        upload_id: str,
        jobs: Iterator[Callable[[int], Part]],
        *,
        max_pending: int,
        before_complete: Callable[[], object] | None = None,
    ) -> list[Part]:
        try:
            parts = self._run(jobs, max_pending)
            if not parts:
                raise StorageError(f"upload of {self.description}/{key}: the stream was empty")
            if before_complete is not None:
                before_complete()
            self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=full,
                UploadId=upload_id,
                MultipartUpload={
                    "Parts": [
                        {"PartNumber": n, "ETag": etag, **self.checksum.complete_part(digest)}
                        for n, etag, digest in parts
                    ]
                },
            )
        except BaseException as exc:
            self._abort_quietly(full, upload_id)
            if isinstance(exc, _BOTO_ERRORS):
                raise self.error("upload", exc, key) from exc
            raise
        return parts

    def _run(self, jobs: Iterator[Callable[[int], Part]], max_pending: int) -> list[Part]:
        """Run the part jobs `concurrency` at a time, at most `max_pending` submitted; surface a
        failed part without waiting for the end."""
        pending: set[concurrent.futures.Future[Part]] = set()
        done: list[Part] = []
        with concurrent.futures.ThreadPoolExecutor(self.concurrency, thread_name_prefix="s3-part") as pool:
            try:
                for number, job in enumerate(jobs, start=1):
                    pending.add(pool.submit(job, number))
                    while len(pending) >= max_pending:
                        finished, pending = concurrent.futures.wait(pending, return_when="FIRST_COMPLETED")
                        done += [f.result() for f in finished]
                    for f in [f for f in pending if f.done()]:
                        pending.discard(f)
                        done.append(f.result())
                for f in concurrent.futures.as_completed(list(pending)):
                    done.append(f.result())
                pending.clear()
            finally:
                for f in pending:
                    f.cancel()
        done.sort()
        return done

    def _send_bytes(self, full: str, upload_id: str, body: bytes, number: int) -> Part:
        return self._send(full, upload_id, number, body, self._digest(body))

    def _send_range(
        self, full: str, upload_id: str, span: tuple[SpooledFile, int, int], digests: PartDigests, number: int
    ) -> Part:
        spooled, offset, length = span
        fd = os.open(spooled.path, os.O_RDONLY)
        try:
            body = FileRange(fd, spooled.at(offset, length), length)
            digest = digests.get(number)
            if digest is None:  # a part the writer had begun before the tracking started
                hasher = self.checksum.new()
                while chunk := body.read(_READ_MAX):
                    hasher.update(chunk)
                body.seek(0)
                digest = hasher.digest()
            part = self._send(full, upload_id, number, body, digest)
        finally:
            os.close(fd)
        spooled.sent(offset, length)  # the store checked this part's checksum: never read again
        return part

    def _send(self, full: str, upload_id: str, number: int, body: bytes | FileRange, digest: bytes) -> Part:
        r = self.client.upload_part(
            Bucket=self.bucket,
            Key=full,
            UploadId=upload_id,
            PartNumber=number,
            Body=body,
            ContentLength=len(body),
            **self.checksum.request_args(digest),
        )
        return number, str(r["ETag"]), digest

    def _digest(self, data: bytes) -> bytes:
        digest = self.checksum.new()
        digest.update(data)
        return digest.digest()

    def _abort_quietly(self, full: str, upload_id: str) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id)
        except _BOTO_ERRORS:
            # S3 unreachable: the upload stays behind as debris for prune (list_debris).
            log.warning("could not abort multipart upload; prune will remove it", key=full)

    # --- the proof -------------------------------------------------------------------------------

    def read_back(
        self, key: str, full: str, sent: int, digests: list[bytes], *, multipart: bool, sha256: str | None
    ) -> ObjectInfo:
        """The stored object's size and checksum must match what was sent; otherwise it is removed."""
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=full, **self.checksum.head_args())
        except _BOTO_ERRORS as exc:
            raise self.error("read-back of", exc, key) from exc
        size = int(head["ContentLength"])
        reported = self.checksum.reported(head)
        if size != sent:
            problem = f"size {size} vs {sent} sent"
        elif reported is not None:
            ok = reported in self.checksum.expected(digests, multipart)
            problem = "" if ok else f"{self.checksum.algorithm} {reported} is not what was sent"
        else:
            # The store reports nothing to compare (it ignores the checksum headers): read it back.
            ok = self._download_digests(key, full, size) == digests
            problem = "" if ok else f"the downloaded bytes differ ({self.checksum.algorithm})"
        if problem:
            self._remove_quietly(key, full)
            raise StorageError(f"read-back of {self.description}/{key} does not match what was sent: {problem}")
        self.after_write(key, full, head)
        modified = head.get("LastModified") or datetime.now(UTC)
        return ObjectInfo(key, size, modified, sha256)

    def _download_digests(self, key: str, full: str, size: int) -> list[bytes]:
        log.info("store reports no checksum; proving the upload by downloading it", key=full)
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=full)["Body"]
            return self.checksum.of_ranges(body.read, size, self.part_size)
        except _BOTO_ERRORS as exc:
            raise self.error("read-back of", exc, key) from exc

    def _remove_quietly(self, key: str, full: str) -> None:
        try:
            self.remove(key, full)
        except StorageError as exc:
            # Locked, or S3 gone: without a manifest it is debris, removed by a later prune.
            log.warning("could not remove the object that failed its read-back", key=full, error=str(exc))
