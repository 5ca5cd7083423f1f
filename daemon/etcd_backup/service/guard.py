"""The one rule every restore obeys before it touches a data dir: never one that is not empty
without --force, and never one in use by a running etcd or belonging to a member that still
answers, --force or not (moving a live member's data dir aside would let it keep writing into
the renamed copy and come back from the snapshot at its next restart).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from .. import datadir
from ..config import Config
from ..errors import UnsafeError
from ..etcdclient import hexid
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
