"""Stores fed from a spool that is still growing (the snapshot path): parts go out while the
stream arrives, and the object appears only once the spool is released (the snapshot verified)."""

from __future__ import annotations

import ctypes
import io
import mmap
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import BUCKET_FIXTURES, S3_KINDS, Bucket
from etcd_backup.errors import IntegrityError
from etcd_backup.scratch import sweep
from etcd_backup.spool import Spool
from etcd_backup.storage import SnapshotStore
from etcd_backup.storage.kept import KeepSpool
from etcd_backup.storage.local import LocalStore
from etcd_backup.storage.memory import MemoryStore
from etcd_backup.storage.s3 import S3Store

pytestmark = pytest.mark.timeout(120)
MiB = 1024 * 1024


@pytest.fixture(params=["memory", "file", *S3_KINDS])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> SnapshotStore:
    if request.param == "memory":
        return MemoryStore()
    if request.param == "file":
        return LocalStore(tmp_path / "store")
    bucket: Bucket = request.getfixturevalue(BUCKET_FIXTURES[request.param])
    return S3Store(bucket.name, bucket.prefix, endpoint_url=bucket.server.endpoint, part_size=5 * MiB, concurrency=3)


def _upload(store: SnapshotStore, spool: Spool) -> tuple[threading.Thread, list[object]]:
    outcome: list[object] = []

    def run() -> None:
        reader = spool.reader()
        try:
            outcome.append(store.put("snapshots/s.db", reader, spooled=reader))  # type: ignore[arg-type]
        except BaseException as exc:  # noqa: BLE001 - inspected by the test
            outcome.append(exc)
        finally:
            reader.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, outcome


def test_growing_spool_is_stored_whole_only_after_release(store: SnapshotStore, tmp_path: Path) -> None:
    data = os.urandom(17 * MiB + 123)
    spool = Spool(str(tmp_path / "spool"), "t", durable=isinstance(store, LocalStore))
    try:
        t, outcome = _upload(store, spool)
        for i in range(0, len(data), 700_001):
            spool.append(data[i : i + 700_001])
        spool.finish()
        t.join(2)
        assert t.is_alive(), "the upload completed before the snapshot was released"
        assert store.list() == []
        spool.release()
        t.join(60)
        assert not t.is_alive()
        assert not isinstance(outcome[0], BaseException), outcome[0]
        buf = io.BytesIO()
        store.get("snapshots/s.db", buf)
        assert buf.getvalue() == data
        assert store.list_debris() == []
    finally:
        spool.close()


def test_failed_spool_leaves_nothing(store: SnapshotStore, tmp_path: Path) -> None:
    spool = Spool(str(tmp_path / "spool"), "t")
    try:
        t, outcome = _upload(store, spool)
        spool.append(os.urandom(12 * MiB))  # parts are on their way
        spool.fail(IntegrityError("trailer mismatch"))
        t.join(60)
        assert isinstance(outcome[0], IntegrityError)
        assert store.list() == []
        assert store.list_debris() == []
    finally:
        spool.close()


def _allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


@pytest.mark.parametrize("kind", S3_KINDS)
def test_a_disposable_spool_is_a_ring_behind_the_upload_and_a_plain_one_stays_whole(
    request: pytest.FixtureRequest, tmp_path: Path, kind: str
) -> None:
    """The ciphertext spool is a ring of the upload's window (concurrency + 2 parts, here 25 MiB),
    written over once the store checked each part (a 1 GiB upload holds a few parts of page cache,
    not 1 GiB); the plaintext spool, which the structural check reads whole at the end, keeps
    every byte. Either way the stored object is every byte."""
    bucket: Bucket = request.getfixturevalue(BUCKET_FIXTURES[kind])
    store = S3Store(bucket.name, bucket.prefix, endpoint_url=bucket.server.endpoint, part_size=5 * MiB, concurrency=3)
    data = os.urandom(53 * MiB + 321)
    for disposable in (True, False):
        spool = Spool(str(tmp_path / "spool"), "t", disposable=disposable)
        try:
            # As the store will (its thread may start after this one's first write): 5 parts.
            spool.pace(25 * MiB)
            t, outcome = _upload(store, spool)
            spool.append_all([data[i : i + MiB] for i in range(0, len(data), MiB)], len(data))
            spool.finish()
            if disposable:
                assert os.path.getsize(spool.path) <= 25 * MiB and _allocated(spool.path) <= 25 * MiB
            spool.release()
            t.join(60)
            assert not isinstance(outcome[0], BaseException), outcome[0]
            if not disposable:
                assert _allocated(spool.path) >= len(data)
                assert spool.path.read_bytes() == data
            buf = io.BytesIO()
            store.get("snapshots/s.db", buf)
            assert buf.getvalue() == data
        finally:
            spool.close()


