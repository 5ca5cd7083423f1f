"""S3 misbehaving between boto3 and a real S3 endpoint (moto over HTTP), through faultproxy.

Each failure must be loud (exit 1, one line), leave no manifest, no data object, no unfinished
multipart upload (unless the endpoint is gone while aborting: then the upload is debris that
`prune` removes) and an empty spool; the next run, with S3 healthy again, must succeed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from faultkit import assert_clean_failure, assert_no_secrets, fill, s3_env, s3_proxy, spool_files

from conftest import AgeTool, Bucket, Cluster, run_cli
from etcd_backup.storage.s3 import S3Store
from faultproxy import FaultProxy, Rule, upload_part

pytestmark = pytest.mark.timeout(150)

# Short request timeouts keep the failing cases quick; 5 MiB parts make a ~12 MiB db multipart.
FAST = {"storage__timeout": "2s", "storage__part_size": "5MiB", "storage__concurrency": "2"}


@pytest.fixture
def big_etcd(etcd_single: Cluster) -> Cluster:
    fill(etcd_single, 12)
    return etcd_single


@pytest.fixture
def proxy(s3_bucket: Bucket) -> Iterator[FaultProxy]:
    p = s3_proxy(s3_bucket)
    yield p
    p.close()


def _snapshot(env: dict[str, str]) -> tuple[int, str, str]:
    r = run_cli("snapshot", "--output", "json", env=env)
    assert_no_secrets(r.stdout, r.stderr)
    return r.returncode, r.stdout, r.stderr


def _assert_nothing_stored(bucket: Bucket, spool: Path, *, debris: int = 0) -> None:
    assert bucket.keys() == [], "a failed snapshot left objects behind"
    assert len(bucket.uploads()) == debris
    assert spool_files(spool) == [], "the spool was not cleaned up"


def _assert_recovers(env: dict[str, str], bucket: Bucket, spool: Path) -> dict:
    """The next run, against a healthy S3, stores one complete, verifiable snapshot."""
    code, out, err = _snapshot(env)
    assert code == 0, err
    m = json.loads(out)
    keys = bucket.keys()
    assert f"{bucket.prefix}/{m['object_key']}" in keys
    assert f"{bucket.prefix}/snapshots/{m['id']}.json" in keys
    assert len(keys) == 2
    assert spool_files(spool) == []
    r = run_cli("verify", m["id"], env=env)
    assert r.returncode == 0, r.stderr
    return m


def test_slowdown_answers_are_retried(big_etcd: Cluster, s3_bucket: Bucket, proxy: FaultProxy, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    proxy.add_rule(Rule("slowdown", count=3))
    env = s3_env(big_etcd, s3_bucket, spool, proxy.url, **FAST)
    m = _assert_recovers(env, s3_bucket, spool)
    assert len(proxy.actions("slowdown")) == 3
    assert s3_bucket.uploads() == []
    assert m["object_size"] > 10 * 1024 * 1024


def test_reset_mid_part_is_retried(big_etcd: Cluster, s3_bucket: Bucket, proxy: FaultProxy, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    proxy.add_rule(Rule("reset", match=upload_part, count=2, after_bytes=1024 * 1024))
    env = s3_env(big_etcd, s3_bucket, spool, proxy.url, **FAST)
    _assert_recovers(env, s3_bucket, spool)
    assert len(proxy.actions("reset")) == 2
    assert s3_bucket.uploads() == []


def test_an_encrypted_part_reset_mid_way_is_sent_again_from_the_ring(
    etcd_single: Cluster, s3_bucket: Bucket, proxy: FaultProxy, age_tool: AgeTool, tmp_path: Path
) -> None:
    """The ciphertext spool is a ring of 3 parts here (concurrency 1 + 2, 15 MiB) and the
    ciphertext twice that: parts refused half-way are read again from the ring, which the
    writer has not written over (they were not sent), and the object decrypts and verifies."""
    fill(etcd_single, 30)
    spool = tmp_path / "spool"
    identity = tmp_path / "age.key"
    recipient = age_tool.new_identity(identity)
    proxy.add_rule(Rule("reset", match=upload_part, count=3, after_bytes=1024 * 1024))
    env = s3_env(
        etcd_single,
        s3_bucket,
        spool,
        proxy.url,
        **{**FAST, "storage__concurrency": "1"},
        encryption__recipients=recipient,
        encryption__identity_file=str(identity),
    )
    m = _assert_recovers(env, s3_bucket, spool)
    assert len(proxy.actions("reset")) == 3
    assert m["object_size"] > 30 * 1024 * 1024 and m["encryption"]["recipients"] == [recipient]
    assert s3_bucket.uploads() == []


def test_reset_of_every_part_fails_cleanly(
    big_etcd: Cluster, s3_bucket: Bucket, proxy: FaultProxy, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    proxy.add_rule(Rule("reset", match=upload_part, after_bytes=1024 * 1024))
    env = s3_env(big_etcd, s3_bucket, spool, proxy.url, **FAST)
    code, _, err = _snapshot(env)
    assert_clean_failure(code, err, 1, "upload")
    assert len(proxy.actions("reset")) >= 5  # botocore's attempts for at least one part
    _assert_nothing_stored(s3_bucket, spool)  # the multipart upload was aborted
    proxy.clear_rules()
    _assert_recovers(env, s3_bucket, spool)


def test_stalled_requests_fail_within_the_timeout(
    big_etcd: Cluster, s3_bucket: Bucket, proxy: FaultProxy, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    proxy.add_rule(Rule("stall", match=upload_part))
    env = s3_env(big_etcd, s3_bucket, spool, proxy.url, **FAST)
    started = time.monotonic()
    code, _, err = _snapshot(env)
    took = time.monotonic() - started
    assert_clean_failure(code, err, 1, "upload")
    # 5 attempts x 2 s read timeout plus backoff: bounded, nowhere near the 60 s default.
    assert took < 60, took
    assert proxy.actions("stall")
    _assert_nothing_stored(s3_bucket, spool)
    proxy.clear_rules()
    _assert_recovers(env, s3_bucket, spool)


def test_endpoint_gone(big_etcd: Cluster, s3_bucket: Bucket, proxy: FaultProxy, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    env = s3_env(big_etcd, s3_bucket, spool, proxy.url, **FAST)

    # Gone before the snapshot starts: connection refused on every attempt.
    proxy.go_away()
    code, _, err = _snapshot(env)
    assert_clean_failure(code, err, 1, s3_bucket.name)
    _assert_nothing_stored(s3_bucket, spool)

    # Gone in the middle of the upload: the abort cannot reach S3 either, so the unfinished
    # multipart upload stays behind as debris (never listed as a snapshot; prune removes it).
    proxy.come_back()
    proxy.add_rule(Rule("gone", match=upload_part, count=1))
    code, _, err = _snapshot(env)
    assert_clean_failure(code, err, 1)
    _assert_nothing_stored(s3_bucket, spool, debris=1)
    r = run_cli("list", "--output", "json", env={**env, "ETCD_BACKUP_STORAGE__ENDPOINT_URL": s3_bucket.server.endpoint})
    assert r.returncode == 0 and json.loads(r.stdout) == [], r.stderr

    proxy.come_back()
    proxy.clear_rules()
    _assert_recovers(env, s3_bucket, spool)
    store = S3Store(s3_bucket.name, s3_bucket.prefix, endpoint_url=s3_bucket.server.endpoint)
    debris = store.list_debris()
    assert len(debris) == 1 and debris[0].key.startswith("snapshots/")
    store.remove_debris(debris[0])  # what prune does once it is older than retention.debris_age
    assert s3_bucket.uploads() == []
