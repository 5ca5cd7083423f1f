"""`doctor` on real clusters: the table, the contract's JSON, dead and frozen hosts, broken storage."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from conftest import Cluster, ClusterFactory, StartEtcd, config_env, run_cli
from etcd_backup.etcdproc import EtcdProcess, free_port

pytestmark = pytest.mark.timeout(180)

CONTRACT_FIELDS = {"scenario", "quorum", "members", "leader", "alarms", "newest_backup", "recommendation"}
MEMBER_FIELDS = {"name", "id", "peer_urls", "client_urls", "reachable", "started"}


def doctor_json(env: dict[str, str], expect: int | None) -> dict:
    r = run_cli("doctor", "--output", "json", env=env)
    assert expect is None or r.returncode == expect, r.stderr
    return json.loads(r.stdout)


def add_member_without_starting(cluster: Cluster, peer_url: str, timeout: float = 30, *, learner: bool = False) -> str:
    """`etcdctl member add`, retried while etcd says it is too soon after start; returns the hex id."""
    deadline = time.monotonic() + timeout
    extra = ["--learner"] if learner else []
    while True:
        out = cluster.etcdctl("member", "add", "extra", f"--peer-urls={peer_url}", *extra, "-w", "json", check=False)
        if out.strip():
            return format(json.loads(out)["member"]["ID"], "x")
        if time.monotonic() > deadline:
            raise AssertionError("etcd kept refusing member add")
        time.sleep(0.3)


def start_a_learner(
    cluster: Cluster, start_etcd: StartEtcd, env: dict[str, str], tmp_path: Path
) -> tuple[str, str, EtcdProcess, dict]:
    """Add a learner "extra" to the one-member `cluster` and start it; returns its id, peer URL,
    process and the first doctor answer once it has published its name (healthy)."""
    m1 = cluster.members[0]
    peer = f"http://127.0.0.1:{free_port()}"
    member_id = add_member_without_starting(cluster, peer, learner=True)
    flags = [
        "--name=extra", f"--data-dir={tmp_path / 'extra'}", f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}", f"--initial-cluster={m1.name}={m1.peer_url},extra={peer}",
        "--initial-cluster-state=existing",
    ]  # fmt: skip
    learner = start_etcd(cluster.tools.etcd, flags)
    deadline = time.monotonic() + 60
    while (d := doctor_json(env, expect=None))["scenario"] != "healthy":
        assert time.monotonic() < deadline, d
        time.sleep(0.3)
    return member_id, peer, learner, d


def follower(cluster: Cluster, exclude: str) -> EtcdProcess:
    status = json.loads(cluster.etcdctl("endpoint", "status", "-w", "json"))
    leader = status[0]["Status"]["leader"]
    by_url = {s["Endpoint"]: s["Status"]["header"]["member_id"] for s in status}
    return next(m for m in cluster.members if m.name != exclude and by_url[m.client_url] != leader)


def test_healthy_cluster_table_and_json(etcd_cluster: ClusterFactory, tmp_path: Path) -> None:
    cluster = etcd_cluster(3)
    cluster.put("a", "1")
    env = config_env(cluster, f"file://{tmp_path}/store")
    snap = json.loads(run_cli("snapshot", "--output", "json", env=env).stdout)
    cluster.put("b", "2")

    text = run_cli("doctor", env=env)
    assert text.returncode == 0, text.stderr
    assert "scenario: healthy" in text.stdout
    for m in cluster.members:
        assert m.name in text.stdout and m.client_url in text.stdout
    assert snap["id"] in text.stdout

    d = doctor_json(env, expect=0)
    assert d.keys() >= CONTRACT_FIELDS
    assert d["scenario"] == "healthy" and d["quorum"] is True and d["alarms"] == []
    assert d["leader"] in {m.name for m in cluster.members}
    assert {m["name"] for m in d["members"]} == {"m1", "m2", "m3"}
    for m in d["members"]:
        assert m.keys() >= MEMBER_FIELDS and m["reachable"] and m["started"]
        assert int(m["id"], 16) > 0
    backup = d["newest_backup"]
    assert backup["id"] == snap["id"] and backup["revision"] == snap["revision"]
    assert backup["revision_gap"] >= 1 and backup["age_seconds"] >= 0


def test_frozen_member_and_dead_endpoint_cost_one_timeout(etcd_cluster: ClusterFactory, tmp_path: Path) -> None:
    cluster = etcd_cluster(3)
    dial_timeout = 4.0  # two stacked timeouts (8 s) stay clear of one plus a slow CLI start on a loaded machine
    # Only m1 and an address nobody listens on are configured: the frozen member is found through
    # the member list, and probed in parallel with everything else.
    dead = f"http://127.0.0.9:{free_port()}"
    env = config_env(
        cluster,
        f"file://{tmp_path}/store",
        etcd__dial_timeout=f"{dial_timeout:.0f}s",
        etcd__endpoints=f"{cluster.member('m1').client_url},{dead}",
    )
    frozen = follower(cluster, exclude="m1")
    os.kill(frozen.process.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        d = doctor_json(env, expect=1)
        elapsed = time.monotonic() - started
    finally:
        os.kill(frozen.process.pid, signal.SIGCONT)
    print(f"doctor with a frozen member and a dead endpoint: {elapsed:.2f}s (dial timeout {dial_timeout}s)")
    assert d["scenario"] == "member-down" and d["quorum"] is True
    by_name = {m["name"]: m for m in d["members"]}
    assert by_name[frozen.name]["reachable"] is False
    assert f"--failed {frozen.name}" in d["recommendation"]
    assert any(dead in p for p in d["problems"])
    # Two timeouts in a row would take 2 * dial_timeout plus the CLI's start.
    assert elapsed < 2 * dial_timeout - 0.5


def test_storage_failure_is_reported_not_fatal(etcd_single: Cluster, tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    d = doctor_json(config_env(etcd_single, f"file://{not_a_dir}"), expect=0)
    assert d["scenario"] == "healthy" and d["newest_backup"] is None
    assert d["storage_error"] and any("storage" in p for p in d["problems"])
    # Not "storage holds no verified snapshot": nothing could be read, and the fix comes first.
    assert "storage cannot be read" in d["explanation"] and "holds no verified" not in d["explanation"]


def test_added_member_that_never_started_in_one_member_cluster(etcd_cluster: ClusterFactory, tmp_path: Path) -> None:
    """Scenario 2 growing 1 -> 2: the added member never starts, and the original loses quorum."""
    cluster = etcd_cluster(1)
    cluster.put("k", "v")
    env = config_env(cluster, f"file://{tmp_path}/store", etcd__dial_timeout="2s")
    snap = json.loads(run_cli("snapshot", "--output", "json", env=env).stdout)
    member_id = add_member_without_starting(cluster, f"http://127.0.0.1:{free_port()}")

    d = doctor_json(env, expect=1)
    assert d["scenario"] == "unstarted-member" and d["quorum"] is False
    unstarted = next(m for m in d["members"] if not m["started"])
    assert unstarted["id"] == member_id and unstarted["name"] == "" and unstarted["client_urls"] == []
    m1 = cluster.members[0]
    assert f"restore single --snapshot {snap['id']} --name m1 --peer-url {m1.peer_url}" in d["recommendation"]


@pytest.mark.parametrize("version", ["3.5", "3.4"])
def test_unstarted_learner_does_not_count_against_quorum(
    etcd_cluster: ClusterFactory, tmp_path: Path, version: str
) -> None:
    """Scenario 2 done the recommended way (a learner first): a learner that never starts is not a
    voter, so the one-member cluster keeps quorum and the advice is to remove it, not to restore."""
    cluster = etcd_cluster(1, version=version)
    env = config_env(cluster, f"file://{tmp_path}/store", etcd__dial_timeout="2s")
    member_id = add_member_without_starting(cluster, f"http://127.0.0.1:{free_port()}", learner=True)

    d = doctor_json(env, expect=1)
    assert d["scenario"] == "unstarted-member" and d["quorum"] is True, d
    learner = next(m for m in d["members"] if m["id"] == member_id)
    assert learner["learner"] is True and learner["started"] is False
    assert next(m for m in d["members"] if m["id"] != member_id)["learner"] is False
    assert f"member remove {member_id}" in d["recommendation"]
    assert "does not vote, so quorum is not at risk" in d["explanation"], d["explanation"]


def test_a_started_learner_is_healthy_and_the_step_promotes_it(
    etcd_cluster: ClusterFactory, start_etcd: StartEtcd, tmp_path: Path
) -> None:
    """The learner of scenario 2 has started: the change is half done, and doctor's step (it said
    "nothing to do") is the promote, which etcd takes once the learner caught up."""
    import shlex
    import subprocess

    cluster = etcd_cluster(1)
    cluster.put("k", "v")
    env = config_env(cluster, f"file://{tmp_path}/store", etcd__dial_timeout="2s")
    member_id, _, learner, d = start_a_learner(cluster, start_etcd, env, tmp_path)
    deadline = time.monotonic() + 60
    assert learner.alive()
    assert f"member promote {member_id}" in d["recommendation"], d
    assert [p["kind"] for p in d["plan"]] == ["promote", "check"], d["plan"]
    argv = shlex.split(d["steps"][0])
    while (done := subprocess.run([cluster.tools.etcdctl, *argv[1:]], capture_output=True, text=True)).returncode:
        assert time.monotonic() < deadline and "in sync with leader" in done.stderr, done.stderr  # caught up soon
        time.sleep(0.3)
    after = doctor_json(env, expect=0)
    assert after["scenario"] == "healthy" and "promote" not in after["recommendation"], after
    assert not any(m["learner"] for m in after["members"])


def test_nospace_alarm_steps_give_the_cluster_its_writes_back(etcd_cluster: ClusterFactory, tmp_path: Path) -> None:
    """Disarming alone lets the next write raise NOSPACE again: the steps compact, defragment and
    disarm, and after running them in order etcd takes writes again."""
    import shlex
    import subprocess

    cluster = etcd_cluster(1, extra_args=["--quota-backend-bytes=2097152"])
    value = "x" * 100_000
    for _ in range(200):  # one key, rewritten: the history is what fills the quota
        if "database space exceeded" in cluster.etcdctl("put", "big", value, check=False) or _nospace(cluster):
            break
    assert _nospace(cluster), "the quota was never reached"
    env = config_env(cluster, f"file://{tmp_path}/store")
    d = doctor_json(env, expect=0)
    assert [a["alarm"] for a in d["alarms"]] == ["NOSPACE"]
    kinds = [p["kind"] for p in d["plan"]]
    assert kinds[:4] == ["snapshot", "compact", "defrag", "disarm"], d["plan"]
    etcdctl_dir = str(Path(cluster.tools.etcdctl).parent)
    for command in d["steps"]:
        argv = shlex.split(command)
        if argv[0] == "etcd-backup":  # the backup before the compaction: a full member is snapshotted
            done_cli = run_cli(*argv[1:], env=env)
            assert done_cli.returncode == 0, (command, done_cli.stderr)
            continue
        assert argv[0] == "etcdctl", command
        done = subprocess.run(
            [cluster.tools.etcdctl, *argv[1:]],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "ETCDCTL_API": "3", "PATH": f"{etcdctl_dir}:{os.environ['PATH']}"},
        )
        assert done.returncode == 0, (command, done.stderr)
    assert not _nospace(cluster)
    cluster.put("after", "ok")  # raises if etcd still refuses writes
    assert cluster.get_all()["after"] == "ok"


def _nospace(cluster: Cluster) -> bool:
    return "NOSPACE" in cluster.etcdctl("alarm", "list")


def test_a_member_that_refuses_our_ca_is_not_called_down(
    etcd_cluster: ClusterFactory, tls_files, tmp_path: Path
) -> None:
    """A wrong etcd.cacert makes a running member look unreachable: doctor says it cannot tell,
    instead of diagnosing single-member-down and recommending a rebuild."""
    cluster = etcd_cluster(1, tls=tls_files)
    env = config_env(cluster, f"file://{tmp_path}/store", etcd__cacert=tls_files.other_ca, etcd__dial_timeout="2s")
    r = run_cli("doctor", "--output", "json", env=env)
    assert r.returncode == 1, r.stderr
    doc = json.loads(r.stdout)
    assert "scenario" not in doc and "cannot tell the cluster's state" in doc["error"], doc
    assert "etcd.cacert" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert doctor_json(config_env(cluster, f"file://{tmp_path}/store"), expect=0)["scenario"] == "healthy"


def test_printed_commands_name_the_config_file_by_its_absolute_path(etcd_single: Cluster, tmp_path: Path) -> None:
    """The operator runs them later, perhaps from another directory: `--config c.toml` as typed
    would not be found there."""
    (tmp_path / "c.toml").write_text(f'[storage]\nurl = "file://{tmp_path}/store"\n')
    env = config_env(etcd_single)
    r = run_cli("--config", "c.toml", "doctor", "--output", "json", env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    command = json.loads(r.stdout)["recommendation"]  # no snapshot yet: take one
    assert f"--config {tmp_path / 'c.toml'} snapshot" in command and "--config c.toml" not in command


def test_a_lost_learner_is_replaced_by_a_learner_and_quorum_holds_throughout(
    etcd_cluster: ClusterFactory, start_etcd: StartEtcd, tmp_path: Path
) -> None:
    """One voter and a started learner whose host is lost: doctor's replace-member added a voting
    member in the learner's place, and the cluster, two voters with one never started, lost quorum
    until it ran. The replacement is a learner: quorum holds, and it is promoted once caught up."""
    import shutil

    cluster = etcd_cluster(1)
    cluster.put("k", "v")
    env = config_env(cluster, f"file://{tmp_path}/store", etcd__dial_timeout="2s")
    _, peer, learner, _ = start_a_learner(cluster, start_etcd, env, tmp_path)
    deadline = time.monotonic() + 60
    learner.kill()
    shutil.rmtree(learner.data_dir)

    d = doctor_json(env, expect=1)
    assert d["scenario"] == "member-down" and d["quorum"] is True, d
    assert "restore replace-member --failed extra" in d["recommendation"], d["recommendation"]
    assert "is a learner" in d["explanation"], d["explanation"]
    r = run_cli(
        "restore", "replace-member", "--failed", "extra", "--name", "extra", "--peer-url", peer,
        "--data-dir", str(tmp_path / "new-host"), "--output", "json", env=env,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["added"]["learner"] is True, out
    waiting = doctor_json(env, expect=1)
    assert waiting["scenario"] == "unstarted-member" and waiting["quorum"] is True, waiting
    cluster.put("k2", "v2")  # writes still go through: quorum was never lost
    assert cluster.get_all() == {"k": "v", "k2": "v2"}

    start_etcd(cluster.tools.etcd, out["etcd_flags"])
    while (d := doctor_json(env, expect=None))["scenario"] != "healthy":
        assert time.monotonic() < deadline + 60, d
        time.sleep(0.3)
    assert f"member promote {out['added']['id']}" in d["recommendation"], d
