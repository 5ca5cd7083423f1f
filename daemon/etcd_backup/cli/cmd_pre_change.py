"""`pre-change --reason TEXT`: health gate, then a pinned, verified snapshot and the rollback command."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from .cmd_doctor import add_quota, quota, render_steps
from .cmd_snapshot import render as render_manifest
from .common import Context, Subparsers, add_output, emit_json, reason_text

if TYPE_CHECKING:
    from ..service.prechange import PreChange


def add_parser(sub: Subparsers) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "pre-change",
        help="gate before an HA change: health checks, then a pinned, verified snapshot",
        description="Refuse (exit 4, nothing taken) unless every member answers and has started, a leader "
        "exists, no alarm is raised and every database is below its quota; then take a pinned snapshot, "
        "verify it and print its id and the command that rolls the change back.",
    )
    p.add_argument(
        "--reason", required=True, type=reason_text, help="recorded in the manifest, e.g. 'grow to 3 members'"
    )
    p.add_argument(
        "--drill",
        action="store_true",
        help="also prove the snapshot restores: restore it into a scratch etcd and query it",
    )
    add_quota(p)
    add_output(p)
    return p


def run(args: argparse.Namespace, ctx: Context) -> int:
    from ..service.prechange import pre_change

    result = pre_change(
        ctx.config,
        ctx.snapshot_store,
        reason=args.reason,
        drill=args.drill,
        quota_bytes=quota(args),
        config_path=ctx.config_path,
    )
    copied = ctx.copy_committed()  # the pinned snapshot (and its drill) in the second store too
    if ctx.json:
        emit_json(result.to_dict())
    else:
        print(render(result, copied))
    return 0


def render(r: PreChange, copied: str | None = None) -> str:
    drill = r.manifest.verification.drill
    lines = [
        render_manifest(r.manifest),
        *([f"  copy      {copied}"] if copied else []),
        f"  drill     {'passed' if drill and drill.ok else 'not run (add --drill)'}",
        "",
        f"safe to proceed. Pinned snapshot: {r.manifest.id}",
        "to roll the change back: stop etcd on every member, then run, each on the host it names:",
        *render_steps(r.rollback),
    ]
    return "\n".join(lines)
