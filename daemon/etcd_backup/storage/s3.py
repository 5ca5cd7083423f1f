"""s3:// backend: AWS S3 and S3-compatible stores (uploads in s3upload.py, their proof in s3checksum.py).

botocore errors are translated here; nothing above this module sees a vendor exception.
"""

from __future__ import annotations

import builtins
from typing import Any, BinaryIO

import boto3
import botocore.config
import botocore.exceptions
import structlog
from boto3.s3.transfer import TransferConfig

from ..errors import ConfigError, ObjectNotFound, StorageError
from .base import Capabilities, Debris, ObjectInfo, Retention, SpooledFile
from .s3checksum import Algorithm, Checksum
from .s3copy import ServerCopier
from .s3lock import Locking
from .s3upload import Uploader

log = structlog.get_logger(__name__)

_ATTEMPTS = 5  # per request, with botocore's exponential backoff (standard retry mode)
# The second copy is retried at the next run anyway: a target that accepts and never answers
# must not hold a one-shot command for five read timeouts per request after the commit.
COPY_ATTEMPTS = 2


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


_REJECTED_HEADER_CODES = {"InvalidArgument", "NotImplemented", "InvalidRequest", "BadRequest", "400", "501"}


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
        ca_file: str | None = None,
        addressing_style: str = "auto",
        checksum: Algorithm = "crc32c",
        object_lock: str = "off",
        lock_for: float = 14 * 86400.0,
        timeout: float = 60.0,
        profile: str | None = None,
        endpoint_setting: str = "storage.endpoint_url",  # named in errors: the copy has its own
        attempts: int = _ATTEMPTS,
        client: Any = None,
    ) -> None:
        self.bucket = bucket
        # Stores with the same endpoint and credentials copy between each other server-side.
        self.endpoint = (endpoint_url or "", profile or "")
        self._endpoint_setting = endpoint_setting
        self.prefix = prefix.strip("/")
        self.description = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self.part_size = part_size
        self.concurrency = concurrency
        self.timeout = timeout
        self.attempts = attempts
        self._extra: dict[str, Any] = {}
        if sse:
            self._extra["ServerSideEncryption"] = sse
        if kms_key_id:
            self._extra["SSEKMSKeyId"] = kms_key_id
        if storage_class:
            self._extra["StorageClass"] = storage_class
        # Downloads to a file: concurrent ranged GETs.
        self._transfer = TransferConfig(
            multipart_threshold=part_size,
            multipart_chunksize=part_size,
            max_concurrency=concurrency,
            max_io_queue=concurrency * 2,
            use_threads=True,
        )
        if client is None:
            if not verify_tls:
                log.warning(
                    "TLS verification of the S3 endpoint is OFF (storage.insecure_skip_tls_verify)",
                    endpoint=endpoint_url,
                    bucket=bucket,
                )
            cfg = botocore.config.Config(
                retries={"mode": "standard", "max_attempts": attempts},
                connect_timeout=min(10.0, timeout),
                read_timeout=timeout,
                max_pool_connections=max(10, concurrency * 2),
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                # Every upload carries its own checksum header (Content-MD5 or x-amz-checksum-*), which
                # is signed: hashing the body a second time for the signature (botocore does so only
                # over http://) adds nothing. Over https:// this is botocore's default anyway.
                s3={"payload_signing_enabled": False, "addressing_style": addressing_style},
            )
            verify: bool | str = ca_file if ca_file and verify_tls else verify_tls
            try:
                session = boto3.session.Session(profile_name=profile)
            except botocore.exceptions.ProfileNotFound:
                raise ConfigError(f"AWS profile {profile!r} is not in the shared AWS config files") from None
            client = session.client("s3", endpoint_url=endpoint_url, region_name=region, config=cfg, verify=verify)
        self.client = client
        self.checksum = Checksum(checksum)
        self._locking = Locking(client, bucket, object_lock, lock_for, self._error)
        self.capabilities = Capabilities(locks=self if self._locking.mode else None, server_copy=self)
        self._uploader = Uploader(
            client,
            bucket,
            self.checksum,
            part_size,
            concurrency,
            write_args=lambda: {**self._extra, **self._locking.write_args()},
            error=self._error,
            description=self.description,
            after_write=self._locking.ensure_locked,
            remove=self._locking.delete,
        )
        self._copier = ServerCopier(
            client,
            bucket,
            write_args=lambda: {**self._extra, **self._locking.write_args()},
            error=self._error,
            after_write=self._locking.ensure_locked,
            remove=self._locking.delete,
            description=self.description,
        )

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
                return StorageError(f"{action} {where} failed: bucket {self.bucket!r} does not exist (create it first)")
            if code in {"NoSuchKey", "404", "NotFound"}:
                return ObjectNotFound(f"{where}: not found")
            if code in {"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"}:
                return StorageError(f"{action} {where} failed: access denied ({code}); check the credentials")
            hint = ""
            if action == "upload" and code in _REJECTED_HEADER_CODES and self.checksum.algorithm != "md5":
                # A store that does not know the x-amz-checksum headers answers one of these.
                hint = '; if this store rejects x-amz-checksum headers, set storage.checksum = "md5"'
            return StorageError(f"{action} {where} failed: {code}: {err.get('Message', '')}".rstrip(": ") + hint)
        if isinstance(exc, botocore.exceptions.NoCredentialsError):
            return StorageError(f"{action} {where} failed: no AWS credentials found")
        if isinstance(exc, botocore.exceptions.SSLError):
            endpoint = getattr(self.client.meta, "endpoint_url", "the S3 endpoint")
            return StorageError(
                f"{action} {where} failed: TLS handshake with {endpoint} failed "
                "(certificate not trusted?); set storage.ca_file to the CA that signed it"
            )
        network = self._network_problem(exc)
        if network:
            # botocore's own text repeats the whole request URL (upload ids and all): say it shorter.
            return StorageError(
                f"{action} {where} failed: {network} (after {self.attempts} attempts); "
                f"check {self._endpoint_setting} and the network"
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
        """One PutObject, or a multipart upload (of `spooled`'s parts as they are written). On any
        failure the multipart upload is aborted; if S3 cannot be reached for the abort either, the
        unfinished upload stays behind, invisible to `list`, and is reported by `list_debris`."""
        if spooled is not None:
            return self._uploader.put_spooled(key, self._key(key), spooled)
        try:
            return self._uploader.put_stream(key, self._key(key), source)
        except OSError as exc:
            raise self._error("upload", exc, key) from exc

    def copy_from(self, source: object, key: str, *, size: int, sha256: str) -> ObjectInfo | None:
        """`key` of `source` copied server-side, if `source` is a bucket of this endpoint."""
        if not isinstance(source, S3Store) or source.endpoint != self.endpoint:
            return None
        return self._copier.copy(key, self._key(key), (source.bucket, source._key(key)), size, sha256)

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
        self._locking.delete(key, self._key(key))

    def retention(self, key: str) -> Retention | None:
        return self._locking.retention(self._key(key))

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
        self._locking.check_bucket()

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
