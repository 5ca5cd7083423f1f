"""A point in time as one snapshot file: the plan's full snapshot restored into a scratch etcd on
loopback, each revision of its deltas replayed as one transaction (so etcd gives it the same
revision, and every key the same create/mod revision and version), then a snapshot taken from
the scratch member at exactly the target revision. Every restore and `fetch` then continue
from that file as they do from a stored snapshot.

Leases: keys written with a lease are replayed attached to a lease of the same ID and TTL. The
scratch member would revoke leases whose TTL runs out during a long replay (a revocation writes
revisions of its own and would break the replay by one), so every lease it holds is kept alive
until the snapshot is taken; in the restored cluster they count down from their full TTL.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime

import structlog

from .. import bbolt, chain, delta, scratch
from .. import manifest as manifests
from ..config import Config
from ..crypto import Identities
from ..errors import EtcdBackupError, IntegrityError, UsageError
from ..etcdclient import KeepAlive, Member
from ..etcdtools import find_restore_tool
from ..manifest import LiveCluster
from ..model import TRAILER, Check, Manifest, rfc3339, utcnow
from ..spool import Spool
from ..storage import SnapshotStore
from ..verify import StoredDelta, Verified, fetch_delta, fetch_verified
from .backup import receive
from .scratchetcd import etcd_binary, serving, unsafe_fast

log = structlog.get_logger(__name__)

MIN_LEASE_TTL = 1  # etcd raises it to its minimum: a lease that had expired when first seen


@dataclass(frozen=True, slots=True)
class Target:
    """What to restore: `latest`, a revision, or the newest revision seen at or before a time."""

    latest: bool = False
    revision: int | None = None
    time: datetime | None = None

    def describe(self) -> str:
        if self.latest:
            return "the latest point"
        if self.revision is not None:
            return f"revision {self.revision}"
        assert self.time is not None
        return f"the newest revision at or before {rfc3339(self.time)}"


def _cluster(store: SnapshotStore, listing: manifests.Listing, live_cluster: LiveCluster) -> str:
    """Whose history: the one cluster in storage, or the one the configured endpoints belong to."""
    clusters = listing.clusters()
    if len(clusters) == 1:
        return next(iter(clusters))
    return listing.latest(store.description, live_cluster).cluster_id


def plan(
    store: SnapshotStore,
    target: Target,
    *,
    snapshot: str | None = None,
    live_cluster: LiveCluster = None,
    identities: Identities | None = None,
    work_dir: str | None = None,
) -> chain.Plan:
    """The base and deltas that reach `target`, listing only what it needs: the deltas after the
    candidate base, newest base first (an older base is listed only if a newer cannot reach).

    `snapshot` names the base; `latest` with a revision or time means the newest one that reaches
    it (the newest snapshot alone would refuse any point before it, which is what an operator
    asking for an older point never means)."""
    listing = manifests.list_snapshots(store)
    if snapshot is not None and snapshot != "latest":
        named = manifests.read(store, snapshot)
        try:
            return _plan(store, [named], named.cluster_id, target, identities=identities, work_dir=work_dir)
        except chain.Unreachable as exc:
            raise _from_another_base(
                store, listing, named, target, exc, identities=identities, work_dir=work_dir
            ) from None
    if snapshot == "latest":
        newest = listing.latest(store.description, live_cluster)
        if target.latest:
            return _plan(store, [newest], newest.cluster_id, target, identities=identities, work_dir=work_dir)
        cluster = newest.cluster_id
    else:
        cluster = _cluster(store, listing, live_cluster)
    bases = [m for m in listing.manifests if m.verified and m.cluster_id == cluster]
    return _plan(store, bases, cluster, target, identities=identities, work_dir=work_dir)


def _from_another_base(
    store: SnapshotStore,
    listing: manifests.Listing,
    named: Manifest,
    target: Target,
    exc: chain.Unreachable,
    *,
    identities: Identities | None,
    work_dir: str | None,
) -> chain.Unreachable:
    """The error for a named snapshot that cannot reach `target`: it says which one can, if any."""
    others = [m for m in listing.manifests if m.verified and m.cluster_id == named.cluster_id and m.id != named.id]
    try:
        other = _plan(store, others, named.cluster_id, target, identities=identities, work_dir=work_dir)
    except EtcdBackupError:  # unreachable from them too, or not readable here: the first answer stands
        return exc
    return chain.Unreachable(
        f"from snapshot {named.id}: {exc}; snapshot {other.base.id} reaches it: give --snapshot {other.base.id}, "
        "or leave --snapshot out"
    )


def _plan(
    store: SnapshotStore,
    bases: list[Manifest],
    cluster: str,
    target: Target,
    *,
    identities: Identities | None,
    work_dir: str | None,
) -> chain.Plan:
    bases = sorted(bases, key=lambda m: (m.revision, m.created), reverse=True)
    if not bases:
        raise chain.Unreachable(f"nothing can be restored: no verified full snapshot of cluster {cluster}")
    if target.latest:
        refs = delta.list_deltas(store, cluster, after=bases[0].revision).refs
        return chain.plan_latest(bases[:1], refs, cluster)
    revision = target.revision
    if target.time is not None:
        revision = _revision_at(
            store, bases=bases, cluster=cluster, when=target.time, identities=identities, work_dir=work_dir
        )
    assert revision is not None
    for base in bases:
        if base.revision > revision:
            continue
        refs = delta.list_deltas(store, cluster, after=base.revision).refs
        try:
            return chain.plan_revision([base], refs, revision, cluster)
        except chain.Unreachable:
            continue
    # Unreachable: say from the whole picture which points are nearest.
    return chain.plan_revision(bases, delta.list_deltas(store, cluster).refs, revision, cluster)


def _revision_at(
    store: SnapshotStore,
    *,
    bases: list[Manifest],
    cluster: str,
    when: datetime,
    identities: Identities | None,
    work_dir: str | None,
) -> int:
    candidates = [b for b in bases if b.created <= when] or bases[-1:]
    refs = delta.list_deltas(store, cluster, after=candidates[0].revision).refs
    located = chain.locate_time(bases, refs, when, cluster)
    if located.read is None:
        return located.floor
    stored = fetch_delta(store, located.read, work_dir, identities=identities)
    try:
        _, records = stored.revisions()
        seen = [r.revision for r in records if r.seen_at <= when]
    finally:
        stored.discard()
    return max([located.floor, *seen])


# --- materialising -------------------------------------------------------------------------------


class _Leases:
    """Keeps every lease of the scratch member alive while the replay runs."""

    def __init__(self, member: Member, known: list[int]) -> None:
        self.known = set(known)
        self._keepalive: KeepAlive = member.keepalive()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="point-leases", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self._keepalive.renew(sorted(self.known))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._keepalive.close()


def materialise(
    cfg: Config,
    store: SnapshotStore,
    p: chain.Plan,
    *,
    identities: Identities | None = None,
    work_dir: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> Verified:
    """One snapshot file at exactly `p.target`. IntegrityError (nothing left behind) when the
    base or a delta fails its checks or the replay diverges; the file is the caller's."""
    started = time.monotonic()
    base = fetch_verified(store, p.base, work_dir, identities=identities)
    if not p.deltas or p.target == p.base.revision:
        return base
    etcd = etcd_binary(cfg, find_restore_tool(cfg.tools.etcdutl or None))  # the server serving() starts
    quota = max(8 * 1024**3, 2 * p.base.db_size)
    extra = [
        *unsafe_fast(etcd),
        "--max-txn-ops=1000000",
        "--max-request-bytes=67108864",
        f"--quota-backend-bytes={quota}",
    ]
    label = f"{p.base.id}-r{p.target}"
    try:
        with serving(cfg, base.path, label, kind=scratch.Kind.POINT, extra_args=extra) as s:
            base.discard()
            applied = s.member.status().revision
            if applied != max(p.base.revision, 1):
                raise IntegrityError(f"snapshot {p.base.id} restores at revision {applied}, not {p.base.revision}")
            leases = _Leases(s.member, s.member.lease_ids())
            try:
                applied = _replay(
                    store,
                    s.member,
                    p,
                    leases=leases,
                    applied=applied,
                    identities=identities,
                    work_dir=work_dir,
                    progress=progress,
                )
            finally:
                leases.close()
            if applied != p.target:
                raise IntegrityError(f"the deltas end at revision {applied}, not {p.target}")
            keys = s.member.count_keys()
            point = _snapshot_of(s.member, label, work_dir, p, keys)
    except BaseException:
        base.discard()
        raise
    log.info(
        "point materialised",
        snapshot=p.base.id,
        revision=p.target,
        deltas=len(p.deltas),
        revisions=p.revisions,
        seconds=round(time.monotonic() - started, 3),
    )
    return point


