"""What can be restored: chains of a full snapshot and the deltas after it, their gaps, the plan
for a target revision, latest point or time, and which deltas retention keeps. Pure: every
input (manifests, delta refs from listings) is an argument; `timeline`, restore, fetch, prune
and doctor all ask here and none re-derives it.

A chain belongs to one verified full snapshot (its base) and spans the revisions after it up to
the next verified base of the same cluster. Deltas may overlap (two sidecars around a leader
change wrote the same revisions): coverage is their union, and a plan uses as few as it can.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .delta import DeltaRef
from .errors import UsageError
from .model import Manifest, rfc3339


@dataclass(frozen=True, slots=True)
class Gap:
    """Revisions after `after_revision` and before `before_revision` are in no delta."""

    after_revision: int
    before_revision: int

    def to_dict(self) -> dict[str, int]:
        return {"after_revision": self.after_revision, "before_revision": self.before_revision}


@dataclass(frozen=True, slots=True)
class Cover:
    """How far deltas reach from a start revision without a gap, and the deltas that get there."""

    tip: int
    tip_time: datetime | None
    used: tuple[DeltaRef, ...]


def cover(start: int, deltas: Iterable[DeltaRef], limit: int | None = None) -> tuple[Cover, list[Gap]]:
    """Greedy interval cover from `start` (as few deltas as possible); also every gap up to the
    newest revision the deltas hold (or `limit`)."""
    pool = sorted((d for d in deltas if d.last_revision > start), key=lambda d: (d.first_revision, -d.last_revision))
    cur, cur_time = start, None
    used: list[DeltaRef] = []
    gaps: list[Gap] = []
    first_cover: Cover | None = None
    i = 0
    while i < len(pool):
        best: DeltaRef | None = None
        while i < len(pool) and pool[i].first_revision <= cur + 1:
            if pool[i].last_revision > cur and (best is None or pool[i].last_revision > best.last_revision):
                best = pool[i]
            i += 1
        if best is not None:
            used.append(best)
            cur, cur_time = best.last_revision, best.last_time
            continue
        if i >= len(pool) or (limit is not None and cur >= limit):
            break
        # Nothing continues from `cur`: a gap up to the next delta's first revision.
        if first_cover is None:
            first_cover = Cover(cur, cur_time, tuple(used))
        gaps.append(Gap(cur, pool[i].first_revision))
        cur = pool[i].first_revision - 1
    reached = first_cover or Cover(cur, cur_time, tuple(used))
    if limit is not None:
        gaps = [g for g in gaps if g.after_revision < limit]
    return reached, gaps


@dataclass(frozen=True, slots=True)
class Chain:
    base: Manifest
    until: int | None  # the next verified base's revision: the chain's own range ends there
    deltas: tuple[DeltaRef, ...]  # every delta reaching into the range
    to_revision: int  # the newest revision its deltas hold (within the range)
    to_time: datetime
    gaps: tuple[Gap, ...]
    reach: Cover  # restorable without a gap: base.revision .. reach.tip

    @property
    def from_revision(self) -> int:
        return self.base.revision

    def to_dict(self) -> dict[str, Any]:
        return {
            "snapshot": self.base.id,
            "cluster_id": self.base.cluster_id,
            "from_revision": self.from_revision,
            "to_revision": self.to_revision,
            "from_time": self.base.created_at,
            "to_time": rfc3339(self.to_time),
            "deltas": len(self.deltas),
            "gaps": [g.to_dict() for g in self.gaps],
        }


def _bases(manifests: Iterable[Manifest], cluster_id: str | None) -> list[Manifest]:
    """Verified full snapshots, oldest first (by revision, then time)."""
    good = [m for m in manifests if m.verified and (cluster_id is None or m.cluster_id == cluster_id)]
    return sorted(good, key=lambda m: (m.cluster_id, m.revision, m.created, m.id))


def chains(manifests: Iterable[Manifest], deltas: Sequence[DeltaRef], cluster_id: str | None = None) -> list[Chain]:
    """Every chain, newest first (by base time)."""
    out = _chains_in_order(manifests, deltas, cluster_id)
    out.sort(key=lambda c: (c.base.created, c.base.id), reverse=True)
    return out


class _ByLast:
    """One cluster's deltas sorted by last revision, to pick those reaching into a range without
    looking at all of them (a bucket holds a quarter of a million after 30 days)."""

    def __init__(self) -> None:
        self.items: list[tuple[int, int, DeltaRef]] = []  # (last revision, input position, delta)
        self.lasts: list[int] = []
        self.span = 0  # the widest delta (last - first): how far past a range's end one may start inside it

    def add(self, position: int, d: DeltaRef) -> None:
        self.items.append((d.last_revision, position, d))
        self.span = max(self.span, d.last_revision - d.first_revision)

    def seal(self) -> None:
        self.items.sort(key=lambda x: (x[0], x[1]))
        self.lasts = [x[0] for x in self.items]

    def reaching_into(self, after: int, until: int | None) -> list[DeltaRef]:
        """Deltas with last revision > `after` and first revision <= `until`, in input order."""
        found: list[tuple[int, DeltaRef]] = []
        items = self.items
        for i in range(bisect_right(self.lasts, after), len(items)):  # by index: no copy of the rest
            last, position, d = items[i]
            if until is not None and last - self.span > until:
                break  # every delta from here on starts after `until`
            if until is None or d.first_revision <= until:
                found.append((position, d))
        found.sort(key=lambda x: x[0])
        return [d for _, d in found]


def _chains_in_order(manifests: Iterable[Manifest], deltas: Sequence[DeltaRef], cluster_id: str | None) -> list[Chain]:
    """Every chain in base order (cluster, revision, time): each cluster's chains in a row."""
    bases = _bases(manifests, cluster_id)
    by_cluster: dict[str, _ByLast] = {}
    for position, d in enumerate(deltas):
        by_cluster.setdefault(d.cluster_id, _ByLast()).add(position, d)
    for ordered in by_cluster.values():
        ordered.seal()
    out: list[Chain] = []
    for i, base in enumerate(bases):
        nxt = bases[i + 1] if i + 1 < len(bases) and bases[i + 1].cluster_id == base.cluster_id else None
        until = nxt.revision if nxt is not None else None
        group = by_cluster.get(base.cluster_id)
        mine = group.reaching_into(base.revision, until) if group is not None else []
        reach, gaps = cover(base.revision, mine, until)
        held = max((d.last_revision for d in mine), default=base.revision)
        if until is not None and held + 1 < until:
            gaps.append(Gap(held, until))  # nothing reaches the next base: the revisions between are lost
        to_revision = min(held, until) if until is not None else held
        to_time = max((d.last_time for d in mine), default=base.created) if mine else base.created
        if nxt is not None and held >= nxt.revision:  # cut at the next base: the time of its revision
            to_time = min(to_time, nxt.created)
        out.append(Chain(base, until, tuple(mine), to_revision, to_time, tuple(gaps), reach))
    return out


