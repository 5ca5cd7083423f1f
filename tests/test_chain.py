"""Chains, gaps, plans and retention of deltas as pure functions: examples, then properties
checked against a brute-force model (the set of revisions every delta holds)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from etcd_backup import chain
from etcd_backup.chain import Gap, Unreachable
from etcd_backup.delta import DeltaRef, manifest_key, parse_key, stem_of
from etcd_backup.model import Check, Manifest, Verification, rfc3339

pytestmark = pytest.mark.timeout(120)

T0 = datetime(2026, 6, 1, tzinfo=UTC)
CLUSTER = "c1"


def at(revision: int) -> datetime:
    """Every revision is seen one second after the previous one (revision 0 at T0)."""
    return T0 + timedelta(seconds=revision)


def base(revision: int, *, ok: bool = True, cluster: str = CLUSTER) -> Manifest:
    when = at(revision)
    check = Check(ok, rfc3339(when))
    sid = f"{when:%Y%m%dT%H%M%S}000Z-{revision:06x}"
    return Manifest(
        id=sid,
        created_at=rfc3339(when),
        reason="schedule",
        pinned=False,
        cluster_id=cluster,
        member_id="1",
        endpoint="http://e",
        etcd_version="3.5.1",
        revision=revision,
        keys=1,
        db_size=1,
        object_key=f"snapshots/{sid}.db",
        object_size=33,
        object_sha256="0" * 64,
        compression="none",
        verification=Verification(check, Check(True, rfc3339(when))),
    )


def delta(first: int, last: int, writer: str = "a", cluster: str = CLUSTER) -> DeltaRef:
    key = manifest_key(cluster, stem_of(first, last, at(first), at(last), writer))
    ref = parse_key(key)
    assert ref is not None
    return ref


def test_key_round_trip_and_order() -> None:
    d = delta(101, 250, "x1")
    assert (d.first_revision, d.last_revision, d.writer) == (101, 250, "x1")
    assert d.first_time == at(101) and d.last_time == at(250)
    # Keys sort by the last revision: one listing after revision R yields what reaches past R.
    keys = sorted(delta(a, b).key for a, b in [(5, 9), (1, 20), (10, 11)])
    assert [parse_key(k).last_revision for k in keys] == [9, 11, 20]  # type: ignore[union-attr]
    assert parse_key("deltas/c1/nonsense.json") is None and parse_key("snapshots/x.json") is None


def test_a_chain_with_a_gap_and_the_next_base() -> None:
    bases = [base(100), base(300)]
    deltas = [delta(101, 150), delta(151, 200), delta(221, 320)]
    older, newer = reversed(chain.chains(bases, deltas))
    assert (older.from_revision, older.to_revision, older.until) == (100, 300, 300)
    assert older.gaps == (Gap(200, 221),)
    assert older.reach.tip == 200 and len(older.deltas) == 3
    assert (newer.from_revision, newer.to_revision, newer.gaps) == (300, 320, ())
    # Cut at the next base, the chain's newest time is that of its newest revision, not of the
    # delta that runs on past it (the next base was taken at revision 300).
    assert (older.to_time, newer.to_time) == (at(300), at(320))


def test_plan_uses_the_newest_base_that_reaches() -> None:
    bases = [base(100), base(300)]
    deltas = [delta(101, 150), delta(151, 200), delta(221, 320)]
    p = chain.plan_revision(bases, deltas, 180, CLUSTER)
    assert p.base.revision == 100 and [d.last_revision for d in p.deltas] == [150, 200] and p.target == 180
    assert chain.plan_revision(bases, deltas, 300, CLUSTER).deltas == ()  # the base itself
    assert chain.plan_revision(bases, deltas, 310, CLUSTER).base.revision == 300
    with pytest.raises(Unreachable, match=r"revision 210 cannot be restored \(in a gap\).*revision 200.*revision 300"):
        chain.plan_revision(bases, deltas, 210, CLUSTER)
    # Stored (221..320) but behind the hole, and before the next base: the gap is named.
    with pytest.raises(Unreachable, match=r"revision 250 cannot be restored \(behind a gap: revisions 201 to 220 "):
        chain.plan_revision(bases, deltas, 250, CLUSTER)
    with pytest.raises(Unreachable, match=r"revision 50 cannot be restored \(not covered\)"):
        chain.plan_revision(bases, deltas, 50, CLUSTER)
    with pytest.raises(Unreachable, match=r"\(after the newest point stored\): the newest before it is revision 320"):
        chain.plan_revision(bases, deltas, 321, CLUSTER)
    with pytest.raises(Unreachable):
        chain.plan_revision(bases, deltas, 150, "another-cluster")
    # One chain with a hole and no newer base (a delta lost): inside it, and behind it.
    holed = [delta(101, 150), delta(171, 200)]
    with pytest.raises(Unreachable, match=r"revision 160 cannot be restored \(in a gap\)"):
        chain.plan_revision([base(100)], holed, 160, CLUSTER)
    with pytest.raises(Unreachable, match=r"revision 180 cannot be restored \(behind a gap: revisions 151 to 170 "):
        chain.plan_revision([base(100)], holed, 180, CLUSTER)


def test_overlapping_deltas_of_two_writers_are_one_cover() -> None:
    bases = [base(100)]
    deltas = [delta(101, 160, "a"), delta(140, 200, "b"), delta(101, 150, "b"), delta(201, 210, "a")]
    p = chain.plan_latest(bases, deltas, CLUSTER)
    assert p.target == 210 and [d.last_revision for d in p.deltas] == [160, 200, 210]
    (c,) = chain.chains(bases, deltas)
    assert c.gaps == () and c.to_revision == 210


def test_latest_without_deltas_is_the_snapshot_and_failed_bases_are_no_base() -> None:
    assert chain.plan_latest([base(100), base(90)], [], CLUSTER).target == 100
    assert chain.plan_latest([base(100), base(200, ok=False)], [delta(101, 120)], CLUSTER).target == 120
    with pytest.raises(Unreachable):
        chain.plan_latest([base(100, ok=False)], [], CLUSTER)


def test_time_location() -> None:
    bases = [base(100)]
    deltas = [delta(101, 150), delta(151, 200)]
    exact = chain.locate_time(bases, deltas, at(150) + timedelta(milliseconds=500), CLUSTER)
    assert exact.floor == 150 and exact.read is None
    inside = chain.locate_time(bases, deltas, at(170), CLUSTER)
    assert inside.floor == 150 and inside.read is not None and inside.read.last_revision == 200
    after = chain.locate_time(bases, deltas, at(500), CLUSTER)
    assert after.floor == 200 and after.read is None
    with pytest.raises(Unreachable, match="nothing was backed up"):
        chain.locate_time(bases, deltas, at(50), CLUSTER)
    # Revisions 201-220 were never stored: at a time before the next stored one the state is unknown.
    gapped = [*deltas, delta(221, 320)]
    with pytest.raises(Unreachable, match=r"falls in a gap: revisions 201 to 220 .* revision 200, .* revision 221"):
        chain.locate_time(bases, gapped, at(210), CLUSTER)
    assert chain.locate_time(bases, gapped, at(200), CLUSTER).floor == 200  # the gap's edge is known
    assert chain.locate_time(bases, gapped, at(230), CLUSTER).read is not None  # inside the next delta


def test_retention_keeps_the_chains_of_kept_snapshots() -> None:
    old, mid, new = base(100), base(200), base(300)
    deltas = [delta(101, 150), delta(151, 205), delta(206, 290), delta(291, 310), delta(311, 400)]
    decision = chain.retain([old, mid, new], {mid.id, new.id}, deltas)
    assert set(decision.delete) == {deltas[0].key}  # only the deleted base's own chain
    assert decision.keep[deltas[1].key].startswith("chain of")  # reaches into mid's range
    assert decision.keep[deltas[4].key] == f"chain of {new.id}"  # newer than the newest verified
    orphan = delta(5, 9, cluster="gone")
    assert chain.retain([old], {old.id}, [orphan]).keep[orphan.key].startswith("no verified full snapshot")


# --- properties ----------------------------------------------------------------------------


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[Manifest], list[DeltaRef], int]:
    top = draw(st.integers(10, 80))
    base_revs = sorted(set(draw(st.lists(st.integers(1, top), min_size=1, max_size=5))))
    bases = [base(r, ok=draw(st.booleans()) or r == base_revs[0]) for r in base_revs]
    intervals = draw(
        st.lists(st.tuples(st.integers(1, top), st.integers(0, 12)), max_size=25).map(
            lambda xs: [(a, min(top, a + n)) for a, n in xs]
        )
    )
    deltas = [delta(a, b, writer=f"w{i % 2}") for i, (a, b) in enumerate(intervals)]
    return bases, deltas, top


def _covered(deltas: list[DeltaRef]) -> set[int]:
    return {r for d in deltas for r in range(d.first_revision, d.last_revision + 1)}


@settings(max_examples=300, deadline=None)
@given(histories(), st.integers(0, 85))
def test_plan_matches_the_model(history: tuple[list[Manifest], list[DeltaRef], int], target: int) -> None:
    bases, deltas, _top = history
    covered = _covered(deltas)
    good = [b for b in bases if b.verified and b.revision <= target]
    reachable = [b for b in good if all(r in covered for r in range(b.revision + 1, target + 1))]
    if not reachable:
        with pytest.raises(Unreachable):
            chain.plan_revision(bases, deltas, target, CLUSTER)
        return
    p = chain.plan_revision(bases, deltas, target, CLUSTER)
    assert p.base == max(reachable, key=lambda b: b.revision) and p.target == target
    applied = p.base.revision
    for d in p.deltas:  # in order, each continues where the previous ended, and each is needed
        assert d.first_revision <= applied + 1 < d.last_revision + 1
        assert applied < target
        applied = d.last_revision
    assert applied >= target


@settings(max_examples=300, deadline=None)
@given(histories())
def test_chains_and_latest_match_the_model(history: tuple[list[Manifest], list[DeltaRef], int]) -> None:
    bases, deltas, _top = history
    covered = _covered(deltas)
    for c in chain.chains(bases, deltas):
        hi = c.to_revision
        missing = {r for r in range(c.from_revision + 1, hi + 1) if r not in covered}
        in_gaps = {r for g in c.gaps for r in range(g.after_revision + 1, g.before_revision)}
        assert missing <= in_gaps
        assert all(r not in covered for r in in_gaps if r <= hi)
        assert c.reach.tip >= c.from_revision
        assert all(r in covered for r in range(c.from_revision + 1, c.reach.tip + 1))
    latest = chain.plan_latest(bases, deltas, CLUSTER)
    tips = []
    for b in (b for b in bases if b.verified):
        tip = b.revision
        while tip + 1 in covered:
            tip += 1
        tips.append(tip)
    assert latest.target == max(tips)


@settings(max_examples=200, deadline=None)
@given(histories(), st.data())
def test_retention_never_drops_what_a_kept_chain_needs(
    history: tuple[list[Manifest], list[DeltaRef], int], data: st.DataObject
) -> None:
    bases, deltas, _top = history
    good = [b for b in bases if b.verified]
    newest = max(good, key=lambda b: b.revision)
    kept = {newest.id} | {b.id for b in good if data.draw(st.booleans())}
    decision = chain.retain(bases, kept, deltas)
    assert set(decision.keep) | set(decision.delete) == {d.key for d in deltas}
    remaining = [d for d in deltas if d.key in decision.keep]
    for b in (b for b in good if b.id in kept):
        # Whatever a kept base could restore before, it still can.
        for target in range(b.revision, max((d.last_revision for d in deltas), default=b.revision) + 1):
            try:
                before = chain.plan_revision(bases, deltas, target, CLUSTER)
            except Unreachable:
                continue
            if before.base.id != b.id:
                continue
            assert chain.plan_revision(bases, remaining, target, CLUSTER).target == target
    assert all(d.key in decision.keep for d in deltas if d.last_revision > newest.revision)


# --- the same answers as the first, quadratic definitions, at any scale -------------------------
# chains, plans and retention pick the deltas of a range by bisection instead of filtering every
# delta for every base (a month of 10 s deltas behind 30 min snapshots: 250,000 x 1,400). These
# are the definitions they replaced, word for word in effect: the answers must not change.


def _reference_chains(bases: list[Manifest], deltas: list[DeltaRef]) -> list[chain.Chain]:
    good = sorted((m for m in bases if m.verified), key=lambda m: (m.cluster_id, m.revision, m.created, m.id))
    out = []
    for i, b in enumerate(good):
        nxt = good[i + 1] if i + 1 < len(good) and good[i + 1].cluster_id == b.cluster_id else None
        until = nxt.revision if nxt is not None else None
        mine = [
            d
            for d in deltas
            if d.cluster_id == b.cluster_id
            and d.last_revision > b.revision
            and (until is None or d.first_revision <= until)
        ]
        reach, gaps = chain.cover(b.revision, mine, until)
        held = max((d.last_revision for d in mine), default=b.revision)
        if until is not None and held + 1 < until:
            gaps.append(Gap(held, until))
        to_revision = min(held, until) if until is not None else held
        to_time = max((d.last_time for d in mine), default=b.created) if mine else b.created
        if nxt is not None and held >= nxt.revision:
            to_time = min(to_time, nxt.created)
        out.append(chain.Chain(b, until, tuple(mine), to_revision, to_time, tuple(gaps), reach))
    out.sort(key=lambda c: (c.base.created, c.base.id), reverse=True)
    return out


def _reference_latest(bases: list[Manifest], deltas: list[DeltaRef], cluster: str) -> chain.Plan:
    best = None
    for c in (c for c in _reference_chains(bases, deltas) if c.base.cluster_id == cluster):
        reach, _ = chain.cover(c.base.revision, chain.deltas_of(deltas, cluster), None)
        if best is None or reach.tip > best.target:
            best = chain.Plan(c.base, reach.used, reach.tip)
    assert best is not None
    return best


def _reference_plan(bases: list[Manifest], deltas: list[DeltaRef], revision: int, cluster: str) -> chain.Plan | None:
    for c in (c for c in _reference_chains(bases, deltas) if c.base.cluster_id == cluster):
        if c.base.revision > revision:
            continue
        reach, _ = chain.cover(c.base.revision, chain.deltas_of(deltas, cluster), None)
        if revision <= reach.tip:
            applied, used = c.base.revision, []
            for d in reach.used:
                if applied >= revision:
                    break
                used.append(d)
                applied = d.last_revision
            return chain.Plan(c.base, tuple(used), revision)
    return None


def _reference_retain(bases: list[Manifest], kept_ids: set[str], deltas: list[DeltaRef]) -> chain.DeltaDecision:
    all_chains = _reference_chains(bases, deltas)
    kept = [c for c in all_chains if c.base.id in kept_ids]
    with_base = {c.base.cluster_id for c in all_chains}
    keep, delete = {}, {}

    def reaches(c: chain.Chain, d: DeltaRef) -> bool:
        return (
            c.base.cluster_id == d.cluster_id
            and d.last_revision > c.base.revision
            and (c.until is None or d.first_revision <= c.until)
        )

    for d in deltas:
        if d.cluster_id not in with_base:
            keep[d.key] = "no verified full snapshot of its cluster"
            continue
        owner = next((c for c in kept if reaches(c, d)), None)
        if owner is not None:
            keep[d.key] = f"chain of {owner.base.id}"
        else:
            dropped = next((c for c in all_chains if reaches(c, d)), None)
            delete[d.key] = f"chain of deleted snapshot {dropped.base.id}" if dropped else "before every kept chain"
    return chain.DeltaDecision(keep, delete)


@st.composite
def two_cluster_histories(draw: st.DrawFn) -> tuple[list[Manifest], list[DeltaRef]]:
    """Histories of CLUSTER and a second cluster in one bucket, with bases at equal revisions,
    wide deltas spanning several chains, and deltas of a cluster without any base."""
    bases, deltas, top = draw(histories())
    other = [base(r, cluster="c2") for r in draw(st.lists(st.integers(1, top), max_size=3))]
    dup = [base(b.revision, cluster=b.cluster_id) for b in bases if draw(st.booleans()) and b.verified]
    wide = [
        delta(a, min(top, a + n), "wx")
        for a, n in draw(st.lists(st.tuples(st.integers(1, top), st.integers(20, 60)), max_size=3))
    ]
    foreign = [
        delta(a, a + 3, "w0", cluster=c)
        for a, c in draw(st.lists(st.tuples(st.integers(1, top), st.sampled_from(["c2", "nobase"])), max_size=6))
    ]
    everything = deltas + wide + foreign
    draw(st.randoms()).shuffle(everything)
    return bases + other + dup, everything


@settings(max_examples=400, deadline=None)
@given(two_cluster_histories(), st.integers(0, 90), st.data())
def test_fast_chains_plans_and_retention_answer_as_the_reference(
    history: tuple[list[Manifest], list[DeltaRef]], target: int, data: st.DataObject
) -> None:
    bases, deltas = history
    assert chain.chains(bases, deltas) == _reference_chains(bases, deltas)
    assert chain.chains(bases, deltas, CLUSTER) == [
        c for c in _reference_chains(bases, deltas) if c.base.cluster_id == CLUSTER
    ]
    for cluster in (CLUSTER, "c2"):
        if any(b.verified and b.cluster_id == cluster for b in bases):
            assert chain.plan_latest(bases, deltas, cluster) == _reference_latest(bases, deltas, cluster)
        expected = _reference_plan(bases, deltas, target, cluster)
        if expected is None:
            with pytest.raises(Unreachable):
                chain.plan_revision(bases, deltas, target, cluster)
        else:
            assert chain.plan_revision(bases, deltas, target, cluster) == expected
    kept = {b.id for b in bases if data.draw(st.booleans())}
    assert chain.retain(bases, kept, deltas) == _reference_retain(bases, kept, deltas)
