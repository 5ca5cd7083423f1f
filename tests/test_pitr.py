"""Point-in-time recovery on real etcd: `timeline`, restores and fetches to the latest point, a
revision or a time, leases, damage, encryption, auth, and doctor's point. The delta writer of the
daemon (gaps, overlapping writers, outages, retention, real S3 servers) is test_pitr_writer.py."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from conftest import (
    AgeTool,
    Cluster,
    ClusterFactory,
    DaemonFactory,
    EtcdTools,
    StartEtcd,
    config_env,
    run_cli,
)
from etcd_backup.etcdproc import free_port, wait_healthy
from pitrkit import (
    SECRET,
    delta_runbook,
    keyspace,
    restore_single,
    revision_of,
    start_restored,
    start_with_deltas,
    stored_up_to,
    timeline,
    txn,
    wait_for,
    writes,
)

pytestmark = pytest.mark.timeout(240)


def test_restore_to_latest_holds_every_revision_of_the_source(
    etcd_cluster: ClusterFactory, start_daemon: DaemonFactory, start_etcd: StartEtcd, tmp_path: Path
) -> None:
    """A 3-member cluster loses quorum; the daemon had stored every change: --to-latest brings back
    every key with its value, create/mod revision and version, at the source's revision."""
    cluster = etcd_cluster(3)
    writes(cluster, 10, "/before")
    d, env = start_with_deltas(start_daemon, cluster, f"file://{tmp_path}/store")
    writes(cluster, 60)
    cluster.etcdctl("del", "/app/3")
    lease = cluster.etcdctl("lease", "grant", "300").split()[1]
    for k in ("a", "b", "c"):
        cluster.etcdctl("put", f"/leased/{k}", k, f"--lease={lease}")
    cluster.etcdctl("lease", "revoke", lease)  # one revision deleting three keys
    txn(cluster, ["put /txn/a 1", "put /txn/b 2", "del /app/4"])  # one revision, three events
    live = revision_of(cluster, cluster.endpoints[0])
    expected = keyspace(cluster, cluster.endpoints[0])
    wait_for(stored_up_to(env, live), 30, f"deltas up to revision {live}")
    for m in cluster.members:
        m.kill()
    assert d.alive()
    t = timeline(env)
    assert t["newest"]["revision"] == live and t["chains"][0]["gaps"] == []
    assert t["chains"][0]["to_revision"] == live and t["chains"][0]["deltas"] >= 1

    target = tmp_path / "restored"
    r = restore_single(env, target, "--to-latest")
    out, restored = start_restored(r, cluster, start_etcd)
    assert out["revision"] == live and out["point"]["revision"] == live
    assert revision_of(cluster, restored.client_url) == live
    assert keyspace(cluster, restored.client_url) == expected


def test_to_revision_and_to_time_undo_a_deleted_prefix(
    etcd_single: Cluster, start_daemon: DaemonFactory, start_etcd: StartEtcd, tmp_path: Path
) -> None:
    cluster = etcd_single
    d, env = start_with_deltas(start_daemon, cluster, f"file://{tmp_path}/store")
    writes(cluster, 30, "/prod")
    before_delete = revision_of(cluster, cluster.endpoints[0])
    expected = keyspace(cluster, cluster.endpoints[0])
    wait_for(stored_up_to(env, before_delete), 30, "deltas up to the delete")
    moment = datetime.now(UTC)  # after every write above was seen, before the delete is
    time.sleep(0.02)  # times are kept to the millisecond: the delete must fall in a later one
    cluster.etcdctl("del", "/prod", "--prefix")  # the bad change: `kubectl delete namespace prod`
    after = revision_of(cluster, cluster.endpoints[0])
    wait_for(stored_up_to(env, after), 30, "the delete stored")
    assert keyspace(cluster, cluster.endpoints[0]) == {}

    for option in (["--to-revision", str(before_delete)], ["--to-time", moment.isoformat().replace("+00:00", "Z")]):
        target = tmp_path / f"r{option[0]}"
        r = restore_single(env, target, *option, name="back")
        assert "after the newest change stored" not in r.stderr, r.stderr
        out, back = start_restored(r, cluster, start_etcd)
        assert out["revision"] == before_delete, (option, out["revision"])
        assert keyspace(cluster, back.client_url) == expected
        assert revision_of(cluster, back.client_url) == before_delete
        back.kill()
    assert d.alive()
    # A time after the newest change stored (`--to-time now`, after the daemon died): the newest
    # point, and a note that nothing later is backed up.
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    r = run_cli("fetch", "--to-time", later, "--to", str(tmp_path / "now.db"), "--output", "json", env=env)
    assert r.returncode == 0 and json.loads(r.stdout)["revision"] == after, r.stderr
    assert f"is after the newest change stored (revision {after}," in r.stderr, r.stderr


