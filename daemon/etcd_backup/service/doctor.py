"""`doctor`: what state is the cluster in, which failure scenario applies, and what to run next.

One survey probes every configured endpoint and every client URL the member list advertises,
all in parallel: a dead or frozen host costs one dial timeout, however many members there are.
The rest is pure: quorum arithmetic over the member list, the scenario, and the recommendation
with real names, URLs and the newest verified snapshot id filled in.
"""

from __future__ import annotations

import shlex
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog

from .. import manifest as manifests
from ..config import Config, EtcdConfig
from ..errors import EtcdBackupError, EtcdUnavailable
from ..etcdclient import Alarm, Member, MemberInfo, Probe, hexid, probe
from ..model import Manifest, utcnow
from ..storage import SnapshotStore

log = structlog.get_logger(__name__)

HEALTHY = "healthy"
MEMBER_DOWN = "member-down"
UNSTARTED_MEMBER = "unstarted-member"
QUORUM_LOST = "quorum-lost"
SINGLE_MEMBER_DOWN = "single-member-down"

DEFAULT_QUOTA_BYTES = 2 * 1024**3  # etcd's default --quota-backend-bytes
QUOTA_LIMIT_RATIO = 0.9
CLUSTER_DATA_DIR = "/var/lib/etcd-{name}"
SNAPSHOT_PLACEHOLDER = "<SNAPSHOT_ID>"
# How long to wait for an election when a majority answers but none of them knows a leader.
LEADER_WAIT_SECONDS = 5.0
# How long doctor waits for storage after the cluster survey is done.
STORAGE_WAIT_SECONDS = 20.0


def norm_url(url: str) -> str:
    return url.strip().rstrip("/")


# --- the survey: talk to everything at once ----------------------------------------------------


@dataclass
class Survey:
    """Raw answers: every endpoint probed, the best member list, and the alarm list."""

    configured: list[str]
    probes: dict[str, Probe] = field(default_factory=dict)
    members: list[MemberInfo] | None = None
    alarms: list[Alarm] | None = None
    alarm_error: str | None = None

    def answered(self) -> list[Probe]:
        return [p for p in self.probes.values() if p.status is not None]


def _best_view(probes: list[Probe]) -> Probe | None:
    """The probe whose member list to trust: one that knows a leader, then the newest raft state."""
    with_list = [p for p in probes if p.status is not None and p.members]
    if not with_list:
        return None
    return max(
        with_list,
        key=lambda p: (p.status.leader != 0, p.status.raft_term, p.status.raft_index),  # type: ignore[union-attr]
    )


def _fetch_alarms(cfg: EtcdConfig, endpoint: str) -> list[Alarm]:
    with Member(cfg, endpoint) as m:
        return m.alarms()


def survey(cfg: EtcdConfig, endpoints: list[str] | None = None) -> Survey:
    """Probe the configured endpoints and, as soon as a member list arrives, every client URL in it.

    The alarm list is read (it goes through raft) from the first member that knows a leader, in
    the same pool, so it does not wait behind dead hosts either.
    """
    configured = [norm_url(e) for e in (endpoints or cfg.endpoints)]
    result = Survey(configured)
    seen: set[str] = set()
    with ThreadPoolExecutor(max_workers=16, thread_name_prefix="doctor") as pool:
        pending: dict[Future[Any], tuple[str, str]] = {}

        def submit_probe(url: str) -> None:
            if url and url not in seen:
                seen.add(url)
                pending[pool.submit(probe, cfg, url, members=True)] = ("probe", url)

        for ep in configured:
            submit_probe(ep)
        alarms_asked = False
        while pending:
            done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for fut in done:
                kind, url = pending.pop(fut)
                if kind == "alarms":
                    try:
                        result.alarms = fut.result()
                    except EtcdUnavailable as exc:
                        result.alarm_error = str(exc)
                    continue
                p: Probe = fut.result()
                result.probes[url] = p
                for m in p.members:
                    for client_url in m.client_urls:
                        submit_probe(norm_url(client_url))
                if not alarms_asked and p.status is not None and p.status.leader != 0:
                    alarms_asked = True
                    pending[pool.submit(_fetch_alarms, cfg, url)] = ("alarms", url)
    view = _best_view(result.answered())
    result.members = list(view.members) if view else None
    _await_leader(cfg, result)
    return result


