"""What S3-compatible stores need: checksum modes (and stores that reject or ignore the headers),
addressing styles and a private CA, against the real servers (moto, SeaweedFS) over HTTP(S)."""

from __future__ import annotations

import io
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import LOOPBACK, Bucket, Cluster, TLSFiles, config_env, run_cli
from etcd_backup.errors import StorageError
from etcd_backup.spool import Spool
from etcd_backup.storage import get_bytes, put_bytes
from etcd_backup.storage.s3 import S3Store
from etcd_backup.storage.s3checksum import Algorithm
from faultproxy import FaultProxy, Request, Rule

pytestmark = pytest.mark.timeout(120)
MiB = 1024 * 1024
ALGORITHMS: list[Algorithm] = ["sha256", "crc32c", "md5"]


def _store(bucket: Bucket, endpoint: str | None = None, **kw: object) -> S3Store:
    return S3Store(
        bucket.name,
        bucket.prefix,
        endpoint_url=endpoint or bucket.server.endpoint,
        part_size=5 * MiB,
        concurrency=2,
        **kw,  # type: ignore[arg-type]
    )


def _put_spooled(store: S3Store, key: str, data: bytes, tmp_path: Path) -> None:
    spool = Spool(str(tmp_path), "t")
    result: list[object] = []

    def upload() -> None:
        reader = spool.reader()
        try:
            result.append(store.put(key, reader, spooled=reader))  # type: ignore[arg-type]
        except BaseException as exc:  # noqa: BLE001 - inspected below
            result.append(exc)
        finally:
            reader.close()

    t = threading.Thread(target=upload)
    t.start()
    try:
        for i in range(0, len(data), 1_000_003):
            spool.append(data[i : i + 1_000_003])
        spool.finish()
        spool.release()
        t.join(60)
    finally:
        spool.close()
    if isinstance(result[0], BaseException):
        raise result[0]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_checksum_mode_stores_whole_objects(any_s3_bucket: Bucket, algorithm: Algorithm, tmp_path: Path) -> None:
    store = _store(any_s3_bucket, checksum=algorithm)
    small, big, spooled = os.urandom(1000), os.urandom(11 * MiB + 3), os.urandom(10 * MiB + 7)
    put_bytes(store, "snapshots/small", small)
    store.put("snapshots/big", io.BytesIO(big))
    _put_spooled(store, "snapshots/spooled", spooled, tmp_path)
    for key, data in (("small", small), ("big", big), ("spooled", spooled)):
        buf = io.BytesIO()
        store.get(f"snapshots/{key}", buf)
        assert buf.getvalue() == data, key
    assert any_s3_bucket.uploads() == []


def _has_checksum_header(req: Request) -> bool:
    return any(h.startswith("x-amz-checksum") or h == "x-amz-sdk-checksum-algorithm" for h in req.headers)


@pytest.fixture
def proxy(s3_bucket: Bucket) -> Iterator[FaultProxy]:
    host, port = s3_bucket.server.endpoint.removeprefix("http://").split(":")
    p = FaultProxy((host, int(port)), http=True)
    yield p
    p.close()


def test_store_rejecting_checksum_headers_works_with_md5(s3_bucket: Bucket, proxy: FaultProxy) -> None:
    rejecting = proxy.add_rule(Rule("reject", match=_has_checksum_header, code="InvalidArgument"))
    with pytest.raises(StorageError, match=re.escape('storage.checksum = "md5"')):
        put_bytes(_store(s3_bucket, proxy.url), "snapshots/x", b"data")
    rejected = rejecting.fired
    store = _store(s3_bucket, proxy.url, checksum="md5")
    data = os.urandom(11 * MiB)
    store.put("snapshots/big", io.BytesIO(data))
    put_bytes(store, "snapshots/small", b"small")
    assert get_bytes(store, "snapshots/small") == b"small"
    assert rejecting.fired == rejected, "md5 mode sent an x-amz-checksum header"


def test_store_ignoring_checksums_is_proven_by_download(s3_bucket: Bucket, proxy: FaultProxy) -> None:
    # moto checks no checksum (it echoes what it is sent); with the reported checksum stripped too,
    # only reading the object back can tell a flipped byte.
    proxy.strip_head_headers = ("x-amz-checksum",)
    store = _store(s3_bucket, proxy.url)
    good = os.urandom(11 * MiB)
    store.put("snapshots/good", io.BytesIO(good))
    assert ("GET", f"/{s3_bucket.name}/{s3_bucket.prefix}/snapshots/good", "pass") in proxy.seen
    proxy.add_rule(Rule("corrupt", match=lambda r: r.is_part and "partNumber=2" in r.target, after_bytes=12345))
    with pytest.raises(StorageError, match="downloaded bytes differ"):
        store.put("snapshots/bad", io.BytesIO(os.urandom(11 * MiB)))
    assert [k.rsplit("/", 1)[-1] for k in list(s3_bucket.keys())] == ["good"], "the corrupt object was kept"
    assert s3_bucket.uploads() == []


@pytest.mark.parametrize("style", ["path", "virtual"])
def test_addressing_style(etcd_single: Cluster, s3_bucket: Bucket, proxy: FaultProxy, style: str) -> None:
    # "localhost" names no bucket host on this machine, so requests go through an HTTP proxy that
    # forwards to moto, which serves both styles; the proxy sees which one was used.
    port = s3_bucket.server.endpoint.rsplit(":", 1)[1]
    env = {
        **config_env(etcd_single, storage__addressing_style=style),
        **s3_bucket.env(),
        "ETCD_BACKUP_STORAGE__ENDPOINT_URL": f"http://localhost:{port}",
        "HTTP_PROXY": proxy.url,
        "http_proxy": proxy.url,
        "NO_PROXY": LOOPBACK,  # etcd's gRPC client honours the proxy variables too
        "no_proxy": LOOPBACK,
    }
    for command in (["snapshot"], ["list"], ["verify", "latest"]):
        r = run_cli(*command, env=env)
        assert r.returncode == 0, r.stderr
    targets = {target for _, target, _ in proxy.seen}
    expect = (
        f"http://{s3_bucket.name}.localhost:{port}/"
        if style == "virtual"
        else f"http://localhost:{port}/{s3_bucket.name}"
    )
    assert targets and all(t.startswith(expect) for t in targets), targets


def test_private_ca_for_an_https_endpoint(etcd_single: Cluster, seaweedfs_bucket: Bucket, tls_files: TLSFiles) -> None:
    endpoint = seaweedfs_bucket.server.https_endpoint
    assert endpoint is not None and endpoint.startswith(f"https://{LOOPBACK}:")
    env = {**config_env(etcd_single), **seaweedfs_bucket.env(), "ETCD_BACKUP_STORAGE__ENDPOINT_URL": endpoint}
    r = run_cli("snapshot", env={**env, "ETCD_BACKUP_STORAGE__CA_FILE": tls_files.ca})
    assert r.returncode == 0, r.stderr
    r = run_cli("list", env={**env, "ETCD_BACKUP_STORAGE__CA_FILE": tls_files.ca})
    assert r.returncode == 0 and r.stdout.count("\n") == 2, r.stdout + r.stderr
    for ca in (None, tls_files.other_ca):  # the system CAs, or one that signed nothing here
        r = run_cli("list", env={**env, **({"ETCD_BACKUP_STORAGE__CA_FILE": ca} if ca else {})})
        assert r.returncode == 1, r.stderr
        assert "storage.ca_file" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("list", env={**env, "ETCD_BACKUP_STORAGE__CA_FILE": "/nonexistent/ca.crt"})
    assert r.returncode == 2 and "ca_file" in r.stderr
