"""The daemon's pure decisions, without a daemon: readiness, retry backoff, first drill time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from etcd_backup.scheduler import first_drill
from etcd_backup.service.cycle import backoff
from etcd_backup.service.health import Health, Outages, readiness

NOW = 1_800_000_000.0


def healthy(**changes: object) -> Health:
    h = Health(etcd_error=None, storage_error=None, checked_at=NOW - 1, newest_success=NOW - 60)
    for k, v in changes.items():
        setattr(h, k, v)
    return h


def test_ready_when_everything_answers_and_the_backup_is_fresh() -> None:
    assert readiness(healthy(), now=NOW, period=1800, stale_after=90) == []


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"checked_at": 0.0}, "first health check not finished"),
        ({"checked_at": NOW - 91}, "last health check was 91s ago"),
        ({"etcd_error": "down"}, "etcd: down"),
        ({"storage_error": "gone"}, "storage: gone"),
        ({"newest_success": 0.0}, "no successful snapshot yet"),
        ({"newest_success": NOW - 3601}, "newest successful snapshot is 3601s old"),
    ],
)
def test_each_reason_not_to_be_ready(changes: dict[str, object], reason: str) -> None:
    reasons = readiness(healthy(**changes), now=NOW, period=1800, stale_after=90)
    assert len(reasons) == 1 and reasons[0].startswith(reason), reasons


def test_an_outage_is_one_warning_and_one_line_when_it_ends() -> None:
    outages = Outages()
    events = ("x unreachable", "x reachable again")
    with capture_logs() as logs:
        outages.update("x", None, now=NOW, events=events)
        for i in range(5):
            outages.update("x", f"refused {i}", now=NOW + 10 + i, events=events)
        assert outages.down() == {"x"}
        outages.update("x", None, now=NOW + 70, events=events)
        outages.update("x", None, now=NOW + 80, events=events)
        outages.update("x", "again", now=NOW + 90, events=events)
    assert [(e["event"], e["log_level"]) for e in logs] == [
        ("x unreachable", "warning"),
        ("x reachable again", "info"),
        ("x unreachable", "warning"),
    ]
    assert logs[0]["reason"] == "refused 0" and logs[1]["down_seconds"] == 60


def test_two_periods_is_the_freshness_edge() -> None:
    assert readiness(healthy(newest_success=NOW - 3600), now=NOW, period=1800, stale_after=90) == []


def test_backoff_grows_and_fits_in_the_period() -> None:
    delays = [backoff(n, 1800) for n in range(1, 12)]
    assert delays[:4] == [5.0, 10.0, 20.0, 40.0]
    assert max(delays) == 300.0 and delays == sorted(delays)
    short = [backoff(n, 2) for n in range(1, 6)]
    assert short[0] == 0.125 and max(short) == 0.5  # a 2 s period retries fast and never sleeps past it


def test_first_drill_soon_after_start_unless_one_was_recorded() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert first_drill(now, 86400, 0.0) == now + timedelta(seconds=60)
    assert first_drill(now, 30, 0.0) == now + timedelta(seconds=30)
    last = (now - timedelta(hours=1)).timestamp()
    assert first_drill(now, 86400, last) == now + timedelta(hours=23)
    assert first_drill(now, 600, last) == now  # overdue: at once


def test_standby_thresholds_by_rank_new_leader_and_snapshot_duration() -> None:
    """Pure rules of a sidecar standing in (leadership.Standby): by rank, one period apart; the age
    counted from a new leader; a period as long as the newest snapshot took; and, once standing
    in, going on while the newest snapshot is its own."""
    from etcd_backup.leadership import Standby

    newest, ours, took = [1000.0], [False], [10.0]
    s = Standby(
        100.0,
        newest_success=lambda: newest[0],
        newest_is_ours=lambda: ours[0],
        since=0.0,
        slack=5.0,
        newest_duration=lambda: took[0],
    )
    s.saw_leader(7, 900.0)
    assert s.overdue(1000.0 + 155.0) is None  # 1.5 periods + slack not passed yet
    age = s.overdue(1000.0 + 156.0)
    assert age == 156.0 and s.admits(0, age) and not s.admits(1, age)
    assert s.admits(1, 256.0)  # one period later the next follower too
    s.saw_leader(8, 1100.0)  # a new leader: its copy gets its own 1.5 periods
    assert s.overdue(1000.0 + 200.0) is None
    took[0] = 300.0  # snapshots take longer than the period: they come that far apart
    assert s.overdue(1100.0 + 400.0) is None and s.overdue(1100.0 + 456.0) == 456.0  # from the new leader on
    s.standing, ours[0], newest[0] = True, True, 1200.0  # it stood in and took the newest
    assert s.overdue(1201.0) == 1.0 and s.admits(5, 1.0)  # standing in goes on
    ours[0] = False  # the leader's copy took one: standing in ends unless overdue again
    assert s.overdue(1201.0) is None


def test_a_crons_stand_in_period_is_its_widest_gap() -> None:
    """A weekday cron's weekend is no missed run; a cron that runs once in years gives none."""
    from etcd_backup.scheduler import widest_gap

    now = datetime(2026, 12, 2, 19, 0, tzinfo=UTC)  # a Wednesday
    assert widest_gap("*/30 * * * *", now) == 1800.0
    assert widest_gap("0 2 * * *", now) == 86400.0
    assert widest_gap("0 2 * * 1-5", now) == 3 * 86400.0  # Friday to Monday
    assert widest_gap("0 0 1 * *", now) == 31 * 86400.0
    assert widest_gap("0 0 29 2 *", now) is None  # once by 2028: nothing to wait on


def test_a_sidecar_on_a_cron_can_stand_in(tmp_path: Path) -> None:
    """With `schedule.cron` the copies beside followers stand in too, waiting on the cron's widest
    gap; with a cron that gives none, none does (no age would show a missed run)."""
    from etcd_backup.config import Config
    from etcd_backup.daemon import Daemon
    from etcd_backup.etcdproc import free_port
    from etcd_backup.storage import open_store

    def standby(cron: str) -> float | None:
        cfg = Config(
            etcd={"endpoints": [f"http://127.0.0.1:{free_port()}"], "dial_timeout": "1s"},
            storage={"url": f"file://{tmp_path}/store"},
            schedule={"cron": cron, "mode": "sidecar"},
        )
        daemon = Daemon(cfg, open_store(cfg.storage))
        try:
            return daemon.leadership.standby.period if daemon.leadership.standby else None
        finally:
            daemon.stop(1)

    assert standby("0 2 * * 1-5") == 3 * 86400.0
    assert standby("0 0 29 2 *") is None
