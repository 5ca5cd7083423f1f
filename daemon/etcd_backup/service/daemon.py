"""What the daemon decides, apart from when: readiness, which snapshot a drill proves, and which
stage a failure belongs to. The scheduler calls these; they know nothing about threads or HTTP."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import structlog

from .. import manifest as manifests
from ..config import Config
from ..errors import IntegrityError, StorageError, UsageError
from ..manifest import Listing
from ..model import Check, Manifest, parse_time, rfc3339, utcnow
from ..storage import SnapshotStore
from ..verify import fetch_verified

log = structlog.get_logger(__name__)


def failure_stage(exc: BaseException) -> str:
    """The `stage` label of etcd_backup_failures_total for a failed snapshot run."""
    if isinstance(exc, IntegrityError):
        return "verify"
    if isinstance(exc, StorageError):
        return "upload"
    return "snapshot"


@dataclass
class Health:
    """The newest answers to "is etcd reachable", "is storage reachable", "how fresh is the backup"."""

    etcd_error: str | None = "not checked yet"
    storage_error: str | None = "not checked yet"
    checked_at: float = 0.0  # unix time of the last complete check
    newest_success: float = 0.0  # unix time the newest verified snapshot (ours or another copy's) completed
    problems: list[str] = field(default_factory=list)


def readiness(health: Health, *, now: float, period: float, stale_after: float) -> list[str]:
    """Why the daemon is not ready; empty when it is.

    Ready means: etcd and storage answered the last check (made at most `stale_after` ago) and the
    newest successful snapshot is younger than two schedule periods.
    """
    reasons: list[str] = []
    if health.checked_at == 0.0:
        reasons.append("first health check not finished")
    elif now - health.checked_at > stale_after:
        reasons.append(f"last health check was {now - health.checked_at:.0f}s ago")
    if health.etcd_error:
        reasons.append(f"etcd: {health.etcd_error}")
    if health.storage_error:
        reasons.append(f"storage: {health.storage_error}")
    if health.newest_success == 0.0:
        reasons.append("no successful snapshot yet")
    elif now - health.newest_success > 2 * period:
        reasons.append(
            f"newest successful snapshot is {now - health.newest_success:.0f}s old "
            f"(more than two schedule periods, {2 * period:.0f}s)"
        )
    return reasons


def completed_at(m: Manifest) -> float:
    return m.created.timestamp() + m.duration_seconds


def newest_drill(listing: Listing) -> tuple[Manifest, Check] | None:
    """The most recent drill recorded in any manifest."""
    best: tuple[float, Manifest, Check] | None = None
    for m in listing.manifests:
        drill = m.verification.drill
        if drill is None:
            continue
        try:
            at = parse_time(drill.at).timestamp()
        except ValueError:
            continue
        if best is None or at > best[0]:
            best = (at, m, drill)
    return (best[1], best[2]) if best else None


def drill_target(listing: Listing) -> Manifest | None:
    """The newest snapshot whose hash and structure checks passed.

    A snapshot whose own drill failed stays the target until a newer one exists: the alert stays
    red while the newest backup is the broken one.
    """
    for m in listing.manifests:
        if m.verification.hash.ok and m.verification.structure.ok:
            return m
    return None


def drill_needs_identity(cfg: Config, target: Manifest) -> bool:
    """A write-only host (recipients, no identity) cannot drill an encrypted snapshot: it skips the
    drill rather than failing it. A configured identity that does not open it is a failure."""
    return target.encryption is not None and cfg.encryption.identity_file is None


@dataclass(frozen=True, slots=True)
class DrillOutcome:
    manifest: Manifest
    check: Check
    recorded: bool


def drill_snapshot(
    cfg: Config, store: SnapshotStore, target: Manifest, cancel: threading.Event | None = None
) -> DrillOutcome:
    """Download `target` from storage, restore it into a scratch member, record the result.

    A snapshot that fails its download checks is recorded as a failed drill. Storage or tool
    trouble raises (nothing recorded: the snapshot was not at fault). A drill interrupted by
    `cancel` is not recorded either.
    """
    from .drill import drill_verified

    try:
        verified = fetch_verified(store, target, cfg.storage.spool_dir, identities=cfg.encryption.identities())
    except IntegrityError as exc:
        check = Check(False, rfc3339(utcnow()), {"stage": "download"}, error=str(exc))
    else:
        try:
            check = drill_verified(cfg, verified)
        finally:
            verified.discard()
    if cancel is not None and cancel.is_set():
        return DrillOutcome(target, check, recorded=False)
    try:
        # Still there? A prune elsewhere may have deleted it while we drilled; never resurrect it.
        manifests.read(store, target.id)
    except (UsageError, IntegrityError):
        log.warning("drilled snapshot disappeared; result not recorded", snapshot=target.id)
        return DrillOutcome(target, check, recorded=False)
    manifests.write(store, target.with_drill(check))
    return DrillOutcome(target, check, recorded=True)
