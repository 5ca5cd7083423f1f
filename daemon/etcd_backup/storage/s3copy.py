"""Server-side copy from one bucket (or prefix) to another of the same S3 endpoint: the bytes never
pass through this host, which is what the second copy costs when both stores are on one endpoint.

The proof: CopyObject is asked for a SHA-256 of the new object (`ChecksumAlgorithm`), which must be
the SHA-256 the caller expects (the manifest's). A store that reports none is read back: the copy
is downloaded and hashed. Objects over 5 GiB (CopyObject's limit) and stores without CopyObject
(or not with Object Lock headers) are left to the caller (None), which then streams the object.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import botocore.exceptions
import structlog

from ..errors import IntegrityError, StorageError
from .base import ObjectInfo

log = structlog.get_logger(__name__)

MAX_COPY = 5 * 1024**3
_BOTO_ERRORS = (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError)
# Stores that cannot copy server-side, or not with these headers: moto wants a body checksum on
# any write carrying an Object Lock retention, which a CopyObject has no body for.
_UNSUPPORTED = {"NotImplemented", "501", "MissingUploadObjectWithObjectLockHeaders"}


@dataclass
class ServerCopier:
    client: Any
    bucket: str
    write_args: Callable[[], dict[str, Any]]  # SSE, storage class, Object Lock
    error: Callable[[str, Exception, str], StorageError]
    after_write: Callable[[str, str, dict[str, Any]], None]  # (key, full key, HeadObject answer)
    remove: Callable[[str, str], None]
    description: str

    def copy(self, key: str, full: str, source: tuple[str, str], size: int, sha256: str) -> ObjectInfo | None:
        """Copy `source` (bucket, full key) to `full`; None when the store cannot do it."""
        if size > MAX_COPY:
            return None
        try:
            answer = self.client.copy_object(
                Bucket=self.bucket,
                Key=full,
                CopySource={"Bucket": source[0], "Key": source[1]},
                ChecksumAlgorithm="SHA256",
                **self.write_args(),
            )
        except botocore.exceptions.ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code", "")) in _UNSUPPORTED:
                return None
            raise self.error("copy to", exc, key) from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise self.error("copy to", exc, key) from exc
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=full, ChecksumMode="ENABLED")
        except _BOTO_ERRORS as exc:
            raise self.error("read-back of", exc, key) from exc
        reported = answer.get("CopyObjectResult", {}).get("ChecksumSHA256") or head.get("ChecksumSHA256")
        expected = base64.b64encode(bytes.fromhex(sha256)).decode()
        problem = ""
        if int(head["ContentLength"]) != size:
            problem = f"size {head['ContentLength']} instead of {size}"
        elif isinstance(reported, str) and reported and "-" not in reported:
            problem = "" if reported == expected else "its SHA-256 is not the one expected"
        elif self._downloaded_sha256(key, full) != sha256:  # nothing (or a composite) to compare
            problem = "the downloaded bytes differ"
        if problem:
            self._remove_quietly(key, full)
            raise IntegrityError(f"server-side copy to {self.description}/{key} does not match its source: {problem}")
        self.after_write(key, full, head)
        return ObjectInfo(key, size, head.get("LastModified") or datetime.now(UTC), sha256)

    def _downloaded_sha256(self, key: str, full: str) -> str:
        log.info("store reports no SHA-256 of the copy; proving it by downloading it", key=full)
        digest = hashlib.sha256()
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=full)["Body"]
            for chunk in body.iter_chunks(1024 * 1024):
                digest.update(chunk)
        except _BOTO_ERRORS as exc:
            raise self.error("read-back of", exc, key) from exc
        return digest.hexdigest()

    def _remove_quietly(self, key: str, full: str) -> None:
        try:
            self.remove(key, full)
        except StorageError as exc:
            log.warning("could not remove the copy that failed its check", key=full, error=str(exc))
