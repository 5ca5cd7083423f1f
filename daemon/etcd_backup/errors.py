"""The exception tree. Each class carries the exit code the CLI maps it to.

EtcdBackupError
├── UsageError            2  bad command line
├── ConfigError           2  bad configuration (names the key and why)
│   └── MissingIdentity      no configured age identity opens an encrypted object
├── OperationalError      1  etcd or storage unreachable, upload failed
│   ├── EtcdUnavailable
│   ├── StorageError
│   │   └── ObjectNotFound
│   └── ToolError         an etcd binary failed or is missing
├── IntegrityError        3  a snapshot failed verification
└── UnsafeError           4  refused: would lose data or act on an unhealthy cluster
"""

from __future__ import annotations


class EtcdBackupError(Exception):
    exit_code = 1

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


class EtcdUnavailable(OperationalError):
    pass


class StorageError(OperationalError):
    pass


class ObjectNotFound(StorageError):
    pass


class ToolError(OperationalError):
    pass


class IntegrityError(EtcdBackupError):
    exit_code = 3


class UnsafeError(EtcdBackupError):
    exit_code = 4
