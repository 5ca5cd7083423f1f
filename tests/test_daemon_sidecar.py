"""Three sidecars beside a real three-member cluster: only the leader's copy snapshots; when the
leader's etcd dies another copy takes over within about one period. Nothing is written to etcd."""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from conftest import Cluster, ClusterFactory, DaemonFactory, DaemonProcess, config_env

pytestmark = pytest.mark.timeout(180)

PERIOD = 2.0


def manifests_in(store: Path) -> list[dict[str, Any]]:
    out = []
    for p in (store / "snapshots").glob("*.json"):
        try:
            out.append(json.loads(p.read_text()))
        except (ValueError, FileNotFoundError):
            continue  # pruned while we looked
    return out


def leader_of(cluster: Cluster, endpoints: list[str]) -> str:
    """The leader's member id (hex), as the members still answering report it."""
    statuses = json.loads(cluster.etcdctl("endpoint", "status", "-w", "json", endpoints=endpoints))
    leaders = {format(s["Status"]["leader"], "x") for s in statuses}
    assert len(leaders) == 1, statuses
    return leaders.pop()


def member_ids(cluster: Cluster) -> dict[str, str]:
    """client URL -> member id (hex)."""
    statuses = json.loads(cluster.etcdctl("endpoint", "status", "-w", "json"))
    return {s["Endpoint"]: format(s["Status"]["header"]["member_id"], "x") for s in statuses}


def start_sidecars(
    cluster: Cluster, store: Path, start_daemon: DaemonFactory, **settings: str
) -> dict[str, DaemonProcess]:
    """One sidecar copy per member (client URL -> its daemon), each pointed at its member only."""
    daemons: dict[str, DaemonProcess] = {}
    for member in cluster.members:
        env = config_env(
            cluster,
            f"file://{store}",
            schedule__mode="sidecar",
            schedule__interval=f"{PERIOD:.0f}s",
            verify__restore_drill="off",
            etcd__endpoints=member.client_url,
            etcd__dial_timeout="1s",
            **settings,
        )
        daemons[member.client_url] = start_daemon(env, wait=False)
    for d in daemons.values():
        d.wait_serving()
    return daemons


def test_only_the_leaders_sidecar_snapshots_and_another_takes_over(
    etcd_cluster: ClusterFactory, tmp_path: Path, start_daemon: DaemonFactory
) -> None:
    cluster = etcd_cluster(3)
    cluster.put("/registry/x", "y")
    store = tmp_path / "store"
    keys_before = cluster.get_all()
    daemons = start_sidecars(cluster, store, start_daemon)
    ids = member_ids(cluster)
    leader = leader_of(cluster, cluster.endpoints)

    first = next(iter(daemons.values()))
    first.wait_until(lambda: len(manifests_in(store)) >= 3, 30, "three snapshots")
    assert {m["member_id"] for m in manifests_in(store)} == {leader}
    for url, d in daemons.items():
        expected = 1.0 if ids[url] == leader else 0.0
        d.wait_until(lambda d=d, e=expected: d.metrics()["etcd_backup_is_leader"] == e, 10, "is_leader gauge")
        # Copies that are not leader stay ready: their etcd and the storage answer, backups are fresh.
        d.wait_until(lambda d=d: d.request("GET", "/readyz")[0] == 200, 15, f"{url} ready")

    # Stop the leader's etcd: a new leader is elected and the copy beside it takes over.
    old = next(m for m in cluster.members if ids[m.client_url] == leader)
    old.kill()
    killed_at = time.monotonic()
    survivors = [m.client_url for m in cluster.members if m is not old]
    survivor = daemons[survivors[0]]
    survivor.wait_until(lambda: any(m["member_id"] != leader for m in manifests_in(store)), 30, "takeover")
    took = time.monotonic() - killed_at
    new_leader = leader_of(cluster, survivors)
    assert new_leader != leader
    newer = {m["member_id"] for m in manifests_in(store) if m["member_id"] != leader}
    assert newer == {new_leader}
    # Election (about a second here) plus at most one period, with room for a loaded machine.
    assert took < 3 * PERIOD + 6, took
    stale = daemons[old.client_url]
    stale.wait_until(lambda: stale.request("GET", "/readyz")[0] == 503, 15, "old leader's copy not ready")
    assert stale.metrics()["etcd_backup_is_leader"] == 0

    for d in daemons.values():
        rc, seconds = d.terminate()
        assert rc == 0 and seconds < 15
    # Taking over needed nothing in the keyspace.
    assert cluster.get_all(endpoints=survivors) == keys_before


def test_when_the_leaders_copy_stops_and_its_member_leads_on_a_follower_stands_in(
    etcd_cluster: ClusterFactory, tmp_path: Path, start_daemon: DaemonFactory
) -> None:
    """The copy beside the leader stops (a crash loop, a bad upgrade) while its etcd member goes on
    leading: nothing else would ever take a snapshot. The copy beside the follower with the lowest
    member id stands in, alone, and goes on taking them every period."""
    cluster = etcd_cluster(3)
    cluster.put("/registry/x", "y")
    store = tmp_path / "store"
    daemons = start_sidecars(cluster, store, start_daemon, delta__interval="off")
    ids = member_ids(cluster)
    leader = leader_of(cluster, cluster.endpoints)
    first = next(iter(daemons.values()))
    first.wait_until(lambda: len(manifests_in(store)) >= 2, 30, "snapshots by the leader's copy")

    acting = next(url for url in daemons if ids[url] == leader)
    rc, _ = daemons[acting].terminate()
    assert rc == 0
    stopped_at = time.time()
    followers = sorted((int(ids[url], 16), url) for url in daemons if url != acting)
    lowest = followers[0][1]

    def by_followers() -> list[dict[str, Any]]:
        return [m for m in manifests_in(store) if m["member_id"] != leader]

    daemons[lowest].wait_until(
        lambda: len(by_followers()) >= 3, 60, "a follower's copy standing in, period after period"
    )
    assert leader_of(cluster, cluster.endpoints) == leader  # the member leads on all the while
    assert {m["member_id"] for m in by_followers()} == {ids[lowest]}
    assert daemons[lowest].metrics()["etcd_backup_is_leader"] == 1
    assert any(e.get("event", "").endswith("this copy stands in") for e in daemons[lowest].logs())
    assert daemons[followers[1][1]].metrics()["etcd_backup_is_leader"] == 0
    # Not at once: the leader's copy had its 1.5 periods (and the slack) first.
    earliest = min(datetime.fromisoformat(m["created_at"]).timestamp() for m in by_followers())
    assert earliest - stopped_at >= PERIOD, (earliest, stopped_at)