class _Coverage:
    """The revisions one cluster's deltas hold, as sorted disjoint runs (overlapping and adjacent
    deltas merged): how far a chain reaches from any start without a gap is one bisection,
    where a cover from every base would sort every delta once per base."""

    def __init__(self, deltas: Iterable[DeltaRef]) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []
        for first, last in sorted((d.first_revision, d.last_revision) for d in deltas):
            if self.ends and first <= self.ends[-1] + 1:
                self.ends[-1] = max(self.ends[-1], last)
            else:
                self.starts.append(first)
                self.ends.append(last)

    def tip(self, start: int) -> int:
        """The newest revision reachable from `start`: every revision after it up to the tip is held."""
        i = bisect_right(self.starts, start + 1) - 1
        return self.ends[i] if i >= 0 and self.ends[i] > start else start


def _coverages(deltas: Sequence[DeltaRef]) -> dict[str, _Coverage]:
    by_cluster: dict[str, list[DeltaRef]] = {}
    for d in deltas:
        by_cluster.setdefault(d.cluster_id, []).append(d)
    return {c: _Coverage(ds) for c, ds in by_cluster.items()}


def _tip(coverages: dict[str, _Coverage], base: Manifest) -> int:
    cov = coverages.get(base.cluster_id)
    return cov.tip(base.revision) if cov is not None else base.revision


# --- plans ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Plan:
    """Restore `base`, then apply `deltas` in order (skipping revisions already applied) up to `target`."""

    base: Manifest
    deltas: tuple[DeltaRef, ...]
    target: int

    @property
    def revisions(self) -> int:
        """How many revisions the deltas add to the base."""
        return self.target - self.base.revision


class Unreachable(UsageError):
    """No chain reaches the target; the message names the nearest restorable points."""


