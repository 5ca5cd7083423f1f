"""file:// backend: a directory tree. Writes go to a hidden partial file, renamed when complete."""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import os
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from ..errors import ObjectNotFound, StorageError
from .base import Capabilities, Debris, ObjectInfo, SpooledFile

_PARTIAL = ".partial-"
_SPOOL = ".spool"  # below the root, never listed as objects
_CHUNK = 1024 * 1024


class LocalStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).absolute()
        self.description = f"file://{self.root}"
        # Spool on the store's filesystem, so the finished spool file is linked into place, not copied.
        self.capabilities = Capabilities(spool_dir=str(self.root / _SPOOL), links_spool=True)
        # Created on first use (`file://./etcd-backups` must work on a first run), but never again
        # once this process has seen it: a directory removed or unmounted under a running daemon
        # is an error, not a fresh empty store on whatever filesystem lies beneath.
        self._seen = self.root.is_dir()

    def _path(self, key: str) -> Path:
        parts = [p for p in key.split("/") if p]
        if not parts or any(p in {".", ".."} for p in parts):
            raise StorageError(f"invalid object key {key!r}")
        return self.root.joinpath(*parts)

    def _ensure_root(self) -> None:
        if not self.root.is_dir():
            self._check_not_gone()
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StorageError(f"{self.description}: cannot create directory: {exc.strerror}") from exc
        self._seen = True

    def _check_not_gone(self) -> None:
        if self._seen and not self.root.is_dir():
            raise StorageError(
                f"{self.description}: the store directory is gone (removed, or its filesystem unmounted) "
                "since it was in use; not creating an empty one: put it back (or create it to start afresh)"
            )

    def _check_no_file_above(self) -> None:
        """A root below a file (`token/sub`, a typo) can never hold anything: an error, not an empty store."""
        for parent in self.root.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise StorageError(f"{self.description}: {parent} is a file, not a directory")
                return

    def put(self, key: str, source: BinaryIO, *, spooled: SpooledFile | None = None) -> ObjectInfo:
        self._ensure_root()
        final = self._path(key)
        tmp = final.with_name(f"{_PARTIAL}{final.name}.{secrets.token_hex(4)}")
        digest: hashlib._Hash | None = hashlib.sha256()
        size = 0
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            linked = spooled is not None and _link(spooled.wait_complete(), tmp)
            if linked:
                digest = None  # the producer hashed these bytes already
                size = tmp.stat().st_size
                fd = os.open(tmp, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            else:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as out:
                    while chunk := source.read(_CHUNK):
                        out.write(chunk)
                        digest.update(chunk)  # type: ignore[union-attr]
                        size += len(chunk)
                    out.flush()
                    os.fsync(out.fileno())
            os.replace(tmp, final)
            _fsync_dir(final.parent)
        except BaseException as exc:
            with contextlib.suppress(OSError):  # ENOTDIR when a folder on the way is a file
                tmp.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise StorageError(f"{self.description}: writing {key} failed: {exc.strerror or exc}") from exc
            raise
        stat = final.stat()
        if stat.st_size != size:
            raise StorageError(f"{self.description}: {key} has {stat.st_size} bytes after writing {size}")
        return ObjectInfo(key, size, datetime.fromtimestamp(stat.st_mtime, UTC), digest.hexdigest() if digest else None)

    def get(self, key: str, dest: BinaryIO) -> int:
        path = self._path(key)
        try:
            with open(path, "rb") as src:
                n = 0
                while chunk := src.read(_CHUNK):
                    dest.write(chunk)
                    n += len(chunk)
                return n
        except FileNotFoundError:
            raise ObjectNotFound(f"{self.description}: {key} not found") from None
        except OSError as exc:
            raise StorageError(f"{self.description}: reading {key} failed: {exc.strerror}") from exc

    def list(self, prefix: str = "", *, start_after: str | None = None) -> list[ObjectInfo]:
        # Walk only the folder the prefix names (a listing of snapshots/ never reads deltas/).
        folder = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        base = self._path(folder) if folder else self.root
        if not base.exists() and not self.root.is_file():
            self._check_not_gone()
            self._check_no_file_above()
            return []  # nothing stored yet (a root that is a file fails below)
        out: list[ObjectInfo] = []
        try:
            head = "".join(f"{part}/" for part in folder.split("/") if part)  # as _path reads it
            _scan(str(base), head, prefix, start_after, out)
        except OSError as exc:
            raise StorageError(f"{self.description}: listing failed: {exc.strerror or exc}") from exc
        out.sort(key=lambda o: o.key)
        return out

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"{self.description}: deleting {key} failed: {exc.strerror}") from exc

    def ping(self) -> None:
        self._ensure_root()
        if not os.access(self.root, os.W_OK):
            raise StorageError(f"{self.description}: directory is not writable")

    def list_debris(self) -> builtins.list[Debris]:  # `list` is a method here
        out: list[Debris] = []
        if not self.root.exists():
            self._check_not_gone()
            return out
        try:
            for dirpath, _dirs, files in os.walk(self.root, onerror=_raise):
                for name in files:
                    if name.startswith(_PARTIAL):
                        path = Path(dirpath) / name
                        started = datetime.fromtimestamp(path.stat().st_mtime, UTC)
                        out.append(Debris(path.relative_to(self.root).as_posix(), started, str(path)))
        except OSError as exc:
            raise StorageError(f"{self.description}: listing failed: {exc.strerror or exc}") from exc
        return out

    def remove_debris(self, debris: Debris) -> None:
        Path(debris.handle).unlink(missing_ok=True)


def _link(path: Path, tmp: Path) -> bool:
    try:
        os.link(path, tmp)
    except OSError:
        return False  # another filesystem: copy instead
    return True


def _raise(exc: OSError) -> None:
    raise exc


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _scan(path: str, head: str, prefix: str, start_after: str | None, out: list[ObjectInfo]) -> None:
    """Files below `path` (key prefix `head`) matching the listing; keys from strings and a
    stat only for what matches: a folder of deltas holds half a million files after a month,
    and a listing after a revision wants a few of them."""
    with os.scandir(path) as entries:
        for entry in entries:
            name = entry.name
            key = head + name
            if entry.is_dir():
                if not (head == "" and name == _SPOOL) and not entry.is_symlink():
                    _scan(entry.path, f"{key}/", prefix, start_after, out)
                continue
            if (
                name.startswith(_PARTIAL)
                or not key.startswith(prefix)
                or (start_after is not None and key <= start_after)
            ):
                continue
            st = entry.stat()
            out.append(ObjectInfo(key, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC)))
