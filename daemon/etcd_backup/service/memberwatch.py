"""Notice a change of the etcd member list (a member added, removed or promoted), so the daemon
can snapshot right after it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog

from ..config import Config
from ..errors import EtcdUnavailable
from ..etcdclient import Member, connect_healthy, hexid

log = structlog.get_logger(__name__)

MemberSet = frozenset[tuple[Any, ...]]


class MemberWatch:
    def __init__(self, cfg: Config, on_change: Callable[[], None]) -> None:
        self.cfg = cfg
        self.on_change = on_change
        self._members: MemberSet | None = None

    def poll(self) -> None:
        try:
            members = self._member_set()
        except EtcdUnavailable:
            return  # unreachable etcd is reported by the health check; no change can be seen now
        previous, self._members = self._members, members
        if previous is None or previous == members:
            return
        added = sorted(hexid(m[0]) for m in members - previous)
        removed = sorted(hexid(m[0]) for m in previous - members)
        log.info("etcd member list changed; snapshot soon", added=added, removed=removed)
        self.on_change()

    def _member_set(self) -> MemberSet:
        if self.cfg.schedule.mode == "sidecar":
            with Member(self.cfg.etcd, self.cfg.etcd.endpoints[0]) as member:
                infos = member.members()
        else:
            member, _ = connect_healthy(self.cfg.etcd, allow_alarms=True)
            try:
                infos = member.members()
            finally:
                member.close()
        return frozenset((m.id, tuple(sorted(m.peer_urls)), m.is_learner) for m in infos)
