"""The main paths end to end on both real S3 servers (moto and SeaweedFS): a multipart snapshot,
list, verify, fetch, restore from it, and prune with debris."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from conftest import Bucket, Cluster, StartEtcd, config_env, run_cli
from etcd_backup.config import Config
from etcd_backup.etcdproc import free_port, wait_healthy
from etcd_backup.model import Manifest
from etcd_backup.service.backup import take_snapshot
from etcd_backup.storage import open_store, put_bytes

pytestmark = pytest.mark.timeout(240)
MiB = 1024 * 1024
PART = "5MiB"


def _cli_json(env: dict[str, str], *args: str) -> object:
    r = run_cli(*args, "--output", "json", env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_multipart_snapshot_list_verify_fetch_restore(
    etcd_single: Cluster, any_s3_bucket: Bucket, start_etcd: StartEtcd, tmp_path: Path
) -> None:
    bucket = any_s3_bucket
    expected = {f"/big/{i:02d}": os.urandom(MiB - 1024) for i in range(12)}  # a db of 3 parts
    _put_all(etcd_single.endpoints[0], expected)
    env = {**config_env(etcd_single, storage__part_size=PART), **bucket.env()}
    m = _cli_json(env, "snapshot")
    assert isinstance(m, dict)
    assert m["object_size"] > 2 * 5 * MiB
    assert f"{bucket.prefix}/{m['object_key']}" in list(bucket.keys())
    assert bucket.uploads() == []

    listed = _cli_json(env, "list")
    assert isinstance(listed, list) and [x["id"] for x in listed] == [m["id"]]
    verified = _cli_json(env, "verify", "latest")
    assert isinstance(verified, dict) and verified["id"] == m["id"]

    dest = tmp_path / "fetched.db"
    r = run_cli("fetch", "latest", "--to", str(dest), env=env)
    assert r.returncode == 0, r.stderr
    status = subprocess.run(
        [etcd_single.tools.etcdutl or "", "snapshot", "status", str(dest), "-w", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(status.stdout)["revision"] == m["revision"]

    target = tmp_path / "restored" / "m1.etcd"
    peer = f"http://127.0.0.1:{free_port()}"
    out = _cli_json(
        env, "restore", "single", "--snapshot", m["id"], "--name", "m1", "--peer-url", peer, "--data-dir", str(target)
    )
    assert isinstance(out, dict)
    restored = start_etcd(etcd_single.tools.etcd, out["etcd_flags"])
    wait_healthy(restored.client_url, 30, restored)
    assert _get_prefix(restored.client_url, "/big/") == expected


def _client(url: str) -> Any:
    import etcd3

    u = urlparse(url)
    return etcd3.client(u.hostname, u.port, timeout=30)


def _put_all(url: str, items: dict[str, bytes]) -> None:
    client = _client(url)
    try:
        for key, value in items.items():
            client.put(key, value)
    finally:
        client.close()


def _get_prefix(url: str, prefix: str) -> dict[str, bytes]:
    client = _client(url)
    try:
        keys = [meta.key.decode() for _, meta in client.get_prefix(prefix, keys_only=True)]
        return {key: client.get(key)[0] for key in keys}
    finally:
        client.close()


def _snapshot_at(cfg: Config, when: datetime) -> Manifest:
    return take_snapshot(cfg, open_store(cfg.storage), reason="test", now=lambda: when)


def test_prune_with_debris(etcd_single: Cluster, any_s3_bucket: Bucket) -> None:
    bucket = any_s3_bucket
    etcd_single.put("k", "v")
    cfg = Config(
        etcd={"endpoints": etcd_single.endpoints},
        storage={"url": bucket.url, "endpoint_url": bucket.server.endpoint},
    )
    now = datetime.now(UTC)
    old = _snapshot_at(cfg, now - timedelta(days=30))
    kept = [_snapshot_at(cfg, now - timedelta(seconds=s)) for s in (2, 1)]
    store = open_store(cfg.storage)
    put_bytes(store, "snapshots/20200102T000000000Z-0rphan.db", b"y" * 64)
    bucket.server.client().create_multipart_upload(Bucket=bucket.name, Key=f"{bucket.prefix}/snapshots/unfinished.db")

    policy = {
        "retention__keep_last": "2",
        "retention__hourly": "0",
        "retention__daily": "0",
        "retention__weekly": "0",
        "retention__monthly": "0",
        "retention__debris_age": "0s",  # no upload of ours is in flight here
    }
    env = {**config_env(etcd_single, **policy), **bucket.env()}
    report = _cli_json(env, "prune")
    assert isinstance(report, dict)
    assert [d["id"] for d in report["deleted"]] == [old.id]
    assert sorted(d["key"] for d in report["debris"]) == [
        "snapshots/20200102T000000000Z-0rphan.db",
        "snapshots/unfinished.db",
    ]
    assert bucket.uploads() == []
    left = sorted(k.rsplit("/", 1)[-1] for k in list(bucket.keys()))
    assert left == sorted(f"{m.id}{ext}" for m in kept for ext in (".db", ".json"))
    listed = _cli_json(env, "list")
    assert isinstance(listed, list) and [x["id"] for x in listed] == [m.id for m in reversed(kept)]
