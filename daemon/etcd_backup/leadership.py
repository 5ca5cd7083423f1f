"""Which copy acts: in sidecar mode only the copy beside the raft leader takes scheduled snapshots,
prunes and drills. Nothing is written into etcd for this: the raft leader *is* the election, and
when it changes the copy beside the new leader sees it at its next check (within one period).

The copy beside the leader may itself be gone while its member leads on (stopped, crashing,
without storage access). The others then stand in, one at a time. Once the cluster's newest
snapshot is 1.5 periods old (periods as long as the newest snapshot took, when that is longer;
plus the schedule's jitter, two health checks and 10 s, so that a snapshot late by those is no
reason), the copy beside the follower with the lowest member id acts; one period later the next
one too, and so on. The age counts from when this copy first saw the current leader, so a new
leader's copy gets its own 1.5 periods. One that stood in goes on acting while the newest snapshot
is its own; a snapshot by the copy beside the leader, back again, ends it. Interval schedules
only: a cron schedule's gaps differ (weekdays only, say), so no age tells that a run was missed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from .config import Config
from .errors import EtcdUnavailable
from .etcdclient import Member, MemberStatus, connect_healthy, hexid
from .metrics import Metrics

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Observation:
    """One look at etcd: whether this copy acts, and what the member said."""

    acting: bool
    reason: str
    status: MemberStatus | None = None
    error: str | None = None  # etcd could not be reached
    # Single mode: each endpoint asked, and why it was passed over (None: the one that answered).
    endpoints: dict[str, str | None] = field(default_factory=dict)


class Standby:
    """When a copy beside a follower stands in for the copy beside the leader."""

    def __init__(
        self,
        period: float,
        *,
        newest_success: Callable[[], float],
        newest_is_ours: Callable[[], bool],
        since: float,
        slack: float = 0.0,
        newest_duration: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self.period = period
        self.slack = slack  # added to every threshold: the schedule's jitter, how late the listing may be
        self.newest_duration = newest_duration  # a snapshot longer than the period spaces them wider
        self.newest_success = newest_success  # unix time the cluster's newest successful snapshot completed (0: none)
        self.newest_is_ours = newest_is_ours
        self.standing = False  # acting in place of the copy beside the leader
        self._leader = 0
        # When this copy first saw the current leader lead; `since` (its start) until then, so a
        # copy just started has seen nothing overdue yet.
        self._leader_since = since

    def saw_leader(self, leader: int, now: float) -> None:
        """A new leader's copy gets its own 1.5 periods before anyone stands in for it."""
        if leader != self._leader:
            self._leader, self._leader_since = leader, now

    def overdue(self, now: float) -> float | None:
        """The newest snapshot's age when some follower's copy may stand in now, else None."""
        age = now - max(self.newest_success(), self._leader_since)
        return age if self._going_on() or age > self._threshold(0) else None

    def admits(self, rank: int, age: float) -> bool:
        """Whether the copy beside follower `rank` (0: the lowest member id) stands in."""
        return self._going_on() or age > self._threshold(rank)

    def _threshold(self, rank: int) -> float:
        return (1.5 + rank) * max(self.period, self.newest_duration()) + self.slack

    def _going_on(self) -> bool:
        # Stood in, and the copy beside the leader has taken none since.
        return self.standing and self.newest_is_ours()


def _follower_rank(member: Member, status: MemberStatus) -> int | None:
    """This member's place among the started voting followers, by member id."""
    try:
        infos = member.members()
    except EtcdUnavailable:
        return None
    followers = sorted(m.id for m in infos if m.started and not m.is_learner and m.id != status.leader)
    return followers.index(status.member_id) if status.member_id in followers else None


def observe(cfg: Config, standby: Standby | None = None) -> Observation:
    """Ask etcd once. Sidecar: the local member (first endpoint) only. Single: any healthy member.
    With `standby`, a copy beside a follower acts while the acting copy's snapshots are overdue."""
    if cfg.schedule.mode == "single":
        tried: dict[str, str | None] = {}
        try:
            # Skips are not logged here: the health check logs an outage's start and end (`Outages`).
            member, status = connect_healthy(cfg.etcd, log_skips=False, tried=tried)
        except EtcdUnavailable as exc:
            # A single copy still "acts": the snapshot run itself retries and fails over.
            return Observation(True, "single mode", error=str(exc), endpoints=tried)
        member.close()
        return Observation(True, "single mode", status=status, endpoints=tried)
    endpoint = cfg.etcd.endpoints[0]
    try:
        with Member(cfg.etcd, endpoint) as member:
            status = member.status()
            if status.leader == 0:
                return Observation(False, "local member sees no leader", status=status)
            if standby is not None:
                standby.saw_leader(status.leader, time.time())
            if status.is_leader:
                if standby is not None:
                    standby.standing = False
                return Observation(True, f"local member {hexid(status.member_id)} is the raft leader", status=status)
            age = standby.overdue(time.time()) if standby is not None else None
            rank = _follower_rank(member, status) if age is not None else None
    except EtcdUnavailable as exc:
        return Observation(False, "local member unreachable", error=str(exc))
    if standby is not None:
        was = standby.standing
        standby.standing = age is not None and rank is not None and standby.admits(rank, age)
        if standby.standing:
            reason = (
                f"standing in: the cluster's newest snapshot is {age:.0f}s old although the raft leader "
                f"{hexid(status.leader)} is up (its copy takes none); this is follower {(rank or 0) + 1}"
            )
            if not was:
                log.warning("the copy beside the raft leader takes no snapshots: this copy stands in", why=reason)
            return Observation(True, reason, status=status)
        if was:
            log.info("no longer standing in: the copy beside the raft leader snapshots again")
    return Observation(False, f"raft leader is member {hexid(status.leader)}, not this one", status=status)


class Leadership:
    """Asks before each job whether this copy acts, and keeps `etcd_backup_is_leader` true to it."""

    def __init__(self, cfg: Config, metrics: Metrics, standby: Standby | None = None) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.standby = standby
        metrics.is_leader.set(1 if cfg.schedule.mode == "single" else 0)

    def acting(self) -> Observation:
        if self.cfg.schedule.mode == "single":
            return Observation(True, "single mode")
        return self.check("leader_check")

    def check(self, stage: str) -> Observation:
        """Ask etcd (see `observe`) and record the answer."""
        return self.seen(observe(self.cfg, self.standby), stage=stage)

    def seen(self, obs: Observation, stage: str) -> Observation:
        """Record an observation made elsewhere (the health check) too."""
        if self.cfg.schedule.mode == "sidecar":
            self.metrics.is_leader.set(1 if obs.acting else 0)
        if obs.error:
            self.metrics.failure(stage)
        return obs
