"""`timeline`: what can be restored to which revision and time, chain by chain, newest first."""

from __future__ import annotations

import argparse

from ..units import counted
from .common import Context, Subparsers, add_output, add_store, emit_json, table


def add_parser(sub: Subparsers) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "timeline",
        help="what can be restored: each full snapshot's chain of deltas, the revisions and times it covers, gaps",
        description="Reads storage only (works while etcd is down): for each chain, its full snapshot, the first "
        "and last revision and time it covers, how many deltas, and any gaps; and the newest restorable point.",
    )
    add_output(p)
    add_store(p)
    return p


def run(args: argparse.Namespace, ctx: Context) -> int:
    from ..service.history import timeline

    t = timeline(ctx.store)
    doc = t.to_dict()
    if ctx.json:
        emit_json(doc)
        return 0
    if not t.chains:
        print(f"nothing to restore in {ctx.store.description}: no verified full snapshot")
        return 0
    rows = [
        [
            c["snapshot"],
            c["cluster_id"],
            str(c["from_revision"]),
            c["from_time"],
            str(c["to_revision"]),
            c["to_time"],
            str(c["deltas"]),
            ", ".join(f"{g['after_revision'] + 1}-{g['before_revision'] - 1}" for g in c["gaps"]) or "-",
        ]
        for c in doc["chains"]
    ]
    headers = ["SNAPSHOT", "CLUSTER", "FROM REV", "FROM TIME", "TO REV", "TO TIME", "DELTAS", "MISSING REVISIONS"]
    print(table(rows, headers))
    n = doc["newest"]
    if n:
        after = f" + {counted(n['deltas'], 'delta')}" if n["deltas"] else ", no delta after it"
        what = f"snapshot {n['snapshot']}{after}"
        print(f"\nnewest restorable point: revision {n['revision']} at {n['time']} ({what})")
    return 0