def _await_leader(cfg: EtcdConfig, s: Survey) -> None:
    """A majority answers but no reachable member leads: an election is running; re-ask briefly."""
    if not s.members:
        return
    deadline = time.monotonic() + LEADER_WAIT_SECONDS
    while _majority_reachable(s) and _reachable_leader(s) is None and time.monotonic() < deadline:
        time.sleep(0.2)
        urls = [url for url, p in s.probes.items() if p.status is not None]
        with ThreadPoolExecutor(max_workers=min(16, len(urls))) as pool:
            for url, p in zip(urls, pool.map(lambda u: probe(cfg, u), urls), strict=True):
                if p.status is not None:
                    s.probes[url].status = p.status


def _status_by_member(s: Survey) -> dict[int, Probe]:
    out: dict[int, Probe] = {}
    for p in s.answered():
        out.setdefault(p.status.member_id, p)  # type: ignore[union-attr]
    return out


def _majority_reachable(s: Survey) -> bool:
    by_id = _status_by_member(s)
    voting = [m for m in s.members or [] if not m.is_learner]
    return sum(1 for m in voting if m.id in by_id) * 2 > len(voting)


def _reachable_leader(s: Survey) -> int | None:
    """The leader id the freshest reachable member reports, if that leader itself answers."""
    by_id = _status_by_member(s)
    statuses = [p.status for p in by_id.values() if p.status is not None and p.status.leader]
    if not statuses:
        return None
    freshest = max(statuses, key=lambda st: (st.raft_term, st.raft_index))
    return freshest.leader if freshest.leader in by_id else None


# --- the assessment: pure ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MemberHealth:
    id: str
    name: str
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...]
    started: bool
    learner: bool
    reachable: bool
    is_leader: bool = False
    endpoint: str | None = None
    version: str | None = None
    db_size: int | None = None
    db_size_in_use: int | None = None
    raft_term: int | None = None
    raft_index: int | None = None
    revision: int | None = None
    errors: tuple[str, ...] = ()
    error: str | None = None

    @property
    def label(self) -> str:
        """The name, or for a member that never started (it has none) its id."""
        return self.name or f"(unstarted {self.id})"

    @property
    def peer_url(self) -> str:
        return self.peer_urls[0] if self.peer_urls else "<PEER_URL>"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "id": self.id,
            "peer_urls": list(self.peer_urls),
            "client_urls": list(self.client_urls),
            "reachable": self.reachable,
            "started": self.started,
            "learner": self.learner,
            "leader": self.is_leader,
            "endpoint": self.endpoint,
            "version": self.version,
            "db_size": self.db_size,
            "db_size_in_use": self.db_size_in_use,
            "raft_term": self.raft_term,
            "raft_index": self.raft_index,
            "revision": self.revision,
            "errors": list(self.errors),
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class BackupInfo:
    id: str
    created_at: str
    age_seconds: float
    revision: int
    revision_gap: int | None
    reason: str
    pinned: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "created_at": self.created_at,
            "age_seconds": round(self.age_seconds, 1),
            "revision": self.revision,
            "revision_gap": self.revision_gap,
            "reason": self.reason,
            "pinned": self.pinned,
        }


