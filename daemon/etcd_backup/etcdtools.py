"""Restoring a snapshot file into a data dir with etcd's own tools (etcdutl 3.5+, etcdctl 3.4).

The restore writes into a fresh sibling directory and renames it into place when the tool
succeeded, so a failed restore never leaves a half-built data dir at the target path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from . import process
from .errors import ToolError
from .etcdproc import binary_version, find_binary

BUMP_REVISION_SINCE = "3.5.10"  # etcdutl gained --bump-revision and --mark-compacted then


@dataclass(frozen=True, slots=True)
class RestoreTool:
    path: str
    kind: str  # "etcdutl" or "etcdctl"
    version: tuple[int, int, int]
    can_bump_revision: bool  # --bump-revision/--mark-compacted (etcdutl 3.5.10+), read from its --help

    def describe(self) -> str:
        return f"{self.kind} {'.'.join(map(str, self.version))} ({self.path})"


def tool_kind(path: str) -> str:
    """Which restore tool a path names: "etcdctl" (3.4, whose etcdctl restores) or "etcdutl"."""
    return "etcdctl" if "etcdctl" in Path(path).name else "etcdutl"


@lru_cache(maxsize=8)
def _inspect(path: str) -> RestoreTool:
    version = binary_version(path)
    kind = tool_kind(path)
    help_text = subprocess.run(
        [path, "snapshot", "restore", "--help"],
        capture_output=True,
        text=True,
        timeout=20,
        env={**os.environ, "ETCDCTL_API": "3"},
    ).stdout
    return RestoreTool(path, kind, version, "--bump-revision" in help_text)


def restore_tool_kind(configured: str | None = None) -> str:
    """The kind of tool `find_restore_tool` would take, without running it (for a printed hint);
    "etcdutl" when there is none."""
    if configured:
        return tool_kind(configured)
    for name in ("etcdutl", "etcdctl"):
        try:
            return tool_kind(find_binary(name))
        except ToolError:
            continue
    return "etcdutl"


def find_restore_tool(configured: str | None = None) -> RestoreTool:
    """tools.etcdutl if set (etcdutl or a 3.4 etcdctl), else etcdutl, else etcdctl from PATH."""
    if configured:
        return _inspect(find_binary(configured, configured))
    try:
        return _inspect(find_binary("etcdutl"))
    except ToolError:
        try:
            return _inspect(find_binary("etcdctl"))
        except ToolError:
            raise ToolError("neither etcdutl nor etcdctl found: install etcd's tools or set tools.etcdutl") from None


def restore_data_dir(
    tool: RestoreTool,
    snapshot: Path,
    data_dir: Path,
    *,
    name: str,
    peer_url: str,
    initial_cluster: str,
    token: str,
    bump_revision: int = 0,
    mark_compacted: bool = False,
) -> None:
    """Run the snapshot restore into `data_dir`, which must not exist yet."""
    if data_dir.exists():
        raise ToolError(f"{data_dir} exists; refusing to restore over it")
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{data_dir.name}.restoring-", dir=data_dir.parent))
    target = staging / "data"
    cmd = [
        tool.path,
        "snapshot",
        "restore",
        str(snapshot),
        f"--data-dir={target}",
        f"--name={name}",
        f"--initial-cluster={initial_cluster}",
        f"--initial-cluster-token={token}",
        f"--initial-advertise-peer-urls={peer_url}",
    ]
    if bump_revision or mark_compacted:
        if not tool.can_bump_revision:
            raise ToolError(
                f"{tool.describe()} has no --bump-revision/--mark-compacted (etcdutl {BUMP_REVISION_SINCE}+)"
            )
        if bump_revision:
            cmd.append(f"--bump-revision={bump_revision}")
        if mark_compacted:
            cmd.append("--mark-compacted")
    try:
        proc = process.run(cmd, timeout=3600, env={**os.environ, "ETCDCTL_API": "3"})
        if proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip().splitlines()
            raise ToolError(f"{tool.kind} snapshot restore failed: {detail[-1] if detail else proc.returncode}")
        os.chmod(target, 0o700)
        os.rename(target, data_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
