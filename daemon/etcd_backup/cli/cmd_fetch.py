"""`fetch ID|latest --to FILE`: download and verify a snapshot to a file."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UsageError
from .common import Context, Subparsers, add_output, add_store, emit_json


def add_parser(sub: Subparsers) -> argparse.ArgumentParser:
    p = sub.add_parser("fetch", help="download and verify a snapshot to a file")
    p.add_argument("snapshot", metavar="ID|latest")
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

    manifest = manifests.resolve(ctx.store, args.snapshot, ctx.live_cluster_id)
    # Download next to the destination so the final step is a rename.
    verified = fetch_verified(
        ctx.store, manifest, str(dest.absolute().parent), record=True, identities=ctx.config.encryption.identities()
    )
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
        print(f"snapshot {manifest.id} (revision {manifest.revision}) verified and written to {path}")
        print(f"restore it with: etcdutl snapshot restore {path} --data-dir <DIR> ...")
    return 0
