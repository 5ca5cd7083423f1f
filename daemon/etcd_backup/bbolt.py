"""Read-only bbolt parser: checks a snapshot's structure and reproduces `etcdutl snapshot status`.

etcd's backend is a bbolt file; `etcdutl snapshot status` (3.5) and `etcdctl snapshot status` (3.4)
open it read-only, run `tx.Check()`, then CRC-32C every top-level bucket name and every key/value
in it. We do the same walk without Go or the etcd binaries, so a snapshot can be verified on upload
and in storage with nothing but Python.

The file is mmapped and only ever sliced (memoryview / struct.unpack_from); visited pages are
dropped from our address space every few tens of MiB so resident memory stays flat for huge files.

Layout reminders (go.etcd.io/bbolt, little-endian):
  page header  16 B: id u64, flags u16, count u16, overflow u32 (the page spans 1+overflow pages)
  meta        64 B at +16: magic, version, pageSize, flags (u32), root pgid, sequence, freelist,
              pgid (high water), txid, checksum (u64); checksum = FNV-1a 64 of the first 56 bytes
  branch elem 16 B: pos u32, ksize u32, pgid u64      (pos is relative to the element itself)
  leaf elem   16 B: flags u32, pos u32, ksize u32, vsize u32
  bucket value: root pgid u64, sequence u64; root 0 = inline bucket, its leaf page follows
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
from dataclasses import dataclass
from itertools import repeat

import crc32c

from .errors import IntegrityError

_PAGE_HEADER = struct.Struct("<QHHI")
_META = struct.Struct("<IIIIQQQQQQ")
_BRANCH_ELEM = struct.Struct("<IIQ")
_LEAF_ELEM = struct.Struct("<IIII")
_BUCKET_HEADER = struct.Struct("<QQ")
_U64 = struct.Struct("<Q")

_HDR = 16  # page header size
_ELEM = 16  # branch and leaf elements are both 16 bytes
_META_SUMMED = 56  # meta bytes covered by the checksum (everything before it)

_BRANCH = 0x01
_LEAF = 0x02
_META_PAGE = 0x04
_FREELIST = 0x10
_BUCKET_LEAF = 0x01

_MAGIC = 0xED0CDAED
_VERSION = 2
_NO_FREELIST = 0xFFFFFFFFFFFFFFFF  # meta.freelist when written with NoFreelistSync (etcd's default)
_OVERFLOW_COUNT = 0xFFFF  # freelist page count meaning "real count is the first u64"

_MAX_BUCKET_DEPTH = 64  # bolt has no limit; ours keeps a crafted file off Python's recursion limit
_RELEASE_EVERY = 4 * 1024 * 1024  # bytes of pages visited between drops of the mapping (RSS while checking)


@dataclass(frozen=True, slots=True)
class BoltStatus:
    hash: int  # CRC-32C (Castagnoli) exactly as etcdutl snapshot status computes it
    revision: int  # main revision of the last key in the "key" bucket (0 if none), as etcdutl reports it
    total_key: int  # number of entries in all top-level buckets
    total_size: int  # high-water page id (meta.pgid) * page size
    page_size: int
    txid: int
    # The "meta" bucket's finishedCompactRev: compaction can remove the newest revision (a
    # tombstone), and etcd then starts at this revision instead (mvcc's restore does the same).
    compact_revision: int = 0

    @property
    def current_revision(self) -> int:
        """The revision etcd serves when it starts from this database (an empty one: 1)."""
        return max(self.revision, self.compact_revision, 1)

    def detail(self) -> dict[str, int]:
        """What a manifest's `verification.structure` records."""
        return {
            "hash": self.hash,
            "revision": self.revision,
            "compact_revision": self.compact_revision,
            "total_key": self.total_key,
            "total_size": self.total_size,
        }

    def to_dict(self) -> dict[str, int]:
        return {
            "hash": self.hash,
            "revision": self.revision,
            "total_key": self.total_key,
            "total_size": self.total_size,
            "page_size": self.page_size,
            "txid": self.txid,
        }


@dataclass(frozen=True, slots=True)
class _Meta:
    page_size: int
    root: int
    freelist: int
    pgid: int
    txid: int


