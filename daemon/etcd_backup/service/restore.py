"""Restores: rebuild data dirs from one verified snapshot (scenarios 3 and 4), or replace a member.

Order matters and is the same everywhere: check the arguments and the tool, refuse non-empty
targets, download and verify the snapshot, and only then touch a data dir (an existing one is
moved aside, never deleted). Each rebuilt member gets the flags it must start with.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import structlog

from .. import manifest as manifests
from ..config import Config, EtcdConfig
from ..errors import EtcdUnavailable, ToolError, UnsafeError, UsageError
from ..etcdclient import Member, MemberInfo, hexid
from ..etcdproc import member_args
from ..etcdtools import RestoreTool, find_restore_tool, restore_data_dir
from ..model import Manifest, utcnow
from ..storage import SnapshotStore
from ..verify import fetch_verified
from .doctor import (
    SNAPSHOT_PLACEHOLDER,
    MemberHealth,
    diagnose,
    newest_verified,
    norm_url,
    restore_cluster_command,
)

log = structlog.get_logger(__name__)

T = TypeVar("T")

TOKEN_PREFIX = "etcd-restore-"
DEFAULT_TOKEN = "etcd-cluster"  # etcd's own default; a joining member does not use it
MEMBERSHIP_TIMEOUT = 30.0
# etcd answers these while a membership change is unsafe *for now* (just started, electing, ...).
_RETRYABLE = (
    "unhealthy cluster",
    "not enough started members",
    "too soon",
    "timed out",
    "leader changed",
    "no leader",
    "DEADLINE_EXCEEDED",
    "UNAVAILABLE",
)


def cluster_token(snapshot_id: str) -> str:
    """The same on every host that restores this snapshot, so separate `--only` runs agree."""
    return f"{TOKEN_PREFIX}{snapshot_id}"


# --- arguments ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MemberSpec:
    name: str
    peer_url: str


def check_name(name: str, flag: str = "--name") -> str:
    if not name or any(c in name for c in "=,{}<> \t") or name.startswith("-"):
        raise UsageError(f"{flag}: {name!r} is not a member name (letters, digits, '-', '_', '.')")
    return name


def check_peer_url(url: str, flag: str = "--peer-url") -> str:
    parsed = urlparse(url)
    try:
        port = parsed.port
    except ValueError:
        port = None
    bad_path = parsed.path not in {"", "/"}
    if parsed.scheme not in {"http", "https"} or not parsed.hostname or port is None or bad_path:
        raise UsageError(f"{flag}: {url!r} is not a peer URL like http://10.0.0.1:2380")
    return url.rstrip("/")


def parse_member(text: str) -> MemberSpec:
    name, sep, url = text.partition("=")
    if not sep:
        raise UsageError(f"--member: {text!r} is not NAME=PEER_URL")
    return MemberSpec(check_name(name.strip(), "--member"), check_peer_url(url.strip(), "--member"))


def check_members(members: list[MemberSpec]) -> None:
    if not members:
        raise UsageError("restore cluster needs --member NAME=PEER_URL once per member")
    for attr in ("name", "peer_url"):
        values = [getattr(m, attr) for m in members]
        dupes = sorted({v for v in values if values.count(v) > 1})
        if dupes:
            raise UsageError(f"--member: {attr.replace('_', ' ')} {dupes[0]} given twice")


def check_bump(tool: RestoreTool, bump_revision: int, mark_compacted: bool) -> None:
    if bump_revision < 0:
        raise UsageError("--bump-revision must be a positive number of revisions")
    if mark_compacted and not bump_revision:
        raise UsageError("--mark-compacted needs --bump-revision")
    if (bump_revision or mark_compacted) and not tool.can_bump_revision:
        raise UsageError(
            f"--bump-revision/--mark-compacted need etcdutl 3.5.7 or newer; {tool.describe()} "
            "does not have them (set tools.etcdutl to a newer etcdutl)"
        )


def plan_targets(members: list[MemberSpec], only: Iterable[str], data_dir: str) -> list[tuple[MemberSpec, Path]]:
    """Which members to rebuild on this host, and where."""
    names = [m.name for m in members]
    only = list(dict.fromkeys(only))
    for name in only:
        if name not in names:
            raise UsageError(f"--only {name}: not among the --member names ({', '.join(names)})")
    rebuild = [m for m in members if not only or m.name in only]
    if len(rebuild) > 1 and "{name}" not in data_dir:
        raise UsageError(
            f"--data-dir {data_dir}: with {len(rebuild)} members to rebuild it must contain "
            "{name} (e.g. /var/lib/etcd-{name}), or pass --only NAME"
        )
    targets = [(m, Path(os.path.expanduser(data_dir.replace("{name}", m.name))).absolute()) for m in rebuild]
    paths = [p for _, p in targets]
    if len(set(paths)) != len(paths):
        raise UsageError("--data-dir gives two members the same directory")
    return targets


# --- data dirs ---------------------------------------------------------------------------------


def dir_state(path: Path) -> str:
    """absent, empty (a directory with nothing in it) or occupied."""
    if not path.exists() and not path.is_symlink():
        return "absent"
    if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
        return "empty"
    return "occupied"


def refuse_occupied(path: Path, force: bool) -> None:
    if not force and dir_state(path) == "occupied":
        raise UnsafeError(
            f"data dir {path} is not empty: refusing to restore over it; choose an empty "
            "directory, or pass --force to move it aside (it is never deleted)"
        )


def move_aside(path: Path, now: datetime) -> Path:
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    dest = path.with_name(f"{path.name}.bak-{stamp}")
    n = 1
    while dest.exists() or dest.is_symlink():
        dest = path.with_name(f"{path.name}.bak-{stamp}-{n}")
        n += 1
    os.rename(path, dest)
    log.warning("data dir moved aside", data_dir=str(path), moved_to=str(dest))
    return dest


def clear_target(path: Path, force: bool, now: datetime, *, keep_empty: bool = False) -> Path | None:
    """Make `path` ready: absent stays absent, an empty dir is removed (or kept), an occupied one moved."""
    state = dir_state(path)
    if state == "absent":
        return None
    if state == "empty":
        if not keep_empty:
            path.rmdir()
        return None
    refuse_occupied(path, force)
    return move_aside(path, now)


# --- restore single / cluster ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RebuiltMember:
    name: str
    peer_url: str
    data_dir: str
    etcd_flags: tuple[str, ...]
    moved_aside: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "peer_url": self.peer_url,
            "data_dir": self.data_dir,
            "etcd_flags": list(self.etcd_flags),
            "moved_aside": self.moved_aside,
        }


@dataclass(frozen=True, slots=True)
class ClusterRestore:
    manifest: Manifest
    cluster_token: str
    initial_cluster: str
    members: tuple[MemberSpec, ...]
    rebuilt: tuple[RebuiltMember, ...]
    data_dir: str
    tool: str
    custom_token: bool

    def others(self) -> list[MemberSpec]:
        done = {r.name for r in self.rebuilt}
        return [m for m in self.members if m.name not in done]

    def command_for(self, name: str) -> str:
        """The command that rebuilds member `name` on its own host (same snapshot, same token)."""
        return restore_cluster_command(
            self.manifest.id,
            [(m.name, m.peer_url) for m in self.members],
            self.data_dir,
            only=name,
            token=self.cluster_token if self.custom_token else None,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "snapshot": self.manifest.id,
            "revision": self.manifest.revision,
            "keys": self.manifest.keys,
            "cluster_token": self.cluster_token,
            "initial_cluster": self.initial_cluster,
            "tool": self.tool,
            "members": [r.to_dict() for r in self.rebuilt],
            "not_rebuilt_here": [
                {"name": m.name, "peer_url": m.peer_url, "command": self.command_for(m.name)} for m in self.others()
            ],
        }


def restore_cluster(
    cfg: Config,
    store: SnapshotStore,
    *,
    snapshot: str,
    members: list[MemberSpec],
    data_dir: str,
    only: Iterable[str] = (),
    force: bool = False,
    token: str | None = None,
    bump_revision: int = 0,
    mark_compacted: bool = False,
    now: Callable[[], datetime] = utcnow,
) -> ClusterRestore:
    """Rebuild the data dirs of `members` (or just `only`) from one snapshot as a new cluster."""
    check_members(members)
    if token is not None and not token.strip():
        raise UsageError("--cluster-token must not be empty")
    targets = plan_targets(members, only, data_dir)
    tool = find_restore_tool(cfg.tools.etcdutl or None)
    check_bump(tool, bump_revision, mark_compacted)
    for _, path in targets:
        refuse_occupied(path, force)
    manifest = manifests.resolve(store, snapshot)
    verified = fetch_verified(store, manifest, cfg.storage.spool_dir, identities=cfg.encryption.identities())
    try:
        for _, path in targets:
            refuse_occupied(path, force)
        tok = token or cluster_token(manifest.id)
        initial = ",".join(f"{m.name}={m.peer_url}" for m in members)
        rebuilt = [
            _rebuild_one(
                tool,
                verified.path,
                spec,
                path,
                initial=initial,
                token=tok,
                force=force,
                when=now(),
                bump_revision=bump_revision,
                mark_compacted=mark_compacted,
            )
            for spec, path in targets
        ]
        log.info(
            "data dirs restored", members=[r.name for r in rebuilt], snapshot=manifest.id, revision=manifest.revision
        )
    finally:
        verified.discard()
    return ClusterRestore(
        manifest, tok, initial, tuple(members), tuple(rebuilt), data_dir, tool.describe(), token is not None
    )


def _rebuild_one(
    tool: RestoreTool,
    snapshot_file: Path,
    spec: MemberSpec,
    path: Path,
    *,
    initial: str,
    token: str,
    force: bool,
    when: datetime,
    bump_revision: int,
    mark_compacted: bool,
) -> RebuiltMember:
    moved = clear_target(path, force, when)
    try:
        restore_data_dir(
            tool,
            snapshot_file,
            path,
            name=spec.name,
            peer_url=spec.peer_url,
            initial_cluster=initial,
            token=token,
            bump_revision=bump_revision,
            mark_compacted=mark_compacted,
        )
    except ToolError as exc:
        where = f" (the previous data dir is at {moved})" if moved else ""
        raise ToolError(f"member {spec.name}: {exc}{where}") from None
    flags = member_args(
        name=spec.name, data_dir=path, peer_url=spec.peer_url, initial_cluster=initial, state="new", token=token
    )
    return RebuiltMember(spec.name, spec.peer_url, str(path), tuple(flags), str(moved) if moved else None)


def restore_single(
    cfg: Config,
    store: SnapshotStore,
    *,
    snapshot: str,
    name: str,
    peer_url: str,
    data_dir: str,
    force: bool = False,
    token: str | None = None,
    bump_revision: int = 0,
    mark_compacted: bool = False,
    now: Callable[[], datetime] = utcnow,
) -> ClusterRestore:
    """Scenario 3: a one-member cluster rebuilt from a snapshot."""
    spec = MemberSpec(check_name(name), check_peer_url(peer_url))
    return restore_cluster(
        cfg,
        store,
        snapshot=snapshot,
        members=[spec],
        data_dir=data_dir,
        force=force,
        token=token,
        bump_revision=bump_revision,
        mark_compacted=mark_compacted,
        now=now,
    )


# --- replace-member ----------------------------------------------------------------------------


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
    cluster_token: str
    member_list: tuple[MemberInfo, ...]
    moved_aside: str | None
    client_urls: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "removed": {"name": self.removed_name, "id": self.removed_id},
            "added": {"name": self.name, "id": self.added_id, "peer_url": self.peer_url},
            "name": self.name,
            "data_dir": self.data_dir,
            "etcd_flags": list(self.etcd_flags),
            "initial_cluster": self.initial_cluster,
            "cluster_token": self.cluster_token,
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
    token: str = DEFAULT_TOKEN,
    open_store: Callable[[], SnapshotStore] | None = None,
    timeout: float = MEMBERSHIP_TIMEOUT,
    now: Callable[[], datetime] = utcnow,
) -> Replacement:
    """Scenario 4 with quorum: remove the failed member, then add a fresh one; return after etcd agrees."""
    check_name(name)
    peer_url = check_peer_url(peer_url)
    diag = diagnose(cfg)
    if not diag.members:
        raise UnsafeError(
            "no etcd member answers (quorum lost, or wrong etcd.endpoints): a member cannot be "
            f"replaced; {_rebuild_hint(diag.members, open_store)}"
        )
    if not diag.quorum:
        counts = f"{diag.reachable_voting} of {diag.voting} voting members answer"
        raise UnsafeError(
            f"quorum is lost ({counts}): a member cannot be replaced; {_rebuild_hint(diag.members, open_store)}"
        )
    target = find_member(diag.members, failed)
    resumed = _already_added(diag.members, target, failed, peer_url)
    if target is not None:
        _check_replaceable(diag.members, target, name, peer_url, force)
    path = Path(os.path.expanduser(data_dir)).absolute() if data_dir else None
    if path is not None:
        refuse_occupied(path, force)
    endpoints = _endpoints_leader_first(diag.members, exclude=target)
    deadline = time.monotonic() + timeout
    moved = clear_target(path, force, now(), keep_empty=True) if path is not None else None
    if target is not None:
        _remove(cfg.etcd, endpoints, int(target.id, 16), deadline)
    try:
        added_id = resumed if resumed is not None else _add(cfg.etcd, endpoints, peer_url, deadline)
    except EtcdUnavailable as exc:
        if target is None:
            raise
        raise EtcdUnavailable(
            f"member {target.label} was removed, but adding {name} failed ({exc}); add it "
            f"with: etcdctl member add {name} --peer-urls={peer_url}"
        ) from None
    after = _await_membership(
        cfg.etcd, endpoints, gone=int(target.id, 16) if target else None, added=added_id, deadline=deadline
    )
    initial = _initial_cluster(after, added_id, name)
    shown_dir = str(path) if path is not None else f"{name}.etcd"
    flags = member_args(
        name=name, data_dir=shown_dir, peer_url=peer_url, initial_cluster=initial, state="existing", token=token
    )
    log.info("member replaced", removed=failed, added=name, added_id=hexid(added_id))
    client_urls = tuple(u for m in after if m.started for u in m.client_urls)
    return Replacement(
        removed_name=target.label if target else failed,
        removed_id=target.id if target else None,
        added_id=hexid(added_id),
        name=name,
        peer_url=peer_url,
        data_dir=shown_dir,
        etcd_flags=tuple(flags),
        initial_cluster=initial,
        cluster_token=token,
        member_list=tuple(after),
        moved_aside=str(moved) if moved else None,
        client_urls=client_urls,
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


def _rebuild_hint(members: tuple[MemberHealth, ...], open_store: Callable[[], SnapshotStore] | None) -> str:
    snapshot = SNAPSHOT_PLACEHOLDER
    if open_store is not None:
        manifest, _ = newest_verified(open_store)
        snapshot = manifest.id if manifest else snapshot
    pairs = [(m.name, m.peer_url) for m in members if m.started] or [("<NAME>", "<PEER_URL>")]
    data_dir = "/var/lib/etcd-{name}" if len(pairs) > 1 else "<DATA_DIR>"
    return f"rebuild every member from one snapshot: {restore_cluster_command(snapshot, pairs, data_dir)}"


def _endpoints_leader_first(members: tuple[MemberHealth, ...], exclude: MemberHealth | None) -> list[str]:
    alive = [m for m in members if m.reachable and m.endpoint and (exclude is None or m.id != exclude.id)]
    alive.sort(key=lambda m: not m.is_leader)
    return [m.endpoint for m in alive if m.endpoint]


def _retryable(message: str) -> bool:
    return any(word.lower() in message.lower() for word in _RETRYABLE)


def _with_retry(cfg: EtcdConfig, endpoints: list[str], what: str, fn: Callable[[Member], T], deadline: float) -> T:
    """Run a membership call on the first endpoint that takes it; retry while etcd says "not now"."""
    last = "no endpoint to ask"
    while True:
        for ep in endpoints:
            try:
                with Member(cfg, ep) as member:
                    return fn(member)
            except EtcdUnavailable as exc:
                if not _retryable(str(exc)):
                    raise
                last = str(exc)
        if time.monotonic() >= deadline:
            raise EtcdUnavailable(f"{what}: etcd still refuses: {last}")
        log.info("etcd refuses the membership change for now; retrying", step=what, error=last)
        time.sleep(0.5)


def _remove(cfg: EtcdConfig, endpoints: list[str], member_id: int, deadline: float) -> None:
    def remove(m: Member) -> None:
        try:
            m.remove_member(member_id)
        except EtcdUnavailable as exc:
            if "member not found" not in str(exc):  # an earlier attempt got through
                raise

    _with_retry(cfg, endpoints, f"member remove {hexid(member_id)}", remove, deadline)


def _add(cfg: EtcdConfig, endpoints: list[str], peer_url: str, deadline: float) -> int:
    def add(m: Member) -> int:
        try:
            return m.add_member([peer_url]).id
        except EtcdUnavailable as exc:
            if "already exist" not in str(exc).lower():
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
            raise EtcdUnavailable("the member list does not show the change yet; run etcd-backup doctor")
        time.sleep(0.2)


def _initial_cluster(members: list[MemberInfo], added: int, name: str) -> str:
    """Every member of the list (etcd checks the count), named; the new one under its new name."""
    parts = []
    for m in members:
        label = name if m.id == added else (m.name or hexid(m.id))
        parts += [f"{label}={url}" for url in m.peer_urls]
    return ",".join(parts)
