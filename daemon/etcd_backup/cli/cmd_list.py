"""`list`: snapshots in storage, newest first."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from .common import Context, Subparsers, add_output, add_store, emit_json, human_size, table

if TYPE_CHECKING:
    from ..model import Manifest
    from ..storage import Retention


def add_parser(sub: Subparsers) -> argparse.ArgumentParser:
    p = sub.add_parser("list", help="snapshots in storage, newest first")
    add_output(p)
    add_store(p)
    return p


def verification_label(m: Manifest) -> str:
    v = m.verification
    if not v.ok:
        return "FAILED"
    if v.drill is not None:
        return "drilled"
    return "verified"


def files_label(m: Manifest) -> str:
    """How many control-plane files the snapshot carries (`restore files`); blank: none."""
    if m.files is None:
        return ""
    return f"{m.files.count}" + (f" ({len(m.files.skipped)} left out)" if m.files.skipped else "")


def lock_label(retention: Retention | None) -> str:
    from ..model import rfc3339

    return f"{retention.mode} until {rfc3339(retention.until)}" if retention else ""


def run(args: argparse.Namespace, ctx: Context) -> int:
    from .. import manifest as manifests
    from ..model import rfc3339

    listing = manifests.list_snapshots(ctx.store)
    locks = ctx.store.capabilities.locks
    # With Object Lock on, the lock of each snapshot's data object: when prune may delete it.
    held = {m.id: locks.retention(m.object_key) for m in listing.manifests} if locks else {}
    for problem in listing.problems:
        print(f"etcd-backup: warning: {problem.key}: {problem.error}", file=sys.stderr)
    for warning in listing.warnings():
        print(f"etcd-backup: warning: {warning}", file=sys.stderr)
    if ctx.json:
        docs = [m.to_dict() for m in listing.manifests]
        if locks:
            for doc, m in zip(docs, listing.manifests, strict=True):
                r = held[m.id]
                doc["lock"] = {"mode": r.mode, "until": rfc3339(r.until)} if r else None
        emit_json(docs)
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
            files_label(m),
            *([lock_label(held[m.id])] if locks else []),
        ]
        for m in listing.manifests
    ]
    headers = ["ID", "CREATED", "REVISION", "KEYS", "SIZE", "REASON", "PINNED", "VERIFICATION", "FILES"]
    print(table(rows, [*headers, *(["LOCK"] if locks else [])]))
    return 0
