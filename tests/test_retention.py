"""The retention policy as a pure function: examples for each rule, then properties (hypothesis)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from etcd_backup.model import Check, Manifest, Verification, new_snapshot_id, rfc3339
from etcd_backup.retention import Policy, apply_policy, newest_first
from etcd_backup.service.prune import stale_debris
from etcd_backup.storage import Debris, ObjectInfo

pytestmark = pytest.mark.timeout(120)

NOW = datetime(2026, 6, 15, 12, 30, tzinfo=UTC)


def snap(
    created: datetime,
    *,
    pinned: bool = False,
    ok: bool = True,
    drill_ok: bool | None = None,
    created_at: str | None = None,
) -> Manifest:
    at = rfc3339(created)
    sid = new_snapshot_id(created)
    drill = None if drill_ok is None else Check(drill_ok, at)
    return Manifest(
        id=sid,
        created_at=created_at or at,
        reason="schedule",
        pinned=pinned,
        cluster_id="c1",
        member_id="m1",
        endpoint="http://127.0.0.1:2379",
        etcd_version="3.5.1",
        revision=1,
        keys=1,
        db_size=20480,
        object_key=f"snapshots/{sid}.db",
        object_size=20512,
        object_sha256="0" * 64,
        compression="none",
        verification=Verification(Check(ok, at), Check(True, at), drill),
    )


def hourly_series(n: int, start: datetime = NOW, step: timedelta = timedelta(hours=1)) -> list[Manifest]:
    return [snap(start - i * step) for i in range(n)]


def ids(ms: list[Manifest]) -> set[str]:
    return {m.id for m in ms}


def test_keep_last_keeps_the_newest_n() -> None:
    ms = hourly_series(15)
    d = apply_policy(Policy(keep_last=5), ms, NOW)
    assert set(d.keep) == ids(ms[:5])
    assert set(d.delete) == ids(ms[5:])
    assert set(d.delete.values()) == {"outside policy (keep_last 5)"}
    assert d.keep[ms[0].id] == ["last 5", "newest verified"]


def test_daily_buckets_keep_newest_per_day_for_days_with_snapshots() -> None:
    # Four per day on days 0, 1, 2, then a gap, then days 5 and 6: gaps do not use up a bucket.
    days = [0, 1, 2, 5, 6]
    ms = [snap(NOW - timedelta(days=d, hours=h)) for d in days for h in (0, 3, 6, 9)]
    d = apply_policy(Policy(keep_last=1, daily=4), ms, NOW)
    newest_per_day = [snap_ for snap_ in ms if snap_.created.hour == NOW.hour]
    kept_daily = {k for k, reasons in d.keep.items() if any(r.startswith("daily") for r in reasons)}
    assert kept_daily == ids(newest_per_day[:4])
    assert set(d.keep) == ids(newest_per_day[:4])  # keep_last 1 is today's newest too
    assert len(d.delete) == len(ms) - 4


def test_hourly_weekly_monthly_reasons_name_the_bucket() -> None:
    ms = hourly_series(24 * 70, step=timedelta(hours=1))
    d = apply_policy(Policy(keep_last=1, hourly=3, weekly=2, monthly=3), ms, NOW)
    reasons = [r for rs in d.keep.values() for r in rs]
    assert {"hourly 2026-06-15T12", "hourly 2026-06-15T11", "hourly 2026-06-15T10"} <= set(reasons)
    assert {"weekly 2026-W25", "weekly 2026-W24"} <= set(reasons)  # NOW is a Monday (W25)
    assert {"monthly 2026-06", "monthly 2026-05", "monthly 2026-04"} <= set(reasons)
    # Newest in each month: the last hour of May is kept for "monthly 2026-05".
    may = next(m for m in ms if m.created == datetime(2026, 5, 31, 23, 30, tzinfo=UTC))
    assert "monthly 2026-05" in d.keep[may.id]
    assert len(d.keep) == 1 + 2 + 1 + 2  # newest (last/hourly/weekly/monthly), 2 hourly, 1 weekly, 2 monthly


def test_pinned_kept_for_its_window_then_released() -> None:
    recent = snap(NOW - timedelta(days=3), pinned=True)
    old = snap(NOW - timedelta(days=40), pinned=True)
    newest = snap(NOW)
    d = apply_policy(Policy(keep_last=1, keep_pinned_for=30 * 86400), [recent, old, newest], NOW)
    assert d.keep[recent.id] == [f"pinned until {rfc3339(recent.created + timedelta(days=30))}"]
    assert d.delete[old.id].startswith("pin expired")
    assert newest.id in d.keep


def test_failed_snapshots_do_not_count_and_newest_verified_survives() -> None:
    good = snap(NOW - timedelta(hours=5))
    failed_newer = [snap(NOW - timedelta(hours=h), ok=False) for h in (1, 2)]
    drill_failed = snap(NOW - timedelta(hours=3), drill_ok=False)
    older_good = snap(NOW - timedelta(hours=6))
    failed_older = snap(NOW - timedelta(hours=7), ok=False)
    ms = [*failed_newer, drill_failed, good, older_good, failed_older]
    d = apply_policy(Policy(keep_last=1), ms, NOW)
    # keep_last 1 counts only verified snapshots: `good`, not the newer failures.
    assert "last 1" in d.keep[good.id] and "newest verified" in d.keep[good.id]
    for m in [*failed_newer, drill_failed]:
        assert d.keep[m.id] == ["failed verification; kept until a newer snapshot passes"]
    assert older_good.id in d.delete
    assert d.delete[failed_older.id] == f"failed verification; newer verified snapshot {good.id}"


def test_only_failed_snapshots_are_all_kept() -> None:
    ms = [snap(NOW - timedelta(hours=h), ok=False) for h in range(3)]
    d = apply_policy(Policy(keep_last=1), ms, NOW)
    assert set(d.keep) == ids(ms) and not d.delete


def test_order_is_by_parsed_time_not_by_string() -> None:
    # As strings "…T13:00:00+02:00" (11:00 UTC) sorts after "…T12:00:00Z" although it is older.
    utc_noon = snap(datetime(2026, 6, 15, 12, 0, tzinfo=UTC))
    tz = timezone(timedelta(hours=2))
    eleven = datetime(2026, 6, 15, 11, 0, tzinfo=UTC)
    offset = snap(eleven, created_at=eleven.astimezone(tz).isoformat())
    assert offset.created_at > utc_noon.created_at
    d = apply_policy(Policy(keep_last=1), [offset, utc_noon], NOW)
    assert set(d.keep) == {utc_noon.id} and set(d.delete) == {offset.id}
    assert [m.id for m in newest_first([offset, utc_noon])] == [utc_noon.id, offset.id]


def test_empty_listing_decides_nothing() -> None:
    d = apply_policy(Policy(keep_last=3, daily=7), [], NOW)
    assert d.keep == {} and d.delete == {}


def test_stale_debris_respects_age() -> None:
    old, young = NOW - timedelta(days=2), NOW - timedelta(hours=1)
    orphans = [ObjectInfo("snapshots/a.db", 1, old), ObjectInfo("snapshots/b.db", 1, young)]
    partials = [Debris("snapshots/c.db", old, "upload-1"), Debris("snapshots/d.db", young, "upload-2")]
    stale = stale_debris(orphans, partials, NOW, 86400)
    assert [(item.key, item.kind) for item, _ in stale] == [("snapshots/a.db", "orphan"), ("snapshots/c.db", "partial")]


# --- properties ------------------------------------------------------------------------------------

policies = st.builds(
    Policy,
    keep_last=st.integers(1, 6),
    hourly=st.integers(0, 5),
    daily=st.integers(0, 5),
    weekly=st.integers(0, 3),
    monthly=st.integers(0, 3),
    keep_pinned_for=st.sampled_from([0.0, 3600.0, 7 * 86400.0]),
)
one_snapshot = st.tuples(
    st.integers(-3600, 90 * 86400),  # seconds before NOW (a little clock skew allowed)
    st.booleans(),  # pinned
    st.sampled_from(["ok", "ok", "ok", "hash-failed", "drill-failed"]),
    st.sampled_from([0, 2, -5]),  # UTC offset the timestamp is written in
    st.sampled_from(["c1", "c1", "c1", "c2"]),  # cluster id (a second cluster under the prefix)
)
Item = tuple[int, bool, str, int, str]


def build(items: list[Item]) -> list[Manifest]:
    from dataclasses import replace

    out = []
    for ago, pinned, state, offset, cluster in items:
        created = NOW - timedelta(seconds=ago)
        text = created.astimezone(timezone(timedelta(hours=offset))).isoformat()
        m = snap(
            created,
            pinned=pinned,
            ok=state != "hash-failed",
            drill_ok=False if state == "drill-failed" else None,
            created_at=text,
        )
        out.append(replace(m, cluster_id=cluster))
    return out


@settings(max_examples=300, deadline=None)
@given(policy=policies, items=st.lists(one_snapshot, max_size=40))
def test_properties(policy: Policy, items: list[Item]) -> None:
    ms = build(items)
    d = apply_policy(policy, ms, NOW)
    all_ids = ids(ms)
    # Every snapshot is decided exactly once, and every decision carries a reason.
    assert set(d.keep) | set(d.delete) == all_ids
    assert not set(d.keep) & set(d.delete)
    assert all(d.keep[k] for k in d.keep) and all(d.delete.values())
    ordered = sorted(ms, key=lambda m: (m.created, m.id), reverse=True)
    good = [m for m in ordered if m.verified]
    # The newest verified snapshot is never deleted; nor are the keep_last newest verified ones.
    if good:
        assert good[0].id in d.keep
    assert ids(good[: policy.keep_last]) <= set(d.keep)
    for cluster in {m.cluster_id for m in good}:
        assert next(m for m in good if m.cluster_id == cluster).id in d.keep
    # Pinned snapshots inside their window are kept.
    for m in ms:
        if m.pinned and m.created + timedelta(seconds=policy.keep_pinned_for) > NOW:
            assert m.id in d.keep
    # Failed snapshots older than the newest verified one go; newer ones stay.
    for m in ms:
        if not m.verified and good:
            assert (m.id in d.keep) == ((m.created, m.id) > (good[0].created, good[0].id)) or m.pinned
    # The order the store lists them in does not matter.
    shuffled = list(ms)
    random.Random(len(ms)).shuffle(shuffled)
    assert apply_policy(policy, shuffled, NOW) == d
    # Pruning again right away deletes nothing more (retention is idempotent).
    kept = [m for m in ms if m.id in d.keep]
    assert apply_policy(policy, kept, NOW).delete == {}


@settings(max_examples=150, deadline=None)
@given(policy=policies, items=st.lists(one_snapshot, max_size=25), extra=st.lists(one_snapshot, max_size=8))
def test_failed_snapshots_never_push_out_verified_ones(policy: Policy, items: list[Item], extra: list[Item]) -> None:
    ms = build(items)
    failed = build([(a, p, "hash-failed", o, c) for a, p, _, o, c in extra])
    before = apply_policy(policy, ms, NOW)
    after = apply_policy(policy, ms + failed, NOW)
    for m in ms:
        if m.verified:
            assert (m.id in before.keep) == (m.id in after.keep)


def test_newest_verified_of_every_cluster_is_kept() -> None:
    from dataclasses import replace

    old_cluster = [replace(m, cluster_id="0ld") for m in hourly_series(3, start=NOW - timedelta(days=30))]
    current = hourly_series(5)
    d = apply_policy(Policy(keep_last=2), old_cluster + current, NOW)
    assert d.keep[old_cluster[0].id] == ["newest verified of cluster 0ld"]
    assert set(d.keep) == ids(current[:2]) | {old_cluster[0].id}


# --- edges ------------------------------------------------------------------------------------


def test_pin_window_edge_is_exclusive() -> None:
    pinned = snap(NOW - timedelta(days=30), pinned=True)
    newer = hourly_series(3)
    policy = Policy(keep_last=3, keep_pinned_for=30 * 86400)
    decision = apply_policy(policy, [pinned, *newer], NOW)
    assert pinned.id in decision.delete and "pin expired" in decision.delete[pinned.id]
    just_inside = apply_policy(policy, [pinned, *newer], NOW - timedelta(microseconds=1))
    assert pinned.id in just_inside.keep


def test_keep_last_larger_than_what_exists_keeps_all() -> None:
    series = hourly_series(4)
    decision = apply_policy(Policy(keep_last=100), series, NOW)
    assert set(decision.keep) == ids(series) and decision.delete == {}


def test_ties_on_created_at_are_broken_by_id() -> None:
    twins = [snap(NOW), snap(NOW)]
    decision = apply_policy(Policy(keep_last=1), twins, NOW)
    kept = max(twins, key=lambda m: m.id)
    assert list(decision.keep) == [kept.id] and set(decision.delete) == {min(twins, key=lambda m: m.id).id}


def test_buckets_use_utc_days_whatever_the_offset_in_created_at() -> None:
    # 23:30 at UTC-2 is 01:30 UTC the next day: the daily bucket follows UTC.
    late = snap(datetime(2026, 6, 14, 23, 30, tzinfo=timezone(timedelta(hours=-2))))
    earlier = snap(datetime(2026, 6, 15, 0, 30, tzinfo=UTC))
    decision = apply_policy(Policy(keep_last=1, daily=2), [late, earlier], NOW)
    assert "daily 2026-06-15" in decision.keep[late.id]
    assert earlier.id in decision.delete  # the same UTC day, older
