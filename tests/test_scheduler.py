"""When scheduled snapshots fire: a jittered run is its slot on the grid plus a delay of its own."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from etcd_backup.scheduler import GridInterval

pytestmark = pytest.mark.timeout(60)

T0 = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)


def test_jitter_delays_each_run_without_moving_the_schedule() -> None:
    trigger = GridInterval(seconds=10, start_date=T0, timezone=UTC, jitter=9)
    fire: datetime | None = T0  # the first run is due on the grid itself
    delays = []
    for k in range(1, 500):
        assert fire is not None
        fire = trigger.get_next_fire_time(fire, fire)
        assert fire is not None
        delay = (fire - (T0 + timedelta(seconds=10 * k))).total_seconds()
        assert 0 <= delay < 9, (k, delay)  # slot k, never k+1: no drift however many runs
        delays.append(delay)
    assert max(delays) > 4 and min(delays) < 4  # and it is a delay, spread over the jitter


def test_without_jitter_runs_land_exactly_on_the_grid() -> None:
    trigger = GridInterval(seconds=7, start_date=T0, timezone=UTC)
    fire = trigger.get_next_fire_time(T0, T0)
    assert fire == T0 + timedelta(seconds=7)
