"""etcd misbehaving while we snapshot it: killed or frozen mid-stream, out of space, down, bad TLS.

Expect failover to another member where one is healthy, otherwise a clear failure (exit 1, one
line); never a truncated snapshot stored, never an unfinished upload left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import grpc
import pytest
from faultkit import (
    MiB,
    assert_clean_failure,
    assert_no_secrets,
    fill,
    host_port,
    make_tls,
    s3_env,
    spool_files,
)

from conftest import Bucket, Cluster, ClusterFactory, config_env, run_cli
from etcd_backup.etcdproc import EtcdProcess, free_port, wait_healthy
from faultproxy import FaultProxy

pytestmark = pytest.mark.timeout(180)


def _leader(cluster: Cluster) -> EtcdProcess:
    rows = json.loads(cluster.etcdctl("endpoint", "status", "-w", "json"))
    by_id = {r["Status"]["header"]["member_id"]: r["Endpoint"] for r in rows}
    leader_url = by_id[rows[0]["Status"]["leader"]]
    return next(m for m in cluster.members if m.client_url.endswith(leader_url.split("//")[-1]))


def _assert_nothing_stored(bucket: Bucket, spool: Path) -> None:
    assert bucket.keys() == []
    assert bucket.uploads() == []
    assert spool_files(spool) == []


def test_member_killed_mid_stream_fails_over(etcd_cluster: ClusterFactory, s3_bucket: Bucket, tmp_path: Path) -> None:
    cluster = etcd_cluster(3)
    fill(cluster, 24)
    # The leader, so the survivors must also elect a new one before they can serve.
    victim = _leader(cluster)
    others = [m.client_url for m in cluster.members if m is not victim]
    proxy = FaultProxy(host_port(victim.client_url), on_server_bytes=(8 * MiB, victim.process.kill))
    spool = tmp_path / "spool"
    try:
        env = s3_env(
            cluster,
            s3_bucket,
            spool,
            storage__part_size="5MiB",
            log__level="warning",
            etcd__endpoints=",".join([proxy.url, *others]),
            etcd__dial_timeout="2s",
        )
        r = run_cli("snapshot", "--output", "json", env=env)
    finally:
        proxy.close()
    assert proxy.triggered.is_set(), "the member was never killed"
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["endpoint"] in others
    assert "trying the next endpoint" in r.stderr
    assert m["keys"] == 24 and m["db_size"] > 24 * MiB
    # Only the snapshot from the survivor: the first attempt's multipart upload was aborted.
    assert sorted(s3_bucket.keys()) == sorted(
        f"{s3_bucket.prefix}/{k}" for k in (m["object_key"], f"snapshots/{m['id']}.json")
    )
    assert s3_bucket.uploads() == []
    assert spool_files(spool) == []
    v = run_cli("verify", m["id"], env=env)
    assert v.returncode == 0, v.stderr


def test_frozen_member_fails_within_stall_timeout(etcd_single: Cluster, s3_bucket: Bucket, tmp_path: Path) -> None:
    fill(etcd_single, 24)
    member = etcd_single.members[0]
    pid = member.process.pid
    proxy = FaultProxy(host_port(member.client_url), on_server_bytes=(2 * MiB, lambda: os.kill(pid, signal.SIGSTOP)))
    spool = tmp_path / "spool"
    env = s3_env(etcd_single, s3_bucket, spool, storage__part_size="5MiB", etcd__stall_timeout="2s")
    try:
        started = time.monotonic()
        r = run_cli("snapshot", env={**env, "ETCD_BACKUP_ETCD__ENDPOINTS": proxy.url})
        took = time.monotonic() - started
    finally:
        os.kill(pid, signal.SIGCONT)
        proxy.close()
    assert proxy.triggered.is_set(), "the member was never frozen"
    assert_clean_failure(r.returncode, r.stderr, 1, "stalled")
    assert took < 40, took  # stall_timeout, not gRPC keepalive or the 30 s default
    _assert_nothing_stored(s3_bucket, spool)  # never a truncated snapshot
    # Thawed, the same member serves the next run.
    r = run_cli("snapshot", "--output", "json", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["keys"] == 24


def _fill_until_nospace(endpoint: str) -> None:
    import etcd3

    host, port = host_port(endpoint)
    client = etcd3.client(host, port, timeout=30)
    try:
        for i in range(64):
            try:
                client.put(f"/big/{i}", os.urandom(MiB - 1024))
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
                return
        raise AssertionError("quota never reached")
    finally:
        client.close()


def _restart_with(cluster: Cluster, index: int, *extra: str) -> EtcdProcess:
    """Restart one member (same data dir and flags) with extra flags; the fixture still stops it."""
    old = cluster.members[index]
    old.stop()
    with open(old.log_path, "ab") as out:
        proc = subprocess.Popen(
            [cluster.tools.etcd, *old.args, *extra], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    new = EtcdProcess(old.name, old.data_dir, old.client_url, old.peer_url, proc, old.log_path, old.args)
    cluster.members[index] = new
    wait_healthy(new.client_url, 60, new)
    return new


def test_member_with_nospace_alarm(etcd_cluster: ClusterFactory, tmp_path: Path) -> None:
    cluster = etcd_cluster(3)
    # Only this member has a tiny quota, so only it raises NOSPACE (each member raises its own).
    full = _restart_with(cluster, 0, "--quota-backend-bytes=8388608")
    _fill_until_nospace(full.client_url)
    assert "NOSPACE" in cluster.etcdctl("alarm", "list")
    env = config_env(cluster, f"file://{tmp_path}/store", etcd__dial_timeout="2s", log__level="warning")

    # etcd reports the alarm on every member; only the member that raised it is skipped.
    r = run_cli("snapshot", "--output", "json", env=env)
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["endpoint"] == cluster.members[1].client_url
    assert "NOSPACE" in r.stderr  # the skip is logged

    # That member alone (a cluster where every member is full, as one quota for all makes it):
    # its data is whole, and the backup before compacting and defragmenting is the one wanted.
    r = run_cli("snapshot", "--output", "json", env={**env, "ETCD_BACKUP_ETCD__ENDPOINTS": full.client_url})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["endpoint"] == full.client_url
    assert "NOSPACE" in r.stderr and "defragment" in r.stderr  # said, all the same
    assert len(list((tmp_path / "store" / "snapshots").iterdir())) == 4  # two snapshots, two objects each


def test_all_endpoints_down(s3_bucket: Bucket, tmp_path: Path) -> None:
    dead = ",".join(f"http://127.0.0.1:{free_port()}" for _ in range(3))
    spool = tmp_path / "spool"
    env = s3_env(None, s3_bucket, spool, etcd__endpoints=dead, etcd__dial_timeout="1s")
    r = run_cli("snapshot", env=env)
    assert_clean_failure(r.returncode, r.stderr, 1, "no healthy etcd endpoint")
    _assert_nothing_stored(s3_bucket, spool)


def test_tls_wrong_ca_and_expired_client_cert(etcd_cluster: ClusterFactory, s3_bucket: Bucket, tmp_path: Path) -> None:
    tls, expired_cert, expired_key = make_tls(tmp_path / "pki")
    cluster = etcd_cluster(1, tls=tls)
    cluster.put("secure", "yes")
    spool = tmp_path / "spool"
    env = s3_env(cluster, s3_bucket, spool, etcd__dial_timeout="2s")

    for bad in (
        {"ETCD_BACKUP_ETCD__CACERT": tls.other_ca},
        {"ETCD_BACKUP_ETCD__CERT": expired_cert, "ETCD_BACKUP_ETCD__KEY": expired_key},
    ):
        r = run_cli("snapshot", env={**env, **bad})
        assert_clean_failure(r.returncode, r.stderr, 1, "etcd")
        assert_no_secrets(r.stdout, r.stderr)
        assert tls.client_key not in r.stderr
        _assert_nothing_stored(s3_bucket, spool)

    # Verification cannot be switched off for etcd (gRPC cannot): asking is a config error.
    r = run_cli("snapshot", env={**env, "ETCD_BACKUP_ETCD__INSECURE_SKIP_TLS_VERIFY": "true"})
    assert_clean_failure(r.returncode, r.stderr, 2, "etcd.insecure_skip_tls_verify")

    r = run_cli("snapshot", "--output", "json", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["endpoint"].startswith("https://")
