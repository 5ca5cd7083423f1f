"""Take one snapshot: stream it from a healthy member, verify it while it uploads, commit the manifest.

The three stages overlap: the gRPC stream is spooled and hashed as it arrives, the uploader
reads the spool right behind it (through compression and encryption when configured, see
codec.py), and the structural check runs on the plaintext spool as soon as the stream ends.
The upload completes only after both checks passed; the manifest comes last.
"""

from __future__ import annotations

import gc
import hashlib
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog

from .. import __version__, bbolt, codec, scratch
from .. import manifest as manifests
from ..config import Config
from ..errors import Cancelled, EtcdBackupError, EtcdErrorKind, EtcdUnavailable, IntegrityError
from ..etcdclient import Member, MemberStatus, connect_healthy, hexid
from ..model import TRAILER, Check, ClusterMember, Manifest, Verification, new_snapshot_id, rfc3339, utcnow
from ..spool import Spool
from ..storage import SnapshotStore
from ..survey import survey
from . import cpfiles

log = structlog.get_logger(__name__)


@dataclass
class StreamResult:
    total: int  # bytes received, trailer included
    db_sha256: str
    object_sha256: str  # of the whole stream, as stored uncompressed


class TrailerHasher:
    """Hashes everything but the last 32 bytes seen, which it keeps as the candidate trailer."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._tail = b""
        self.total = 0

    def update(self, chunk: bytes | memoryview) -> None:
        self.total += len(chunk)
        if len(chunk) >= TRAILER:
            # The common case: no copy of the chunk, only the 32 held-back bytes move.
            if self._tail:
                self._hash.update(self._tail)
            self._hash.update(memoryview(chunk)[:-TRAILER])
            self._tail = bytes(chunk[-TRAILER:])
            return
        data = self._tail + bytes(chunk)
        if len(data) > TRAILER:
            self._hash.update(data[:-TRAILER])
        self._tail = data[-TRAILER:]

    def result(self, where: str) -> StreamResult:
        if self.total <= TRAILER:
            raise IntegrityError(f"snapshot from {where} is truncated ({self.total} bytes)")
        digest = self._hash.digest()
        if digest != self._tail:
            raise IntegrityError(
                f"snapshot from {where} failed its SHA-256 trailer check: the stream is corrupt or truncated"
            )
        whole = self._hash.copy()
        whole.update(self._tail)
        return StreamResult(self.total, digest.hex(), whole.hexdigest())


def receive(
    chunks: Iterable[bytes | memoryview], spool: Spool, cancel: threading.Event | None, where: str
) -> StreamResult:
    hasher = TrailerHasher()
    batch: list[bytes | memoryview] = []
    pending = 0
    # 32,768 messages per GiB leave only short-lived, acyclic objects that reference counting
    # frees; the cyclic collector would walk every live object (boto3 and all) again and again.
    collecting = gc.isenabled()
    gc.disable()
    try:
        for chunk in chunks:
            hasher.update(chunk)
            batch.append(chunk)
            pending += len(chunk)
            # Gather the 32 KiB messages into ~1 MiB vectored writes: fewer syscalls, and no joined
            # copy (a fresh 1 MiB buffer per write costs more in page faults than the write itself).
            if pending >= 1024 * 1024:
                if cancel is not None and cancel.is_set():
                    raise Cancelled("snapshot cancelled (shutting down)")
                spool.append_all(batch, pending)
                batch, pending = [], 0
    finally:
        if collecting:
            gc.enable()
    if batch:
        spool.append_all(batch, pending)
    return hasher.result(where)


def structure_check(path: str, db_size: int) -> tuple[bbolt.BoltStatus, Check]:
    status = bbolt.check(path, size=db_size)
    return status, Check(True, rfc3339(utcnow()), status.detail())


def take_snapshot(
    cfg: Config,
    store: SnapshotStore,
    *,
    reason: str = "manual",
    pinned: bool = False,
    cancel: threading.Event | None = None,
    now: Callable[[], datetime] = utcnow,
    strict_files: bool = True,
    from_survivor: bool = False,
) -> Manifest:
    """Snapshot a healthy member, verify, upload, commit the manifest; fail over to the next
    healthy member if the one streaming dies mid-way.

    `from_survivor`: when quorum is lost, snapshot the answering member that holds the newest
    data instead (see `_survivor`): what a rebuild should restore, not an older backup.

    With [files] paths, they are archived first and stored beside the data object (see
    cpfiles.py); `strict_files` (one-shot commands) makes a missing path a configuration error,
    the daemon passes False and leaves it out, named in the manifest.
    """
    # Fail before streaming a large snapshot when the bucket is missing or access is denied.
    store.ping()
    files = cpfiles.prepare(cfg, store, strict=strict_files)
    failed: list[str] = []
    try:
        while True:
            member = _connect(cfg, failed, from_survivor)
            try:
                return snapshot_member(
                    cfg, store, member, reason=reason, pinned=pinned, cancel=cancel, now=now, files=files
                )
            except EtcdUnavailable as exc:
                failed.append(member[0].endpoint)
                if len(failed) >= len(cfg.etcd.endpoints):
                    raise
                log.warning("snapshot stream failed; trying the next endpoint", error=str(exc))
            finally:
                member[0].close()
    finally:
        if files is not None:
            files.close()


FAILOVER_WAIT = 15.0  # seconds for the remaining members to elect a leader after one died mid-stream


def _connect(cfg: Config, failed: list[str], from_survivor: bool = False) -> tuple[Member, MemberStatus]:
    """A healthy member not tried yet. After a failure, wait (bounded) for one: if the member that
    died was the leader, the others answer "no leader" until they have elected a new one."""
    if not failed or from_survivor:
        try:
            return connect_healthy(cfg.etcd, exclude=set(failed))
        except EtcdUnavailable as exc:
            if from_survivor:
                return _survivor(cfg, exc, exclude=set(failed))
            if exc.kind is EtcdErrorKind.NO_LEADER:
                raise EtcdUnavailable(
                    f"{exc}; if quorum is lost, `etcd-backup snapshot --from-survivor` saves the newest data a member "
                    "still holds (`etcd-backup doctor` says when to)",
                    exc.kind,
                ) from None
            raise
    deadline = time.monotonic() + FAILOVER_WAIT
    while True:
        try:
            return connect_healthy(cfg.etcd, exclude=set(failed))
        except EtcdUnavailable:
            if time.monotonic() + 0.5 >= deadline:
                raise
            time.sleep(0.5)


def _survivor(cfg: Config, why: EtcdUnavailable, exclude: set[str]) -> tuple[Member, MemberStatus]:
    """With quorum lost, the voting member that answers with the newest data (highest revision,
    then raft index). Nothing can be written without quorum, so that member holds every write
    the cluster made, up to what it had applied. It streams its snapshot without a leader, as
    `etcdctl snapshot save` does. Refused while any member has a leader: then quorum is not what
    is wrong (`why` says what is)."""
    found = survey(cfg.etcd)
    answered = [p for p in found.answered() if p.status is not None and p.endpoint not in exclude]
    voting = [p for p in answered if p.status is not None and not p.status.is_learner]
    if not voting or any(p.status is not None and p.status.leader for p in answered):
        raise why  # nothing to take it from, or quorum holds and something else is wrong
    best = max(voting, key=lambda p: (p.status.revision, p.status.raft_index))  # type: ignore[union-attr]
    member = Member(cfg.etcd, best.endpoint)
    try:
        status = member.status()
    except BaseException:
        member.close()
        raise
    log.warning(
        "quorum lost: taking the snapshot from the member with the newest data",
        endpoint=best.endpoint,
        revision=status.revision,
        answering=len(voting),
    )
    return member, status


def snapshot_member(
    cfg: Config,
    store: SnapshotStore,
    member: tuple[Member, MemberStatus],
    *,
    reason: str = "manual",
    pinned: bool = False,
    cancel: threading.Event | None = None,
    now: Callable[[], datetime] = utcnow,
    files: cpfiles.Prepared | None = None,
) -> Manifest:
    """Snapshot one member, verify, upload, and commit the manifest (with `files`, after their object)."""
    started = time.monotonic()
    created = now()
    snapshot_id = new_snapshot_id(created)
    form = codec.Form.of(cfg)
    compression = form.compression
    key = manifests.data_key(snapshot_id, compression, form.encryption is not None)
    conn, status = member
    bound = log.bind(snapshot=snapshot_id, endpoint=conn.endpoint, backend=store.description)
    bound.info("snapshot started", stage="stream", reason=reason)
    spool_dir = cfg.storage.spool_dir or store.capabilities.spool_dir
    scratch.sweep(spool_dir, cfg.retention.debris_age)
    # The spool file that becomes the stored object (file:// links it) is written back early.
    links = store.capabilities.links_spool
    spool = Spool(spool_dir, snapshot_id, durable=links and not form.transformed)
    upload_result: list[Any] = []
    upload_error: list[BaseException] = []
    stored_sha256: list[str | None] = []

    def upload() -> None:
        reader = spool.reader()
        try:
            with codec.encode(reader, form, spool_dir=spool_dir, durable=links, label=snapshot_id) as encoded:
                upload_result.append(store.put(key, encoded.reader, spooled=encoded.spooled))
            stored_sha256.append(encoded.sha256)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            upload_error.append(exc)
            spool.fail(exc)
        finally:
            reader.close()

    uploader = threading.Thread(target=upload, name=f"upload-{snapshot_id}", daemon=True)
    try:
        uploader.start()
        stream = receive(conn.snapshot_chunks(), spool, cancel, conn.endpoint)
        spool.finish()
        db_size = stream.total - TRAILER
        stream_at = time.monotonic()
        bound.info("snapshot received", stage="verify", bytes=stream.total, seconds=round(stream_at - started, 3))
        hash_check = Check(True, rfc3339(utcnow()), {"sha256": stream.db_sha256})
        bolt_status, structure = structure_check(str(spool.path), db_size)
        # From the snapshot itself, never from a read before the stream (which may be older).
        keys = _count_keys(conn, bolt_status.current_revision)
        cluster = _member_list(conn)
        if cancel is not None and cancel.is_set():
            raise Cancelled("snapshot cancelled (shutting down)")
        spool.release()
        while uploader.is_alive():
            uploader.join(0.1)
            if cancel is not None and cancel.is_set():
                # Parts still going out: the upload is aborted, not completed (the spool raises).
                spool.fail(Cancelled("snapshot cancelled (shutting down)"))
        if upload_error:
            raise upload_error[0]
        info = upload_result[0]
        # What was sent: the stream as received, or the ciphertext as hashed on its way out.
        sent_sha256 = stored_sha256[0] or (stream.object_sha256 if not form.transformed else None)
        object_sha256 = sent_sha256 or info.sha256
        if not object_sha256 or (info.sha256 and info.sha256 != object_sha256):
            store.delete(key)
            raise IntegrityError(f"{key}: stored bytes differ from the stream received")
        files_object = None
        if files is not None:
            try:
                files_object = cpfiles.upload(cfg, store, files, snapshot_id)
            except BaseException:
                _delete_quietly(store, key)
                raise
        manifest = Manifest(
            id=snapshot_id,
            created_at=rfc3339(created),
            reason=reason,
            pinned=pinned,
            cluster_id=hexid(status.cluster_id),
            member_id=hexid(status.member_id),
            endpoint=conn.endpoint,
            etcd_version=status.version,
            revision=bolt_status.current_revision,
            keys=keys,
            db_size=db_size,
            object_key=key,
            object_size=info.size,
            object_sha256=object_sha256,
            compression=compression,
            encryption=form.encryption,
            verification=Verification(hash=hash_check, structure=structure, drill=None),
            duration_seconds=round(time.monotonic() - started, 3),
            tool_version=__version__,
            db_sha256=stream.db_sha256,
            members=cluster,
            files=files_object,
        )
        try:
            manifests.write(store, manifest)
        except EtcdBackupError:
            _delete_quietly(store, key)
            if files_object is not None:
                cpfiles.discard(store, files_object.object_key)
            raise
        bound.info(
            "snapshot stored",
            stage="commit",
            revision=manifest.revision,
            keys=keys,
            db_size=db_size,
            object_size=info.size,
            files=files_object.count if files_object else None,
            seconds=manifest.duration_seconds,
        )
        return manifest
    except BaseException as exc:
        spool.fail(exc if isinstance(exc, Exception) else Cancelled("interrupted"))
        uploader.join(timeout=60)
        if isinstance(exc, EtcdBackupError):
            bound.error("snapshot failed", error=str(exc))
        raise
    finally:
        spool.close()


def _count_keys(conn: Member, revision: int) -> int:
    try:
        return conn.count_keys(revision)
    except EtcdUnavailable as exc:
        # Compacted past the snapshot already (rare): the live count is the closest we have.
        log.warning("key count at snapshot revision failed; using current count", error=str(exc))
        return conn.count_keys(0)


def _member_list(conn: Member) -> tuple[ClusterMember, ...]:
    """Recorded so that a restore and doctor know names and URLs when no member answers."""
    try:
        infos = conn.members()
    except EtcdUnavailable as exc:
        log.warning("member list not recorded in the manifest", error=str(exc))
        return ()
    return tuple(
        ClusterMember(hexid(m.id), m.name, m.peer_urls, m.client_urls, m.is_learner)
        for m in sorted(infos, key=lambda m: (m.name, m.id))
    )


def _delete_quietly(store: SnapshotStore, key: str) -> None:
    try:
        store.delete(key)
    except EtcdBackupError as exc:
        log.warning("could not remove data object after failed commit", key=key, error=str(exc))
