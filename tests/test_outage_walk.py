"""The 3 a.m. path, walked as an operator walks it: break a real cluster, run `doctor`, stop what
it says to stop, then run exactly the commands it printed, through a shell, in order. Nothing is
substituted: ports are reused and data dirs come from `restore.data_dir`, both the test's own.
The cluster must end healthy with every key, and a restore never touches a live member.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Cluster, ClusterFactory, config_env, run_cli
from etcd_backup.etcdproc import distro_bin_dir, free_port, wait_healthy

pytestmark = pytest.mark.timeout(240)


def write_keys(cluster: Cluster, n: int = 20) -> dict[str, str]:
    expected = {f"/registry/walk/{i:03d}": f"value {i}" for i in range(n)}
    for key, value in expected.items():
        cluster.put(key, value)
    return expected


def snapshot(env: dict[str, str]) -> dict:
    r = run_cli("snapshot", "--output", "json", env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def doctor(env: dict[str, str], expect: int = 1) -> dict:
    r = run_cli("doctor", "--output", "json", env=env)
    assert r.returncode == expect, r.stderr
    return json.loads(r.stdout)


class Shell:
    """Runs printed commands the way an operator pastes them: through bash, with etcd-backup,
    etcd and etcdctl on PATH. `etcd ...` steps run in the background, as a service would."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        bins = [str(Path(sys.executable).parent), str(distro_bin_dir())]
        self.env = {**env, "PATH": os.pathsep.join([*bins, env.get("PATH", os.environ["PATH"])]), "ETCDCTL_API": "3"}
        self.logs = logs
        self.background: list[subprocess.Popen[bytes]] = []

    def run(self, command: str) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(["bash", "-c", command], capture_output=True, text=True, env=self.env, timeout=180)
        assert r.returncode == 0, f"{command}\nexit {r.returncode}\n{r.stderr}"
        return r

    def start(self, command: str) -> None:
        log = open(self.logs / f"etcd-{len(self.background)}.log", "wb")  # noqa: SIM115 - lives as long as etcd
        self.background.append(
            subprocess.Popen(["bash", "-c", f"exec {command}"], stdout=log, stderr=subprocess.STDOUT, env=self.env)
        )

    def stop(self) -> None:
        for p in self.background:
            p.kill()
            p.wait(10)


@pytest.fixture
def shell_factory(tmp_path: Path) -> Iterator[list[Shell]]:
    shells: list[Shell] = []
    yield shells
    for s in shells:
        s.stop()


def walk(shell: Shell, diagnosis: dict) -> list[str]:
    """Run every step in order; wait for started members before the checks. Returns the commands."""
    plan = diagnosis["plan"]
    assert [s["command"] for s in plan] == diagnosis["steps"]
    for step in plan:
        command = step["command"]
        assert "<" not in command and ">" not in command, command
        if step["kind"] == "start":
            shell.start(command)
            continue
        if step["kind"] in {"check", "snapshot"}:
            for url in _client_urls(plan):
                wait_healthy(url, 60)
        shell.run(command)
    return [s["command"] for s in plan]


def _client_urls(plan: list[dict]) -> list[str]:
    urls = []
    for step in plan:
        if step["kind"] == "start":
            flag = next(w for w in step["command"].split() if w.startswith("--advertise-client-urls="))
            urls.append(flag.split("=", 1)[1])
    return urls


def data_dirs(cluster: Cluster) -> str:
    return str(cluster.base / "{name}")