def _replay(
    store: SnapshotStore,
    member: Member,
    p: chain.Plan,
    *,
    leases: _Leases,
    applied: int,
    identities: Identities | None,
    work_dir: str | None,
    progress: Callable[[int], None] | None,
) -> int:
    """Apply every revision after `applied` up to the target, one transaction each; the next
    delta downloads while this one is applied."""
    with ThreadPoolExecutor(1, thread_name_prefix="delta-fetch") as pool:
        fetches: list[Future[StoredDelta]] = [
            pool.submit(fetch_delta, store, ref, work_dir, identities=identities) for ref in p.deltas[:1]
        ]
        used = 0
        try:
            for i, _ref in enumerate(p.deltas):
                if i + 1 < len(p.deltas):
                    fetches.append(pool.submit(fetch_delta, store, p.deltas[i + 1], work_dir, identities=identities))
                used = i + 1
                stored = fetches[i].result()
                try:
                    applied = _apply(member, leases, stored, applied, target=p.target, progress=progress)
                finally:
                    stored.discard()
        finally:
            # A replay stopped early (a damaged delta, the target reached) leaves the prefetched
            # delta behind: wait for it and remove its scratch files.
            for f in fetches[used:]:
                if not f.cancel():
                    try:
                        f.result().discard()
                    except Exception:  # noqa: BLE001 - a failed fetch cleaned up after itself
                        pass
    return applied


