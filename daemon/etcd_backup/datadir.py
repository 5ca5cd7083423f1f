"""What a member's data dir on this host is: absent, empty or occupied; in use by a running etcd;
which member and cluster it belongs to. Restores ask before they move anything.

A running etcd holds locks on its files: bbolt flock()s `member/snap/db` and the WAL locks its
`*.wal` files. /proc/locks lists every lock without taking one; a lock held from another PID
namespace (a container) is invisible there, so a non-blocking shared lock attempt on the db,
released at once, is the second look. The member id comes from the WAL's metadata record.
"""

from __future__ import annotations

import errno
import fcntl
import os
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

_PROC_LOCKS = "/proc/locks"
_WAL_METADATA = 1  # walpb record type of the metadata record (etcdserverpb.Metadata)
_WAL_CRC = 4
_MAX_RECORD = 1024 * 1024


class DirState(Enum):
    ABSENT = "absent"
    EMPTY = "empty"
    OCCUPIED = "occupied"


def state(path: Path) -> DirState:
    if not path.exists() and not path.is_symlink():
        return DirState.ABSENT
    if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
        return DirState.EMPTY
    return DirState.OCCUPIED


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a data dir belongs to, from its WAL (ids as etcd prints them, hex)."""

    member_id: str
    cluster_id: str


def _lock_files(path: Path) -> list[Path]:
    member = path / "member"
    files = [member / "snap" / "db"]
    wal = member / "wal"
    if wal.is_dir():
        files += sorted(wal.glob("*.wal"))
    return [f for f in files if f.is_file()]


def _locked_inodes() -> dict[tuple[int, int, int], str] | None:
    """(major, minor, inode) -> holder ("pid N" or "a process") of every lock in /proc/locks."""
    try:
        text = Path(_PROC_LOCKS).read_text()
    except OSError:
        return None
    out: dict[tuple[int, int, int], str] = {}
    for line in text.splitlines():
        # "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF"; OFD locks show pid -1.
        fields = line.split()
        device = next((f for f in fields if f.count(":") == 2 and not f.endswith(":")), None)
        if device is None:
            continue
        major, minor, inode = device.split(":")
        pid = fields[fields.index(device) - 1]
        try:
            key = (int(major, 16), int(minor, 16), int(inode))
        except ValueError:
            continue
        out[key] = f"pid {pid}" if pid.isdigit() else "a process"
    return out


def in_use(path: Path) -> str | None:
    """Who holds the data dir's locks ("pid 1234"), or None when no running etcd uses it."""
    files = _lock_files(path)
    if not files:
        return None
    locks = _locked_inodes()
    if locks:
        for f in files:
            st = f.stat()
            holder = locks.get((os.major(st.st_dev), os.minor(st.st_dev), st.st_ino))
            if holder is not None:
                return holder
    db = path / "member" / "snap" / "db"
    if not db.is_file():
        return None
    try:
        fd = os.open(db, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return "a process"
    finally:
        os.close(fd)
    return None


_NEARBY_DEPTH = 2  # levels below a target searched for a data dir (`/var/lib` holds `/var/lib/etcd`)


def _live_by_proc() -> dict[Path, str]:
    """Data dirs of the running etcds this PID namespace can see: the lock holders' open files."""
    locks = _locked_inodes() or {}
    out: dict[Path, str] = {}
    for holder in set(locks.values()):
        if not holder.startswith("pid "):
            continue
        fd_dir = Path("/proc") / holder.removeprefix("pid ") / "fd"
        try:
            targets = [os.readlink(fd) for fd in fd_dir.iterdir()]
        except OSError:
            continue  # gone, or not ours to read
        for target in targets:
            path = Path(target)
            if path.match("member/snap/db") or path.match("member/wal/*.wal"):
                out[path.parents[2]] = holder
    return out


def live_nearby(path: Path) -> tuple[Path, str] | None:
    """A running etcd's data dir that is `path`, lies inside it, or contains it: (that dir, holder).

    A restore moves its target aside with --force; a target one level too high (`/var/lib`) or too
    deep (`/var/lib/etcd/member`) would move a live member's files just the same."""
    resolved = path.resolve()
    for live, pid in _live_by_proc().items():
        if live == resolved or live.is_relative_to(resolved) or resolved.is_relative_to(live):
            return live, pid
    # Locks held from another PID namespace show no holder's files: try the locks themselves.
    for candidate in (resolved, *resolved.parents):
        if (holder := in_use(candidate)) is not None:
            return candidate, holder
    frontier = [resolved]
    for _ in range(_NEARBY_DEPTH):
        below: list[Path] = []
        for d in frontier:
            try:
                below += [c for c in d.iterdir() if c.is_dir() and not c.is_symlink()]
            except OSError:
                continue
        for d in below:
            if (holder := in_use(d)) is not None:
                return d, holder
        frontier = below
    return None


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7


def _fields(data: bytes) -> dict[int, int | bytes]:
    """A flat protobuf message: field number -> varint or bytes value (the last one wins)."""
    out: dict[int, int | bytes] = {}
    pos = 0
    while pos < len(data):
        tag, pos = _varint(data, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            out[number], pos = _varint(data, pos)
        elif wire == 2:
            length, pos = _varint(data, pos)
            out[number] = data[pos : pos + length]
            pos += length
        elif wire == 5:
            pos += 4
        elif wire == 1:
            pos += 8
        else:
            raise ValueError(f"wire type {wire}")
    return out


def identity(path: Path) -> Identity | None:
    """The member and cluster id from the first WAL file's metadata record, if readable.

    WAL framing: an 8-byte little-endian length (the top byte may carry padding bits) followed by
    a walpb.Record {type = 1, crc = 2, data = 3}; the metadata record's data is
    etcdserverpb.Metadata {NodeID = 1, ClusterID = 2}.
    """
    wal = path / "member" / "wal"
    try:
        first = min(wal.glob("*.wal"), default=None)
        if first is None:
            return None
        with open(first, "rb") as fh:
            for _ in range(4):
                frame = int.from_bytes(fh.read(8), "little")
                length = frame & 0x00FFFFFFFFFFFFFF
                padding = (frame >> 56) & 0x7 if frame >> 63 else 0
                if not 0 < length <= _MAX_RECORD:
                    return None
                record = _fields(fh.read(length + padding)[:length])
                if record.get(1) == _WAL_METADATA and isinstance(record.get(3), bytes):
                    meta = _fields(record[3])  # type: ignore[arg-type]
                    node, cluster = meta.get(1), meta.get(2)
                    if isinstance(node, int) and isinstance(cluster, int) and node:
                        return Identity(format(node, "x"), format(cluster, "x"))
                    return None
                if record.get(1) != _WAL_CRC:
                    return None
    except (OSError, ValueError):
        return None
    return None


def move_aside(path: Path, now: datetime) -> Path:
    """Rename `path` to `path.bak-<UTC time>` (never deleted); returns where it went."""
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    dest = path.with_name(f"{path.name}.bak-{stamp}")
    n = 1
    while dest.exists() or dest.is_symlink():
        dest = path.with_name(f"{path.name}.bak-{stamp}-{n}")
        n += 1
    os.rename(path, dest)
    log.warning("data dir moved aside", data_dir=str(path), moved_to=str(dest))
    return dest
