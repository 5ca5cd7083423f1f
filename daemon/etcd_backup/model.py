"""Shared data: the manifest and its verification record, with a strict JSON round-trip."""

from __future__ import annotations

import json
import math
import secrets
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from .errors import IntegrityError

SCHEMA_VERSION = 1
KIND_FULL = "full"
TRAILER = 32  # etcd ends every snapshot stream with the SHA-256 of the db before it


def utcnow() -> datetime:
    return datetime.now(UTC)


def rfc3339(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    ts = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if ts.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone")
    return ts.astimezone(UTC)


def new_snapshot_id(now: datetime) -> str:
    """Sortable by time (millisecond resolution), unique through a random suffix."""
    now = now.astimezone(UTC)
    return f"{now:%Y%m%dT%H%M%S}{now.microsecond // 1000:03d}Z-{secrets.token_hex(3)}"


def id_time(snapshot_id: str) -> datetime | None:
    try:
        return datetime.strptime(snapshot_id[:18], "%Y%m%dT%H%M%S%f").replace(tzinfo=UTC)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Check:
    """The outcome of one verification step."""

    ok: bool
    at: str
    detail: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ok": self.ok, "at": self.at, **self.detail}
        if self.error is not None:
            out["error"] = self.error
        return out

    @classmethod
    def from_dict(cls, data: Any) -> Check:
        if not isinstance(data, dict) or not isinstance(data.get("ok"), bool):
            raise ValueError("verification entry needs a boolean 'ok'")
        detail = {k: v for k, v in data.items() if k not in {"ok", "at", "error"}}
        error = data.get("error")
        return cls(ok=data["ok"], at=str(data.get("at", "")), detail=detail, error=error)


@dataclass(frozen=True, slots=True)
class Verification:
    hash: Check
    structure: Check
    drill: Check | None = None

    @property
    def ok(self) -> bool:
        return self.hash.ok and self.structure.ok and (self.drill is None or self.drill.ok)

    def to_dict(self) -> dict[str, Any]:
        return {
            "hash": self.hash.to_dict(),
            "structure": self.structure.to_dict(),
            "drill": self.drill.to_dict() if self.drill else None,
        }

    @classmethod
    def from_dict(cls, data: Any) -> Verification:
        if not isinstance(data, dict):
            raise ValueError("verification must be an object")
        drill = data.get("drill")
        return cls(
            hash=Check.from_dict(data.get("hash")),
            structure=Check.from_dict(data.get("structure")),
            drill=Check.from_dict(drill) if drill is not None else None,
        )


@dataclass(frozen=True, slots=True)
class Encryption:
    """How a data object is encrypted: the format and the public keys it was encrypted to (no secret)."""

    format: str
    recipients: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "recipients": list(self.recipients)}

    @classmethod
    def from_dict(cls, data: Any) -> Encryption | None:
        """None (the field absent, as in manifests written before encryption existed) means plain."""
        if data is None:
            return None
        if not isinstance(data, dict) or data.get("format") != "age":
            raise ValueError("field 'encryption' must be null or an object with format 'age'")
        recipients = data.get("recipients")
        if not isinstance(recipients, list) or not recipients or not all(isinstance(r, str) for r in recipients):
            raise ValueError("field 'encryption.recipients' must be a non-empty list of strings")
        return cls(format="age", recipients=tuple(recipients))


