"""Restore drill: prove a stored snapshot restores by actually restoring it and serving it.

The snapshot is restored with etcd's own tool into a scratch dir, a throwaway member is started
on free loopback ports, and it must serve the manifest's revision and key count. The outcome is
recorded in the manifest (`verification.drill`): what `list`, retention and the metrics read.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import structlog

from .. import manifest as manifests
from .. import scratch
from ..config import Config, EtcdConfig
from ..errors import DrillFailed, EtcdBackupError, IntegrityError, UsageError
from ..etcdclient import Member
from ..etcdproc import LOOPBACK, find_binary, free_port, start_member, wait_healthy
from ..etcdtools import find_restore_tool, restore_data_dir
from ..manifest import Listing
from ..model import Check, Manifest, rfc3339, utcnow
from ..storage import SnapshotStore
from ..verify import Verified, fetch_verified

log = structlog.get_logger(__name__)


def drill_verified(cfg: Config, verified: Verified, timeout: float = 120.0) -> Check:
    """Restore `verified` (downloaded and checked already) into a scratch member and query it.

    A snapshot that does not restore gives a failed Check (recorded in the manifest), not an
    exception; a missing etcd binary raises ToolError since then no drill could run at all.
    """
    started = time.monotonic()
    manifest = verified.manifest
    tool = find_restore_tool(cfg.tools.etcdutl or None)
    etcd = find_binary("etcd", cfg.tools.etcd or None)
    workspace = scratch.create(cfg.storage.spool_dir, scratch.Kind.DRILL, manifest.id)
    work = workspace.path
    detail: dict[str, object] = {"tool": tool.describe()}
    client_url = f"http://{LOOPBACK}:{free_port()}"
    peer_url = f"http://{LOOPBACK}:{free_port()}"
    proc = None
    try:
        data_dir = work / "data"
        restore_data_dir(
            tool,
            verified.path,
            data_dir,
            name="drill",
            peer_url=peer_url,
            initial_cluster=f"drill={peer_url}",
            token=f"drill-{manifest.id}",
        )
        proc = start_member(
            etcd,
            name="drill",
            data_dir=data_dir,
            client_url=client_url,
            peer_url=peer_url,
            token=f"drill-{manifest.id}",
            log_path=work / "etcd.log",
        )
        wait_healthy(client_url, timeout, proc)
        with Member(EtcdConfig(endpoints=[client_url], dial_timeout=10.0), client_url) as member:
            revision = member.status().revision
            keys = member.count_keys()
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
    finally:
        if proc is not None:
            proc.stop()
        workspace.discard()


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