def test_keys_with_leases_come_back_with_the_same_lease(
    etcd_single: Cluster, start_daemon: DaemonFactory, start_etcd: StartEtcd, tmp_path: Path
) -> None:
    cluster = etcd_single
    _, env = start_with_deltas(start_daemon, cluster, f"file://{tmp_path}/store")
    lease = cluster.etcdctl("lease", "grant", "600").split()[1]
    short = cluster.etcdctl("lease", "grant", "5").split()[1]
    cluster.etcdctl("put", "/leased/long", "x", f"--lease={lease}")
    cluster.etcdctl("put", "/leased/short", "y", f"--lease={short}")
    live = revision_of(cluster, cluster.endpoints[0])
    expected = keyspace(cluster, cluster.endpoints[0])
    wait_for(stored_up_to(env, live), 30, "the leased keys stored")
    r = restore_single(env, tmp_path / "l", "--to-revision", str(live), name="l")
    _, restored = start_restored(r, cluster, start_etcd)
    got = keyspace(cluster, restored.client_url)
    assert got == expected and got["/leased/long"]["lease"] == int(lease, 16)
    ttl = json.loads(cluster.etcdctl("lease", "timetolive", lease, "-w", "json", endpoints=[restored.client_url]))
    assert ttl["granted-ttl"] == 600 and 0 < ttl["ttl"] <= 600
    # The short lease expires in the restored cluster as a 5 s lease does: its key goes.
    wait_for(lambda: "/leased/short" not in keyspace(cluster, restored.client_url), 30, "the short lease to expire")


def test_damaged_delta_exits_3_and_touches_nothing(
    etcd_single: Cluster, start_daemon: DaemonFactory, tmp_path: Path
) -> None:
    cluster = etcd_single
    store = tmp_path / "store"
    d, env = start_with_deltas(start_daemon, cluster, f"file://{store}")
    for _ in range(2):  # two deltas at least: the damaged first one is prefetched beside the next
        writes(cluster, 10)
        live = revision_of(cluster, cluster.endpoints[0])
        wait_for(stored_up_to(env, live), 30, "deltas stored")
    d.terminate()
    data = min((store / "deltas").rglob("*.delta"))
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x20
    data.write_bytes(bytes(raw))
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep").write_text("keep")
    before = sorted(p.name for p in tmp_path.iterdir())
    for args in (
        [
            "restore",
            "single",
            "--to-latest",
            "--name",
            "x",
            "--peer-url",
            f"http://127.0.0.1:{free_port()}",
            "--data-dir",
            str(occupied),
            "--force",
        ],
        ["fetch", "--to-latest", "--to", str(tmp_path / "point.db")],
        ["verify", "--chain", "latest"],
    ):
        r = run_cli(*args, env=env)
        assert r.returncode == 3, (args, r.stderr)
        assert "delta" in r.stderr and "Traceback" not in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert (occupied / "keep").read_text() == "keep"


def test_a_target_no_chain_reaches_exits_2_naming_the_nearest_points(
    etcd_single: Cluster, start_daemon: DaemonFactory, tmp_path: Path
) -> None:
    cluster = etcd_single
    writes(cluster, 5, "/old")
    _, env = start_with_deltas(start_daemon, cluster, f"file://{tmp_path}/store")
    first = json.loads(run_cli("list", "--output", "json", env=env).stdout)[-1]["revision"]
    writes(cluster, 10)
    live = revision_of(cluster, cluster.endpoints[0])
    wait_for(stored_up_to(env, live), 30, "deltas stored")
    common = ["--name", "x", "--peer-url", f"http://127.0.0.1:{free_port()}", "--data-dir", str(tmp_path / "x")]
    for revision in (first - 1, live + 1000):
        r = run_cli("restore", "single", "--to-revision", str(revision), *common, env=env)
        assert r.returncode == 2, r.stderr
        assert f"revision {revision} cannot be restored" in r.stderr
        assert "newest before it" in r.stderr or "next after it" in r.stderr
    r = run_cli("restore", "single", "--to-time", "2001-01-01T00:00:00Z", *common, env=env)
    assert r.returncode == 2 and "nothing was backed up" in r.stderr, r.stderr
    assert not (tmp_path / "x").exists()