@dataclass(frozen=True, slots=True)
class Diagnosis:
    scenario: str
    quorum: bool
    members: tuple[MemberHealth, ...]
    leader: MemberHealth | None
    alarms: tuple[dict[str, str], ...] | None
    newest_backup: BackupInfo | None
    storage_error: str | None
    recommendation: str
    explanation: str
    steps: tuple[str, ...]
    problems: tuple[str, ...]
    cluster_id: str | None
    endpoints: tuple[dict[str, Any], ...]
    voting: int
    reachable_voting: int
    quota_bytes: int
    seconds: float

    @property
    def healthy(self) -> bool:
        return self.scenario == HEALTHY

    @property
    def live_revision(self) -> int | None:
        revisions = [m.revision for m in self.members if m.revision is not None]
        return max(revisions) if revisions else None

    def quota_percent(self, m: MemberHealth) -> float | None:
        return round(100 * m.db_size / self.quota_bytes, 1) if m.db_size is not None else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "quorum": self.quorum,
            "voting_members": self.voting,
            "reachable_voting_members": self.reachable_voting,
            "cluster_id": self.cluster_id,
            "leader": self.leader.name or self.leader.id if self.leader else None,
            "leader_id": self.leader.id if self.leader else None,
            "members": [{**m.to_dict(), "db_quota_percent": self.quota_percent(m)} for m in self.members],
            "alarms": list(self.alarms) if self.alarms is not None else None,
            "newest_backup": self.newest_backup.to_dict() if self.newest_backup else None,
            "storage_error": self.storage_error,
            "recommendation": self.recommendation,
            "explanation": self.explanation,
            "steps": list(self.steps),
            "problems": list(self.problems),
            "endpoints": list(self.endpoints),
            "quota_bytes": self.quota_bytes,
            "seconds": round(self.seconds, 3),
        }


def member_health(s: Survey) -> list[MemberHealth]:
    by_id = _status_by_member(s)
    # Without a reachable majority a member that still calls itself leader is about to step down.
    leader = _reachable_leader(s) if _majority_reachable(s) else None
    out = []
    for m in sorted(s.members or [], key=lambda m: (not m.started, m.name, m.id)):
        p = by_id.get(m.id)
        st = p.status if p else None
        error = None if st else _member_error(s, m)
        out.append(
            MemberHealth(
                id=hexid(m.id),
                name=m.name,
                peer_urls=m.peer_urls,
                client_urls=m.client_urls,
                started=m.started,
                learner=m.is_learner,
                reachable=st is not None,
                is_leader=leader == m.id,
                endpoint=p.endpoint if p else None,
                version=st.version if st else None,
                db_size=st.db_size if st else None,
                db_size_in_use=st.db_size_in_use if st else None,
                raft_term=st.raft_term if st else None,
                raft_index=st.raft_index if st else None,
                revision=st.revision if st else None,
                errors=st.errors if st else (),
                error=error,
            )
        )
    return out


def _member_error(s: Survey, m: MemberInfo) -> str:
    if not m.started:
        return "added to the member list but never started"
    errors = [s.probes[norm_url(u)].error for u in m.client_urls if norm_url(u) in s.probes]
    return next((e for e in errors if e), "no client URL answered")


def classify(members: list[MemberHealth], quorum: bool, configured: int) -> str:
    if not members:
        # Nothing answered, so the member list is unknown.
        return SINGLE_MEMBER_DOWN if configured == 1 else QUORUM_LOST
    down = [m for m in members if m.started and not m.reachable]
    unstarted = [m for m in members if not m.started]
    if len(members) == 1 and down:
        return SINGLE_MEMBER_DOWN
    if not quorum:
        return UNSTARTED_MEMBER if unstarted and not down else QUORUM_LOST
    if unstarted:
        return UNSTARTED_MEMBER
    if down:
        return MEMBER_DOWN
    return HEALTHY


# --- recommendations ---------------------------------------------------------------------------


def etcdctl_base(cfg: EtcdConfig, endpoints: list[str]) -> list[str]:
    """An etcdctl command line for these endpoints with the configured TLS files (never a password)."""
    cmd = ["etcdctl", f"--endpoints={','.join(endpoints)}"]
    if cfg.cacert:
        cmd.append(f"--cacert={cfg.cacert}")
    if cfg.cert and cfg.key:
        cmd += [f"--cert={cfg.cert}", f"--key={cfg.key}"]
    if cfg.username:
        cmd.append(f"--user={cfg.username}")
    return cmd


def restore_cluster_command(
    snapshot: str,
    members: list[tuple[str, str]],
    data_dir: str = CLUSTER_DATA_DIR,
    only: str | None = None,
    token: str | None = None,
) -> str:
    cmd = ["etcd-backup", "restore", "cluster", "--snapshot", snapshot]
    for name, peer_url in members:
        cmd += ["--member", f"{name}={peer_url}"]
    cmd += ["--data-dir", data_dir]
    if token:
        cmd += ["--cluster-token", token]
    if only:
        cmd += ["--only", only]
    return shlex.join(cmd)


