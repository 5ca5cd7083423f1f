"""s3:// backend on boto3's transfer manager (multipart, concurrent parts, SHA-256 part checksums).

botocore errors are translated here; nothing above this module sees a vendor exception.
"""

from __future__ import annotations

import base64
import builtins
import concurrent.futures
import hashlib
import io
import os
from datetime import UTC, datetime
from typing import Any, BinaryIO

import boto3
import botocore.config
import botocore.exceptions
import structlog
from boto3.s3.transfer import TransferConfig

from ..errors import ObjectNotFound, StorageError
from .base import Capabilities, Debris, ObjectInfo, SpooledFile

log = structlog.get_logger(__name__)

_ATTEMPTS = 5  # per request, with botocore's exponential backoff (standard retry mode)


class _PartDigests:
    """Reads through a source, hashing the whole object and each part as S3 will see it.

    With the digests, the checksum S3 reports after the upload (a plain SHA-256 for one part,
    a SHA-256 of the part digests plus "-N" for multipart) can be checked against what was sent.
    """

    def __init__(self, source: BinaryIO, part_size: int) -> None:
        self._source = source
        self._part_size = part_size
        self._whole = hashlib.sha256()
        self._part = hashlib.sha256()
        self._in_part = 0
        self.parts: list[bytes] = []
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        # s3transfer takes a short read for the end of the stream (and would upload a truncated
        # object), so fill the request unless the source is really at EOF.
        data = self._source.read(n)
        if n is not None and n > 0 and 0 < len(data) < n:
            parts = [data]
            got = len(data)
            while got < n and (more := self._source.read(n - got)):
                parts.append(more)
                got += len(more)
            data = b"".join(parts)
        self._whole.update(data)
        self.size += len(data)
        view = memoryview(data)
        while view:
            take = min(len(view), self._part_size - self._in_part)
            self._part.update(view[:take])
            self._in_part += take
            view = view[take:]
            if self._in_part == self._part_size:
                self.parts.append(self._part.digest())
                self._part = hashlib.sha256()
                self._in_part = 0
        return data

    def expected_checksums(self) -> set[str]:
        parts = list(self.parts)
        if self._in_part:
            parts.append(self._part.digest())
        single = base64.b64encode(self._whole.digest()).decode()
        composite = base64.b64encode(hashlib.sha256(b"".join(parts)).digest()).decode()
        # Real S3 reports a composite as "<digest>-<parts>"; some compatible stores omit the count.
        return {single, composite, f"{composite}-{len(parts)}"}

    @property
    def hexdigest(self) -> str:
        return self._whole.hexdigest()


_READ_MAX = 256 * 1024


class _FileRange(io.RawIOBase):
    """A seekable window [start, start+length) of an open file: one part's body."""

    def __init__(self, fh: BinaryIO, start: int, length: int) -> None:
        super().__init__()
        self._fd = fh.fileno()
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


def _safe_start_after(full_prefix: str, start_after: str) -> str | None:
    """A StartAfter that every store answers with at least the keys greater than `start_after`.

    Stores backed by a file tree (SeaweedFS) compare StartAfter folder by folder, so keys in a
    folder "b/" are skipped after "b.json" (or after "b" itself), although "b/1" > "b.json" byte by
    byte. Cut `start_after` before its first character that sorts at or below "/" and drop one
    more: no key the cut skips on such a store is greater than `start_after`. The caller filters.
    """
    rest = start_after[len(full_prefix) :] if start_after.startswith(full_prefix) else ""
    plain = 0
    while plain < len(rest) and rest[plain] > "/":
        plain += 1
    if plain < 2:
        return None
    return full_prefix + rest[: plain - 1]