def test_fetch_of_a_revision_is_a_snapshot_etcdutl_accepts(
    etcd_single: Cluster, start_daemon: DaemonFactory, tmp_path: Path
) -> None:
    cluster = etcd_single
    _, env = start_with_deltas(start_daemon, cluster, f"file://{tmp_path}/store")
    writes(cluster, 25)
    middle = revision_of(cluster, cluster.endpoints[0])
    writes(cluster, 25, "/later")
    live = revision_of(cluster, cluster.endpoints[0])
    wait_for(stored_up_to(env, live), 30, "deltas stored")
    dest = tmp_path / "point.db"
    r = run_cli("fetch", "--to-revision", str(middle), "--to", str(dest), "--output", "json", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["revision"] == middle and dest.stat().st_mode & 0o777 == 0o600
    status = subprocess.run(
        [cluster.tools.restore_tool, "snapshot", "status", str(dest), "-w", "json"], capture_output=True, text=True
    )
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["revision"] == middle
    # In text, what was written is the point (not the base's revision under the point's number).
    r = run_cli("fetch", "--to-revision", str(middle), "--to", str(tmp_path / "again.db"), env=env)
    assert r.returncode == 0 and f"point at revision {middle} (snapshot " in r.stdout, r.stdout + r.stderr


def test_latest_with_an_older_point_uses_the_snapshot_that_reaches_it(
    etcd_single: Cluster, start_daemon: DaemonFactory, tmp_path: Path
) -> None:
    """Two chains: `latest` with a point in the older one means the base that reaches it (not
    "not covered"), and a named newer base says which snapshot does."""
    cluster = etcd_single
    _, env = start_with_deltas(start_daemon, cluster, f"file://{tmp_path}/store")
    writes(cluster, 10)
    older_point = revision_of(cluster, cluster.endpoints[0])
    writes(cluster, 5, "/more")
    newer = json.loads(run_cli("snapshot", "--output", "json", env=env).stdout)
    assert newer["revision"] > older_point
    writes(cluster, 5, "/after")
    wait_for(stored_up_to(env, revision_of(cluster, cluster.endpoints[0])), 30, "deltas stored")
    first = [m for m in json.loads(run_cli("list", "--output", "json", env=env).stdout) if m["id"] != newer["id"]]
    assert len(first) == 1 and first[0]["revision"] < older_point
    dest = tmp_path / "point.db"
    r = run_cli("fetch", "latest", "--to-revision", str(older_point), "--to", str(dest), "--output", "json", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["revision"] == older_point
    r = restore_single(env, tmp_path / "x", "--snapshot", newer["id"], "--to-revision", str(older_point))
    assert r.returncode == 2 and not (tmp_path / "x").exists(), r.stderr
    assert f"snapshot {first[0]['id']} reaches it" in r.stderr, r.stderr


def test_without_a_point_a_restore_says_what_deltas_hold(
    etcd_single: Cluster, start_daemon: DaemonFactory, tmp_path: Path
) -> None:
    cluster = etcd_single
    _, env = start_with_deltas(start_daemon, cluster, f"file://{tmp_path}/store")
    writes(cluster, 12)
    live = revision_of(cluster, cluster.endpoints[0])
    wait_for(stored_up_to(env, live), 30, "deltas stored")
    snapshot = json.loads(run_cli("list", "--output", "json", env=env).stdout)[0]
    r = restore_single(env, tmp_path / "x", "--snapshot", "latest", name="x")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["revision"] == snapshot["revision"]
    newer = live - snapshot["revision"]
    assert f"deltas hold {newer} newer revisions" in r.stderr and "--to-latest" in r.stderr


def test_doctor_recommends_the_latest_point_and_the_daemon_drills_it(
    etcd_single: Cluster, start_daemon: DaemonFactory, tmp_path: Path
) -> None:
    cluster = etcd_single
    d, env = start_with_deltas(start_daemon, cluster, f"file://{tmp_path}/store", verify__restore_drill="3s")
    writes(cluster, 10)
    live = revision_of(cluster, cluster.endpoints[0])
    drilled = d.wait_until(
        lambda: next(
            (m for m in json.loads(run_cli("list", "--output", "json", env=env).stdout)
             if (m["verification"]["drill"] or {}).get("point")),
            None,
        ),
        90,
        "a drill of the newest point",
    )  # fmt: skip
    drill = drilled["verification"]["drill"]
    assert drill["ok"] is True and drill["compared_with_live"] is True and drill["revision"] >= live - 1
    wait_for(stored_up_to(env, live), 30, "deltas stored")
    cluster.members[0].kill()
    doc = json.loads(run_cli("doctor", "--output", "json", env={**env, "ETCD_BACKUP_ETCD__DIAL_TIMEOUT": "1s"}).stdout)
    assert doc["scenario"] == "single-member-down"
    assert "--to-latest" in doc["recommendation"]
    assert doc["newest_point"]["revision"] == live


def test_a_grow_that_loses_quorum_is_rolled_back_with_the_writes_after_pre_change(
    etcd_single: Cluster, start_daemon: DaemonFactory, start_etcd: StartEtcd, tmp_path: Path
) -> None:
    """Scenario 2 without --learner: pre-change, writes, `member add` of a member that never starts
    (1 of 2 voters: quorum lost). doctor's rollback said `restore single --snapshot PRE_CHANGE`
    without --to-latest: followed, it lost every write after the pre-change snapshot, though the
    deltas held them."""
    import shlex

    cluster = etcd_single
    _, env = start_with_deltas(
        start_daemon, cluster, f"file://{tmp_path}/store", restore__data_dir=str(tmp_path / "data" / "{name}")
    )
    assert run_cli("pre-change", "--reason", "grow to 2", env=env).returncode == 0
    writes(cluster, 10, prefix="/after-pre-change")
    live = revision_of(cluster, cluster.endpoints[0])
    expected = keyspace(cluster, cluster.endpoints[0])
    wait_for(stored_up_to(env, live), 30, "deltas stored")
    cluster.etcdctl("member", "add", "m2", f"--peer-urls=http://127.0.0.1:{free_port()}")
    quick = {**env, "ETCD_BACKUP_ETCD__DIAL_TIMEOUT": "1s"}
    doc = json.loads(run_cli("doctor", "--output", "json", env=quick).stdout)
    assert doc["scenario"] == "unstarted-member" and doc["quorum"] is False, doc
    restore = next(s for s in doc["steps"] if " restore single " in f" {s} ")
    assert "--to-latest" in restore and str(tmp_path / "data" / "m1") in restore, doc["steps"]

    cluster.members[0].kill()  # the steps begin after stopping the members doctor names
    argv = shlex.split(restore)
    r = run_cli(*argv[1:], "--output", "json", env=quick)
    assert r.returncode == 0, r.stderr
    back = start_etcd(cluster.tools.etcd, json.loads(r.stdout)["etcd_flags"])
    wait_healthy(back.client_url, 60, back)
    assert keyspace(cluster, back.client_url) == expected


def test_encrypted_deltas_open_with_age_and_restore_only_with_the_identity(
    etcd_single: Cluster, start_daemon: DaemonFactory, start_etcd: StartEtcd, tmp_path: Path, age_tool: AgeTool
) -> None:
    """With [encryption] on, a delta object is an age file (`age -d | zstd -d` gives the JSON lines
    delta.py documents, with the key in base64); a restore needs the identity: without it exit 2
    naming the recipients, nothing written; with it every change comes back."""
    cluster = etcd_single
    recipient = age_tool.new_identity(tmp_path / "age.key")
    store = tmp_path / "store"
    _, env = start_with_deltas(
        start_daemon, cluster, f"file://{store}", encryption__recipients=recipient, storage__compression="zstd"
    )
    cluster.put("/registry/secrets/prod/db", SECRET)
    cluster.put("/registry/namespaces/prod", "ns")
    writes(cluster, 10)
    cluster.etcdctl("del", "/registry/namespaces/prod")
    deleted_at = revision_of(cluster, cluster.endpoints[0])
    writes(cluster, 10)
    live = revision_of(cluster, cluster.endpoints[0])
    expected = keyspace(cluster, cluster.endpoints[0])
    wait_for(stored_up_to(env, live), 30, f"deltas up to revision {live}")

    objects = sorted(p for p in store.rglob("deltas/*/*.delta*"))
    assert objects and all(p.name.endswith(".delta.zst.age") for p in objects), objects
    secret_key = base64.b64encode(b"/registry/secrets/prod/db").decode()
    seen: set[int] = set()
    for p in objects:
        raw = p.read_bytes()
        assert raw.startswith(b"age-encryption.org/v1\n") and SECRET.encode() not in raw
        manifest = json.loads(p.with_name(p.name.split(".delta")[0] + ".json").read_text())
        assert manifest["encryption"] == {"format": "age", "recipients": [recipient]}
        r = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", f"age -d -i {tmp_path / 'age.key'} {p} | zstd -d"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        header, *lines = [json.loads(line) for line in r.stdout.splitlines()]
        assert header["format"] == "etcd-backup-delta" and header["last_revision"] >= header["first_revision"]
        revisions = [line["revision"] for line in lines]
        assert revisions == list(range(header["first_revision"], header["last_revision"] + 1))
        seen.update(revisions)
        if any(e["key"] == secret_key for line in lines for e in line["events"]):
            event = next(e for line in lines for e in line["events"] if e["key"] == secret_key)
            assert base64.b64decode(event["value"]).decode() == SECRET
    assert live in seen

    # The README's "Reading deltas without etcd-backup", as an operator without the tool runs it.
    work = tmp_path / "by-hand"
    (work / "deltas").mkdir(parents=True)
    for p in objects:
        (work / "deltas" / p.name).write_bytes(p.read_bytes())
    (work / "age.key").write_bytes((tmp_path / "age.key").read_bytes())
    script = delta_runbook()
    assert any(line.startswith("for f in deltas/") for line in script), script
    r = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", "\n".join(script)],
        cwd=work, capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "HOME": str(work)}, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, f"{script}\n{r.stdout}\n{r.stderr}"
    found = [json.loads(line) for line in r.stdout.splitlines()]
    assert {"revision": deleted_at, "time": found[0]["time"]} == found[0]  # the delete, found by jq
    assert [f["type"] for f in found[1:]] == ["put", "delete"] and found[1]["value"] == "ns"

    target = tmp_path / "restored"
    args = ["--to-latest", "--name", "m1", "--peer-url", f"http://127.0.0.1:{free_port()}", "--data-dir", str(target)]
    r = run_cli("restore", "single", *args, "--output", "json", env=env)
    assert r.returncode == 2, r.stderr
    print("error line:", r.stderr.strip().splitlines()[-1])
    assert "Traceback" not in r.stderr and recipient in r.stderr.strip().splitlines()[-1], r.stderr
    assert not target.exists()
    # The write-only host still proves its chain: every delta as stored, and the revisions' continuity.
    r = run_cli("verify", "--chain", "latest", "--output", "json", env=env)
    assert r.returncode == 0, r.stderr
    proof = json.loads(r.stdout)
    assert proof["ok"] is True and proof["events"] is None and proof["to_revision"] == live
    assert "identity_file" in proof["note"] and proof["revisions"] == live - proof["from_revision"]
    damaged = objects[-1].read_bytes()
    objects[-1].write_bytes(damaged[:-1] + bytes([damaged[-1] ^ 1]))
    r = run_cli("verify", "--chain", "latest", env=env)
    assert r.returncode == 3 and "SHA-256" in r.stderr, r.stderr
    objects[-1].write_bytes(damaged)

    with_key = {**env, "ETCD_BACKUP_ENCRYPTION__IDENTITY_FILE": str(tmp_path / "age.key")}
    r = run_cli("restore", "single", *args, "--output", "json", env=with_key)
    out, restored = start_restored(r, cluster, start_etcd)
    assert out["revision"] == live
    assert keyspace(cluster, restored.client_url) == expected


LEASE_TTL = 4


def test_a_lease_shorter_than_the_replay_neither_breaks_it_nor_loses_its_keys(
    etcd_single: Cluster, start_daemon: DaemonFactory, tmp_path: Path
) -> None:
    """gardener #1045/#1046: the scratch etcd of a replay starts from a snapshot holding a lease;
    if the replay outlasts the lease's TTL, etcd revokes it there, which writes a revision of its
    own (the replay breaks by one) and deletes keys that were live at the target."""
    import etcd3  # a client of its own, not ours: the writes must be fast to outlast the lease

    cluster = etcd_single
    # TTL 4: the keeper renews every 4/3 s, so a loaded machine does not expire it in the source;
    # the replay of 20,000 revisions (about 9 s at 2,100 a second; 14,000 came within 0.3 s of the
    # lease on a quiet machine) outlasts it.
    lease = cluster.etcdctl("lease", "grant", str(LEASE_TTL)).split()[1]
    keeper = subprocess.Popen(  # the source keeps its lease alive, as a kubelet or controller does
        [cluster.tools.etcdctl, f"--endpoints={cluster.endpoints[0]}", "lease", "keep-alive", lease],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "ETCDCTL_API": "3"},
    )  # fmt: skip
    try:
        cluster.etcdctl("put", "/leased/k", "v", f"--lease={lease}")
        _, env = start_with_deltas(start_daemon, cluster, f"file://{tmp_path}/store")
        base = timeline(env)["chains"][0]["from_revision"]
        assert base >= 2  # the full snapshot holds the lease and its key
        host, port = cluster.endpoints[0].removeprefix("http://").rsplit(":", 1)
        client = etcd3.client(host=host, port=int(port))
        for i in range(20000):
            client.put(f"/bulk/{i % 50}", "x" * 100)
        client.close()
        target = revision_of(cluster, cluster.endpoints[0])
        expected = keyspace(cluster, cluster.endpoints[0])
        assert "/leased/k" in expected
        wait_for(stored_up_to(env, target), 60, f"deltas up to revision {target}")
    finally:
        keeper.kill()
        keeper.wait(10)

    started = time.monotonic()
    r = restore_single(env, tmp_path / "l", "--to-revision", str(target), name="l")
    took = time.monotonic() - started
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["revision"] == target and out["point"]["revisions_replayed"] == target - base
    assert out["keys"] == len(expected)  # the leased key too
    # Up to 3 s of it go to the download and the scratch member's start, before its lease clock runs.
    assert took > LEASE_TTL + 3, f"the restore took {took:.1f} s: the replay was shorter than the lease"


