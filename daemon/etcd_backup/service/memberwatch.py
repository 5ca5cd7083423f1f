"""Notice a change of the etcd member list (a member added, started, removed or promoted), so the
daemon can snapshot right after it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog

from ..config import Config
from ..errors import EtcdUnavailable
from ..etcdclient import Member, connect_healthy, hexid

log = structlog.get_logger(__name__)

# id -> what the snapshot's manifest records of the member. The name and client URLs count: a
# member added but not yet started is listed without them, and a snapshot taken then records it
# so; the one after it starts records who it is, for doctor's runbooks and restore's flags.
MemberSet = dict[int, tuple[Any, ...]]


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
        added = sorted(hexid(i) for i in members.keys() - previous.keys())
        removed = sorted(hexid(i) for i in previous.keys() - members.keys())
        changed = sorted(hexid(i) for i in members.keys() & previous.keys() if members[i] != previous[i])
        log.info("etcd member list changed; snapshot soon", added=added, removed=removed, changed=changed)
        self.on_change()

    def _member_set(self) -> MemberSet:
        if self.cfg.schedule.mode == "sidecar":
            with Member(self.cfg.etcd, self.cfg.etcd.endpoints[0]) as member:
                infos = member.members()
        else:
            # Every 5 s: an outage is the health check's to report, not one warning per poll.
            member, _ = connect_healthy(self.cfg.etcd, allow_alarms=True, log_skips=False)
            try:
                infos = member.members()
            finally:
                member.close()
        return {m.id: (m.name, tuple(sorted(m.peer_urls)), tuple(sorted(m.client_urls)), m.is_learner) for m in infos}