def restore_single_command(
    snapshot: str, name: str = "<NAME>", peer_url: str = "<PEER_URL>", data_dir: str = "<DATA_DIR>"
) -> str:
    return shlex.join(
        [
            "etcd-backup",
            "restore",
            "single",
            "--snapshot",
            snapshot,
            "--name",
            name,
            "--peer-url",
            peer_url,
            "--data-dir",
            data_dir,
        ]
    )


def replace_member_command(failed: MemberHealth) -> str:
    return shlex.join(
        [
            "etcd-backup",
            "restore",
            "replace-member",
            "--failed",
            failed.name or failed.id,
            "--name",
            failed.name or "<NEW_NAME>",
            "--peer-url",
            failed.peer_url,
        ]
    )


@dataclass(frozen=True, slots=True)
class Advice:
    command: str
    explanation: str
    steps: tuple[str, ...] = ()


def recommend(
    scenario: str,
    members: list[MemberHealth],
    *,
    quorum: bool,
    backup: BackupInfo | None,
    cfg: EtcdConfig,
    alarms: list[dict[str, str]] | None = None,
) -> Advice:
    snapshot = backup.id if backup else SNAPSHOT_PLACEHOLDER
    started = [m for m in members if m.started]
    if scenario == SINGLE_MEMBER_DOWN:
        m = members[0] if members else None
        cmd = restore_single_command(snapshot, m.name, m.peer_url) if m else restore_single_command(snapshot)
        return Advice(
            cmd,
            "The only member does not answer. If etcd merely stopped and its data dir "
            "survives, start it again. If the host or its data dir is lost, rebuild it from "
            "the newest verified snapshot (scenario 3), then start etcd with the flags it prints.",
        )
    if scenario == QUORUM_LOST:
        return _quorum_lost(snapshot, started, members)
    if scenario == UNSTARTED_MEMBER:
        return _unstarted(cfg, snapshot, members, quorum)
    if scenario == MEMBER_DOWN:
        down = [m for m in started if not m.reachable]
        cmds = [replace_member_command(m) for m in down]
        names = ", ".join(m.label for m in down)
        return Advice(
            cmds[0],
            f"Quorum holds, but {names} does not answer. If it will come back with its "
            "data dir, restart it. If it is lost, replace it: remove it and add a fresh member "
            "(same name and peer URL on a new host, or pass other ones); the command prints how to "
            "start the new member. Replace one member at a time.",
            tuple(cmds),
        )
    if alarms:
        reachable = [u for m in members if m.reachable for u in m.client_urls[:1]]
        cmd = shlex.join([*etcdctl_base(cfg, reachable), "alarm", "disarm"])
        raised = ", ".join(a["alarm"] for a in alarms)
        return Advice(
            cmd,
            f"Alarm raised ({raised}). For NOSPACE: compact and defragment (or raise "
            "--quota-backend-bytes), then disarm the alarm.",
        )
    if backup is None:
        return Advice("etcd-backup snapshot", "The cluster is healthy, but storage holds no verified snapshot.")
    return Advice("", "The cluster is healthy. Before a membership change run: etcd-backup pre-change --reason TEXT")


def _quorum_lost(snapshot: str, started: list[MemberHealth], members: list[MemberHealth]) -> Advice:
    pairs = [(m.name, m.peer_url) for m in started] or [(f"<NAME{i}>", f"<PEER_URL{i}>") for i in (1, 2, 3)]
    data_dir = CLUSTER_DATA_DIR if len(pairs) > 1 else "<DATA_DIR>"
    cmd = restore_cluster_command(snapshot, pairs, data_dir)
    per_host = tuple(restore_cluster_command(snapshot, pairs, data_dir, only=name) for name, _ in pairs)
    alive = [m.label for m in started if m.reachable]
    text = (
        "Quorum is lost: a majority of the voting members does not answer"
        + (f" (still answering: {', '.join(alive)})" if alive else "")
        + ". If the missing members can "
        "be started again with their data dirs, do that first: quorum returns by itself. If two or "
        "more are lost for good, stop every member and rebuild all of them from one snapshot as a new "
        "cluster (scenario 4). On each member's host run the command with --only NAME (the same "
        "snapshot id everywhere), adjust --data-dir to where etcd keeps its data, then start all "
        "members."
    )
    if not members:
        text += " No member answered, so the member names and peer URLs are placeholders."
    return Advice(cmd, text, per_host)


