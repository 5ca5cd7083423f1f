"""The control-plane files archive: configured paths as a tar stream, and its safe way back to disk.

A POSIX (pax) tar, readable by any `tar`. Members are named by their place below `/` without the
leading slash (`etc/kubernetes/pki/ca.key`), so `restore files --to DIR` puts each one below DIR.
Regular files, directories and symlinks are archived with their permission bits and mtime; a
configured path that is a symlink is followed (the operator named what it points to), symlinks
below it are kept only when they point inside the archived paths (stored relative, so they stay
inside the restore target). Anything else is left out and reported by name.

Nothing read from a file ever leaves this module except as tar member data: errors and the
entries returned carry names, types, modes and sizes only.
"""

from __future__ import annotations

import os
import posixpath
import secrets
import stat
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from .errors import ConfigError, IntegrityError, OperationalError, UnsafeError
from .model import FileEntry, SkippedFile

_COPY = 1024 * 1024


class Sink(Protocol):
    def write(self, data: bytes, /) -> int | None: ...


@dataclass(frozen=True, slots=True)
class Archived:
    entries: tuple[FileEntry, ...]
    skipped: tuple[SkippedFile, ...]

    @property
    def count(self) -> int:
        return sum(e.type != "dir" for e in self.entries)


def check_paths(paths: Sequence[str]) -> None:
    """Every configured path exists and can be read: a configuration error (exit 2) otherwise."""
    for path in paths:
        try:
            st = os.stat(path)
            if stat.S_ISDIR(st.st_mode):
                os.listdir(path)
            else:
                os.close(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
        except FileNotFoundError:
            raise ConfigError(f"files.paths: {path}: file not found") from None
        except OSError as exc:
            raise ConfigError(f"files.paths: {path}: cannot read: {exc.strerror}") from None


def write_archive(paths: Sequence[str], sink: Sink, *, strict: bool) -> Archived:
    """Write the tar of `paths` (absolute) into `sink`, streaming file by file.

    With `strict`, a path that is missing or unreadable is a ConfigError; otherwise it is left
    out and listed in `skipped`, so a scheduled snapshot of etcd is never lost to it.
    """
    writer = _Writer(list(paths), strict)
    with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
        writer.tar = tar
        for path in writer.roots:
            writer.top(path)
    return Archived(tuple(writer.entries), tuple(writer.skipped))


@dataclass
class _Writer:
    roots: list[str]
    strict: bool
    tar: tarfile.TarFile | None = None
    entries: list[FileEntry] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)

    def skip(self, path: str, reason: str, *, fatal: bool = False) -> None:
        if fatal and self.strict:
            raise ConfigError(f"files.paths: {path}: {reason}")
        self.skipped.append(SkippedFile(path, reason))

    def top(self, path: str) -> None:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return self.skip(path, "not found", fatal=True)
        except OSError as exc:
            return self.skip(path, f"cannot read: {exc.strerror}", fatal=True)
        if stat.S_ISDIR(st.st_mode):
            self.directory(path, st)
        elif stat.S_ISREG(st.st_mode):
            self.file(path, follow=True)
        else:
            self.skip(path, "not a regular file or directory")

    def directory(self, path: str, st: os.stat_result) -> None:
        info = self.info(path, tarfile.DIRTYPE, st)
        if info is None:
            return None
        self.archive.addfile(info)
        self.entries.append(FileEntry(info.name, "dir", info.mode))
        try:
            names = sorted(os.listdir(path))
        except OSError as exc:
            return self.skip(path, f"cannot list: {exc.strerror}", fatal=True)
        for name in names:
            child = os.path.join(path, name)
            try:
                cst = os.lstat(child)
            except FileNotFoundError:
                continue  # removed while we walked
            if stat.S_ISDIR(cst.st_mode):
                self.directory(child, cst)
            elif stat.S_ISREG(cst.st_mode):
                self.file(child, follow=False)
            elif stat.S_ISLNK(cst.st_mode):
                self.symlink(child, cst)
            else:
                self.skip(child, "not a regular file, directory or symlink")

    def file(self, path: str, *, follow: bool) -> None:
        # O_NONBLOCK: a file swapped for a FIFO since it was listed must not hang the snapshot.
        flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | (0 if follow else os.O_NOFOLLOW)
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            return self.skip(path, "not found", fatal=follow)
        except OSError as exc:
            return self.skip(path, f"cannot read: {exc.strerror}", fatal=True)
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return self.skip(path, "not a regular file")
            info = self.info(path, tarfile.REGTYPE, st)
            if info is None:
                return None
            info.size = st.st_size
            try:
                self.archive.addfile(info, fh)
            except OSError as exc:
                # The header is out already: this archive cannot be completed (a retry makes a new one).
                raise OperationalError(
                    f"files.paths: {path}: {exc.strerror or exc} while archiving (did it change meanwhile?)"
                ) from None
            self.entries.append(FileEntry(info.name, "file", info.mode, info.size))
        return None

    def symlink(self, path: str, st: os.stat_result) -> None:
        try:
            target = os.readlink(path)
        except OSError as exc:
            return self.skip(path, f"cannot read link: {exc.strerror}")
        parent = os.path.dirname(path)
        resolved = os.path.normpath(os.path.join(parent, target))
        if not any(resolved == r or resolved.startswith(r.rstrip("/") + "/") for r in self.roots):
            return self.skip(path, f"symlink to {target} outside the archived paths")
        info = self.info(path, tarfile.SYMTYPE, st)
        if info is not None:
            info.linkname = os.path.relpath(resolved, parent)
            self.archive.addfile(info)
            self.entries.append(FileEntry(info.name, "symlink", info.mode))
        return None

    def info(self, path: str, kind: bytes, st: os.stat_result) -> tarfile.TarInfo | None:
        """A header for `path`, or None when it is in the archive already (overlapping paths)."""
        name = path.lstrip("/")
        if name in self.seen:
            return None
        self.seen.add(name)
        info = tarfile.TarInfo(name)
        info.type = kind
        info.mode = stat.S_IMODE(st.st_mode)
        info.mtime = int(st.st_mtime)
        info.uid, info.gid = st.st_uid, st.st_gid
        return info

    @property
    def archive(self) -> tarfile.TarFile:
        assert self.tar is not None
        return self.tar


