"""The reference text's scenarios 3 and 4 end to end: break real clusters, restore, start from the flags.

Every test runs on etcd 3.5 (restored with etcdutl) and Debian's 3.4 (restored with etcdctl).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import Cluster, ClusterFactory, StartEtcd, config_env, flag_value, run_cli
from etcd_backup.etcdproc import free_port, wait_healthy

pytestmark = pytest.mark.timeout(240)

DEFINING_FLAGS = {
    "name",
    "data-dir",
    "listen-peer-urls",
    "initial-advertise-peer-urls",
    "initial-cluster",
    "initial-cluster-token",
    "initial-cluster-state",
}


@pytest.fixture(params=["3.5", "3.4"])
def version(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def peer_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


def write_keys(cluster: Cluster, n: int = 12) -> dict[str, str]:
    expected = {f"/registry/item/{i:03d}": f"value {i} " + "x" * i for i in range(n)}
    for key, value in expected.items():
        cluster.put(key, value)
    cluster.put("/registry/item/000", "overwritten")  # a later revision of a key must win
    expected["/registry/item/000"] = "overwritten"
    return expected


def snapshot(env: dict[str, str]) -> dict:
    r = run_cli("snapshot", "--output", "json", env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def cli_json(env: dict[str, str], *args: str, expect: int = 0) -> dict:
    r = run_cli(*args, "--output", "json", env=env)
    assert r.returncode == expect, r.stderr
    return json.loads(r.stdout)


def flag_names(flags: list[str]) -> set[str]:
    return {f[2:].split("=", 1)[0] for f in flags}


def member_list(cluster: Cluster, endpoint: str) -> list[dict]:
    out = cluster.etcdctl("member", "list", "-w", "json", endpoints=[endpoint])
    return json.loads(out)["members"]


def wait_started_members(cluster: Cluster, endpoint: str, names: set[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    seen: set[str] = set()
    while time.monotonic() < deadline:
        seen = {m.get("name", "") for m in member_list(cluster, endpoint)}
        if seen == names:
            return
        time.sleep(0.2)
    raise AssertionError(f"member list shows {seen}, expected {names}")


def test_scenario3_single_member_data_dir_lost(
    version: str, etcd_cluster: ClusterFactory, start_etcd: StartEtcd, tmp_path: Path
) -> None:
    cluster = etcd_cluster(1, version=version)
    expected = write_keys(cluster)
    env = config_env(cluster, f"file://{tmp_path}/store", etcd__dial_timeout="1s")
    snap = snapshot(env)
    member = cluster.members[0]
    member.kill()
    shutil.rmtree(member.data_dir)

    diagnosis = cli_json(env, "doctor", expect=1)
    assert diagnosis["scenario"] == "single-member-down"
    assert f"restore single --snapshot {snap['id']}" in diagnosis["recommendation"]

    target = tmp_path / "new-host" / "m1.etcd"
    out = cli_json(
        env,
        "restore",
        "single",
        "--snapshot",
        "latest",
        "--name",
        "m1",
        "--peer-url",
        peer_url(),
        "--data-dir",
        str(target),
    )
    assert out["snapshot"] == snap["id"]
    flags = out["etcd_flags"]
    assert flag_names(flags) == DEFINING_FLAGS
    assert flag_value(flags, "initial-cluster-state") == "new"
    assert flag_value(flags, "data-dir") == str(target)
    assert flag_value(flags, "initial-cluster-token") == out["cluster_token"]

    restored = start_etcd(cluster.tools.etcd, flags)
    wait_healthy(restored.client_url, 30, restored)
    assert cluster.get_all(endpoints=[restored.client_url]) == expected
    after = cli_json({**env, "ETCD_BACKUP_ETCD__ENDPOINTS": restored.client_url}, "doctor")
    assert after["scenario"] == "healthy"


def test_a_rebuild_beside_its_running_cluster_says_to_stop_it_and_what_is_not_restored(
    etcd_cluster: ClusterFactory, tmp_path: Path
) -> None:
    cluster = etcd_cluster(1)
    write_keys(cluster)
    env = config_env(cluster, f"file://{tmp_path}/store", etcd__dial_timeout="1s")
    snap = snapshot(env)
    for i in range(5):
        cluster.put(f"/registry/after/{i}", "written after the snapshot")

    def rebuild(into: str) -> list[str]:
        args = ["--snapshot", "latest", "--name", "m1", "--peer-url", peer_url(), "--data-dir", str(tmp_path / into)]
        r = run_cli("restore", "single", *args, env=env)
        assert r.returncode == 0, r.stderr
        return [line for line in r.stderr.splitlines() if "still runs" in line]

    (note,) = rebuild("beside")
    assert note.startswith("etcd-backup: note: cluster ") and "still runs (m1 answers, with quorum)" in note
    assert "stop every member of it before starting the rebuilt ones" in note
    assert f"rebuild brings back revision {snap['revision']}: the 5 revisions between are not restored" in note
    assert "replace-member" not in note  # a one-member cluster has no member to replace one with

    cluster.members[0].kill()
    assert rebuild("after-the-outage") == []  # the outage a rebuild is for: nothing to say


def test_scenario4_one_of_three_lost(
    version: str, etcd_cluster: ClusterFactory, start_etcd: StartEtcd, tmp_path: Path
) -> None:
    cluster = etcd_cluster(3, version=version)
    expected = write_keys(cluster)
    env = config_env(cluster, f"file://{tmp_path}/store", etcd__dial_timeout="2s")
    snapshot(env)
    healthy = run_cli("restore", "replace-member", "--failed", "m3", "--name", "m4", "--peer-url", peer_url(), env=env)
    assert healthy.returncode == 4 and "--force" in healthy.stderr, healthy.stderr
    lost = cluster.member("m2")
    lost.kill()
    shutil.rmtree(lost.data_dir)

    diagnosis = cli_json(env, "doctor", expect=1)
    assert diagnosis["scenario"] == "member-down" and diagnosis["quorum"] is True
    assert "restore replace-member --failed m2" in diagnosis["recommendation"]
    by_name = {m["name"]: m for m in diagnosis["members"]}
    assert by_name["m2"]["reachable"] is False and by_name["m1"]["reachable"] is True
    # The wrong command for this outage still works, but says what it costs and what fits.
    members = [arg for m in cluster.members for arg in ("--member", f"{m.name}={peer_url()}")]
    rebuilt = tmp_path / "wrong-command" / "{name}"
    wrong = run_cli(
        "restore", "cluster", "--snapshot", "latest", *members, "--only", "m2", "--data-dir", str(rebuilt), env=env
    )
    assert wrong.returncode == 0, wrong.stderr
    assert "still runs (m1, m3 answer, with quorum): stop every member" in wrong.stderr
    assert "with quorum intact, a lost member is replaced (`restore replace-member`" in wrong.stderr

    new_dir = tmp_path / "new-host" / "m4"
    out = cli_json(
        env,
        "restore",
        "replace-member",
        "--failed",
        "m2",
        "--name",
        "m4",
        "--peer-url",
        peer_url(),
        "--data-dir",
        str(new_dir),
    )
    flags = out["etcd_flags"]
    # On another peer port: another member's place, whose client URLs only its operator knows.
    assert out["client_urls"] == [] and "CLIENT_URL" in out["start_command"], out
    # A joining member takes no cluster token (etcd ignores it); a wrong one would mislead.
    assert flag_names(flags) == DEFINING_FLAGS - {"initial-cluster-token"}
    assert flag_value(flags, "initial-cluster-state") == "existing"
    initial = flag_value(flags, "initial-cluster")
    assert {p.split("=")[0] for p in initial.split(",")} == {"m1", "m3", "m4"}
    # Returned only after etcd confirmed: the failed member is gone, the new one is listed (not started).
    listed = member_list(cluster, cluster.member("m1").client_url)
    assert len(listed) == 3 and all(m.get("name") != "m2" for m in listed)
    assert out["removed"]["id"] == by_name["m2"]["id"]

    new = start_etcd(cluster.tools.etcd, flags)
    wait_healthy(new.client_url, 60, new)
    wait_started_members(cluster, new.client_url, {"m1", "m3", "m4"})
    endpoints = [cluster.member("m1").client_url, cluster.member("m3").client_url, new.client_url]
    health = cluster.etcdctl("endpoint", "health", "--cluster", "-w", "json", endpoints=endpoints)
    assert len(json.loads(health)) == 3 and all(h["health"] for h in json.loads(health))
    assert cluster.get_all(endpoints=[new.client_url]) == expected
    after = cli_json({**env, "ETCD_BACKUP_ETCD__ENDPOINTS": ",".join(endpoints)}, "doctor")
    assert after["scenario"] == "healthy"


def test_a_sidecar_whose_own_member_is_lost_finds_the_rest_of_its_cluster(
    etcd_cluster: ClusterFactory, start_etcd: StartEtcd, tmp_path: Path
) -> None:
    """Configured with its own member only (the README's sidecar), that member lost: doctor and
    replace-member reach the other two through the member list the newest snapshot recorded. Taken
    for a lost one-member cluster, the steps were `restore single` onto the old URLs: a second,
    stale cluster beside the real one."""
    cluster = etcd_cluster(3)
    expected = write_keys(cluster)
    lost = cluster.member("m2")
    env = config_env(cluster, f"file://{tmp_path}/store", etcd__dial_timeout="2s")
    env["ETCD_BACKUP_ETCD__ENDPOINTS"] = lost.client_url
    snapshot(env)
    lost.kill()
    shutil.rmtree(lost.data_dir)

    diagnosis = cli_json(env, "doctor", expect=1)
    assert diagnosis["scenario"] == "member-down" and diagnosis["quorum"] is True, diagnosis
    assert "restore replace-member --failed m2" in diagnosis["recommendation"]
    assert not any("restore single" in step for step in diagnosis["steps"]), diagnosis["steps"]
    by_name = {m["name"]: m for m in diagnosis["members"]}
    assert by_name.keys() == {"m1", "m2", "m3"} and not by_name["m2"]["reachable"] and by_name["m1"]["reachable"]

    out = cli_json(
        env, "restore", "replace-member", "--failed", "m2", "--name", "m4", "--peer-url", peer_url(),
        "--data-dir", str(tmp_path / "new-host" / "m4"),
    )  # fmt: skip
    assert out["removed"]["id"] == by_name["m2"]["id"]
    new = start_etcd(cluster.tools.etcd, out["etcd_flags"])
    wait_healthy(new.client_url, 60, new)
    wait_started_members(cluster, new.client_url, {"m1", "m3", "m4"})
    assert cluster.get_all(endpoints=[new.client_url]) == expected


def test_a_snapshot_between_replace_member_and_the_start_misleads_neither_doctor_nor_a_rebuild(
    etcd_cluster: ClusterFactory, start_etcd: StartEtcd, tmp_path: Path
) -> None:
    """The daemon snapshots when the member list changes, so one is taken right after
    replace-member: it records the new member unstarted (no name, no client URLs) and the failed
    one no more. doctor still says start it (the remove it said undid the replacement), and the
    member watch sees the start as a change, for a snapshot that records the name. With every
    member down before such a snapshot, the rebuild leaves the unnamed member out and says so."""
    from etcd_backup.config import Config
    from etcd_backup.service.memberwatch import MemberWatch

    cluster = etcd_cluster(3)
    expected = write_keys(cluster)
    env = config_env(cluster, f"file://{tmp_path}/store", etcd__dial_timeout="2s")
    snapshot(env)
    changes: list[int] = []
    watch = MemberWatch(
        Config(etcd={"endpoints": [cluster.member("m1").client_url], "dial_timeout": "2s"}),
        on_change=lambda: changes.append(1),
    )
    watch.poll()
    lost = cluster.member("m2")
    lost.kill()
    shutil.rmtree(lost.data_dir)
    out = cli_json(
        env, "restore", "replace-member", "--failed", "m2", "--name", "m2", "--peer-url", lost.peer_url,
        "--data-dir", str(tmp_path / "new-host" / "m2"),
    )  # fmt: skip
    assert out["client_urls"] == [lost.client_url]  # in the failed member's very place: its client URLs
    watch.poll()
    assert len(changes) == 1
    between = snapshot(env)  # what the daemon's member-change snapshot holds
    assert [m for m in between["members"] if not m["name"]], between["members"]

    diagnosis = cli_json(env, "doctor", expect=1)
    assert diagnosis["scenario"] == "unstarted-member", diagnosis
    assert "member remove" not in diagnosis["recommendation"], diagnosis["recommendation"]
    assert "in place of m2" in diagnosis["explanation"], diagnosis["explanation"]
    start = next(p["command"] for p in diagnosis["plan"] if p["kind"] == "start")
    assert f"--advertise-client-urls={lost.client_url}" in start, start  # as replace-member printed it

    new = start_etcd(cluster.tools.etcd, out["etcd_flags"])
    wait_healthy(new.client_url, 60, new)
    wait_started_members(cluster, new.client_url, {"m1", "m2", "m3"})
    watch.poll()
    assert len(changes) == 2, "the new member's start is a change of the member list"
    assert cluster.get_all(endpoints=[new.client_url]) == expected

    for m in [cluster.member("m1"), cluster.member("m3"), new]:
        m.kill()
    lost_all = cli_json(env, "doctor", expect=1)
    assert lost_all["scenario"] == "quorum-lost", lost_all
    recommendation = lost_all["recommendation"]
    for name in ("m1", "m3"):
        assert f"--member {name}={cluster.member(name).peer_url}" in recommendation, recommendation
    assert not any(new.peer_url in step for step in lost_all["steps"]), lost_all["steps"]
    assert f"{out['added']['id']} ({new.peer_url}) as added but not started" in lost_all["explanation"]


def test_doctor_with_every_member_of_three_down_says_quorum_lost_not_one_member(
    etcd_cluster: ClusterFactory, tmp_path: Path
) -> None:
    """Nothing answers and one endpoint is configured: the newest snapshot recorded three members,
    so this is a lost quorum (rebuild all three), not a one-member cluster."""
    cluster = etcd_cluster(3)
    write_keys(cluster)
    env = config_env(cluster, f"file://{tmp_path}/store", etcd__dial_timeout="2s")
    env["ETCD_BACKUP_ETCD__ENDPOINTS"] = cluster.member("m1").client_url
    snap = snapshot(env)
    for m in cluster.members:
        m.kill()
    diagnosis = cli_json(env, "doctor", expect=1)
    assert diagnosis["scenario"] == "quorum-lost", diagnosis
    assert f"restore cluster --snapshot {snap['id']}" in diagnosis["recommendation"]
    for m in cluster.members:
        assert f"--member {m.name}={m.peer_url}" in diagnosis["recommendation"]


def test_scenario4_two_of_three_lost(
    version: str, etcd_cluster: ClusterFactory, start_etcd: StartEtcd, tmp_path: Path
) -> None:
    cluster = etcd_cluster(3, version=version)
    expected = write_keys(cluster)
    env = config_env(cluster, f"file://{tmp_path}/store", etcd__dial_timeout="2s")
    snap = snapshot(env)
    for name in ("m1", "m2"):
        cluster.member(name).kill()
        shutil.rmtree(cluster.member(name).data_dir)

    diagnosis = cli_json(env, "doctor", expect=1)
    assert diagnosis["scenario"] == "quorum-lost" and diagnosis["quorum"] is False
    rec = diagnosis["recommendation"]
    assert f"restore cluster --snapshot {snap['id']}" in rec
    for m in cluster.members:
        assert f"--member {m.name}={m.peer_url}" in rec

    r = run_cli("restore", "replace-member", "--failed", "m1", "--name", "m1", "--peer-url", peer_url(), env=env)
    assert r.returncode == 4, r.stderr
    assert "restore cluster" in r.stderr and "quorum" in r.stderr

    peers = {name: peer_url() for name in ("m1", "m2", "m3")}
    base = ["restore", "cluster", "--snapshot", snap["id"], "--data-dir", str(cluster.base / "{name}")]
    for name, url in peers.items():
        base += ["--member", f"{name}={url}"]
    early = run_cli(*base, "--only", "m1", "--data-dir", str(tmp_path / "too-early" / "{name}"), env=env)
    assert early.returncode == 0, early.stderr
    assert "still runs (m3 answers, without quorum): stop every member of it before" in early.stderr

    survivor = cluster.member("m3")
    survivor.stop()  # the operator stops what is left; its data dir stays where it was
    outputs = [cli_json(env, *base, "--only", name) for name in ("m1", "m2")]
    refused = run_cli(*base, "--only", "m3", env=env)
    assert refused.returncode == 4 and "not empty" in refused.stderr
    outputs.append(cli_json(env, *base, "--only", "m3", "--force"))
    assert len({o["cluster_token"] for o in outputs}) == 1
    moved = outputs[2]["members"][0]["moved_aside"]
    assert moved and Path(moved, "member").is_dir()

    started = []
    for out in outputs:
        (member,) = out["members"]
        assert flag_value(member["etcd_flags"], "initial-cluster-token") == out["cluster_token"]
        started.append(start_etcd(cluster.tools.etcd, member["etcd_flags"]))
    for proc in started:
        wait_healthy(proc.client_url, 60, proc)
    wait_started_members(cluster, started[0].client_url, {"m1", "m2", "m3"})
    for proc in started:
        assert cluster.get_all(endpoints=[proc.client_url]) == expected


def test_non_empty_dir_refused_and_force_moves_it_aside(
    version: str, etcd_cluster: ClusterFactory, tmp_path: Path
) -> None:
    cluster = etcd_cluster(1, version=version)
    write_keys(cluster, 3)
    env = config_env(cluster, f"file://{tmp_path}/store")
    snap = snapshot(env)
    target = tmp_path / "data"
    (target / "member").mkdir(parents=True)
    (target / "member" / "precious").write_text("old data")
    args = [
        "restore",
        "single",
        "--snapshot",
        snap["id"],
        "--name",
        "m1",
        "--peer-url",
        peer_url(),
        "--data-dir",
        str(target),
    ]

    r = run_cli(*args, env=env)
    assert r.returncode == 4, r.stderr
    assert str(target) in r.stderr and "--force" in r.stderr
    assert (target / "member" / "precious").read_text() == "old data"
    assert [p.name for p in tmp_path.iterdir() if ".bak-" in p.name] == []
    (a_file := tmp_path / "a-file").write_text("")  # a typo naming a file: say so, not "not empty"
    r = run_cli(*args[:-1], str(a_file), env=env)
    assert r.returncode == 4 and f"data dir {a_file} is a file, not a directory" in r.stderr, r.stderr
    assert a_file.read_text() == ""

    out = cli_json(env, *args, "--force")
    moved = Path(out["moved_aside"])
    assert moved.name.startswith("data.bak-") and moved.parent == tmp_path
    assert (moved / "member" / "precious").read_text() == "old data"
    assert (target / "member" / "snap" / "db").is_file()

    empty = tmp_path / "empty"
    empty.mkdir()
    out = cli_json(
        env,
        "restore",
        "single",
        "--snapshot",
        snap["id"],
        "--name",
        "m1",
        "--peer-url",
        peer_url(),
        "--data-dir",
        str(empty),
    )
    assert out["moved_aside"] is None and (empty / "member" / "snap" / "db").is_file()


def test_corrupted_snapshot_touches_nothing(version: str, etcd_cluster: ClusterFactory, tmp_path: Path) -> None:
    cluster = etcd_cluster(1, version=version)
    write_keys(cluster, 3)
    store = tmp_path / "store"
    env = config_env(cluster, f"file://{store}")
    snap = snapshot(env)
    data = store / snap["object_key"]
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))

    fresh = tmp_path / "fresh"
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep").write_text("keep")
    before = sorted(p.name for p in tmp_path.iterdir())
    runs = [
        [
            "restore",
            "single",
            "--snapshot",
            snap["id"],
            "--name",
            "m1",
            "--peer-url",
            peer_url(),
            "--data-dir",
            str(fresh),
        ],
        [
            "restore",
            "single",
            "--snapshot",
            "latest",
            "--name",
            "m1",
            "--peer-url",
            peer_url(),
            "--data-dir",
            str(occupied),
            "--force",
        ],
        [
            "restore",
            "cluster",
            "--snapshot",
            snap["id"],
            "--member",
            f"a={peer_url()}",
            "--member",
            f"b={peer_url()}",
            "--data-dir",
            str(tmp_path / "c-{name}"),
            "--force",
        ],
    ]
    for args in runs:
        r = run_cli(*args, env=env)
        assert r.returncode == 3, r.stderr
        assert snap["id"] in r.stderr and "Traceback" not in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert (occupied / "keep").read_text() == "keep"


def test_bump_revision_needs_a_tool_that_has_it(version: str, etcd_cluster: ClusterFactory, tmp_path: Path) -> None:
    from etcd_backup.etcdtools import find_restore_tool

    cluster = etcd_cluster(1, version=version)
    cluster.put("k", "v")
    env = config_env(cluster, f"file://{tmp_path}/store")
    snap = snapshot(env)
    target = tmp_path / "data"
    args = [
        "restore",
        "single",
        "--snapshot",
        snap["id"],
        "--name",
        "m1",
        "--peer-url",
        peer_url(),
        "--data-dir",
        str(target),
        "--bump-revision",
        "1000",
        "--mark-compacted",
    ]
    r = run_cli(*args, env=env)
    if find_restore_tool(cluster.tools.restore_tool).can_bump_revision:
        assert r.returncode == 0, r.stderr
        db = str(target / "member" / "snap" / "db")
        status = subprocess.run(
            [cluster.tools.restore_tool, "snapshot", "status", db, "-w", "json"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert json.loads(status.stdout)["revision"] >= snap["revision"] + 1000
    else:
        assert r.returncode == 2, r.stderr
        assert "--bump-revision" in r.stderr and "3.5.10" in r.stderr
        assert not target.exists()


def test_usage_errors_before_anything_else(tmp_path: Path) -> None:
    env = config_env(None, f"file://{tmp_path}/store")
    members = ["--member", "a=http://127.0.0.1:2380", "--member", "b=http://127.0.0.1:2381"]
    r = run_cli("restore", "cluster", "--snapshot", "x", *members, "--data-dir", str(tmp_path / "d"), env=env)
    assert r.returncode == 2 and "{name}" in r.stderr
    r = run_cli(
        "restore", "cluster", "--snapshot", "x", *members, "--data-dir", str(tmp_path / "d"), "--only", "c", env=env
    )
    assert r.returncode == 2 and "--only c" in r.stderr
    r = run_cli(
        "restore",
        "single",
        "--snapshot",
        "x",
        "--name",
        "a",
        "--peer-url",
        "not-a-url",
        "--data-dir",
        str(tmp_path / "d"),
        env=env,
    )
    assert r.returncode == 2 and "--peer-url" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []
