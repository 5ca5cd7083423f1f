"""A snapshot file restored with etcd's own tool into a throwaway member on free loopback ports,
for as long as a block runs: what drills query and what point materialisation replays into.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .. import scratch
from ..config import Config, EtcdConfig
from ..errors import EtcdErrorKind, EtcdUnavailable
from ..etcdclient import Member
from ..etcdproc import LOOPBACK, EtcdProcess, find_binary, free_port, start_member, wait_healthy
from ..etcdtools import RestoreTool, find_restore_tool, restore_data_dir


@dataclass
class ScratchEtcd:
    process: EtcdProcess
    member: Member
    tool: RestoreTool
    workspace: Path


@lru_cache(maxsize=8)
def _flags(binary: str) -> str:
    """`etcd --help`: on stdout for 3.5, on stderr for some builds."""
    done = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=20)
    return done.stdout + done.stderr


def unsafe_fast(binary: str) -> list[str]:
    """Flags that make a scratch member fast where nothing must survive a crash: no fsync (etcd
    3.5+ has the flag; 3.4 has not and runs as it is)."""
    return ["--unsafe-no-fsync"] if "--unsafe-no-fsync" in _flags(binary) else []


@contextlib.contextmanager
def serving(
    cfg: Config,
    snapshot_file: Path,
    label: str,
    *,
    kind: scratch.Kind = scratch.Kind.DRILL,
    extra_args: Sequence[str] = (),
    timeout: float = 120.0,
) -> Iterator[ScratchEtcd]:
    tool = find_restore_tool(cfg.tools.etcdutl or None)
    etcd = etcd_binary(cfg, tool)
    workspace = scratch.create(cfg.storage.spool_dir, kind, label)
    client_url = f"http://{LOOPBACK}:{free_port()}"
    peer_url = f"http://{LOOPBACK}:{free_port()}"
    proc = None
    member = None
    try:
        data_dir = workspace.path / "data"
        token = f"scratch-{label}"
        restore_data_dir(
            tool,
            snapshot_file,
            data_dir,
            name="scratch",
            peer_url=peer_url,
            initial_cluster=f"scratch={peer_url}",
            token=token,
        )
        proc = start_member(
            etcd,
            name="scratch",
            data_dir=data_dir,
            client_url=client_url,
            peer_url=peer_url,
            token=token,
            extra_args=extra_args,
            log_path=workspace.path / "etcd.log",
        )
        wait_healthy(client_url, timeout, proc)
        member = _connect(cfg, client_url)
        yield ScratchEtcd(proc, member, tool, workspace.path)
    finally:
        if member is not None:
            member.close()
        if proc is not None:
            proc.stop()
        workspace.discard()


def _connect(cfg: Config, client_url: str) -> Member:
    """The snapshot carries etcd's auth state: with auth on, the scratch member wants the same
    user as the live cluster (who could take the snapshot, so is an admin there too); a snapshot
    from before auth was enabled has none, and is asked anonymously."""
    plain = EtcdConfig.model_validate({"endpoints": [client_url], "dial_timeout": "10s"})
    if not cfg.etcd.username:
        return Member(plain, client_url)
    try:
        return Member(
            plain.model_copy(update={"username": cfg.etcd.username, "password": cfg.etcd.password}), client_url
        )
    except EtcdUnavailable as exc:
        if exc.kind is not EtcdErrorKind.AUTH_OFF:
            raise
        return Member(plain, client_url)


def etcd_binary(cfg: Config, tool: RestoreTool | None = None) -> str:
    """tools.etcd; else the etcd beside a configured restore tool (a 3.4 etcdctl in /usr/bin
    has its 3.4 etcd there: a drill of a 3.4 snapshot is proven on a 3.4 server); else as found."""
    if not cfg.tools.etcd and cfg.tools.etcdutl and tool is not None:
        beside = Path(tool.path).parent / "etcd"
        if beside.is_file() and os.access(beside, os.X_OK):
            return str(beside)
    return find_binary("etcd", cfg.tools.etcd or None)