def test_scenario3_single_member_host_lost(
    etcd_cluster: ClusterFactory, shell_factory: list[Shell], tmp_path: Path
) -> None:
    cluster = etcd_cluster(1)
    expected = write_keys(cluster)
    env = config_env(cluster, f"file://{tmp_path}/store", etcd__dial_timeout="1s", restore__data_dir=data_dirs(cluster))
    snap = snapshot(env)
    member = cluster.members[0]
    member.kill()
    shutil.rmtree(member.data_dir)

    d = doctor(env)
    assert d["scenario"] == "single-member-down" and d["stop_first"] == []
    restore = d["steps"][0]
    # Everything the tool knows is filled in from the snapshot's member list; no --force, so an
    # intact data dir would be refused rather than moved aside by a pasted command.
    assert f"--snapshot {snap['id']}" in restore and f"--name {member.name}" in restore
    assert f"--peer-url {member.peer_url}" in restore and "--force" not in restore
    start = next(s for s in d["plan"] if s["kind"] == "start")["command"]
    assert f"--advertise-client-urls={member.client_url}" in start and "CLIENT_URL" not in start

    shell = Shell(env, tmp_path)
    shell_factory.append(shell)
    walk(shell, d)
    assert cluster.get_all(endpoints=[member.client_url]) == expected
    after = doctor(env, expect=0)
    assert after["scenario"] == "healthy"
    assert after["newest_backup"]["id"] != snap["id"]  # the after-restore snapshot of the new cluster


def test_scenario4a_one_of_three_lost(etcd_cluster: ClusterFactory, shell_factory: list[Shell], tmp_path: Path) -> None:
    cluster = etcd_cluster(3)
    expected = write_keys(cluster)
    env = config_env(cluster, f"file://{tmp_path}/store", etcd__dial_timeout="2s", restore__data_dir=data_dirs(cluster))
    snapshot(env)
    lost = cluster.member("m2")
    lost.kill()
    shutil.rmtree(lost.data_dir)

    d = doctor(env)
    assert d["scenario"] == "member-down" and d["quorum"] is True
    by_name = {m["name"]: m for m in d["members"]}
    assert by_name["m2"]["state"] == "down" and by_name["m2"]["reachable"] is False
    assert by_name["m2"]["started"] is True  # it joined once; it just does not answer
    kinds = [s["kind"] for s in d["plan"]]
    assert kinds == ["replace-member", "start", "check"]
    assert d["recommendation"] == d["steps"][0] and "--failed m2" in d["steps"][0]
    start = d["steps"][1]
    assert "--initial-cluster-state=existing" in start and "initial-cluster-token" not in start

    shell = Shell(env, tmp_path)
    shell_factory.append(shell)
    walk(shell, d)
    endpoints = [m.client_url for m in cluster.members]
    for url in endpoints:
        assert cluster.get_all(endpoints=[url]) == expected
    assert doctor(env, expect=0)["scenario"] == "healthy"


