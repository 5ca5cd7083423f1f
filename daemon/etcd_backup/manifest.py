"""Where snapshots live under the prefix, and reading/writing their manifests.

Layout (relative to the configured prefix):
    snapshots/<id>.db[.zst]   the etcd snapshot stream as received (db + 32-byte SHA-256 trailer)
    snapshots/<id>.json       the manifest, written last: it is the commit point
Later kinds of object (delta snapshots) get their own folder beside `snapshots/`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import EtcdBackupError, IntegrityError, ObjectNotFound, UsageError
from .model import Manifest
from .storage import ObjectInfo, SnapshotStore, get_bytes, put_bytes

FOLDER = "snapshots/"
MANIFEST_SUFFIX = ".json"
_DATA_SUFFIXES = {"none": ".db", "zstd": ".db.zst"}


def data_key(snapshot_id: str, compression: str) -> str:
    return f"{FOLDER}{snapshot_id}{_DATA_SUFFIXES[compression]}"


def manifest_key(snapshot_id: str) -> str:
    return f"{FOLDER}{snapshot_id}{MANIFEST_SUFFIX}"


def id_of(key: str) -> str:
    name = key[len(FOLDER):] if key.startswith(FOLDER) else key
    return name.split(".", 1)[0] if "." in name else name


def write(store: SnapshotStore, manifest: Manifest) -> None:
    put_bytes(store, manifest_key(manifest.id), manifest.to_json())


def read(store: SnapshotStore, snapshot_id: str) -> Manifest:
    try:
        raw = get_bytes(store, manifest_key(snapshot_id))
    except ObjectNotFound:
        raise UsageError(f"snapshot {snapshot_id} not found in {store.description}") from None
    manifest = Manifest.from_json(raw)
    _check_consistent(manifest, snapshot_id)
    return manifest


def _check_consistent(manifest: Manifest, snapshot_id: str) -> None:
    if manifest.id != snapshot_id:
        raise IntegrityError(f"manifest {snapshot_id} names a different snapshot id {manifest.id!r}")
    if manifest.object_key != data_key(snapshot_id, manifest.compression):
        raise IntegrityError(f"manifest {snapshot_id} names an unexpected object {manifest.object_key!r}")


@dataclass
class Problem:
    key: str
    error: str


@dataclass
class Listing:
    """Every snapshot under the prefix, newest first, plus what is wrong with the rest."""

    manifests: list[Manifest] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    orphans: list[ObjectInfo] = field(default_factory=list)  # data objects without a manifest
    objects: dict[str, ObjectInfo] = field(default_factory=dict)

    def newest_verified(self, cluster_id: str | None = None) -> Manifest | None:
        for m in self.manifests:
            if m.verified and (cluster_id is None or m.cluster_id == cluster_id):
                return m
        return None


def list_snapshots(store: SnapshotStore) -> Listing:
    """Read every manifest. A listing failure raises; a bad manifest becomes a Problem."""
    objects = {o.key: o for o in store.list(FOLDER)}
    listing = Listing(objects=objects)
    claimed: set[str] = set()
    for key in sorted(objects):
        if not key.endswith(MANIFEST_SUFFIX):
            continue
        snapshot_id = id_of(key)
        try:
            manifest = Manifest.from_json(get_bytes(store, key))
            _check_consistent(manifest, snapshot_id)
        except IntegrityError as exc:
            listing.problems.append(Problem(key, str(exc)))
            claimed.update(k for k in objects if id_of(k) == snapshot_id)
            continue
        except ObjectNotFound:
            continue  # deleted while we listed
        claimed.add(manifest.object_key)
        data = objects.get(manifest.object_key)
        if data is None:
            listing.problems.append(Problem(key, f"data object {manifest.object_key} is missing"))
            continue
        if data.size != manifest.object_size:
            listing.problems.append(
                Problem(key, f"data object has {data.size} bytes, manifest says {manifest.object_size}")
            )
            continue
        listing.manifests.append(manifest)
    listing.orphans = [o for k, o in objects.items() if not k.endswith(MANIFEST_SUFFIX) and k not in claimed]
    listing.manifests.sort(key=lambda m: (m.created, m.id), reverse=True)
    return listing


def resolve(store: SnapshotStore, ref: str) -> Manifest:
    """`latest` (the newest verified snapshot) or an explicit id."""
    if ref != "latest":
        return read(store, ref)
    listing = list_snapshots(store)
    newest = listing.newest_verified()
    if newest is None:
        raise EtcdBackupError(f"no verified snapshot in {store.description}")
    return newest
