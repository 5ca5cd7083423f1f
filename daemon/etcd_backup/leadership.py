"""Which copy acts: in sidecar mode only the copy beside the raft leader takes scheduled snapshots,
prunes and drills. Nothing is written into etcd for this: the raft leader *is* the election, and
when it changes the copy beside the new leader sees it at its next check (within one period).
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import Config
from .errors import EtcdUnavailable
from .etcdclient import Member, MemberStatus, connect_healthy, hexid
from .metrics import Metrics


@dataclass(frozen=True, slots=True)
class Observation:
    """One look at etcd: whether this copy acts, and what the member said."""

    acting: bool
    reason: str
    status: MemberStatus | None = None
    error: str | None = None  # etcd could not be reached


def observe(cfg: Config) -> Observation:
    """Ask etcd once. Sidecar: the local member (first endpoint) only. Single: any healthy member."""
    if cfg.schedule.mode == "single":
        try:
            member, status = connect_healthy(cfg.etcd)
        except EtcdUnavailable as exc:
            # A single copy still "acts": the snapshot run itself retries and fails over.
            return Observation(True, "single mode", error=str(exc))
        member.close()
        return Observation(True, "single mode", status=status)
    endpoint = cfg.etcd.endpoints[0]
    try:
        with Member(cfg.etcd, endpoint) as member:
            status = member.status()
    except EtcdUnavailable as exc:
        return Observation(False, "local member unreachable", error=str(exc))
    if status.leader == 0:
        return Observation(False, "local member sees no leader", status=status)
    if status.is_leader:
        return Observation(True, f"local member {hexid(status.member_id)} is the raft leader", status=status)
    return Observation(False, f"raft leader is member {hexid(status.leader)}, not this one", status=status)


class Leadership:
    """Asks before each job whether this copy acts, and keeps `etcd_backup_is_leader` true to it."""

    def __init__(self, cfg: Config, metrics: Metrics) -> None:
        self.cfg = cfg
        self.metrics = metrics
        metrics.is_leader.set(1 if cfg.schedule.mode == "single" else 0)

    def acting(self) -> Observation:
        if self.cfg.schedule.mode == "single":
            return Observation(True, "single mode")
        return self.seen(observe(self.cfg), stage="leader_check")

    def seen(self, obs: Observation, stage: str) -> Observation:
        """Record an observation made elsewhere (the health check) too."""
        if self.cfg.schedule.mode == "sidecar":
            self.metrics.is_leader.set(1 if obs.acting else 0)
        if obs.error:
            self.metrics.failure(stage)
        return obs
