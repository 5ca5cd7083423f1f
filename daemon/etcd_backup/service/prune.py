"""Apply retention to the store: delete what the policy drops, then clean up debris.

Both listings (snapshots and unfinished uploads) are taken before anything is deleted: if either
fails, nothing is deleted. A snapshot is deleted manifest first, so a half-deleted snapshot is
never listed as a backup (its data object becomes an orphan, removed as debris later).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog

from .. import manifest as manifests
from ..config import RetentionConfig
from ..errors import EtcdBackupError
from ..manifest import Listing, Problem
from ..model import id_time
from ..retention import Decision, Policy, apply_policy
from ..storage import Debris, ObjectInfo, SnapshotStore

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Deletion:
    id: str
    reason: str
    created_at: str


@dataclass(frozen=True, slots=True)
class DebrisItem:
    key: str
    kind: str  # "orphan" (data object without manifest) or "partial" (unfinished upload/file)
    age_seconds: float


@dataclass
class PruneReport:
    dry_run: bool
    deleted: list[Deletion] = field(default_factory=list)
    kept: dict[str, list[str]] = field(default_factory=dict)
    debris: list[DebrisItem] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    remaining: int = 0  # snapshots left in storage afterwards

    def to_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "deleted": [{"id": d.id, "reason": d.reason, "created_at": d.created_at} for d in self.deleted],
            "kept": [{"id": k, "reasons": v} for k, v in self.kept.items()],
            "debris": [{"key": d.key, "kind": d.kind, "age_seconds": round(d.age_seconds)} for d in self.debris],
            "problems": [{"key": p.key, "error": p.error} for p in self.problems],
            "errors": self.errors,
        }


def policy_from_config(cfg: RetentionConfig) -> Policy:
    return Policy(
        keep_last=cfg.keep_last,
        hourly=cfg.hourly,
        daily=cfg.daily,
        weekly=cfg.weekly,
        monthly=cfg.monthly,
        keep_pinned_for=cfg.keep_pinned_for,
    )


def prune(
    store: SnapshotStore,
    policy: Policy,
    *,
    debris_age: float,
    now: datetime,
    dry_run: bool = False,
) -> PruneReport:
    """List, decide, delete. A listing failure raises before anything is deleted."""
    listing = manifests.list_snapshots(store)
    partials = store.list_debris()
    decision = apply_policy(policy, listing.manifests, now)
    report = PruneReport(dry_run, kept=decision.keep, problems=list(listing.problems))
    for problem in listing.problems:
        # A manifest we cannot read is never deleted automatically: someone has to look at it.
        log.warning("snapshot left alone: manifest problem", key=problem.key, error=problem.error)
    _delete_snapshots(store, listing, decision, report)
    report.remaining = len(listing.manifests) - len(report.deleted)
    _remove_debris(store, stale_debris(listing.orphans, partials, now, debris_age), report)
    return report


def clean_debris(store: SnapshotStore, *, debris_age: float, now: datetime) -> PruneReport:
    """Only the debris part of `prune` (at start-up: what a killed previous run left behind)."""
    listing = manifests.list_snapshots(store)
    partials = store.list_debris()
    report = PruneReport(False, problems=list(listing.problems), remaining=len(listing.manifests))
    _remove_debris(store, stale_debris(listing.orphans, partials, now, debris_age), report)
    return report


def _remove_debris(
    store: SnapshotStore, stale: list[tuple[DebrisItem, ObjectInfo | Debris]], report: PruneReport
) -> None:
    dry_run = report.dry_run
    for item, target in stale:
        if not dry_run:
            try:
                if isinstance(target, Debris):
                    store.remove_debris(target)
                else:
                    store.delete(target.key)
            except EtcdBackupError as exc:
                report.errors.append(f"removing {item.key}: {exc}")
                continue
        report.debris.append(item)
        log.info(
            "debris removed" if not dry_run else "debris would be removed",
            key=item.key,
            kind=item.kind,
            age_seconds=round(item.age_seconds),
            stage="retention",
        )


def _delete_snapshots(store: SnapshotStore, listing: Listing, decision: Decision, report: PruneReport) -> None:
    by_id = {m.id: m for m in listing.manifests}
    for snapshot_id, reason in decision.delete.items():
        m = by_id[snapshot_id]
        if not report.dry_run:
            try:
                store.delete(manifests.manifest_key(m.id))
            except EtcdBackupError as exc:
                report.errors.append(f"deleting {m.id}: {exc}")
                continue
            try:
                store.delete(m.object_key)
            except EtcdBackupError as exc:
                # The manifest is gone, so this is debris now; the next prune removes it.
                report.errors.append(f"deleting data of {m.id}: {exc}")
        report.deleted.append(Deletion(m.id, reason, m.created_at))
        log.info(
            "snapshot deleted" if not report.dry_run else "snapshot would be deleted",
            snapshot=m.id,
            reason=reason,
            stage="retention",
        )


def stale_debris(
    orphans: list[ObjectInfo], partials: list[Debris], now: datetime, max_age: float
) -> list[tuple[DebrisItem, ObjectInfo | Debris]]:
    """Orphans and unfinished uploads older than `max_age`: younger ones may still be in flight.

    The age counts from the later of the store's timestamp and the time in the snapshot id of
    the key: some S3-compatible stores report a bogus `Initiated` for multipart uploads (moto
    says 2010), and an upload still in flight must never look old.
    """
    out: list[tuple[DebrisItem, ObjectInfo | Debris]] = []
    for o in orphans:
        age = _age(o.key, o.modified, now)
        if age > max_age:
            out.append((DebrisItem(o.key, "orphan", age), o))
    for d in partials:
        age = _age(d.key, d.started, now)
        if age > max_age:
            out.append((DebrisItem(d.key, "partial", age), d))
    return out


def _age(key: str, stamp: datetime, now: datetime) -> float:
    started = id_time(manifests.id_of(key.rsplit("/", 1)[-1].removeprefix(_PARTIAL_PREFIX)))
    newest = max(stamp, started) if started is not None else stamp
    return (now - newest).total_seconds()


_PARTIAL_PREFIX = ".partial-"  # file:// partial objects: .partial-<id>.db.<random>