def test_the_replaying_scratch_member_runs_without_fsync_where_etcd_has_the_flag(
    etcd35: EtcdTools, etcd34: EtcdTools
) -> None:
    """etcd 3.5 prints its --help on stdout: the flag must be found there (3.4 has none)."""
    from etcd_backup.service.scratchetcd import unsafe_fast

    assert unsafe_fast(etcd35.etcd) == ["--unsafe-no-fsync"]
    assert unsafe_fast(etcd34.etcd) == []


def test_with_etcd_auth_on_drills_and_points_use_the_configured_user(
    etcd_cluster: ClusterFactory, start_daemon: DaemonFactory, tmp_path: Path
) -> None:
    """A snapshot carries etcd's auth state, so the scratch member of a drill or a replay has auth
    on too: it is asked as the configured user (who took the snapshot: an admin), not anonymously."""
    cluster = etcd_cluster(1)
    password = "pw-for-the-scratch-member"
    cluster.etcdctl("user", "add", f"root:{password}")
    cluster.etcdctl("user", "grant-role", "root", "root", check=False)  # 3.5 grants it already
    cluster.etcdctl("auth", "enable")
    user = f"--user=root:{password}"
    cluster.etcdctl(user, "put", "/before", "1")
    _, env = start_with_deltas(
        start_daemon, cluster, f"file://{tmp_path}/store", etcd__username="root", etcd__password=password
    )
    for i in range(5):
        cluster.etcdctl(user, "put", f"/after/{i}", str(i))
    status = json.loads(cluster.etcdctl(user, "endpoint", "status", "-w", "json"))
    target = int(status[0]["Status"]["header"]["revision"])
    wait_for(stored_up_to(env, target), 30, f"deltas up to revision {target}")

    r = run_cli("verify", "latest", "--drill", "--output", "json", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["ok"] is True
    point = tmp_path / "point.db"
    r = run_cli("fetch", "latest", "--to", str(point), "--to-revision", str(target), env=env)
    assert r.returncode == 0, r.stderr
    assert point.stat().st_size > 0
    assert password not in r.stdout + r.stderr


def test_a_snapshot_from_before_auth_was_enabled_still_drills(etcd_cluster: ClusterFactory, tmp_path: Path) -> None:
    """Its scratch member has auth off and refuses a login: it is asked anonymously then."""
    cluster = etcd_cluster(1)
    cluster.put("/k", "v")
    store = f"file://{tmp_path}/store"
    r = run_cli("snapshot", "--output", "json", env=config_env(cluster, store))
    assert r.returncode == 0, r.stderr
    before = json.loads(r.stdout)["id"]
    password = "pw-enabled-after-the-snapshot"
    cluster.etcdctl("user", "add", f"root:{password}")
    cluster.etcdctl("user", "grant-role", "root", "root", check=False)
    cluster.etcdctl("auth", "enable")
    env = config_env(cluster, store, etcd__username="root", etcd__password=password)
    r = run_cli("verify", before, "--drill", "--output", "json", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["drill"]["ok"] is True
