"""S3 Object Lock and versioned buckets on both real S3 servers: every object written is locked,
prune first reports a locked snapshot and deletes it once the lock passed, and deleting removes
every version (never only a delete marker)."""

from __future__ import annotations

import io
import json
import os
import time
from datetime import UTC, datetime, timedelta

import pytest

from conftest import Bucket, Cluster, config_env, run_cli
from etcd_backup import manifest as manifests
from etcd_backup.config import Config
from etcd_backup.model import Manifest
from etcd_backup.service.backup import take_snapshot
from etcd_backup.storage import open_store
from etcd_backup.storage.s3 import S3Store

pytestmark = pytest.mark.timeout(180)

KEEP_ONE = {
    "retention__keep_last": "1",
    "retention__hourly": "0",
    "retention__daily": "0",
    "retention__weekly": "0",
    "retention__monthly": "0",
}


def _cfg(cluster: Cluster, bucket: Bucket, **storage: str) -> Config:
    return Config(
        etcd={"endpoints": cluster.endpoints},
        storage={"url": bucket.url, "endpoint_url": bucket.server.endpoint, **storage},
    )


def _snapshots(cfg: Config, ages: list[timedelta]) -> list[Manifest]:
    now = datetime.now(UTC)
    return [take_snapshot(cfg, open_store(cfg.storage), reason="test", now=lambda a=a: now - a) for a in ages]


def _versions(bucket: Bucket) -> tuple[list[str], list[str]]:
    answer = bucket.server.client().list_object_versions(Bucket=bucket.name)
    versions = [v["Key"].rsplit("/", 1)[-1] for v in answer.get("Versions", [])]
    markers = [m["Key"].rsplit("/", 1)[-1] for m in answer.get("DeleteMarkers", [])]
    return sorted(versions), markers


def _prune(env: dict[str, str]) -> dict:
    r = run_cli("prune", "--output", "json", env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_prune_refuses_a_locked_snapshot_then_deletes_it(etcd_single: Cluster, any_locked_bucket: Bucket) -> None:
    bucket = any_locked_bucket
    etcd_single.put("k", "v")
    lock = {"object_lock": "governance", "lock_for": "20s"}  # outlasts the steps before the first prune
    cfg = _cfg(etcd_single, bucket, **lock)
    old, older, kept = _snapshots(cfg, [timedelta(days=2), timedelta(days=3), timedelta(0)])
    store = open_store(cfg.storage)
    locks = store.capabilities.locks
    assert locks is not None
    for m in (old, older, kept):
        for key in (m.object_key, manifests.manifest_key(m.id)):
            held = locks.retention(key)
            assert held is not None and held.mode == "governance", key
    env = {
        **config_env(etcd_single, storage__object_lock="governance", storage__lock_for="20s", **KEEP_ONE),
        **bucket.env(),
    }
    r = run_cli("list", "--output", "json", env=env)
    assert r.returncode == 0, r.stderr
    assert all(doc["lock"]["mode"] == "governance" for doc in json.loads(r.stdout))

    first = _prune(env)
    assert first["deleted"] == [] and first["errors"] == []
    assert sorted(item["id"] for item in first["locked"]) == sorted([old.id, older.id])
    assert all(item["until"] for item in first["locked"])
    r = run_cli("prune", env=env)
    assert r.returncode == 0 and f"{old.id}  locked until " in r.stdout, r.stdout + r.stderr
    assert r.stdout.splitlines()[-1].endswith(", 2 locked (kept until their lock passes)"), r.stdout
    r = run_cli("list", "--output", "json", env=env)
    assert [doc["id"] for doc in json.loads(r.stdout)] == [kept.id, old.id, older.id], "a locked snapshot vanished"

    deadline = time.monotonic() + 30
    keys = [k for m in (old, older) for k in (manifests.manifest_key(m.id), m.object_key)]
    while any(locks.retention(key) for key in keys):
        assert time.monotonic() < deadline, "the lock never passed"
        time.sleep(0.2)
    second = _prune(env)
    assert sorted(d["id"] for d in second["deleted"]) == sorted([old.id, older.id])
    assert second["locked"] == [] and second["errors"] == []
    versions, markers = _versions(bucket)
    assert versions == sorted([f"{kept.id}.db", f"{kept.id}.json"]) and markers == []


def test_multipart_objects_are_locked_too(any_locked_bucket: Bucket) -> None:
    # moto ignores the lock given to CreateMultipartUpload: the read-back sets it.
    bucket = any_locked_bucket
    store = S3Store(
        bucket.name,
        bucket.prefix,
        endpoint_url=bucket.server.endpoint,
        part_size=5 * 1024 * 1024,
        object_lock="compliance",
        lock_for=60,
    )
    store.put("snapshots/big.db", io.BytesIO(os.urandom(11 * 1024 * 1024)))
    held = store.retention("snapshots/big.db")
    assert held is not None and held.mode == "compliance"
    assert held.until > datetime.now(UTC) + timedelta(seconds=30)


def test_versioned_bucket_deletes_every_version(etcd_single: Cluster, any_s3_bucket: Bucket) -> None:
    bucket = any_s3_bucket
    bucket.server.client().put_bucket_versioning(Bucket=bucket.name, VersioningConfiguration={"Status": "Enabled"})
    etcd_single.put("k", "v")
    cfg = _cfg(etcd_single, bucket)
    old, kept = _snapshots(cfg, [timedelta(days=2), timedelta(0)])
    manifests.write(open_store(cfg.storage), old)  # a second version of its manifest (as a drill writes)
    env = {**config_env(etcd_single, **KEEP_ONE), **bucket.env()}
    report = _prune(env)
    assert [d["id"] for d in report["deleted"]] == [old.id]
    versions, markers = _versions(bucket)
    assert versions == sorted([f"{kept.id}.db", f"{kept.id}.json"]) and markers == []


def test_object_lock_on_a_bucket_without_it_is_exit_2(etcd_single: Cluster, any_s3_bucket: Bucket) -> None:
    env = {**config_env(etcd_single, storage__object_lock="compliance"), **any_s3_bucket.env()}
    for command in ("snapshot", "run"):
        r = run_cli(command, env=env, timeout=60)
        assert r.returncode == 2, r.stderr
        assert "storage.object_lock" in r.stderr and "Traceback" not in r.stderr
    assert any_s3_bucket.keys() == []


def test_a_copy_bucket_without_object_lock_is_exit_2_too(etcd_single: Cluster, any_locked_bucket: Bucket) -> None:
    """Every object the tool writes carries the lock, the copy's too: its bucket is checked at start
    like the primary's, and nothing is written anywhere."""
    plain = f"bkt-{os.urandom(6).hex()}"
    any_locked_bucket.server.client().create_bucket(Bucket=plain)
    env = {
        **config_env(etcd_single, storage__object_lock="governance", storage__lock_for="5s"),
        **any_locked_bucket.env(),
        "ETCD_BACKUP_STORAGE__COPY_TO": f"s3://{plain}/copy",
    }
    for command in ("snapshot", "run"):
        r = run_cli(command, env=env, timeout=60)
        assert r.returncode == 2, r.stderr
        assert "storage.object_lock" in r.stderr and repr(plain) in r.stderr, r.stderr
    assert any_locked_bucket.keys() == []
    listed = any_locked_bucket.server.client().list_objects_v2(Bucket=plain)
    assert listed.get("KeyCount", 0) == 0
