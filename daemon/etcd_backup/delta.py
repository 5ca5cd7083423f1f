"""Delta objects: every change the watch saw between two revisions, stored between full snapshots.

Layout (relative to the configured prefix), one folder per cluster:

    deltas/<cluster_id>/<last>-<first>-<last_time>-<first_time>-<writer>.delta[.zst][.age]   the data
    deltas/<cluster_id>/<same stem>.json                                                     its manifest

`first`/`last` are the revisions it holds (zero-padded to 20 digits), the times when the watch
saw them (`20261201T083500123Z`), `writer` tells two copies apart. Keys sort by the *last*
revision, so "every delta that reaches past revision R" is one listing that starts after R, and
a chain, its timeline and its gaps are known from the keys alone, without reading a manifest.
The manifest is written last: a data object without one is not a delta.

The data object (before compression and encryption) is JSON lines, readable with `jq`:

    {"format": "etcd-backup-delta", "version": 1, "cluster_id": "...", "member_id": "...",
     "first_revision": 101, "last_revision": 250, "leases": {"694d77a1b2c3d4e5": 60}}
    {"revision": 101, "time": "2026-12-01T08:35:00.123Z", "events": [
        {"type": "put", "key": "<base64>", "value": "<base64>", "create_revision": 101,
         "mod_revision": 101, "version": 1, "lease": "694d77a1b2c3d4e5"},
        {"type": "delete", "key": "<base64>"}]}
    ...

one line per revision, every revision from first to last, in order; `lease` is the hex lease
id (`"0"`: none) and the header's `leases` maps each lease id used to the TTL it was granted
with (null when it had expired before the writer asked).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .errors import IntegrityError
from .etcdclient import Event, KeyValue
from .model import Encryption, rfc3339
from .storage import ObjectInfo, SnapshotStore, put_bytes

FOLDER = "deltas/"
FORMAT = "etcd-backup-delta"
VERSION = 1
MANIFEST_SUFFIX = ".json"
_DATA_SUFFIX = ".delta"
_DIGITS = 20
_TIME = "%Y%m%dT%H%M%S%fZ"
_STEM = re.compile(r"^(\d{20})-(\d{20})-(\d{8}T\d{9}Z)-(\d{8}T\d{9}Z)-([0-9a-z]+)$")


def folder(cluster_id: str) -> str:
    return f"{FOLDER}{cluster_id}/"


def _compact_time(ts: datetime) -> str:
    ts = ts.astimezone(UTC)
    return f"{ts:%Y%m%dT%H%M%S}{ts.microsecond // 1000:03d}Z"


def _parse_compact(text: str) -> datetime:
    """`20261201T083500123Z` (as _STEM matched it); ValueError for an impossible date or time.
    Through fromisoformat's basic format rather than strptime (4x slower): a listing parses two
    of these per delta, and a month of 10 s deltas is 250,000."""
    return datetime.fromisoformat(f"{text[:15]}.{text[15:18]}+00:00")


def after_revision(cluster_id: str, revision: int) -> str:
    """A listing's `start_after` that yields exactly the deltas whose last revision is > `revision`."""
    return f"{folder(cluster_id)}{revision:0{_DIGITS}d}-~"


@dataclass(frozen=True, slots=True)
class DeltaRef:
    """A committed delta as its manifest key names it (no download needed)."""

    key: str  # the manifest's key, relative to the prefix
    cluster_id: str
    first_revision: int
    last_revision: int
    first_time: datetime
    last_time: datetime
    writer: str

    @property
    def stem(self) -> str:
        return self.key[: -len(MANIFEST_SUFFIX)].rsplit("/", 1)[1]


def stem_of(first: int, last: int, first_time: datetime, last_time: datetime, writer: str) -> str:
    return f"{last:0{_DIGITS}d}-{first:0{_DIGITS}d}-{_compact_time(last_time)}-{_compact_time(first_time)}-{writer}"


def manifest_key(cluster_id: str, stem: str) -> str:
    return f"{folder(cluster_id)}{stem}{MANIFEST_SUFFIX}"


def data_key(cluster_id: str, stem: str, compression: str, encrypted: bool) -> str:
    zst = ".zst" if compression == "zstd" else ""
    return f"{folder(cluster_id)}{stem}{_DATA_SUFFIX}{zst}{'.age' if encrypted else ''}"


