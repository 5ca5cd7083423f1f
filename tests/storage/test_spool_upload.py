"""Stores fed from a spool that is still growing (the snapshot path): parts go out while the
stream arrives, and the object appears only once the spool is released (the snapshot verified)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import Bucket
from etcd_backup.errors import IntegrityError
from etcd_backup.scratch import sweep
from etcd_backup.spool import Spool
from etcd_backup.storage import SnapshotStore
from etcd_backup.storage.local import LocalStore
from etcd_backup.storage.s3 import S3Store

pytestmark = pytest.mark.timeout(120)
MiB = 1024 * 1024


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> SnapshotStore:
    if request.param == "file":
        return LocalStore(tmp_path / "store")
    bucket: Bucket = request.getfixturevalue("s3_bucket")
    return S3Store(bucket.name, bucket.prefix, endpoint_url=bucket.server.endpoint, part_size=5 * MiB, concurrency=3)


def _upload(store: SnapshotStore, spool: Spool) -> tuple[threading.Thread, list[object]]:
    outcome: list[object] = []

    def run() -> None:
        reader = spool.reader()
        try:
            outcome.append(store.put("snapshots/s.db", reader))  # type: ignore[arg-type]
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


def test_spool_vectored_append_keeps_order_across_many_buffers(tmp_path: Path) -> None:
    # More buffers than one writev takes, of uneven sizes, some empty: the file is their concatenation.
    buffers = [os.urandom(n % 97) for n in range(2500)]
    spool = Spool(str(tmp_path), prefix="t")
    spool.append_all(buffers, sum(len(b) for b in buffers))
    spool.append(b"end")
    assert spool.written == sum(len(b) for b in buffers) + 3
    assert spool.path.read_bytes() == b"".join(buffers) + b"end"
    spool.close()


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
