"""Prove a stored snapshot intact: download it, re-hash it, check its trailer and bbolt structure.

Used by `verify`, `fetch`, restores (before anything is touched) and drills. The checked file
(the plaintext snapshot, decrypted and decompressed as the manifest says) is left on local disk
(mode 0600) for the caller, or removed on failure.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import structlog

from . import bbolt
from . import manifest as manifests
from .codec import decode
from .crypto import Identities, require
from .errors import EtcdBackupError, IntegrityError, ObjectNotFound
from .model import TRAILER, Check, Manifest, rfc3339, utcnow
from .storage import SnapshotStore

log = structlog.get_logger(__name__)

_CHUNK = 1024 * 1024


@dataclass
class Verified:
    """A stored snapshot that passed every check, as a local db file (trailer included)."""

    manifest: Manifest
    path: Path
    status: bbolt.BoltStatus
    hash_check: Check
    structure_check: Check

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


def _private_temp(directory: str | None, label: str) -> tuple[int, Path]:
    directory = directory or tempfile.gettempdir()
    os.makedirs(directory, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{label}-", suffix=".part", dir=directory)
    os.fchmod(fd, 0o600)
    return fd, Path(name)


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
    raw = _download_checked(store, manifest, work_dir, record=True)
    raw.unlink()
    return Check(True, rfc3339(utcnow()), {"object_sha256": manifest.object_sha256})


def _download_checked(store: SnapshotStore, manifest: Manifest, work_dir: str | None, *, record: bool) -> Path:
    """The stored object, downloaded to a private file, its size and SHA-256 matching the manifest."""
    fd, raw = _private_temp(work_dir, f"{manifest.id}-download")
    try:
        with os.fdopen(fd, "w+b") as fh:
            try:
                store.get(manifest.object_key, fh)
            except ObjectNotFound:
                raise IntegrityError(f"snapshot {manifest.id}: data object {manifest.object_key} is missing") from None
        size = raw.stat().st_size
        if size != manifest.object_size:
            raise IntegrityError(
                f"snapshot {manifest.id}: data object has {size} bytes, manifest says {manifest.object_size}"
            )
        if _sha256_file(raw) != manifest.object_sha256:
            raise IntegrityError(f"snapshot {manifest.id}: data object SHA-256 does not match the manifest")
        return raw
    except BaseException as exc:
        raw.unlink(missing_ok=True)
        if record and isinstance(exc, IntegrityError):
            record_failure(store, manifest, "hash", str(exc))
        raise


def _decode(raw: Path, manifest: Manifest, identities: Identities | None, work_dir: str | None) -> Path:
    """The plaintext snapshot of a compressed and/or encrypted object, as a new private file."""
    out_fd, out = _private_temp(work_dir, f"{manifest.id}-db")
    try:
        with open(raw, "rb") as fin, os.fdopen(out_fd, "wb") as fout:
            decode(
                fin,
                fout,
                compression=manifest.compression,
                encryption=manifest.encryption,
                identities=identities,
                what=f"snapshot {manifest.id}",
            )
    except BaseException:
        out.unlink(missing_ok=True)
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
    out: Path | None = None
    stage = "hash"
    try:
        if manifest.compression != "none" or manifest.encryption is not None:
            out = _decode(raw, manifest, identities, work_dir)
            raw.unlink()
        else:
            out = raw
        ok, db_sha = _trailer_ok(out)
        if not ok:
            raise IntegrityError(f"snapshot {manifest.id}: etcd's SHA-256 trailer does not match the data")
        if manifest.db_sha256 and db_sha != manifest.db_sha256:
            raise IntegrityError(f"snapshot {manifest.id}: database digest differs from the manifest")
        hash_check = Check(True, rfc3339(utcnow()), {"sha256": db_sha})
        stage = "structure"
        try:
            status = bbolt.check(out, size=out.stat().st_size - TRAILER)
        except IntegrityError as exc:
            raise IntegrityError(f"snapshot {manifest.id}: {exc}") from None
        expected = manifest.verification.structure.detail
        if status.revision != manifest.revision or ("hash" in expected and expected["hash"] != status.hash):
            raise IntegrityError(
                f"snapshot {manifest.id}: structure differs from the manifest "
                f"(revision {status.revision} vs {manifest.revision})"
            )
        structure = Check(
            True,
            rfc3339(utcnow()),
            {
                "hash": status.hash,
                "revision": status.revision,
                "total_key": status.total_key,
                "total_size": status.total_size,
            },
        )
        return Verified(manifest, out, status, hash_check, structure)
    except BaseException as exc:
        raw.unlink(missing_ok=True)
        if out is not None:
            out.unlink(missing_ok=True)
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
    except OSError:
        fd, tmp = _private_temp(str(dest.parent), dest.name)
        try:
            with os.fdopen(fd, "wb") as fout, open(verified.path, "rb") as fin:
                while chunk := fin.read(_CHUNK):
                    fout.write(chunk)
                fout.flush()
                os.fsync(fout.fileno())
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        finally:
            verified.discard()
    os.chmod(dest, 0o600)
    return dest


__all__ = ["EtcdBackupError", "Verified", "check_stored", "fetch_verified", "place", "verify_stored"]
