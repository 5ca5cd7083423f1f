"""The running daemon as one object: which jobs exist and how they hang together (snapshots,
retention, drills, the member watch, the health check), and what the HTTP endpoints ask of it.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import structlog

from . import __version__, delta, scratch
from .config import Config
from .leadership import Leadership, Standby
from .manifest import CachedListing
from .metrics import Metrics
from .model import Manifest
from .process import within
from .scheduler import Scheduler, first_drill, widest_gap
from .service.cycle import SnapshotRuns
from .service.deltawriter import DeltaWriter
from .service.health import HealthWatch, completed_at
from .service.memberwatch import MemberWatch
from .service.replication import Replication
from .service.upkeep import Upkeep
from .storage import SnapshotStore
from .storage.kept import KeepSpool
from .systemd import sd_notify, watchdog_interval

log = structlog.get_logger(__name__)

MEMBER_POLL_SECONDS = 5.0
MEMBER_CHANGE_DELAY = 1.0  # seconds between noticing a member-list change and its snapshot
HTTP_SNAPSHOT_WAIT = 120.0  # how long a POST waits for a running snapshot before answering 409
STANDBY_MARGIN = 10.0  # seconds more before a sidecar stands in: an election, a slow first snapshot


def start_wait(cfg: Config) -> float:
    """How long a start-up check of storage may take: two of its request timeouts (a store that
    is merely slow answers within them), at most 30 s (systemd's start timeout and a liveness
    probe must see the daemon up)."""
    return min(30.0, 2 * cfg.storage.timeout)


class Daemon:
    def __init__(
        self, cfg: Config, store: SnapshotStore, metrics: Metrics | None = None, copy: SnapshotStore | None = None
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.metrics = metrics or Metrics()
        self.period = cfg.schedule.period()
        self.start_wait = start_wait(cfg)
        self.stopping = threading.Event()
        self.metrics.info.info({"version": __version__, "mode": cfg.schedule.mode, "storage": store.description})
        self.metrics.configured(period=self.period, drill_interval=cfg.verify.restore_drill)
        self.listing = CachedListing(store)
        self.leadership = Leadership(cfg, self.metrics)
        self.health = HealthWatch(
            cfg, self.listing, self.metrics, self.leadership, period=self.period, delta_tip=self._delta_tip
        )
        # A cron's stand-in waits on its widest gap: a weekday schedule's weekend is no missed run.
        standby_period = widest_gap(cfg.schedule.cron, datetime.now(UTC)) if cfg.schedule.cron else float(self.period)
        if cfg.schedule.mode == "sidecar" and standby_period is not None:
            # Stand in when the copy beside the leader takes no snapshot (see leadership.py).
            health = self.health
            # The jitter, two health checks (the listing may lag) and an election's seconds.
            slack = cfg.schedule.jitter + 2 * health.every + STANDBY_MARGIN
            self.leadership.standby = Standby(
                standby_period,
                newest_success=lambda: health.newest_success,
                newest_is_ours=health.newest_is_ours,
                since=time.time(),
                slack=slack,
                newest_duration=health.newest_duration,
            )
        snapshot_lock = threading.Lock()
        self.upkeep = Upkeep(
            cfg,
            store,
            listing=self.listing,
            metrics=self.metrics,
            leadership=self.leadership,
            stopping=self.stopping,
            snapshot_lock=snapshot_lock,
        )
        self.scheduler = Scheduler(self.period, self.stopping)
        # The second copy: snapshots go through a store that keeps the newest spool to copy from.
        kept = KeepSpool(store) if copy is not None else None
        self.replication = (
            Replication(
                cfg,
                kept,
                copy,
                metrics=self.metrics,
                leadership=self.leadership,
                stopping=self.stopping,
                running=self.scheduler.running,
                min_gap=min(30.0, self.period / 4),
            )
            if kept is not None and copy is not None
            else None
        )
        self.runs = SnapshotRuns(
            cfg,
            kept or store,
            metrics=self.metrics,
            health=self.health,
            leadership=self.leadership,
            stopping=self.stopping,
            lock=snapshot_lock,
            period=self.period,
            after=self._committed,
        )
        self.deltas = (
            DeltaWriter(
                cfg,
                store,
                listing=self.listing,
                metrics=self.metrics,
                leadership=self.leadership,
                stopping=self.stopping,
                need_full_snapshot=self._gap_snapshot,
                after=self._copy_soon,
            )
            if cfg.delta.interval
            else None
        )
        self.members = MemberWatch(cfg, on_change=self._member_changed)

    def start(self) -> None:
        # Snapshots spool beside a file:// store unless storage.spool_dir is set; downloads and
        # drills use spool_dir or the temp dir. A killed run may have left files in either.
        spool_dirs = {self.cfg.storage.spool_dir, self.store.capabilities.spool_dir}
        for directory in spool_dirs:
            scratch.sweep(directory, self.cfg.retention.debris_age)
        if not within(self.start_wait, self.health.refresh, "start-refresh"):
            # Unknown whether a recent snapshot exists: the first one is taken at once (or fails
            # and is retried) rather than the daemon not starting at all.
            log.warning("storage did not answer at start; starting all the same", seconds=self.start_wait)
        self._schedule()
        self.scheduler.start()
        if self.deltas is not None:
            self.deltas.start()
        log.info(
            "daemon started",
            mode=self.cfg.schedule.mode,
            period_seconds=self.period,
            storage=self.store.description,
            endpoints=self.cfg.etcd.endpoints,
        )

    def _schedule(self) -> None:
        now = datetime.now(UTC)
        s = self.scheduler
        newest = self.health.newest_success
        due = now if not newest else max(now, datetime.fromtimestamp(newest + self.period, UTC))
        s.snapshots(self.cfg.schedule, lambda: self._scheduled("schedule"), due=due, now=now)
        s.every("refresh", self.health.every, self.health.refresh)
        if self.cfg.schedule.on_member_change:
            s.every("members", MEMBER_POLL_SECONDS, self.members.poll, first=now)
        drill_every = self.cfg.verify.restore_drill
        if drill_every:
            first = first_drill(now, drill_every, self.metrics.last_drill_at)  # read from storage by refresh()
            s.every("drill", drill_every, self.upkeep.drill, first=first)
        watchdog = watchdog_interval()
        if watchdog:
            s.heartbeat(watchdog, lambda: sd_notify("WATCHDOG=1"), now=now)
        s.once("cleanup", self.upkeep.startup_cleanup, at=now)
        if self.replication is not None:
            self.replication.start()

    def _scheduled(self, reason: str) -> None:
        """A scheduled (or member-change) run, then retention (of the copy too)."""
        if self.runs.scheduled(reason) and not self.stopping.is_set():
            self.upkeep.prune()
            if self.replication is not None:
                self.replication.request(prune=True)

    def _committed(self, m: Manifest) -> None:
        """A full snapshot was committed: the watch cuts its deltas there, and the copy follows."""
        if self.deltas is not None:
            self.deltas.new_base(m)
        self._copy_soon()

    def _copy_soon(self, *_committed: object) -> None:
        """Something was committed to the primary (a snapshot, a delta): a copy pass follows."""
        if self.replication is not None:
            self.replication.request()

    def _gap_snapshot(self) -> None:
        """The watch lost revisions to compaction: a full snapshot at once starts a new chain."""
        self.scheduler.once("delta-gap", lambda: self._scheduled("delta-gap"), at=datetime.now(UTC))

    def _delta_tip(self, cluster_id: str) -> tuple[int, float] | None:
        """Where this cluster's chain ends: ours if we write it, else as storage holds it (the
        newest chain only: one bounded listing)."""
        base = self.listing.list().newest_verified(cluster_id)
        if self.deltas is not None and (stored := self.deltas.stored) is not None and self.deltas.cluster == cluster_id:
            # A full snapshot newer than our last delta (the one taken after a gap) holds every
            # revision up to its own: on an idle cluster no delta follows it, and none is stale.
            if base is not None and base.revision > stored.revision:
                return base.revision, completed_at(base)
            return stored.revision, stored.at
        if base is None:
            return None
        refs = delta.list_deltas(self.store, cluster_id, after=base.revision).refs
        newest = max(refs, key=lambda r: r.last_revision, default=None)
        if newest is None:
            return base.revision, completed_at(base)
        # After a restart, or on a copy that does not write them, the gauges show what storage holds.
        self.metrics.newest_delta(cluster=cluster_id, revision=newest.last_revision, at=newest.last_time.timestamp())
        return newest.last_revision, newest.last_time.timestamp()

    def _member_changed(self) -> None:
        at = datetime.now(UTC) + timedelta(seconds=MEMBER_CHANGE_DELAY)
        self.scheduler.once("member-change", lambda: self._scheduled("member-change"), at=at)

    def stop(self, timeout: float = 12.0) -> bool:
        """Stop scheduling, cancel the in-flight snapshot, store what the watch saw, wait for
        running jobs. True if all ended."""
        started = time.monotonic()
        self.stopping.set()
        flushed = self.deltas.join(timeout / 2) if self.deltas is not None else True
        # A copy pass in progress sees the stop flag and ends.
        done = self.scheduler.stop(max(0.0, timeout - (time.monotonic() - started))) and flushed
        if self.replication is not None:
            self.replication.stop()
        log.info("daemon stopped" if done else "daemon stopped with jobs still running")
        return done

    # --- what HTTP asks (httpapi.Backend) ------------------------------------------------------

    def readiness(self) -> list[str]:
        return self.health.readiness()

    def snapshots(self) -> list[Manifest]:
        return self.listing.list().manifests

    def snapshot_now(self, reason: str, pinned: bool) -> Manifest:
        with self.scheduler.running("http"):
            return self.runs.on_demand(reason, pinned, HTTP_SNAPSHOT_WAIT)

    def metrics_text(self) -> bytes:
        return self.metrics.render()
