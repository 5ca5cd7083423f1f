"""The second copy (`storage.copy_to`): what the copy lacks, copied from the primary, one committed
object at a time, its data first and its manifest last, so that the copy is a complete store of
its own (every read command takes `--store copy`).

A committed object is a manifest (`<stem>.json` in a folder below the prefix: `snapshots/`,
`deltas/<cluster>/`, ...) plus the data objects it names: `object_key` with `object_size` and
`object_sha256`, at its top level or in a section of it. Nothing here knows more of a manifest,
so every kind of object committed that way is copied alike.

A pass compares the two listings. A manifest the copy lacks is copied with its data; one it holds
in another size (a drill result or a failed check recorded since) is copied again. Each data
object is proven against the SHA-256 its manifest records before the manifest is written. The
copy is never told to delete anything here: retention applies to each store on its own.
"""

from __future__ import annotations

import json
import posixpath
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from ..errors import Cancelled, IntegrityError, ObjectNotFound
from ..storage import ObjectInfo, SnapshotStore, get_bytes, put_bytes
from ..storage.kept import KeptFile
from ..storage.transfer import copy_object

log = structlog.get_logger(__name__)

MANIFEST_SUFFIX = ".json"
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class DataObject:
    key: str
    size: int
    sha256: str


@dataclass
class CopyReport:
    copied: list[str] = field(default_factory=list)  # manifests copied with their data
    refreshed: list[str] = field(default_factory=list)  # manifests copied again (changed in the primary)
    bytes: int = 0  # data bytes copied
    # Not copied: a data object of the primary whose bytes are not what its manifest records...
    damaged: list[str] = field(default_factory=list)
    # ...or a manifest that cannot be read or lacks its data (`list` reports those already).
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        """The copy holds every committed object of the primary that can be copied."""
        return not self.damaged


def named_objects(manifest_key: str, raw: bytes) -> list[DataObject]:
    """The data objects a manifest names. ValueError if it is no manifest or names one badly."""
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    sections = [doc, *(v for v in doc.values() if isinstance(v, dict))]
    found = [_data_object(manifest_key, s) for s in sections if "object_key" in s]
    if not found:
        raise ValueError("names no data object (object_key)")
    return found


def _data_object(manifest_key: str, section: dict[str, Any]) -> DataObject:
    key, size, sha256 = section.get("object_key"), section.get("object_size"), section.get("object_sha256")
    if not isinstance(key, str) or not isinstance(size, int) or not isinstance(sha256, str):
        raise ValueError("object_key, object_size and object_sha256 must be a string, an integer and a string")
    parts = key.split("/")
    # Beside its manifest, in the same top folder: a manifest never sends the copy elsewhere.
    top = manifest_key.split("/", 1)[0]
    if key == manifest_key or any(p in {"", ".", ".."} for p in parts) or parts[0] != top:
        raise ValueError(f"object_key {key!r} does not lie beside the manifest")
    if size < 0 or not _SHA256.fullmatch(sha256):
        raise ValueError(f"object_size or object_sha256 of {key} is not valid")
    return DataObject(key, size, sha256)


def sync(
    primary: SnapshotStore,
    copy: SnapshotStore,
    *,
    kept: Callable[[str], KeptFile | None] | None = None,
    cancel: threading.Event | None = None,
) -> CopyReport:
    """One pass: copy what `copy` lacks, newest first. Raises when a store fails (the pass stops:
    the next one retries); a committed object of the primary that cannot be copied (damaged, or
    its manifest unreadable) goes into the report and the pass goes on.

    `kept` hands out a local file that holds a data object (the newest snapshot's spool), to copy
    from instead of downloading it.
    """
    started = time.monotonic()
    run = _Pass(primary, copy, {o.key: o for o in primary.list()}, {o.key: o for o in copy.list()}, kept, cancel)
    # Newest first (ids sort by time), whatever their folder: the copy's most valuable objects.
    for key in sorted((k for k in run.ours if _is_manifest(k)), key=posixpath.basename, reverse=True):
        if cancel is not None and cancel.is_set():
            raise Cancelled("copy cancelled (shutting down)")
        held = run.theirs.get(key)
        if held is not None and held.size == run.ours[key].size:
            continue
        try:
            run.committed(key, held)
        except ObjectNotFound:
            continue  # deleted from the primary meanwhile (retention)
        except _Unreadable as exc:
            run.report.skipped.append(f"{key}: {exc}")
            log.warning("committed object not copied", key=key, error=str(exc), stage="copy")
        except IntegrityError as exc:
            run.report.damaged.append(f"{key}: {exc}")
            log.error(
                "committed object not copied: its data in the primary does not match its manifest "
                "(etcd-backup verify tells more)",
                key=key,
                error=str(exc),
                stage="copy",
            )
    run.report.seconds = round(time.monotonic() - started, 3)
    return run.report


def _marked_failed(store: SnapshotStore, key: str) -> bool:
    """Whether the manifest `key` in `store` records a failed check (`verification.<check>.ok`
    false), or cannot be read: either way its data is not to be trusted as it is."""
    try:
        doc = json.loads(get_bytes(store, key))
    except (ValueError, IntegrityError, ObjectNotFound):  # a store that fails raises: the pass stops
        return True
    checks = doc.get("verification") if isinstance(doc, dict) else None
    return isinstance(checks, dict) and any(isinstance(c, dict) and c.get("ok") is False for c in checks.values())


class _Unreadable(Exception):
    """A committed object of the primary that is not whole (the pass skips it)."""


def _is_manifest(key: str) -> bool:
    return key.endswith(MANIFEST_SUFFIX) and "/" in key and not posixpath.basename(key).startswith(".")


@dataclass
class _Pass:
    primary: SnapshotStore
    copy: SnapshotStore
    ours: dict[str, ObjectInfo]  # the primary's listing
    theirs: dict[str, ObjectInfo]  # the copy's
    kept: Callable[[str], KeptFile | None] | None
    cancel: threading.Event | None
    report: CopyReport = field(default_factory=CopyReport)

    def committed(self, key: str, held: ObjectInfo | None) -> None:
        """Copy the manifest `key` (held by the copy in another size, or not at all), data first."""
        try:
            raw = get_bytes(self.primary, key)
            objects = named_objects(key, raw)
        except (ValueError, IntegrityError) as exc:  # not JSON, names nothing, or too large for one
            raise _Unreadable(f"manifest cannot be read: {exc}") from None
        for obj in objects:
            stored = self.ours.get(obj.key)
            if stored is None or stored.size != obj.size:
                raise _Unreadable(f"its data object {obj.key} is missing or not {obj.size} bytes in the primary")
        # A check in the copy found its data damaged (verify --store copy marked it): the data
        # comes again, or the primary's manifest would call the damaged bytes verified.
        damaged = held is not None and _marked_failed(self.copy, key)
        for obj in objects:
            present = self.theirs.get(obj.key)
            if held is not None and present is not None and present.size == obj.size and not damaged:
                continue  # copied with this manifest before: only the manifest changed
            # Without its manifest, a data object in the copy may be from a pass that stopped
            # before proving it: it is copied again.
            self.data(obj)
        put_bytes(self.copy, key, raw)  # last: the commit point in the copy too
        (self.report.refreshed if held is not None else self.report.copied).append(key)

    def data(self, obj: DataObject) -> None:
        local = self.kept(obj.key) if self.kept is not None else None
        try:
            copy_object(
                self.primary, self.copy, obj.key, size=obj.size, sha256=obj.sha256, local=local, cancel=self.cancel
            )
        finally:
            if local is not None:
                local.close()
        self.report.bytes += obj.size
