"""Prove a stored object intact: download it, re-hash it, and for a full snapshot check its
trailer and bbolt structure; for a delta its records.

Used by `verify`, `fetch`, restores (before anything is touched), point materialisation and
drills. The checked file (the plaintext, decrypted and decompressed as the manifest says) is left
on local disk (mode 0600) for the caller, or removed on failure.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import structlog

from . import bbolt, delta, scratch
from . import manifest as manifests
from .codec import decode
from .crypto import Identities, require
from .delta import DeltaManifest
from .errors import EtcdBackupError, IntegrityError, ObjectNotFound
from .model import TRAILER, Check, Encryption, Manifest, rfc3339, utcnow
from .storage import SnapshotStore, get_bytes

log = structlog.get_logger(__name__)

_CHUNK = 1024 * 1024


@dataclass
class Verified:
    """A stored snapshot that passed every check, as a local db file (trailer included)."""

    manifest: Manifest
    file: scratch.Scratch
    status: bbolt.BoltStatus
    hash_check: Check
    structure_check: Check

    @property
    def path(self) -> Path:
        return self.file.path

    def discard(self) -> None:
        self.file.discard()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _trailer_ok(path: Path) -> tuple[bool, str]:
    """Whether the file's last 32 bytes are the SHA-256 of the rest (etcd's snapshot trailer)."""
    size = path.stat().st_size
    if size <= TRAILER:
        return False, ""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        remaining = size - TRAILER
        while remaining:
            chunk = fh.read(min(_CHUNK, remaining))
            if not chunk:
                return False, ""
            digest.update(chunk)
            remaining -= len(chunk)
        trailer = fh.read(TRAILER)
    return digest.digest() == trailer, digest.hexdigest()


def check_stored(store: SnapshotStore, manifest: Manifest, work_dir: str | None = None) -> Check:
    """Size and SHA-256 of the stored object only: what can be proven without the plaintext (an
    encrypted snapshot on a host without the identity). A failure is recorded in the manifest."""
    _download_checked(store, manifest, work_dir, record=True).discard()
    return Check(True, rfc3339(utcnow()), {"object_sha256": manifest.object_sha256})


def check_files(store: SnapshotStore, manifest: Manifest, work_dir: str | None = None) -> dict[str, Any] | None:
    """The control-plane files object's size and SHA-256 (the stored bytes: no identity needed);
    IntegrityError naming it when it is damaged or gone. None when the snapshot carries none."""
    f = manifest.files
    if f is None:
        return None
    what = f"control-plane files of snapshot {manifest.id}"
    _download(store, f.object_key, size=f.object_size, sha256=f.object_sha256, what=what, work_dir=work_dir).discard()
    return {"ok": True, "object_key": f.object_key, "count": f.count}


def _download_checked(
    store: SnapshotStore, manifest: Manifest, work_dir: str | None, *, record: bool
) -> scratch.Scratch:
    """The stored object, downloaded to a private file, its size and SHA-256 matching the manifest."""
    try:
        return _download(
            store,
            manifest.object_key,
            size=manifest.object_size,
            sha256=manifest.object_sha256,
            what=f"snapshot {manifest.id}",
            work_dir=work_dir,
        )
    except IntegrityError as exc:
        if record:
            record_failure(store, manifest, "hash", str(exc))
        raise


def _download(
    store: SnapshotStore, key: str, *, size: int, sha256: str, what: str, work_dir: str | None
) -> scratch.Scratch:
    raw = scratch.create(work_dir, scratch.Kind.DOWNLOAD, what.rsplit(" ", 1)[-1])
    try:
        with os.fdopen(os.dup(raw.fd), "w+b") as fh:
            try:
                store.get(key, fh)
            except ObjectNotFound:
                raise IntegrityError(f"{what}: data object {key} is missing") from None
        got = raw.path.stat().st_size
        if got != size:
            raise IntegrityError(f"{what}: data object has {got} bytes, manifest says {size}")
        if _sha256_file(raw.path) != sha256:
            raise IntegrityError(f"{what}: data object SHA-256 does not match the manifest")
        return raw
    except BaseException:
        raw.discard()
        raise


def _decode(
    raw: Path,
    *,
    compression: str,
    encryption: Encryption | None,
    identities: Identities | None,
    what: str,
    work_dir: str | None,
) -> scratch.Scratch:
    """The plaintext of a compressed and/or encrypted object, as a new private file."""
    out = scratch.create(work_dir, scratch.Kind.PLAIN, what.rsplit(" ", 1)[-1])
    try:
        with open(raw, "rb") as fin, os.fdopen(os.dup(out.fd), "wb") as fout:
            decode(fin, fout, compression=compression, encryption=encryption, identities=identities, what=what)
    except BaseException:
        out.discard()
        raise
    return out


def fetch_verified(
    store: SnapshotStore,
    manifest: Manifest,
    work_dir: str | None = None,
    *,
    record: bool = False,
    identities: Identities | None = None,
) -> Verified:
    """Download the data object and check it against the manifest. IntegrityError on any mismatch.

    In order: the stored object's size and SHA-256, then decryption (age authenticates every
    chunk) and decompression, then etcd's trailer and the bbolt structure. An encrypted snapshot
    that none of `identities` opens is refused before anything is downloaded (MissingIdentity).
    With `record`, a failure is also written into the manifest (the failed check, its time and
    error), so `list` shows it FAILED and neither `latest` nor retention counts it as verified.
    """
    if manifest.encryption is not None:
        require(identities, manifest.encryption.recipients, f"snapshot {manifest.id}")
    raw = _download_checked(store, manifest, work_dir, record=record)
    out: scratch.Scratch | None = None
    stage = "hash"
    try:
        if manifest.compression != "none" or manifest.encryption is not None:
            out = _decode(
                raw.path,
                compression=manifest.compression,
                encryption=manifest.encryption,
                identities=identities,
                what=f"snapshot {manifest.id}",
                work_dir=work_dir,
            )
            raw.discard()
        else:
            out = raw
        ok, db_sha = _trailer_ok(out.path)
        if not ok:
            raise IntegrityError(f"snapshot {manifest.id}: etcd's SHA-256 trailer does not match the data")
        if manifest.db_sha256 and db_sha != manifest.db_sha256:
            raise IntegrityError(f"snapshot {manifest.id}: database digest differs from the manifest")
        hash_check = Check(True, rfc3339(utcnow()), {"sha256": db_sha})
        stage = "structure"
        try:
            status = bbolt.check(out.path, size=out.path.stat().st_size - TRAILER)
        except IntegrityError as exc:
            raise IntegrityError(f"snapshot {manifest.id}: {exc}") from None
        expected = manifest.verification.structure.detail
        # Manifests before compact revisions were read recorded the last key's revision.
        revision_ok = manifest.revision in (status.current_revision, status.revision)
        if not revision_ok or ("hash" in expected and expected["hash"] != status.hash):
            raise IntegrityError(
                f"snapshot {manifest.id}: structure differs from the manifest "
                f"(revision {status.current_revision} vs {manifest.revision})"
            )
        structure = Check(True, rfc3339(utcnow()), status.detail())
        return Verified(manifest, out, status, hash_check, structure)
    except BaseException as exc:
        raw.discard()
        if out is not None:
            out.discard()
        if record and isinstance(exc, IntegrityError):
            record_failure(store, manifest, stage, str(exc))
        raise


def record_failure(store: SnapshotStore, manifest: Manifest, stage: str, error: str) -> None:
    """Mark `stage` ("hash" or "structure") failed in the stored manifest. Best effort: the caller
    reports the failure anyway, and a manifest deleted meanwhile (prune) is not brought back."""
    previous: Check = getattr(manifest.verification, stage)
    failed = Check(False, rfc3339(utcnow()), dict(previous.detail), error)
    updated = replace(manifest, verification=replace(manifest.verification, **{stage: failed}))
    try:
        manifests.read(store, manifest.id)
        manifests.write(store, updated)
        log.warning("snapshot marked as failed verification", snapshot=manifest.id, check=stage, error=error)
    except EtcdBackupError as exc:
        log.warning("could not record the failed verification", snapshot=manifest.id, error=str(exc))


def verify_stored(
    store: SnapshotStore, manifest: Manifest, work_dir: str | None = None, *, identities: Identities | None = None
) -> Verified:
    verified = fetch_verified(store, manifest, work_dir, record=True, identities=identities)
    log.info("snapshot verified", snapshot=manifest.id, revision=manifest.revision, db_size=manifest.db_size)
    return verified


def place(verified: Verified, dest: Path) -> Path:
    """Move a verified file to `dest` atomically (never a half-written file at `dest`)."""
    dest = dest.absolute()
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(verified.path, dest)
        verified.file.close()
    except OSError:
        tmp = scratch.create(str(dest.parent), scratch.Kind.DOWNLOAD, dest.name)
        try:
            with os.fdopen(os.dup(tmp.fd), "wb") as fout, open(verified.path, "rb") as fin:
                while chunk := fin.read(_CHUNK):
                    fout.write(chunk)
                fout.flush()
                os.fsync(fout.fileno())
            os.replace(tmp.path, dest)
            tmp.close()
        except BaseException:
            tmp.discard()
            raise
        finally:
            verified.discard()
    os.chmod(dest, 0o600)
    return dest


__all__ = [
    "EtcdBackupError",
    "Verified",
    "check_delta_stored",
    "check_stored",
    "fetch_object",
    "fetch_verified",
    "open_delta",
    "place",
    "read_delta_manifest",
    "verify_stored",
]


@dataclass
class StoredDelta:
    """A delta downloaded and proven (size, SHA-256, decrypted, decompressed) as a local file."""

    manifest: DeltaManifest
    file: scratch.Scratch

    def revisions(self) -> tuple[delta.Header, Iterator[delta.Revision]]:
        """Its header and revisions, read from the file as they are consumed (IntegrityError on
        anything out of shape); the header must agree with the manifest."""
        fh = open(self.file.path, "rb")  # noqa: SIM115 - closed when the iterator is exhausted or discarded
        where = f"delta {self.manifest.id}"
        try:
            header, records = delta.decode(fh, where)
        except BaseException:
            fh.close()
            raise
        m = self.manifest
        if (header.cluster_id, header.first_revision, header.last_revision) != (
            m.cluster_id,
            m.first_revision,
            m.last_revision,
        ):
            fh.close()
            raise IntegrityError(f"{where}: its content does not match its manifest")

        def closing() -> Iterator[delta.Revision]:
            try:
                yield from records
            finally:
                fh.close()

        return header, closing()

    def discard(self) -> None:
        self.file.discard()


def fetch_delta(
    store: SnapshotStore, ref: delta.DeltaRef, work_dir: str | None = None, *, identities: Identities | None = None
) -> StoredDelta:
    """Download a committed delta and prove it: IntegrityError when it is damaged or gone,
    MissingIdentity (before the download) when it is encrypted to keys we do not hold."""
    return open_delta(store, read_delta_manifest(store, ref), work_dir, identities=identities)


def read_delta_manifest(store: SnapshotStore, ref: delta.DeltaRef) -> DeltaManifest:
    try:
        return delta.DeltaManifest.from_json(get_bytes(store, ref.key), ref.key)
    except ObjectNotFound:
        raise IntegrityError(f"delta {ref.stem}: its manifest {ref.key} is gone") from None


def open_delta(
    store: SnapshotStore, m: DeltaManifest, work_dir: str | None = None, *, identities: Identities | None = None
) -> StoredDelta:
    """fetch_delta of a manifest read already."""
    plain = fetch_object(
        store,
        m.object_key,
        size=m.object_size,
        sha256=m.object_sha256,
        compression=m.compression,
        encryption=m.encryption,
        identities=identities,
        what=f"delta {m.id}",
        work_dir=work_dir,
    )
    return StoredDelta(m, plain)


def check_delta_stored(store: SnapshotStore, m: DeltaManifest, work_dir: str | None = None) -> None:
    """What a host without the identity can prove of an encrypted delta: the stored object has
    the size and SHA-256 its manifest records (IntegrityError if not)."""
    _download(
        store, m.object_key, size=m.object_size, sha256=m.object_sha256, what=f"delta {m.id}", work_dir=work_dir
    ).discard()


def fetch_object(
    store: SnapshotStore,
    key: str,
    *,
    size: int,
    sha256: str,
    compression: str,
    encryption: Encryption | None,
    identities: Identities | None,
    what: str,
    work_dir: str | None = None,
) -> scratch.Scratch:
    """Any stored object proven (size and SHA-256 as its manifest says, then decrypted and
    decompressed) as a private local file of its plaintext. MissingIdentity before the download
    when it is encrypted to keys we do not hold; IntegrityError when it is damaged or gone."""
    if encryption is not None:
        require(identities, encryption.recipients, what)
    raw = _download(store, key, size=size, sha256=sha256, what=what, work_dir=work_dir)
    if compression == "none" and encryption is None:
        return raw
    try:
        return _decode(
            raw.path,
            compression=compression,
            encryption=encryption,
            identities=identities,
            what=what,
            work_dir=work_dir,
        )
    finally:
        raw.discard()