FILE_TYPES = ("file", "dir", "symlink")


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One archived control-plane file: its name and metadata, never anything read from it."""

    path: str  # relative to the filesystem root, '/'-separated: etc/kubernetes/pki/ca.key
    type: str  # "file" | "dir" | "symlink"
    mode: int  # permission bits (0o7777)
    size: int = 0  # bytes of a regular file

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "type": self.type, "mode": f"{self.mode:04o}", "size": self.size}

    @classmethod
    def from_dict(cls, data: Any) -> FileEntry:
        if not isinstance(data, dict) or not isinstance(data.get("path"), str) or data.get("type") not in FILE_TYPES:
            raise ValueError("files entry needs a string 'path' and a 'type' of file, dir or symlink")
        mode, size = data.get("mode"), data.get("size", 0)
        if not isinstance(mode, str) or not mode.isdigit() or not set(mode) <= set("01234567") or int(mode, 8) > 0o7777:
            raise ValueError("files entry 'mode' must be an octal string like '0600'")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError("files entry 'size' must be a non-negative integer")
        return cls(data["path"], data["type"], int(mode, 8), size)


@dataclass(frozen=True, slots=True)
class SkippedFile:
    """A configured path (or something below one) that is not in the archive, and why."""

    path: str  # absolute, as on the host
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "reason": self.reason}

    @classmethod
    def from_dict(cls, data: Any) -> SkippedFile:
        if not isinstance(data, dict) or not isinstance(data.get("path"), str):
            raise ValueError("files.skipped entry needs a string 'path'")
        return cls(data["path"], str(data.get("reason", "")))


@dataclass(frozen=True, slots=True)
class FilesObject:
    """The control-plane files archived with a snapshot: a tar object of their own beside the
    data object, stored in the same form (compression, and the manifest's encryption)."""

    object_key: str
    object_size: int
    object_sha256: str
    compression: str
    count: int  # files and symlinks in the archive (directories not counted)
    paths: tuple[str, ...] = ()  # the configured paths it was made from
    entries: tuple[FileEntry, ...] = ()
    skipped: tuple[SkippedFile, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "object_key": self.object_key,
            "object_size": self.object_size,
            "object_sha256": self.object_sha256,
            "compression": self.compression,
            "count": self.count,
            "paths": list(self.paths),
            "skipped": [s.to_dict() for s in self.skipped],
            "entries": [e.to_dict() for e in self.entries],
        }

    @classmethod
    def from_dict(cls, data: Any) -> FilesObject | None:
        """None (absent, as in snapshots taken without [files]) means no files."""
        if data is None:
            return None
        if not isinstance(data, dict):
            raise ValueError("field 'files' must be null or an object")
        for name in ("object_key", "object_sha256"):
            if not isinstance(data.get(name), str):
                raise ValueError(f"field 'files.{name}' missing or not a string")
        size = data.get("object_size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError("field 'files.object_size' missing or not a non-negative integer")
        lists = {name: data.get(name, []) for name in ("paths", "entries", "skipped")}
        for name, value in lists.items():
            if not isinstance(value, list):
                raise ValueError(f"field 'files.{name}' must be a list")
        entries = tuple(FileEntry.from_dict(e) for e in lists["entries"])
        count = data.get("count", sum(e.type != "dir" for e in entries))
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise ValueError("field 'files.count' must be a non-negative integer")
        compression = data.get("compression", "zstd" if ".zst" in data["object_key"] else "none")
        return cls(
            object_key=data["object_key"],
            object_size=size,
            object_sha256=data["object_sha256"],
            compression=str(compression),
            count=count,
            paths=tuple(str(p) for p in lists["paths"]),
            entries=entries,
            skipped=tuple(SkippedFile.from_dict(s) for s in lists["skipped"]),
        )


_INT_FIELDS = ("revision", "keys", "db_size", "object_size")
_STR_FIELDS = (
    "id",
    "created_at",
    "reason",
    "cluster_id",
    "member_id",
    "endpoint",
    "etcd_version",
    "object_key",
    "object_sha256",
    "compression",
)


@dataclass(frozen=True, slots=True)
class ClusterMember:
    """One entry of the member list as it was when the snapshot was taken (ids hex)."""

    id: str
    name: str
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...]
    learner: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "peer_urls": list(self.peer_urls),
            "client_urls": list(self.client_urls),
            "learner": self.learner,
        }

    @classmethod
    def from_dict(cls, data: Any) -> ClusterMember:
        if not isinstance(data, dict):
            raise ValueError("members entry must be an object")
        urls: dict[str, tuple[str, ...]] = {}
        for name in ("peer_urls", "client_urls"):
            value = data.get(name, [])
            if not isinstance(value, list) or not all(isinstance(u, str) for u in value):
                raise ValueError(f"members entry field {name!r} must be a list of strings")
            urls[name] = tuple(value)
        if not isinstance(data.get("id"), str) or not isinstance(data.get("name", ""), str):
            raise ValueError("members entry needs a string 'id' and 'name'")
        return cls(data["id"], data.get("name", ""), urls["peer_urls"], urls["client_urls"], bool(data.get("learner")))


