"""What the survey's answers mean: each member's state, quorum, the failure scenario, and the
health rules that both `doctor` (to report) and `pre-change` (to refuse) apply. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from .etcdclient import MemberInfo, hexid
from .members import norm_url
from .survey import Survey

DEFAULT_QUOTA_BYTES = 2 * 1024**3  # etcd's default --quota-backend-bytes
QUOTA_LIMIT_RATIO = 0.9


class Scenario(StrEnum):
    HEALTHY = "healthy"
    MEMBER_DOWN = "member-down"
    UNSTARTED_MEMBER = "unstarted-member"
    QUORUM_LOST = "quorum-lost"
    SINGLE_MEMBER_DOWN = "single-member-down"


class MemberState(StrEnum):
    OK = "ok"
    NO_LEADER = "no-leader"  # answers, but knows no leader: it cannot serve writes
    DOWN = "down"  # joined once, does not answer now
    UNSTARTED = "unstarted"  # added to the member list, never joined


@dataclass(frozen=True, slots=True)
class MemberHealth:
    id: str
    name: str
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...]
    started: bool  # joined the cluster once (etcd's own meaning: it has a name in the member list)
    learner: bool
    reachable: bool  # answered this survey
    is_leader: bool = False
    has_leader: bool = False
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
    def state(self) -> MemberState:
        if not self.started:
            return MemberState.UNSTARTED
        if not self.reachable:
            return MemberState.DOWN
        return MemberState.OK if self.has_leader else MemberState.NO_LEADER

    @property
    def peer_url(self) -> str | None:
        return self.peer_urls[0] if self.peer_urls else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "id": self.id,
            "state": self.state.value,
            "peer_urls": list(self.peer_urls),
            "client_urls": list(self.client_urls),
            "reachable": self.reachable,
            "started": self.started,
            "has_leader": self.has_leader,
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


def member_health(s: Survey) -> list[MemberHealth]:
    by_id = s.by_member()
    # Without a reachable majority a member that still calls itself leader is about to step down.
    leader = s.reachable_leader() if s.majority_reachable() else None
    out = []
    for m in sorted(s.members or [], key=lambda m: (not m.started, m.name, m.id)):
        p = by_id.get(m.id)
        st = p.status if p else None
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
                has_leader=bool(st and st.leader) and leader is not None,
                endpoint=p.endpoint if p else None,
                version=st.version if st else None,
                db_size=st.db_size if st else None,
                db_size_in_use=st.db_size_in_use if st else None,
                raft_term=st.raft_term if st else None,
                raft_index=st.raft_index if st else None,
                revision=st.revision if st else None,
                errors=st.errors if st else (),
                error=None if st else _member_error(s, m),
            )
        )
    return out


def _member_error(s: Survey, m: MemberInfo) -> str:
    if not m.started:
        return "added to the member list but never started"
    errors = [s.probes[norm_url(u)].error for u in m.client_urls if norm_url(u) in s.probes]
    return next((e for e in errors if e), "no client URL answered")


@dataclass(frozen=True, slots=True)
class Quorum:
    voting: int
    reachable_voting: int
    leader: MemberHealth | None

    @property
    def held(self) -> bool:
        return self.voting > 0 and self.reachable_voting * 2 > self.voting and self.leader is not None


def quorum(members: list[MemberHealth]) -> Quorum:
    voting = [m for m in members if not m.learner]
    reachable = sum(1 for m in voting if m.reachable)
    return Quorum(len(voting), reachable, next((m for m in members if m.is_leader), None))


def classify(members: list[MemberHealth], has_quorum: bool, known: int) -> Scenario:
    """`known`: how many members there are at least, as far as anyone can tell when none answers
    (the endpoints configured, the members the newest snapshot recorded)."""
    if not members:
        # Nothing answered, so the member list is unknown.
        return Scenario.SINGLE_MEMBER_DOWN if known == 1 else Scenario.QUORUM_LOST
    down = [m for m in members if m.started and not m.reachable]
    unstarted = [m for m in members if not m.started]
    if len(members) == 1 and down:
        return Scenario.SINGLE_MEMBER_DOWN
    if not has_quorum:
        return Scenario.UNSTARTED_MEMBER if unstarted and not down else Scenario.QUORUM_LOST
    if unstarted:
        return Scenario.UNSTARTED_MEMBER
    if down:
        return Scenario.MEMBER_DOWN
    return Scenario.HEALTHY


@dataclass(frozen=True, slots=True)
class Problem:
    text: str
    blocks_change: bool  # `pre-change` refuses while this holds


def cluster_problems(
    s: Survey,
    members: list[MemberHealth],
    q: Quorum,
    alarms: list[dict[str, str]] | None,
    quota_bytes: int,
) -> list[Problem]:
    """Everything wrong with the cluster itself, one rule each (doctor reports all of them;
    pre-change refuses on those that block a membership change)."""
    out: list[Problem] = []
    if not members:
        errors = "; ".join(p.error or "?" for p in s.probes.values()) or "no endpoints configured"
        return [Problem(f"no etcd member answers: {errors}", True)]
    for m in members:
        if m.state is MemberState.UNSTARTED:
            out.append(Problem(f"member {m.id} ({', '.join(m.peer_urls)}) was added but never started", True))
        elif m.state is MemberState.DOWN:
            out.append(Problem(f"member {m.label} does not answer: {m.error}", True))
        elif m.state is MemberState.NO_LEADER:
            out.append(Problem(f"member {m.label} answers but sees no leader", True))
        if m.learner:
            out.append(Problem(f"member {m.label} is a learner: a membership change is in progress", True))
        if m.db_size is not None and m.db_size >= quota_bytes * QUOTA_LIMIT_RATIO:
            out.append(
                Problem(
                    f"member {m.label}: database {m.db_size} bytes is at "
                    f"{100 * m.db_size / quota_bytes:.0f}% of the {quota_bytes}-byte quota",
                    True,
                )
            )
    if q.leader is None:
        out.append(Problem("no leader", True))
    if alarms is None:
        out.append(Problem("the alarm list could not be read", True))
    for a in alarms or []:
        out.append(Problem(f"alarm {a['alarm']} raised by member {a['member'] or a['member_id']}", True))
    advertised = {norm_url(u) for m in members for u in m.client_urls}
    for url in s.configured:
        p = s.probes.get(url)
        if p is not None and p.status is None and url not in advertised:
            out.append(Problem(f"configured endpoint {url} does not answer: {p.error}", False))
    cluster = s.cluster_id()
    known = {m.id for m in members}
    for url, p in s.probes.items():
        if p.status is None:
            continue
        if cluster and hexid(p.status.cluster_id) != cluster:
            out.append(Problem(f"endpoint {url} belongs to another cluster ({hexid(p.status.cluster_id)})", False))
        elif hexid(p.status.member_id) not in known:
            out.append(
                Problem(
                    f"endpoint {url} answers as member {hexid(p.status.member_id)}, which is not in the member list",
                    False,
                )
            )
    return out


def alarm_rows(s: Survey, members: list[MemberHealth]) -> list[dict[str, str]] | None:
    if s.alarms is None:
        return None
    names = {m.id: m.name for m in members}
    return [
        {"member_id": hexid(a.member_id), "member": names.get(hexid(a.member_id), ""), "alarm": a.alarm}
        for a in s.alarms
    ]
