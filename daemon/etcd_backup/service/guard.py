"""The one rule every restore obeys before it touches a data dir: never one that is not empty
without --force, and never one in use by a running etcd or belonging to a member that still
answers, --force or not (moving a live member's data dir aside would let it keep writing into
the renamed copy and come back from the snapshot at its next restart). And what a rebuild must
say when the cluster it rebuilds still runs.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from .. import datadir
from ..config import Config
from ..errors import UnsafeError
from ..etcdclient import hexid
from ..model import Manifest
from ..survey import survey


def refuse_unsafe(cfg: Config, paths: Iterable[Path], force: bool) -> None:
    """Refuse (UnsafeError, nothing touched) a data dir that is not empty without --force, or that
    a running etcd uses, or that belongs to a member still answering, --force or not."""
    occupied = [p for p in paths if datadir.state(p) is datadir.DirState.OCCUPIED]
    for path in occupied:
        nearby = datadir.live_nearby(path)
        if nearby is None:
            continue
        live, holder = nearby
        if live == path.resolve():
            where = f"data dir {path} is in use by a running etcd ({holder})"
        elif live.is_relative_to(path.resolve()):
            where = f"{path} holds {live}, the data dir in use by a running etcd ({holder})"
        else:
            where = f"{path} lies inside {live}, the data dir in use by a running etcd ({holder})"
        raise UnsafeError(f"{where}: stop that member first (or check --data-dir); nothing was touched")
    owners = {path: datadir.identity(path) for path in occupied}
    if any(owners.values()):
        answering = {hexid(p.status.member_id): p.endpoint for p in survey(cfg.etcd).answered() if p.status}
        for path in occupied:
            owner = owners[path]
            if owner is not None and owner.member_id in answering:
                raise UnsafeError(
                    f"data dir {path} belongs to member {owner.member_id}, which still answers at "
                    f"{answering[owner.member_id]}: stop it first; nothing was touched"
                )
    for path in occupied:
        if not force:
            what = "is not empty" if path.is_dir() else "is a file, not a directory"
            raise UnsafeError(
                f"data dir {path} {what}: refusing to restore over it; choose an empty directory, "
                "or pass --force to move it aside (it is never deleted)"
            )


def still_running(cfg: Config, manifest: Manifest, revision: int) -> str | None:
    """A notice when members of the cluster being rebuilt still answer (a rebuild restoring
    `revision` of `manifest`'s cluster): they must all be stopped before the rebuilt ones start,
    what they hold past `revision` is not restored, and with quorum intact a lost member is
    replaced instead. None when nothing answers (the outage the rebuild is for).

    Never a refusal: going back in time on purpose (a deleted namespace, with --to-time) means
    rebuilding a cluster that runs."""
    hints = [u for m in manifest.members for u in m.client_urls]
    found = survey(cfg.etcd, hints=hints, cluster_id=manifest.cluster_id)
    answering = found.by_member()
    if not answering:
        return None
    names = {m.id: m.name for m in found.members or []}
    who = ", ".join(sorted(names.get(i) or hexid(i) for i in answering))
    statuses = [p.status for p in answering.values() if p.status is not None]
    same = [st for st in statuses if hexid(st.cluster_id) == manifest.cluster_id]
    cid = found.cluster_id() or manifest.cluster_id
    quorum = found.majority_reachable()
    text = (
        f"cluster {cid} still runs ({who} answer{'s' if len(answering) == 1 else ''}, "
        f"{'with' if quorum else 'without'} quorum): stop every member of it before starting the rebuilt ones"
    )
    newest = max((st.revision for st in same), default=0)
    if newest > revision:
        lost = newest - revision
        between = "the revision between is" if lost == 1 else f"the {lost} revisions between are"
        text += f"; it is at revision {newest}, the rebuild brings back revision {revision}: {between} not restored"
    if quorum and len(found.members or []) > 1:
        text += (
            "; with quorum intact, a lost member is replaced (`restore replace-member`, which `etcd-backup doctor` "
            "prints) and keeps every write"
        )
    return text
