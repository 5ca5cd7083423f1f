"""A snapshot that is not intact is never stored: etcd's SHA-256 trailer is checked as bytes flow."""

from __future__ import annotations

import json
import os
import struct
import subprocess
from pathlib import Path

import pytest

from conftest import Bucket, Cluster, config_env, run_cli
from etcd_backup.errors import IntegrityError
from etcd_backup.service.backup import TrailerHasher
from faultproxy import FaultProxy

pytestmark = pytest.mark.timeout(180)


def _fill(cluster: Cluster, n: int = 40) -> None:
    for i in range(n):
        cluster.put(f"/data/{i:04d}", f"value-{i}-" + "z" * 200)


def _real_snapshot(cluster: Cluster, path: Path) -> bytes:
    subprocess.run(
        [cluster.tools.etcdctl, f"--endpoints={cluster.endpoints[0]}", "snapshot", "save", str(path)],
        check=True,
        capture_output=True,
        env={"ETCDCTL_API": "3"},
    )
    return path.read_bytes()


@pytest.mark.parametrize("chunk", [1, 31, 32, 33, 4096, 32768, 10**9])
def test_trailer_hasher_accepts_real_snapshot_in_any_chunking(etcd_single: Cluster, tmp_path: Path, chunk: int) -> None:
    _fill(etcd_single, 5)
    raw = _real_snapshot(etcd_single, tmp_path / "s.db")
    hasher = TrailerHasher()
    step = min(chunk, len(raw)) if chunk > 1 else 997  # 1-byte steps would be slow; 997 is odd enough
    for i in range(0, len(raw), step):
        hasher.update(raw[i : i + step])
    result = hasher.result("test")
    assert result.total == len(raw)


@pytest.mark.parametrize("size", [0, 1, 127, 128, 32 * 1024, 300_000])
def test_snapshot_messages_are_decoded_as_protobuf_does(size: int) -> None:
    # The blob is read by hand from each message (a view, no copy): it must be what protobuf reads,
    # with every field etcd 3.4 to 3.6 sends (header, remaining_bytes, blob, version) in any order.
    from etcd3 import etcdrpc

    from etcd_backup.etcdclient import _snapshot_blob

    blob = os.urandom(size)
    header = etcdrpc.ResponseHeader(cluster_id=2**63 + 5, member_id=7, revision=123456789, raft_term=9)
    msg = etcdrpc.SnapshotResponse(header=header, remaining_bytes=2**40, blob=blob)
    raw = msg.SerializeToString()
    version = b"\x22\x053.6.0"  # field 4 (string), unknown to these protos
    for wire in (raw, raw + version, version + raw):
        assert bytes(_snapshot_blob(wire)) == blob
    assert bytes(_snapshot_blob(etcdrpc.SnapshotResponse(blob=blob).SerializeToString())) == blob


@pytest.mark.parametrize("wire", [b"\x1a\x05abc", b"\x1a", b"\x0d\x00\x00\x00\x00", b"\x10\xff"])
def test_malformed_snapshot_message_is_refused(wire: bytes) -> None:
    from etcd_backup.etcdclient import _snapshot_blob

    with pytest.raises((ValueError, IndexError)):
        _snapshot_blob(wire)


@pytest.mark.parametrize("damage", ["flip-data", "flip-trailer", "truncate-1", "truncate-trailer", "empty"])
def test_trailer_hasher_rejects_damaged_stream(etcd_single: Cluster, tmp_path: Path, damage: str) -> None:
    raw = bytearray(_real_snapshot(etcd_single, tmp_path / "s.db"))
    if damage == "flip-data":
        raw[5000] ^= 0x01
    elif damage == "flip-trailer":
        raw[-1] ^= 0x01
    elif damage == "truncate-1":
        raw = raw[:-1]
    elif damage == "truncate-trailer":
        raw = raw[:-32]
    else:
        raw = bytearray()
    hasher = TrailerHasher()
    hasher.update(bytes(raw))
    with pytest.raises(IntegrityError):
        hasher.result("test")


def test_corrupted_stream_exits_3_and_stores_nothing_on_s3(
    etcd_single: Cluster, s3_bucket: Bucket, tmp_path: Path
) -> None:
    _fill(etcd_single)
    host, port = etcd_single.endpoints[0].split("//")[1].split(":")
    proxy = FaultProxy((host, int(port)), corrupt_http2_data_at=1000)
    try:
        spool = tmp_path / "spool"
        env = {
            **config_env(etcd_single),
            **s3_bucket.env(),
            "ETCD_BACKUP_ETCD__ENDPOINTS": proxy.url,
            "ETCD_BACKUP_STORAGE__SPOOL_DIR": str(spool),
        }
        r = run_cli("snapshot", env=env)
    finally:
        proxy.close()
    assert proxy.corrupted.is_set(), "the proxy never saw the snapshot stream"
    assert r.returncode == 3, r.stderr
    assert "trailer" in r.stderr
    assert s3_bucket.keys() == []
    assert s3_bucket.uploads() == []
    assert list(spool.iterdir()) == []


def test_corrupted_stream_stores_nothing_in_directory(etcd_single: Cluster, tmp_path: Path) -> None:
    _fill(etcd_single)
    host, port = etcd_single.endpoints[0].split("//")[1].split(":")
    proxy = FaultProxy((host, int(port)), corrupt_http2_data_at=1000)
    try:
        env = config_env(etcd_single, f"file://{tmp_path}/store", etcd__endpoints=proxy.url)
        r = run_cli("snapshot", env=env)
    finally:
        proxy.close()
    assert r.returncode == 3, r.stderr
    files = [p for p in (tmp_path / "store").rglob("*") if p.is_file()]
    assert files == []


class _Renames:
    """inotify on a directory: the names things were renamed to (committed) there, in order.
    LocalStore commits every object by renaming a finished partial file into place."""

    IN_MOVED_TO = 0x00000080

    def __init__(self, directory: Path) -> None:
        import ctypes
        import ctypes.util

        self._libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self.fd = self._libc.inotify_init1(os.O_NONBLOCK)
        assert self.fd >= 0, ctypes.get_errno()
        assert self._libc.inotify_add_watch(self.fd, str(directory).encode(), self.IN_MOVED_TO) >= 0

    def names(self) -> list[str]:
        out: list[str] = []
        try:
            data = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return out
        pos = 0
        while pos < len(data):
            _wd, _mask, _cookie, length = struct.unpack_from("iIII", data, pos)
            name = data[pos + 16 : pos + 16 + length].rstrip(b"\0").decode()
            out.append(name)
            pos += 16 + length
        return out

    def close(self) -> None:
        os.close(self.fd)


def test_manifest_is_committed_after_data(etcd_single: Cluster, tmp_path: Path) -> None:
    """The manifest is the commit point: in the store, the data object appears first."""
    _fill(etcd_single)
    folder = tmp_path / "store" / "snapshots"
    folder.mkdir(parents=True)
    renames = _Renames(folder)
    try:
        r = run_cli("snapshot", "--output", "json", env=config_env(etcd_single, f"file://{tmp_path}/store"))
        assert r.returncode == 0, r.stderr
        order = renames.names()
    finally:
        renames.close()
    m = json.loads(r.stdout)
    assert order == [Path(m["object_key"]).name, f"{m['id']}.json"]