def _apply(
    member: Member,
    leases: _Leases,
    stored: StoredDelta,
    applied: int,
    *,
    target: int,
    progress: Callable[[int], None] | None,
) -> int:
    header, records = stored.revisions()
    for r in records:
        if r.revision <= applied:
            continue  # held by the base or an overlapping delta
        if r.revision > target:
            break
        _grant(member, leases, header, r)
        got = member.txn(r.events)
        if got != r.revision:
            raise IntegrityError(f"replay of delta {stored.manifest.id} diverged: revision {r.revision} became {got}")
        applied = got
        if progress is not None:
            progress(applied)
    return applied


def _grant(member: Member, leases: _Leases, header: delta.Header, r: delta.Revision) -> None:
    for ev in r.events:
        lease = ev.kv.lease
        if lease and not ev.deleted and lease not in leases.known:
            ttl = header.leases.get(lease)
            member.lease_grant(lease, ttl if ttl and ttl > 0 else MIN_LEASE_TTL)
            leases.known.add(lease)


def _snapshot_of(member: Member, label: str, work_dir: str | None, p: chain.Plan, keys: int) -> Verified:
    """The scratch member's database as a snapshot file, checked like any snapshot we take."""
    spool = Spool(work_dir, label)
    try:
        stream = receive(member.snapshot_chunks(), spool, None, member.endpoint)
        spool.finish()
        spool.release()
        status = bbolt.check(spool.path, size=stream.total - TRAILER)
        if status.current_revision != p.target:
            raise IntegrityError(f"the point's database is at revision {status.current_revision}, not {p.target}")
    except BaseException:
        spool.close()
        raise
    out = spool.keep()
    now = rfc3339(utcnow())
    manifest = replace(
        p.base,
        revision=p.target,
        keys=keys,
        db_size=stream.total - TRAILER,
        db_sha256=stream.db_sha256,
        object_sha256=stream.object_sha256,
    )
    return Verified(
        manifest, out, status, Check(True, now, {"sha256": stream.db_sha256}), Check(True, now, status.detail())
    )


def parse_target(latest: bool, revision: int | None, when: str | None) -> Target | None:
    """The `--to-latest | --to-revision N | --to-time T` options as a Target (None: none given)."""
    given = [x for x in (latest or None, revision, when) if x is not None]
    if len(given) > 1:
        raise UsageError("give one of --to-latest, --to-revision and --to-time")
    if latest:
        return Target(latest=True)
    if revision is not None:
        if revision < 1:
            raise UsageError("--to-revision must be a revision (1 or more)")
        return Target(revision=revision)
    if when is not None:
        from ..model import parse_time

        try:
            return Target(time=parse_time(when))
        except ValueError:
            raise UsageError(f"--to-time {when!r} is not an RFC 3339 time like 2026-12-01T08:30:00Z") from None
    return None


def after_the_newest(store: SnapshotStore, p: chain.Plan, target: Target) -> str | None:
    """A note for a --to-time later than the newest change stored (`--to-time now` after the
    daemon died): the restore is of the newest point, and what etcd did after it is in no backup."""
    if target.time is None:
        return None
    try:
        refs = delta.list_deltas(store, p.base.cluster_id, after=p.base.revision).refs
    except EtcdBackupError:
        return None  # a note, not a reason to fail the restore
    newest = max(refs, key=lambda r: r.last_revision, default=None)
    tip, seen = (newest.last_revision, newest.last_time) if newest else (p.base.revision, p.base.created)
    if p.target < tip or target.time <= seen:
        return None
    return (
        f"{rfc3339(target.time)} is after the newest change stored (revision {tip}, seen {rfc3339(seen)}): this "
        "restores that point, and whatever etcd did after it is in no backup"
    )


def newer_revisions(store: SnapshotStore, m: Manifest) -> int:
    """How many revisions after full snapshot `m` its deltas hold without a gap (0 when none)."""
    try:
        refs = delta.list_deltas(store, m.cluster_id, after=m.revision).refs
    except EtcdBackupError:
        return 0
    reach, _ = chain.cover(m.revision, refs)
    return reach.tip - m.revision
