"""Copying one object between stores (storage/transfer.py, s3copy.py, kept.py): from a kept spool,
server-side on one S3 endpoint, or streamed; always proven against the expected SHA-256."""

from __future__ import annotations

import hashlib
import io
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import BUCKET_FIXTURES, S3_KINDS, Bucket
from etcd_backup.errors import Cancelled, IntegrityError, ObjectNotFound
from etcd_backup.spool import Spool
from etcd_backup.storage import SnapshotStore, get_bytes, put_bytes
from etcd_backup.storage.kept import KeepSpool
from etcd_backup.storage.local import LocalStore
from etcd_backup.storage.memory import MemoryStore
from etcd_backup.storage.s3 import S3Store
from etcd_backup.storage.transfer import copy_object

pytestmark = pytest.mark.timeout(120)
MiB = 1024 * 1024
KINDS = ["memory", "file", *S3_KINDS]


def _open(kind: str, request: pytest.FixtureRequest, where: Path) -> SnapshotStore:
    if kind == "memory":
        return MemoryStore(where.name)
    if kind == "file":
        return LocalStore(where)
    bucket: Bucket = request.getfixturevalue(BUCKET_FIXTURES[kind])
    return S3Store(bucket.name, where.name, endpoint_url=bucket.server.endpoint, part_size=5 * MiB, concurrency=2)


@pytest.fixture(params=KINDS)
def dest(request: pytest.FixtureRequest, tmp_path: Path) -> SnapshotStore:
    return _open(request.param, request, tmp_path / "dest")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read(store: SnapshotStore, key: str) -> bytes:
    buf = io.BytesIO()
    store.get(key, buf)
    return buf.getvalue()


def test_streamed_copy_is_whole_and_proven(dest: SnapshotStore, tmp_path: Path) -> None:
    source = LocalStore(tmp_path / "source")
    data = os.urandom(12 * MiB + 3)  # several parts, several pipe chunks
    source.put("snapshots/a.db", io.BytesIO(data))
    info = copy_object(source, dest, "snapshots/a.db", size=len(data), sha256=_sha(data))
    assert info.size == len(data) and info.sha256 == _sha(data)
    assert _read(dest, "snapshots/a.db") == data


def test_copy_that_is_not_the_expected_bytes_leaves_nothing(dest: SnapshotStore, tmp_path: Path) -> None:
    source = LocalStore(tmp_path / "source")
    data = os.urandom(6 * MiB)
    source.put("snapshots/a.db", io.BytesIO(data))
    wrong = _sha(data[:-1] + bytes([data[-1] ^ 1]))  # what the manifest says: one bit differs
    with pytest.raises(IntegrityError, match="not the expected SHA-256"):
        copy_object(source, dest, "snapshots/a.db", size=len(data), sha256=wrong)
    assert [o.key for o in dest.list()] == []


def test_a_source_object_gone_is_object_not_found(dest: SnapshotStore, tmp_path: Path) -> None:
    source = LocalStore(tmp_path / "source")
    with pytest.raises(ObjectNotFound):
        copy_object(source, dest, "snapshots/gone.db", size=1, sha256=_sha(b"x"))
    assert [o.key for o in dest.list()] == []


def _kept(tmp_path: Path, data: bytes) -> tuple[KeepSpool, MemoryStore]:
    """A spooled put through KeepSpool, as a snapshot does it, the spool deleted afterwards."""
    primary = MemoryStore("primary")
    keeper = KeepSpool(primary)
    spool = Spool(str(tmp_path / "spool"), "t")
    result: list[object] = []

    def upload() -> None:
        reader = spool.reader()
        try:
            result.append(keeper.put("snapshots/a.db", reader, spooled=reader))  # type: ignore[arg-type]
        finally:
            reader.close()

    t = threading.Thread(target=upload)
    t.start()
    spool.append(data)
    spool.finish()
    spool.release()
    t.join(30)
    spool.close()  # the spool file is gone now
    assert result and not spool.path.exists()
    return keeper, primary