class _Corrupt(Exception):
    """Internal: carries a one-line reason up to check(), which adds the file name."""


def _fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def _read_meta(mm: mmap.mmap, limit: int, index: int, page_size: int) -> _Meta | str:
    """The meta stored in page `index` assuming `page_size`, or why it is invalid."""
    off = index * page_size
    if off + _HDR + _META.size > limit:
        return "beyond end of file"
    pid, flags, _, _ = _PAGE_HEADER.unpack_from(mm, off)
    magic, version, psize, _, root, _, freelist, pgid, txid, checksum = _META.unpack_from(mm, off + _HDR)
    if magic != _MAGIC:
        return "bad magic"
    if version != _VERSION:
        return f"unsupported version {version}"
    # bolt skips the comparison when the stored checksum is 0; bolt never writes 0, so we don't.
    if checksum != _fnv1a64(mm[off + _HDR : off + _HDR + _META_SUMMED]):
        return "checksum mismatch"
    # The header is outside the checksum; bolt ignores it, but a wrong one means damage.
    if pid != index or flags != _META_PAGE:
        return f"page header id={pid} flags={flags:#x} is not meta page {index}"
    if psize != page_size or psize < 512 or psize & (psize - 1):
        return f"page size {psize} does not match its position"
    return _Meta(psize, root, freelist, pgid, txid)


def _choose_meta(mm: mmap.mmap, limit: int) -> _Meta:
    """Both metas are read; the valid one with the higher txid wins (ties: meta 0), as in bolt."""
    m0 = _read_meta(mm, limit, 0, int.from_bytes(mm[_HDR + 8 : _HDR + 12], "little"))
    if isinstance(m0, _Meta):
        candidates = [m0.page_size]
    else:
        # bolt falls back to the OS page size to find meta 1; try the other common sizes too.
        candidates = list(dict.fromkeys([mmap.PAGESIZE, 4096, 16384, 65536, 8192, 32768, 2048, 1024]))
    m1: _Meta | str = "not found"
    for page_size in candidates:
        found = _read_meta(mm, limit, 1, page_size)
        if isinstance(found, _Meta) or page_size == candidates[0]:
            m1 = found
        if isinstance(found, _Meta):
            break
    if isinstance(m0, _Meta) and isinstance(m1, _Meta):
        return m1 if m1.txid > m0.txid else m0
    if isinstance(m0, _Meta):
        return m0
    if isinstance(m1, _Meta):
        return m1
    raise _Corrupt(f"both meta pages invalid: page 0: {m0}; page 1: {m1}")


def _where(where: int | str) -> str:
    """Error locations are built only on failure: an int is a page id."""
    return f"page {where}" if isinstance(where, int) else where


def _check_range(first: bytes, last: bytes, lo: bytes | None, hi: bytes | None, where: int | str) -> None:
    """A child page's keys must lie in [its separator in the parent, the next separator)."""
    if lo is not None and first < lo:
        raise _Corrupt(f"{_where(where)}: first key sorts before its parent's separator")
    if hi is not None and last >= hi:
        raise _Corrupt(f"{_where(where)}: last key sorts after the next separator")


