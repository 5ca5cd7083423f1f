"""The daemon's delta writer on real etcd: a compaction while it is stopped, two writers, etcd
going away, a restart, retention of deltas, writes during the full snapshot, the second copy, each
real S3 server, a store refusing deltas. Restoring the points is test_pitr.py."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest

from conftest import (
    Bucket,
    Cluster,
    DaemonFactory,
    StartEtcd,
    config_env,
    run_cli,
)
from etcd_backup.etcdproc import free_port, wait_healthy
from pitrkit import (
    DELTA,
    keyspace,
    restore_single,
    revision_of,
    start_restored,
    start_with_deltas,
    stored_up_to,
    timeline,
    wait_for,
    writes,
)

pytestmark = pytest.mark.timeout(240)


def test_compaction_while_the_daemon_is_stopped_is_a_gap_and_a_new_chain(
    etcd_single: Cluster, start_daemon: DaemonFactory, tmp_path: Path
) -> None:
    cluster = etcd_single
    d, env = start_with_deltas(start_daemon, cluster, f"file://{tmp_path}/store")
    writes(cluster, 10)
    stored = revision_of(cluster, cluster.endpoints[0])
    wait_for(stored_up_to(env, stored), 30, "deltas stored")
    d.terminate()
    writes(cluster, 10, "/while-stopped")
    compacted = revision_of(cluster, cluster.endpoints[0])
    cluster.etcdctl("compact", str(compacted))
    writes(cluster, 3, "/after")
    d2 = start_daemon(env)
    d2.wait_until(lambda: any(e.get("event", "").startswith("DELTA GAP") for e in d2.logs()), 30, "the gap noticed")
    d2.wait_until(lambda: d2.metrics().get("etcd_backup_delta_gaps_total", 0) >= 1, 10, "the gap counted")
    d2.wait_until(
        lambda: any(
            m["reason"] == "delta-gap" for m in json.loads(run_cli("list", "--output", "json", env=env).stdout)
        ),
        30,
        "a full snapshot taken at once",
    )
    d2.wait_until(
        lambda: d2.metrics()['etcd_backup_snapshots_total{reason="delta-gap"}'] == 1, 10, "counted under its reason"
    )
    live = revision_of(cluster, cluster.endpoints[0])
    wait_for(stored_up_to(env, live), 30, "the new chain reaching the live revision")
    # That snapshot holds every revision etcd has: ready at once on this idle cluster, not only
    # at the next health check (30 s here) or the next write.
    d2.wait_until(lambda: d2.request("GET", "/readyz")[0] == 200, 10, "ready after the gap's full snapshot")
    chains = timeline(env)["chains"]
    older = chains[-1]
    assert older["gaps"], chains  # the revisions etcd compacted before anyone stored them
    gap = older["gaps"][-1]
    assert gap["after_revision"] == stored and gap["before_revision"] > compacted - 1
    r = run_cli("restore", "single", "--to-revision", str(stored + 2), "--name", "x", "--peer-url",
                f"http://127.0.0.1:{free_port()}", "--data-dir", str(tmp_path / "x"), env=env)  # fmt: skip
    assert r.returncode == 2 and "in a gap" in r.stderr, r.stderr


def test_two_writers_overlapping_never_break_a_restore(
    etcd_single: Cluster, start_daemon: DaemonFactory, start_etcd: StartEtcd, tmp_path: Path
) -> None:
    """Two copies writing deltas for the same revisions (as sidecars do around a leader change)."""
    cluster = etcd_single
    store = f"file://{tmp_path}/store"
    d1, env = start_with_deltas(start_daemon, cluster, store)
    writes(cluster, 10)
    _, _ = start_with_deltas(start_daemon, cluster, store)
    writes(cluster, 20)
    live = revision_of(cluster, cluster.endpoints[0])
    expected = keyspace(cluster, cluster.endpoints[0])
    wait_for(stored_up_to(env, live), 30, "deltas stored")
    d1.wait_until(lambda: len(list((tmp_path / "store" / "deltas").rglob("*.json"))) >= 3, 10, "deltas of both")
    writers = {p.name.rsplit("-", 1)[1] for p in (tmp_path / "store" / "deltas").rglob("*.json")}
    assert len(writers) == 2, writers
    r = run_cli("verify", "--chain", "latest", "--output", "json", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["gaps"] == []
    r = restore_single(env, tmp_path / "x", "--to-latest", name="x")
    assert r.returncode == 0, r.stderr
    restored = start_etcd(cluster.tools.etcd, json.loads(r.stdout)["etcd_flags"])
    wait_healthy(restored.client_url, 60, restored)
    assert keyspace(cluster, restored.client_url) == expected


def test_what_is_buffered_is_stored_when_etcd_goes_away(
    etcd_single: Cluster, start_daemon: DaemonFactory, tmp_path: Path
) -> None:
    """A long interval: nothing would be stored for an hour, but the watch breaking stores it. The
    break is one warning, not one per reconnect try (they were every interval, all outage long)."""
    cluster = etcd_single
    env = config_env(
        cluster, f"file://{tmp_path}/store", delta__interval="1h", verify__restore_drill="off", log__level="debug"
    )
    d = start_daemon(env)
    d.wait_until(lambda: any(e.get("event") == "delta watch started" for e in d.logs()), 30, "the delta watch")
    writes(cluster, 15)
    live = revision_of(cluster, cluster.endpoints[0])
    d.wait_until(lambda: d.metrics()["etcd_backup_delta_lag_seconds"] > 0, 10, "changes buffered")
    assert timeline(env)["newest"]["revision"] < live
    cluster.members[0].kill()
    wait_for(stored_up_to(env, live), 30, "the buffer stored at once")
    assert d.metrics()["etcd_backup_delta_last_revision"] == live

    def tried() -> bool:
        logs = d.logs()
        polled = any(e.get("event") == "etcd endpoint skipped" and e.get("job") == "members" for e in logs)
        return polled and sum(e.get("event") == "delta watch still broken" for e in logs) >= 3

    d.wait_until(tried, 60, "reconnect tries and a member poll while etcd is gone")
    broken = [e for e in d.logs() if str(e.get("event", "")).startswith("delta watch broken")]
    assert [(e["event"], e["level"]) for e in broken] == [("delta watch broken; storing what it saw", "warning")]
    # Nor a warning per endpoint per try from the delta watch or the 5 s member poll: the health
    # check ("refresh") is what reports the outage, once.
    skipped = [e for e in d.logs() if e.get("event") == "etcd endpoint skipped" and e["level"] == "warning"]
    assert all(e.get("job") == "refresh" for e in skipped) and len(skipped) <= 1, skipped


def test_a_restarted_daemon_shows_the_deltas_storage_holds(
    etcd_single: Cluster, start_daemon: DaemonFactory, tmp_path: Path
) -> None:
    """The delta gauges are not NaN after a restart on a quiet cluster: they show the chain's end
    (an alert on its age would otherwise never fire, or fire at every restart)."""
    cluster = etcd_single
    d, env = start_with_deltas(start_daemon, cluster, f"file://{tmp_path}/store")
    before = time.time()
    writes(cluster, 5)
    live = revision_of(cluster, cluster.endpoints[0])
    d.wait_until(lambda: d.metrics()["etcd_backup_delta_last_revision"] == live, 30, "the writes stored")
    committed = d.metrics()["etcd_backup_delta_last_success_timestamp_seconds"]
    d.terminate()
    d2 = start_daemon(env)
    d2.wait_until(lambda: d2.metrics()["etcd_backup_delta_last_revision"] == live, 30, "the chain storage holds")
    # As storage holds it: when the newest stored change was seen (the key names it), not later.
    seen = d2.metrics()["etcd_backup_delta_last_success_timestamp_seconds"]
    assert before - 1 <= seen <= committed
    assert revision_of(cluster, cluster.endpoints[0]) == live  # nothing new: it was not stored again


def test_retention_deletes_deltas_with_their_chain_and_reports_per_chain(
    etcd_single: Cluster, start_daemon: DaemonFactory, tmp_path: Path
) -> None:
    cluster = etcd_single
    store = tmp_path / "store"
    d, env = start_with_deltas(start_daemon, cluster, f"file://{store}")
    writes(cluster, 10)
    mid = revision_of(cluster, cluster.endpoints[0])
    wait_for(stored_up_to(env, mid), 30, "deltas of the first chain")
    r = run_cli("snapshot", env=env)
    assert r.returncode == 0, r.stderr
    writes(cluster, 10, "/second")
    live = revision_of(cluster, cluster.endpoints[0])
    wait_for(stored_up_to(env, live), 30, "deltas of the second chain")
    d.terminate()
    keep_one = {"retention__keep_last": "1", "retention__hourly": "0", "retention__daily": "0",
                "retention__weekly": "0", "retention__monthly": "0"}  # fmt: skip
    penv = {**env, **{f"ETCD_BACKUP_{k.upper()}": v for k, v in keep_one.items()}}
    r = run_cli("prune", "--output", "json", env=penv)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    (deleted_snapshot,) = report["deleted"]
    (chain_deleted,) = report["deltas"]
    assert chain_deleted["snapshot"] == deleted_snapshot["id"] and chain_deleted["deltas"] >= 1
    chains = timeline(env)["chains"]
    assert len(chains) == 1 and chains[0]["to_revision"] == live
    assert run_cli("verify", "--chain", "latest", env=env).returncode == 0


def test_writes_during_the_full_snapshot_are_neither_replayed_twice_nor_lost(
    etcd_single: Cluster, start_daemon: DaemonFactory, start_etcd: StartEtcd, tmp_path: Path
) -> None:
    """gardener #1044: the chain starts at the revision the snapshot holds, read from the snapshot
    itself, not from a status read before the stream, while writes go on during the stream."""
    import threading

    import etcd3

    cluster = etcd_single
    host, port = cluster.endpoints[0].removeprefix("http://").rsplit(":", 1)
    client = etcd3.client(host=host, port=int(port))
    for i in range(400):
        client.put(f"/bulk/{i}", os.urandom(32 * 1024).hex())  # 25 MiB: the stream takes a while
    before = revision_of(cluster, cluster.endpoints[0])
    stop = threading.Event()

    def write() -> None:
        i = 0
        while not stop.is_set():
            client.put(f"/during/{i % 100}", str(i))
            i += 1

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        d, env = start_with_deltas(start_daemon, cluster, f"file://{tmp_path}/store")
        wait_for(lambda: revision_of(cluster, cluster.endpoints[0]) > before + 200, 30, "writes after the watch")
    finally:
        stop.set()
        writer.join(10)
        client.close()
    live = revision_of(cluster, cluster.endpoints[0])
    expected = keyspace(cluster, cluster.endpoints[0])
    wait_for(stored_up_to(env, live), 30, f"deltas up to revision {live}")
    chain = timeline(env)["chains"][0]
    assert before < chain["from_revision"] < live and chain["gaps"] == []  # the writes crossed the snapshot

    base = tmp_path / "base.db"
    assert run_cli("fetch", chain["snapshot"], "--to", str(base), env=env).returncode == 0
    status = subprocess.run(
        [cluster.tools.restore_tool, "snapshot", "status", str(base), "-w", "json"], capture_output=True, text=True
    )
    assert json.loads(status.stdout)["revision"] == chain["from_revision"]  # what the snapshot holds

    r = restore_single(env, tmp_path / "w", "--to-latest", name="w")
    _, restored = start_restored(r, cluster, start_etcd)
    assert revision_of(cluster, restored.client_url) == live
    assert keyspace(cluster, restored.client_url) == expected
    assert d.alive()


def test_the_second_copy_holds_the_deltas_and_restores_the_latest_point_alone(
    etcd_single: Cluster, start_daemon: DaemonFactory, start_etcd: StartEtcd, tmp_path: Path
) -> None:
    """storage.copy_to follows every delta: with the primary gone, `timeline --store copy` shows the
    newest point and `restore single --to-latest --store copy` brings back every revision."""
    cluster = etcd_single
    primary, copy = tmp_path / "primary", tmp_path / "copy"
    # A 40 s period: copy passes at most 10 s apart (min(30 s, period / 4)), and no scheduled
    # snapshot (which starts a pass too) before the waits below end.
    d, env = start_with_deltas(
        start_daemon, cluster, f"file://{primary}", storage__copy_to=f"file://{copy}", schedule__interval="40s"
    )

    def copied_up_to(revision: int) -> Callable[[], bool]:
        def check() -> bool:
            r = run_cli("timeline", "--store", "copy", "--output", "json", env=env)
            assert r.returncode == 0, r.stderr
            newest = json.loads(r.stdout)["newest"]
            return newest is not None and newest["revision"] >= revision

        return check

    # Twice: the second round has nothing but its deltas to start a copy pass.
    for n in (20, 20):
        writes(cluster, n)
        live = revision_of(cluster, cluster.endpoints[0])
        wait_for(stored_up_to(env, live), 30, "deltas stored in the primary")
        wait_for(copied_up_to(live), 20, "the deltas copied")
    expected = keyspace(cluster, cluster.endpoints[0])
    assert d.terminate()[0] == 0
    subprocess.run(["rm", "-rf", str(primary)], check=True)  # the primary region is gone

    target = tmp_path / "restored"
    r = restore_single(env, target, "--to-latest", "--store", "copy")
    out, back = start_restored(r, cluster, start_etcd)
    assert out["revision"] == live
    assert keyspace(cluster, back.client_url) == expected


def test_deltas_on_each_real_s3_server(
    etcd_single: Cluster, any_s3_bucket: Bucket, start_daemon: DaemonFactory, start_etcd: StartEtcd, tmp_path: Path
) -> None:
    """The delta path end to end over S3 (moto and SeaweedFS): stored, listed by `timeline`, proven
    by `verify --chain`, materialised by `fetch --to-revision` and `restore --to-latest`, pruned."""
    cluster = etcd_single
    env = {**config_env(cluster, **DELTA), **any_s3_bucket.env()}
    d = start_daemon(env)
    d.wait_until(lambda: any(e.get("event") == "delta watch started" for e in d.logs()), 30, "the delta watch")
    writes(cluster, 30)
    middle = revision_of(cluster, cluster.endpoints[0])
    lease = cluster.etcdctl("lease", "grant", "600").split()[1]
    cluster.etcdctl("put", "/leased", "x", f"--lease={lease}")
    cluster.etcdctl("del", "/app/2")
    writes(cluster, 30, "/later")
    live = revision_of(cluster, cluster.endpoints[0])
    expected = keyspace(cluster, cluster.endpoints[0])
    wait_for(stored_up_to(env, live), 30, "deltas stored in S3")
    assert d.terminate()[0] == 0
    stored = any_s3_bucket.keys()
    assert any(k.startswith(f"{any_s3_bucket.prefix}/deltas/") for k in stored), stored

    r = run_cli("verify", "--chain", "latest", "--output", "json", env=env)
    assert r.returncode == 0, r.stderr
    dest = tmp_path / "middle.db"
    r = run_cli("fetch", "--to-revision", str(middle), "--to", str(dest), "--output", "json", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["revision"] == middle
    r = restore_single(env, tmp_path / "restored", "--to-latest")
    out, back = start_restored(r, cluster, start_etcd)
    assert out["revision"] == live
    assert keyspace(cluster, back.client_url) == expected
    r = run_cli("prune", "--dry-run", "--output", "json", env=env)
    assert r.returncode == 0, r.stderr


def test_a_store_that_refuses_deltas_is_tried_again_with_backoff_and_loses_nothing(
    etcd_single: Cluster, start_daemon: DaemonFactory, tmp_path: Path
) -> None:
    """Storing a delta fails (the deltas folder is a file): each try is an error line and a
    failure counted, so the tries must back off, not spin (they ran thousands a second, each
    logged); once storage takes them again every revision seen is stored, no gap."""
    cluster = etcd_single
    d, env = start_with_deltas(start_daemon, cluster, f"file://{tmp_path}/store")
    writes(cluster, 5)
    wait_for(stored_up_to(env, revision_of(cluster, cluster.endpoints[0])), 30, "deltas stored")
    deltas = tmp_path / "store" / "deltas"
    deltas.rename(tmp_path / "deltas-aside")
    deltas.write_text("in the way")
    writes(cluster, 5, "/while-broken")
    live = revision_of(cluster, cluster.endpoints[0])

    def failed_tries() -> list[datetime]:
        return [
            datetime.fromisoformat(e["timestamp"])
            for e in d.logs()
            if e.get("event") == "storing a delta failed; kept for the next try"
        ]

    d.wait_until(lambda: len(failed_tries()) >= 3, 60, "three failed tries")
    tries = failed_tries()
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(tries)]
    assert all(g >= 0.9 for g in gaps), gaps  # 1 s, 2 s, 4 s ... apart
    assert d.metrics()['etcd_backup_failures_total{stage="delta"}'] <= len(failed_tries()) + 1

    deltas.unlink()
    (tmp_path / "deltas-aside").rename(deltas)
    wait_for(stored_up_to(env, live), 60, "the kept revisions stored once storage takes them")
    r = run_cli("verify", "--chain", "latest", "--output", "json", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["gaps"] == []
