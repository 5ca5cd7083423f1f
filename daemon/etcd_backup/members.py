"""Members as an operator names them on the command line: checked names, peer URLs, data dirs.

Pure: restores, the runbook doctor prints and the pre-change rollback all build on these, so a
command that doctor prints is accepted by the command it names.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from .errors import UsageError

NAME_PLACEHOLDER = "{name}"


def norm_url(url: str) -> str:
    return url.strip().rstrip("/")


@dataclass(frozen=True, slots=True)
class MemberSpec:
    name: str
    peer_url: str


def check_name(name: str, flag: str = "--name") -> str:
    if not name or any(c in name for c in "=,{}<> \t") or name.startswith("-"):
        raise UsageError(f"{flag}: {name!r} is not a member name (letters, digits, '-', '_', '.')")
    return name


def check_peer_url(url: str, flag: str = "--peer-url") -> str:
    parsed = urlparse(url)
    try:
        port = parsed.port
    except ValueError:
        port = None
    bad_path = parsed.path not in {"", "/"}
    if parsed.scheme not in {"http", "https"} or not parsed.hostname or port is None or bad_path:
        raise UsageError(f"{flag}: {url!r} is not a peer URL like http://10.0.0.1:2380")
    return url.rstrip("/")


def parse_member(text: str) -> MemberSpec:
    name, sep, url = text.partition("=")
    if not sep:
        raise UsageError(f"--member: {text!r} is not NAME=PEER_URL")
    return MemberSpec(check_name(name.strip(), "--member"), check_peer_url(url.strip(), "--member"))


def check_members(members: list[MemberSpec]) -> None:
    if not members:
        raise UsageError("restore cluster needs --member NAME=PEER_URL once per member")
    for attr in ("name", "peer_url"):
        values = [getattr(m, attr) for m in members]
        dupes = sorted({v for v in values if values.count(v) > 1})
        if dupes:
            raise UsageError(f"--member: {attr.replace('_', ' ')} {dupes[0]} given twice")


def initial_cluster(members: Iterable[MemberSpec]) -> str:
    return ",".join(f"{m.name}={m.peer_url}" for m in members)


TOKEN_PREFIX = "etcd-restore-"


def cluster_token(snapshot_id: str) -> str:
    """The same on every host that restores this snapshot, so separate `--only` runs agree."""
    return f"{TOKEN_PREFIX}{snapshot_id}"


def member_flags(
    *,
    name: str,
    data_dir: str | Path,
    peer_url: str,
    initial_cluster: str,
    state: str = "new",
    token: str | None = "etcd-cluster",
) -> list[str]:
    """The flags that define a member: what restores and doctor print and what scratch members
    start with. A member joining an existing cluster takes no token (etcd ignores it then)."""
    flags = [
        f"--name={name}",
        f"--data-dir={data_dir}",
        f"--listen-peer-urls={peer_url}",
        f"--initial-advertise-peer-urls={peer_url}",
        f"--initial-cluster={initial_cluster}",
    ]
    if token is not None:
        flags.append(f"--initial-cluster-token={token}")
    return [*flags, f"--initial-cluster-state={state}"]


def data_dir_of(template: str, name: str) -> str:
    """The data dir of member `name` on its host: `{name}` in the template replaced."""
    return template.replace(NAME_PLACEHOLDER, name)


def plan_targets(members: list[MemberSpec], only: Iterable[str], data_dir: str) -> list[tuple[MemberSpec, Path]]:
    """Which members to rebuild on this host, and where."""
    names = [m.name for m in members]
    only = list(dict.fromkeys(only))
    for name in only:
        if name not in names:
            raise UsageError(f"--only {name}: not among the --member names ({', '.join(names)})")
    rebuild = [m for m in members if not only or m.name in only]
    if len(rebuild) > 1 and NAME_PLACEHOLDER not in data_dir:
        raise UsageError(
            f"--data-dir {data_dir}: with {len(rebuild)} members to rebuild it must contain "
            "{name} (e.g. /var/lib/etcd-{name}), or pass --only NAME"
        )
    targets = [(m, Path(os.path.expanduser(data_dir_of(data_dir, m.name))).absolute()) for m in rebuild]
    paths = [p for _, p in targets]
    if len(set(paths)) != len(paths):
        raise UsageError("--data-dir gives two members the same directory")
    return targets
