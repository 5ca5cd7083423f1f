"""`snapshot`: take one snapshot now, verify it, upload it; print the manifest."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from .common import Context, Subparsers, add_output, emit_json, human_size, reason_text

if TYPE_CHECKING:
    from ..model import Manifest


def add_parser(sub: Subparsers) -> argparse.ArgumentParser:
    p = sub.add_parser("snapshot", help="take one snapshot now, verify and upload it")
    p.add_argument("--reason", default="manual", type=reason_text, help="recorded in the manifest (default: manual)")
    p.add_argument("--pin", action="store_true", help="keep it for retention.keep_pinned_for")
    p.add_argument(
        "--from-survivor",
        action="store_true",
        help="when quorum is lost, take it from the member that still answers with the newest data (no leader "
        "needed): what `doctor` says to save before a rebuild",
    )
    add_output(p)
    return p


def render(m: Manifest) -> str:
    lines = [
        f"snapshot {m.id} stored and verified",
        f"  created   {m.created_at}  reason {m.reason}{'  pinned' if m.pinned else ''}",
        f"  source    {m.endpoint} (member {m.member_id}, cluster {m.cluster_id}, etcd {m.etcd_version})",
        f"  content   revision {m.revision}, {m.keys} keys, db {human_size(m.db_size)}",
        f"  object    {m.object_key} ({human_size(m.object_size)}, {m.compression}"
        f"{', age' if m.encryption else ''}) sha256 {m.object_sha256}",
    ]
    if m.files is not None:
        f = m.files
        lines.append(
            f"  files     {f.object_key} ({f.count} files, {human_size(f.object_size)}) sha256 {f.object_sha256}"
        )
        lines += [f"  warning   {s.path} not archived: {s.reason}" for s in f.skipped]
    lines.append(f"  took      {m.duration_seconds:.2f}s")
    return "\n".join(lines)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from ..service.backup import take_snapshot

    ctx.check_copy_store()
    manifest = take_snapshot(
        ctx.config, ctx.snapshot_store, reason=args.reason, pinned=args.pin, from_survivor=args.from_survivor
    )
    copied = ctx.copy_committed()  # after the commit; never fails the command
    if ctx.json:
        emit_json(manifest.to_dict())
    else:
        print(render(manifest) + (f"\n  copy      {copied}" if copied else ""))
    return 0