def parse_key(key: str) -> DeltaRef | None:
    """The DeltaRef a manifest key names, or None for anything else (data objects, strangers)."""
    if not key.startswith(FOLDER) or not key.endswith(MANIFEST_SUFFIX):
        return None
    rest = key[len(FOLDER) : -len(MANIFEST_SUFFIX)]
    cluster_id, sep, stem = rest.partition("/")
    m = _STEM.match(stem)
    if not sep or m is None or "/" in stem:
        return None
    last, first, last_time, first_time, writer = m.groups()
    try:
        return DeltaRef(
            key, cluster_id, int(first), int(last), _parse_compact(first_time), _parse_compact(last_time), writer
        )
    except ValueError:
        return None


# --- the manifest ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeltaManifest:
    id: str  # the stem
    cluster_id: str
    member_id: str
    first_revision: int
    last_revision: int
    events: int
    first_time: str
    last_time: str
    object_key: str
    object_size: int
    object_sha256: str
    compression: str
    encryption: Encryption | None
    created_at: str
    tool_version: str = ""
    schema_version: int = 1
    kind: str = "delta"

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "kind": self.kind,
            "id": self.id,
            "cluster_id": self.cluster_id,
            "member_id": self.member_id,
            "first_revision": self.first_revision,
            "last_revision": self.last_revision,
            "events": self.events,
            "first_time": self.first_time,
            "last_time": self.last_time,
            "object_key": self.object_key,
            "object_size": self.object_size,
            "object_sha256": self.object_sha256,
            "compression": self.compression,
            "encryption": self.encryption.to_dict() if self.encryption else None,
            "created_at": self.created_at,
            "tool_version": self.tool_version,
        }

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), indent=2).encode() + b"\n"

    @classmethod
    def from_json(cls, raw: bytes, key: str) -> DeltaManifest:
        try:
            d = json.loads(raw)
            if not isinstance(d, dict) or d.get("kind") != "delta" or d.get("schema_version", 1) > 1:
                raise ValueError("not a delta manifest this tool understands")
            ints = {k: d[k] for k in ("first_revision", "last_revision", "events", "object_size")}
            strs = {
                k: d[k]
                for k in (
                    "id",
                    "cluster_id",
                    "member_id",
                    "first_time",
                    "last_time",
                    "object_key",
                    "object_sha256",
                    "compression",
                    "created_at",
                )
            }
            if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in ints.values()):
                raise ValueError("revisions, events and object_size must be non-negative integers")
            if not all(isinstance(v, str) for v in strs.values()):
                raise ValueError("ids, times and keys must be strings")
            m = cls(
                **ints,
                **strs,
                encryption=Encryption.from_dict(d.get("encryption")),
                tool_version=str(d.get("tool_version", "")),
            )
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            raise IntegrityError(f"delta manifest {key}: {exc}".splitlines()[0]) from None
        ref = parse_key(key)
        if (
            ref is None
            or ref.cluster_id != m.cluster_id
            or (ref.first_revision, ref.last_revision) != (m.first_revision, m.last_revision)
            or not m.object_key.startswith(key[: -len(MANIFEST_SUFFIX)])
            or m.first_revision > m.last_revision
        ):
            raise IntegrityError(f"delta manifest {key} does not match its key")
        return m


# --- the data object ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Revision:
    """Every change etcd made at one revision (one transaction), and when the watch saw it."""

    revision: int
    seen_at: datetime
    events: tuple[Event, ...]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def encode_revision(r: Revision) -> bytes:
    events: list[dict[str, Any]] = []
    for ev in r.events:
        if ev.deleted:
            events.append({"type": "delete", "key": _b64(ev.kv.key)})
        else:
            kv = ev.kv
            events.append(
                {
                    "type": "put",
                    "key": _b64(kv.key),
                    "value": _b64(kv.value),
                    "create_revision": kv.create_revision,
                    "mod_revision": kv.mod_revision,
                    "version": kv.version,
                    "lease": format(kv.lease & 0xFFFFFFFFFFFFFFFF, "x"),
                }
            )
    return json.dumps({"revision": r.revision, "time": rfc3339(r.seen_at), "events": events}).encode() + b"\n"