def _finite(value: Any, name: str) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"field {name!r} is not a finite number")
    return number


@dataclass(frozen=True, slots=True)
class Manifest:
    """What lands beside each data object, and what `snapshot`/`list` print."""

    id: str
    created_at: str
    reason: str
    pinned: bool
    cluster_id: str
    member_id: str
    endpoint: str
    etcd_version: str
    revision: int
    keys: int
    db_size: int
    object_key: str
    object_size: int
    object_sha256: str
    compression: str
    verification: Verification
    duration_seconds: float = 0.0
    kind: str = KIND_FULL
    schema_version: int = SCHEMA_VERSION
    tool_version: str = ""
    # The snapshot's own trailer digest (SHA-256 of the db bytes): what etcdutl checks on restore.
    db_sha256: str = ""
    # The member list when the snapshot was taken: names, peer and client URLs for the runbook.
    members: tuple[ClusterMember, ...] = ()
    encryption: Encryption | None = None
    # The control-plane files archived with it ([files] paths), or None.
    files: FilesObject | None = None

    def member_named(self, name: str) -> ClusterMember | None:
        return next((m for m in self.members if m.name == name), None)

    @property
    def created(self) -> datetime:
        return parse_time(self.created_at)

    @property
    def verified(self) -> bool:
        return self.verification.ok

    def with_drill(self, drill: Check) -> Manifest:
        return replace(self, verification=replace(self.verification, drill=drill))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["verification"] = self.verification.to_dict()
        data["members"] = [m.to_dict() for m in self.members]
        data["encryption"] = self.encryption.to_dict() if self.encryption else None
        data["files"] = self.files.to_dict() if self.files else None
        # Contract order first, extras after: easier to read in `cat`.
        order = [
            "schema_version",
            "kind",
            "id",
            "created_at",
            "reason",
            "pinned",
            *_STR_FIELDS[3:7],
            "revision",
            "keys",
            "db_size",
            "object_key",
            "object_size",
            "object_sha256",
            "compression",
            "encryption",
            "files",
            "db_sha256",
            "verification",
            "duration_seconds",
            "tool_version",
            "members",
        ]
        return {k: data[k] for k in order}

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False).encode() + b"\n"

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        if not isinstance(data, dict):
            raise IntegrityError("manifest is not a JSON object")
        try:
            schema = data.get("schema_version", 1)
            if not isinstance(schema, int) or schema > SCHEMA_VERSION:
                raise ValueError(f"schema_version {schema!r} is newer than this tool understands")
            values: dict[str, Any] = {}
            for name in _STR_FIELDS:
                if not isinstance(data.get(name), str):
                    raise ValueError(f"field {name!r} missing or not a string")
                values[name] = data[name]
            for name in _INT_FIELDS:
                v = data.get(name)
                if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                    raise ValueError(f"field {name!r} missing or not a non-negative integer")
                values[name] = v
            if not isinstance(data.get("pinned"), bool):
                raise ValueError("field 'pinned' missing or not a boolean")
            parse_time(values["created_at"])
            members = data.get("members", [])
            if not isinstance(members, list):
                raise ValueError("field 'members' must be a list")
            return cls(
                **values,
                pinned=data["pinned"],
                verification=Verification.from_dict(data.get("verification")),
                duration_seconds=_finite(data.get("duration_seconds", 0.0), "duration_seconds"),
                kind=str(data.get("kind", KIND_FULL)),
                schema_version=schema,
                tool_version=str(data.get("tool_version", "")),
                db_sha256=str(data.get("db_sha256", "")),
                members=tuple(ClusterMember.from_dict(m) for m in members),
                encryption=Encryption.from_dict(data.get("encryption")),
                files=FilesObject.from_dict(data.get("files")),
            )
        except (ValueError, TypeError, OverflowError) as exc:
            raise IntegrityError(f"manifest {str(data.get('id', '?'))[:80]}: {exc}".splitlines()[0]) from None

    @classmethod
    def from_json(cls, raw: bytes) -> Manifest:
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
            raise IntegrityError(f"manifest is not valid JSON: {exc}") from None
        return cls.from_dict(data)
