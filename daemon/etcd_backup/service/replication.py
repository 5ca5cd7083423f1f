"""The daemon's second copy: a copy pass after every committed snapshot (or delta) and one at start,
on a thread of its own, so that a slow or unreachable copy store never delays or fails a snapshot.

A failed pass is logged and counted (`etcd_backup_failures_total{stage="copy"}`) and simply
retried by the next one, which finds what the copy lacks. After each scheduled run's retention,
the same policy is applied to the copy.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable

import structlog

from ..config import Config
from ..errors import Cancelled, EtcdBackupError, ShuttingDown
from ..leadership import Leadership
from ..metrics import Metrics
from ..model import utcnow
from ..storage import SnapshotStore
from ..storage.kept import KeepSpool
from .copy import sync
from .prune import policy_from_config, prune

log = structlog.get_logger(__name__)

Running = Callable[[str], contextlib.AbstractContextManager[None]]
_NICE = 10


class Replication:
    def __init__(
        self,
        cfg: Config,
        primary: KeepSpool,
        copy: SnapshotStore,
        *,
        metrics: Metrics,
        leadership: Leadership,
        stopping: threading.Event,
        running: Running,
        min_gap: float = 30.0,
    ) -> None:
        self.cfg = cfg
        self.primary = primary  # the store snapshots are taken through: it keeps the newest spool
        self.copy = copy
        self.metrics = metrics
        self.leadership = leadership
        self.stopping = stopping
        self.running = running  # counts a pass as a running job (a stop waits for it)
        # Each pass lists both stores: commits that come faster (deltas) share the next pass.
        self.min_gap = min_gap
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._prune = False
        self._catch_up = False
        self._thread = threading.Thread(target=self._loop, name="copy", daemon=True)

    def start(self) -> None:
        """The first pass finds what the copy lacks (it was down, or copy_to is new)."""
        with self._lock:
            self._catch_up = True
        self._thread.start()
        self._wake.set()

    def request(self, *, prune: bool = False) -> None:
        """A pass soon (after a commit); with `prune`, then the copy's retention."""
        with self._lock:
            self._prune = self._prune or prune
        self._wake.set()

    def stop(self) -> None:
        self._wake.set()  # the loop sees `stopping`
        self.primary.close()

    def _loop(self) -> None:
        try:
            # Below the snapshots in CPU (Linux: per thread, inherited by the threads a pass starts).
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), _NICE)
        except (OSError, AttributeError):
            pass
        while not self.stopping.is_set():
            self._wake.wait()
            self._wake.clear()
            if self.stopping.is_set():
                return
            with self._lock:
                prune, catch_up = self._prune, self._catch_up
                self._prune = self._catch_up = False
            try:
                with self.running("copy"):
                    # A pass of our own follows a commit of ours; catching up and retention are the
                    # acting copy's (sidecar mode), as for the primary.
                    if (catch_up or prune) and not self.leadership.acting().acting:
                        continue
                    self.run_once(prune=prune)
            except ShuttingDown:
                return
            self.stopping.wait(self.min_gap)

    def run_once(self, *, prune: bool = False) -> None:
        try:
            report = sync(self.primary.inner, self.copy, kept=self.primary.take, cancel=self.stopping)
        except Cancelled:
            return
        except Exception as exc:  # noqa: BLE001 - a failed copy never fails the daemon
            self.metrics.failure("copy")
            unexpected = not isinstance(exc, EtcdBackupError)
            (log.exception if unexpected else log.error)(
                "copy to the second store failed; the next run retries",
                store=self.copy.description,
                error=str(exc) if not unexpected else f"{type(exc).__name__}: {exc}",
                stage="copy",
            )
            return
        if report.damaged:
            self.metrics.failure("copy")
        elif report.complete:
            self.metrics.copy_complete(time.time())
        log.info(
            "copy pass done",
            store=self.copy.description,
            copied=len(report.copied),
            refreshed=len(report.refreshed),
            bytes=report.bytes,
            damaged=len(report.damaged),
            skipped=len(report.skipped),
            seconds=report.seconds,
            stage="copy",
        )
        if prune:
            self._prune_copy()

    def _prune_copy(self) -> None:
        retention = self.cfg.retention
        try:
            report = prune(self.copy, policy_from_config(retention), debris_age=retention.debris_age, now=utcnow())
        except EtcdBackupError as exc:
            self.metrics.failure("copy")
            log.error("retention of the copy skipped: listing failed, nothing deleted", error=str(exc), stage="copy")
            return
        if report.errors:
            self.metrics.failure("copy")
            log.error("retention of the copy incomplete", errors=report.errors, stage="copy")
        log.info(
            "retention applied to the copy",
            deleted=len(report.deleted),
            kept=len(report.kept),
            debris=len(report.debris),
            stage="copy",
        )
