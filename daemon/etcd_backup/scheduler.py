"""When the daemon's jobs run: APScheduler's BackgroundScheduler fires them; every job is counted
while it runs (a stop waits for it), tagged in the logs (`cycle_id`, `job`) and never raises.
What each job does lives in `service`; which jobs exist is `daemon.Daemon`'s.
"""

from __future__ import annotations

import contextlib
import math
import secrets
import signal
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import structlog
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from .config import ScheduleConfig
from .errors import ShuttingDown
from .process import CHILDREN

log = structlog.get_logger(__name__)

Job = Callable[[], None]


class GridInterval(IntervalTrigger):  # type: ignore[misc]  # APScheduler ships no type hints
    """IntervalTrigger counts the next run from the previous *jittered* one, so with jitter the
    schedule drifts (about jitter/2 a run). Here every run is its slot on the grid (start_date +
    k * interval) plus a delay of its own; schedule.jitter is below the period (config)."""

    __slots__ = ()

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        if previous_fire_time is not None and self.jitter:
            start = self.start_date.timestamp()
            # The tiny bias keeps a run exactly on its slot there, whatever the float rounding.
            slots = math.floor((previous_fire_time.timestamp() - start) / self.interval_length + 1e-9)
            previous_fire_time = datetime.fromtimestamp(start + slots * self.interval_length, tz=self.timezone)
        fire: datetime | None = super().get_next_fire_time(previous_fire_time, now)
        return fire


class Scheduler:
    def __init__(self, period: float, stopping: threading.Event) -> None:
        self.stopping = stopping
        self._active = 0
        self._cond = threading.Condition()
        misfire = max(1, int(period))  # a run late by up to a period (suspend, overload) still happens
        self._aps = BackgroundScheduler(
            timezone=UTC,
            executors={"default": ThreadPoolExecutor(5), "watchdog": ThreadPoolExecutor(1)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": misfire},
        )

    @contextlib.contextmanager
    def running(self, name: str) -> Iterator[None]:
        """Count the block as a running job (ShuttingDown once stopping) and tag its log lines."""
        with self._cond:
            if self.stopping.is_set():
                raise ShuttingDown("shutting down")
            self._active += 1
        try:
            with structlog.contextvars.bound_contextvars(cycle_id=secrets.token_hex(4), job=name):
                yield
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify_all()

    def job(self, name: str, fn: Job) -> Job:
        def run() -> None:
            try:
                with self.running(name):
                    fn()
            except ShuttingDown:
                return
            except Exception as exc:
                log.exception("unexpected error in job", job=name, error=f"{type(exc).__name__}: {exc}")

        return run

    def snapshots(self, sched: ScheduleConfig, fn: Job, *, due: datetime, now: datetime) -> None:
        """Scheduled snapshots: on the cron expression (catching up at start when `due` has
        passed), or every interval anchored on `due`, so a restart neither skips nor doubles a run."""
        job = self.job("schedule", fn)
        jitter = sched.jitter or None
        if sched.cron:
            trigger = CronTrigger.from_crontab(sched.cron, timezone="UTC")
            trigger.jitter = jitter
            self._aps.add_job(job, trigger, id="schedule", name="scheduled snapshot")
            if due <= now:
                self._aps.add_job(job, "date", run_date=now, id="catch-up")
        else:
            trigger = GridInterval(seconds=sched.interval, start_date=due, timezone=UTC, jitter=jitter)
            self._aps.add_job(job, trigger, id="schedule", name="scheduled snapshot", next_run_time=due)

    def every(self, name: str, seconds: float, fn: Job, *, first: datetime | None = None) -> None:
        self._aps.add_job(
            self.job(name, fn),
            IntervalTrigger(seconds=seconds, timezone=UTC),
            id=name,
            **({"next_run_time": first} if first is not None else {}),
        )

    def once(self, name: str, fn: Job, *, at: datetime) -> None:
        """Run `fn` once at `at`; a later call with the same name replaces a pending one."""
        if not self.stopping.is_set():
            self._aps.add_job(self.job(name, fn), "date", run_date=at, id=name, replace_existing=True)

    def heartbeat(self, seconds: float, fn: Callable[[], object], *, now: datetime) -> None:
        """A ping from the scheduler's own loop (the systemd watchdog), on its own thread."""
        self._aps.add_job(
            fn, IntervalTrigger(seconds=seconds, timezone=UTC), id="watchdog", executor="watchdog", next_run_time=now
        )

    def start(self) -> None:
        self._aps.start()

    def stop(self, timeout: float) -> bool:
        """Stop firing, then wait for running jobs. A drill's scratch etcd or etcdutl does not
        watch the stop flag: its processes are stopped (SIGTERM, then SIGKILL) as the budget runs
        out. True if every job ended."""
        self.stopping.set()
        if self._aps.running:
            self._aps.shutdown(wait=False)
        deadline = time.monotonic() + timeout
        signalled = 0
        with self._cond:
            while self._active:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                if signalled == 0 and left < timeout / 2:
                    signalled = CHILDREN.signal_all(signal.SIGTERM) or 1
                elif signalled == 1 and left < timeout / 5:
                    CHILDREN.signal_all(signal.SIGKILL)
                    signalled = 2
                self._cond.wait(min(left, 0.2))
            return self._active == 0


def widest_gap(cron: str, now: datetime, *, fires: int = 64, horizon: float = 400 * 86400.0) -> float | None:
    """The longest time between two consecutive runs of `cron` among its next `fires` runs within
    `horizon` seconds: the period a stand-in waits on (a weekday cron's is the weekend), so no gap
    of the schedule itself ever looks like a missed run. None when it runs fewer than twice then."""
    trigger = CronTrigger.from_crontab(cron, timezone="UTC")
    end = now + timedelta(seconds=horizon)
    widest: float | None = None
    previous = trigger.get_next_fire_time(None, now)
    for _ in range(fires - 1):
        if previous is None or previous > end:
            break
        fire = trigger.get_next_fire_time(previous, previous)
        if fire is None or fire > end:
            break
        if fire > previous:
            gap = (fire - previous).total_seconds()
            widest = gap if widest is None else max(widest, gap)
        previous = fire
    return widest


def first_drill(now: datetime, every: float, last: float) -> datetime:
    """When the first drill runs: one interval after the last recorded one, or soon after start
    when none was ever recorded (not a whole interval later)."""
    if last:
        return max(now, datetime.fromtimestamp(last + every, UTC))
    return now + timedelta(seconds=min(every, 60.0))
