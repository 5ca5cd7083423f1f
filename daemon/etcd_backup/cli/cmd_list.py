"""`list`: snapshots in storage, newest first."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from .common import Context, Subparsers, add_output, emit_json, human_size, table

if TYPE_CHECKING:
    from ..model import Manifest


def add_parser(sub: Subparsers) -> argparse.ArgumentParser:
    p = sub.add_parser("list", help="snapshots in storage, newest first")
    add_output(p)
    return p


def verification_label(m: Manifest) -> str:
    v = m.verification
    if not v.ok:
        return "FAILED"
    if v.drill is not None:
        return "drilled"
    return "verified"


def run(args: argparse.Namespace, ctx: Context) -> int:
    from .. import manifest as manifests

    listing = manifests.list_snapshots(ctx.store)
    for problem in listing.problems:
        print(f"etcd-backup: warning: {problem.key}: {problem.error}", file=sys.stderr)
    for warning in listing.warnings():
        print(f"etcd-backup: warning: {warning}", file=sys.stderr)
    if ctx.json:
        emit_json([m.to_dict() for m in listing.manifests])
        return 0
    if not listing.manifests:
        print(f"no snapshots in {ctx.store.description}")
        return 0
    rows = [
        [
            m.id,
            m.created_at,
            str(m.revision),
            str(m.keys),
            human_size(m.object_size),
            m.reason,
            "yes" if m.pinned else "",
            verification_label(m),
        ]
        for m in listing.manifests
    ]
    print(table(rows, ["ID", "CREATED", "REVISION", "KEYS", "SIZE", "REASON", "PINNED", "VERIFICATION"]))
    return 0