# --- back to disk -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Placement:
    member: tarfile.TarInfo
    path: Path  # where it goes
    exists: bool  # a directory kept as it is, or (with --force) a file or symlink replaced


@dataclass
class Extraction:
    """What `extract` will do, every check done: nothing has been written yet."""

    archive: Path
    dest: Path
    placements: list[Placement]

    @property
    def replaced(self) -> list[Path]:
        return [p.path for p in self.placements if p.exists and not p.member.isdir()]


def _member_name(info: tarfile.TarInfo, what: str) -> str:
    name = info.name.rstrip("/") if info.isdir() else info.name
    parts = name.split("/")
    if not name or name.startswith("/") or any(p in {"", ".", ".."} for p in parts) or "\0" in name:
        raise IntegrityError(f"{what}: unsafe member name {name!r} (absolute, empty or with ..): nothing written")
    return name


def read_members(archive: Path, what: str) -> list[tarfile.TarInfo]:
    """The members of the archive, each proven safe to place below a target directory.

    Only regular files, directories and symlinks whose target stays inside the archive's tree;
    no name twice, none below a symlink of the archive. Anything else: IntegrityError.
    """
    try:
        with tarfile.open(archive, mode="r:") as tar:
            members = tar.getmembers()
    except (tarfile.TarError, EOFError) as exc:
        raise IntegrityError(f"{what}: not a readable tar archive: {exc}") from None
    names: set[str] = set()
    links: set[str] = set()
    for info in members:
        name = _member_name(info, what)
        if name in names:
            raise IntegrityError(f"{what}: {name} appears twice in the archive: nothing written")
        names.add(name)
        if not (info.type in (tarfile.REGTYPE, tarfile.AREGTYPE) or info.isdir() or info.issym()):
            raise IntegrityError(f"{what}: {name} is not a regular file, directory or symlink: nothing written")
        if info.issym():
            target = posixpath.normpath(posixpath.join(posixpath.dirname(name), info.linkname))
            if info.linkname.startswith("/") or target == ".." or target.startswith("../"):
                raise IntegrityError(f"{what}: symlink {name} points outside the target: nothing written")
            links.add(name)
        info.name = name
    for name in names:
        parents = name.split("/")[:-1]
        if any("/".join(parents[: i + 1]) in links for i in range(len(parents))):
            raise IntegrityError(f"{what}: {name} lies below a symlink of the archive: nothing written")
    return members


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def plan(archive: Path, dest: Path, *, force: bool, what: str, expected: Sequence[FileEntry] = ()) -> Extraction:
    """Every check before anything is written: the archive's members (see read_members), that they
    match the manifest's `expected` entries, that each lands inside `dest` (existing symlinks on
    disk included), and what exists already. An existing file or symlink is a refusal without
    `force`; a directory where a file goes (or the reverse) is one even with it."""
    members = read_members(archive, what)
    if expected:
        got = {(m.name, _kind(m), stat.S_IMODE(m.mode), m.size if m.isfile() else 0) for m in members}
        if got != {(e.path, e.type, e.mode, e.size) for e in expected}:
            raise IntegrityError(f"{what}: the archive does not hold what its manifest lists: nothing written")
    dest = dest.absolute()
    if dest.exists() and not dest.is_dir():
        raise UnsafeError(f"{dest} exists and is not a directory: nothing written")
    root = os.path.realpath(dest)
    placements: list[Placement] = []
    conflicts: list[str] = []
    for m in members:
        path = dest / m.name
        if not _inside(os.path.realpath(path.parent), root):
            raise UnsafeError(f"{path}: an existing symlink below {dest} leads outside it: nothing written")
        blocked = next((a for a in _ancestors(path, dest) if os.path.lexists(a) and not a.is_dir()), None)
        if blocked is not None:
            raise UnsafeError(f"{blocked} exists and is not a directory ({path} goes below it): nothing written")
        if m.issym() and not _inside(os.path.realpath(path.parent / m.linkname), root):
            raise UnsafeError(f"{path}: its target would lead outside {dest}: nothing written")
        if not os.path.lexists(path):
            placements.append(Placement(m, path, False))
            continue
        existing_dir = path.is_dir()
        if m.isdir() and existing_dir:
            if not _inside(os.path.realpath(path), root):
                raise UnsafeError(f"{path}: an existing symlink leads outside {dest}: nothing written")
            placements.append(Placement(m, path, True))
        elif m.isdir() or existing_dir:
            what_is = "a directory" if existing_dir else "not a directory"
            raise UnsafeError(f"{path} exists and is {what_is}: move it away first; nothing written")
        elif force:
            placements.append(Placement(m, path, True))
        else:
            conflicts.append(str(path))
    if conflicts:
        raise UnsafeError(
            f"{len(conflicts)} file(s) exist already below {dest} (first: {conflicts[0]}); nothing written: "
            "pass --force to overwrite them, or restore --to an empty directory"
        )
    return Extraction(archive, dest, placements)


