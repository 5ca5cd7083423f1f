"""One suite over every storage backend: memory, file:// and s3:// (real S3 servers over HTTP)."""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import BUCKET_FIXTURES, S3_KINDS, Bucket
from etcd_backup.errors import IntegrityError, ObjectNotFound, StorageError
from etcd_backup.storage import SnapshotStore, get_bytes, put_bytes
from etcd_backup.storage.base import Capabilities
from etcd_backup.storage.local import LocalStore
from etcd_backup.storage.memory import MemoryStore
from etcd_backup.storage.s3 import S3Store

pytestmark = pytest.mark.timeout(120)
MiB = 1024 * 1024


@pytest.fixture(params=["memory", "file", *S3_KINDS])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SnapshotStore]:
    if request.param == "memory":
        yield MemoryStore()
    elif request.param == "file":
        yield LocalStore(tmp_path / "store")
    else:
        bucket: Bucket = request.getfixturevalue(BUCKET_FIXTURES[request.param])
        yield S3Store(bucket.name, bucket.prefix, endpoint_url=bucket.server.endpoint, part_size=5 * MiB, concurrency=2)


class Trickle(io.RawIOBase):
    """Returns data in short, uneven reads, like a stream that is still arriving."""

    def __init__(self, data: bytes, fail_after: int | None = None) -> None:
        self.data = data
        self.pos = 0
        self.fail_after = fail_after
        self.calls = 0

    def read(self, n: int = -1) -> bytes:  # type: ignore[override]
        if self.fail_after is not None and self.pos >= self.fail_after:
            raise IntegrityError("source failed verification")
        self.calls += 1
        step = 1 + (self.calls * 7919) % 70000
        want = step if n is None or n < 0 else min(n, step)
        out = self.data[self.pos : self.pos + want]
        self.pos += len(out)
        return out

    def readable(self) -> bool:
        return True


def test_put_get_roundtrip(store: SnapshotStore, tmp_path: Path) -> None:
    data = os.urandom(3 * MiB + 17)
    info = store.put("snapshots/a.db", io.BytesIO(data))
    assert info.size == len(data)
    out = tmp_path / "out"
    with open(out, "w+b") as fh:
        assert store.get("snapshots/a.db", fh) == len(data)
    assert out.read_bytes() == data


def test_short_reads_still_store_the_whole_object(store: SnapshotStore) -> None:
    data = os.urandom(12 * MiB + 5)  # several parts on S3
    info = store.put("snapshots/big.db", Trickle(data))  # type: ignore[arg-type]
    assert info.size == len(data)
    buf = io.BytesIO()
    store.get("snapshots/big.db", buf)
    assert buf.getvalue() == data


def test_failing_source_leaves_nothing(store: SnapshotStore) -> None:
    data = os.urandom(11 * MiB)
    with pytest.raises(IntegrityError):
        store.put("snapshots/bad.db", Trickle(data, fail_after=6 * MiB))  # type: ignore[arg-type]
    assert store.list() == []
    assert store.list_debris() == []


def test_list_is_relative_and_filtered(store: SnapshotStore) -> None:
    put_bytes(store, "snapshots/one.json", b"{}")
    put_bytes(store, "snapshots/two.db", b"x")
    put_bytes(store, "other/three", b"y")
    assert sorted(o.key for o in store.list("snapshots/")) == ["snapshots/one.json", "snapshots/two.db"]
    assert len(store.list()) == 3


def test_list_is_lexicographic_and_starts_after_a_relative_key(store: SnapshotStore) -> None:
    keys = ["snapshots/b.json", "snapshots/a.db", "snapshots/a.json", "snapshots/c/d", "snapshotsX", "deltas/1"]
    for key in keys:
        put_bytes(store, key, b"x")
    assert [o.key for o in store.list()] == sorted(keys)
    assert [o.key for o in store.list("snapshots/")] == [
        "snapshots/a.db",
        "snapshots/a.json",
        "snapshots/b.json",
        "snapshots/c/d",
    ]
    # S3 StartAfter: strictly greater, need not exist, relative to the store's prefix.
    assert [o.key for o in store.list("snapshots/", start_after="snapshots/a.json")] == [
        "snapshots/b.json",
        "snapshots/c/d",
    ]
    assert [o.key for o in store.list("snapshots/", start_after="snapshots/a")] == [
        "snapshots/a.db",
        "snapshots/a.json",
        "snapshots/b.json",
        "snapshots/c/d",
    ]
    assert [o.key for o in store.list("snapshots/", start_after="snapshots/b.zzz")] == ["snapshots/c/d"]
    assert store.list("snapshots/", start_after="snapshots/z") == []
    assert [o.key for o in store.list(start_after="snapshots/c/d")] == ["snapshotsX"]