class _Walker:
    """One pass over the tree: structural checks, page accounting and the status hash."""

    def __init__(self, mm: mmap.mmap, meta: _Meta) -> None:
        self.mm = mm
        self.mv = memoryview(mm)
        self.ps = meta.page_size
        self.hw = meta.pgid
        # Per page: 0 unseen, 1 reachable (metas, freelist, tree pages), 2 on the freelist.
        self.state = bytearray(meta.pgid)
        self.state[0:2] = b"\x01\x01"
        self.crc = 0
        self.total_key = 0
        self.revision = 0
        self.visited = 0
        self.meta_bucket: tuple[int, int] | None = None  # (offset, end) of the "meta" bucket's value

    def close(self) -> None:
        # Views still held by an exception's traceback keep it exported; GC releases it then.
        with contextlib.suppress(BufferError):
            self.mv.release()

    def page(self, pgid: int, referrer: int | str) -> tuple[int, int, int, int]:
        """Validate and claim page `pgid`; returns (offset, end of its span, flags, count)."""
        if not 2 <= pgid < self.hw:
            raise _Corrupt(f"{_where(referrer)}: references page {pgid}, outside 2..{self.hw - 1}")
        off = pgid * self.ps
        hid, flags, count, overflow = _PAGE_HEADER.unpack_from(self.mm, off)
        if hid != pgid:
            raise _Corrupt(f"page {pgid}: header says page {hid} (overwritten or zero-filled)")
        if overflow:
            self._claim_span(pgid, overflow)
        elif self.state[pgid]:
            self._claimed_twice(pgid)
        else:
            self.state[pgid] = 1
        end = off + (overflow + 1) * self.ps
        self._visit(end - off)
        return off, end, flags, count

    def _claim_span(self, pgid: int, overflow: int) -> None:
        last = pgid + overflow
        if last >= self.hw:
            raise _Corrupt(f"page {pgid}: overflow {overflow} runs past high water {self.hw}")
        seg = self.state[pgid : last + 1]
        if seg.count(0) != len(seg):
            self._claimed_twice(pgid + next(i for i, s in enumerate(seg) if s))
        self.state[pgid : last + 1] = b"\x01" * (overflow + 1)

    def _visit(self, nbytes: int) -> None:
        # Clean file pages count in RSS while mapped; dropping them keeps memory flat. They stay
        # in the page cache, so touching them again is only a minor fault.
        self.visited += nbytes
        if self.visited >= _RELEASE_EVERY:
            self.visited = 0
            if hasattr(mmap, "MADV_DONTNEED"):
                self.mm.madvise(mmap.MADV_DONTNEED)

    def _claimed_twice(self, pgid: int) -> None:
        if self.state[pgid] == 2:
            raise _Corrupt(f"page {pgid}: reachable but on the freelist")
        raise _Corrupt(f"page {pgid}: referenced more than once")

    def freelist(self, pgid: int) -> None:
        off, end, flags, count = self.page(pgid, "meta")
        if flags != _FREELIST:
            raise _Corrupt(f"page {pgid}: freelist page has flags {flags:#x}")
        start = off + _HDR
        if count == _OVERFLOW_COUNT:
            (count,) = _U64.unpack_from(self.mm, start)
            start += 8
        if start + 8 * count > end:
            raise _Corrupt(f"page {pgid}: freelist of {count} ids overruns the page")
        state = self.state
        for (free,) in _U64.iter_unpack(self.mv[start : start + 8 * count]):
            if not 2 <= free < self.hw:
                raise _Corrupt(f"page {pgid}: freelist holds page {free}, outside 2..{self.hw - 1}")
            if state[free]:
                what = "freed twice" if state[free] == 2 else "on the freelist but in use"
                raise _Corrupt(f"page {free}: {what}")
            state[free] = 2

    def unfreed(self) -> None:
        pgid = self.state.find(0)
        if pgid != -1:
            raise _Corrupt(f"page {pgid}: unreachable and not on the freelist")

    def bucket(self, voff: int, vend: int, depth: int, is_key: bool, where: str) -> None:
        """Walk the bucket whose 16-byte header is at mm[voff:vend]."""
        if depth > _MAX_BUCKET_DEPTH:
            raise _Corrupt(f"{where}: buckets nested deeper than {_MAX_BUCKET_DEPTH}")
        if vend - voff < _BUCKET_HEADER.size:
            raise _Corrupt(f"{where}: bucket value of {vend - voff} bytes is too short")
        root, _ = _BUCKET_HEADER.unpack_from(self.mm, voff)
        if root != 0:
            self.tree(root, depth, is_key, where)
            return
        # Inline bucket: a leaf page lives inside the value (bolt never inlines branches).
        poff = voff + _BUCKET_HEADER.size
        if vend - poff < _HDR:
            raise _Corrupt(f"{where}: inline bucket too short for a page header")
        _, flags, count, _ = _PAGE_HEADER.unpack_from(self.mm, poff)
        if flags != _LEAF:
            raise _Corrupt(f"{where}: inline bucket page has flags {flags:#x}")
        self.leaf(poff, vend, count, None, None, depth=depth, is_key=is_key, where=f"{where} (inline bucket)")

    def tree(self, root: int, depth: int, is_key: bool, where: int | str) -> None:
        """Pages of one bucket, depth first in key order, without recursion."""
        mm, mv, ps, hw, state = self.mm, self.mv, self.ps, self.hw, self.state
        unpack_header = _PAGE_HEADER.unpack_from
        stack: list[tuple[int, bytes | None, bytes | None, int | str]] = [(root, None, None, where)]
        pop, extend = stack.pop, stack.extend
        while stack:
            pgid, lo, hi, referrer = pop()
            # self.page() inlined: this loop runs once per page of the database.
            if not 2 <= pgid < hw:
                raise _Corrupt(f"{_where(referrer)}: references page {pgid}, outside 2..{hw - 1}")
            off = pgid * ps
            hid, flags, count, overflow = unpack_header(mm, off)
            if hid != pgid:
                raise _Corrupt(f"page {pgid}: header says page {hid} (overwritten or zero-filled)")
            if overflow:
                self._claim_span(pgid, overflow)
            elif state[pgid]:
                self._claimed_twice(pgid)
            else:
                state[pgid] = 1
            end = off + (overflow + 1) * ps
            self.visited += end - off
            if self.visited >= _RELEASE_EVERY:
                self._visit(0)
            if flags == _LEAF:
                self.leaf(off, end, count, lo, hi, depth=depth, is_key=is_key, where=pgid)
                continue
            if flags != _BRANCH:
                raise _Corrupt(f"page {pgid}: flags {flags:#x}, expected a branch or leaf page")
            if count == 0:
                raise _Corrupt(f"page {pgid}: empty branch page")
            arr = off + _HDR
            arr_end = arr + _ELEM * count
            if arr_end > end:
                raise _Corrupt(f"page {pgid}: {count} elements overrun the page")
            # bolt writes keys back to back after the elements; a loop that checks exactly that
            # is the fast path, anything else goes through _scan (precise errors or odd layout).
            children: list[int] = []
            keys: list[bytes] = []
            fast = False
            prev = b""
            e = arr
            expect = arr_end
            for pos, ksize, child in _BRANCH_ELEM.iter_unpack(mv[arr:arr_end]):
                k0 = e + pos
                if k0 != expect:
                    break
                expect = k0 + ksize
                key = mm[k0:expect]
                if key <= prev:
                    break
                children.append(child)
                keys.append(key)
                prev = key
                e += _ELEM
            else:
                fast = expect <= end
            if not fast:
                scanned = self._scan(arr, end, count, pgid, branch=True)
                children = [entry[0] for entry in scanned]
                keys = [entry[4] for entry in scanned]
            _check_range(keys[0], keys[-1], lo, hi, pgid)
            # Child i holds keys in [key i, key i+1); pushed in reverse so they pop in order.
            his: list[bytes | None] = [*keys[1:], hi]
            extend(zip(reversed(children), reversed(keys), reversed(his), repeat(pgid)))

    def _scan(
        self,
        arr: int,
        end: int,
        count: int,
        where: int | str,
        *,
        branch: bool = False,
        min_ksize: int = 1,
    ) -> list[tuple[int, int, int, int, bytes]]:
        """Element by element, raising on damage: [(flags or child pgid, k0, k1, v1, key)].

        The slow path, for pages holding buckets, an unusual layout, or to name the element
        that broke a fast-path check. Offsets are absolute: key mm[k0:k1], value mm[k1:v1].
        """
        arr_end = arr + _ELEM * count
        out: list[tuple[int, int, int, int, bytes]] = []
        prev = b""
        e = arr
        for i in range(count):
            if branch:
                pos, ksize, first = _BRANCH_ELEM.unpack_from(self.mm, e)
                vsize = 0
            else:
                first, pos, ksize, vsize = _LEAF_ELEM.unpack_from(self.mm, e)
                if first not in (0, _BUCKET_LEAF):
                    raise _Corrupt(f"{_where(where)}: element {i} has flags {first:#x}")
            k0 = e + pos
            k1 = k0 + ksize
            v1 = k1 + vsize
            if k0 < arr_end or v1 > end:
                raise _Corrupt(f"{_where(where)}: element {i} lies outside the page")
            key = self.mm[k0:k1]
            if ksize < min_ksize:
                raise _Corrupt(f"{_where(where)}: element {i} has a {ksize}-byte key")
            if key <= prev:
                raise _Corrupt(f"{_where(where)}: keys out of order at element {i}")
            out.append((first, k0, k1, v1, key))
            prev = key
            e += _ELEM
        return out

    def bucket_entries(self, voff: int, vend: int) -> list[tuple[bytes, bytes]]:
        """Plain (key, value) entries of a small bucket, already checked by the walk."""
        root, _ = _BUCKET_HEADER.unpack_from(self.mm, voff)
        pages: list[tuple[int, int]] = []
        if root == 0:
            pages.append((voff + _BUCKET_HEADER.size, vend))
        else:
            stack = [root]
            while stack:
                pgid = stack.pop()
                off = pgid * self.ps
                _, flags, count, overflow = _PAGE_HEADER.unpack_from(self.mm, off)
                end = off + (overflow + 1) * self.ps
                if flags == _BRANCH:
                    stack.extend(e[0] for e in self._scan(off + _HDR, end, count, pgid, branch=True))
                else:
                    pages.append((off, end))
        out: list[tuple[bytes, bytes]] = []
        for off, end in pages:
            _, flags, count, _ = _PAGE_HEADER.unpack_from(self.mm, off)
            for eflags, _k0, k1, v1, key in self._scan(off + _HDR, end, count, off):
                if not eflags:
                    out.append((key, bytes(self.mm[k1:v1])))
        return out

    def leaf(
        self,
        off: int,
        end: int,
        count: int,
        lo: bytes | None,
        hi: bytes | None,
        *,
        depth: int,
        is_key: bool,
        where: int | str,
    ) -> None:
        """Check one leaf page (or inline bucket page) and feed it to the hash.

        depth 0 is the root bucket (its entries are the top-level buckets), 1 a top-level bucket
        (hashed and counted, like etcdutl), >= 2 a nested bucket (checked only: etcdutl's
        ForEach does not descend into it).
        """
        if count == 0:
            return
        mm, mv = self.mm, self.mv
        arr = off + _HDR
        arr_end = arr + _ELEM * count
        if arr_end > end:
            raise _Corrupt(f"{_where(where)}: {count} elements overrun the page")
        min_ksize = 8 if is_key else 1  # etcd reads k[0:8] as the revision; bolt forbids b""
        if depth == 0:
            self._slow_leaf(arr, end, count, lo, hi, depth=depth, is_key=is_key, where=where)
            return
        # Fast path: plain entries laid out as bolt writes them (keys and values back to back
        # right after the elements), so the whole page is one CRC call.
        prev = b""
        e = arr
        expect = arr_end
        for flags, pos, ksize, vsize in _LEAF_ELEM.iter_unpack(mv[arr:arr_end]):
            k0 = e + pos
            if k0 != expect or flags:
                break
            k1 = k0 + ksize
            key = mm[k0:k1]
            if key <= prev or ksize < min_ksize:
                break
            prev = key
            expect = k1 + vsize
            e += _ELEM
        else:
            if expect <= end:
                if lo is not None:  # the first key is the first data after the elements
                    first = mm[arr_end : arr_end + _LEAF_ELEM.unpack_from(mm, arr)[2]]
                    _check_range(first, prev, lo, hi, where)
                elif hi is not None:
                    _check_range(prev, prev, lo, hi, where)
                if depth == 1:
                    self.crc = crc32c.crc32c(mv[arr_end:expect], self.crc)
                    self.total_key += count
                    if is_key:
                        self.revision = int.from_bytes(prev[:8], "big")
                return  # depth >= 2: a nested bucket's contents are checked, not hashed
        self._slow_leaf(arr, end, count, lo, hi, depth=depth, is_key=is_key, where=where)

    def _slow_leaf(
        self,
        arr: int,
        end: int,
        count: int,
        lo: bytes | None,
        hi: bytes | None,
        *,
        depth: int,
        is_key: bool,
        where: int | str,
    ) -> None:
        """Entry by entry, in key order: pages holding buckets, unusual layouts, damage."""
        entries = self._scan(arr, end, count, where, min_ksize=8 if is_key else 1)
        _check_range(entries[0][4], entries[-1][4], lo, hi, where)
        mv = self.mv
        for i, (flags, k0, k1, v1, key) in enumerate(entries):
            if depth <= 1:
                self.crc = crc32c.crc32c(mv[k0:k1], self.crc)  # key or bucket name
            if flags:
                # To ForEach a bucket's value is nil: only its name is hashed.
                child_is_key = depth == 0 and key == b"key"
                if depth == 0 and key == b"meta":
                    self.meta_bucket = (k1, v1)
                self.bucket(k1, v1, depth + 1, child_is_key, f"{_where(where)} element {i}")
            elif depth == 0:
                raise _Corrupt(f"{_where(where)}: top-level entry {i} is not a bucket")
            elif depth == 1:
                self.crc = crc32c.crc32c(mv[k1:v1], self.crc)
        if depth == 1:
            self.total_key += count
            if is_key:
                self.revision = int.from_bytes(entries[-1][4][:8], "big")