def test_scenario4b_quorum_lost(etcd_cluster: ClusterFactory, shell_factory: list[Shell], tmp_path: Path) -> None:
    cluster = etcd_cluster(3)
    expected = write_keys(cluster)
    env = config_env(cluster, f"file://{tmp_path}/store", etcd__dial_timeout="2s", restore__data_dir=data_dirs(cluster))
    snap = snapshot(env)
    for name in ("m1", "m2"):
        cluster.member(name).kill()
        shutil.rmtree(cluster.member(name).data_dir)

    d = doctor(env)
    assert d["scenario"] == "quorum-lost" and d["quorum"] is False
    by_name = {m["name"]: m for m in d["members"]}
    assert by_name["m3"]["state"] == "no-leader" and by_name["m3"]["reachable"] is True
    assert by_name["m1"]["state"] == "down"
    assert d["stop_first"] == ["m3"]
    restores = [s for s in d["plan"] if s["kind"] == "restore"]
    assert [s["host"] for s in restores] == ["m1", "m2", "m3"]
    for step in restores:
        assert f"--only {step['host']}" in step["command"] and "--force" in step["command"]
        assert f"--snapshot {snap['id']}" in step["command"]
    text = run_cli("doctor", env=env)
    assert "NO LEADER" in text.stdout and "first stop etcd on m3" in text.stdout

    cluster.member("m3").stop()  # what doctor said to stop
    shell = Shell(env, tmp_path)
    shell_factory.append(shell)
    steps = [s for s in d["plan"] if s["kind"] != "snapshot"]
    walk(shell, {**d, "plan": steps, "steps": [s["command"] for s in steps]})
    for m in cluster.members:
        assert cluster.get_all(endpoints=[m.client_url]) == expected

    # A new cluster id now: the old cluster's snapshot is not a backup of this one.
    healthy = doctor(env, expect=0)
    assert healthy["scenario"] == "healthy" and healthy["newest_backup"] is None
    assert healthy["recommendation"] == "etcd-backup snapshot --reason after-restore"
    assert any("no verified snapshot of this cluster" in p for p in healthy["problems"])
    shell.run(healthy["recommendation"])
    new_snap = doctor(env, expect=0)["newest_backup"]
    assert new_snap is not None and new_snap["revision_gap"] == 0

    # `latest` means this cluster's newest snapshot while etcd answers...
    fresh = tmp_path / "elsewhere"
    args = ["restore", "single", "--snapshot", "latest", "--name", "x", "--peer-url", f"http://127.0.0.1:{free_port()}"]
    r = run_cli(*args, "--data-dir", str(fresh / "a"), "--output", "json", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["snapshot"] == new_snap["id"]
    # ... and with nothing answering, the operator is shown both clusters to pick from.
    dead = {**env, "ETCD_BACKUP_ETCD__ENDPOINTS": f"http://127.0.0.1:{free_port()}"}
    r = run_cli(*args, "--data-dir", str(fresh / "b"), env=dead)
    assert r.returncode == 2, r.stderr
    assert snap["cluster_id"] in r.stderr and snap["id"] in r.stderr and new_snap["id"] in r.stderr
    assert not (fresh / "b").exists()


def _tree(path: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(path)), p.stat().st_size if p.is_file() else -1) for p in path.rglob("*"))


def test_scenario4b_the_survivor_is_saved_first_and_the_rebuild_loses_no_write(
    etcd_cluster: ClusterFactory, shell_factory: list[Shell], tmp_path: Path
) -> None:
    """Writes after the last backup, then quorum lost: nothing can be written since, so the
    member that still answers holds them all. Doctor says to save it first; run again, its steps
    restore that snapshot, and the rebuilt cluster holds every write."""
    cluster = etcd_cluster(3)
    expected = write_keys(cluster)
    env = config_env(cluster, f"file://{tmp_path}/store", etcd__dial_timeout="2s", restore__data_dir=data_dirs(cluster))
    old = snapshot(env)
    for i in range(5):
        cluster.put(f"/registry/late/{i}", "written after the last backup")
        expected[f"/registry/late/{i}"] = "written after the last backup"
    for name in ("m1", "m2"):
        cluster.member(name).kill()
        shutil.rmtree(cluster.member(name).data_dir)

    d = doctor(env)
    salvage = "etcd-backup snapshot --reason before-restore --from-survivor"
    past = f"5 revisions past what the steps below restore ({old['revision']})"
    assert d["explanation"].startswith(f"Member m3 still holds revision {old['revision'] + 5}, {past}"), d
    assert f"`{salvage}`" in d["explanation"]
    plain = run_cli("snapshot", env=env)  # without the flag: no leader, no snapshot, and what to do
    assert plain.returncode == 1 and "`etcd-backup snapshot --from-survivor` saves the newest data" in plain.stderr

    shell = Shell(env, tmp_path)
    shell_factory.append(shell)
    saved = json.loads(shell.run(f"{salvage} --output json").stdout)
    assert saved["revision"] == old["revision"] + 5 and saved["endpoint"] == cluster.member("m3").client_url
    assert saved["reason"] == "before-restore" and saved["verification"]["structure"]["ok"] is True

    d = doctor(env)
    assert "still holds" not in d["explanation"]
    restores = [s for s in d["plan"] if s["kind"] == "restore"]
    assert restores and all(f"--snapshot {saved['id']}" in s["command"] for s in restores)
    cluster.member("m3").stop()  # what doctor said to stop
    steps = [s for s in d["plan"] if s["kind"] != "snapshot"]
    walk(shell, {**d, "plan": steps, "steps": [s["command"] for s in steps]})
    for m in cluster.members:
        assert cluster.get_all(endpoints=[m.client_url]) == expected