def _ancestors(path: Path, dest: Path) -> list[Path]:
    """The directories between `dest` (excluded) and `path` (excluded)."""
    out: list[Path] = []
    for parent in path.parents:
        if parent == dest:
            break
        out.append(parent)
    return out


def _kind(m: tarfile.TarInfo) -> str:
    return "dir" if m.isdir() else "symlink" if m.issym() else "file"


def extract(ex: Extraction) -> list[Placement]:
    """Write what `plan` decided: directories first (owner-only while they fill, their own modes
    at the end), then each file through a private temporary beside it, renamed into place, so
    no file is ever seen half-written. Permission bits only: no set-id bits, no ownership (files
    belong to whoever restores: root for /etc/kubernetes)."""
    try:
        return _extract(ex)
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        raise OperationalError(f"writing below {ex.dest}{where}: {exc.strerror or exc}") from None


def _extract(ex: Extraction) -> list[Placement]:
    ex.dest.mkdir(mode=0o700, parents=True, exist_ok=True)
    created: list[Placement] = []
    for p in sorted((p for p in ex.placements if p.member.isdir()), key=lambda p: p.member.name.count("/")):
        if not p.exists:
            p.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            p.path.mkdir(mode=0o700)
            created.append(p)
    touched: set[Path] = set()
    with tarfile.open(ex.archive, mode="r:") as tar:
        for p in ex.placements:
            if p.member.isdir():
                continue
            p.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            touched.add(p.path.parent)
            if p.member.issym():
                _place_symlink(p)
            else:
                _place_file(tar, p)
    for p in sorted(created, key=lambda p: p.member.name.count("/"), reverse=True):
        os.chmod(p.path, stat.S_IMODE(p.member.mode) & 0o777)
        os.utime(p.path, (p.member.mtime, p.member.mtime))
    for directory in touched:
        _fsync_dir(directory)
    return ex.placements


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.etcd-backup-{secrets.token_hex(4)}.tmp")


def _place_file(tar: tarfile.TarFile, p: Placement) -> None:
    tmp = _temp_name(p.path)
    source = tar.extractfile(p.member)
    if source is None:
        raise IntegrityError(f"{p.member.name}: no data in the archive")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := source.read(_COPY):
                out.write(chunk)
            out.flush()
            os.fchmod(out.fileno(), stat.S_IMODE(p.member.mode) & 0o777)
            os.fsync(out.fileno())
        os.utime(tmp, (p.member.mtime, p.member.mtime))
        _commit(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)


def _place_symlink(p: Placement) -> None:
    if not p.exists:
        os.symlink(p.member.linkname, p.path)
        return
    tmp = _temp_name(p.path)
    os.symlink(p.member.linkname, tmp)
    try:
        os.replace(tmp, p.path)
    finally:
        tmp.unlink(missing_ok=True)


def _commit(tmp: Path, p: Placement) -> None:
    if p.exists:
        os.replace(tmp, p.path)  # --force: the old file is replaced in one step
        return
    try:
        os.link(tmp, p.path)  # never over a file that appeared since the plan
    except FileExistsError:
        raise UnsafeError(f"{p.path} appeared while restoring; not overwritten") from None
    except OSError:
        if p.path.exists():
            raise UnsafeError(f"{p.path} appeared while restoring; not overwritten") from None
        os.rename(tmp, p.path)  # a filesystem without hard links


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


__all__ = ["Archived", "Extraction", "Placement", "check_paths", "extract", "plan", "read_members", "write_archive"]
