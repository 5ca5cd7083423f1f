"""`snapshot`, `list`, `verify`, `fetch` end to end against real etcd and a real S3 endpoint."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import AWS_ENV, Bucket, Cluster, ClusterFactory, EtcdTools, config_env, run_cli

pytestmark = pytest.mark.timeout(180)


def _snapshot(env: dict[str, str], *extra: str) -> dict:
    r = run_cli("snapshot", "--output", "json", *extra, env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_snapshot_to_directory_records_manifest(etcd_single: Cluster, tmp_path: Path) -> None:
    for i in range(50):
        etcd_single.put(f"/k/{i:03d}", f"value-{i}")
    etcd_single.etcdctl("del", "/k/000")
    env = config_env(etcd_single, f"file://{tmp_path}/store")
    m = _snapshot(env)
    assert m["reason"] == "manual" and m["pinned"] is False
    assert m["keys"] == 49
    assert m["verification"]["hash"]["ok"] and m["verification"]["structure"]["ok"]
    assert m["verification"]["drill"] is None
    status = json.loads(etcd_single.etcdctl("endpoint", "status", "-w", "json"))[0]["Status"]
    assert m["revision"] == status["header"]["revision"]
    assert m["member_id"] == format(status["header"]["member_id"], "x")
    assert m["cluster_id"] == format(status["header"]["cluster_id"], "x")
    data = tmp_path / "store" / m["object_key"]
    manifest = tmp_path / "store" / "snapshots" / f"{m['id']}.json"
    assert data.stat().st_size == m["object_size"]
    assert json.loads(manifest.read_text())["id"] == m["id"]


def test_snapshot_reason_and_pin(etcd_single: Cluster, tmp_path: Path) -> None:
    env = config_env(etcd_single, f"file://{tmp_path}/store")
    m = _snapshot(env, "--reason", "before upgrade", "--pin")
    assert m["reason"] == "before upgrade" and m["pinned"] is True


def test_dead_first_endpoint_does_not_matter(etcd_single: Cluster, tmp_path: Path) -> None:
    from etcd_backup.etcdproc import free_port

    env = config_env(etcd_single, f"file://{tmp_path}/store")
    env["ETCD_BACKUP_ETCD__ENDPOINTS"] = f"http://127.0.0.1:{free_port()}," + etcd_single.endpoints[0]
    env["ETCD_BACKUP_ETCD__DIAL_TIMEOUT"] = "1s"
    m = _snapshot(env)
    assert m["endpoint"] == etcd_single.endpoints[0]


def test_all_endpoints_down_is_operational_failure(tmp_path: Path) -> None:
    from etcd_backup.etcdproc import free_port

    env = config_env(
        None, f"file://{tmp_path}/store", etcd__endpoints=f"http://127.0.0.1:{free_port()}", etcd__dial_timeout="1s"
    )
    r = run_cli("snapshot", env=env)
    assert r.returncode == 1
    assert "etcd" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not list((tmp_path / "store").rglob("*.json"))


def test_s3_snapshot_list_verify_fetch(etcd_single: Cluster, s3_bucket: Bucket, tmp_path: Path) -> None:
    for i in range(20):
        etcd_single.put(f"k{i}", "x" * 100)
    env = {**config_env(etcd_single), **s3_bucket.env()}
    first = _snapshot(env)
    etcd_single.put("later", "y")
    second = _snapshot(env, "--reason", "second")
    keys = s3_bucket.keys()
    assert all(k.startswith("etcd/test/") for k in keys)
    assert f"etcd/test/snapshots/{first['id']}.json" in keys
    assert f"etcd/test/{second['object_key']}" in keys
    assert s3_bucket.uploads() == []

    r = run_cli("list", "--output", "json", env=env)
    assert r.returncode == 0, r.stderr
    listed = json.loads(r.stdout)
    assert [m["id"] for m in listed] == [second["id"], first["id"]]

    r = run_cli("verify", "latest", "--output", "json", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["id"] == second["id"]

    dest = tmp_path / "fetched.db"
    r = run_cli("fetch", first["id"], "--to", str(dest), env=env)
    assert r.returncode == 0, r.stderr
    assert dest.stat().st_mode & 0o777 == 0o600
    status = subprocess.run(
        [etcd_single.tools.etcdutl, "snapshot", "status", str(dest), "-w", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(status.stdout)["revision"] == first["revision"]
    for secret in AWS_ENV.values():
        if "secret" in secret:
            assert secret not in r.stderr + r.stdout


def test_missing_bucket_is_clear_error(etcd_single: Cluster, s3_bucket: Bucket) -> None:
    env = {**config_env(etcd_single), **s3_bucket.env(), "ETCD_BACKUP_STORAGE__URL": "s3://no-such-bucket-here/x"}
    r = run_cli("snapshot", env=env)
    assert r.returncode == 1
    assert "no-such-bucket-here" in r.stderr and "does not exist" in r.stderr


def test_zstd_compression_roundtrip(etcd_single: Cluster, s3_bucket: Bucket, tmp_path: Path) -> None:
    for i in range(30):
        etcd_single.put(f"c{i}", "compressible " * 50)
    env = {**config_env(etcd_single), **s3_bucket.env(), "ETCD_BACKUP_STORAGE__COMPRESSION": "zstd"}
    m = _snapshot(env)
    assert m["compression"] == "zstd" and m["object_key"].endswith(".db.zst")
    assert m["object_size"] < m["db_size"]
    dest = tmp_path / "z.db"
    r = run_cli("fetch", "latest", "--to", str(dest), env=env)
    assert r.returncode == 0, r.stderr
    assert dest.stat().st_size == m["db_size"] + 32


def test_snapshot_over_mutual_tls(etcd_cluster: ClusterFactory, tls_files, tmp_path: Path) -> None:
    cluster = etcd_cluster(1, tls=tls_files)
    cluster.put("secure", "yes")
    env = config_env(cluster, f"file://{tmp_path}/store")
    m = _snapshot(env)
    assert m["endpoint"].startswith("https://")
    assert m["keys"] == 1


def test_tls_wrong_ca_is_operational_failure(etcd_cluster: ClusterFactory, tls_files, tmp_path: Path) -> None:
    cluster = etcd_cluster(1, tls=tls_files)
    env = config_env(cluster, f"file://{tmp_path}/store", etcd__cacert=tls_files.other_ca, etcd__dial_timeout="2s")
    r = run_cli("snapshot", env=env)
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr  # gRPC's own log lines stay quiet


def test_missing_tls_file_is_config_error(etcd_single: Cluster, tmp_path: Path) -> None:
    env = config_env(etcd_single, f"file://{tmp_path}/store", etcd__cacert=str(tmp_path / "nope.crt"))
    r = run_cli("snapshot", env=env)
    assert r.returncode == 2
    assert "nope.crt" in r.stderr and "etcd.cacert" in r.stderr


def test_snapshot_from_etcd34(etcd_cluster: ClusterFactory, tmp_path: Path) -> None:
    cluster = etcd_cluster(1, version="3.4")
    cluster.put("old", "server")
    env = config_env(cluster, f"file://{tmp_path}/store")
    m = _snapshot(env)
    assert m["etcd_version"].startswith("3.4")
    assert m["keys"] == 1


def test_an_ipv6_endpoint_is_dialled_with_its_brackets(etcd35: EtcdTools, tmp_path: Path) -> None:
    """An IPv6 control plane advertises `https://[fd00::1]:2379`: the brackets must reach gRPC
    ("::1:2379" is no address), for the snapshot and for doctor's look at every member."""
    from etcd_backup.etcdproc import free_port, start_member, wait_healthy

    member = start_member(
        etcd35.etcd,
        name="v6",
        data_dir=tmp_path / "v6",
        client_url=f"http://[::1]:{free_port()}",
        peer_url=f"http://127.0.0.1:{free_port()}",
        log_path=tmp_path / "v6.log",
    )
    try:
        wait_healthy(member.client_url, 30, member)
        env = config_env(None, f"file://{tmp_path}/store", etcd__endpoints=member.client_url)
        m = _snapshot(env)
        assert m["endpoint"] == member.client_url and m["verification"]["structure"]["ok"]
        r = run_cli("doctor", "--output", "json", env=env)
        doc = json.loads(r.stdout)
        assert doc["scenario"] == "healthy" and doc["members"][0]["reachable"], r.stdout
    finally:
        member.process.kill()
        member.process.wait()
