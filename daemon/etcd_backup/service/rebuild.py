"""`restore single` and `restore cluster`: rebuild members' data dirs from one verified snapshot.

Two steps, so the operator hears what matters before anything happens: `prepare` checks the
arguments, the tool and every target (never a non-empty dir without --force, never a dir in
use by a running etcd or belonging to a member that still answers, --force or not) and
resolves the snapshot; `execute` downloads and verifies it and only then touches data dirs
(an existing one is moved aside, never deleted). Each rebuilt member gets the flags it must
start with.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import structlog

from .. import chain, datadir
from .. import manifest as manifests
from ..config import Config
from ..errors import ToolError, UsageError
from ..etcdtools import BUMP_REVISION_SINCE, RestoreTool, find_restore_tool, restore_data_dir
from ..manifest import LiveCluster
from ..members import MemberSpec, check_members, check_name, check_peer_url, cluster_token, member_flags, plan_targets
from ..model import Manifest, utcnow
from ..runbook import CLIENT_PLACEHOLDER, Context, Host, restore_cluster_command, start_command
from ..storage import SnapshotStore
from ..verify import fetch_verified
from . import point
from .guard import refuse_unsafe, still_running
from .point import Target as PointTarget

log = structlog.get_logger(__name__)

# What Kubernetes wants after going back in time: revisions past anything a client has seen.
K8S_BUMP = 1_000_000_000


@dataclass(frozen=True, slots=True)
class Target:
    spec: MemberSpec
    path: Path
    client_urls: tuple[str, ...]  # from the snapshot's member list when the member is on the same host


@dataclass(frozen=True, slots=True)
class RebuildPlan:
    """Everything checked; nothing touched yet."""

    ctx: Context
    manifest: Manifest
    members: tuple[MemberSpec, ...]
    targets: tuple[Target, ...]
    tool: RestoreTool
    token: str
    custom_token: bool
    data_dir: str
    force: bool
    bump_revision: int
    mark_compacted: bool
    notices: tuple[str, ...]  # what the operator should hear before the restore runs
    point: chain.Plan | None = None  # restore to a point: this base plus deltas up to a revision


@dataclass(frozen=True, slots=True)
class RebuiltMember:
    name: str
    peer_url: str
    data_dir: str
    etcd_flags: tuple[str, ...]
    client_urls: tuple[str, ...]
    moved_aside: str | None

    @property
    def start_command(self) -> str:
        return start_command(self.etcd_flags, self.client_urls)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "peer_url": self.peer_url,
            "data_dir": self.data_dir,
            "etcd_flags": list(self.etcd_flags),
            "client_urls": list(self.client_urls),
            "start_command": self.start_command,
            "moved_aside": self.moved_aside,
        }


@dataclass(frozen=True, slots=True)
class ClusterRestore:
    plan: RebuildPlan
    initial_cluster: str
    rebuilt: tuple[RebuiltMember, ...]
    restored: Manifest  # what the data dirs hold: the snapshot, or the point made from it

    @property
    def manifest(self) -> Manifest:
        return self.restored

    def others(self) -> list[MemberSpec]:
        done = {r.name for r in self.rebuilt}
        return [m for m in self.plan.members if m.name not in done]

    def command_for(self, name: str) -> str:
        """The command that rebuilds member `name` on its own host (same snapshot, same point, same token)."""
        p = self.plan
        ctx = p.ctx if p.point is None else replace(p.ctx, point=("--to-revision", str(p.point.target)))
        return restore_cluster_command(
            ctx,
            p.manifest.id,
            [Host(m.name, m.peer_url) for m in p.members],
            only=name,
            token=p.token if p.custom_token else None,
            force=p.force,
            data_dir=p.data_dir,
        )

    def to_dict(self) -> dict[str, Any]:
        m = self.restored
        p = self.plan.point
        return {
            "snapshot": m.id,
            "revision": m.revision,
            "keys": m.keys,
            "point": {"revision": p.target, "deltas": len(p.deltas), "revisions_replayed": p.revisions} if p else None,
            "cluster_token": self.plan.token,
            "initial_cluster": self.initial_cluster,
            "tool": self.plan.tool.describe(),
            "notices": list(self.plan.notices),
            "members": [r.to_dict() for r in self.rebuilt],
            "not_rebuilt_here": [
                {"name": o.name, "peer_url": o.peer_url, "command": self.command_for(o.name)} for o in self.others()
            ],
        }


def check_bump(tool: RestoreTool, bump_revision: int, mark_compacted: bool) -> None:
    if bump_revision < 0:
        raise UsageError("--bump-revision must be a positive number of revisions")
    if mark_compacted and not bump_revision:
        raise UsageError("--mark-compacted needs --bump-revision")
    if (bump_revision or mark_compacted) and not tool.can_bump_revision:
        raise UsageError(
            f"--bump-revision/--mark-compacted need etcdutl {BUMP_REVISION_SINCE} or newer; {tool.describe()} "
            "does not have them (set tools.etcdutl to a newer etcdutl)"
        )


def bump_notice(tool: RestoreTool, bump_revision: int) -> str | None:
    """What a Kubernetes operator must know before the restore runs, given the tool at hand."""
    if bump_revision:
        return None
    if tool.can_bump_revision:
        return (
            f"for Kubernetes, restore with --bump-revision {K8S_BUMP} --mark-compacted ({tool.describe()} has "
            "them): clients then re-list instead of missing changes; otherwise restart every kube-apiserver after"
        )
    return (
        f"{tool.describe()} has no --bump-revision (etcdutl {BUMP_REVISION_SINCE}+ has it): under Kubernetes, "
        "restart every kube-apiserver once etcd is healthy, so that watch caches re-list"
    )


def _client_urls(manifest: Manifest, spec: MemberSpec) -> tuple[str, ...]:
    """The member's client URLs as the snapshot recorded them, if it stays on the same host."""
    known = manifest.member_named(spec.name)
    if known is None or not known.peer_urls:
        return ()
    if urlparse(known.peer_urls[0]).hostname != urlparse(spec.peer_url).hostname:
        return ()
    return known.client_urls


