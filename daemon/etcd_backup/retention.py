"""Retention policy: which snapshots to keep, which to delete, and why. Pure: no I/O, `now` given.

Rules, in the order they are applied (a snapshot may be kept for several reasons):

1. `keep_last`: the N newest snapshots that passed verification.
2. Buckets (restic-style): for each of hourly/daily/weekly/monthly, the newest verified snapshot
   in each of the last N hours/days/ISO weeks/months (UTC) that hold one.
3. Pinned snapshots (pre-change, `--pin`) for `keep_pinned_for` after they were taken.
4. The newest verified snapshot, always, whatever the numbers say; and the newest verified
   snapshot of every other cluster id under the prefix (e.g. the cluster as it was before a
   `restore cluster` gave it a new id), so no cluster's last good backup goes by count alone.
5. A snapshot that failed verification counts for nothing in 1 and 2. It is kept while it is
   newer than the newest verified snapshot (it is the evidence of the current problem and there
   is nothing better to restore), and deleted once a newer snapshot passed.

Everything is ordered by the parsed `created_at` (then id), never by the string.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from .model import Manifest, rfc3339


@dataclass(frozen=True, slots=True)
class Policy:
    keep_last: int
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    keep_pinned_for: float = 0.0  # seconds

    def describe(self) -> str:
        parts = [f"keep_last {self.keep_last}"]
        parts += [f"{name} {n}" for name, n, _ in self.buckets() if n]
        return ", ".join(parts)

    def buckets(self) -> list[tuple[str, int, Callable[[datetime], str]]]:
        return [
            ("hourly", self.hourly, lambda t: t.strftime("%Y-%m-%dT%H")),
            ("daily", self.daily, lambda t: t.strftime("%Y-%m-%d")),
            ("weekly", self.weekly, lambda t: "{:04d}-W{:02d}".format(*t.isocalendar()[:2])),
            ("monthly", self.monthly, lambda t: t.strftime("%Y-%m")),
        ]


@dataclass(frozen=True, slots=True)
class Decision:
    keep: dict[str, list[str]] = field(default_factory=dict)  # id -> every reason it is kept
    delete: dict[str, str] = field(default_factory=dict)  # id -> why it goes


def newest_first(manifests: Iterable[Manifest]) -> list[Manifest]:
    return sorted(manifests, key=lambda m: (m.created, m.id), reverse=True)


def apply_policy(policy: Policy, manifests: Iterable[Manifest], now: datetime) -> Decision:
    ordered = newest_first(manifests)
    good = [m for m in ordered if m.verified]
    keep: dict[str, list[str]] = {}

    def mark(m: Manifest, reason: str) -> None:
        keep.setdefault(m.id, []).append(reason)

    for m in good[: policy.keep_last]:
        mark(m, f"last {policy.keep_last}")
    for name, count, bucket_of in policy.buckets():
        seen: set[str] = set()
        for m in good:
            if len(seen) >= count:
                break
            bucket = bucket_of(m.created)
            if bucket not in seen:
                seen.add(bucket)
                mark(m, f"{name} {bucket}")
    pin_window = timedelta(seconds=policy.keep_pinned_for)
    for m in ordered:
        if m.pinned and now < m.created + pin_window:
            mark(m, f"pinned until {rfc3339(m.created + pin_window)}")
    newest_good = good[0] if good else None
    if newest_good is not None:
        mark(newest_good, "newest verified")
    seen_clusters = {newest_good.cluster_id} if newest_good else set()
    for m in good:
        if m.cluster_id not in seen_clusters:
            seen_clusters.add(m.cluster_id)
            mark(m, f"newest verified of cluster {m.cluster_id}")
    for m in ordered:
        if m is newest_good:
            break  # everything before it in `ordered` is newer
        mark(m, "failed verification; kept until a newer snapshot passes")

    delete: dict[str, str] = {}
    for m in ordered:
        if m.id in keep:
            continue
        if not m.verified:
            delete[m.id] = f"failed verification; newer verified snapshot {newest_good.id if newest_good else '?'}"
        elif m.pinned:
            delete[m.id] = f"pin expired {rfc3339(m.created + pin_window)}; outside policy ({policy.describe()})"
        else:
            delete[m.id] = f"outside policy ({policy.describe()})"
    return Decision(keep, delete)
