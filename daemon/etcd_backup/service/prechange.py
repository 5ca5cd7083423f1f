"""`pre-change`: the gate before an HA change (scenario 2).

Refuse, taking nothing, unless every member answers and has started, a leader exists, no
alarm is raised and every database is below its quota; then take a pinned snapshot, verify it
(and with a drill, restore it for real), and name the command that rolls the change back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog

from .. import manifest as manifests
from ..config import Config
from ..errors import IntegrityError, MissingIdentity, UnsafeError
from ..model import Check, Manifest
from ..storage import SnapshotStore
from ..verify import fetch_verified
from .backup import take_snapshot
from .doctor import (
    CLUSTER_DATA_DIR,
    DEFAULT_QUOTA_BYTES,
    QUOTA_LIMIT_RATIO,
    Diagnosis,
    diagnose,
    restore_cluster_command,
)

log = structlog.get_logger(__name__)


def gate(d: Diagnosis, quota_bytes: int) -> list[str]:
    """Why a membership change would be unsafe now (empty: go ahead)."""
    problems: list[str] = []
    if not d.members:
        return ["no etcd member answers"]
    for m in d.members:
        if not m.started:
            problems.append(f"member {m.id} ({', '.join(m.peer_urls)}) was added but never started")
        elif not m.reachable:
            problems.append(f"member {m.label} does not answer")
        elif m.learner:
            problems.append(f"member {m.label} is a learner: a membership change is in progress")
        if m.db_size is not None and m.db_size >= quota_bytes * QUOTA_LIMIT_RATIO:
            problems.append(
                f"member {m.label}: database is at {100 * m.db_size / quota_bytes:.0f}% of its {quota_bytes}-byte quota"
            )
    if d.leader is None:
        problems.append("no leader")
    if d.alarms is None:
        problems.append("the alarm list could not be read")
    else:
        problems += [f"alarm {a['alarm']} raised by {a['member'] or a['member_id']}" for a in d.alarms]
    return problems


@dataclass(frozen=True, slots=True)
class PreChange:
    manifest: Manifest
    rollback: str

    def to_dict(self) -> dict[str, Any]:
        return {**self.manifest.to_dict(), "rollback": self.rollback}


def rollback_command(d: Diagnosis, snapshot_id: str) -> str:
    pairs = [(m.name, m.peer_url) for m in d.members if m.started]
    return restore_cluster_command(snapshot_id, pairs, CLUSTER_DATA_DIR)


def pre_change(
    cfg: Config,
    store: SnapshotStore,
    *,
    reason: str,
    drill: bool = False,
    quota_bytes: int = DEFAULT_QUOTA_BYTES,
) -> PreChange:
    if drill and cfg.encryption.enabled and cfg.encryption.identity_file is None:
        # Before the snapshot: the drill would restore an object this host cannot decrypt.
        raise MissingIdentity(
            "pre-change --drill restores the new snapshot, which is encrypted: it needs encryption.identity_file "
            "on this host (or leave out --drill and drill it where the identity is)"
        )
    diagnosis = diagnose(cfg, quota_bytes=quota_bytes)
    problems = gate(diagnosis, quota_bytes)
    if problems:
        raise UnsafeError(
            f"not safe to change the cluster: {'; '.join(problems)}. Nothing was taken; run etcd-backup doctor"
        )
    manifest = take_snapshot(cfg, store, reason=reason, pinned=True)
    if drill:
        manifest = _drill(cfg, store, manifest)
    log.info("pre-change snapshot ready", snapshot=manifest.id, revision=manifest.revision)
    return PreChange(manifest, rollback_command(diagnosis, manifest.id))


def _drill(cfg: Config, store: SnapshotStore, manifest: Manifest) -> Manifest:
    """Download the stored snapshot again, restore it into a scratch etcd, record the outcome."""
    from .drill import drill_verified

    verified = fetch_verified(store, manifest, cfg.storage.spool_dir, identities=cfg.encryption.identities())
    try:
        check: Check = drill_verified(cfg, verified)
    finally:
        verified.discard()
    manifest = manifest.with_drill(check)
    manifests.write(store, manifest)
    if not check.ok:
        raise IntegrityError(
            f"snapshot {manifest.id} did not pass its restore drill: {check.error}; do not proceed with the change"
        )
    return manifest
