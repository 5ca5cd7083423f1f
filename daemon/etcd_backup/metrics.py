"""Every metric the daemon exports, in its own registry (no process/platform collectors mixed in
unless asked for). Names start with `etcd_backup_`; the contract names are marked below."""

from __future__ import annotations

import math

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Info,
    disable_created_metrics,
    generate_latest,
)

# `*_created` series double the output and nobody alerts on them (process-wide switch).
disable_created_metrics()  # type: ignore[no-untyped-call]

# `delta` (the watch and its delta objects), `copy` (storage.copy_to) and `files` (a configured
# control-plane file left out of a snapshot) exist from start so that alerts on them see a 0
# before the first failure.
STAGES = (
    "snapshot",
    "upload",
    "verify",
    "retention",
    "drill",
    "leader_check",
    "storage",
    "etcd",
    "delta",
    "copy",
    "files",
)
# The `reason` labels of etcd_backup_snapshots_total: the daemon's own reasons, and `manual` for
# every other (`--reason` text, POST /v1/snapshots).
SNAPSHOT_REASONS = ("schedule", "member-change", "delta-gap", "manual")


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry(auto_describe=True)
        # contract
        self.last_success = Gauge(
            "etcd_backup_last_success_timestamp_seconds",
            "Unix time the newest successful (uploaded and verified) snapshot was completed.",
            registry=r,
        )
        self.duration = Gauge(
            "etcd_backup_snapshot_duration_seconds",
            "Seconds the newest successful snapshot took from stream start to manifest commit.",
            registry=r,
        )
        self.size = Gauge(
            "etcd_backup_snapshot_size_bytes",
            "Bytes of the newest successful snapshot's stored object.",
            registry=r,
        )
        self.failures = Counter("etcd_backup_failures", "Failed runs by stage.", ["stage"], registry=r)
        self.stored = Gauge(
            "etcd_backup_snapshots_stored",
            "Snapshots (valid manifests) in storage at the last listing.",
            registry=r,
        )
        # contract: point-in-time recovery (set by the delta watcher)
        self.delta_last_revision = Gauge(
            "etcd_backup_delta_last_revision",
            "Newest etcd revision stored in a delta object, by this copy or as storage holds it (NaN until known).",
            registry=r,
        )
        self.delta_last_success = Gauge(
            "etcd_backup_delta_last_success_timestamp_seconds",
            "Unix time the newest delta object was committed (read from storage: when its last change was seen).",
            registry=r,
        )
        self.delta_lag = Gauge(
            "etcd_backup_delta_lag_seconds",
            "Age of the oldest change seen but not yet stored; 0 when all are stored.",
            registry=r,
        )
        self.delta_gaps = Counter(
            "etcd_backup_delta_gaps",
            "Gaps recorded in the delta chain (revisions etcd compacted before the watch saw them).",
            registry=r,
        )
        # beyond the contract
        # What alerts compare ages with, so that rules need no copy of the configuration.
        self.schedule_period = Gauge(
            "etcd_backup_schedule_period_seconds",
            "Seconds between two scheduled snapshots (schedule.interval, or the cron period).",
            registry=r,
        )
        self.drill_interval = Gauge(
            "etcd_backup_restore_drill_interval_seconds",
            "Seconds between restore drills (verify.restore_drill; NaN when drills are off).",
            registry=r,
        )
        self.is_leader = Gauge(
            "etcd_backup_is_leader",
            "1 if this copy takes scheduled snapshots (sidecar beside the raft leader, or single mode).",
            registry=r,
        )
        self.last_drill_success = Gauge(
            "etcd_backup_last_drill_success",
            "1 if the newest restore drill passed, 0 if it failed.",
            registry=r,
        )
        self.last_drill_time = Gauge(
            "etcd_backup_last_drill_timestamp_seconds", "Unix time of the newest restore drill.", registry=r
        )
        self.revision_lag = Gauge(
            "etcd_backup_revision_lag",
            "Live etcd revision minus the revision of the newest verified snapshot (NaN if unknown).",
            registry=r,
        )
        self.snapshot_revision = Gauge(
            "etcd_backup_snapshot_revision", "Revision of the newest successful snapshot.", registry=r
        )
        self.snapshots = Counter(
            "etcd_backup_snapshots",
            "Successful snapshots taken by this process, by reason.",
            ["reason"],
            registry=r,
        )
        self.drills_skipped = Counter(
            "etcd_backup_drills_skipped",
            "Restore drills not run, by reason (no_identity: encrypted snapshots, no identity on this host).",
            ["reason"],
            registry=r,
        )
        self.copy_last_success = Gauge(
            "etcd_backup_copy_last_success_timestamp_seconds",
            "Unix time a copy pass last left the second store (storage.copy_to) complete (NaN until then).",
            registry=r,
        )
        self.ready = Gauge("etcd_backup_ready", "1 when /readyz answers 200.", registry=r)
        self.problems = Gauge(
            "etcd_backup_manifest_problems",
            "Manifests in storage that cannot be read or lack data.",
            registry=r,
        )
        self.info = Info("etcd_backup_build", "Version and mode of this daemon.", registry=r)
        for stage in STAGES:
            self.failures.labels(stage=stage)
        for reason in SNAPSHOT_REASONS:
            self.snapshots.labels(reason=reason)
        self.drills_skipped.labels(reason="no_identity")
        self._last_success = 0.0
        self._delta_cluster, self._delta_revision = "", 0
        self._last_drill_at = 0.0
        self.revision_lag.set(math.nan)
        self.last_drill_success.set(math.nan)
        self.delta_last_revision.set(math.nan)
        self.delta_last_success.set(math.nan)
        self.drill_interval.set(math.nan)
        self.copy_last_success.set(math.nan)

    def configured(self, *, period: float, drill_interval: float | None) -> None:
        self.schedule_period.set(period)
        self.drill_interval.set(math.nan if drill_interval is None else drill_interval)

    def failure(self, stage: str) -> None:
        self.failures.labels(stage=stage).inc()

    def copy_complete(self, at: float) -> None:
        self.copy_last_success.set(at)

    def drill_skipped(self, reason: str) -> None:
        self.drills_skipped.labels(reason=reason).inc()

    def snapshot_succeeded(self, *, finished: float, seconds: float, size: int, revision: int, reason: str) -> None:
        self.newest_snapshot(finished=finished, seconds=seconds, size=size, revision=revision)
        label = reason if reason in SNAPSHOT_REASONS else "manual"  # free text: one label, not one each
        self.snapshots.labels(reason=label).inc()

    def newest_snapshot(self, *, finished: float, seconds: float, size: int, revision: int) -> None:
        """A successful snapshot completed at `finished`, by us or (read from storage) another copy.
        The gauges describe the newest one seen."""
        if finished <= self._last_success:
            return
        self._last_success = finished
        self.last_success.set(finished)
        self.duration.set(seconds)
        self.size.set(size)
        self.snapshot_revision.set(revision)

    def newest_delta(self, *, cluster: str, revision: int, at: float) -> None:
        """A delta of `cluster` holding changes up to `revision` was committed at `at`, by us or
        (read from storage, after a restart or by the acting copy) another writer. The gauges
        describe the newest of the cluster etcd is now (a restored cluster starts lower)."""
        if cluster == self._delta_cluster and revision <= self._delta_revision:
            return
        self._delta_cluster, self._delta_revision = cluster, revision
        self.delta_last_revision.set(revision)
        self.delta_last_success.set(at)

    def drill_result(self, ok: bool, at: float) -> None:
        self._last_drill_at = at
        self.last_drill_success.set(1 if ok else 0)
        self.last_drill_time.set(at)

    @property
    def last_drill_at(self) -> float:
        return self._last_drill_at

    def render(self) -> bytes:
        return generate_latest(self.registry)
