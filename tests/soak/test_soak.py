"""Soak: the daemon on a 1 s schedule against a 3-member cluster taking a steady write load.

Run with `./scripts/test.sh -m soak -s` (10 minutes; SOAK_SECONDS=120 for a quick look,
SOAK_STORAGE=file for a directory store instead of S3). Afterwards every listed snapshot verifies,
RSS and open file descriptors did not grow, and what is stored is exactly what the policy keeps.
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from conftest import ClusterFactory, DaemonFactory, DaemonProcess, config_env, run_cli
from etcd_backup.model import Manifest, utcnow
from etcd_backup.retention import Policy, apply_policy

SECONDS = float(os.environ.get("SOAK_SECONDS", "600"))
STORAGE = os.environ.get("SOAK_STORAGE", "s3")
WRITES_PER_SECOND = 20
KEYS = 2000  # overwritten in turn: the keyspace stays bounded, revisions keep coming
SAMPLE_EVERY = 0.7  # not a divisor of the 1 s schedule: samples must not phase-lock with it
SCRAPE_EVERY = 5.0
RSS_MARGIN = 15 * 1024 * 1024
FD_FLOOR_MARGIN = 2  # idle floor: what a leak raises
FD_MEDIAN_MARGIN = 8  # busy moments (a snapshot or drill in flight) hold up to ~10 more
POLICY = Policy(keep_last=5, hourly=2, daily=1)

pytestmark = [pytest.mark.soak, pytest.mark.timeout(int(SECONDS) + 600)]


@dataclass
class Sample:
    at: float  # seconds since start
    rss: int  # bytes
    fds: int
    fd_targets: list[str]


@dataclass
class Load:
    """A writer putting keys at a bounded rate until stopped."""

    endpoints: list[str]
    stop: threading.Event = field(default_factory=threading.Event)
    written: int = 0
    errors: int = 0

    def run(self) -> None:
        import etcd3

        host, port = self.endpoints[0].removeprefix("http://").split(":")
        client = etcd3.client(host, int(port), timeout=5)
        value = os.urandom(192).hex()
        next_at = time.monotonic()
        try:
            while not self.stop.is_set():
                try:
                    client.put(f"/load/{self.written % KEYS:05d}", value)
                    self.written += 1
                except Exception:  # noqa: BLE001 - counted: a load generator must not die
                    self.errors += 1
                next_at += 1 / WRITES_PER_SECOND
                self.stop.wait(max(0.0, next_at - time.monotonic()))
        finally:
            client.close()


def sample(pid: int, started: float) -> Sample:
    with open(f"/proc/{pid}/status") as fh:
        rss = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmRSS:"))
    targets = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            targets.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue  # closed meanwhile
    return Sample(time.monotonic() - started, rss, len(targets), sorted(targets))


def window(samples: list[Sample], start: float, end: float) -> list[Sample]:
    return [s for s in samples if start <= s.at < end]


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def mib(n: float) -> str:
    return f"{n / 1024 / 1024:.1f} MiB"


def store_env(request: pytest.FixtureRequest, tmp_path: Path, endpoints_env: dict[str, str]) -> dict[str, str]:
    if STORAGE == "file":
        return {**endpoints_env, "ETCD_BACKUP_STORAGE__URL": f"file://{tmp_path / 'store'}"}
    bucket = request.getfixturevalue("s3_bucket")
    return {**endpoints_env, **bucket.env(), "ETCD_BACKUP_STORAGE__SPOOL_DIR": str(tmp_path / "spool")}


def test_soak(
    etcd_cluster: ClusterFactory, start_daemon: DaemonFactory, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    # Compaction keeps the db from growing without bound under the load, as in any real cluster.
    cluster = etcd_cluster(3, extra_args=["--auto-compaction-mode=revision", "--auto-compaction-retention=1000"])
    env = store_env(request, tmp_path, config_env(cluster))
    env.update(
        {
            "ETCD_BACKUP_SCHEDULE__INTERVAL": "1s",
            "ETCD_BACKUP_VERIFY__RESTORE_DRILL": "30s",
            "ETCD_BACKUP_RETENTION__KEEP_LAST": str(POLICY.keep_last),
            "ETCD_BACKUP_RETENTION__HOURLY": str(POLICY.hourly),
            "ETCD_BACKUP_RETENTION__DAILY": str(POLICY.daily),
            "ETCD_BACKUP_RETENTION__WEEKLY": "0",
            "ETCD_BACKUP_RETENTION__MONTHLY": "0",
        }
    )
    load = Load(cluster.endpoints)
    writer = threading.Thread(target=load.run, name="load", daemon=True)
    writer.start()
    d = start_daemon(env)
    pid = d.process.pid
    started = time.monotonic()
    samples: list[Sample] = []
    not_ready = scrapes = 0
    try:
        while (elapsed := time.monotonic() - started) < SECONDS:
            assert d.alive(), d.log_path.read_text()[-3000:]
            samples.append(sample(pid, started))
            if elapsed >= scrapes * SCRAPE_EVERY:
                d.metrics()  # scraped like Prometheus would
                scrapes += 1
                if elapsed > 10 and d.request("GET", "/readyz", timeout=10)[0] != 200:
                    not_ready += 1
            time.sleep(min(SAMPLE_EVERY, max(0.0, SECONDS - elapsed)))
        final_metrics = d.metrics()
    finally:
        load.stop.set()
        writer.join(10)
    rc, stop_seconds = d.terminate()
    assert rc == 0

    figures = summarize(
        d, samples, final_metrics, load, not_ready=not_ready, scrapes=scrapes, stop_seconds=stop_seconds
    )
    print("\nSOAK " + json.dumps(figures, indent=2))

    # Every listed snapshot verifies; what is stored is what the policy keeps, nothing more.
    r = run_cli("list", "--output", "json", env=env)
    assert r.returncode == 0, r.stderr
    listed = json.loads(r.stdout)
    for m in listed:
        v = run_cli("verify", m["id"], env=env)
        assert v.returncode == 0, f"{m['id']}: {v.stderr}"
    r = run_cli("prune", "--dry-run", "--output", "json", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["deleted"] == [], r.stdout
    decision = apply_policy(POLICY, [Manifest.from_dict(m) for m in listed], utcnow())
    assert decision.delete == {} and set(decision.keep) == {m["id"] for m in listed}
    assert POLICY.keep_last <= len(listed) <= POLICY.keep_last + POLICY.hourly + POLICY.daily

    assert figures["failures"] == {}, figures["failures"]
    assert figures["snapshots_taken"] >= SECONDS / 4, "the 1 s schedule fell far behind"
    assert figures["drills_passed"] >= 1 and figures["drills_failed"] == 0
    assert load.errors <= load.written // 100, "the write load was not steady"
    # Resources: the last minute against the second minute (medians; for FDs also the idle floor).
    early, late = figures["rss_early_bytes"], figures["rss_late_bytes"]
    assert late <= early + RSS_MARGIN, f"RSS grew from {mib(early)} to {mib(late)}"
    leaked = f"file descriptors leaked: {min(samples[-60:], key=lambda s: s.fds).fd_targets}"
    assert figures["fds_floor_late"] <= figures["fds_floor_early"] + FD_FLOOR_MARGIN, leaked
    assert figures["fds_late"] <= figures["fds_early"] + FD_MEDIAN_MARGIN, leaked


def summarize(
    d: DaemonProcess,
    samples: list[Sample],
    metrics: dict[str, float],
    load: Load,
    *,
    not_ready: int,
    scrapes: int,
    stop_seconds: float,
) -> dict[str, Any]:
    logs = d.logs()
    stored = [e for e in logs if e.get("event") == "snapshot stored"]
    latencies = [float(e["seconds"]) for e in stored]
    # The second minute against the last one (for a short dev run: middle third against the last).
    early = window(samples, 60, 120) if SECONDS >= 180 else window(samples, SECONDS / 3, 2 * SECONDS / 3)
    late = window(samples, SECONDS - 60, SECONDS + 1) if SECONDS >= 180 else window(samples, 2 * SECONDS / 3, SECONDS)
    failures = {k: v for k, v in metrics.items() if k.startswith("etcd_backup_failures_total") and v}
    return {
        "storage": STORAGE,
        "seconds": SECONDS,
        "snapshots_taken": len(stored),
        "snapshot_failures_logged": sum(1 for e in logs if e.get("event", "").startswith("snapshot failed")),
        "failures": failures,
        "latency_p50_s": round(percentile(latencies, 50), 3) if latencies else None,
        "latency_p95_s": round(percentile(latencies, 95), 3) if latencies else None,
        "latency_max_s": round(max(latencies), 3) if latencies else None,
        "db_size_last": stored[-1]["db_size"] if stored else None,
        "snapshots_deleted_by_retention": sum(1 for e in logs if e.get("event") == "snapshot deleted"),
        "drills_passed": sum(1 for e in logs if e.get("event") == "restore drill recorded"),
        "drills_failed": sum(1 for e in logs if e.get("event", "").startswith("RESTORE DRILL FAILED")),
        "keys_written": load.written,
        "write_errors": load.errors,
        "readyz_not_ready": f"{not_ready}/{scrapes}",
        "rss_start": mib(samples[0].rss),
        "rss_early_bytes": statistics.median(s.rss for s in early),
        "rss_late_bytes": statistics.median(s.rss for s in late),
        "rss_early": mib(statistics.median(s.rss for s in early)),
        "rss_late": mib(statistics.median(s.rss for s in late)),
        "rss_max": mib(max(s.rss for s in samples)),
        "fds_start": samples[0].fds,
        "fds_early": statistics.median(s.fds for s in early),
        "fds_late": statistics.median(s.fds for s in late),
        "fds_floor_early": min(s.fds for s in early),
        "fds_floor_late": min(s.fds for s in late),
        "fds_max": max(s.fds for s in samples),
        "samples": len(samples),
        "stop_seconds": round(stop_seconds, 2),
    }