def test_restore_never_touches_a_live_members_data_dir(etcd_cluster: ClusterFactory, tmp_path: Path) -> None:
    cluster = etcd_cluster(3)
    expected = write_keys(cluster, 5)
    env = config_env(cluster, f"file://{tmp_path}/store", etcd__dial_timeout="2s")
    snap = snapshot(env)
    live = cluster.member("m1")
    before = _tree(live.data_dir)
    members = [arg for m in cluster.members for arg in ("--member", f"{m.name}={m.peer_url}")]
    attempts = [
        ["single", "--name", "m1", "--peer-url", live.peer_url, "--data-dir", str(live.data_dir)],
        ["cluster", *members, "--data-dir", str(cluster.base / "{name}"), "--only", "m1"],
        ["cluster", *members, "--data-dir", str(cluster.base / "{name}")],
        # One level too high or too deep: --force would still move the live member's files.
        ["single", "--name", "m1", "--peer-url", live.peer_url, "--data-dir", str(live.data_dir.parent)],
        ["single", "--name", "m1", "--peer-url", live.peer_url, "--data-dir", str(live.data_dir / "member" / "wal")],
    ]
    for args in attempts:
        r = run_cli("restore", *args[:1], "--snapshot", snap["id"], *args[1:], "--force", env=env)
        assert r.returncode == 4, r.stderr
        assert "in use by a running etcd" in r.stderr and "stop" in r.stderr, r.stderr
    assert [p.name for p in cluster.base.iterdir() if ".bak-" in p.name] == []
    assert live.alive() and cluster.get_all(endpoints=[live.client_url]) == expected
    assert all(name in {n for n, _ in _tree(live.data_dir)} for name, _ in before)

    # A copy of a live member's data dir is not locked, but it belongs to a member that answers.
    copy = tmp_path / "copy-of-m2"
    shutil.copytree(cluster.member("m2").data_dir, copy)
    (copy / "member" / "snap" / "db").chmod(0o600)
    r = run_cli(
        "restore",
        "single",
        "--snapshot",
        snap["id"],
        "--name",
        "m2",
        "--peer-url",
        cluster.member("m2").peer_url,
        "--data-dir",
        str(copy),
        "--force",
        env=env,
    )
    assert r.returncode == 4, r.stderr
    assert "still answers" in r.stderr and "stop it first" in r.stderr
    assert copy.is_dir() and not list(tmp_path.glob("copy-of-m2.bak-*"))


def test_bump_revision_advice_comes_before_the_restore(etcd_cluster: ClusterFactory, tmp_path: Path) -> None:
    """The note about --bump-revision is said before anything is verified or restored: even a
    restore that fails on a damaged snapshot has said it."""
    cluster = etcd_cluster(1)
    store = tmp_path / "store"
    env = config_env(cluster, f"file://{store}")
    snap = snapshot(env)
    data = store / snap["object_key"]
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    r = run_cli(
        "restore",
        "single",
        "--snapshot",
        snap["id"],
        "--name",
        "m9",
        "--peer-url",
        f"http://127.0.0.1:{free_port()}",
        "--data-dir",
        str(tmp_path / "d"),
        env=env,
    )
    assert r.returncode == 3, r.stderr
    note, error = r.stderr.strip().splitlines()[-2:]
    assert note.startswith("etcd-backup: note:") and "--bump-revision" in note and "3.5.10" in note
    assert error.startswith("etcd-backup: error:")
