"""`verify ID|latest [--drill]`: re-download and check a stored snapshot."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from .common import Context, Subparsers, add_output, add_store, emit_json

if TYPE_CHECKING:
    from ..model import Manifest


def add_parser(sub: Subparsers) -> argparse.ArgumentParser:
    p = sub.add_parser("verify", help="re-download a stored snapshot and check it")
    p.add_argument("snapshot", metavar="ID|latest")
    p.add_argument("--drill", action="store_true", help="also restore it into a scratch etcd")
    add_output(p)
    add_store(p)
    return p


def run(args: argparse.Namespace, ctx: Context) -> int:
    from .. import manifest as manifests
    from ..verify import verify_stored

    cfg = ctx.config
    manifest = manifests.resolve(ctx.store, args.snapshot, ctx.live_cluster_id)
    identities = cfg.encryption.identities()
    if manifest.encryption is not None and identities is None and not args.drill:
        return _verify_without_identity(ctx, manifest)
    verified = verify_stored(ctx.store, manifest, cfg.storage.spool_dir, identities=identities)
    result: dict[str, Any] = {
        "id": manifest.id,
        "ok": True,
        "hash": verified.hash_check.to_dict(),
        "structure": verified.structure_check.to_dict(),
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
        )
        if outcome is not None:
            print(f"drill: {'ok' if outcome.check.ok else 'FAILED'} {outcome.check.error or ''}".rstrip())
    if outcome is not None:
        from ..service.drill import require_passed

        require_passed(outcome, "do not rely on it for a restore")
    return 0


def _verify_without_identity(ctx: Context, manifest: Manifest) -> int:
    """A write-only host (recipients, no identity): prove what it can, the stored bytes."""
    from ..verify import check_stored

    check = check_stored(ctx.store, manifest, ctx.config.storage.spool_dir)
    note = "structure not checked: the snapshot is encrypted and reading it needs encryption.identity_file"
    if ctx.json:
        emit_json(
            {"id": manifest.id, "ok": True, "hash": check.to_dict(), "structure": None, "drill": None, "note": note}
        )
    else:
        print(f"snapshot {manifest.id}: stored object ok (size and SHA-256 match the manifest); {note}")
    return 0
