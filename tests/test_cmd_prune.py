"""`prune` end to end: real snapshots of a real etcd on the real S3 endpoint (moto over HTTP)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from conftest import Bucket, Cluster, config_env, run_cli
from etcd_backup import manifest as manifests
from etcd_backup.config import Config
from etcd_backup.model import Check, Manifest, rfc3339
from etcd_backup.service.backup import take_snapshot
from etcd_backup.storage import open_store, put_bytes

pytestmark = pytest.mark.timeout(180)

POLICY = {
    "retention__keep_last": "2",
    "retention__hourly": "0",
    "retention__daily": "3",
    "retention__weekly": "0",
    "retention__monthly": "0",
    "retention__keep_pinned_for": "30d",
    "retention__debris_age": "1s",
}


def _snapshot_at(cfg: Config, when: datetime, *, pinned: bool = False) -> Manifest:
    return take_snapshot(cfg, open_store(cfg.storage), reason="test", pinned=pinned, now=lambda: when)


def test_prune_keeps_exactly_what_the_policy_says(etcd_single: Cluster, s3_bucket: Bucket) -> None:
    etcd_single.put("k", "v")
    cfg = Config(
        etcd={"endpoints": etcd_single.endpoints},
        storage={"url": s3_bucket.url, "endpoint_url": s3_bucket.server.endpoint},
    )
    store = open_store(cfg.storage)
    now = datetime.now(UTC)
    # Every time is placed within its UTC day, so the daily buckets are the same at any time of day
    # (the newest two sit just after today's midnight, never on yesterday's side of it).
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    noon = midnight + timedelta(hours=12)
    day = timedelta(days=1)
    s = {
        "a": _snapshot_at(cfg, midnight + timedelta(seconds=1)),  # keep_last 2
        "b": _snapshot_at(cfg, midnight + timedelta(seconds=2)),  # keep_last 2, daily (today)
        "x": _snapshot_at(cfg, noon - 1 * day),  # drill failed: counts for nothing, older than b
        "c": _snapshot_at(cfg, noon - 3 * day),  # daily
        "d": _snapshot_at(cfg, noon - 3 * day - timedelta(hours=1)),  # same day as c, older
        "e": _snapshot_at(cfg, noon - 5 * day),  # daily (third day that has snapshots)
        "f": _snapshot_at(cfg, noon - 8 * day),  # outside policy
        "h": _snapshot_at(cfg, noon - 10 * day, pinned=True),  # pinned, inside 30 days
        "g": _snapshot_at(cfg, noon - 40 * day, pinned=True),  # pin expired
    }
    manifests.write(store, s["x"].with_drill(Check(False, rfc3339(now), error="test: restore failed")))
    # A manifest that cannot be read is left alone (with its data), and reported.
    put_bytes(store, "snapshots/20200101T000000000Z-bad000.json", b"{not json")
    put_bytes(store, "snapshots/20200101T000000000Z-bad000.db", b"x" * 64)
    # Debris: a data object without manifest and an unfinished multipart upload.
    put_bytes(store, "snapshots/20200102T000000000Z-0rphan.db", b"y" * 64)
    client = s3_bucket.server.client()
    client.create_multipart_upload(Bucket=s3_bucket.name, Key=f"{s3_bucket.prefix}/snapshots/unfinished.db")
    # debris_age 0s: the debris is old enough the moment prune looks (no waiting for it to age).
    env = {
        **config_env(etcd_single),
        **s3_bucket.env(),
        **config_env(None, **{**POLICY, "retention__debris_age": "0s"}),
    }
    before = sorted(s3_bucket.keys())
    r = run_cli("prune", "--dry-run", "--output", "json", env=env)
    assert r.returncode == 0, r.stderr
    dry = json.loads(r.stdout)
    expect_deleted = {s[k].id for k in "xdfg"}
    assert dry["dry_run"] is True
    assert {d["id"] for d in dry["deleted"]} == expect_deleted
    assert sorted(s3_bucket.keys()) == before and len(s3_bucket.uploads()) == 1
    assert "bad000" in r.stderr

    r = run_cli("prune", env=env)
    assert r.returncode == 0, r.stderr
    for k in "xdfg":
        line = next(ln for ln in r.stdout.splitlines() if s[k].id in ln)
        assert line.startswith("deleted ")
    assert "failed verification" in next(ln for ln in r.stdout.splitlines() if s["x"].id in ln)
    assert "pin expired" in next(ln for ln in r.stdout.splitlines() if s["g"].id in ln)
    kept = {s[k].id for k in "abceh"}
    keys = set(s3_bucket.keys())
    remaining = {manifests.id_of(k.removeprefix(f"{s3_bucket.prefix}/")) for k in keys}
    assert remaining == kept | {"20200101T000000000Z-bad000"}
    # Each kept snapshot still has both objects; the debris is gone.
    for sid in kept:
        assert f"{s3_bucket.prefix}/snapshots/{sid}.json" in keys
        assert f"{s3_bucket.prefix}/snapshots/{sid}.db" in keys
    assert s3_bucket.uploads() == []

    r = run_cli("prune", "--output", "json", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["deleted"] == []


def test_failed_listing_deletes_nothing(etcd_single: Cluster, tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    env = config_env(etcd_single, f"file://{store_dir}", **POLICY)
    cfg = Config(etcd={"endpoints": etcd_single.endpoints}, storage={"url": f"file://{store_dir}"})
    now = datetime.now(UTC)
    for days in range(4):
        _snapshot_at(cfg, now - timedelta(days=days * 10))
    # A dangling entry makes the directory listing fail part-way: nothing may be deleted then.
    (store_dir / "snapshots" / "zz-broken.db").symlink_to(tmp_path / "gone")
    before = sorted(p.name for p in (store_dir / "snapshots").iterdir())
    r = run_cli("prune", env=env)
    assert r.returncode == 1
    assert "listing failed" in r.stderr and "Traceback" not in r.stderr
    assert sorted(p.name for p in (store_dir / "snapshots").iterdir()) == before
    assert r.stdout == ""

    (store_dir / "snapshots" / "zz-broken.db").unlink()
    r = run_cli("prune", env=env)
    assert r.returncode == 0, r.stderr
    assert len(list((store_dir / "snapshots").glob("*.json"))) == 3  # keep_last 2 + daily 3 of 4


def test_prune_on_empty_store(tmp_path: Path) -> None:
    r = run_cli("prune", "--output", "json", env=config_env(None, f"file://{tmp_path}/empty"))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["deleted"] == []
