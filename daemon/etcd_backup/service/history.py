"""What storage holds over time: the timeline of chains (from listings alone, no object read),
and the proof of one chain (every delta downloaded, hashed, decoded, revision by revision).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog

from .. import chain, delta
from .. import manifest as manifests
from ..crypto import Identities
from ..errors import IntegrityError, UsageError
from ..manifest import LiveCluster
from ..model import rfc3339
from ..storage import SnapshotStore
from ..verify import check_delta_stored, open_delta, read_delta_manifest

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Timeline:
    chains: tuple[chain.Chain, ...]
    newest: chain.Plan | None

    def to_dict(self) -> dict[str, Any]:
        newest = None
        if self.newest is not None:
            p = self.newest
            reached = next((c for c in self.chains if c.base.id == p.base.id), None)
            when = (
                reached.reach.tip_time if reached and reached.reach.tip == p.target and reached.reach.tip_time else None
            )
            newest = {
                "revision": p.target,
                "time": rfc3339(when or p.base.created),
                "snapshot": p.base.id,
                "cluster_id": p.base.cluster_id,
                "deltas": len(p.deltas),
            }
        return {"chains": [c.to_dict() for c in self.chains], "newest": newest}


def timeline(store: SnapshotStore) -> Timeline:
    """Every chain, newest first, and the newest restorable point of the newest chain's cluster.
    Reads only listings: works while etcd is down."""
    listing = manifests.list_snapshots(store)
    refs = delta.list_deltas(store).refs
    chain_list = chain.chains(listing.manifests, refs)
    newest = None
    if chain_list:
        newest = chain.plan_latest(listing.manifests, refs, chain_list[0].base.cluster_id)
    return Timeline(tuple(chain_list), newest)


@dataclass(frozen=True, slots=True)
class ChainProof:
    chain: chain.Chain
    revisions: int  # revisions read (overlaps counted once)
    events: int | None  # None: some deltas are encrypted and this host has no identity to read them
    note: str | None = None

    @property
    def ok(self) -> bool:
        return not self.chain.gaps

    def to_dict(self) -> dict[str, Any]:
        c = self.chain
        return {
            **c.to_dict(),
            "ok": self.ok,
            "revisions": self.revisions,
            "events": self.events,
            "note": self.note,
        }


def verify_chain(
    store: SnapshotStore,
    ref: str,
    *,
    live_cluster: LiveCluster = None,
    identities: Identities | None = None,
    work_dir: str | None = None,
) -> ChainProof:
    """Download every delta of the chain of full snapshot `ref` and check its hash, its records
    and revision continuity. IntegrityError for a damaged delta; a chain with gaps is reported
    (`ok` false) for the caller to fail on. Without `identities` (a write-only host), an encrypted
    delta is proven as stored (size, SHA-256) and its records are left unread, as a note says."""
    listing = manifests.list_snapshots(store)
    base = manifests.read(store, ref) if ref != "latest" else listing.latest(store.description, live_cluster)
    if not base.verified:
        raise UsageError(f"snapshot {base.id} failed verification: it is no chain's base")
    refs = delta.list_deltas(store, base.cluster_id, after=base.revision).refs
    mine = next(c for c in chain.chains(listing.manifests, refs, base.cluster_id) if c.base.id == base.id)
    seen: set[int] = set()
    events = 0  # in the chain's own range, as `to_revision` is (a delta may run past the next base)
    unread = 0
    for d in sorted(mine.deltas, key=lambda d: (d.first_revision, d.last_revision)):
        m = read_delta_manifest(store, d)
        if identities is None and m.encryption is not None:
            check_delta_stored(store, m, work_dir)
            seen.update(range(m.first_revision, m.last_revision + 1))
            unread += 1
            continue
        stored = open_delta(store, m, work_dir, identities=identities)
        try:
            _, records = stored.revisions()
            for r in records:
                if r.revision not in seen:
                    seen.add(r.revision)
                    if r.revision <= mine.to_revision:
                        events += len(r.events)
        finally:
            stored.discard()
    if len(mine.deltas) and not seen:
        raise IntegrityError(f"chain of {base.id}: its deltas hold no revision")
    log.info("chain verified", snapshot=base.id, deltas=len(mine.deltas), revisions=len(seen), gaps=len(mine.gaps))
    if unread:
        note = (
            f"{unread} encrypted deltas checked as stored (size and SHA-256 match their manifests); their records "
            "were not read: that needs encryption.identity_file"
        )
        return ChainProof(mine, len(seen), None, note)
    return ChainProof(mine, len(seen), events)