def prepare(
    cfg: Config,
    store: SnapshotStore,
    *,
    snapshot: str | None,
    members: list[MemberSpec],
    data_dir: str | None = None,
    only: Iterable[str] = (),
    force: bool = False,
    token: str | None = None,
    bump_revision: int = 0,
    mark_compacted: bool = False,
    live_cluster: LiveCluster = None,
    config_path: str | None = None,
    target: PointTarget | None = None,
) -> RebuildPlan:
    """Check everything a rebuild needs; touch nothing. `snapshot` may be None with a target."""
    check_members(members)
    if token is not None and not token.strip():
        raise UsageError("--cluster-token must not be empty")
    template = data_dir or cfg.restore.data_dir
    planned = plan_targets(members, only, template)
    tool = find_restore_tool(cfg.tools.etcdutl or None)
    check_bump(tool, bump_revision, mark_compacted)
    pointed: chain.Plan | None = None
    notices = [n for n in [bump_notice(tool, bump_revision)] if n]
    if target is not None:
        pointed = point.plan(
            store,
            target,
            snapshot=snapshot,
            live_cluster=live_cluster,
            identities=cfg.encryption.identities(),
            work_dir=cfg.storage.spool_dir,
        )
        manifest = pointed.base
        notices += [n for n in [point.after_the_newest(store, pointed, target)] if n]
    elif snapshot is None:
        raise UsageError("name a snapshot (--snapshot ID|latest) or a point (--to-latest, --to-revision, --to-time)")
    else:
        manifest = manifests.resolve(store, snapshot, live_cluster)
        newer = point.newer_revisions(store, manifest)
        if newer:
            notices.append(
                f"deltas hold {newer} newer revisions after snapshot {manifest.id} (up to revision "
                f"{manifest.revision + newer}); --to-latest restores them too"
            )
    targets = tuple(Target(spec, path, _client_urls(manifest, spec)) for spec, path in planned)
    refuse_unsafe(cfg, [t.path for t in targets], force)
    running = still_running(cfg, manifest, manifest.revision if pointed is None else pointed.target)
    if running:
        notices.insert(0, running)
    derived = cluster_token(manifest.id if pointed is None else f"{manifest.id}-r{pointed.target}")
    return RebuildPlan(
        ctx=Context(cfg.etcd, cfg.restore.data_dir, config_path),
        manifest=manifest,
        members=tuple(members),
        targets=targets,
        tool=tool,
        token=token or derived,
        custom_token=token is not None,
        data_dir=template,
        force=force,
        bump_revision=bump_revision,
        mark_compacted=mark_compacted,
        notices=tuple(notices),
        point=pointed,
    )


