"""`fetch ID|latest --to FILE [--to-latest|--to-revision REV|--to-time T]`: a verified snapshot
file, of a stored full snapshot or of a point the deltas after it reach."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import UsageError
from ..units import counted
from .common import Context, Subparsers, add_output, add_point, add_store, emit_json, point_target


def add_parser(sub: Subparsers) -> argparse.ArgumentParser:
    p = sub.add_parser("fetch", help="download and verify a snapshot (or make one of a point) to a file")
    p.add_argument(
        "snapshot", metavar="ID|latest", nargs="?", help="the full snapshot (may be left out with a --to-* option)"
    )
    add_point(p)
    p.add_argument("--to", required=True, metavar="FILE", help="where to write the snapshot file")
    p.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    add_output(p)
    add_store(p)
    return p


def run(args: argparse.Namespace, ctx: Context) -> int:
    dest = Path(args.to)
    if dest.exists() and not args.force:
        raise UsageError(f"{dest} exists; choose another --to or pass --force")
    if dest.is_dir():
        raise UsageError(f"{dest} is a directory; --to names the snapshot file to write")
    from .. import manifest as manifests
    from ..verify import fetch_verified, place

    target = point_target(args)
    work = str(dest.absolute().parent)  # beside the destination, so the final step is a rename
    identities = ctx.config.encryption.identities()
    if target is not None:
        from ..service import point

        plan = point.plan(
            ctx.store,
            target,
            snapshot=args.snapshot,
            live_cluster=ctx.live_cluster_id,
            identities=identities,
            work_dir=work,
        )
        if note := point.after_the_newest(ctx.store, plan, target):
            print(f"etcd-backup: note: {note}", file=sys.stderr, flush=True)
        verified = point.materialise(ctx.config, ctx.store, plan, identities=identities, work_dir=work)
        what = (
            f"point at revision {plan.target} (snapshot {plan.base.id} at revision {plan.base.revision} plus "
            f"{counted(len(plan.deltas), 'delta')})"
        )
    elif args.snapshot is None:
        raise UsageError("name a snapshot (ID or latest) or a point (--to-latest, --to-revision, --to-time)")
    else:
        manifest = manifests.resolve(ctx.store, args.snapshot, ctx.live_cluster_id)
        verified = fetch_verified(ctx.store, manifest, work, record=True, identities=identities)
        what = f"snapshot {manifest.id} (revision {manifest.revision})"
    manifest = verified.manifest
    path = place(verified, dest)
    if ctx.json:
        emit_json(
            {
                "id": manifest.id,
                "path": str(path),
                "revision": manifest.revision,
                "db_size": manifest.db_size,
                "sha256": manifest.db_sha256,
            }
        )
    else:
        print(f"{what} verified and written to {path}")
        from ..etcdtools import restore_tool_kind  # not at import: every command's start-up would pay for it

        # etcd 3.4 has no etcdutl: its etcdctl restores there.
        tool = (
            "ETCDCTL_API=3 etcdctl" if restore_tool_kind(ctx.config.tools.etcdutl or None) == "etcdctl" else "etcdutl"
        )
        print(f"restore it with: {tool} snapshot restore {path} --data-dir DATA_DIR ...")
    return 0