def _unstarted(cfg: EtcdConfig, snapshot: str, members: list[MemberHealth], quorum: bool) -> Advice:
    unstarted = [m for m in members if not m.started]
    started = [m for m in members if m.started]
    who = ", ".join(f"{m.id} ({', '.join(m.peer_urls)})" for m in unstarted)
    if quorum:
        endpoints = [u for m in started if m.reachable for u in m.client_urls[:1]]
        cmds = tuple(shlex.join([*etcdctl_base(cfg, endpoints), "member", "remove", m.id]) for m in unstarted)
        return Advice(
            cmds[0],
            f"Member {who} was added but never started (scenario 2: it crashed before "
            "joining). The cluster is one failure closer to losing quorum. Remove it, then retry "
            "the change (etcd-backup pre-change first), or start it now with "
            "--initial-cluster-state=existing.",
            cmds,
        )
    if len(started) == 1:
        cmd = restore_single_command(snapshot, started[0].name, started[0].peer_url)
    else:
        cmd = restore_cluster_command(snapshot, [(m.name, m.peer_url) for m in started])
    return Advice(
        cmd,
        f"Member {who} was added but never started, and without it there is no quorum, so "
        "it cannot be removed (scenario 2). Either start the added member now with "
        "--initial-cluster-state=existing, or roll back: stop etcd and rebuild the original "
        "members from the snapshot taken before the change (pre-change).",
    )


# --- putting it together ----------------------------------------------------------------------


def diagnose(
    cfg: Config,
    open_store: Callable[[], SnapshotStore] | None = None,
    *,
    quota_bytes: int = DEFAULT_QUOTA_BYTES,
    now: Callable[[], datetime] = utcnow,
) -> Diagnosis:
    """Survey the cluster (and storage, in parallel) and name the scenario and the next command."""
    started_at = time.monotonic()
    lookup = _StorageLookup(open_store) if open_store is not None else None
    s = survey(cfg.etcd)
    listed = lookup.result(STORAGE_WAIT_SECONDS) if lookup is not None else (None, None)
    members = member_health(s)
    voting = [m for m in members if not m.learner]
    reachable_voting = sum(1 for m in voting if m.reachable)
    leader = next((m for m in members if m.is_leader), None)
    quorum = bool(members) and reachable_voting * 2 > len(voting) and leader is not None
    scenario = classify(members, quorum, len(s.configured))
    backup, storage_error = _with_gap(listed, members, now())
    alarms = (
        [
            {"member_id": hexid(a.member_id), "member": _name_of(members, a.member_id), "alarm": a.alarm}
            for a in s.alarms
        ]
        if s.alarms is not None
        else None
    )
    advice = recommend(scenario, members, quorum=quorum, backup=backup, cfg=cfg.etcd, alarms=alarms)
    problems = _problems(
        cfg, s, members, alarms=alarms, backup=backup, storage_error=storage_error, quota_bytes=quota_bytes
    )
    return Diagnosis(
        scenario=scenario,
        quorum=quorum,
        members=tuple(members),
        leader=leader,
        alarms=tuple(alarms) if alarms is not None else None,
        newest_backup=backup,
        storage_error=storage_error,
        recommendation=advice.command,
        explanation=advice.explanation,
        steps=advice.steps or ((advice.command,) if advice.command else ()),
        problems=tuple(problems),
        cluster_id=_cluster_id(s),
        endpoints=tuple(_endpoint_rows(s)),
        voting=len(voting),
        reachable_voting=reachable_voting,
        quota_bytes=quota_bytes,
        seconds=time.monotonic() - started_at,
    )


