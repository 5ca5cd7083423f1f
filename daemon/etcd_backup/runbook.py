"""The commands an operator runs in an outage, exactly as `doctor`, the restores and `pre-change`
print them. Pure: every command is built here and only here, from what the tool knows (member
names, peer and client URLs, the data dir setting, the snapshot id); what nobody can know stays
a shell-safe placeholder word (NEW_PEER_URL), never `<...>`.

A runbook is a list of steps, each naming the member whose host runs it; run in order, after
stopping the members it names, they bring the cluster back.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from .config import EtcdConfig
from .members import cluster_token, data_dir_of, member_flags

SNAPSHOT_PLACEHOLDER = "SNAPSHOT_ID"
NAME_PLACEHOLDER = "NAME"
PEER_PLACEHOLDER = "PEER_URL"
CLIENT_PLACEHOLDER = "CLIENT_URL"
AFTER_RESTORE = "after-restore"
# Server TLS files are the etcd host's own; the tool cannot know them.
_CLIENT_TLS = ("--cert-file=SERVER_CERT", "--key-file=SERVER_KEY", "--trusted-ca-file=CA_FILE", "--client-cert-auth")
_PEER_TLS = (
    "--peer-cert-file=PEER_CERT",
    "--peer-key-file=PEER_KEY",
    "--peer-trusted-ca-file=CA_FILE",
    "--peer-client-cert-auth",
)


@dataclass(frozen=True, slots=True)
class Host:
    """A member as the runbook needs it: its name, peer URL and client URLs."""

    name: str
    peer_url: str
    client_urls: tuple[str, ...] = ()


class StepKind(StrEnum):
    RESTORE = "restore"
    REPLACE = "replace-member"
    START = "start"  # runs etcd in the foreground: start it as a service or in the background
    REMOVE = "remove"
    PROMOTE = "promote"
    COMPACT = "compact"
    DEFRAG = "defrag"
    DISARM = "disarm"
    CHECK = "check"
    SNAPSHOT = "snapshot"


@dataclass(frozen=True, slots=True)
class Step:
    command: str
    kind: StepKind
    host: str | None = None  # the member whose host runs it; None: any host with access

    def to_dict(self) -> dict[str, Any]:
        return {"command": self.command, "kind": self.kind.value, "host": self.host}


@dataclass(frozen=True, slots=True)
class Runbook:
    command: str  # the recommendation: the next thing to run ("" when nothing needs doing)
    explanation: str
    steps: tuple[Step, ...] = ()
    stop_first: tuple[str, ...] = ()  # members to stop before the steps


@dataclass(frozen=True, slots=True)
class Context:
    """What every printed command needs besides the members."""

    etcd: EtcdConfig
    data_dir: str  # restore.data_dir: where a member's data dir lives on its host ({name} allowed)
    config_path: str | None = None  # repeated in printed etcd-backup commands
    point: tuple[str, ...] = ()  # restore options naming the point, e.g. ("--to-latest",)
    point_revision: int | None = None  # the revision that point is (the cluster token depends on it)

    def etcd_backup(self, *args: str) -> str:
        config = ["--config", self.config_path] if self.config_path else []
        return shlex.join(["etcd-backup", *config, *args])

    def data_dir_for(self, name: str) -> str:
        return data_dir_of(self.data_dir, name)

    def etcdctl(self, endpoints: Sequence[str], *args: str) -> str:
        """An etcdctl command line for these endpoints with the configured TLS files (never a password)."""
        cmd = ["etcdctl", f"--endpoints={','.join(endpoints or [CLIENT_PLACEHOLDER])}"]
        if self.etcd.cacert:
            cmd.append(f"--cacert={self.etcd.cacert}")
        if self.etcd.cert and self.etcd.key:
            cmd += [f"--cert={self.etcd.cert}", f"--key={self.etcd.key}"]
        if self.etcd.username:
            cmd.append(f"--user={self.etcd.username}")
        return shlex.join([*cmd, *args])


def restore_cluster_command(
    ctx: Context,
    snapshot: str,
    hosts: Sequence[Host],
    *,
    only: str | None = None,
    token: str | None = None,
    force: bool = False,
    data_dir: str | None = None,
) -> str:
    args = ["restore", "cluster", "--snapshot", snapshot, *ctx.point]
    for h in hosts:
        args += ["--member", f"{h.name}={h.peer_url}"]
    args += ["--data-dir", data_dir or ctx.data_dir]
    if token:
        args += ["--cluster-token", token]
    if only:
        args += ["--only", only]
    if force:
        args.append("--force")
    return ctx.etcd_backup(*args)


def restore_single_command(ctx: Context, snapshot: str, host: Host, *, force: bool = False) -> str:
    args = ["restore", "single", "--snapshot", snapshot, *ctx.point, "--name", host.name]
    args += ["--peer-url", host.peer_url, "--data-dir", ctx.data_dir_for(host.name)]
    return ctx.etcd_backup(*args, *(["--force"] if force else []))


def replace_member_command(ctx: Context, failed: str, new: Host) -> str:
    return ctx.etcd_backup(
        "restore",
        "replace-member",
        "--failed",
        failed,
        "--name",
        new.name,
        "--peer-url",
        new.peer_url,
        "--data-dir",
        ctx.data_dir_for(new.name),
    )


def start_command(flags: Sequence[str], client_urls: Sequence[str]) -> str:
    """One complete command that starts a member: its defining flags, its client URLs, and
    placeholders for the TLS files when its URLs are https."""
    urls = ",".join(client_urls) or CLIENT_PLACEHOLDER
    cmd = ["etcd", *flags, f"--listen-client-urls={urls}", f"--advertise-client-urls={urls}"]
    if any(u.startswith("https://") for u in client_urls):
        cmd += _CLIENT_TLS
    if any(f.startswith("--listen-peer-urls=https://") for f in flags):
        cmd += _PEER_TLS
    return shlex.join(cmd)


def new_member_flags(host: Host, data_dir: str, initial: str, token: str) -> list[str]:
    return member_flags(
        name=host.name, data_dir=data_dir, peer_url=host.peer_url, initial_cluster=initial, state="new", token=token
    )


def initial_cluster_of(hosts: Sequence[Host]) -> str:
    return ",".join(f"{h.name}={h.peer_url}" for h in hosts)


def _client_urls(hosts: Sequence[Host]) -> list[str]:
    return [u for h in hosts for u in h.client_urls[:1]]


def _after_checks(ctx: Context, hosts: Sequence[Host], *, cluster: bool) -> list[Step]:
    health = ["endpoint", "health", *(["--cluster"] if cluster else [])]
    return [
        Step(ctx.etcdctl(_client_urls(hosts), *health), StepKind.CHECK),
        Step(ctx.etcd_backup("snapshot", "--reason", AFTER_RESTORE), StepKind.SNAPSHOT),
    ]


def rebuild(ctx: Context, snapshot: str, hosts: Sequence[Host], *, force: bool, single: bool = True) -> list[Step]:
    """Rebuild every member from one snapshot as a new cluster: per host its restore, then per
    host its start, then the checks. One member alone is `restore single` unless not `single`."""
    token = cluster_token(snapshot if ctx.point_revision is None else f"{snapshot}-r{ctx.point_revision}")
    initial = initial_cluster_of(hosts)
    steps: list[Step] = []
    for h in hosts:
        if len(hosts) == 1 and single:
            cmd = restore_single_command(ctx, snapshot, h, force=force)
        else:
            cmd = restore_cluster_command(ctx, snapshot, hosts, only=h.name, force=force)
        steps.append(Step(cmd, StepKind.RESTORE, h.name))
    for h in hosts:
        flags = new_member_flags(h, ctx.data_dir_for(h.name), initial, token)
        steps.append(Step(start_command(flags, h.client_urls), StepKind.START, h.name))
    return steps + _after_checks(ctx, hosts, cluster=len(hosts) > 1)


def replace(ctx: Context, failed: str, new: Host, members_after: Sequence[Host]) -> list[Step]:
    """Remove the failed member and add `new` (replace-member), then start it to join."""
    return [Step(replace_member_command(ctx, failed, new), StepKind.REPLACE, new.name), *join(ctx, new, members_after)]


def join(ctx: Context, new: Host, members_after: Sequence[Host]) -> list[Step]:
    """Start `new`, already in the member list, so that it joins; then check the whole cluster."""
    flags = member_flags(
        name=new.name,
        data_dir=ctx.data_dir_for(new.name),
        peer_url=new.peer_url,
        initial_cluster=initial_cluster_of(members_after),
        state="existing",
        token=None,
    )
    return [
        Step(start_command(flags, new.client_urls), StepKind.START, new.name),
        Step(ctx.etcdctl(_client_urls(members_after), "endpoint", "health", "--cluster"), StepKind.CHECK),
    ]
