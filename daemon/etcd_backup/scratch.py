"""Scratch files and directories on this host: how they are named, created (0600 files, 0700
directories), locked and swept. Spools, downloads, decompressed copies, drill and point
workspaces all come from here, so one sweep knows every kind.

Each one is flock'ed by its creator for as long as it lives, so one that nobody holds is known
to be abandoned (a killed run) and goes at the next sweep, whatever its age; a lock is never
broken, whatever the age. Between creation and locking a file is briefly unlocked: only entries
older than GRACE (or `fallback_age`, if shorter) count. On a filesystem without locks only age
tells: `fallback_age`.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import stat
import tempfile
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import structlog

from .errors import OperationalError

log = structlog.get_logger(__name__)

GRACE = 60.0


class Kind(Enum):
    """tag, suffix (empty: a directory)."""

    SPOOL = ("spool", ".spool")  # the incoming snapshot stream
    DOWNLOAD = ("download", ".part")  # a stored object being checked
    PLAIN = ("db", ".part")  # a download decompressed or decrypted
    DRILL = ("drill", "")  # a scratch etcd's data dir and log
    POINT = ("point", "")  # a point being materialised from a snapshot and deltas

    @property
    def tag(self) -> str:
        return self.value[0]

    @property
    def suffix(self) -> str:
        return self.value[1]

    @property
    def is_dir(self) -> bool:
        return not self.value[1]

    def pattern(self) -> str:
        return f".*-{self.tag}-*{self.suffix}"


def base(directory: str | None) -> Path:
    return Path(directory or tempfile.gettempdir())


def _lock(fd: int) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        pass  # no locks on this filesystem: only the age-based sweep will remove a leftover


@dataclass
class Scratch:
    """One scratch file or directory, locked while `fd` is open."""

    path: Path
    fd: int
    kind: Kind
    _open: bool = field(default=True, repr=False)

    def close(self) -> None:
        """Release the lock (the entry stays; a sweep may take it once older than GRACE)."""
        if self._open:
            self._open = False
            try:
                os.close(self.fd)
            except OSError:
                pass

    def discard(self) -> None:
        if self.kind.is_dir:
            shutil.rmtree(self.path, ignore_errors=True)
        else:
            self.path.unlink(missing_ok=True)
        self.close()

    def __enter__(self) -> Scratch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()


def create(directory: str | None, kind: Kind, label: str) -> Scratch:
    """A new private file or directory in `directory` (the system temp dir by default)."""
    where = base(directory)
    try:
        os.makedirs(where, mode=0o700, exist_ok=True)  # new directories only: ours alone
        prefix = f".{label}-{kind.tag}-"
        if kind.is_dir:
            path = Path(tempfile.mkdtemp(prefix=prefix, dir=where))
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        else:
            fd, name = tempfile.mkstemp(prefix=prefix, suffix=kind.suffix, dir=where)
            path = Path(name)
            os.fchmod(fd, 0o600)
    except OSError as exc:
        raise OperationalError(f"cannot create a {kind.tag} file in {where}: {exc.strerror}") from exc
    _lock(fd)
    return Scratch(path, fd, kind)


def _abandoned(path: Path, now: float, fallback_age: float) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)) or now - st.st_mtime < min(GRACE, fallback_age):
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # its creator is alive
        except OSError:
            return now - st.st_mtime > fallback_age  # no locks here: only age tells
        return True
    finally:
        os.close(fd)


def sweep(directory: str | None, fallback_age: float, now: float | None = None) -> list[str]:
    """Remove what killed runs left in `directory`: every scratch entry nobody holds."""
    where = base(directory)
    when = time.time() if now is None else now
    removed: list[str] = []
    for kind in Kind:
        for path in where.glob(kind.pattern()):
            if not _abandoned(path, when, fallback_age):
                continue
            try:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
            except OSError:
                continue
            removed.append(str(path))
    if removed:
        log.info("abandoned scratch files removed", paths=removed)
    return removed