def check(path: str | os.PathLike[str], size: int | None = None) -> BoltStatus:
    """Verify a bbolt file's structure and compute what `etcdutl snapshot status` reports.

    `size`: only the first `size` bytes are the database (an etcd snapshot's SHA-256 trailer
    follows it); None uses the whole file, which bolt also accepts with the trailer present.
    Raises IntegrityError (one line, naming the page) for any damage; OSError if unreadable.
    """
    name = os.fspath(path)
    with open(path, "rb") as f:
        file_size = os.fstat(f.fileno()).st_size
        limit = file_size if size is None else size
        if limit > file_size or limit < 0:
            raise IntegrityError(f"{name}: database size {limit} but the file has {file_size} bytes")
        if limit < _HDR + _META.size:
            raise IntegrityError(f"{name}: {limit} bytes is too small for a bbolt database")
        mm = mmap.mmap(f.fileno(), limit, access=mmap.ACCESS_READ)
    reason = ""
    try:
        status = _check(mm, limit)
    except _Corrupt as exc:
        reason = str(exc)
    except (struct.error, IndexError, ValueError, OverflowError, RecursionError) as exc:
        reason = f"malformed ({type(exc).__name__}: {exc})"
    finally:
        # A view still held by a traceback would make close() fail; GC unmaps it then.
        with contextlib.suppress(BufferError):
            mm.close()
    if reason:
        raise IntegrityError(f"{name}: {reason}")
    return status


