"""`prune [--dry-run]`: apply retention now; print what is (or would be) deleted and why."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from ..errors import EtcdBackupError, OperationalError
from .common import Context, Subparsers, add_output, emit_json

if TYPE_CHECKING:
    from ..service.prune import PruneReport
    from ..storage import SnapshotStore


def add_parser(sub: Subparsers) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "prune",
        help="apply retention now; print what is deleted and why",
        description="Delete the snapshots the retention policy drops (never the newest verified one, "
        "nothing at all if the listing fails) and debris older than retention.debris_age.",
    )
    p.add_argument("--dry-run", action="store_true", help="only print what would be deleted")
    add_output(p)
    return p


def render(report: PruneReport) -> str:
    verb = "would delete" if report.dry_run else "deleted"
    lines = [f"{verb} {d.id}  ({d.reason})" for d in report.deleted]
    lines += [
        f"{verb} {c.deltas} delta(s) of revisions {c.first_revision}-{c.last_revision}  ({c.reason})"
        for c in report.chains
    ]
    lines += [f"{verb} debris {d.key}  ({d.kind}, {d.age_seconds / 3600:.1f}h old)" for d in report.debris]
    lines += [f"kept {item.id or item.key}  {item.label} (deleted by a later prune)" for item in report.locked]
    summary = "to delete" if report.dry_run else "deleted"
    lines.append(
        f"{len(report.deleted)} snapshot(s) {summary}, {len(report.kept)} kept, "
        f"{sum(c.deltas for c in report.chains)} delta(s) {summary}, {report.kept_deltas} kept, "
        f"{len(report.debris)} debris object(s) {summary}"
        + (f", {len(report.locked)} locked (kept until their lock passes)" if report.locked else "")
    )
    return "\n".join(lines)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from ..model import utcnow
    from ..service.prune import policy_from_config, prune

    cfg = ctx.config

    def apply(store: SnapshotStore) -> PruneReport:
        report = prune(
            store,
            policy_from_config(cfg.retention),
            debris_age=cfg.retention.debris_age,
            now=utcnow(),
            dry_run=args.dry_run,
        )
        for problem in report.problems:
            print(
                f"etcd-backup: warning: left alone (fix or delete by hand): {problem.key}: {problem.error}",
                file=sys.stderr,
            )
        return report

    report = apply(ctx.store)
    # Retention applies to the second copy too, on its own listing; a copy that cannot be reached
    # fails the command after the primary was pruned.
    copy, copy_error = None, None
    if ctx.copy_store is not None:
        try:
            copy = apply(ctx.copy_store)
        except EtcdBackupError as exc:
            copy_error = exc
    if ctx.json:
        doc = report.to_dict()
        if ctx.copy_store is not None:
            doc["copy"] = copy.to_dict() if copy is not None else {"error": str(copy_error)}
        emit_json(doc)
    else:
        print(render(report))
        if ctx.copy_store is not None:
            body = render(copy) if copy is not None else f"FAILED: {copy_error}"
            print(f"copy {ctx.copy_store.description}:\n{body}")
    errors = list(report.errors)
    errors += [f"the copy: {e}" for e in ([str(copy_error)] if copy_error else copy.errors if copy else [])]
    if errors:
        raise OperationalError(
            f"prune incomplete: {errors[0]}" + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else "")
        )
    return 0
