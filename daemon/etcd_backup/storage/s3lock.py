"""S3 Object Lock and versioned buckets: lock what is written, delete for good, say what is locked.

On a versioned bucket a plain DeleteObject only adds a delete marker: the bytes stay (and are
billed), and a snapshot would vanish from listings while its data is still there. So deleting
means deleting every version, oldest first: if a lock stops it half-way, what is left is the
newest version, still listed and restorable, and the next prune finishes once the lock passed.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import botocore.exceptions
import structlog

from ..errors import ConfigError, ObjectLocked, StorageError
from .base import Retention

log = structlog.get_logger(__name__)

_BOTO_ERRORS = (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError)
ErrorFn = Callable[[str, Exception, str], StorageError]


def _code(exc: Exception) -> str:
    if isinstance(exc, botocore.exceptions.ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


class Locking:
    def __init__(self, client: Any, bucket: str, mode: str, lock_for: float, error: ErrorFn) -> None:
        self.client = client
        self.bucket = bucket
        self.setting = mode  # "off", "governance" or "compliance"
        self.mode = None if mode == "off" else mode.upper()
        self.lock_for = lock_for
        self._error = error
        self._checked = False
        self._versioned: bool | None = None

    def write_args(self) -> dict[str, Any]:
        """Arguments of PutObject and CreateMultipartUpload: the lock, counted from now."""
        if self.mode is None:
            return {}
        until = datetime.now(UTC) + timedelta(seconds=self.lock_for)
        return {"ObjectLockMode": self.mode, "ObjectLockRetainUntilDate": until}

    def ensure_locked(self, key: str, full: str, head: dict[str, Any]) -> None:
        """Lock an object the store stored unlocked (moto ignores the lock of multipart uploads)."""
        if self.mode is None or head.get("ObjectLockMode"):
            return
        retention = {"Mode": self.mode, "RetainUntilDate": self.write_args()["ObjectLockRetainUntilDate"]}
        version = {"VersionId": head["VersionId"]} if head.get("VersionId") else {}
        try:
            self.client.put_object_retention(Bucket=self.bucket, Key=full, Retention=retention, **version)
        except _BOTO_ERRORS as exc:
            raise self._error("locking", exc, key) from exc

    def check_bucket(self) -> None:
        """With the setting on, the bucket must have Object Lock enabled: a configuration error if not."""
        if self.mode is None or self._checked:
            return
        try:
            answer = self.client.get_object_lock_configuration(Bucket=self.bucket)
            enabled = answer.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"
        except botocore.exceptions.ClientError as exc:
            if _code(exc) not in {"ObjectLockConfigurationNotFoundError", "NotImplemented", "InvalidRequest"}:
                raise self._error("Object Lock check of", exc, "") from exc
            enabled = False
        except botocore.exceptions.BotoCoreError as exc:
            raise self._error("Object Lock check of", exc, "") from exc
        if not enabled:
            raise ConfigError(
                f'storage.object_lock = "{self.setting}": bucket {self.bucket!r} has no Object Lock enabled '
                "(it can only be enabled when the bucket is created); use such a bucket or set "
                'storage.object_lock = "off"'
            )
        self._checked = True

    def retention(self, full: str) -> Retention | None:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=full)
        except _BOTO_ERRORS as exc:
            raise self._error("lock state of", exc, full) from exc
        return _retention(head)

    # --- deleting ----------------------------------------------------------------------------------

    def versioned(self) -> bool:
        if self._versioned is None:
            if self.mode is not None:
                self._versioned = True  # Object Lock implies versioning
            else:
                try:
                    status = self.client.get_bucket_versioning(Bucket=self.bucket).get("Status")
                except _BOTO_ERRORS:
                    status = None  # a store without the versioning API keeps one version
                self._versioned = status in {"Enabled", "Suspended"}
        return self._versioned

    def delete(self, key: str, full: str) -> None:
        if not self.versioned():
            try:
                self.client.delete_object(Bucket=self.bucket, Key=full)
            except _BOTO_ERRORS as exc:
                raise self._error("delete of", exc, key) from exc
            return
        versions, markers = self._versions(key, full)
        for version in [*versions, *markers]:  # data oldest first, delete markers last
            try:
                self.client.delete_object(Bucket=self.bucket, Key=full, VersionId=version)
            except botocore.exceptions.ClientError as exc:
                if _code(exc) in {"AccessDenied", "403", "InvalidRequest"}:
                    locked = self._lock_of(full, version)
                    if locked is not None:
                        raise locked from None
                raise self._error("delete of", exc, key) from exc
            except botocore.exceptions.BotoCoreError as exc:
                raise self._error("delete of", exc, key) from exc

    def _versions(self, key: str, full: str) -> tuple[list[str], list[str]]:
        found: list[tuple[datetime, str]] = []
        markers: list[str] = []
        try:
            for page in self.client.get_paginator("list_object_versions").paginate(Bucket=self.bucket, Prefix=full):
                for v in page.get("Versions", []):
                    if v["Key"] == full:
                        found.append((v["LastModified"], v["VersionId"]))
                markers += [m["VersionId"] for m in page.get("DeleteMarkers", []) if m["Key"] == full]
        except _BOTO_ERRORS as exc:
            raise self._error("listing versions of", exc, key) from exc
        found.sort(key=lambda item: item[0])
        return [v for _, v in found], markers

    def _lock_of(self, full: str, version: str) -> ObjectLocked | None:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=full, VersionId=version)
        except _BOTO_ERRORS:
            return None
        retention = _retention(head)
        if retention is not None:
            return ObjectLocked(
                f"{full} is locked ({retention.mode}) until {retention.until:%Y-%m-%dT%H:%M:%SZ}", retention.until
            )
        if head.get("ObjectLockLegalHoldStatus") == "ON":
            return ObjectLocked(f"{full} is under a legal hold", None)
        return None


def _retention(head: dict[str, Any]) -> Retention | None:
    mode, until = head.get("ObjectLockMode"), head.get("ObjectLockRetainUntilDate")
    if not mode or not isinstance(until, datetime):
        return None
    until = until.astimezone(UTC)
    if until <= datetime.now(UTC):
        return None
    return Retention(str(mode).lower(), until)
