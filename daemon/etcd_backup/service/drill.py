"""Restore drill: prove a stored snapshot restores by actually restoring it and serving it.

The snapshot is restored with etcd's own tool into a scratch dir, a throwaway member is started
on free loopback ports, and it must serve the manifest's revision and key count. The outcome is
recorded in the manifest (`verification.drill`): what `list`, retention and the metrics read.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import structlog

from .. import chain
from .. import manifest as manifests
from ..config import Config
from ..errors import DrillFailed, EtcdBackupError, EtcdErrorKind, EtcdUnavailable, IntegrityError, UsageError
from ..etcdclient import KeyValue, Member, connect_healthy
from ..etcdtools import find_restore_tool
from ..manifest import Listing, LiveCluster
from ..model import Check, Manifest, rfc3339, utcnow
from ..storage import SnapshotStore
from ..verify import Verified, fetch_verified
from . import point
from .scratchetcd import etcd_binary, serving

log = structlog.get_logger(__name__)


def drill_verified(cfg: Config, verified: Verified, timeout: float = 120.0) -> Check:
    """Restore `verified` (downloaded and checked already) into a scratch member and query it.

    A snapshot that does not restore gives a failed Check (recorded in the manifest), not an
    exception; a missing etcd binary raises ToolError since then no drill could run at all.
    """
    started = time.monotonic()
    manifest = verified.manifest
    etcd_binary(cfg, find_restore_tool(cfg.tools.etcdutl or None))  # no tools, no drill: raised, not recorded
    detail: dict[str, object] = {}
    try:
        with serving(cfg, verified.path, manifest.id, timeout=timeout) as scratch_etcd:
            detail["tool"] = scratch_etcd.tool.describe()
            served = scratch_etcd.member.status()
            detail["server"] = f"etcd {served.version}"  # what the drill proved it restores on
            revision = served.revision
            keys = scratch_etcd.member.count_keys()
        detail.update({"revision": revision, "keys": keys})
        problems = []
        # An empty keyspace has no revision in the db file (0), but a member serves revision 1.
        if revision != max(manifest.revision, 1):
            problems.append(f"serves revision {revision}, manifest says {manifest.revision}")
        if keys != manifest.keys:
            problems.append(f"serves {keys} keys, manifest says {manifest.keys}")
        detail["seconds"] = round(time.monotonic() - started, 3)
        if problems:
            raise DrillFailed("restored member " + "; ".join(problems))
        log.info("restore drill passed", snapshot=manifest.id, revision=revision, keys=keys, seconds=detail["seconds"])
        return Check(True, rfc3339(utcnow()), detail)
    except EtcdBackupError as exc:
        detail["seconds"] = round(time.monotonic() - started, 3)
        log.warning("restore drill failed", snapshot=manifest.id, error=str(exc))
        return Check(False, rfc3339(utcnow()), detail, error=str(exc))


@dataclass(frozen=True, slots=True)
class DrillOutcome:
    manifest: Manifest  # as recorded (with the drill) when `recorded`
    check: Check
    recorded: bool


def drill_and_record(
    cfg: Config,
    store: SnapshotStore,
    target: Manifest,
    *,
    verified: Verified | None = None,
    cancel: threading.Event | None = None,
) -> DrillOutcome:
    """Download `target` from storage (unless `verified` is that download already), restore it
    into a scratch member, and record the result in its manifest.

    A snapshot that fails its download checks is recorded as a failed drill. Storage or tool
    trouble raises (nothing recorded: the snapshot was not at fault). A drill interrupted by
    `cancel` is not recorded, nor is one of a snapshot deleted meanwhile (never resurrected).
    """
    if verified is None:
        try:
            verified = fetch_verified(store, target, cfg.storage.spool_dir, identities=cfg.encryption.identities())
        except IntegrityError as exc:
            check = Check(False, rfc3339(utcnow()), {"stage": "download"}, error=str(exc))
            return _record(store, target, check, cancel)
        try:
            check = drill_verified(cfg, verified)
        finally:
            verified.discard()
    else:
        check = drill_verified(cfg, verified)
    return _record(store, target, check, cancel)


def _record(store: SnapshotStore, target: Manifest, check: Check, cancel: threading.Event | None) -> DrillOutcome:
    if cancel is not None and cancel.is_set():
        return DrillOutcome(target, check, recorded=False)
    try:
        manifests.read(store, target.id)
    except (UsageError, IntegrityError):
        log.warning("drilled snapshot disappeared; result not recorded", snapshot=target.id)
        return DrillOutcome(target, check, recorded=False)
    updated = target.with_drill(check)
    manifests.write(store, updated)
    return DrillOutcome(updated, check, recorded=True)


def drill_target(listing: Listing) -> Manifest | None:
    """The newest snapshot whose hash and structure checks passed.

    A snapshot whose own drill failed stays the target until a newer one exists: the alert stays
    red while the newest backup is the broken one.
    """
    for m in listing.manifests:
        if m.verification.hash.ok and m.verification.structure.ok:
            return m
    return None


def needs_identity(cfg: Config, target: Manifest) -> bool:
    """A write-only host (recipients, no identity) cannot drill an encrypted snapshot: it skips the
    drill rather than failing it. A configured identity that does not open it is a failure."""
    return target.encryption is not None and cfg.encryption.identity_file is None


def require_passed(outcome: DrillOutcome, consequence: str) -> Manifest:
    """The drilled manifest, or DrillFailed naming what not to do."""
    if not outcome.check.ok:
        raise DrillFailed(
            f"snapshot {outcome.manifest.id} did not pass its restore drill: {outcome.check.error}; {consequence}"
        )
    return outcome.manifest


PAGE = 500  # keys per range request when comparing a point with the live cluster


def drill_latest_point(
    cfg: Config, store: SnapshotStore, *, live_cluster: LiveCluster = None, cancel: threading.Event | None = None
) -> DrillOutcome:
    """Drill the newest point: its full snapshot plus every delta after it."""
    p = point.plan(
        store,
        point.Target(latest=True),
        live_cluster=live_cluster,
        identities=cfg.encryption.identities(),
        work_dir=cfg.storage.spool_dir,
    )
    return drill_point(cfg, store, p, cancel=cancel)


def drill_point(
    cfg: Config, store: SnapshotStore, p: chain.Plan, *, cancel: threading.Event | None = None
) -> DrillOutcome:
    """Materialise `p`, serve it from a scratch member and compare every key, value and revision
    with the live cluster at the same revision (while etcd still has it). Recorded in the base's
    manifest like any drill; a point that does not materialise is a failed drill."""
    started = time.monotonic()
    detail: dict[str, Any] = {"point": True, "revision": p.target, "deltas": len(p.deltas)}
    try:
        verified = point.materialise(
            cfg, store, p, identities=cfg.encryption.identities(), work_dir=cfg.storage.spool_dir
        )
    except IntegrityError as exc:
        detail.update(stage="materialise", seconds=round(time.monotonic() - started, 3))
        return _record(store, p.base, Check(False, rfc3339(utcnow()), detail, error=str(exc)), cancel)
    try:
        with serving(cfg, verified.path, f"{p.base.id}-r{p.target}") as s:
            served = s.member.status().revision
            compared, keys, mismatch = _compare_with_live(cfg, s.member, p.target)
    except EtcdBackupError as exc:
        detail["seconds"] = round(time.monotonic() - started, 3)
        return _record(store, p.base, Check(False, rfc3339(utcnow()), detail, error=str(exc)), cancel)
    finally:
        verified.discard()
    detail.update(keys=keys, compared_with_live=compared, seconds=round(time.monotonic() - started, 3))
    error = None
    if served != p.target:
        error = f"the restored point serves revision {served}, not {p.target}"
    elif mismatch:
        error = f"the restored point differs from the live cluster at revision {p.target}: {mismatch}"
    if error:
        log.warning("point drill failed", snapshot=p.base.id, revision=p.target, error=error)
    else:
        log.info("point drill passed", snapshot=p.base.id, revision=p.target, keys=keys, compared=compared)
    return _record(store, p.base, Check(error is None, rfc3339(utcnow()), detail, error=error), cancel)


def _compare_with_live(cfg: Config, restored: Member, revision: int) -> tuple[bool, int, str | None]:
    """(compared with the live cluster, keys seen, the first difference). Not compared when etcd
    no longer holds that revision (compacted) or cannot be reached: then only the count of the
    restored keys is known."""
    try:
        live, _ = connect_healthy(cfg.etcd, allow_alarms=True)
    except EtcdUnavailable as exc:
        log.info("point drill: live cluster not reachable, nothing to compare with", error=str(exc))
        return False, restored.count_keys(), None
    try:
        start = b"\0"
        keys = 0
        while True:
            try:
                want, more = live.range_page(start, revision=revision, limit=PAGE)
            except EtcdUnavailable as exc:
                if exc.kind is EtcdErrorKind.COMPACTED:
                    return False, restored.count_keys(), None
                raise
            got, _ = restored.range_page(start, revision=revision, limit=PAGE)
            if got != want:
                return True, keys, _difference(got, want)
            keys += len(got)
            if not more:
                return True, keys, None
            start = want[-1].key + b"\0"
    finally:
        live.close()


def _difference(got: list[KeyValue], want: list[KeyValue]) -> str:
    for g, w in zip(got, want, strict=False):
        if g != w:
            return f"key {w.key[:80]!r}: restored {_kv(g)}, live {_kv(w)}"
    longer, name = (got, "restored") if len(got) > len(want) else (want, "live")
    extra = longer[min(len(got), len(want))]
    return f"key {extra.key[:80]!r} only in the {name} keyspace"


def _kv(kv: KeyValue) -> str:
    return f"(create {kv.create_revision}, mod {kv.mod_revision}, version {kv.version}, lease {kv.lease:x})"