def test_copy_from_the_kept_spool_after_its_file_is_gone(dest: SnapshotStore, tmp_path: Path) -> None:
    data = os.urandom(11 * MiB + 1)
    keeper, _ = _kept(tmp_path, data)
    assert keeper.take("snapshots/other.db") is None
    local = keeper.take("snapshots/a.db")
    assert local is not None and local.size == len(data)
    empty = MemoryStore("empty")  # the source is never read: the bytes come from the kept file
    try:
        info = copy_object(empty, dest, "snapshots/a.db", size=len(data), sha256=_sha(data), local=local)
    finally:
        local.close()
    assert info.size == len(data)
    assert _read(dest, "snapshots/a.db") == data
    assert keeper.take("snapshots/a.db") is None  # handed out once


def test_a_file_store_copy_never_shares_the_primary_inode(tmp_path: Path) -> None:
    # file:// links a finished spool into place; the second copy must be bytes of its own.
    data = os.urandom(2 * MiB)
    keeper, _ = _kept(tmp_path, data)
    local = keeper.take("snapshots/a.db")
    assert local is not None
    dest = LocalStore(tmp_path / "dest")
    try:
        copy_object(MemoryStore(), dest, "snapshots/a.db", size=len(data), sha256=_sha(data), local=local)
        assert (
            os.stat(tmp_path / "dest" / "snapshots" / "a.db").st_ino
            != os.fstat(os.open(local.path, os.O_RDONLY)).st_ino
        )
    finally:
        local.close()


def test_a_cancelled_copy_leaves_nothing(tmp_path: Path, s3_bucket: Bucket) -> None:
    source = LocalStore(tmp_path / "source")
    data = os.urandom(12 * MiB)
    source.put("snapshots/a.db", io.BytesIO(data))
    dest = S3Store(s3_bucket.name, "dest", endpoint_url=s3_bucket.server.endpoint, part_size=5 * MiB)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        copy_object(source, dest, "snapshots/a.db", size=len(data), sha256=_sha(data), cancel=cancel)
    assert dest.list() == [] and s3_bucket.uploads() == []


@pytest.fixture(params=S3_KINDS)
def same_endpoint(request: pytest.FixtureRequest) -> Iterator[tuple[S3Store, S3Store]]:
    bucket: Bucket = request.getfixturevalue(BUCKET_FIXTURES[request.param])
    other = f"{bucket.name}-copy"
    bucket.server.client().create_bucket(Bucket=other)
    endpoint = bucket.server.endpoint
    yield (
        S3Store(bucket.name, "primary", endpoint_url=endpoint, part_size=5 * MiB),
        S3Store(other, "copy", endpoint_url=endpoint, part_size=5 * MiB),
    )


def test_server_side_copy_on_one_endpoint(same_endpoint: tuple[S3Store, S3Store]) -> None:
    primary, copy = same_endpoint
    data = os.urandom(11 * MiB + 7)  # a multipart object: its own checksum is a composite
    primary.put("snapshots/a.db", io.BytesIO(data))
    assert copy.capabilities.server_copy is copy
    info = copy.copy_from(primary, "snapshots/a.db", size=len(data), sha256=_sha(data))
    assert info is not None and info.size == len(data)
    assert _read(copy, "snapshots/a.db") == data
    # Another endpoint (or another profile) is no server-side copy: the caller streams.
    elsewhere = S3Store(copy.bucket, "x", endpoint_url="http://127.0.0.1:9")
    assert elsewhere.copy_from(primary, "snapshots/a.db", size=len(data), sha256=_sha(data)) is None


def test_server_side_copy_that_is_not_the_expected_bytes_leaves_nothing(
    same_endpoint: tuple[S3Store, S3Store],
) -> None:
    primary, copy = same_endpoint
    put_bytes(primary, "snapshots/a.db", b"the primary's bytes")
    with pytest.raises(IntegrityError, match="does not match its source"):
        copy.copy_from(primary, "snapshots/a.db", size=19, sha256=_sha(b"what the manifest says"))
    assert copy.list() == []
    assert get_bytes(primary, "snapshots/a.db") == b"the primary's bytes"
