"""`doctor`: survey the cluster and storage at once, then assemble the diagnosis: members, quorum,
the scenario, the newest backup of this cluster, the problems and the runbook to follow.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog

from .. import chain, delta
from .. import manifest as manifests
from ..advice import membership_before, recommend
from ..assessment import (
    DEFAULT_QUOTA_BYTES,
    MemberHealth,
    Scenario,
    alarm_rows,
    classify,
    cluster_problems,
    member_health,
    quorum,
)
from ..config import Config
from ..errors import EtcdBackupError, EtcdErrorKind, OperationalError
from ..etcdclient import hexid
from ..manifest import Listing
from ..members import norm_url
from ..model import Manifest, rfc3339, utcnow
from ..runbook import Context, Step
from ..storage import SnapshotStore
from ..survey import Survey, survey

log = structlog.get_logger(__name__)

# How long doctor waits for storage after the cluster survey is done.
STORAGE_WAIT_SECONDS = 20.0


@dataclass(frozen=True, slots=True)
class BackupInfo:
    id: str
    created_at: str
    age_seconds: float
    revision: int
    revision_gap: int | None
    reason: str
    pinned: bool
    cluster_id: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "created_at": self.created_at,
            "age_seconds": round(self.age_seconds, 1),
            "revision": self.revision,
            "revision_gap": self.revision_gap,
            "reason": self.reason,
            "pinned": self.pinned,
            "cluster_id": self.cluster_id,
        }


@dataclass(frozen=True, slots=True)
class PointInfo:
    """The newest point storage can restore for this cluster: a full snapshot plus its deltas."""

    revision: int
    time: str
    age_seconds: float
    snapshot: str
    deltas: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "time": self.time,
            "age_seconds": round(self.age_seconds, 1),
            "snapshot": self.snapshot,
            "deltas": self.deltas,
        }


@dataclass(frozen=True, slots=True)
class Diagnosis:
    scenario: Scenario
    quorum: bool
    members: tuple[MemberHealth, ...]
    leader: MemberHealth | None
    alarms: tuple[dict[str, str], ...] | None
    newest_backup: BackupInfo | None
    newest_point: PointInfo | None
    storage_error: str | None
    recommendation: str
    explanation: str
    steps: tuple[Step, ...]
    stop_first: tuple[str, ...]
    problems: tuple[str, ...]
    blocking: tuple[str, ...]  # the problems that make a membership change unsafe
    cluster_id: str | None
    endpoints: tuple[dict[str, Any], ...]
    voting: int
    reachable_voting: int
    quota_bytes: int
    seconds: float

    @property
    def healthy(self) -> bool:
        return self.scenario is Scenario.HEALTHY

    def quota_percent(self, m: MemberHealth) -> float | None:
        return round(100 * m.db_size / self.quota_bytes, 1) if m.db_size is not None else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario.value,
            "quorum": self.quorum,
            "voting_members": self.voting,
            "reachable_voting_members": self.reachable_voting,
            "cluster_id": self.cluster_id,
            "leader": self.leader.name or self.leader.id if self.leader else None,
            "leader_id": self.leader.id if self.leader else None,
            "members": [{**m.to_dict(), "db_quota_percent": self.quota_percent(m)} for m in self.members],
            "alarms": list(self.alarms) if self.alarms is not None else None,
            "newest_backup": self.newest_backup.to_dict() if self.newest_backup else None,
            "newest_point": self.newest_point.to_dict() if self.newest_point else None,
            "storage_error": self.storage_error,
            "recommendation": self.recommendation,
            "explanation": self.explanation,
            "stop_first": list(self.stop_first),
            "steps": [s.command for s in self.steps],
            "plan": [s.to_dict() for s in self.steps],
            "problems": list(self.problems),
            "endpoints": list(self.endpoints),
            "quota_bytes": self.quota_bytes,
            "seconds": round(self.seconds, 3),
        }


def diagnose(
    cfg: Config,
    open_store: Callable[[], SnapshotStore] | None = None,
    *,
    quota_bytes: int = DEFAULT_QUOTA_BYTES,
    config_path: str | None = None,
    now: Callable[[], datetime] = utcnow,
) -> Diagnosis:
    """Survey the cluster (and storage, in parallel) and name the scenario and the runbook."""
    started_at = time.monotonic()
    lookup = _StorageLookup(open_store) if open_store is not None else None
    s = survey(cfg.etcd)
    _refuse_blind(s)
    listing, storage_error = lookup.result(STORAGE_WAIT_SECONDS) if lookup is not None else (None, None)
    recorded = this_clusters_backup(listing, None, cfg.etcd.endpoints) if listing and s.members is None else None
    if recorded is not None:
        s = widened(cfg, s, recorded)
    members = member_health(s)
    q = quorum(members)
    voters = sum(1 for m in recorded.members if not m.learner) if recorded else 0
    scenario = classify(members, q.held, max(len(s.configured), voters))
    alarms = alarm_rows(s, members)
    cluster_id = s.cluster_id()
    backup = this_clusters_backup(listing, cluster_id, cfg.etcd.endpoints) if listing else None
    other_clusters = listing is not None and any(c != cluster_id for c in listing.clusters())
    ctx = Context(cfg.etcd, cfg.restore.data_dir, config_path)
    point_info = _newest_point(open_store, backup, now()) if open_store is not None and backup is not None else None
    advice = recommend(
        ctx,
        scenario,
        members,
        q,
        backup=backup,
        other_clusters=other_clusters,
        alarms=alarms,
        newest_point=point_info.revision if point_info else None,
        storage_error=storage_error,
        before_added=_before_added(listing, cluster_id, members) if scenario is Scenario.UNSTARTED_MEMBER else None,
    )
    info = _backup_info(backup, members, now()) if backup else None
    found = cluster_problems(s, members, q, alarms, quota_bytes)
    problems = [p.text for p in found] + _storage_problems(cfg, storage_error, info, other_clusters)
    return Diagnosis(
        scenario=scenario,
        quorum=q.held,
        members=tuple(members),
        leader=q.leader,
        alarms=tuple(alarms) if alarms is not None else None,
        newest_backup=info,
        newest_point=point_info,
        storage_error=storage_error,
        recommendation=advice.command,
        explanation=advice.explanation,
        steps=advice.steps,
        stop_first=advice.stop_first,
        problems=tuple(problems),
        blocking=tuple(p.text for p in found if p.blocks_change),
        cluster_id=cluster_id,
        endpoints=tuple(_endpoint_rows(s)),
        voting=q.voting,
        reachable_voting=q.reachable_voting,
        quota_bytes=quota_bytes,
        seconds=time.monotonic() - started_at,
    )


def widened(cfg: Config, s: Survey, recorded: Manifest) -> Survey:
    """No configured endpoint gave a member list (a sidecar's own member is down): survey again
    with the client URLs the newest snapshot recorded for its members, so that the rest of the
    cluster, if it runs, is found and a lost member is not taken for a lost one-member cluster."""
    hints = {norm_url(u) for m in recorded.members for u in m.client_urls} - set(s.probes)
    if not hints:
        return s
    wider = survey(cfg.etcd, hints=sorted(hints), cluster_id=recorded.cluster_id)
    return wider if wider.members is not None else s


def _refuse_blind(s: Survey) -> None:
    """Members that answer but refuse our credentials are not down: a diagnosis from here would
    call a running cluster lost and recommend rebuilding it."""
    if s.answered() or not s.probes:
        return
    kinds = {p.error_kind for p in s.probes.values()}
    if kinds <= {EtcdErrorKind.TLS, EtcdErrorKind.AUTH}:
        first = next(iter(s.probes.values()))
        raise OperationalError(
            f"no member accepted our credentials, so doctor cannot tell the cluster's state: {first.error}"
        )


def _before_added(listing: Listing | None, cluster_id: str | None, members: list[MemberHealth]) -> Manifest | None:
    if listing is None or cluster_id is None:
        return None
    # Any manifest records the member list, a snapshot that failed verification too.
    return membership_before([m for m in listing.manifests if m.cluster_id == cluster_id], members)


def this_clusters_backup(listing: Listing, cluster_id: str | None, endpoints: list[str]) -> Manifest | None:
    """The newest verified snapshot of the cluster the endpoints belong to. When none answers,
    the cluster whose snapshots were taken from (or list) the configured endpoints; with only
    one cluster in storage, that one. Several such clusters are one cluster and the ones a
    `restore cluster` replaced on the same URLs: the newest snapshot is of the latest of them."""
    if cluster_id is not None:
        return listing.newest_verified(cluster_id)
    clusters = listing.clusters()
    if len(clusters) <= 1:
        return listing.newest_verified()
    configured = {norm_url(e) for e in endpoints}
    matching = [
        ms[0]
        for ms in clusters.values()
        if configured & ({norm_url(ms[0].endpoint)} | {norm_url(u) for m in ms[0].members for u in m.client_urls})
    ]
    return max(matching, key=lambda m: m.created, default=None)


def _newest_point(open_store: Callable[[], SnapshotStore], backup: Manifest, now: datetime) -> PointInfo | None:
    """How far the deltas after the newest backup reach (one bounded listing). Never raises."""
    try:
        refs = delta.list_deltas(open_store(), backup.cluster_id, after=backup.revision).refs
    except EtcdBackupError:
        return None
    reach, _ = chain.cover(backup.revision, refs)
    when = reach.tip_time or backup.created
    return PointInfo(reach.tip, rfc3339(when), (now - when).total_seconds(), backup.id, len(reach.used))


def _backup_info(m: Manifest, members: list[MemberHealth], now: datetime) -> BackupInfo:
    revisions = [x.revision for x in members if x.revision is not None]
    gap = max(revisions) - m.revision if revisions else None
    return BackupInfo(
        m.id, m.created_at, (now - m.created).total_seconds(), m.revision, gap, m.reason, m.pinned, m.cluster_id
    )


def _storage_problems(cfg: Config, error: str | None, info: BackupInfo | None, other_clusters: bool) -> list[str]:
    if error:
        return [f"storage: {error}"]
    if info is None:
        if other_clusters:
            return ["storage holds no verified snapshot of this cluster (only of other clusters)"]
        return ["storage holds no verified snapshot"]
    if info.age_seconds > 2 * cfg.schedule.period():
        return [f"newest verified snapshot {info.id} is {info.age_seconds / 3600:.1f}h old"]
    return []


class _StorageLookup:
    """The snapshot listing, read on a daemon thread while the cluster is surveyed.

    A storage call that hangs (an S3 endpoint black-holing packets) must not hold doctor, nor keep
    the process from exiting, so this is not an executor (its workers are joined at exit).
    """

    def __init__(self, open_store: Callable[[], SnapshotStore]) -> None:
        self._result: tuple[Listing | None, str | None] | None = None
        self._done = threading.Event()
        self._open_store = open_store
        threading.Thread(target=self._run, name="doctor-storage", daemon=True).start()

    def _run(self) -> None:
        try:
            self._result = (manifests.list_snapshots(self._open_store()), None)
        except EtcdBackupError as exc:
            self._result = (None, str(exc))
        except Exception as exc:  # noqa: BLE001 - a broken store must not stop the diagnosis
            self._result = (None, f"{type(exc).__name__}: {exc}")
        finally:
            self._done.set()

    def result(self, timeout: float) -> tuple[Listing | None, str | None]:
        if not self._done.wait(timeout) or self._result is None:
            return None, f"storage did not answer within {timeout:.0f}s"
        return self._result


def _endpoint_rows(s: Survey) -> list[dict[str, Any]]:
    return [
        {
            "endpoint": url,
            "ok": p.status is not None,
            "member_id": hexid(p.status.member_id) if p.status else None,
            "error": p.error,
        }
        for url, p in s.probes.items()
    ]
