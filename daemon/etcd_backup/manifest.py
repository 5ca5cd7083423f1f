"""Where snapshots live under the prefix, and reading/writing their manifests.

Layout (relative to the configured prefix):
    snapshots/<id>.db[.zst][.age]   the etcd snapshot stream as received (db + 32-byte SHA-256
                                    trailer), zstd-compressed and/or age-encrypted as configured
    snapshots/<id>.files.tar[.zst][.age]
                                    the control-plane files ([files] paths) as a tar, in the
                                    data object's form; only when files are configured
    snapshots/<id>.json             the manifest, written last: it is the commit point
Later kinds of object (delta snapshots) get their own folder beside `snapshots/`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime

from .errors import EtcdBackupError, IntegrityError, ObjectNotFound, UsageError
from .model import FilesObject, Manifest
from .storage import ObjectInfo, SnapshotStore, get_bytes, put_bytes

FOLDER = "snapshots/"
MANIFEST_SUFFIX = ".json"
_DATA_SUFFIXES = {"none": ".db", "zstd": ".db.zst"}
FILES_SUFFIX = ".files.tar"
ENCRYPTED_SUFFIX = ".age"  # last: the outermost layer, undone first (age -d, then zstd -d)


def data_key(snapshot_id: str, compression: str, encrypted: bool = False) -> str:
    return f"{FOLDER}{snapshot_id}{_DATA_SUFFIXES[compression]}{ENCRYPTED_SUFFIX if encrypted else ''}"


def files_key(snapshot_id: str, compression: str, encrypted: bool = False) -> str:
    zst = ".zst" if compression == "zstd" else ""
    return f"{FOLDER}{snapshot_id}{FILES_SUFFIX}{zst}{ENCRYPTED_SUFFIX if encrypted else ''}"


def manifest_key(snapshot_id: str) -> str:
    return f"{FOLDER}{snapshot_id}{MANIFEST_SUFFIX}"


def id_of(key: str) -> str:
    name = key[len(FOLDER) :] if key.startswith(FOLDER) else key
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
    if manifest.object_key != data_key(snapshot_id, manifest.compression, manifest.encryption is not None):
        raise IntegrityError(f"manifest {snapshot_id} names an unexpected object {manifest.object_key!r}")
    files = manifest.files
    if files is not None and files.object_key != files_key(
        snapshot_id, files.compression, manifest.encryption is not None
    ):
        raise IntegrityError(f"manifest {snapshot_id} names an unexpected files object {files.object_key!r}")


@dataclass
class Problem:
    key: str
    error: str


# The live cluster's id (hex), or a function asked for it only when it matters; None: unknown.
LiveCluster = str | Callable[[], str | None] | None


@dataclass
class Listing:
    """Every snapshot under the prefix, newest first, plus what is wrong with the rest."""

    manifests: list[Manifest] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    orphans: list[ObjectInfo] = field(default_factory=list)  # data objects without a manifest
    # Snapshots whose control-plane files object is missing or damaged: their etcd data restores.
    files_problems: list[Problem] = field(default_factory=list)
    objects: dict[str, ObjectInfo] = field(default_factory=dict)

    def newest_verified(self, cluster_id: str | None = None) -> Manifest | None:
        for m in self.manifests:
            if m.verified and (cluster_id is None or m.cluster_id == cluster_id):
                return m
        return None

    def clusters(self) -> dict[str, list[Manifest]]:
        """Verified snapshots by cluster id, each list newest first; the newest cluster first."""
        out: dict[str, list[Manifest]] = {}
        for m in self.manifests:
            if m.verified:
                out.setdefault(m.cluster_id, []).append(m)
        return out

    def latest(self, where: str, live_cluster: LiveCluster = None) -> Manifest:
        """What `latest` means: the newest verified snapshot, of one cluster.

        Snapshots of several clusters under one prefix (a misconfigured copy writing here, or the
        new cluster after a `restore cluster`) make "newest" ambiguous. Then only the cluster the
        configured etcd endpoints belong to counts (`live_cluster`, asked only in that case); if
        etcd cannot tell, `latest` is refused rather than guessing whose data to restore.
        """
        clusters = self.clusters()
        if not clusters:
            failed = [m for m in self.manifests if not m.verified]
            if failed:
                # Every snapshot here failed a check: that is an integrity failure (3), not an
                # unreachable store (1), and the operator needs to know which and why.
                newest = max(failed, key=lambda m: m.created)
                v = newest.verification
                why = next((c.error for c in (v.hash, v.structure, v.drill) if c is not None and c.error), None)
                raise IntegrityError(
                    f"no verified snapshot in {where}: all {len(failed)} failed verification, the newest "
                    f"{newest.id}{f' ({why})' if why else ''}; do not restore from them: take a new snapshot while "
                    "etcd runs"
                )
            if self.problems:
                first = self.problems[0]
                raise IntegrityError(
                    f"no verified snapshot in {where}: {len(self.problems)} manifest(s) there cannot be used "
                    f"({first.key}: {first.error})"
                )
            raise EtcdBackupError(f"no verified snapshot in {where}")
        # Failed snapshots of another cluster make it ambiguous too: they may be the live cluster's.
        if len(clusters) == 1 and {m.cluster_id for m in self.manifests} <= clusters.keys():
            return next(iter(clusters.values()))[0]
        live = live_cluster() if callable(live_cluster) else live_cluster
        if live is not None and live in clusters:
            return clusters[live][0]
        if live is None and len(clusters) == 1:
            return next(iter(clusters.values()))[0]  # etcd does not answer: the one cluster verified
        summary = "; ".join(
            f"cluster {cid}: {len(ms)} snapshot(s), newest {ms[0].id} taken {ms[0].created_at}"
            for cid, ms in clusters.items()
        )
        if live is not None:
            failing = sum(1 for m in self.manifests if m.cluster_id == live)
            own = f" (its {failing} snapshot(s) here failed verification)" if failing else ""
            raise UsageError(
                f"no verified snapshot of the live cluster {live}{own} in {where}, only of "
                f"other clusters ({summary}): name the snapshot by id"
            )
        raise UsageError(
            f"snapshots of {len(clusters)} etcd clusters in {where} ({summary}) and no configured etcd "
            "endpoint answers to tell which one is this cluster: name the snapshot by id"
        )

    def warnings(self) -> list[str]:
        """What `list` tells the operator on stderr besides the unreadable manifests."""
        out = [
            f"{FOLDER}{m.id}{MANIFEST_SUFFIX}: snapshot failed verification: {_failure(m)}"
            for m in self.manifests
            if not m.verified
        ]
        out += [f"{p.key}: {p.error}" for p in self.files_problems]
        clusters = self.clusters()
        if len(clusters) > 1:
            summary = ", ".join(f"{cid} ({len(ms)} snapshot(s), newest {ms[0].id})" for cid, ms in clusters.items())
            out.append(
                f"snapshots of {len(clusters)} etcd clusters under this prefix: {summary}; "
                "`latest` means the newest of the cluster the configured endpoints belong to"
            )
        return out


def _failure(m: Manifest) -> str:
    v = m.verification
    for check in (v.hash, v.structure, v.drill):
        if check is not None and not check.ok:
            return check.error or "failed"
    return "failed"


# key -> (size, modified, manifest): lets a long-running process skip re-reading unchanged manifests.
ManifestCache = dict[str, tuple[int, datetime, Manifest]]


READERS = 8  # manifests downloaded at once (within the S3 client's 10 connections)


def _read_listed(
    store: SnapshotStore, infos: list[ObjectInfo], cache: ManifestCache | None
) -> dict[str, Manifest | IntegrityError | ObjectNotFound]:
    """Every listed manifest, from the cache where it is unchanged, the rest downloaded several
    at a time: a month of 30-minute snapshots is 1,440 manifests, one round trip each. A bad
    manifest or one deleted meanwhile is an answer; any other failure raises."""
    out: dict[str, Manifest | IntegrityError | ObjectNotFound] = {}
    todo = []
    for info in infos:
        hit = cache.get(info.key) if cache is not None else None
        if hit is not None and hit[0] == info.size and hit[1] == info.modified:
            out[info.key] = hit[2]
        else:
            todo.append(info)

    def read(info: ObjectInfo) -> Manifest | IntegrityError | ObjectNotFound:
        try:
            return Manifest.from_json(get_bytes(store, info.key))
        except (IntegrityError, ObjectNotFound) as exc:
            return exc

    if len(todo) > 1:
        with ThreadPoolExecutor(min(READERS, len(todo)), thread_name_prefix="manifests") as pool:
            got = list(pool.map(read, todo))
    else:
        got = [read(info) for info in todo]
    for info, result in zip(todo, got, strict=True):
        out[info.key] = result
        if cache is not None and isinstance(result, Manifest):
            cache[info.key] = (info.size, info.modified, result)
    return out


def list_snapshots(store: SnapshotStore, cache: ManifestCache | None = None) -> Listing:
    """Read every manifest. A listing failure raises; a bad manifest becomes a Problem.

    With `cache` (owned by the caller, updated here), manifests unchanged since the last listing
    (same size and modification time) are not downloaded again.
    """
    objects = {o.key: o for o in store.list(FOLDER)}
    if cache is not None:
        for gone in [k for k in cache if k not in objects]:
            del cache[gone]
    listing = Listing(objects=objects)
    claimed: set[str] = set()
    keys = sorted(k for k in objects if k.endswith(MANIFEST_SUFFIX))
    read = _read_listed(store, [objects[k] for k in keys], cache)
    for key in keys:
        snapshot_id = id_of(key)
        try:
            result = read[key]
            if not isinstance(result, Manifest):
                raise result
            manifest = result
            _check_consistent(manifest, snapshot_id)
        except IntegrityError as exc:
            listing.problems.append(Problem(key, str(exc)))
            claimed.update(k for k in objects if id_of(k) == snapshot_id)
            continue
        except ObjectNotFound:
            continue  # deleted while we listed
        claimed.add(manifest.object_key)
        if manifest.files is not None:
            claimed.add(manifest.files.object_key)
            _check_files_object(listing, key, manifest.files, objects)
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


def _check_files_object(listing: Listing, key: str, files: FilesObject, objects: dict[str, ObjectInfo]) -> None:
    found = objects.get(files.object_key)
    if found is None:
        listing.files_problems.append(Problem(key, f"control-plane files object {files.object_key} is missing"))
    elif found.size != files.object_size:
        listing.files_problems.append(
            Problem(key, f"control-plane files object has {found.size} bytes, manifest says {files.object_size}")
        )


class CachedListing:
    """A long-running process's listing: manifests unchanged since the last look are not read
    again, and one listing runs at a time (the cache is shared)."""

    def __init__(self, store: SnapshotStore) -> None:
        self.store = store
        self._cache: ManifestCache = {}
        self._lock = threading.Lock()

    def list(self) -> Listing:
        with self._lock:
            return list_snapshots(self.store, self._cache)


def resolve(store: SnapshotStore, ref: str, live_cluster: LiveCluster = None) -> Manifest:
    """`latest` (the newest verified snapshot, see Listing.latest) or an explicit id."""
    if ref != "latest":
        return read(store, ref)
    return list_snapshots(store).latest(store.description, live_cluster)
