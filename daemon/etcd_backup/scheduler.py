"""The daemon loop: when to snapshot, prune, drill and check health; signals, systemd, graceful stop.

APScheduler's BackgroundScheduler fires the jobs; each job runs one use case from `service`.
One snapshot runs at a time (a lock shared with HTTP-triggered snapshots); prune and drill share
another lock so a drill never races a deletion of the snapshot it is proving.
"""

from __future__ import annotations

import math
import os
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from . import __version__
from .config import Config
from .errors import EtcdBackupError, EtcdUnavailable, OperationalError
from .etcdclient import Member, connect_healthy, hexid
from .leadership import Observation, observe
from .manifest import Listing, ManifestCache, list_snapshots
from .metrics import Metrics
from .model import Manifest, parse_time, utcnow
from .service.backup import Cancelled, take_snapshot
from .service.daemon import (
    Health,
    completed_at,
    drill_needs_identity,
    drill_snapshot,
    drill_target,
    failure_stage,
    newest_drill,
    readiness,
)
from .service.prune import clean_debris, clean_local_debris, policy_from_config, prune
from .storage import SnapshotStore

log = structlog.get_logger(__name__)

MEMBER_POLL_SECONDS = 5.0
MEMBER_CHANGE_DELAY = 1.0  # seconds between noticing a member-list change and its snapshot
HTTP_SNAPSHOT_WAIT = 120.0  # how long a POST waits for a running snapshot before answering 409


class Busy(OperationalError):
    """A snapshot is already running and did not finish in time."""

    http_status = 409


class ShuttingDown(OperationalError):
    http_status = 503


def backoff(attempt: int, period: float) -> float:
    """Delay before retry `attempt` (1, 2, ...): exponential, capped so retries fit in the period."""
    base = min(5.0, period / 16)
    cap = min(300.0, period / 4)
    return float(min(cap, base * 2 ** (attempt - 1)))


