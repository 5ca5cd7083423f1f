"""Listing snapshots: every manifest read (several at a time), bad ones reported, a failed read
fails the whole listing, unchanged manifests not read again; a manifest is one S3 GET."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import BinaryIO

import pytest

from conftest import Bucket
from etcd_backup import manifest as manifests
from etcd_backup.errors import IntegrityError, ObjectNotFound, StorageError
from etcd_backup.model import Check, Manifest, Verification, rfc3339
from etcd_backup.storage import get_bytes, put_bytes
from etcd_backup.storage.memory import MemoryStore
from etcd_backup.storage.s3 import S3Store
from faultproxy import FaultProxy

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def snapshot(i: int) -> Manifest:
    when = T0 + timedelta(minutes=30 * i)
    sid = f"{when:%Y%m%dT%H%M%S}000Z-{i:06x}"
    check = Check(True, rfc3339(when))
    return Manifest(
        id=sid,
        created_at=rfc3339(when),
        reason="schedule",
        pinned=False,
        cluster_id="c1",
        member_id="m1",
        endpoint="http://127.0.0.1:2379",
        etcd_version="3.5.1",
        revision=100 + i,
        keys=1,
        db_size=1,
        object_key=manifests.data_key(sid, "none"),
        object_size=4,
        object_sha256="00" * 32,
        compression="none",
        verification=Verification(check, check),
    )


class CountingStore(MemoryStore):
    """A MemoryStore that counts reads, can fail one key, and records reads running at once."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []
        self.fail: dict[str, Exception] = {}
        self.running = 0
        self.most_at_once = 0
        self._count = threading.Lock()
        self.slow = threading.Event()

    def get(self, key: str, dest: BinaryIO) -> int:
        with self._count:
            self.reads.append(key)
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            if self.slow.is_set():
                threading.Event().wait(0.01)
            if key in self.fail:
                raise self.fail[key]
            return super().get(key, dest)
        finally:
            with self._count:
                self.running -= 1


@pytest.fixture
def store() -> CountingStore:
    s = CountingStore()
    for i in range(40):
        m = snapshot(i)
        put_bytes(s, m.object_key, b"data")
        manifests.write(s, m)
    return s


def test_every_manifest_is_read_newest_first_with_problems_named(store: CountingStore) -> None:
    broken, sizeless, dataless = snapshot(3), snapshot(7), snapshot(11)
    put_bytes(store, manifests.manifest_key(broken.id), b"{not json")
    put_bytes(store, sizeless.object_key, b"longer data")
    store.delete(dataless.object_key)
    put_bytes(store, "snapshots/20300101T000000000Z-orphan.db", b"x")
    store.slow.set()
    listing = manifests.list_snapshots(store)
    expected = [snapshot(i).id for i in reversed(range(40)) if i not in (3, 7, 11)]
    assert [m.id for m in listing.manifests] == expected
    assert sorted(p.key for p in listing.problems) == sorted(
        manifests.manifest_key(m.id) for m in (broken, sizeless, dataless)
    )
    assert [o.key for o in listing.orphans] == ["snapshots/20300101T000000000Z-orphan.db"]
    assert store.most_at_once > 1, "manifests were read one after the other"
    assert store.most_at_once <= manifests.READERS


def test_a_failed_read_fails_the_listing_and_a_vanished_manifest_is_skipped(store: CountingStore) -> None:
    gone = manifests.manifest_key(snapshot(5).id)
    store.fail[gone] = ObjectNotFound("deleted while we listed")
    assert snapshot(5).id not in [m.id for m in manifests.list_snapshots(store).manifests]
    store.fail[manifests.manifest_key(snapshot(20).id)] = StorageError("connection reset")
    with pytest.raises(StorageError, match="connection reset"):
        manifests.list_snapshots(store)


def test_unchanged_manifests_are_not_read_again(store: CountingStore) -> None:
    cache: manifests.ManifestCache = {}
    first = manifests.list_snapshots(store, cache)
    assert len(store.reads) == 40
    store.reads.clear()
    manifests.write(store, snapshot(40))
    put_bytes(store, snapshot(40).object_key, b"data")
    again = manifests.list_snapshots(store, cache)
    assert store.reads == [manifests.manifest_key(snapshot(40).id)]
    assert [m.id for m in again.manifests][1:] == [m.id for m in first.manifests]


@pytest.fixture
def proxy(s3_bucket: Bucket) -> Iterator[FaultProxy]:
    host, port = s3_bucket.server.endpoint.removeprefix("http://").split(":")
    p = FaultProxy((host, int(port)), http=True)
    yield p
    p.close()


def test_a_manifest_is_one_get(s3_bucket: Bucket, proxy: FaultProxy) -> None:
    """A small object is read with one request, not through the transfer manager (its threads per
    download made a manifest read twice as slow on moto and SeaweedFS)."""
    store = S3Store(s3_bucket.name, s3_bucket.prefix, endpoint_url=proxy.url)
    put_bytes(store, "snapshots/x.json", b"{}" * 100)

    def managed(*args: object, **kwargs: object) -> None:
        raise AssertionError("a manifest went through a managed download (a thread pool per object)")

    store.client.download_fileobj = managed
    before = len(proxy.seen)
    assert get_bytes(store, "snapshots/x.json") == b"{}" * 100
    assert [method for method, _, _ in proxy.seen[before:]] == ["GET"]
    with pytest.raises(ObjectNotFound):
        get_bytes(store, "snapshots/missing.json")
    put_bytes(store, "snapshots/big.json", b"x" * 2000)
    with pytest.raises(IntegrityError, match="larger than 1000 bytes"):
        get_bytes(store, "snapshots/big.json", limit=1000)
