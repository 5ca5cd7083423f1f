"""Apply retention to the store: delete what the policy drops, then clean up debris.

Every listing (snapshots, deltas, unfinished uploads) is taken before anything is deleted: if one
fails, nothing is deleted. Deltas go with the chains of the snapshots they extend (chain.retain).
Objects are deleted manifest first, so a half-deleted snapshot or delta is never listed (its data
object becomes an orphan, removed as debris later).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog

from .. import chain, delta
from .. import manifest as manifests
from ..config import RetentionConfig
from ..errors import EtcdBackupError, ObjectLocked
from ..manifest import Listing, Problem
from ..model import id_time, rfc3339
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


@dataclass(frozen=True, slots=True)
class LockedItem:
    """Due for deletion but under S3 Object Lock: deleted by a later prune once the lock passed."""

    id: str  # the snapshot id, or "" for debris
    key: str
    until: datetime | None  # None: a legal hold

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id or None, "key": self.key, "until": rfc3339(self.until) if self.until else None}

    @property
    def label(self) -> str:
        return f"locked until {rfc3339(self.until)}" if self.until else "under a legal hold"


@dataclass(frozen=True, slots=True)
class ChainDeletion:
    """The deltas of one chain that retention deleted, reported per chain rather than per object."""

    snapshot: str | None  # the base whose chain they extended (None: older than every chain)
    deltas: int
    first_revision: int
    last_revision: int
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "snapshot": self.snapshot,
            "deltas": self.deltas,
            "first_revision": self.first_revision,
            "last_revision": self.last_revision,
            "reason": self.reason,
        }


@dataclass
class PruneReport:
    dry_run: bool
    deleted: list[Deletion] = field(default_factory=list)
    kept: dict[str, list[str]] = field(default_factory=dict)
    debris: list[DebrisItem] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    locked: list[LockedItem] = field(default_factory=list)
    remaining: int = 0  # snapshots left in storage afterwards
    chains: list[ChainDeletion] = field(default_factory=list)
    kept_deltas: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "deleted": [{"id": d.id, "reason": d.reason, "created_at": d.created_at} for d in self.deleted],
            "kept": [{"id": k, "reasons": v} for k, v in self.kept.items()],
            "debris": [{"key": d.key, "kind": d.kind, "age_seconds": round(d.age_seconds)} for d in self.debris],
            "problems": [{"key": p.key, "error": p.error} for p in self.problems],
            "errors": self.errors,
            "locked": [item.to_dict() for item in self.locked],
            "deltas": [c.to_dict() for c in self.chains],
            "kept_deltas": self.kept_deltas,
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
    deltas = delta.list_deltas(store)
    partials = store.list_debris()
    decision = apply_policy(policy, listing.manifests, now)
    report = PruneReport(dry_run, kept=decision.keep, problems=list(listing.problems))
    for problem in listing.problems:
        # A manifest we cannot read is never deleted automatically: someone has to look at it.
        log.warning("snapshot left alone: manifest problem", key=problem.key, error=problem.error)
    _delete_snapshots(store, listing, decision, report)
    report.remaining = len(listing.manifests) - len(report.deleted)
    kept_ids = {m.id for m in listing.manifests if m.id not in decision.delete}
    _delete_deltas(store, listing, deltas, kept_ids, report)
    orphans = listing.orphans + deltas.orphans
    _remove_debris(store, stale_debris(orphans, partials, now, debris_age), report)
    return report


def _delete_deltas(
    store: SnapshotStore, listing: Listing, deltas: delta.DeltaListing, kept_ids: set[str], report: PruneReport
) -> None:
    decided = chain.retain(listing.manifests, kept_ids, deltas.refs)
    report.kept_deltas = len(decided.keep)
    groups: dict[str, list[delta.DeltaRef]] = {}
    by_key = {d.key: d for d in deltas.refs}
    for key, reason in decided.delete.items():
        groups.setdefault(reason, []).append(by_key[key])
    for reason, refs in groups.items():
        deleted = 0
        for d in sorted(refs, key=lambda d: d.first_revision):
            if not report.dry_run:
                m_key = d.key
                data = deltas.data.get(m_key, [])
                try:
                    store.delete(m_key)
                except ObjectLocked as exc:
                    report.locked.append(LockedItem("", m_key, exc.until))
                    continue
                except EtcdBackupError as exc:
                    report.errors.append(f"deleting delta {d.stem}: {exc}")
                    continue
                for key in data:
                    try:
                        store.delete(key)
                    except ObjectLocked as exc:
                        report.locked.append(LockedItem("", key, exc.until))  # debris once unlocked
                    except EtcdBackupError as exc:
                        report.errors.append(f"deleting data of delta {d.stem}: {exc}")
            deleted += 1
        if deleted:
            owner = reason.removeprefix("chain of deleted snapshot ") if reason.startswith("chain of deleted") else None
            report.chains.append(
                ChainDeletion(
                    owner,
                    deleted,
                    min(d.first_revision for d in refs),
                    max(d.last_revision for d in refs),
                    reason,
                )
            )
            log.info(
                "deltas deleted" if not report.dry_run else "deltas would be deleted",
                chain=owner,
                deltas=deleted,
                reason=reason,
                stage="retention",
            )


def clean_debris(store: SnapshotStore, *, debris_age: float, now: datetime) -> PruneReport:
    """Only the debris part of `prune` (at start-up: what a killed previous run left behind)."""
    listing = manifests.list_snapshots(store)
    orphans = listing.orphans + delta.list_deltas(store).orphans
    partials = store.list_debris()
    report = PruneReport(False, problems=list(listing.problems), remaining=len(listing.manifests))
    _remove_debris(store, stale_debris(orphans, partials, now, debris_age), report)
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
            except ObjectLocked as exc:
                report.locked.append(LockedItem("", item.key, exc.until))
                continue
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
            except ObjectLocked as exc:
                # Not a failure: it stays listed (and restorable) and goes once the lock has passed.
                report.locked.append(LockedItem(m.id, manifests.manifest_key(m.id), exc.until))
                log.info("snapshot due for deletion is locked", snapshot=m.id, reason=reason, stage="retention")
                continue
            except EtcdBackupError as exc:
                report.errors.append(f"deleting {m.id}: {exc}")
                continue
            for key in [m.object_key, *([m.files.object_key] if m.files else [])]:
                try:
                    store.delete(key)
                except ObjectLocked as exc:
                    report.locked.append(LockedItem(m.id, key, exc.until))  # debris once unlocked
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
