"""Control-plane files ([files] paths): archived with each full snapshot, restored from one.

Archiving happens before etcd is streamed (a missing path stops a one-shot snapshot before any
work), into a private spool file; the object is uploaded after the snapshot's data object and
before its manifest, in the same form (compressed, then age-encrypted, see codec.py). The
manifest, written last, is what makes both count.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from .. import codec, cparchive
from .. import manifest as manifests
from ..config import Config, files_unprotected
from ..errors import ConfigError, EtcdBackupError, IntegrityError, UsageError
from ..manifest import LiveCluster
from ..model import FilesObject, Manifest
from ..spool import Spool
from ..storage import SnapshotStore
from ..verify import fetch_object

log = structlog.get_logger(__name__)


class _HashingSink:
    """The tar stream into the spool, hashed on its way (the object's SHA-256 when stored as is)."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self.hash = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.spool.append(data)
        return len(data)


@dataclass
class Prepared:
    """The archive of the configured paths as a finished local spool, ready for upload."""

    spool: Spool
    archived: cparchive.Archived
    sha256: str
    paths: tuple[str, ...]

    def close(self) -> None:
        self.spool.close()


def prepare(cfg: Config, store: SnapshotStore, *, strict: bool) -> Prepared | None:
    """Archive `files.paths` now (None when none are configured).

    `strict` (one-shot commands): a missing or unreadable path is a configuration error. The
    daemon leaves such a path out instead, names it in the manifest and the log, and keeps
    backing up etcd.
    """
    if not cfg.files.paths:
        return None
    problem = files_unprotected(cfg)
    if problem:
        raise ConfigError(problem)
    if strict:
        cparchive.check_paths(cfg.files.paths)
    form = codec.Form.of(cfg)
    links = store.capabilities.links_spool
    spool = Spool(spool_dir(cfg, store), "files", durable=links and not form.transformed)
    try:
        sink = _HashingSink(spool)
        archived = cparchive.write_archive(cfg.files.paths, sink, strict=strict)
        spool.finish()
        spool.release()
    except BaseException:
        spool.close()
        raise
    for s in archived.skipped:
        log.warning("control-plane file not archived", path=s.path, reason=s.reason, stage="files")
    return Prepared(spool, archived, sink.hash.hexdigest(), tuple(cfg.files.paths))


def spool_dir(cfg: Config, store: SnapshotStore) -> str | None:
    return cfg.storage.spool_dir or store.capabilities.spool_dir


def upload(cfg: Config, store: SnapshotStore, prepared: Prepared, snapshot_id: str) -> FilesObject:
    """Store the archive as the snapshot's files object; IntegrityError if the store holds other bytes."""
    form = codec.Form.of(cfg)
    key = manifests.files_key(snapshot_id, form.compression, form.encryption is not None)
    where = spool_dir(cfg, store)
    reader = prepared.spool.reader()
    try:
        with codec.encode(
            reader, form, spool_dir=where, durable=store.capabilities.links_spool, label=f"{snapshot_id}-files"
        ) as encoded:
            info = store.put(key, encoded.reader, spooled=encoded.spooled)
        sent = encoded.sha256 or (prepared.sha256 if not form.transformed else None)
    finally:
        reader.close()
    sha256 = sent or info.sha256
    if not sha256 or (info.sha256 and info.sha256 != sha256):
        discard(store, key)
        raise IntegrityError(f"{key}: stored bytes differ from the archive written")
    archived = prepared.archived
    return FilesObject(
        object_key=key,
        object_size=info.size,
        object_sha256=sha256,
        compression=form.compression,
        count=archived.count,
        paths=prepared.paths,
        entries=archived.entries,
        skipped=archived.skipped,
    )


def discard(store: SnapshotStore, key: str) -> None:
    """Remove an uploaded files object whose snapshot did not commit (else debris, later)."""
    try:
        store.delete(key)
    except EtcdBackupError as exc:
        log.warning("could not remove files object after failed commit", key=key, error=str(exc))


# --- restore files -----------------------------------------------------------------------------


@dataclass
class FilesRestore:
    manifest: Manifest
    dest: Path
    placements: list[cparchive.Placement]

    def to_dict(self) -> dict[str, Any]:
        written = [p for p in self.placements if not (p.exists and p.member.isdir())]
        return {
            "snapshot": self.manifest.id,
            "to": str(self.dest),
            "count": sum(not p.member.isdir() for p in self.placements),
            "written": [
                {"path": str(p.path), "type": _kind(p), "mode": f"{p.member.mode & 0o777:04o}"} for p in written
            ],
            "overwritten": [str(p.path) for p in self.placements if p.exists and not p.member.isdir()],
            "kept_directories": [str(p.path) for p in self.placements if p.exists and p.member.isdir()],
        }


def _kind(p: cparchive.Placement) -> str:
    return "dir" if p.member.isdir() else "symlink" if p.member.issym() else "file"


def _snapshot_with_files(store: SnapshotStore, ref: str, live_cluster: LiveCluster) -> Manifest:
    listing = manifests.list_snapshots(store) if ref == "latest" else None
    m = listing.latest(store.description, live_cluster) if listing else manifests.read(store, ref)
    if m.files is not None:
        return m
    listing = listing or manifests.list_snapshots(store)
    newest = next(
        (o for o in listing.manifests if o.files is not None and o.verified and o.cluster_id == m.cluster_id), None
    )
    hint = f"; the newest that does is {newest.id} (--snapshot {newest.id})" if newest else ""
    raise UsageError(
        f"snapshot {m.id} carries no control-plane files (files.paths was not set when it was taken){hint}"
    )


def restore_files(
    cfg: Config, store: SnapshotStore, ref: str, dest: Path, *, force: bool, live_cluster: LiveCluster = None
) -> FilesRestore:
    """Download, prove (SHA-256, age) and check the snapshot's files archive, then write it below
    `dest`. Every check, the one for existing files included, comes before the first write."""
    m = _snapshot_with_files(store, ref, live_cluster)
    files = m.files
    assert files is not None
    what = f"files of snapshot {m.id}"
    plain = fetch_object(
        store,
        files.object_key,
        size=files.object_size,
        sha256=files.object_sha256,
        compression=files.compression,
        encryption=m.encryption,
        identities=cfg.encryption.identities(),
        what=what,
        work_dir=cfg.storage.spool_dir,
    )
    try:
        extraction = cparchive.plan(plain.path, dest, force=force, what=what, expected=files.entries)
        placements = cparchive.extract(extraction)
    finally:
        plain.discard()
    log.info("control-plane files restored", snapshot=m.id, to=str(dest), count=files.count, stage="restore")
    return FilesRestore(m, extraction.dest, placements)


__all__ = ["FilesRestore", "Prepared", "discard", "prepare", "restore_files", "upload"]
