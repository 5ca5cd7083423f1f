"""The main paths end to end on both real S3 servers (moto and SeaweedFS): a multipart snapshot,
list, verify, fetch, restore from it, and prune with debris."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from conftest import AgeTool, Bucket, Cluster, StartEtcd, config_env, run_cli
from etcd_backup.config import Config
from etcd_backup.etcdproc import free_port, wait_healthy
from etcd_backup.model import Manifest
from etcd_backup.service.backup import take_snapshot
from etcd_backup.storage import open_store, put_bytes
from faultproxy import FaultProxy, Rule, upload_part

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


def test_an_encrypted_snapshot_to_a_stalled_store_keeps_a_few_parts_of_ciphertext(
    etcd_single: Cluster, s3_bucket: Bucket, age_tool: AgeTool, tmp_path: Path
) -> None:
    """While the store accepts no part, etcd's stream is spooled whole, but the encryptor stops a
    few parts (here 3 x 5 MiB: one at a time) past what the store has: the spool never needs room
    for a second copy of the snapshot. Once the store goes on, the snapshot completes."""
    _put_all(etcd_single.endpoints[0], {f"/big/{i:02d}": os.urandom(MiB - 1024) for i in range(24)})
    identity = tmp_path / "age.key"
    recipient = age_tool.new_identity(identity)
    host, port = s3_bucket.server.endpoint.removeprefix("http://").split(":")
    proxy = FaultProxy((host, int(port)), http=True)
    proxy.add_rule(Rule("hold", upload_part))
    spool_dir = tmp_path / "spool"
    cfg = Config(
        etcd={"endpoints": etcd_single.endpoints},
        storage={
            "url": s3_bucket.url,
            "endpoint_url": proxy.url,
            "part_size": PART,
            "concurrency": 1,
            "spool_dir": str(spool_dir),
        },
        encryption={"recipients": [recipient]},
    )
    result: list[Manifest | BaseException] = []

    def run() -> None:
        try:
            result.append(take_snapshot(cfg, open_store(cfg.storage), reason="test"))
        except BaseException as exc:  # noqa: BLE001 - checked below
            result.append(exc)

    def sizes() -> tuple[int, int]:
        files = [f for f in spool_dir.glob(".*") if f.is_file()]
        cipher = [f.stat().st_size for f in files if "-age-" in f.name]
        plain = [f.stat().st_size for f in files if "-age-" not in f.name]
        return (plain[0] if plain else 0), (cipher[0] if cipher else 0)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    try:
        deadline = time.monotonic() + 60
        while sizes()[0] < 24 * MiB:  # the stream went on past the window while no part got through
            assert worker.is_alive() and time.monotonic() < deadline, result
            time.sleep(0.05)
        held = [target for _, target, action in proxy.seen if action == "hold"]
        assert len(held) <= 1, held
        # At most the window (15 MiB) plus the one 1 MiB batch that met it.
        print("plaintext and ciphertext spooled while held:", sizes())  # shown with -rP
        assert 5 * MiB <= sizes()[1] <= 17 * MiB, sizes()
    finally:
        proxy.release()
        worker.join(120)
        proxy.close()
    assert len(result) == 1 and isinstance(result[0], Manifest), result
    m = result[0]
    stored = tmp_path / "stored.age"
    stored.write_bytes(
        s3_bucket.server.client()
        .get_object(Bucket=s3_bucket.name, Key=f"{s3_bucket.prefix}/{m.object_key}")["Body"]
        .read()
    )
    assert stored.stat().st_size == m.object_size > 24 * MiB
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == m.object_sha256
    age_tool.decrypt(identity, stored, tmp_path / "snapshot.db")
    plain = (tmp_path / "snapshot.db").read_bytes()
    assert len(plain) - 32 == m.db_size and hashlib.sha256(plain[:-32]).hexdigest() == m.db_sha256
    assert list(spool_dir.iterdir()) == []


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