class S3Store:
    def __init__(
        self,
        bucket: str,
        prefix: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        sse: str | None = None,
        kms_key_id: str | None = None,
        storage_class: str | None = None,
        part_size: int = 8 * 1024 * 1024,
        concurrency: int = 4,
        verify_tls: bool = True,
        timeout: float = 60.0,
        client: Any = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.description = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self.capabilities = Capabilities()
        self.part_size = part_size
        self.concurrency = concurrency
        self.timeout = timeout
        self._extra: dict[str, str] = {"ChecksumAlgorithm": "SHA256"}
        if sse:
            self._extra["ServerSideEncryption"] = sse
        if kms_key_id:
            self._extra["SSEKMSKeyId"] = kms_key_id
        if storage_class:
            self._extra["StorageClass"] = storage_class
        # Parts of a non-seekable stream are buffered in memory: bound how many at once.
        self._transfer = TransferConfig(
            multipart_threshold=part_size,
            multipart_chunksize=part_size,
            max_concurrency=concurrency,
            max_io_queue=concurrency * 2,
            use_threads=True,
        )
        self._transfer.max_in_memory_upload_chunks = concurrency + 1
        if client is None:
            if not verify_tls:
                log.warning(
                    "TLS verification of the S3 endpoint is OFF (storage.insecure_skip_tls_verify)",
                    endpoint=endpoint_url,
                    bucket=bucket,
                )
            cfg = botocore.config.Config(
                retries={"mode": "standard", "max_attempts": _ATTEMPTS},
                connect_timeout=min(10.0, timeout),
                read_timeout=timeout,
                max_pool_connections=max(10, concurrency * 2),
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                # Every upload carries its own SHA-256 checksum header, which is signed: hashing the
                # body a second time for the signature (botocore does so only over http://) adds
                # nothing. Over https:// this is botocore's default anyway.
                s3={"payload_signing_enabled": False},
            )
            client = boto3.session.Session().client(
                "s3", endpoint_url=endpoint_url, region_name=region, config=cfg, verify=verify_tls
            )
        self.client = client

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _rel(self, full: str) -> str:
        return full[len(self.prefix) + 1 :] if self.prefix else full

    def _error(self, action: str, exc: Exception, key: str = "") -> StorageError:
        where = f"{self.description}/{key}" if key else self.description
        if isinstance(exc, botocore.exceptions.ClientError):
            err = exc.response.get("Error", {})
            code = str(err.get("Code", "?"))
            if code in {"NoSuchBucket"}:
                return StorageError(f"{action} failed: bucket {self.bucket!r} does not exist (create it first)")
            if code in {"NoSuchKey", "404", "NotFound"}:
                return ObjectNotFound(f"{where}: not found")
            if code in {"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"}:
                return StorageError(f"{action} {where} failed: access denied ({code}); check the credentials")
            return StorageError(f"{action} {where} failed: {code}: {err.get('Message', '')}".rstrip(": "))
        if isinstance(exc, botocore.exceptions.NoCredentialsError):
            return StorageError(f"{action} {where} failed: no AWS credentials found")
        network = self._network_problem(exc)
        if network:
            # botocore's own text repeats the whole request URL (upload ids and all): say it shorter.
            return StorageError(
                f"{action} {where} failed: {network} (after {_ATTEMPTS} attempts); "
                "check storage.endpoint_url and the network"
            )
        if isinstance(exc, botocore.exceptions.BotoCoreError):
            return StorageError(f"{action} {where} failed: {exc}")
        return StorageError(f"{action} {where} failed: {exc}")

    def _network_problem(self, exc: Exception) -> str | None:
        endpoint = getattr(self.client.meta, "endpoint_url", "the S3 endpoint")
        if isinstance(exc, botocore.exceptions.ReadTimeoutError):
            return f"{endpoint} did not answer within {self.timeout:g}s (storage.timeout)"
        if isinstance(exc, botocore.exceptions.ConnectTimeoutError):
            return f"cannot connect to {endpoint}: timed out"
        if isinstance(exc, botocore.exceptions.EndpointConnectionError):
            return f"cannot connect to {endpoint}"
        if isinstance(exc, botocore.exceptions.ConnectionClosedError):
            return f"{endpoint} closed the connection before answering"
        return None

    def put(self, key: str, source: BinaryIO, *, spooled: SpooledFile | None = None) -> ObjectInfo:
        """Upload `source` (multipart above part_size), or the parts of `spooled` as they are written.
        On any failure the multipart upload is aborted; if S3 cannot be reached for the abort either,
        the unfinished upload stays behind, invisible to `list`, and is reported by `list_debris`
        (prune removes it)."""
        if spooled is not None:
            return self._put_following(key, spooled)
        full = self._key(key)
        reader = _PartDigests(source, self.part_size)
        try:
            self.client.upload_fileobj(reader, self.bucket, full, ExtraArgs=self._extra, Config=self._transfer)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise self._error("upload", exc, key) from exc
        except Exception as exc:
            # s3transfer wraps errors from the source; surface the original (e.g. IntegrityError).
            cause = exc.__cause__ or exc.__context__
            from ..errors import EtcdBackupError

            if isinstance(exc, EtcdBackupError):
                raise
            if isinstance(cause, EtcdBackupError):
                raise cause from exc
            if isinstance(exc, botocore.exceptions.BotoCoreError | OSError):
                raise self._error("upload", exc, key) from exc
            raise
        return self._read_back(key, reader.size, reader.expected_checksums(), reader.hexdigest)

    def _read_back(self, key: str, sent: int, checksums: set[str] | None, sha256: str | None) -> ObjectInfo:
        """Size and SHA-256 checksum as S3 reports them must match what was sent."""
        full = self._key(key)
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=full, ChecksumMode="ENABLED")
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise self._error("read-back of", exc, key) from exc
        size = int(head["ContentLength"])
        reported = head.get("ChecksumSHA256")
        if size != sent or (reported and checksums is not None and reported not in checksums):
            self._delete_quietly(full)
            raise StorageError(
                f"read-back of {self.description}/{key} does not match what was sent "
                f"(size {size} vs {sent}, checksum {reported}); object removed"
            )
        modified = head.get("LastModified") or datetime.now(UTC)
        return ObjectInfo(key, size, modified, sha256)

    def _put_following(self, key: str, source: SpooledFile) -> ObjectInfo:
        """Multipart upload of a spool file that is still being written, each part sent as a range
        of the file as soon as it is complete.

        Why not the transfer manager here: for a stream of unknown size it buffers every part in
        memory (memory grows with concurrency) and re-hashes what we hash anyway. Ranges of the
        spool file keep memory flat at any concurrency, and a retried part is simply re-read.
        The upload is completed only after the source is released (the snapshot verified);
        any failure aborts it.
        """
        full = self._key(key)
        try:
            upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=full, **self._extra)["UploadId"]
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise self._error("upload", exc, key) from exc
        try:
            parts, size = self._send_parts(full, upload_id, source)
            source.wait_complete()  # verified, or raises: then nothing is completed
            self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=full,
                UploadId=upload_id,
                MultipartUpload={
                    "Parts": [
                        {"PartNumber": n, "ETag": etag, **({"ChecksumSHA256": c} if c else {})} for n, etag, c in parts
                    ]
                },
            )
        except BaseException as exc:
            self._abort_quietly(full, upload_id)
            if isinstance(exc, botocore.exceptions.ClientError | botocore.exceptions.BotoCoreError):
                raise self._error("upload", exc, key) from exc
            raise
        if not all(c for _, _, c in parts):
            # A store that does not return part checksums: the read-back can only compare sizes.
            return self._read_back(key, size, None, None)
        digests = b"".join(base64.b64decode(c) for _, _, c in parts if c)
        composite = base64.b64encode(hashlib.sha256(digests).digest()).decode()
        return self._read_back(key, size, {composite, f"{composite}-{len(parts)}"}, None)

    def _send_parts(self, full: str, upload_id: str, source: SpooledFile) -> tuple[list[tuple[int, str, str]], int]:
        """Send each part as soon as the spool holds it; returns (number, ETag, checksum) per part and the size."""
        pending: dict[concurrent.futures.Future[tuple[int, str, str]], int] = {}
        done: list[tuple[int, str, str]] = []
        offset, number = 0, 1
        with concurrent.futures.ThreadPoolExecutor(self.concurrency, thread_name_prefix="s3-part") as pool:
            try:
                while True:
                    written, ended = source.wait_bytes(offset + self.part_size)
                    length = min(self.part_size, written - offset)
                    if length > 0:
                        fut = pool.submit(
                            self._send_part, full, upload_id, number, str(source.path), offset=offset, length=length
                        )
                        pending[fut] = number
                        offset += length
                        number += 1
                    if ended and offset >= written:
                        break
                    # Bound the parts in flight; surface a failed part without waiting for the end.
                    while len(pending) >= self.concurrency * 2:
                        finished, _ = concurrent.futures.wait(pending, return_when="FIRST_COMPLETED")
                        for f in finished:
                            pending.pop(f)
                            done.append(f.result())
                    for f in [f for f in pending if f.done()]:
                        pending.pop(f)
                        done.append(f.result())
                for f in concurrent.futures.as_completed(list(pending)):
                    done.append(f.result())
                pending.clear()
            finally:
                for f in pending:
                    f.cancel()
        if not done:
            raise StorageError(f"upload of {full}: the stream was empty")
        done.sort()
        return done, offset

    def _send_part(
        self, full: str, upload_id: str, number: int, path: str, *, offset: int, length: int
    ) -> tuple[int, str, str]:
        with open(path, "rb") as fh:
            body = _FileRange(fh, offset, length)
            r = self.client.upload_part(
                Bucket=self.bucket,
                Key=full,
                UploadId=upload_id,
                PartNumber=number,
                Body=body,
                ContentLength=length,
                ChecksumAlgorithm="SHA256",
            )
        return number, r["ETag"], r.get("ChecksumSHA256", "")

    def _abort_quietly(self, full: str, upload_id: str) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError):
            # S3 unreachable: the upload stays behind as debris for prune (list_debris).
            log.warning("could not abort multipart upload; prune will remove it", key=full)

    def _delete_quietly(self, full: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=full)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError):
            pass

    def get(self, key: str, dest: BinaryIO) -> int:
        full = self._key(key)
        try:
            if dest.seekable():
                start = dest.tell()
                self.client.download_fileobj(self.bucket, full, dest, Config=self._transfer)
                dest.seek(0, 2)
                return dest.tell() - start
            body = self.client.get_object(Bucket=self.bucket, Key=full)["Body"]
            n = 0
            for chunk in body.iter_chunks(1024 * 1024):
                dest.write(chunk)
                n += len(chunk)
            return n
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise self._error("download of", exc, key) from exc

    def list(self, prefix: str = "", *, start_after: str | None = None) -> list[ObjectInfo]:
        full_prefix = self._key(prefix) if prefix else (f"{self.prefix}/" if self.prefix else "")
        extra: dict[str, str] = {}
        if start_after is not None:
            server_start = _safe_start_after(full_prefix, self._key(start_after))
            if server_start is not None:
                extra["StartAfter"] = server_start
        out: list[ObjectInfo] = []
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full_prefix, **extra):
                for obj in page.get("Contents", []):
                    key = self._rel(obj["Key"])
                    if start_after is None or key > start_after:
                        out.append(ObjectInfo(key, int(obj["Size"]), obj["LastModified"]))
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise self._error("listing of", exc) from exc
        # Stores backed by a file tree (SeaweedFS) list folder by folder: "a/1" before "a.json".
        out.sort(key=lambda o: o.key)
        return out

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise self._error("delete of", exc, key) from exc

    def ping(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except botocore.exceptions.ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in {"404", "NoSuchBucket", "NotFound"}:
                raise StorageError(f"bucket {self.bucket!r} does not exist (create it first)") from exc
            raise self._error("access to", exc) from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise self._error("access to", exc) from exc

    def list_debris(self) -> builtins.list[Debris]:  # `list` is a method here
        out: list[Debris] = []
        prefix = f"{self.prefix}/" if self.prefix else ""
        try:
            paginator = self.client.get_paginator("list_multipart_uploads")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for up in page.get("Uploads", []):
                    out.append(Debris(self._rel(up["Key"]), up["Initiated"], up["UploadId"]))
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise self._error("listing uploads of", exc) from exc
        return out

    def remove_debris(self, debris: Debris) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=self._key(debris.key), UploadId=debris.handle)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise self._error("abort of upload", exc, debris.key) from exc