def encode_header(*, cluster_id: str, member_id: str, first: int, last: int, leases: dict[int, int | None]) -> bytes:
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "cluster_id": cluster_id,
        "member_id": member_id,
        "first_revision": first,
        "last_revision": last,
        "leases": {format(i & 0xFFFFFFFFFFFFFFFF, "x"): ttl for i, ttl in sorted(leases.items())},
    }
    return json.dumps(doc).encode() + b"\n"


def _lease(text: str) -> int:
    value = int(text, 16)
    return value - (1 << 64) if value >= 1 << 63 else value


@dataclass(frozen=True, slots=True)
class Header:
    cluster_id: str
    first_revision: int
    last_revision: int
    leases: dict[int, int | None]


def decode(lines: Iterable[bytes], where: str) -> tuple[Header, Iterator[Revision]]:
    """The header, and the revisions in order; IntegrityError on anything out of shape (a
    missing, repeated or reordered revision included)."""
    it = iter(lines)
    try:
        head = json.loads(next(it))
        if head.get("format") != FORMAT or head.get("version") != VERSION:
            raise ValueError("not an etcd-backup delta of a version this tool reads")
        header = Header(
            str(head["cluster_id"]),
            int(head["first_revision"]),
            int(head["last_revision"]),
            {_lease(k): (None if v is None else int(v)) for k, v in dict(head["leases"]).items()},
        )
    except (StopIteration, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise IntegrityError(f"{where}: bad delta header: {exc}") from None
    return header, _revisions(it, header, where)


def _revisions(lines: Iterator[bytes], header: Header, where: str) -> Iterator[Revision]:
    expected = header.first_revision
    for line in lines:
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
            revision = int(doc["revision"])
            events = tuple(_event(e, revision) for e in doc["events"])
            seen = datetime.fromisoformat(str(doc["time"]).replace("Z", "+00:00"))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise IntegrityError(f"{where}: bad record after revision {expected - 1}: {exc}") from None
        if revision != expected or not events:
            raise IntegrityError(f"{where}: revision {revision} where {expected} was due")
        yield Revision(revision, seen, events)
        expected += 1
    if expected != header.last_revision + 1:
        raise IntegrityError(f"{where}: ends at revision {expected - 1}, header says {header.last_revision}")


def _event(e: dict[str, Any], revision: int) -> Event:
    key = base64.b64decode(e["key"], validate=True)
    if e["type"] == "delete":
        return Event(True, KeyValue(key, b"", 0, revision, 0, 0))
    if e["type"] != "put" or int(e["mod_revision"]) != revision:
        raise ValueError(f"event {e['type']!r} at mod_revision {e.get('mod_revision')} in revision {revision}")
    value = base64.b64decode(e["value"], validate=True)
    return Event(
        False, KeyValue(key, value, int(e["create_revision"]), revision, int(e["version"]), _lease(e["lease"]))
    )


# --- in storage --------------------------------------------------------------------------------


@dataclass
class DeltaListing:
    refs: list[DeltaRef]
    orphans: list[ObjectInfo]  # data objects without a manifest: debris once old enough
    data: dict[str, list[str]]  # manifest key -> the data object keys beside it


def list_deltas(store: SnapshotStore, cluster_id: str | None = None, *, after: int | None = None) -> DeltaListing:
    """Committed deltas (from their keys alone), of one cluster or all; with `after`, only those
    reaching past that revision: one bounded listing, however many older deltas there are.
    A listing failure raises (StorageError): never a partial answer."""
    if cluster_id is not None:
        start = after_revision(cluster_id, after) if after is not None else None
        objects = store.list(folder(cluster_id), start_after=start)
    else:
        objects = store.list(FOLDER)
    refs: list[DeltaRef] = []
    data: dict[str, list[str]] = {}
    for o in objects:
        ref = parse_key(o.key)
        if ref is not None:
            refs.append(ref)
            data.setdefault(o.key, [])
    orphans = []
    for o in objects:
        if o.key.endswith(MANIFEST_SUFFIX):
            continue
        owner = o.key.split(_DATA_SUFFIX, 1)[0] + MANIFEST_SUFFIX
        if owner in data:
            data[owner].append(o.key)
        else:
            orphans.append(o)
    return DeltaListing(refs, orphans, data)


def write_manifest(store: SnapshotStore, manifest: DeltaManifest) -> None:
    put_bytes(store, manifest_key(manifest.cluster_id, manifest.id), manifest.to_json())
