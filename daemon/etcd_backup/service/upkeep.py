"""The daemon's maintenance: retention after each scheduled snapshot, debris a killed run left
in storage, and restore drills. They never run at once (a drill must not race the deletion of
the snapshot it proves), and only the acting copy does them.
"""

from __future__ import annotations

import threading
import time

import structlog

from ..config import Config
from ..errors import EtcdBackupError, ShuttingDown
from ..leadership import Leadership
from ..manifest import CachedListing
from ..metrics import Metrics
from ..model import utcnow
from ..storage import SnapshotStore
from . import point
from .cycle import acquire
from .drill import drill_and_record, drill_point, drill_target, needs_identity
from .prune import clean_debris, policy_from_config, prune

log = structlog.get_logger(__name__)


class Upkeep:
    def __init__(
        self,
        cfg: Config,
        store: SnapshotStore,
        *,
        listing: CachedListing,
        metrics: Metrics,
        leadership: Leadership,
        stopping: threading.Event,
        snapshot_lock: threading.Lock,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.listing = listing
        self.metrics = metrics
        self.leadership = leadership
        self.stopping = stopping
        self.snapshot_lock = snapshot_lock
        self.policy = policy_from_config(cfg.retention)
        self._lock = threading.Lock()
        self._drill_skip_warned = False

    def prune(self) -> None:
        with self._lock:
            try:
                report = prune(self.store, self.policy, debris_age=self.cfg.retention.debris_age, now=utcnow())
            except EtcdBackupError as exc:
                self.metrics.failure("retention")
                log.error("retention skipped: listing failed, nothing deleted", error=str(exc), stage="retention")
                return
        if report.errors:
            self.metrics.failure("retention")
            log.error("retention incomplete", errors=report.errors, stage="retention")
        self.metrics.stored.set(report.remaining)
        log.info(
            "retention applied",
            deleted=len(report.deleted),
            kept=len(report.kept),
            debris=len(report.debris),
            problems=len(report.problems),
            stage="retention",
        )

    def startup_cleanup(self) -> None:
        """Debris a killed previous run left in storage (unfinished uploads, data without manifest)."""
        if not self.leadership.acting().acting:
            return
        # Not while our own first snapshot uploads: with a short debris_age its unfinished upload
        # would look like a killed run's.
        try:
            if not acquire(self.snapshot_lock, self.stopping, None):
                return
        except ShuttingDown:
            return
        try:
            with self._lock:
                started = time.monotonic()
                report = clean_debris(self.store, debris_age=self.cfg.retention.debris_age, now=utcnow())
            log.info(
                "start-up clean-up done",
                debris=len(report.debris),
                seconds=round(time.monotonic() - started, 3),
                stage="retention",
            )
        except EtcdBackupError as exc:
            self.metrics.failure("retention")
            log.warning("debris clean-up skipped", error=str(exc), stage="retention")
        finally:
            self.snapshot_lock.release()

    def drill(self) -> None:
        if not self.leadership.acting().acting:
            return
        with self._lock:
            try:
                target = drill_target(self.listing.list())
            except EtcdBackupError as exc:
                self.metrics.failure("drill")
                log.error("restore drill skipped: listing failed", error=str(exc), stage="drill")
                return
            if target is None:
                log.info("restore drill skipped: no snapshot yet", stage="drill")
                return
            if needs_identity(self.cfg, target):
                self.metrics.drill_skipped("no_identity")
                if not self._drill_skip_warned:
                    self._drill_skip_warned = True
                    log.warning(
                        "restore drills skipped: snapshots are encrypted and this host has no "
                        "encryption.identity_file (write-only); run them where the identity is",
                        snapshot=target.id,
                        stage="drill",
                    )
                return
            log.info("restore drill started", snapshot=target.id, stage="drill")
            started = time.monotonic()
            try:
                if self.cfg.delta.interval and target.verified:
                    # With deltas, the newest point is what a restore would use: drill that.
                    p = point.plan(
                        self.store,
                        point.Target(latest=True),
                        snapshot=target.id,
                        identities=self.cfg.encryption.identities(),
                        work_dir=self.cfg.storage.spool_dir,
                    )
                    outcome = drill_point(self.cfg, self.store, p, cancel=self.stopping)
                else:
                    outcome = drill_and_record(self.cfg, self.store, target, cancel=self.stopping)
            except EtcdBackupError as exc:
                if not self.stopping.is_set():
                    self.metrics.failure("drill")
                    log.error("restore drill could not run", snapshot=target.id, error=str(exc), stage="drill")
                return
        if self.stopping.is_set() and not outcome.recorded:
            # Its own "passed" or "failed" line may already be in the log: say it counts for nothing.
            log.info("restore drill not recorded: the daemon is stopping", snapshot=target.id, stage="drill")
            return
        seconds = round(time.monotonic() - started, 3)
        self.metrics.drill_result(outcome.check.ok, time.time())
        if outcome.check.ok:
            log.info("restore drill recorded", ok=True, snapshot=target.id, seconds=seconds, stage="drill")
        else:
            self.metrics.failure("drill")
            log.error(
                "RESTORE DRILL FAILED: the snapshot does not restore",
                snapshot=target.id,
                error=outcome.check.error,
                seconds=seconds,
                stage="drill",
            )