class _StorageLookup:
    """The newest verified snapshot, looked up on a daemon thread while the cluster is surveyed.

    A storage call that hangs (an S3 endpoint black-holing packets) must not hold doctor, nor keep
    the process from exiting, so this is not an executor (its workers are joined at exit).
    """

    def __init__(self, open_store: Callable[[], SnapshotStore]) -> None:
        self._result: tuple[Manifest | None, str | None] | None = None
        self._done = threading.Event()
        self._open_store = open_store
        threading.Thread(target=self._run, name="doctor-storage", daemon=True).start()

    def _run(self) -> None:
        try:
            self._result = newest_verified(self._open_store)
        finally:
            self._done.set()

    def result(self, timeout: float) -> tuple[Manifest | None, str | None]:
        if not self._done.wait(timeout) or self._result is None:
            return None, f"storage did not answer within {timeout:.0f}s"
        return self._result


def newest_verified(open_store: Callable[[], SnapshotStore]) -> tuple[Manifest | None, str | None]:
    """The newest verified manifest, or why storage could not say. Never raises: doctor must finish."""
    try:
        listing = manifests.list_snapshots(open_store())
        return listing.newest_verified(), None
    except EtcdBackupError as exc:
        return None, str(exc)
    except Exception as exc:  # noqa: BLE001 - a broken store must not stop the diagnosis
        return None, f"{type(exc).__name__}: {exc}"


def _with_gap(
    listed: tuple[Any, str | None], members: list[MemberHealth], now: datetime
) -> tuple[BackupInfo | None, str | None]:
    m, error = listed
    if m is None:
        return None, error
    revisions = [x.revision for x in members if x.revision is not None]
    gap = max(revisions) - m.revision if revisions else None
    return BackupInfo(m.id, m.created_at, (now - m.created).total_seconds(), m.revision, gap, m.reason, m.pinned), None


def _name_of(members: list[MemberHealth], member_id: int) -> str:
    return next((m.name for m in members if m.id == hexid(member_id)), "")


def _cluster_id(s: Survey) -> str | None:
    view = _best_view(s.answered())
    return hexid(view.status.cluster_id) if view and view.status else None


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


def _problems(
    cfg: Config,
    s: Survey,
    members: list[MemberHealth],
    *,
    alarms: list[dict[str, str]] | None,
    backup: BackupInfo | None,
    storage_error: str | None,
    quota_bytes: int,
) -> list[str]:
    out: list[str] = []
    if not members:
        out.append("no endpoint answered: " + "; ".join(p.error or "?" for p in s.probes.values()))
    for m in members:
        if not m.started:
            out.append(f"member {m.id} ({', '.join(m.peer_urls)}) was added but never started")
        elif not m.reachable:
            out.append(f"member {m.label} does not answer: {m.error}")
        if m.db_size is not None and m.db_size >= quota_bytes * QUOTA_LIMIT_RATIO:
            out.append(
                f"member {m.label}: database {m.db_size} bytes is at "
                f"{100 * m.db_size / quota_bytes:.0f}% of the {quota_bytes}-byte quota"
            )
        if m.learner:
            out.append(f"member {m.label} is a learner (a membership change is in progress)")
    for a in alarms or []:
        out.append(f"alarm {a['alarm']} raised by member {a['member'] or a['member_id']}")
    advertised = {norm_url(u) for m in members for u in m.client_urls}
    for url in s.configured:
        p = s.probes.get(url)
        if members and p is not None and p.status is None and url not in advertised:
            out.append(f"configured endpoint {url} does not answer: {p.error}")
    cluster = _cluster_id(s)
    known = {m.id for m in members}
    for url, p in s.probes.items():
        if p.status is None:
            continue
        if cluster and hexid(p.status.cluster_id) != cluster:
            out.append(f"endpoint {url} belongs to another cluster ({hexid(p.status.cluster_id)})")
        elif members and hexid(p.status.member_id) not in known:
            out.append(f"endpoint {url} answers as member {hexid(p.status.member_id)}, which is not in the member list")
    if storage_error:
        out.append(f"storage: {storage_error}")
    elif backup is None:
        out.append("storage holds no verified snapshot")
    elif backup.age_seconds > 2 * cfg.schedule.period():
        out.append(f"newest verified snapshot {backup.id} is {backup.age_seconds / 3600:.1f}h old")
    return out
