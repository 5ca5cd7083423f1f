"""Which copy acts: in sidecar mode only the copy beside the raft leader takes scheduled snapshots,
prunes and drills. Nothing is written into etcd for this: the raft leader *is* the election, and
when it changes the copy beside the new leader sees it at its next check (within one period).
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import Config
from .errors import EtcdUnavailable
from .etcdclient import Member, MemberStatus, connect_healthy, hexid


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