class Daemon:
    def __init__(self, cfg: Config, store: SnapshotStore, metrics: Metrics | None = None) -> None:
        self.cfg = cfg
        self.store = store
        self.metrics = metrics or Metrics()
        self.policy = policy_from_config(cfg.retention)
        self.period = cfg.schedule.period()
        self.refresh_every = min(30.0, max(1.0, self.period / 2))
        self.stale_after = 3 * self.refresh_every + 2 * cfg.etcd.dial_timeout
        self.stopping = threading.Event()  # also the cancel signal of an in-flight snapshot
        self.health = Health()
        self._state = threading.Lock()
        self._snapshot_lock = threading.Lock()
        self._maintenance = threading.Lock()  # prune and drill
        self._listing_lock = threading.Lock()
        self._cache: ManifestCache = {}
        self._members: frozenset[tuple[Any, ...]] | None = None
        self._drill_skip_warned = False
        self._active = 0
        self._active_cond = threading.Condition()
        misfire = max(1, int(self.period))  # a run late by up to a period (suspend, overload) still happens
        self._scheduler = BackgroundScheduler(
            timezone=UTC,
            executors={"default": ThreadPoolExecutor(5), "watchdog": ThreadPoolExecutor(1)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": misfire},
        )
        self.metrics.info.info({"version": __version__, "mode": cfg.schedule.mode, "storage": store.description})
        self.metrics.is_leader.set(1 if cfg.schedule.mode == "single" else 0)

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        # Snapshots spool beside a file:// store unless storage.spool_dir is set; downloads and
        # drills use spool_dir or the temp dir. A killed run may have left files in either.
        spool_dirs = {self.cfg.storage.spool_dir, getattr(self.store, "spool_dir", None) or None}
        for directory in spool_dirs:
            clean_local_debris(directory, self.cfg.retention.debris_age)
        self.refresh()
        self._schedule_jobs()
        self._scheduler.start()
        log.info(
            "daemon started",
            mode=self.cfg.schedule.mode,
            period_seconds=self.period,
            storage=self.store.description,
            endpoints=self.cfg.etcd.endpoints,
        )

    def stop(self, timeout: float = 12.0) -> bool:
        """Stop scheduling, cancel the in-flight snapshot, wait for running jobs. True if all ended."""
        self.stopping.set()
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        deadline = time.monotonic() + timeout
        signalled = 0
        with self._active_cond:
            while self._active:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                # A drill's scratch etcd or etcdutl does not watch our cancel flag: stop them.
                if signalled == 0 and left < timeout / 2:
                    signalled = terminate_children(signal.SIGTERM) or 1
                elif signalled == 1 and left < timeout / 5:
                    terminate_children(signal.SIGKILL)
                    signalled = 2
                self._active_cond.wait(min(left, 0.2))
            done = self._active == 0
        log.info("daemon stopped" if done else "daemon stopped with jobs still running")
        return done

    def _schedule_jobs(self) -> None:
        now = datetime.now(UTC)
        sched = self.cfg.schedule
        newest = self.health.newest_success
        due = now if not newest else max(now, datetime.fromtimestamp(newest + self.period, UTC))
        jitter = sched.jitter or None
        snapshot_job = self._job("schedule", lambda: self._snapshot_cycle("schedule"))
        if sched.cron:
            trigger = CronTrigger.from_crontab(sched.cron, timezone="UTC")
            trigger.jitter = jitter
            self._scheduler.add_job(snapshot_job, trigger, id="schedule", name="scheduled snapshot")
            if due <= now:  # catch up at start: the newest backup is already older than a period
                self._scheduler.add_job(snapshot_job, "date", run_date=now, id="catch-up")
        else:
            trigger = IntervalTrigger(seconds=sched.interval, timezone=UTC, jitter=jitter)
            # Anchored on the newest snapshot in storage: a restart neither skips nor doubles a run.
            self._scheduler.add_job(snapshot_job, trigger, id="schedule", name="scheduled snapshot", next_run_time=due)
        self._scheduler.add_job(
            self._job("refresh", self.refresh),
            IntervalTrigger(seconds=self.refresh_every, timezone=UTC),
            id="refresh",
        )
        if sched.on_member_change:
            self._scheduler.add_job(
                self._job("members", self._member_watch),
                IntervalTrigger(seconds=MEMBER_POLL_SECONDS, timezone=UTC),
                id="members",
                next_run_time=now,
            )
        drill_every = self.cfg.verify.restore_drill
        if drill_every:
            self._scheduler.add_job(
                self._job("drill", self._drill_cycle),
                IntervalTrigger(seconds=drill_every, timezone=UTC),
                id="drill",
                next_run_time=self._first_drill(now, drill_every),
            )
        watchdog = watchdog_interval()
        if watchdog:
            self._scheduler.add_job(
                lambda: sd_notify("WATCHDOG=1"),
                IntervalTrigger(seconds=watchdog, timezone=UTC),
                id="watchdog",
                executor="watchdog",
                next_run_time=now,
            )
        self._scheduler.add_job(self._job("cleanup", self._startup_cleanup), "date", run_date=now, id="cleanup")

    def _first_drill(self, now: datetime, every: float) -> datetime:
        last = self.metrics.last_drill_at  # read from storage by refresh()
        if last:
            return max(now, datetime.fromtimestamp(last + every, UTC))
        # Never drilled: prove the newest snapshot soon after start, not a whole interval later.
        return now + timedelta(seconds=min(every, 60.0))

    def _job(self, name: str, fn: Callable[[], None]) -> Callable[[], None]:
        """Wrap a job: count it as running (for stop), tag its log lines, never let it raise."""

        def run() -> None:
            with self._active_cond:
                if self.stopping.is_set():
                    return
                self._active += 1
            try:
                with structlog.contextvars.bound_contextvars(cycle_id=secrets.token_hex(4), job=name):
                    fn()
            except Exception as exc:
                log.exception("unexpected error in job", job=name, error=f"{type(exc).__name__}: {exc}")
            finally:
                with self._active_cond:
                    self._active -= 1
                    self._active_cond.notify_all()

        return run

    # --- jobs ----------------------------------------------------------------------------------

    def _acting(self) -> Observation:
        if self.cfg.schedule.mode == "single":
            return Observation(True, "single mode")
        obs = observe(self.cfg)
        self.metrics.is_leader.set(1 if obs.acting else 0)
        if obs.error:
            self.metrics.failure("leader_check")
        return obs

    def _snapshot_cycle(self, reason: str) -> None:
        """One scheduled run: snapshot (retrying with backoff within the period), then retention."""
        deadline = time.monotonic() + 0.9 * self.period
        attempt = 0
        while not self.stopping.is_set():
            obs = self._acting()
            if not obs.acting:
                log.info("not taking the scheduled snapshot", why=obs.reason, error=obs.error)
                return
            try:
                self._snapshot(reason, pinned=False, wait=None)
                break
            except (Cancelled, ShuttingDown):
                return
            except Exception as exc:
                attempt += 1
                self.metrics.failure(failure_stage(exc))
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
                        stage=failure_stage(exc),
                    )
                    return
                log.warning(
                    "snapshot failed; retrying",
                    attempt=attempt,
                    retry_in=round(delay, 2),
                    error=str(exc),
                    stage=failure_stage(exc),
                )
                if self.stopping.wait(delay):
                    return
        if not self.stopping.is_set():
            self._prune()

    def _snapshot(self, reason: str, *, pinned: bool, wait: float | None) -> Manifest:
        if not self._acquire(self._snapshot_lock, wait):
            raise Busy(f"a snapshot is already running (waited {wait:.0f}s); retry later")
        try:
            if self.stopping.is_set():
                raise ShuttingDown("shutting down")
            manifest = take_snapshot(self.cfg, self.store, reason=reason, pinned=pinned, cancel=self.stopping)
        finally:
            self._snapshot_lock.release()
        finished = completed_at(manifest)
        self.metrics.snapshot_succeeded(
            finished=finished,
            seconds=manifest.duration_seconds,
            size=manifest.object_size,
            revision=manifest.revision,
            reason=reason,
        )
        with self._state:
            self.health.newest_success = max(self.health.newest_success, finished)
        return manifest

    def _acquire(self, lock: threading.Lock, wait: float | None) -> bool:
        """Take `lock`, giving up after `wait` seconds (None: until we are stopping)."""
        deadline = None if wait is None else time.monotonic() + wait
        while not self.stopping.is_set():
            step = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
            if step <= 0:
                return False
            if lock.acquire(timeout=step):
                return True
        raise ShuttingDown("shutting down")

    def _prune(self) -> None:
        with self._maintenance:
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

    def _startup_cleanup(self) -> None:
        """Debris a killed previous run left in storage (unfinished uploads, data without manifest)."""
        if not self._acting().acting:
            return
        # Not while our own first snapshot uploads: with a short debris_age its unfinished upload
        # would look like a killed run's.
        try:
            if not self._acquire(self._snapshot_lock, None):
                return
        except ShuttingDown:
            return
        try:
            with self._maintenance:
                clean_debris(self.store, debris_age=self.cfg.retention.debris_age, now=utcnow())
        except EtcdBackupError as exc:
            self.metrics.failure("retention")
            log.warning("debris clean-up skipped", error=str(exc), stage="retention")
        finally:
            self._snapshot_lock.release()

    def _drill_cycle(self) -> None:
        if not self._acting().acting:
            return
        with self._maintenance:
            try:
                target = drill_target(self._list())
            except EtcdBackupError as exc:
                self.metrics.failure("drill")
                log.error("restore drill skipped: listing failed", error=str(exc), stage="drill")
                return
            if target is None:
                log.info("restore drill skipped: no snapshot yet", stage="drill")
                return
            if drill_needs_identity(self.cfg, target):
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
                outcome = drill_snapshot(self.cfg, self.store, target, self.stopping)
            except EtcdBackupError as exc:
                if not self.stopping.is_set():
                    self.metrics.failure("drill")
                    log.error("restore drill could not run", snapshot=target.id, error=str(exc), stage="drill")
                return
        if self.stopping.is_set() and not outcome.recorded:
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

    def _member_watch(self) -> None:
        try:
            members = self._member_set()
        except EtcdUnavailable:
            return  # unreachable etcd is reported by refresh(); no change can be seen now
        previous, self._members = self._members, members
        if previous is None or previous == members:
            return
        added = sorted(hexid(m[0]) for m in members - previous)
        removed = sorted(hexid(m[0]) for m in previous - members)
        log.info("etcd member list changed; snapshot soon", added=added, removed=removed)
        if not self.stopping.is_set():
            self._scheduler.add_job(
                self._job("member-change", lambda: self._snapshot_cycle("member-change")),
                "date",
                run_date=datetime.now(UTC) + timedelta(seconds=MEMBER_CHANGE_DELAY),
                id="member-change",
                replace_existing=True,
            )

    def _member_set(self) -> frozenset[tuple[Any, ...]]:
        if self.cfg.schedule.mode == "sidecar":
            with Member(self.cfg.etcd, self.cfg.etcd.endpoints[0]) as member:
                infos = member.members()
        else:
            member, _ = connect_healthy(self.cfg.etcd, allow_alarms=True)
            try:
                infos = member.members()
            finally:
                member.close()
        return frozenset((m.id, tuple(sorted(m.peer_urls)), m.is_learner) for m in infos)

    def refresh(self) -> None:
        """Check etcd and storage; update readiness and the gauges that come from storage."""
        obs = observe(self.cfg)
        if self.cfg.schedule.mode == "sidecar":
            self.metrics.is_leader.set(1 if obs.acting else 0)
        if obs.error:
            self.metrics.failure("etcd")
        storage_error = None
        listing: Listing | None = None
        try:
            self.store.ping()
            listing = self._list()
        except EtcdBackupError as exc:
            storage_error = str(exc)
            self.metrics.failure("storage")
        newest_success = 0.0
        if listing is not None:
            self._from_listing(listing, obs)
            newest = listing.newest_verified()
            newest_success = completed_at(newest) if newest else 0.0
        with self._state:
            self.health.etcd_error = obs.error
            self.health.storage_error = storage_error
            self.health.newest_success = max(self.health.newest_success, newest_success)
            self.health.checked_at = time.time()
        self.metrics.ready.set(0 if self.readiness() else 1)

    def _from_listing(self, listing: Listing, obs: Observation) -> None:
        m = self.metrics
        m.stored.set(len(listing.manifests))
        m.problems.set(len(listing.problems))
        newest = listing.newest_verified()
        if newest is not None:
            m.newest_snapshot(
                finished=completed_at(newest),
                seconds=newest.duration_seconds,
                size=newest.object_size,
                revision=newest.revision,
            )
        same_cluster = listing.newest_verified(hexid(obs.status.cluster_id)) if obs.status else None
        if obs.status is not None and same_cluster is not None:
            m.revision_lag.set(max(0, obs.status.revision - same_cluster.revision))
        else:
            m.revision_lag.set(math.nan)
        drilled = newest_drill(listing)
        if drilled is not None:
            at = parse_time(drilled[1].at).timestamp()
            if at > m.last_drill_at:
                m.drill_result(drilled[1].ok, at)

    def _list(self) -> Listing:
        with self._listing_lock:
            return list_snapshots(self.store, self._cache)

    # --- what HTTP asks --------------------------------------------------------------------------

    def readiness(self) -> list[str]:
        with self._state:
            return readiness(self.health, now=time.time(), period=self.period, stale_after=self.stale_after)

    def snapshots(self) -> list[Manifest]:
        return self._list().manifests

    def snapshot_now(self, reason: str, pinned: bool) -> Manifest:
        if self.stopping.is_set():
            raise ShuttingDown("shutting down")
        with self._active_cond:
            self._active += 1
        try:
            with structlog.contextvars.bound_contextvars(cycle_id=secrets.token_hex(4), job="http"):
                try:
                    return self._snapshot(reason, pinned=pinned, wait=HTTP_SNAPSHOT_WAIT)
                except (Busy, ShuttingDown, Cancelled):
                    raise
                except Exception as exc:
                    self.metrics.failure(failure_stage(exc))
                    raise
        finally:
            with self._active_cond:
                self._active -= 1
                self._active_cond.notify_all()

    def metrics_text(self) -> bytes:
        return self.metrics.render()


