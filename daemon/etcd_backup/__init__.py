"""etcd-backup: snapshots etcd, stores them in S3 or a directory, proves them restorable, restores."""

__version__ = "0.1.0"
