"""`restore replace-member`: scenario 4 with quorum intact. Remove the failed member first, then
add the fresh one (so the cluster never counts two missing members), retrying while etcd says
"not now", and return only when the member list shows the change.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import structlog

from .. import datadir
from ..assessment import MemberHealth
from ..config import Config, EtcdConfig
from ..errors import EtcdErrorKind, EtcdUnavailable, UnsafeError, UsageError
from ..etcdclient import Member, MemberInfo, hexid
from ..members import check_name, check_peer_url, data_dir_of, member_flags, norm_url
from ..model import utcnow
from ..runbook import start_command
from ..storage import SnapshotStore
from .doctor import diagnose
from .guard import refuse_unsafe

log = structlog.get_logger(__name__)

T = TypeVar("T")

MEMBERSHIP_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class Replacement:
    removed_name: str
    removed_id: str | None  # None: an earlier run removed it already
    added_id: str
    name: str
    peer_url: str
    data_dir: str
    etcd_flags: tuple[str, ...]
    initial_cluster: str
    member_list: tuple[MemberInfo, ...]
    moved_aside: str | None
    learner: bool  # the failed member was a learner, and so is its replacement (promote it later)
    client_urls: tuple[str, ...]  # the new member's, when it takes the failed one's place (its peer URL)
    cluster_client_urls: tuple[str, ...]  # every started member's, for the checks

    @property
    def start_command(self) -> str:
        return start_command(self.etcd_flags, self.client_urls)

    def to_dict(self) -> dict[str, Any]:
        return {
            "removed": {"name": self.removed_name, "id": self.removed_id},
            "added": {"name": self.name, "id": self.added_id, "peer_url": self.peer_url, "learner": self.learner},
            "name": self.name,
            "data_dir": self.data_dir,
            "etcd_flags": list(self.etcd_flags),
            "client_urls": list(self.client_urls),
            "start_command": self.start_command,
            "initial_cluster": self.initial_cluster,
            "moved_aside": self.moved_aside,
            "member_list": [
                {
                    "name": m.name,
                    "id": hexid(m.id),
                    "peer_urls": list(m.peer_urls),
                    "client_urls": list(m.client_urls),
                    "started": m.started,
                }
                for m in self.member_list
            ],
        }


def find_member(members: Iterable[MemberHealth], ref: str) -> MemberHealth | None:
    ref = ref.strip().lower()
    members = list(members)
    return next((m for m in members if m.name == ref or m.id == ref.removeprefix("0x")), None) or next(
        (m for m in members if m.name.lower() == ref), None
    )


def replace_member(
    cfg: Config,
    *,
    failed: str,
    name: str,
    peer_url: str,
    data_dir: str | None = None,
    force: bool = False,
    timeout: float = MEMBERSHIP_TIMEOUT,
    now: Callable[[], datetime] = utcnow,
    open_store: Callable[[], SnapshotStore] | None = None,
) -> Replacement:
    """`open_store`: where to find the members the newest snapshot recorded, asked only when no
    configured endpoint answers (a sidecar configured with the failed member alone)."""
    check_name(name)
    peer_url = check_peer_url(peer_url)
    diag = diagnose(cfg)
    if not diag.members and open_store is not None:
        diag = diagnose(cfg, open_store)
    if not diag.members or not diag.quorum:
        counts = f"{diag.reachable_voting} of {diag.voting} voting members answer" if diag.members else "none answers"
        raise UnsafeError(
            f"quorum is lost ({counts}): etcd cannot change its membership, so a member cannot be replaced; "
            "rebuild every member from one snapshot with `etcd-backup restore cluster` "
            "(`etcd-backup doctor` prints the exact commands)"
        )
    target = find_member(diag.members, failed)
    resumed = _already_added(diag.members, target, failed, peer_url)
    if target is not None:
        _check_replaceable(diag.members, target, name, peer_url, force)
    path = Path(os.path.expanduser(data_dir_of(data_dir or cfg.restore.data_dir, name))).absolute()
    refuse_unsafe(cfg, [path], force)
    endpoints = _endpoints_leader_first(diag.members, exclude=target)
    deadline = time.monotonic() + timeout
    moved = None
    if datadir.state(path) is datadir.DirState.OCCUPIED:
        moved = datadir.move_aside(path, now())
    if target is not None:
        _remove(cfg.etcd, endpoints, int(target.id, 16), deadline)
    # A learner is replaced by a learner: a voting member in its place would count against quorum
    # (one voter and a lost learner: the unstarted voter's add alone would lose it).
    learner = target is not None and target.learner
    try:
        added_id = resumed if resumed is not None else _add(cfg.etcd, endpoints, peer_url, deadline, learner=learner)
    except EtcdUnavailable as exc:
        if target is None:
            raise
        raise EtcdUnavailable(
            f"member {target.label} was removed, but adding {name} failed ({exc}); add it "
            f"with: etcdctl member add {name}{' --learner' if learner else ''} --peer-urls={peer_url}",
            exc.kind,
            exc.code,
        ) from None
    after = _await_membership(
        cfg.etcd, endpoints, gone=int(target.id, 16) if target else None, added=added_id, deadline=deadline
    )
    initial = _initial_cluster(after, added_id, name)
    flags = member_flags(
        name=name, data_dir=path, peer_url=peer_url, initial_cluster=initial, state="existing", token=None
    )
    log.info("member replaced", removed=failed, added=name, added_id=hexid(added_id))
    # The failed member's client URLs only for a member that takes its very place (its peer URL):
    # on another port or host the new member's client URLs are its operator's, unknown here.
    same_place = target is not None and norm_url(peer_url) in {norm_url(u) for u in target.peer_urls}
    return Replacement(
        removed_name=target.label if target else failed,
        removed_id=target.id if target else None,
        added_id=hexid(added_id),
        name=name,
        peer_url=peer_url,
        data_dir=str(path),
        etcd_flags=tuple(flags),
        initial_cluster=initial,
        member_list=tuple(after),
        moved_aside=str(moved) if moved else None,
        learner=learner,
        client_urls=target.client_urls if same_place and target else (),
        cluster_client_urls=tuple(u for m in after if m.started for u in m.client_urls[:1]),
    )


def _already_added(
    members: tuple[MemberHealth, ...], target: MemberHealth | None, failed: str, peer_url: str
) -> int | None:
    """An earlier run that removed the failed member and added this peer URL: carry on from there."""
    existing = next((m for m in members if norm_url(peer_url) in {norm_url(u) for u in m.peer_urls}), None)
    if target is None:
        if existing is not None and not existing.started:
            return int(existing.id, 16)
        names = ", ".join(m.label for m in members)
        raise UsageError(f"--failed {failed}: no such member (members: {names}); give its name or hex id")
    if existing is not None and existing.id != target.id:
        raise UsageError(f"--peer-url {peer_url} already belongs to member {existing.label}")
    return None


def _check_replaceable(
    members: tuple[MemberHealth, ...], target: MemberHealth, name: str, peer_url: str, force: bool
) -> None:
    taken = next((m for m in members if m.name == name and m.id != target.id), None)
    if taken is not None:
        raise UsageError(f"--name {name}: member {taken.id} already has that name")
    healthy = target.reachable and not target.errors
    if healthy and not force:
        raise UnsafeError(
            f"member {target.label} answers and looks healthy: refusing to replace it; if it "
            "must go anyway (e.g. its disk is failing), pass --force"
        )
    voting = [m for m in members if not m.learner]
    alive_after = sum(1 for m in voting if m.reachable and m.id != target.id)
    if alive_after * 2 <= len(voting) - 1 and not target.learner:
        raise UnsafeError(
            f"removing {target.label} would leave {alive_after} of {len(voting) - 1} voting "
            "members answering, below quorum: refusing"
        )


def _endpoints_leader_first(members: tuple[MemberHealth, ...], exclude: MemberHealth | None) -> list[str]:
    alive = [m for m in members if m.reachable and m.endpoint and (exclude is None or m.id != exclude.id)]
    alive.sort(key=lambda m: not m.is_leader)
    return [m.endpoint for m in alive if m.endpoint]


def _with_retry(cfg: EtcdConfig, endpoints: list[str], what: str, fn: Callable[[Member], T], deadline: float) -> T:
    """Run a membership call on the first endpoint that takes it; retry while etcd says "not now"."""
    last = "no endpoint to ask"
    while True:
        for ep in endpoints:
            try:
                with Member(cfg, ep) as member:
                    return fn(member)
            except EtcdUnavailable as exc:
                if not exc.transient:
                    raise
                last = str(exc)
        if time.monotonic() >= deadline:
            raise EtcdUnavailable(f"{what}: etcd still refuses: {last}", EtcdErrorKind.TIMEOUT)
        log.info("etcd refuses the membership change for now; retrying", step=what, error=last)
        time.sleep(0.5)


def _remove(cfg: EtcdConfig, endpoints: list[str], member_id: int, deadline: float) -> None:
    def remove(m: Member) -> None:
        try:
            m.remove_member(member_id)
        except EtcdUnavailable as exc:
            if exc.kind is not EtcdErrorKind.MEMBER_NOT_FOUND:  # else an earlier attempt got through
                raise

    _with_retry(cfg, endpoints, f"member remove {hexid(member_id)}", remove, deadline)


def _add(cfg: EtcdConfig, endpoints: list[str], peer_url: str, deadline: float, *, learner: bool) -> int:
    def add(m: Member) -> int:
        try:
            return m.add_member([peer_url], learner=learner).id
        except EtcdUnavailable as exc:
            if exc.kind is not EtcdErrorKind.MEMBER_EXISTS:
                raise
            # An earlier attempt got through: adopt the member it created.
            found = next((x for x in m.members() if norm_url(peer_url) in map(norm_url, x.peer_urls)), None)
            if found is None:
                raise
            return found.id

    return _with_retry(cfg, endpoints, f"member add {peer_url}", add, deadline)


def _await_membership(
    cfg: EtcdConfig, endpoints: list[str], *, gone: int | None, added: int, deadline: float
) -> list[MemberInfo]:
    """Poll the member list until it shows the change (the failed member gone, the new one present)."""
    while True:
        members = _with_retry(cfg, endpoints, "member list", lambda m: m.members(), deadline)
        ids = {m.id for m in members}
        if added in ids and (gone is None or gone not in ids):
            return members
        if time.monotonic() >= deadline:
            raise EtcdUnavailable(
                "the member list does not show the change yet; run etcd-backup doctor", EtcdErrorKind.TIMEOUT
            )
        time.sleep(0.2)


def _initial_cluster(members: list[MemberInfo], added: int, name: str) -> str:
    """Every member of the list (etcd checks the count), named; the new one under its new name."""
    parts = []
    for m in members:
        label = name if m.id == added else (m.name or hexid(m.id))
        parts += [f"{label}={url}" for url in m.peer_urls]
    return ",".join(parts)
