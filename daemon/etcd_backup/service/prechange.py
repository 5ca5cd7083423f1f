"""`pre-change`: the gate before an HA change (scenario 2).

Refuse, taking nothing, while any of the cluster health rules that block a membership change
holds (see `assessment.cluster_problems`); then take a pinned snapshot, verify it (and with a
drill, restore it for real), and name the commands that roll the change back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog

from ..advice import host_of
from ..assessment import DEFAULT_QUOTA_BYTES
from ..config import Config
from ..errors import MissingIdentity, UnsafeError
from ..model import Manifest
from ..runbook import Context, Step, rebuild
from ..storage import SnapshotStore
from .backup import take_snapshot
from .doctor import Diagnosis, diagnose

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class PreChange:
    manifest: Manifest
    rollback: tuple[Step, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.manifest.to_dict(),
            "rollback": self.rollback[0].command if self.rollback else "",
            "rollback_steps": [s.to_dict() for s in self.rollback],
        }


def rollback_steps(cfg: Config, d: Diagnosis, snapshot_id: str, config_path: str | None = None) -> list[Step]:
    """Stop every member, then rebuild each from the pinned snapshot on its own host."""
    ctx = Context(cfg.etcd, cfg.restore.data_dir, config_path)
    hosts = [host_of(m) for m in d.members if m.started and not m.learner]
    return rebuild(ctx, snapshot_id, hosts, force=True, single=False)


def pre_change(
    cfg: Config,
    store: SnapshotStore,
    *,
    reason: str,
    drill: bool = False,
    quota_bytes: int = DEFAULT_QUOTA_BYTES,
    config_path: str | None = None,
) -> PreChange:
    if drill and cfg.encryption.enabled and cfg.encryption.identity_file is None:
        # Before the snapshot: the drill would restore an object this host cannot decrypt.
        raise MissingIdentity(
            "pre-change --drill restores the new snapshot, which is encrypted: it needs encryption.identity_file "
            "on this host (or leave out --drill and drill it where the identity is)"
        )
    diagnosis = diagnose(cfg, quota_bytes=quota_bytes)
    if diagnosis.blocking:
        raise UnsafeError(
            f"not safe to change the cluster: {'; '.join(diagnosis.blocking)}. "
            "Nothing was taken; run etcd-backup doctor"
        )
    manifest = take_snapshot(cfg, store, reason=reason, pinned=True)
    if drill:
        from .drill import drill_and_record, require_passed

        manifest = require_passed(drill_and_record(cfg, store, manifest), "do not proceed with the change")
    log.info("pre-change snapshot ready", snapshot=manifest.id, revision=manifest.revision)
    return PreChange(manifest, tuple(rollback_steps(cfg, diagnosis, manifest.id, config_path)))
