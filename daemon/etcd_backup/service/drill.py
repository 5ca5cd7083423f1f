"""Restore drill: prove a stored snapshot restores by actually restoring it and serving it.

The snapshot is restored with etcd's own tool into a scratch dir, a throwaway member is started
on free loopback ports, and it must serve the manifest's revision and key count.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import structlog

from ..config import Config, EtcdConfig
from ..errors import EtcdBackupError
from ..etcdclient import Member
from ..etcdproc import LOOPBACK, find_binary, free_port, start_member, wait_healthy
from ..etcdtools import find_restore_tool, restore_data_dir
from ..model import Check, rfc3339, utcnow
from ..verify import Verified

log = structlog.get_logger(__name__)


def drill_verified(cfg: Config, verified: Verified, timeout: float = 120.0) -> Check:
    """Restore `verified` (downloaded and checked already) into a scratch member and query it.

    A snapshot that does not restore gives a failed Check (recorded in the manifest), not an
    exception; a missing etcd binary raises ToolError since then no drill could run at all.
    """
    started = time.monotonic()
    manifest = verified.manifest
    tool = find_restore_tool(cfg.tools.etcdutl or None)
    etcd = find_binary("etcd", cfg.tools.etcd or None)
    work = Path(tempfile.mkdtemp(prefix=f"etcd-backup-drill-{manifest.id}-", dir=cfg.storage.spool_dir))
    detail: dict[str, object] = {"tool": tool.describe()}
    client_url = f"http://{LOOPBACK}:{free_port()}"
    peer_url = f"http://{LOOPBACK}:{free_port()}"
    proc = None
    try:
        data_dir = work / "data"
        restore_data_dir(
            tool,
            verified.path,
            data_dir,
            name="drill",
            peer_url=peer_url,
            initial_cluster=f"drill={peer_url}",
            token=f"drill-{manifest.id}",
        )
        proc = start_member(
            etcd,
            name="drill",
            data_dir=data_dir,
            client_url=client_url,
            peer_url=peer_url,
            token=f"drill-{manifest.id}",
            log_path=work / "etcd.log",
        )
        wait_healthy(client_url, timeout, proc)
        with Member(EtcdConfig(endpoints=[client_url], dial_timeout=10.0), client_url) as member:
            revision = member.status().revision
            keys = member.count_keys()
        detail.update({"revision": revision, "keys": keys})
        problems = []
        # An empty keyspace has no revision in the db file (0), but a member serves revision 1.
        if revision != max(manifest.revision, 1):
            problems.append(f"serves revision {revision}, manifest says {manifest.revision}")
        if keys != manifest.keys:
            problems.append(f"serves {keys} keys, manifest says {manifest.keys}")
        detail["seconds"] = round(time.monotonic() - started, 3)
        if problems:
            raise _DrillMismatch("restored member " + "; ".join(problems))
        log.info("restore drill passed", snapshot=manifest.id, revision=revision, keys=keys, seconds=detail["seconds"])
        return Check(True, rfc3339(utcnow()), detail)
    except EtcdBackupError as exc:
        detail["seconds"] = round(time.monotonic() - started, 3)
        log.warning("restore drill failed", snapshot=manifest.id, error=str(exc))
        return Check(False, rfc3339(utcnow()), detail, error=str(exc))
    finally:
        if proc is not None:
            proc.stop()
        shutil.rmtree(work, ignore_errors=True)


class _DrillMismatch(EtcdBackupError):
    exit_code = 3