@dataclass(frozen=True, slots=True)
class Point:
    revision: int
    time: datetime | None
    snapshot: str

    def describe(self) -> str:
        when = f" ({rfc3339(self.time)})" if self.time is not None else ""
        return f"revision {self.revision}{when}"


def restorable(chain_list: Iterable[Chain]) -> list[tuple[Point, Point]]:
    """Each chain's restorable stretch: (first point, last point), oldest first."""
    out = []
    for c in chain_list:
        lo = Point(c.base.revision, c.base.created, c.base.id)
        hi = Point(c.reach.tip, c.reach.tip_time or c.base.created, c.base.id)
        out.append((lo, hi))
    return sorted(out, key=lambda p: p[0].revision)


def _nearest(chain_list: Sequence[Chain], revision: int) -> str:
    below = [hi if hi.revision <= revision else None for lo, hi in restorable(chain_list) if lo.revision <= revision]
    above = [lo for lo, _ in restorable(chain_list) if lo.revision > revision]
    parts = []
    if below_points := [p for p in below if p is not None]:
        parts.append(f"the newest before it is {max(below_points, key=lambda p: p.revision).describe()}")
    if above:
        parts.append(f"the next after it is {min(above, key=lambda p: p.revision).describe()}")
    return "; ".join(parts) or "nothing can be restored (no verified full snapshot)"


def plan_revision(
    manifests: Iterable[Manifest], deltas: Sequence[DeltaRef], revision: int, cluster_id: str | None
) -> Plan:
    """The newest verified base at or below `revision` from which an unbroken chain reaches it."""
    chain_list = chains(manifests, deltas, cluster_id)
    coverages = _coverages(deltas)
    for c in chain_list:  # newest base first
        if c.base.revision > revision or revision > _tip(coverages, c.base):
            continue
        reach, _ = cover(c.base.revision, deltas_of(deltas, c.base.cluster_id), None)
        return Plan(c.base, _needed(reach.used, c.base.revision, revision), revision)
    ranges = list(restorable(chain_list))
    # Stored, but behind a hole in its chain (the deltas holding it cannot be replayed): say so,
    # not "after the newest point", which would send the operator looking for deltas that exist.
    holes = [(c, g) for c in chain_list for g in c.gaps]
    behind = next((g for c, g in holes if g.before_revision <= revision <= c.to_revision), None)
    if any(g.after_revision < revision < g.before_revision for _, g in holes):
        where = "in a gap"
    elif behind is not None:
        where = f"behind a gap: revisions {behind.after_revision + 1} to {behind.before_revision - 1} are in no delta"
    elif ranges and all(hi.revision < revision for _, hi in ranges):
        where = "after the newest point stored"
    elif any(lo.revision < revision for lo, _ in ranges):
        where = "in a gap"
    else:
        where = "not covered"
    raise Unreachable(f"revision {revision} cannot be restored ({where}): {_nearest(chain_list, revision)}")


def _needed(used: Sequence[DeltaRef], start: int, target: int) -> tuple[DeltaRef, ...]:
    """The prefix of a cover that gets from `start` to `target`."""
    out = []
    applied = start
    for d in used:
        if applied >= target:
            break
        out.append(d)
        applied = d.last_revision
    return tuple(out)


def deltas_of(deltas: Iterable[DeltaRef], cluster_id: str) -> list[DeltaRef]:
    return [d for d in deltas if d.cluster_id == cluster_id]


def plan_latest(manifests: Iterable[Manifest], deltas: Sequence[DeltaRef], cluster_id: str | None) -> Plan:
    """The newest point any chain reaches: a full snapshot plus every delta after it."""
    chain_list = chains(manifests, deltas, cluster_id)
    if not chain_list:
        raise Unreachable("nothing can be restored: no verified full snapshot" + _of(cluster_id))
    coverages = _coverages(deltas)
    best, best_tip = chain_list[0], _tip(coverages, chain_list[0].base)
    for c in chain_list[1:]:
        tip = _tip(coverages, c.base)
        if tip > best_tip:
            best, best_tip = c, tip
    reach, _ = cover(best.base.revision, deltas_of(deltas, best.base.cluster_id), None)
    return Plan(best.base, reach.used, reach.tip)


def _of(cluster_id: str | None) -> str:
    return f" of cluster {cluster_id}" if cluster_id else ""


@dataclass(frozen=True, slots=True)
class TimeLocation:
    """The newest revision seen at or before a time: `floor` is known from names alone; if
    `read` is set, that delta holds revisions around the time and must be read to refine it."""

    floor: int
    read: DeltaRef | None


