"""`restore single|replace-member|cluster|files`: the outage commands of scenarios 3 and 4, and the
control-plane files stored beside a snapshot."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from ..units import counted
from .common import Context, Subparsers, add_output, add_point, add_store, emit_json, point_target

if TYPE_CHECKING:
    from ..runbook import Context as RunbookContext
    from ..service.cpfiles import FilesRestore
    from ..service.rebuild import ClusterRestore, RebuildPlan, RebuiltMember
    from ..service.replace import Replacement


def add_parser(sub: Subparsers) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "restore",
        help="rebuild etcd from a snapshot (single, cluster) or replace a failed member",
        description="single: scenario 3, a one-member cluster whose data dir is lost. "
        "replace-member: scenario 4 with quorum intact. cluster: scenario 4 with quorum lost. "
        "Snapshots are verified before anything is touched; an existing data dir is never deleted, and "
        "one in use by a running etcd (or belonging to a member that still answers) is never touched. "
        "`etcd-backup doctor` prints these commands filled in. "
        "files: the control-plane files ([files] paths) stored with a snapshot, written back below a directory.",
    )
    kinds = p.add_subparsers(dest="restore_kind", metavar="KIND", required=True)
    _add_single(kinds)
    _add_replace(kinds)
    _add_cluster(kinds)
    _add_files(kinds)
    return p


def _common(p: argparse.ArgumentParser) -> None:
    add_output(p)
    p.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def _snapshot_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--snapshot",
        metavar="ID|latest",
        help="snapshot id (see `etcd-backup list`), or latest: the newest verified one of this cluster; with "
        "a --to-* option it may be left out, and latest then means the same: the newest verified snapshot from "
        "which deltas reach the point",
    )
    add_point(p)
    p.add_argument(
        "--force", action="store_true", help="move a non-empty data dir aside to DIR.bak-<UTC time> instead of refusing"
    )
    p.add_argument(
        "--cluster-token",
        metavar="TOKEN",
        help="initial cluster token (default: etcd-restore-<snapshot id>, the same on every host)",
    )
    p.add_argument(
        "--bump-revision",
        type=int,
        default=0,
        metavar="N",
        help="raise the restored revision by N (etcdutl 3.5.10+; what Kubernetes needs)",
    )
    p.add_argument(
        "--mark-compacted",
        action="store_true",
        help="mark the restored revisions compacted, with --bump-revision (etcdutl 3.5.10+)",
    )
    add_store(p)


def _add_single(kinds: Subparsers) -> None:
    p = kinds.add_parser("single", help="scenario 3: rebuild a one-member cluster's data dir from a snapshot")
    _snapshot_args(p)
    p.add_argument("--name", required=True, help="the member name etcd runs with (--name)")
    p.add_argument("--peer-url", required=True, metavar="URL", help="its peer URL, e.g. http://10.0.0.1:2380")
    p.add_argument("--data-dir", metavar="DIR", help="where to build the data dir (default: restore.data_dir)")
    _common(p)


def _add_cluster(kinds: Subparsers) -> None:
    p = kinds.add_parser("cluster", help="scenario 4, quorum lost: rebuild every member from one snapshot")
    _snapshot_args(p)
    p.add_argument(
        "--member",
        action="append",
        default=[],
        metavar="NAME=PEER_URL",
        required=True,
        help="once per member of the new cluster",
    )
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        help="data dir (default: restore.data_dir); must contain {name} when more than one member is rebuilt here",
    )
    p.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help="rebuild only this member (the one on this host); repeatable",
    )
    _common(p)


def _add_replace(kinds: Subparsers) -> None:
    p = kinds.add_parser("replace-member", help="scenario 4, quorum intact: remove a failed member, add a fresh one")
    p.add_argument("--failed", required=True, metavar="NAME|ID", help="the failed member (name or hex id)")
    p.add_argument("--name", required=True, metavar="NEW_NAME", help="name of the new member")
    p.add_argument("--peer-url", required=True, metavar="URL", help="peer URL of the new member")
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        help="the new member's data dir on this host, checked to be empty (default: restore.data_dir)",
    )
    p.add_argument(
        "--force", action="store_true", help="replace a member that still answers; move a non-empty --data-dir aside"
    )
    _common(p)


def _add_files(kinds: Subparsers) -> None:
    p = kinds.add_parser(
        "files",
        help="write a snapshot's control-plane files (pki, encryption config) back below a directory",
        description="Downloads and checks the snapshot's files object (SHA-256, age), then writes every file "
        "below DIR under its original path (DIR/etc/kubernetes/pki/ca.key; --to / puts them back in place) "
        "with its mode. Nothing is written when any file exists already, unless --force.",
    )
    p.add_argument(
        "--snapshot",
        required=True,
        metavar="ID|latest",
        help="snapshot id (see `etcd-backup list`, column FILES), or latest: the newest verified one",
    )
    p.add_argument("--to", required=True, metavar="DIR", help="the directory the archived paths are placed below")
    p.add_argument("--force", action="store_true", help="overwrite files and symlinks that exist already")
    _common(p)


def run(args: argparse.Namespace, ctx: Context) -> int:
    if args.restore_kind == "replace-member":
        return _run_replace(args, ctx)
    if args.restore_kind == "files":
        return _run_files(args, ctx)
    from ..members import parse_member
    from ..service import rebuild

    common: dict[str, Any] = {
        "snapshot": args.snapshot,
        "target": point_target(args),
        "data_dir": args.data_dir,
        "force": args.force,
        "token": args.cluster_token,
        "bump_revision": args.bump_revision,
        "mark_compacted": args.mark_compacted,
        "live_cluster": ctx.live_cluster_id,
        "config_path": ctx.config_path,
    }
    plan: RebuildPlan
    if args.restore_kind == "single":
        plan = rebuild.prepare_single(ctx.config, ctx.store, name=args.name, peer_url=args.peer_url, **common)
    else:
        members = [parse_member(text) for text in args.member]
        plan = rebuild.prepare(ctx.config, ctx.store, members=members, only=args.only, **common)
    for notice in plan.notices:
        print(f"etcd-backup: note: {notice}", file=sys.stderr, flush=True)
    result = rebuild.execute(ctx.config, ctx.store, plan)
    if ctx.json:
        doc = result.to_dict()
        if args.restore_kind == "single":
            doc = {**doc, **result.rebuilt[0].to_dict()}
        emit_json(doc)
    else:
        print(render_restore(result))
    return 0


def _run_replace(args: argparse.Namespace, ctx: Context) -> int:
    from ..service.replace import replace_member

    result = replace_member(
        ctx.config,
        failed=args.failed,
        name=args.name,
        peer_url=args.peer_url,
        data_dir=args.data_dir,
        force=args.force,
        open_store=lambda: ctx.store,
    )
    if ctx.json:
        emit_json(result.to_dict())
    else:
        print(render_replacement(result, ctx.runbook))
    return 0


def _run_files(args: argparse.Namespace, ctx: Context) -> int:
    from pathlib import Path

    from ..service.cpfiles import restore_files

    result = restore_files(
        ctx.config, ctx.store, args.snapshot, Path(args.to), force=args.force, live_cluster=ctx.live_cluster_id
    )
    if ctx.json:
        emit_json(result.to_dict())
    else:
        print(render_files(result))
    return 0


def render_files(r: FilesRestore) -> str:
    doc = r.to_dict()
    replaced = f", {len(doc['overwritten'])} overwritten" if doc["overwritten"] else ""
    lines = [f"{doc['count']} control-plane file(s) of snapshot {r.manifest.id} written below {r.dest}{replaced}"]
    lines += [f"  {w['mode']}  {w['type']:<7}  {w['path']}" for w in doc["written"]]
    if doc["kept_directories"]:
        lines.append(f"existing directories kept as they were: {', '.join(doc['kept_directories'])}")
    return "\n".join(lines)


def _member_block(r: RebuiltMember) -> list[str]:
    moved = f" (its previous contents were moved to {r.moved_aside})" if r.moved_aside else ""
    return [
        f"member {r.name}: data dir {r.data_dir} restored{moved}",
        f"  on {r.name}'s host start etcd with these flags (as a service, or in the background), plus your own "
        "TLS and tuning flags:",
        f"    {r.start_command}",
        "",
    ]


def render_restore(r: ClusterRestore) -> str:
    m = r.manifest
    p = r.plan.point
    what = (
        f"point at revision {m.revision} ({m.keys} keys: snapshot {m.id} at revision {p.base.revision} plus "
        f"{counted(len(p.deltas), 'delta')}, {counted(p.revisions, 'revision')} replayed)"
        if p is not None
        else f"snapshot {m.id} verified (revision {m.revision}, {m.keys} keys)"
    )
    lines = [
        f"{what} and restored with {r.plan.tool.describe()}",
        f"cluster token {r.plan.token}; initial cluster {r.initial_cluster}",
        "",
    ]
    for member in r.rebuilt:
        lines += _member_block(member)
    others = r.others()
    if others:
        lines.append("rebuild the other members on their own hosts with the same snapshot id:")
        lines += [f"  {o.name}: {r.command_for(o.name)}" for o in others]
        lines.append("")
    from ..runbook import AFTER_RESTORE
    from ..service.rebuild import client_urls_or_placeholder

    ctx = r.plan.ctx
    endpoints = client_urls_or_placeholder(r.rebuilt)
    lines += [
        "then:",
        "  start every member; the cluster forms once a majority of them runs"
        if len(r.plan.members) > 1
        else "  start etcd",
        f"  check: {ctx.etcdctl(endpoints, 'endpoint', 'health', '--cluster')}",
        f"         {ctx.etcdctl(endpoints, 'member', 'list', '-w', 'table')}",
        f"         {ctx.etcd_backup('doctor')}",
        f"  once healthy, take a fresh snapshot: {ctx.etcd_backup('snapshot', '--reason', AFTER_RESTORE)}",
    ]
    return "\n".join(lines)


def render_replacement(r: Replacement, ctx: RunbookContext) -> str:
    removed = (
        f"removed member {r.removed_name} ({r.removed_id})"
        if r.removed_id
        else f"member {r.removed_name} was removed already"
    )
    endpoints = list(r.cluster_client_urls)
    lines = [
        f"{removed}; added member {r.name} ({r.added_id}, {r.peer_url}). etcd's member list now:",
        *(f"  {m.name or '(not started yet)':<20} {m.id:x}  {','.join(m.peer_urls)}" for m in r.member_list),
        "",
        f"on {r.name}'s host start etcd with an EMPTY data dir and these flags (as a service, or in the "
        "background), plus your own TLS and tuning flags:",
        f"    {r.start_command}",
        "",
        (
            f"{r.name} is a learner, as the member it replaces was: once it runs and has caught up, "
            f"promote it: {ctx.etcdctl(endpoints, 'member', 'promote', r.added_id)}"
            if r.learner
            else "start it soon: until it runs, the cluster counts a member that is not there."
        ),
        f"check: {ctx.etcdctl(endpoints, 'endpoint', 'health', '--cluster')}",
        f"       {ctx.etcdctl(endpoints, 'member', 'list', '-w', 'table')}",
        f"       {ctx.etcd_backup('doctor')}",
    ]
    if r.moved_aside:
        lines.insert(1, f"(the previous contents of {r.data_dir} were moved to {r.moved_aside})")
    return "\n".join(lines)