def prepare_single(
    cfg: Config, store: SnapshotStore, *, snapshot: str | None, name: str, peer_url: str, **kwargs: Any
) -> RebuildPlan:
    """Scenario 3: a one-member cluster rebuilt from a snapshot."""
    spec = MemberSpec(check_name(name), check_peer_url(peer_url))
    return prepare(cfg, store, snapshot=snapshot, members=[spec], **kwargs)


def execute(
    cfg: Config, store: SnapshotStore, plan: RebuildPlan, *, now: Callable[[], datetime] = utcnow
) -> ClusterRestore:
    """Verify the snapshot, re-check the targets, then rebuild each one."""
    identities = cfg.encryption.identities()
    if plan.point is not None:
        verified = point.materialise(cfg, store, plan.point, identities=identities, work_dir=cfg.storage.spool_dir)
    else:
        verified = fetch_verified(store, plan.manifest, cfg.storage.spool_dir, identities=identities)
    try:
        refuse_unsafe(cfg, [t.path for t in plan.targets], plan.force)
        initial = ",".join(f"{m.name}={m.peer_url}" for m in plan.members)
        rebuilt = tuple(_rebuild_one(plan, verified.path, t, initial, now()) for t in plan.targets)
        log.info(
            "data dirs restored",
            members=[r.name for r in rebuilt],
            snapshot=plan.manifest.id,
            revision=verified.manifest.revision,
        )
    finally:
        verified.discard()
    return ClusterRestore(plan, initial, rebuilt, verified.manifest)


def _rebuild_one(plan: RebuildPlan, snapshot_file: Path, t: Target, initial: str, when: datetime) -> RebuiltMember:
    moved = None
    state = datadir.state(t.path)
    if state is datadir.DirState.EMPTY:
        t.path.rmdir()
    elif state is datadir.DirState.OCCUPIED:
        moved = datadir.move_aside(t.path, when)
    try:
        restore_data_dir(
            plan.tool,
            snapshot_file,
            t.path,
            name=t.spec.name,
            peer_url=t.spec.peer_url,
            initial_cluster=initial,
            token=plan.token,
            bump_revision=plan.bump_revision,
            mark_compacted=plan.mark_compacted,
        )
    except ToolError as exc:
        where = f" (the previous data dir is at {moved})" if moved else ""
        raise ToolError(f"member {t.spec.name}: {exc}{where}") from None
    flags = member_flags(
        name=t.spec.name,
        data_dir=t.path,
        peer_url=t.spec.peer_url,
        initial_cluster=initial,
        state="new",
        token=plan.token,
    )
    return RebuiltMember(
        t.spec.name, t.spec.peer_url, str(t.path), tuple(flags), t.client_urls, str(moved) if moved else None
    )


def client_urls_or_placeholder(rebuilt: Iterable[RebuiltMember]) -> list[str]:
    return [u for r in rebuilt for u in r.client_urls[:1]] or [CLIENT_PLACEHOLDER]
