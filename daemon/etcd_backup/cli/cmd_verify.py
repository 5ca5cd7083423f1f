"""`verify ID|latest [--drill [--to-latest]]`: re-download and check a stored snapshot (and with
`--drill`, restore it, or the newest point its deltas reach, into a scratch etcd); `verify --chain
[ID|latest]`: every delta of its chain downloaded and checked, revision by revision."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from ..errors import IntegrityError, UsageError
from ..units import counted
from .common import Context, Subparsers, add_output, add_store, emit_json

if TYPE_CHECKING:
    from ..model import Manifest


def add_parser(sub: Subparsers) -> argparse.ArgumentParser:
    p = sub.add_parser("verify", help="re-download a stored snapshot (or a chain of deltas) and check it")
    p.add_argument("snapshot", metavar="ID|latest", nargs="?", default="latest")
    p.add_argument("--drill", action="store_true", help="also restore it into a scratch etcd")
    p.add_argument(
        "--to-latest",
        action="store_true",
        help="with --drill: restore the newest point (snapshot plus deltas) and compare it with the live cluster",
    )
    p.add_argument(
        "--chain",
        action="store_true",
        help="check every delta after the snapshot: hashes and revision continuity (exit 3 on damage or a gap)",
    )
    add_output(p)
    add_store(p)
    return p


def run(args: argparse.Namespace, ctx: Context) -> int:
    from .. import manifest as manifests
    from ..verify import check_files, verify_stored

    cfg = ctx.config
    if args.chain:
        return _verify_chain(args, ctx)
    if args.to_latest and not args.drill:
        raise UsageError("--to-latest needs --drill (a point is proven by restoring it)")
    if args.to_latest:
        return _drill_point(args, ctx)
    manifest = manifests.resolve(ctx.store, args.snapshot, ctx.live_cluster_id)
    identities = cfg.encryption.identities()
    if manifest.encryption is not None and identities is None and not args.drill:
        return _verify_without_identity(ctx, manifest)
    verified = verify_stored(ctx.store, manifest, cfg.storage.spool_dir, identities=identities)
    try:
        files = check_files(ctx.store, manifest, cfg.storage.spool_dir)
    except BaseException:
        verified.discard()
        raise
    result: dict[str, Any] = {
        "id": manifest.id,
        "ok": True,
        "hash": verified.hash_check.to_dict(),
        "structure": verified.structure_check.to_dict(),
        "files": files,
        "drill": None,
    }
    outcome = None
    try:
        if args.drill:
            from ..service.drill import drill_and_record

            outcome = drill_and_record(cfg, ctx.store, manifest, verified=verified)
            result["drill"] = outcome.check.to_dict()
            result["ok"] = outcome.check.ok
    finally:
        verified.discard()
    if ctx.json:
        emit_json(result)
    else:
        print(
            f"snapshot {manifest.id}: hash ok, structure ok (revision {verified.status.revision}, "
            f"{verified.status.total_key} bolt entries)"
            + (f", control-plane files ok ({files['count']})" if files else "")
        )
        if outcome is not None:
            print(f"drill: {'ok' if outcome.check.ok else 'FAILED'} {outcome.check.error or ''}".rstrip())
    if outcome is not None:
        from ..service.drill import require_passed

        require_passed(outcome, "do not rely on it for a restore")
    return 0


def _verify_chain(args: argparse.Namespace, ctx: Context) -> int:
    from ..service.history import verify_chain

    proof = verify_chain(
        ctx.store,
        args.snapshot,
        live_cluster=ctx.live_cluster_id,
        identities=ctx.config.encryption.identities(),
        work_dir=ctx.config.storage.spool_dir,
    )
    doc = proof.to_dict()
    if ctx.json:
        emit_json(doc)
    else:
        events = f", {doc['events']} events" if doc["events"] is not None else f"; {doc['note']}"
        print(
            f"chain of {doc['snapshot']}: {doc['deltas']} deltas checked, revisions {doc['from_revision']} to "
            f"{doc['to_revision']}{events}"
        )
        for g in doc["gaps"]:
            print(f"  GAP: revisions {g['after_revision'] + 1} to {g['before_revision'] - 1} are in no delta")
    if not proof.ok:
        raise IntegrityError(f"chain of {doc['snapshot']} has {len(doc['gaps'])} gap(s): not every revision restores")
    return 0


def _drill_point(args: argparse.Namespace, ctx: Context) -> int:
    from ..service.drill import drill_latest_point, require_passed

    outcome = drill_latest_point(ctx.config, ctx.store, live_cluster=ctx.live_cluster_id)
    if ctx.json:
        emit_json({"id": outcome.manifest.id, "ok": outcome.check.ok, "drill": outcome.check.to_dict()})
    else:
        d = outcome.check.detail
        deltas = counted(int(d.get("deltas") or 0), "delta")
        print(
            f"point at revision {d.get('revision')} (snapshot {outcome.manifest.id} + {deltas}): "
            f"drill {'ok' if outcome.check.ok else 'FAILED'} {outcome.check.error or ''}".rstrip()
        )
    require_passed(outcome, "do not rely on this point for a restore")
    return 0


def _verify_without_identity(ctx: Context, manifest: Manifest) -> int:
    """A write-only host (recipients, no identity): prove what it can, the stored bytes."""
    from ..verify import check_files, check_stored

    check = check_stored(ctx.store, manifest, ctx.config.storage.spool_dir)
    files = check_files(ctx.store, manifest, ctx.config.storage.spool_dir)
    note = "structure not checked: the snapshot is encrypted and reading it needs encryption.identity_file"
    if ctx.json:
        emit_json(
            {
                "id": manifest.id,
                "ok": True,
                "hash": check.to_dict(),
                "structure": None,
                "files": files,
                "drill": None,
                "note": note,
            }
        )
    else:
        also = " and control-plane files" if files else ""
        print(f"snapshot {manifest.id}: stored object{also} ok (size and SHA-256 match the manifest); {note}")
    return 0