def _check(mm: mmap.mmap, limit: int) -> BoltStatus:
    meta = _choose_meta(mm, limit)
    if meta.pgid < 2:
        raise _Corrupt(f"meta: high water mark {meta.pgid} is below the meta pages")
    if meta.pgid * meta.page_size > limit:
        raise _Corrupt(
            f"page {meta.pgid - 1}: beyond end of file: the database needs "
            f"{meta.pgid * meta.page_size} bytes, the file has {limit} (truncated?)"
        )
    walker = _Walker(mm, meta)
    compact = 0
    try:
        stored_freelist = meta.freelist != _NO_FREELIST
        if stored_freelist:
            walker.freelist(meta.freelist)
        walker.tree(meta.root, 0, False, "meta root")
        # Without a stored freelist bolt rebuilds it from the unreachable pages: nothing to check.
        if stored_freelist:
            walker.unfreed()
        if walker.meta_bucket is not None:
            for key, value in walker.bucket_entries(*walker.meta_bucket):
                if key == b"finishedCompactRev" and len(value) >= 8:
                    compact = int.from_bytes(value[:8], "big")
    finally:
        walker.close()
    return BoltStatus(
        hash=walker.crc,
        revision=walker.revision,
        total_key=walker.total_key,
        total_size=meta.pgid * meta.page_size,
        page_size=meta.page_size,
        txid=meta.txid,
        compact_revision=compact,
    )
