"""Snapshots as the daemon takes them: one at a time (scheduled, member-change and HTTP runs
share one lock), a scheduled run retried with capped exponential backoff until its period is
nearly over, and every outcome counted.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import structlog

from ..config import Config
from ..errors import Busy, Cancelled, EtcdBackupError, IntegrityError, ShuttingDown, StorageError
from ..leadership import Leadership
from ..metrics import Metrics
from ..model import Manifest
from ..storage import SnapshotStore
from .backup import take_snapshot
from .health import HealthWatch, completed_at

log = structlog.get_logger(__name__)


def backoff(attempt: int, period: float) -> float:
    """Delay before retry `attempt` (1, 2, ...): exponential, capped so retries fit in the period."""
    base = min(5.0, period / 16)
    cap = min(300.0, period / 4)
    return float(min(cap, base * 2 ** (attempt - 1)))


def failure_stage(exc: BaseException) -> str:
    """The `stage` label of etcd_backup_failures_total for a failed snapshot run."""
    if isinstance(exc, IntegrityError):
        return "verify"
    if isinstance(exc, StorageError):
        return "upload"
    return "snapshot"


def acquire(lock: threading.Lock, stopping: threading.Event, wait: float | None) -> bool:
    """Take `lock`, giving up after `wait` seconds (None: until stopping, then ShuttingDown)."""
    deadline = None if wait is None else time.monotonic() + wait
    while not stopping.is_set():
        step = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
        if step <= 0:
            return False
        if lock.acquire(timeout=step):
            return True
    raise ShuttingDown("shutting down")


class SnapshotRuns:
    def __init__(
        self,
        cfg: Config,
        store: SnapshotStore,
        *,
        metrics: Metrics,
        health: HealthWatch,
        leadership: Leadership,
        stopping: threading.Event,
        lock: threading.Lock,
        period: float,
        after: Callable[[Manifest], None] = lambda m: None,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.metrics = metrics
        self.health = health
        self.leadership = leadership
        self.stopping = stopping  # also the cancel signal of an in-flight snapshot
        self.lock = lock
        self.period = period
        self.after = after  # told about every committed snapshot (the delta writer's new chain base)

    def scheduled(self, reason: str) -> bool:
        """One scheduled run: snapshot, retrying with backoff within the period. True if one was taken."""
        deadline = time.monotonic() + 0.9 * self.period
        attempt = 0
        while not self.stopping.is_set():
            obs = self.leadership.acting()
            if not obs.acting:
                log.info("not taking the scheduled snapshot", why=obs.reason, error=obs.error)
                return False
            try:
                self.take(reason, pinned=False, wait=None)
                return True
            except (Cancelled, ShuttingDown):
                return False
            except Exception as exc:
                attempt += 1
                stage = failure_stage(exc)
                self.metrics.failure(stage)
                if not isinstance(exc, EtcdBackupError):
                    log.exception(
                        "snapshot failed unexpectedly", stage="snapshot", error=f"{type(exc).__name__}: {exc}"
                    )
                delay = backoff(attempt, self.period)
                if time.monotonic() + delay >= deadline:
                    log.error(
                        "snapshot failed; giving up until the next scheduled run",
                        attempts=attempt,
                        error=str(exc),
                        stage=stage,
                    )
                    return False
                log.warning(
                    "snapshot failed; retrying", attempt=attempt, retry_in=round(delay, 2), error=str(exc), stage=stage
                )
                if self.stopping.wait(delay):
                    return False
        return False

    def take(self, reason: str, *, pinned: bool, wait: float | None) -> Manifest:
        """One snapshot now, after the one running (waiting at most `wait` seconds: else Busy)."""
        if not acquire(self.lock, self.stopping, wait):
            raise Busy(f"a snapshot is already running (waited {wait:.0f}s); retry later")
        try:
            if self.stopping.is_set():
                raise ShuttingDown("shutting down")
            # A control-plane file that went missing must not cost the cluster its etcd backups:
            # it is left out, named in the manifest and the log, and counted.
            manifest = take_snapshot(
                self.cfg, self.store, reason=reason, pinned=pinned, cancel=self.stopping, strict_files=False
            )
        finally:
            self.lock.release()
        if manifest.files is not None and manifest.files.skipped:
            self.metrics.failure("files")
        self.metrics.snapshot_succeeded(
            finished=completed_at(manifest),
            seconds=manifest.duration_seconds,
            size=manifest.object_size,
            revision=manifest.revision,
            reason=reason,
        )
        self.health.succeeded(manifest)
        self.after(manifest)
        return manifest

    def on_demand(self, reason: str, pinned: bool, wait: float) -> Manifest:
        """An HTTP-triggered snapshot: failures are counted, a busy or stopping daemon is not a failure."""
        try:
            return self.take(reason, pinned=pinned, wait=wait)
        except (Busy, ShuttingDown, Cancelled):
            raise
        except Exception as exc:
            self.metrics.failure(failure_stage(exc))
            raise