def _cached(path: Path) -> int:
    """Bytes of the file in the page cache (mincore(2) over a mapping of it)."""
    size = os.stat(path).st_size
    page = mmap.PAGESIZE
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    with open(path, "r+b") as fh, mmap.mmap(fh.fileno(), size) as mapped:
        vec = ctypes.create_string_buffer(-(-size // page))
        anchor = ctypes.c_char.from_buffer(mapped)
        try:
            assert libc.mincore(ctypes.addressof(anchor), size, vec) == 0, os.strerror(ctypes.get_errno())
        finally:
            del anchor  # the mapping cannot close while a ctypes object points into it
        return sum(b & 1 for b in vec.raw) * page


def test_a_durable_disposable_spool_leaves_the_page_cache_once_written_back(tmp_path: Path) -> None:
    """The ciphertext that file:// links into place: dropped from the page cache behind the
    background writeback (nobody reads it here again), every byte still on disk. A plain durable
    spool (the plaintext, which the structural check reads at the end) stays cached."""
    data = os.urandom(100 * MiB)
    for disposable in (True, False):
        spool = Spool(str(tmp_path / "spool"), "t", durable=True, disposable=disposable)
        try:
            spool.append_all([data[i : i + MiB] for i in range(0, len(data), MiB)], len(data))
            if disposable:  # written back and dropped every 32 MiB, in the background
                deadline = time.monotonic() + 30
                while _cached(spool.path) > 40 * MiB and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert _cached(spool.path) <= 40 * MiB
            else:
                assert _cached(spool.path) >= len(data) - MiB
            spool.finish()
            spool.release()
            assert spool.path.read_bytes() == data
        finally:
            spool.close()


def test_the_spool_kept_for_the_copy_stays_whole(s3_bucket: Bucket, tmp_path: Path) -> None:
    """With a second copy, the primary's spool is the copy's source: nothing of it is freed."""
    inner = S3Store(s3_bucket.name, s3_bucket.prefix, endpoint_url=s3_bucket.server.endpoint, part_size=5 * MiB)
    store = KeepSpool(inner)
    data = os.urandom(17 * MiB + 5)
    spool = Spool(str(tmp_path / "spool"), "t", disposable=True)
    try:
        t, outcome = _upload(store, spool)
        spool.append(data)
        spool.finish()
        spool.release()
        t.join(60)
        assert not isinstance(outcome[0], BaseException), outcome[0]
    finally:
        spool.close()
    kept = store.take("snapshots/s.db")
    assert kept is not None
    try:
        with kept.reader() as fh:
            assert fh.read() == data
    finally:
        kept.close()


def test_spool_vectored_append_keeps_order_across_many_buffers(tmp_path: Path) -> None:
    # More buffers than one writev takes, of uneven sizes, some empty: the file is their concatenation.
    buffers = [os.urandom(n % 97) for n in range(2500)]
    spool = Spool(str(tmp_path), prefix="t")
    spool.append_all(buffers, sum(len(b) for b in buffers))
    spool.append(b"end")
    assert spool.written == sum(len(b) for b in buffers) + 3
    assert spool.path.read_bytes() == b"".join(buffers) + b"end"
    spool.close()


def _file_digests(data: bytes, part: int, algorithm: str) -> list[bytes]:
    from etcd_backup.storage.s3checksum import Checksum

    return Checksum(algorithm).of_ranges(io.BytesIO(data).read, len(data), part)  # type: ignore[arg-type]


@pytest.mark.parametrize("algorithm", ["crc32c", "sha256", "md5"])
def test_part_digests_come_from_the_appended_bytes(tmp_path: Path, algorithm: str) -> None:
    # Buffers of uneven sizes that straddle part boundaries; a tracker registered from the start
    # covers every part, the short last one once the spool is finished.
    from etcd_backup.storage.s3checksum import Checksum

    part = 64 * 1024
    data = os.urandom(10 * part + 777)
    spool = Spool(str(tmp_path), "t")
    try:
        tracker = spool.part_digests(part, Checksum(algorithm).new)  # type: ignore[arg-type]
        pos = 0
        for n in [1, part - 1, part + 5, 3 * part, 100, 5 * part]:
            spool.append_all([data[pos : pos + n // 2], data[pos + n // 2 : pos + n]], n)
            pos += n
        assert tracker.get(11) is None  # the last part is not over yet
        spool.append(data[pos:])
        spool.finish()
        assert [tracker.get(n) for n in range(1, 12)] == _file_digests(data, part, algorithm)
        assert tracker.get(12) is None
    finally:
        spool.close()


def test_part_digests_tracked_late_skip_the_parts_already_begun(tmp_path: Path) -> None:
    from etcd_backup.storage.s3checksum import Checksum

    part = 4096
    data = os.urandom(5 * part)
    spool = Spool(str(tmp_path), "t")
    try:
        spool.append(data[: part + 10])  # part 2 has begun
        tracker = spool.part_digests(part, Checksum("crc32c").new)
        spool.append(data[part + 10 :])
        spool.finish()
        expected = _file_digests(data, part, "crc32c")
        assert [tracker.get(n) for n in (1, 2)] == [None, None]  # read from the file by the store
        assert [tracker.get(n) for n in (3, 4, 5)] == expected[2:]
    finally:
        spool.close()


def test_parts_begun_before_the_upload_are_read_from_the_file(any_s3_bucket: Bucket, tmp_path: Path) -> None:
    # The upload starts after the first parts are written: their checksums come from the file,
    # the rest from the writer; a store that checks them (SeaweedFS) takes every part.
    bucket = any_s3_bucket
    store = S3Store(bucket.name, bucket.prefix, endpoint_url=bucket.server.endpoint, part_size=5 * MiB, concurrency=2)
    data = os.urandom(18 * MiB + 5)
    spool = Spool(str(tmp_path), "t")
    try:
        spool.append(data[: 7 * MiB])
        t, outcome = _upload(store, spool)
        for i in range(7 * MiB, len(data), MiB):
            spool.append(data[i : i + MiB])
        spool.finish()
        spool.release()
        t.join(60)
    finally:
        spool.close()
    assert not isinstance(outcome[0], BaseException), outcome[0]
    buf = io.BytesIO()
    store.get("snapshots/s.db", buf)
    assert buf.getvalue() == data


_WRITER = """
import sys, time
from etcd_backup.spool import Spool
spool = Spool(sys.argv[1], "killed")
spool.append(b"x" * 4096)
print(spool.path, flush=True)
time.sleep(120)
"""


def test_abandoned_spool_of_a_killed_writer_is_removed_and_a_live_one_kept(tmp_path: Path) -> None:
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None
        killed = Path(writer.stdout.readline().strip())
        live = Spool(str(tmp_path), prefix="live")
        live.append(b"y")
        an_hour_ago = time.time() - 3600
        for path in (killed, live.path):
            os.utime(path, (an_hour_ago, an_hour_ago))
        assert sweep(str(tmp_path), fallback_age=86400) == [], "a file whose writer is alive was removed"
    finally:
        writer.kill()
        writer.wait()
    assert sweep(str(tmp_path), fallback_age=86400) == [str(killed)]
    assert not killed.exists()
    assert live.path.exists(), "this process still writes it"
    # A fresh file without a lock may be a spool between creation and locking: left alone.
    fresh = tmp_path / ".fresh-spool-0.spool"
    fresh.write_bytes(b"z")
    assert sweep(str(tmp_path), fallback_age=86400) == []
    live.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".fresh-spool-0.spool"]
