"""The exception tree. Each class carries the exit code the CLI maps it to (and, where HTTP
answers one, the status).

EtcdBackupError
├── UsageError            2  bad command line
├── ConfigError           2  bad configuration (names the key and why)
│   └── MissingIdentity      no configured age identity opens an encrypted object
├── OperationalError      1  etcd or storage unreachable, upload failed
│   ├── EtcdUnavailable        carries the gRPC status and etcd's error kind
│   ├── StorageError
│   │   ├── ObjectNotFound
│   │   └── ObjectLocked       under S3 Object Lock: cannot be deleted before `until`
│   ├── ToolError              an etcd binary failed or is missing
│   ├── Busy                   a snapshot is already running (HTTP 409)
│   ├── ShuttingDown           the daemon is stopping (HTTP 503)
│   ├── Cancelled              an operation was cancelled by a stop
│   └── Unhealthy              doctor found the cluster in an outage scenario
├── IntegrityError        3  a snapshot failed verification
│   └── DrillFailed            it did not restore, or served the wrong data
└── UnsafeError           4  refused: would lose data or act on an unhealthy cluster
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum


class EtcdBackupError(Exception):
    exit_code = 1
    http_status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(EtcdBackupError):
    exit_code = 2


class ConfigError(EtcdBackupError):
    exit_code = 2


class MissingIdentity(ConfigError):
    """An encrypted object needs a private key that encryption.identity_file does not hold."""


class OperationalError(EtcdBackupError):
    exit_code = 1
    http_status = 503


class EtcdErrorKind(Enum):
    """What etcd said, for deciding what to do next (retry, wait, give up) without reading text."""

    UNKNOWN = "unknown"
    UNAVAILABLE = "unavailable"  # connection refused or broken, member gone
    TIMEOUT = "timeout"  # deadline exceeded
    NO_LEADER = "no-leader"
    NOT_LEADER = "not-leader"
    LEADER_CHANGED = "leader-changed"
    TOO_SOON = "too-soon"  # membership change right after start, or not enough started members
    UNHEALTHY = "unhealthy"  # a membership change would leave the cluster unhealthy
    COMPACTED = "compacted"  # the requested revision was compacted
    FUTURE_REVISION = "future-revision"
    NO_SPACE = "no-space"
    MEMBER_NOT_FOUND = "member-not-found"
    MEMBER_EXISTS = "member-exists"  # peer URL already in the member list
    LEASE_EXISTS = "lease-exists"
    LEASE_NOT_FOUND = "lease-not-found"
    AUTH = "auth"  # authentication or permission
    AUTH_OFF = "auth-off"  # credentials given to a member that has authentication disabled
    TLS = "tls"  # the member answered, but the TLS handshake failed (CA, certificate or key)
    INVALID = "invalid"  # etcd refused the request as malformed


# Kinds that mean "not now": the same call may succeed in a moment.
TRANSIENT = frozenset(
    {
        EtcdErrorKind.UNAVAILABLE,
        EtcdErrorKind.TIMEOUT,
        EtcdErrorKind.NO_LEADER,
        EtcdErrorKind.NOT_LEADER,
        EtcdErrorKind.LEADER_CHANGED,
        EtcdErrorKind.TOO_SOON,
        EtcdErrorKind.UNHEALTHY,
    }
)


class EtcdUnavailable(OperationalError):
    def __init__(self, message: str, kind: EtcdErrorKind = EtcdErrorKind.UNKNOWN, code: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.code = code  # the gRPC status code name, when the error came from a call

    @property
    def transient(self) -> bool:
        return self.kind in TRANSIENT


class StorageError(OperationalError):
    pass


class ObjectNotFound(StorageError):
    pass


class ObjectLocked(StorageError):
    def __init__(self, message: str, until: datetime | None) -> None:
        super().__init__(message)
        self.until = until  # None: a legal hold, no date


class ToolError(OperationalError):
    pass


class Busy(OperationalError):
    http_status = 409


class ShuttingDown(OperationalError):
    http_status = 503


class Cancelled(OperationalError):
    pass


class Unhealthy(OperationalError):
    pass


class IntegrityError(EtcdBackupError):
    exit_code = 3


class DrillFailed(IntegrityError):
    pass


class UnsafeError(EtcdBackupError):
    exit_code = 4