def locate_time(
    manifests: Iterable[Manifest], deltas: Sequence[DeltaRef], when: datetime, cluster_id: str | None
) -> TimeLocation:
    chain_list = chains(manifests, deltas, cluster_id)
    bases = [c.base for c in chain_list if c.base.created <= when]
    if not bases:
        oldest = min((c.base for c in chain_list), key=lambda m: m.created, default=None)
        hint = f"; the oldest restorable point is revision {oldest.revision} ({oldest.created_at})" if oldest else ""
        raise Unreachable(f"nothing was backed up at or before {rfc3339(when)}{_of(cluster_id)}{hint}")
    floor = max(m.revision for m in bases)
    mine = [d for d in deltas if cluster_id is None or d.cluster_id == cluster_id]
    floor = max([floor, *(d.last_revision for d in mine if d.last_time <= when)])
    straddling = [d for d in mine if d.first_time <= when < d.last_time and d.last_revision > floor]
    if not straddling:
        _refuse_time_in_gap(chain_list, mine, floor, when)
    return TimeLocation(floor, max(straddling, key=lambda d: d.last_revision) if straddling else None)


def _refuse_time_in_gap(chain_list: Sequence[Chain], mine: Sequence[DeltaRef], floor: int, when: datetime) -> None:
    """Revisions after `floor` were never stored (a recorded gap) and the next stored point is
    newer than `when`: what the cluster held at `when` is unknown, so it is not restored."""
    for c in chain_list:
        for g in c.gaps:
            if g.after_revision != floor:
                continue
            starts = [d.first_time for d in mine if d.first_revision == g.before_revision]
            starts += [b.base.created for b in chain_list if b.base.revision == g.before_revision]
            seen = [d.last_time for d in mine if d.last_revision == floor]
            seen += [b.base.created for b in chain_list if b.base.revision == floor]
            if starts and seen and max(seen) < when < min(starts):
                raise Unreachable(
                    f"{rfc3339(when)} falls in a gap: revisions {g.after_revision + 1} to {g.before_revision - 1} "
                    f"were never stored; the newest before it is revision {floor}, the next after it is revision "
                    f"{g.before_revision} ({rfc3339(min(starts))})"
                )


# --- retention -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeltaDecision:
    keep: dict[str, str]  # delta manifest key -> why
    delete: dict[str, str]  # delta manifest key -> why


def retain(manifests: Iterable[Manifest], kept_ids: set[str], deltas: Sequence[DeltaRef]) -> DeltaDecision:
    """Deltas go with the chains of the full snapshots retention keeps: a delta stays while it
    reaches into the range of a kept verified base; everything newer than a cluster's newest
    verified base stays (that chain is always kept); a cluster without any verified base keeps
    all its deltas (nothing to judge them by)."""
    in_order = _chains_in_order(manifests, deltas, None)
    # The order the reasons are chosen in: newest base first, as `chains` answers.
    rank = {id(c): i for i, c in enumerate(sorted(in_order, key=lambda c: (c.base.created, c.base.id), reverse=True))}
    per_cluster: dict[str, list[Chain]] = {}
    for c in in_order:
        per_cluster.setdefault(c.base.cluster_id, []).append(c)
    starts = {k: [c.base.revision for c in cs] for k, cs in per_cluster.items()}
    ends = {k: [math.inf if c.until is None else c.until for c in cs] for k, cs in per_cluster.items()}
    keep: dict[str, str] = {}
    delete: dict[str, str] = {}
    for d in deltas:
        cs = per_cluster.get(d.cluster_id)
        if cs is None:
            keep[d.key] = "no verified full snapshot of its cluster"
            continue
        # The chains whose range (base revision, until] the delta reaches into: a run of them.
        lo = bisect_left(ends[d.cluster_id], d.first_revision)
        hi = bisect_left(starts[d.cluster_id], d.last_revision)
        reached = sorted(cs[lo:hi], key=lambda c: rank[id(c)])
        owner = next((c for c in reached if c.base.id in kept_ids), None)
        if owner is not None:
            keep[d.key] = f"chain of {owner.base.id}"
        else:
            dropped = reached[0] if reached else None
            delete[d.key] = f"chain of deleted snapshot {dropped.base.id}" if dropped else "before every kept chain"
    return DeltaDecision(keep, delete)
