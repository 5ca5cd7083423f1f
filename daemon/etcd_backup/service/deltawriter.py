"""The delta writer: one watch on the whole keyspace, from the revision after the newest one
stored, and every change it sees stored as a delta every `delta.interval`, as soon as
`delta.max_buffer` is buffered, when the watch breaks (a member gone, quorum lost) and at stop.

It never skips a revision: every revision from the chain's full snapshot up to the newest delta
is stored exactly once in order, or the chain shows a gap. When etcd compacted revisions the
watch had not seen (the daemon was stopped too long, or fell behind while storage was down),
the gap is logged and counted and a full snapshot is asked for at once to start a new chain.

Memory is bounded by `max_buffer`: while a delta cannot be stored (storage down), the watch is
not read further (etcd holds the changes, until it compacts them). Deltas are cut at chain
boundaries (a new full snapshot's revision) so that one chain can be listed alone.
"""

from __future__ import annotations

import hashlib
import io
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from .. import __version__, codec, delta
from ..config import Config
from ..errors import EtcdBackupError, EtcdUnavailable
from ..etcdclient import Compacted, Event, Member, WatchStream, connect_healthy, hexid
from ..leadership import Leadership
from ..manifest import CachedListing
from ..metrics import Metrics
from ..model import Manifest, rfc3339, utcnow
from ..storage import SnapshotStore, put_bytes

log = structlog.get_logger(__name__)

RECONNECT_MAX = 10.0
RETRY_MAX = 60.0  # the longest wait between tries to store a delta while storage fails


def retry_delay(failures: int, interval: float) -> float:
    """Wait after the `failures`-th failed try in a row: from the interval (at most 5 s) doubling up
    to a minute or the interval, so a broken store costs a log line now and then, not a hot loop."""
    base = max(1.0, min(interval, 5.0))
    return float(min(max(interval, RETRY_MAX), base * 2 ** min(failures - 1, 16)))


@dataclass(frozen=True, slots=True)
class Stored:
    """The newest revision this writer stored, and when."""

    revision: int
    at: float  # unix time of the commit


class _Buffer:
    """Revisions seen and not yet stored, encoded as they arrive (their size is the bound)."""

    def __init__(self) -> None:
        self.records: list[delta.Revision] = []
        self.lines: list[bytes] = []
        self.size = 0
        self.first_seen: float | None = None  # unix time the oldest buffered change was seen

    def add(self, r: delta.Revision) -> None:
        line = delta.encode_revision(r)
        if not self.records:
            self.first_seen = r.seen_at.timestamp()
        self.records.append(r)
        self.lines.append(line)
        self.size += len(line)

    def take(self, upto: int) -> tuple[list[delta.Revision], list[bytes]]:
        """Remove and return the revisions <= `upto`."""
        n = next((i for i, r in enumerate(self.records) if r.revision > upto), len(self.records))
        records, lines = self.records[:n], self.lines[:n]
        self.records, self.lines = self.records[n:], self.lines[n:]
        self.size -= sum(len(x) for x in lines)
        self.first_seen = self.records[0].seen_at.timestamp() if self.records else None
        return records, lines

    @property
    def last(self) -> int | None:
        return self.records[-1].revision if self.records else None