# --- process plumbing ------------------------------------------------------------------------------


def sd_notify(message: str) -> bool:
    """systemd's sd_notify(3) protocol: one datagram to $NOTIFY_SOCKET. False when not under systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
        return True
    except OSError as exc:
        log.warning("sd_notify failed", error=str(exc))
        return False


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WatchdogSec), or None without a watchdog."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    return max(0.1, int(usec) / 1e6 / 2)


class StopSignals:
    """SIGTERM and SIGINT set an event instead of killing the process (installed before start-up,
    so a stop during start-up is graceful too)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handler)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handler(self, signum: int, _frame: object) -> None:
        self.received = self.received or signal.Signals(signum).name
        self.event.set()

    def wait(self) -> str:
        while not self.event.wait(1.0):
            pass
        return self.received or "stopped"


def terminate_children(sig: int) -> int:
    """Signal every direct child process of ours (a drill's etcd or etcdutl). Returns how many."""
    me = os.getpid()
    count = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        # Field 4 (ppid) follows the command name, which is in parentheses and may hold spaces.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 1 and int(fields[1]) == me:
            try:
                os.kill(int(entry), sig)
                count += 1
            except OSError:
                continue
    if count:
        log.warning("stopped child processes", count=count, signal=signal.Signals(sig).name)
    return count