def test_list_order_and_start_after_are_bytewise_across_folders(store: SnapshotStore) -> None:
    # A folder "b/" beside "b.json" and "b-x": byte order puts "b-x" < "b.json" < "b/1" ("-" < "." < "/"),
    # while a store backed by a file tree walks the folder "b" first.
    keys = ["d/b/1", "d/b/2", "d/b.json", "d/b-x", "d/ba", "d/a/q", "d/c"]
    for key in keys:
        put_bytes(store, key, b"x")
    assert [o.key for o in store.list("d/")] == sorted(keys)
    for after in ["d/b", "d/b/", "d/b/1", "d/b.json", "d/b-x", "d/a", "d/a/q", "d/", "d/b."]:
        got = [o.key for o in store.list("d/", start_after=after)]
        assert got == [k for k in sorted(keys) if k > after], after


def test_put_replaces_and_reports_what_it_stored(store: SnapshotStore) -> None:
    put_bytes(store, "snapshots/x.json", b"old contents")
    info = put_bytes(store, "snapshots/x.json", b"new")
    assert info.key == "snapshots/x.json" and info.size == 3
    if info.sha256 is not None:
        assert info.sha256 == hashlib.sha256(b"new").hexdigest()
    assert get_bytes(store, "snapshots/x.json") == b"new"
    assert [(o.key, o.size) for o in store.list()] == [("snapshots/x.json", 3)]


def test_capabilities_are_declared(store: SnapshotStore) -> None:
    caps = store.capabilities
    assert isinstance(caps, Capabilities)
    assert caps.links_spool == (caps.spool_dir is not None)


def test_delete_and_missing(store: SnapshotStore) -> None:
    put_bytes(store, "snapshots/gone.json", b"{}")
    store.delete("snapshots/gone.json")
    assert store.list() == []
    with pytest.raises(ObjectNotFound):
        get_bytes(store, "snapshots/gone.json")
    store.delete("snapshots/never-existed")  # deleting nothing is not an error


def test_a_file_store_below_a_file_is_an_error_not_empty(tmp_path: Path) -> None:
    """A missing directory is an empty store (a first run creates it); one below a file (a typo
    such as `token/sub`) never can be: listing it must fail, or `list` says "no snapshots"."""
    from etcd_backup.storage.local import LocalStore

    (tmp_path / "token").write_text("x")
    assert LocalStore(tmp_path / "absent" / "sub").list() == []
    with pytest.raises(StorageError, match=r"token is a file, not a directory$"):
        LocalStore(tmp_path / "token" / "sub").list()
    with pytest.raises(StorageError, match=r"token is a file, not a directory$"):
        LocalStore(tmp_path / "token" / "sub").list("snapshots/")
    # A folder inside the store that is a file: a StorageError too (it was NotADirectoryError,
    # raised while removing the partial file, which killed the daemon's delta thread).
    store = LocalStore(tmp_path / "store")
    put_bytes(store, "snapshots/a.json", b"{}")
    (tmp_path / "store" / "deltas").write_text("in the way")
    with pytest.raises(StorageError, match=r"writing deltas/c/x\.json failed"):
        put_bytes(store, "deltas/c/x.json", b"{}")


def test_ping(store: SnapshotStore) -> None:
    store.ping()


def test_missing_bucket_is_storage_error(any_s3_bucket: Bucket) -> None:
    store = S3Store("bucket-that-does-not-exist", "p", endpoint_url=any_s3_bucket.server.endpoint)
    for call in (store.ping, store.list, lambda: put_bytes(store, "k", b"x")):
        with pytest.raises(StorageError, match="bucket 'bucket-that-does-not-exist' does not exist"):
            call()
    with pytest.raises(StorageError, match=r"^listing of s3://bucket-that-does-not-exist/p failed: "):
        store.list()


def test_unreachable_endpoint_is_storage_error() -> None:
    from etcd_backup.etcdproc import free_port

    store = S3Store("b", "p", endpoint_url=f"http://127.0.0.1:{free_port()}")
    store.client.meta.config.retries["max_attempts"] = 1
    with pytest.raises(StorageError):
        store.list()