class DeltaWriter:
    def __init__(
        self,
        cfg: Config,
        store: SnapshotStore,
        *,
        listing: CachedListing,
        metrics: Metrics,
        leadership: Leadership,
        stopping: threading.Event,
        need_full_snapshot: Callable[[], None],
        after: Callable[[delta.DeltaManifest], None] | None = None,
    ) -> None:
        assert cfg.delta.interval is not None
        self.cfg = cfg
        self.store = store
        self.listing = listing
        self.metrics = metrics
        self.leadership = leadership
        self.stopping = stopping
        self.need_full_snapshot = need_full_snapshot
        self.after = after  # told of every delta committed (the second copy follows)
        self.interval: float = cfg.delta.interval
        self.max_buffer = cfg.delta.max_buffer
        self.writer = secrets.token_hex(3)
        self.form = codec.Form.of(cfg)
        self._cond = threading.Condition()
        self._buffer = _Buffer()
        self._flush_lock = threading.Lock()
        self._cluster: str | None = None
        self._member_id = ""
        self._boundaries: set[int] = set()  # revisions of full snapshots: deltas are cut there
        self._leases: dict[int, int | None] = {}
        self._stream: WatchStream | None = None
        self._watching = False
        self._released = False  # the flusher closed the watch: this copy no longer acts
        self._break_logged = False  # one warning per outage, not one per reconnect try
        self._base_seen = threading.Event()
        self._need_base_above: int | None = None  # after a gap: watch again only from a newer base
        self._stored: Stored | None = None
        self._failures = 0  # failed tries in a row to store what is buffered
        self._retry_at = 0.0  # monotonic: no new try before (a final one at stop excepted)
        self._threads: list[threading.Thread] = []
        metrics.delta_lag.set_function(self.lag_seconds)

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        for target, name in ((self._run, "delta-watch"), (self._flusher, "delta-flush")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def join(self, timeout: float) -> bool:
        """After `stopping` is set: wait for the final flush. True if everything ended."""
        self._close_stream()
        with self._cond:
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    def new_base(self, m: Manifest) -> None:
        """A full snapshot was committed: a chain boundary, and maybe the base the watch waits for."""
        with self._cond:
            self._boundaries.add(m.revision)
        self._base_seen.set()

    @property
    def cluster(self) -> str | None:
        return self._cluster

    @property
    def stored(self) -> Stored | None:
        return self._stored

    def lag_seconds(self) -> float:
        """Age of the oldest change seen but not stored yet (0 when everything is stored)."""
        first = self._buffer.first_seen
        return max(0.0, time.time() - first) if first is not None else 0.0

    # --- the watch ---------------------------------------------------------------------------

    def _run(self) -> None:
        backoff = 0.5
        while not self.stopping.is_set():
            try:
                if not self.leadership.acting().acting:
                    self._released = False  # whichever way the closed watch ended, it is over
                    self._flush_all()
                    self.stopping.wait(self.interval)
                    continue
                self._watch_once()
                backoff = 0.5
            except Compacted as exc:
                self._gap(exc)
            except EtcdBackupError as exc:
                self._log_break(exc)
                self._flush_all()
                if self.stopping.wait(backoff):
                    break
                backoff = min(RECONNECT_MAX, backoff * 2, self.interval)
            except Exception as exc:
                log.exception("delta watch failed unexpectedly", error=f"{type(exc).__name__}: {exc}", stage="delta")
                self.metrics.failure("delta")
                if self.stopping.wait(RECONNECT_MAX):
                    break
        self._flush_all(final=True)

    def _log_break(self, exc: EtcdBackupError) -> None:
        if self.stopping.is_set() or self._released:
            self._released = False  # closed on purpose (stop, hand-over), and logged so
            return
        if self._break_logged:
            log.debug("delta watch still broken", error=str(exc), stage="delta")
            return
        self._break_logged = True
        what = "; storing what it saw" if self._buffer.records else ""
        log.warning(f"delta watch broken{what}", error=str(exc), stage="delta")

    def _start_revision(self, member: Member) -> int | None:
        """Where the watch starts: after what is buffered, else after the newest stored revision
        of the newest chain; None while this cluster has no verified full snapshot yet."""
        status = member.status()
        cluster = hexid(status.cluster_id)
        if cluster != self._cluster:
            self._cluster = cluster
            self._member_id = hexid(status.member_id)
            self._buffer = _Buffer()
        buffered = self._buffer.last
        if buffered is not None:
            return buffered + 1
        base = self.listing.list().newest_verified(cluster)
        if base is None or (self._need_base_above is not None and base.revision < self._need_base_above):
            return None
        self._need_base_above = None
        with self._cond:
            self._boundaries.add(base.revision)
        refs = delta.list_deltas(self.store, cluster, after=base.revision).refs
        return max([base.revision, *(r.last_revision for r in refs)]) + 1

    def _watch_once(self) -> None:
        member = self._connect()
        try:
            start = self._start_revision(member)
            if start is None:
                self._base_seen.clear()
                log.info("deltas wait for a verified full snapshot of this cluster", stage="delta")
                self._base_seen.wait(self.interval)
                return
            stream = member.watch(start)
            with self._cond:
                self._stream, self._watching = stream, True
            log.info("delta watch started", revision=start, endpoint=member.endpoint, stage="delta")
            self._break_logged = self._released = False
            try:
                self._follow(member, stream, start)
            finally:
                with self._cond:
                    self._stream, self._watching = None, False
                stream.close()
            self._flush_all()
        finally:
            member.close()

    def _connect(self) -> Member:
        """The local member (sidecar), else the leader if a configured endpoint is: it applies a
        write before answering the client, so its watch has every acknowledged write first."""
        if self.cfg.schedule.mode == "sidecar":
            return Member(self.cfg.etcd, self.cfg.etcd.endpoints[0])
        member, status = connect_healthy(self.cfg.etcd, log_skips=False)  # a break is logged once (_log_break)
        if status.is_leader:
            return member
        for endpoint in self.cfg.etcd.endpoints:
            if endpoint == member.endpoint:
                continue
            try:
                other = Member(self.cfg.etcd, endpoint)
            except EtcdUnavailable:
                continue
            try:
                if other.status().is_leader:
                    member.close()
                    return other
            except EtcdUnavailable:
                pass
            other.close()
        return member

    def _follow(self, member: Member, stream: WatchStream, start: int) -> None:
        expected = start
        for batch in stream:
            if self.stopping.is_set():
                return
            by_revision: dict[int, list[Event]] = {}
            for ev in batch.events:
                by_revision.setdefault(ev.kv.mod_revision, []).append(ev)
            seen = utcnow()
            for revision in sorted(by_revision):
                if revision < expected:
                    continue  # seen already (a reconnect re-sent it)
                if revision > expected:
                    raise Compacted(f"the watch jumped from revision {expected - 1} to {revision}", revision - 1)
                events = tuple(by_revision[revision])
                self._learn_leases(member, events)
                with self._cond:
                    self._buffer.add(delta.Revision(revision, seen, events))
                expected = revision + 1
            # In this thread: the watch is not read further until the buffer is stored, so memory
            # stays bounded while storage is down (etcd holds the changes meanwhile).
            while self._buffer.size >= self.max_buffer and not self._flush_all():
                if self.stopping.wait(max(0.1, self._retry_at - time.monotonic())):
                    return

    def _learn_leases(self, member: Member, events: tuple[Event, ...]) -> None:
        for ev in events:
            lease = ev.kv.lease
            if lease and not ev.deleted and lease not in self._leases:
                try:
                    self._leases[lease] = member.lease_granted_ttl(lease)
                except EtcdUnavailable:
                    self._leases[lease] = None  # asked too late (revoked meanwhile): restored with the minimum

    def _gap(self, exc: Compacted) -> None:
        self._flush_all(final=True)  # what the watch saw before the gap is stored before it is dropped
        self.metrics.delta_gaps.inc()
        self.metrics.failure("delta")
        tip = self._buffer.last or (self._stored.revision if self._stored else None)
        log.error(
            "DELTA GAP: etcd compacted revisions the watch had not stored; taking a full snapshot now",
            after_revision=tip,
            compacted_to=exc.compact_revision,
            error=str(exc),
            stage="delta",
        )
        self._buffer = _Buffer()
        self._base_seen.clear()
        self._need_base_above = exc.compact_revision
        self.need_full_snapshot()
        self._base_seen.wait(max(self.interval, 30.0))  # the new chain's base, then watch after it

    def _close_stream(self) -> None:
        with self._cond:
            stream = self._stream
        if stream is not None:
            stream.close()

    # --- storing -----------------------------------------------------------------------------

    def _flusher(self) -> None:
        """Stores the buffer once its oldest change is `interval` old; closes the watch when this
        copy stops acting or the daemon stops."""
        checked = time.monotonic()
        while not self.stopping.is_set():
            if self.cfg.schedule.mode == "sidecar" and time.monotonic() - checked >= max(self.interval, 5.0):
                checked = time.monotonic()
                if self._watching and not self.leadership.acting().acting:
                    log.info("no longer the acting copy: delta watch stops", stage="delta")
                    self._released = True
                    self._close_stream()
            with self._cond:
                first = self._buffer.first_seen
                wait = self.interval if first is None else max(0.0, first + self.interval - time.time())
                wait = max(wait, self._retry_at - time.monotonic())
                self._cond.wait(min(wait, 1.0))
            if self.stopping.is_set():
                break
            first = self._buffer.first_seen
            if first is not None and time.time() - first >= self.interval:
                self._flush_all()
        self._close_stream()

    def _flush_all(self, *, final: bool = False) -> bool:
        """Store everything buffered, cut at chain boundaries; keep what could not be stored
        (tried again after `retry_delay`: until then this returns False at once). At stop, retried
        briefly: what cannot be stored then is lost. True when nothing is left unstored."""
        attempts = 3 if final else 1
        with self._flush_lock:
            if not final and time.monotonic() < self._retry_at:
                return not self._buffer.records
            upto = self._buffer.last  # what arrives meanwhile waits for the next flush (no tiny deltas)
            for attempt in range(attempts):
                try:
                    while upto is not None and self._buffer.records and self._buffer.records[0].revision <= upto:
                        self._commit_next(upto)
                    self._failures, self._retry_at = 0, 0.0
                    return True
                except Exception as exc:  # noqa: BLE001 - anything else too: the thread must live on
                    self._failures += 1
                    delay = retry_delay(self._failures, self.interval)
                    self._retry_at = time.monotonic() + delay
                    self.metrics.failure("delta")
                    known = isinstance(exc, EtcdBackupError)
                    (log.error if known else log.exception)(
                        "storing a delta failed; kept for the next try",
                        error=str(exc) if known else f"{type(exc).__name__}: {exc}",
                        stage="delta",
                        failures=self._failures,
                        retry_in=round(delay, 1),
                    )
                    if final and attempt + 1 < attempts:
                        time.sleep(0.5)
            return False

    def _commit_next(self, limit: int) -> None:
        with self._cond:
            first = self._buffer.records[0].revision
            cut = min((b for b in self._boundaries if b >= first), default=None)
            upto = cut if cut is not None and cut < limit else limit
            records = self._buffer.records[
                : next((i for i, r in enumerate(self._buffer.records) if r.revision > upto), len(self._buffer.records))
            ]
            lines = self._buffer.lines[: len(records)]
        self._store(records, lines)
        with self._cond:
            self._buffer.take(records[-1].revision)

    def _store(self, records: list[delta.Revision], lines: list[bytes]) -> None:
        assert self._cluster is not None
        started = time.monotonic()
        first, last = records[0], records[-1]
        used = {ev.kv.lease for r in records for ev in r.events if ev.kv.lease and not ev.deleted}
        header = delta.encode_header(
            cluster_id=self._cluster,
            member_id=self._member_id,
            first=first.revision,
            last=last.revision,
            leases={lease: self._leases.get(lease) for lease in used},
        )
        body = header + b"".join(lines)
        stem = delta.stem_of(first.revision, last.revision, first.seen_at, last.seen_at, self.writer)
        key = delta.data_key(self._cluster, stem, self.form.compression, bool(self.form.recipients))
        stored = _encoded(body, self.form)
        put_bytes(self.store, key, stored)
        m = delta.DeltaManifest(
            id=stem,
            cluster_id=self._cluster,
            member_id=self._member_id,
            first_revision=first.revision,
            last_revision=last.revision,
            events=sum(len(r.events) for r in records),
            first_time=rfc3339(first.seen_at),
            last_time=rfc3339(last.seen_at),
            object_key=key,
            object_size=len(stored),
            object_sha256=hashlib.sha256(stored).hexdigest(),
            compression=self.form.compression,
            encryption=self.form.encryption,
            created_at=rfc3339(utcnow()),
            tool_version=__version__,
        )
        delta.write_manifest(self.store, m)
        now = time.time()
        self._stored = Stored(last.revision, now)
        self.metrics.newest_delta(cluster=self._cluster, revision=last.revision, at=now)
        log.info(
            "delta stored",
            first_revision=first.revision,
            last_revision=last.revision,
            events=m.events,
            object_size=m.object_size,
            seconds=round(time.monotonic() - started, 3),
            stage="delta",
        )
        if self.after is not None:
            self.after(m)


def _encoded(body: bytes, form: codec.Form) -> bytes:
    """The stored form of a delta (bounded by max_buffer, so done in memory)."""
    with codec.encode(io.BytesIO(body), form, label="delta") as encoded:
        out = io.BytesIO()
        while chunk := encoded.reader.read(1024 * 1024):
            out.write(chunk)
    return out.getvalue()
