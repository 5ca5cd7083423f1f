"""`doctor`: diagnose the cluster, name the failure scenario and the runbook to follow."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ..errors import Unhealthy, UsageError
from ..units import counted, parse_size
from .common import Context, Subparsers, add_output, emit_json, human_size, table

if TYPE_CHECKING:
    from ..assessment import MemberHealth
    from ..runbook import Step
    from ..service.doctor import Diagnosis

EPILOG = """exit codes:
  0    the cluster is healthy
  1    it is not (the scenario says how), or etcd cannot be asked at all
  2    usage or configuration error

In an outage: stop the members listed under "stop first", then run the steps in order, each on
the host it names (`etcd ...` lines start a member: run them as your service or in the background).
"""


def quota_arg(text: str) -> int:
    try:
        size = parse_size(text)
    except ValueError as exc:
        raise UsageError(f"--quota-bytes: {exc}") from None
    if size <= 0:
        raise UsageError("--quota-bytes: must be greater than 0")
    return size


def add_quota(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--quota-bytes",
        type=quota_arg,
        default=None,
        metavar="SIZE",
        help="the members' --quota-backend-bytes (default: etcd's 2GiB); accepts 8GiB etc.",
    )


def add_parser(sub: Subparsers) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "doctor",
        help="diagnose the cluster: members, quorum, leader, alarms, newest backup, the runbook",
        description="Probe every endpoint and member, name the failure scenario (healthy, member-down, "
        "unstarted-member, quorum-lost, single-member-down), and print the exact commands to run, "
        "filled in with the real member names, URLs, data dirs and snapshot id.",
    )
    p.epilog = EPILOG
    add_quota(p)
    add_output(p)
    return p


def quota(args: argparse.Namespace) -> int:
    from ..assessment import DEFAULT_QUOTA_BYTES

    return int(args.quota_bytes or DEFAULT_QUOTA_BYTES)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from ..service.doctor import diagnose

    diagnosis = diagnose(ctx.config, lambda: ctx.store, quota_bytes=quota(args), config_path=ctx.config_path)
    if ctx.json:
        emit_json(diagnosis.to_dict())
    else:
        print(render(diagnosis))
    if not diagnosis.healthy:
        raise Unhealthy(f"the cluster is not healthy ({diagnosis.scenario.value}): follow doctor's steps")
    return 0


_STATE_LABEL = {"ok": "ok", "no-leader": "NO LEADER", "down": "DOWN", "unstarted": "UNSTARTED"}


def _row(d: Diagnosis, m: MemberHealth) -> list[str]:
    db = f"{human_size(m.db_size)} ({d.quota_percent(m):.0f}%)" if m.db_size is not None else "-"
    return [
        m.label,
        m.id,
        _STATE_LABEL[m.state.value] + (" learner" if m.learner else ""),
        "yes" if m.reachable else "NO",
        "yes" if m.started else "NO",
        "*" if m.is_leader else "",
        m.version or "-",
        db,
        f"{m.raft_term}/{m.raft_index}" if m.raft_term is not None else "-",
        ",".join(m.peer_urls) or "-",
        ",".join(m.client_urls) or "-",
    ]


def render_steps(steps: tuple[Step, ...]) -> list[str]:
    """Steps in order, grouped under the host that runs them."""
    lines: list[str] = []
    current: object = object()
    for step in steps:
        if step.host != current:
            current = step.host
            lines.append(f"  on {step.host}'s host:" if step.host else "  from any host:")
        lines.append(f"    {step.command}")
    return lines


def render(d: Diagnosis) -> str:
    counts = f"{d.reachable_voting}/{d.voting} voting members answer" if d.members else "no member answers"
    quorum = f"{'yes' if d.quorum else 'NO'} ({counts})"
    lines = [
        f"scenario: {d.scenario.value}",
        f"cluster:  {d.cluster_id or 'unknown'}   quorum: {quorum}   leader: {d.leader.label if d.leader else 'none'}",
        "",
    ]
    if d.members:
        headers = [
            "NAME",
            "ID",
            "STATE",
            "REACHABLE",
            "STARTED",
            "LEADER",
            "VERSION",
            "DB (OF QUOTA)",
            "TERM/INDEX",
            "PEER URLS",
            "CLIENT URLS",
        ]
        lines += [table([_row(d, m) for m in d.members], headers), ""]
    else:
        lines += ["no endpoint answered; member list unknown", ""]
    alarms = "unknown" if d.alarms is None else ", ".join(f"{a['alarm']} ({a['member']})" for a in d.alarms)
    lines.append(f"alarms:   {alarms or 'none'}")
    lines.append(f"backup:   {_backup(d)}")
    if (
        d.newest_point is not None
        and d.newest_backup is not None
        and d.newest_point.revision > d.newest_backup.revision
    ):
        pt = d.newest_point
        lines.append(
            f"point:    revision {pt.revision} at {pt.time} ({_age(pt.age_seconds)} old): snapshot plus "
            f"{counted(pt.deltas, 'delta')}, restored with --to-latest"
        )
    if d.problems:
        lines += ["", "problems:", *(f"  - {p}" for p in d.problems)]
    lines += ["", f"next:     {d.recommendation or 'nothing to do'}", f"          {d.explanation}"]
    if d.steps:
        lines += ["", "steps:"]
        if d.stop_first:
            lines.append(
                f"  first stop etcd on {', '.join(d.stop_first)} (systemctl stop etcd, or move its static pod aside)"
            )
        lines += render_steps(d.steps)
    return "\n".join(lines)


def _backup(d: Diagnosis) -> str:
    b = d.newest_backup
    if b is None:
        if d.storage_error:
            return f"unknown ({d.storage_error})"
        return "no verified snapshot of this cluster in storage"
    gap = f", {counted(b.revision_gap, 'revision')} behind live" if b.revision_gap is not None else ""
    return f"{b.id} ({_age(b.age_seconds)} old, revision {b.revision}{gap}{', pinned' if b.pinned else ''})"


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"
