"""One look at the whole cluster: every configured endpoint and every client URL the member list
advertises, probed in parallel, so a dead or frozen host costs one dial timeout however many
members there are. The answers are raw; `assessment` makes sense of them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from .config import EtcdConfig
from .errors import EtcdUnavailable
from .etcdclient import Alarm, Member, MemberInfo, Probe, hexid, probe
from .members import norm_url

# How long to wait for an election when a majority answers but none of them knows a leader.
LEADER_WAIT_SECONDS = 5.0


@dataclass
class Survey:
    """Raw answers: every endpoint probed, the best member list, and the alarm list."""

    configured: list[str]
    probes: dict[str, Probe] = field(default_factory=dict)
    members: list[MemberInfo] | None = None
    alarms: list[Alarm] | None = None

    def answered(self) -> list[Probe]:
        return [p for p in self.probes.values() if p.status is not None]

    def by_member(self) -> dict[int, Probe]:
        """The first answering probe of each member id."""
        out: dict[int, Probe] = {}
        for p in self.answered():
            out.setdefault(p.status.member_id, p)  # type: ignore[union-attr]
        return out

    def best_view(self) -> Probe | None:
        """The probe whose member list to trust: one that knows a leader, then the newest raft state."""
        with_list = [p for p in self.answered() if p.members]
        if not with_list:
            return None
        return max(
            with_list,
            key=lambda p: (p.status.leader != 0, p.status.raft_term, p.status.raft_index),  # type: ignore[union-attr]
        )

    def cluster_id(self) -> str | None:
        view = self.best_view()
        if view is not None and view.status is not None:
            return hexid(view.status.cluster_id)
        ids = {hexid(p.status.cluster_id) for p in self.answered() if p.status is not None}
        return ids.pop() if len(ids) == 1 else None

    def majority_reachable(self) -> bool:
        by_id = self.by_member()
        voting = [m for m in self.members or [] if not m.is_learner]
        return sum(1 for m in voting if m.id in by_id) * 2 > len(voting)

    def reachable_leader(self) -> int | None:
        """The leader id the freshest reachable member reports, if that leader itself answers."""
        by_id = self.by_member()
        statuses = [p.status for p in by_id.values() if p.status is not None and p.status.leader]
        if not statuses:
            return None
        freshest = max(statuses, key=lambda st: (st.raft_term, st.raft_index))
        return freshest.leader if freshest.leader in by_id else None


def _fetch_alarms(cfg: EtcdConfig, endpoint: str) -> list[Alarm]:
    with Member(cfg, endpoint) as m:
        return m.alarms()


def survey(
    cfg: EtcdConfig, endpoints: list[str] | None = None, *, hints: Iterable[str] = (), cluster_id: str | None = None
) -> Survey:
    """Probe the configured endpoints and, as soon as a member list arrives, every client URL in it.

    `hints` are client URLs known from elsewhere (the members a snapshot of `cluster_id` recorded),
    for when no configured endpoint answers: a sidecar configured with its own member only must
    still find the rest of its cluster. A hint counts only if it answers for `cluster_id`, or for a
    cluster whose member list has a configured endpoint (the one a `restore cluster` made since);
    a URL another cluster uses is left out.

    The alarm list is read (it goes through raft) from the first member that knows a leader, in
    the same pool, so it does not wait behind dead hosts either.
    """
    configured = [norm_url(e) for e in (endpoints or cfg.endpoints)]
    result = Survey(configured)
    seen: set[str] = set()
    hinted = {norm_url(h) for h in hints} - set(configured)
    silent: dict[str, Probe] = {}
    with ThreadPoolExecutor(max_workers=16, thread_name_prefix="survey") as pool:
        pending: dict[Future[Any], tuple[str, str]] = {}

        def submit_probe(url: str) -> None:
            if url and url not in seen:
                seen.add(url)
                pending[pool.submit(probe, cfg, url, members=True)] = ("probe", url)

        for ep in [*configured, *sorted(hinted)]:
            submit_probe(ep)
        alarms_asked = False
        while pending:
            done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for fut in done:
                kind, url = pending.pop(fut)
                if kind == "alarms":
                    try:
                        result.alarms = fut.result()
                    except EtcdUnavailable:
                        result.alarms = None
                    continue
                p: Probe = fut.result()
                if url in hinted and p.status is None:
                    silent[url] = p  # says nothing, unless the member list names it (below)
                    continue
                if url in hinted and not _ours(p, cluster_id, configured):
                    continue  # a URL another cluster uses now: not one of ours
                result.probes[url] = p
                for m in p.members:
                    for client_url in m.client_urls:
                        submit_probe(norm_url(client_url))
                if not alarms_asked and p.status is not None and p.status.leader != 0:
                    alarms_asked = True
                    pending[pool.submit(_fetch_alarms, cfg, url)] = ("alarms", url)
    view = result.best_view()
    result.members = list(view.members) if view else None
    advertised = {norm_url(u) for m in result.members or [] for u in m.client_urls}
    result.probes.update({url: p for url, p in silent.items() if url in advertised})
    _await_leader(cfg, result)
    return result


def _ours(p: Probe, cluster_id: str | None, configured: list[str]) -> bool:
    if p.status is None:
        return False
    if hexid(p.status.cluster_id) == cluster_id:
        return True
    return any(norm_url(u) in configured for m in p.members for u in m.client_urls)


def _await_leader(cfg: EtcdConfig, s: Survey) -> None:
    """A majority answers but no reachable member leads: an election is running; re-ask briefly."""
    if not s.members:
        return
    deadline = time.monotonic() + LEADER_WAIT_SECONDS
    while s.majority_reachable() and s.reachable_leader() is None and time.monotonic() < deadline:
        time.sleep(0.2)
        urls = [url for url, p in s.probes.items() if p.status is not None]
        with ThreadPoolExecutor(max_workers=min(16, len(urls))) as pool:
            for url, p in zip(urls, pool.map(lambda u: probe(cfg, u), urls), strict=True):
                if p.status is not None:
                    s.probes[url].status = p.status
