"""The daemon's health: is etcd reachable, is storage reachable, how fresh is the newest backup;
`/readyz` and the gauges that come from storage. `readiness` is pure; `HealthWatch.refresh`
is the periodic check that feeds it.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from ..config import Config
from ..errors import EtcdBackupError, EtcdUnavailable
from ..etcdclient import connect_healthy, hexid
from ..leadership import Leadership
from ..manifest import CachedListing, Listing
from ..metrics import Metrics
from ..model import Check, Manifest, parse_time

log = structlog.get_logger(__name__)


@dataclass
class Health:
    """The newest answers to "is etcd reachable", "is storage reachable", "how fresh is the backup"."""

    etcd_error: str | None = "not checked yet"
    storage_error: str | None = "not checked yet"
    checked_at: float = 0.0  # unix time of the last complete check
    newest_success: float = 0.0  # unix time the newest verified snapshot (ours or another copy's) completed
    delta_error: str | None = None  # deltas on, and the newest is stale while etcd holds newer revisions


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
    if health.delta_error:
        reasons.append(f"deltas: {health.delta_error}")
    if health.newest_success == 0.0:
        reasons.append("no successful snapshot yet")
    elif now - health.newest_success > 2 * period:
        reasons.append(
            f"newest successful snapshot is {now - health.newest_success:.0f}s old "
            f"(more than two schedule periods, {2 * period:.0f}s)"
        )
    return reasons


class Outages:
    """A warning when something stops answering and a line when it answers again, not a warning
    at every check in between: an outage's log shows when it began and ended, not a copy per
    check. Keys are what is watched ("etcd", "storage", an endpoint); `events` names the two lines."""

    def __init__(self) -> None:
        self._since: dict[str, float] = {}  # key -> when it stopped answering
        self._lock = threading.Lock()  # the start-up check may still run beside the first periodic one

    def update(self, key: str, error: str | None, *, now: float, events: tuple[str, str], **fields: str) -> None:
        with self._lock:
            since = self._since.get(key)
            if error is not None and since is None:
                self._since[key] = now
            elif error is None and since is not None:
                del self._since[key]
            else:
                return
        if since is None:
            log.warning(events[0], reason=error, **fields)
        else:
            log.info(events[1], **fields, down_seconds=round(now - since))

    def down(self) -> set[str]:
        with self._lock:
            return set(self._since)


_ETCD = ("etcd unreachable", "etcd reachable again")
_ENDPOINT = ("etcd endpoint skipped", "etcd endpoint answers again")
_STORAGE = ("storage unreachable", "storage reachable again")


# Where the chain of a cluster ends: (newest revision stored, unix time it was stored).
DeltaTip = Callable[[str], tuple[int, float] | None]


def delta_staleness(tip: tuple[int, float] | None, live_revision: int, *, now: float, interval: float) -> str | None:
    """Why deltas make the daemon unready: the newest is older than three intervals while etcd
    holds newer revisions (nothing written meanwhile is not stale)."""
    if tip is None:
        return None
    revision, at = tip
    if live_revision > revision and now - at > 3 * interval:
        return (
            f"the newest stored revision {revision} is {now - at:.0f}s old (more than three delta intervals) "
            f"while etcd is at revision {live_revision}"
        )
    return None


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


class HealthWatch:
    """The periodic check behind `/readyz` and the storage gauges."""

    def __init__(
        self,
        cfg: Config,
        listing: CachedListing,
        metrics: Metrics,
        leadership: Leadership,
        *,
        period: float,
        delta_tip: DeltaTip | None = None,
    ) -> None:
        self.cfg = cfg
        self.listing = listing
        self.metrics = metrics
        self.leadership = leadership
        self.period = period
        self.every = min(30.0, max(1.0, period / 2))
        self.stale_after = 3 * self.every + 2 * cfg.etcd.dial_timeout
        self._health = Health()
        self._lock = threading.Lock()
        self.delta_tip = delta_tip
        self._delta_checked_at = 0  # etcd's revision when delta_error was last decided
        self._outages = Outages()  # etcd as a whole, storage
        self._endpoints_down = Outages()  # single mode: each endpoint
        self._ours: Manifest | None = None  # the newest snapshot this process committed
        self._newest: Manifest | None = None  # the newest successful one (Health.newest_success is its time)
        # Read at each scrape: the gauge says what /readyz answers now (a snapshot makes it ready
        # at once, between two checks).
        metrics.ready.set_function(lambda: 0.0 if self.readiness() else 1.0)

    @property
    def newest_success(self) -> float:
        with self._lock:
            return self._health.newest_success

    def newest_duration(self) -> float:
        """Seconds the newest successful snapshot took (a large database: longer than a period)."""
        with self._lock:
            return self._newest.duration_seconds if self._newest else 0.0

    def newest_is_ours(self) -> bool:
        """Whether the newest successful snapshot is the one this process committed last."""
        with self._lock:
            return self._newest is not None and self._ours is not None and self._newest.id == self._ours.id

    def _set_newest(self, m: Manifest | None) -> None:
        """Under the lock."""
        self._newest = m
        self._health.newest_success = completed_at(m) if m else 0.0

    def succeeded(self, m: Manifest) -> None:
        """A snapshot of ours completed: ready at once, not at the next check."""
        with self._lock:
            if self._ours is None or completed_at(m) >= completed_at(self._ours):
                self._ours = m
            if self._newest is None or completed_at(m) >= completed_at(self._newest):
                self._set_newest(m)
            # It holds every revision etcd had at that check (the one taken after a delta gap):
            # the deltas are no longer behind, and an idle cluster writes none to show it.
            if self._health.delta_error and m.revision >= self._delta_checked_at:
                self._health.delta_error = None

    def refresh(self) -> None:
        """Check etcd and storage; update readiness and the gauges that come from storage."""
        obs = self.leadership.check("etcd")
        storage_error = None
        listing: Listing | None = None
        try:
            self.listing.store.ping()
            listing = self.listing.list()
        except EtcdBackupError as exc:
            storage_error = str(exc)
            self.metrics.failure("storage")
        delta_error = None
        if self.delta_tip is not None and self.cfg.delta.interval and obs.status is not None:
            try:
                tip = self.delta_tip(hexid(obs.status.cluster_id))
            except EtcdBackupError as exc:
                tip, storage_error = None, storage_error or str(exc)
            delta_error = delta_staleness(tip, obs.status.revision, now=time.time(), interval=self.cfg.delta.interval)
        now = time.time()
        self._outages.update("etcd", obs.error, now=now, events=_ETCD)
        self._outages.update("storage", storage_error, now=now, events=_STORAGE)
        if obs.endpoints:
            self._endpoint_outages(obs.endpoints, now)
        newest: Manifest | None = None
        if listing is not None:
            self._gauges(
                listing, obs.status.cluster_id if obs.status else None, obs.status.revision if obs.status else 0
            )
            # Of the cluster etcd is now: after a `restore cluster` (a new cluster id) the old
            # cluster's snapshots back up nothing that runs, and the next one is due at once.
            live = hexid(obs.status.cluster_id) if obs.status else None
            newest = listing.newest_verified(live)
        with self._lock:
            self._health.etcd_error = obs.error
            self._health.storage_error = storage_error
            self._health.delta_error = delta_error
            self._delta_checked_at = obs.status.revision if obs.status else 0
            if listing is not None:
                # What storage holds now decides, so that a snapshot a drill found broken stops
                # counting; ours counts too until the listing shows it (it may lag a commit).
                ours = self._ours
                ours_newest = (
                    ours is not None
                    and ours.cluster_id == live
                    and not any(m.id == ours.id and not m.verified for m in listing.manifests)
                    and (newest is None or completed_at(ours) >= completed_at(newest))
                )
                self._set_newest(ours if ours_newest else newest)
            self._health.checked_at = time.time()

    def _endpoint_outages(self, tried: dict[str, str | None], now: float) -> None:
        """Each endpoint's outage. One that was down and not asked this time (an earlier one
        answered again) is asked on its own, or its recovery would never be logged."""
        tried = dict(tried)
        for endpoint in sorted(self._endpoints_down.down() - tried.keys()):
            others = set(self.cfg.etcd.endpoints) - {endpoint}
            try:
                member, _ = connect_healthy(self.cfg.etcd, exclude=others, log_skips=False, tried=tried)
                member.close()
            except EtcdUnavailable:
                pass  # why is in `tried`
        for endpoint, reason in tried.items():
            self._endpoints_down.update(endpoint, reason, now=now, events=_ENDPOINT, endpoint=endpoint)

    def _gauges(self, listing: Listing, cluster_id: int | None, live_revision: int) -> None:
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
        same_cluster = listing.newest_verified(hexid(cluster_id)) if cluster_id is not None else None
        if same_cluster is not None:
            m.revision_lag.set(max(0, live_revision - same_cluster.revision))
        else:
            m.revision_lag.set(math.nan)
        drilled = newest_drill(listing)
        if drilled is not None:
            at = parse_time(drilled[1].at).timestamp()
            if at > m.last_drill_at:
                m.drill_result(drilled[1].ok, at)

    def readiness(self) -> list[str]:
        with self._lock:
            return readiness(self._health, now=time.time(), period=self.period, stale_after=self.stale_after)
