"""`doctor`: diagnose the cluster, name the failure scenario and the exact next command."""

from __future__ import annotations

import argparse
from typing import Any

from ..config import parse_size
from ..errors import UsageError
from ..service.doctor import DEFAULT_QUOTA_BYTES, Diagnosis, MemberHealth, diagnose
from .common import Context, add_output, emit_json, human_size, table


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
        default=DEFAULT_QUOTA_BYTES,
        metavar="SIZE",
        help="the members' --quota-backend-bytes (default: etcd's 2GiB); accepts 8GiB etc.",
    )


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "doctor",
        help="diagnose the cluster: members, quorum, leader, alarms, newest backup, next command",
        description="Probe every endpoint and member, name the failure scenario (healthy, member-down, "
        "unstarted-member, quorum-lost, single-member-down) and the exact command to run next. "
        "Exit 0 when healthy, 1 otherwise.",
    )
    add_quota(p)
    add_output(p)
    return p


def run(args: argparse.Namespace, ctx: Context) -> int:
    diagnosis = diagnose(ctx.config, lambda: ctx.store, quota_bytes=args.quota_bytes)
    if ctx.json:
        emit_json(diagnosis.to_dict())
    else:
        print(render(diagnosis))
    return 0 if diagnosis.healthy else 1


def _state(m: MemberHealth) -> str:
    if not m.started:
        return "UNSTARTED"
    return "ok" if m.reachable else "DOWN"


def _row(d: Diagnosis, m: MemberHealth) -> list[str]:
    db = f"{human_size(m.db_size)} ({d.quota_percent(m):.0f}%)" if m.db_size is not None else "-"
    return [
        m.label,
        m.id,
        _state(m) + (" learner" if m.learner else ""),
        "*" if m.is_leader else "",
        m.version or "-",
        db,
        f"{m.raft_term}/{m.raft_index}" if m.raft_term is not None else "-",
        ",".join(m.peer_urls) or "-",
        ",".join(m.client_urls) or "-",
    ]


def render(d: Diagnosis) -> str:
    counts = f"{d.reachable_voting}/{d.voting} voting members answer" if d.members else "no member answers"
    quorum = f"{'yes' if d.quorum else 'NO'} ({counts})"
    lines = [
        f"scenario: {d.scenario}",
        f"cluster:  {d.cluster_id or 'unknown'}   quorum: {quorum}   leader: {d.leader.label if d.leader else 'none'}",
        "",
    ]
    if d.members:
        headers = [
            "NAME",
            "ID",
            "STATE",
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
    if d.problems:
        lines += ["", "problems:", *(f"  - {p}" for p in d.problems)]
    lines += ["", f"next:     {d.recommendation or 'nothing to do'}", f"          {d.explanation}"]
    if len(d.steps) > 1:
        lines += ["steps:", *(f"  {s}" for s in d.steps)]
    return "\n".join(lines)


def _backup(d: Diagnosis) -> str:
    b = d.newest_backup
    if b is None:
        return f"unknown ({d.storage_error})" if d.storage_error else "no verified snapshot in storage"
    gap = f", {b.revision_gap} revisions behind live" if b.revision_gap is not None else ""
    return f"{b.id} ({_age(b.age_seconds)} old, revision {b.revision}{gap}{', pinned' if b.pinned else ''})"


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"
