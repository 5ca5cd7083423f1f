"""Scenario 2: the pre-change gate, and a member added while growing that never started."""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import pytest

from conftest import ClusterFactory, config_env, run_cli
from etcd_backup.etcdproc import free_port
from test_doctor import add_member_without_starting, doctor_json

pytestmark = pytest.mark.timeout(180)


def manifests_in(store: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((store / "snapshots").glob("*.json"))]


def test_scenario2_unstarted_member_blocks_the_gate(etcd_cluster: ClusterFactory, tmp_path: Path) -> None:
    cluster = etcd_cluster(3)
    cluster.put("k", "v")
    store = tmp_path / "store"
    env = config_env(cluster, f"file://{store}", etcd__dial_timeout="2s")

    ok = run_cli("pre-change", "--reason", "grow to 5", "--output", "json", env=env)
    assert ok.returncode == 0, ok.stderr
    gate = json.loads(ok.stdout)
    assert gate["pinned"] is True and gate["reason"] == "grow to 5"
    assert gate["verification"]["hash"]["ok"] and gate["verification"]["structure"]["ok"]
    rollback = gate["rollback"]
    assert f"restore cluster --snapshot {gate['id']}" in rollback
    for m in cluster.members:
        assert f"--member {m.name}={m.peer_url}" in rollback
    assert [m["id"] for m in manifests_in(store)] == [gate["id"]]

    member_id = add_member_without_starting(cluster, f"http://127.0.0.1:{free_port()}")
    d = doctor_json(env, expect=1)
    assert d["scenario"] == "unstarted-member" and d["quorum"] is True
    assert f"member remove {member_id}" in d["recommendation"]

    refused = run_cli("pre-change", "--reason", "grow again", env=env)
    assert refused.returncode == 4, refused.stderr
    assert member_id in refused.stderr and "never started" in refused.stderr
    assert len(manifests_in(store)) == 1

    # The recommendation is a command that works as printed.
    cmd = shlex.split(d["recommendation"])
    assert cmd[0] == "etcdctl"
    subprocess.run([cluster.tools.etcdctl, *cmd[1:]], check=True, capture_output=True, env={"ETCDCTL_API": "3"})
    assert doctor_json(env, expect=0)["scenario"] == "healthy"

    cluster.member("m3").kill()
    refused = run_cli("pre-change", "--reason", "grow again", env=env)
    assert refused.returncode == 4, refused.stderr
    assert "m3" in refused.stderr and "does not answer" in refused.stderr
    assert len(manifests_in(store)) == 1


def test_pre_change_drill_is_recorded(etcd_cluster: ClusterFactory, tmp_path: Path) -> None:
    cluster = etcd_cluster(1)
    for i in range(5):
        cluster.put(f"k{i}", "v")
    store = tmp_path / "store"
    r = run_cli(
        "pre-change", "--reason", "upgrade", "--drill", "--output", "json", env=config_env(cluster, f"file://{store}")
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    drill = out["verification"]["drill"]
    assert drill["ok"] is True and drill["keys"] == 5
    (stored,) = manifests_in(store)
    assert stored["id"] == out["id"] and stored["verification"]["drill"]["ok"] is True
    assert "--member m1=" in out["rollback"]
