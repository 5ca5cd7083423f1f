"""What `doctor` tells the operator to do in each scenario: the next command, why, and the whole
runbook. Pure: it gets the assessment and the newest backup and returns text and steps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from .assessment import MemberHealth, Quorum, Scenario
from .members import norm_url
from .model import Manifest
from .runbook import (
    AFTER_RESTORE,
    NAME_PLACEHOLDER,
    PEER_PLACEHOLDER,
    SNAPSHOT_PLACEHOLDER,
    Context,
    Host,
    Runbook,
    Step,
    StepKind,
    join,
    rebuild,
    replace,
)
from .units import counted


def host_of(m: MemberHealth) -> Host:
    return Host(m.name or m.id, m.peer_url or PEER_PLACEHOLDER, m.client_urls)


def hosts_from_backup(backup: Manifest | None) -> list[Host]:
    """The voting members as the snapshot recorded them: names and URLs when nothing answers. One
    added but not started when it was taken (no name there) is left out, as the member list's
    unstarted members are: it holds no data, and a rebuild with it would count a member that
    may never run (`_unnamed_in` says so)."""
    if backup is None:
        return []
    return [
        Host(m.name, m.peer_urls[0], m.client_urls) for m in backup.members if m.name and m.peer_urls and not m.learner
    ]


def _unnamed_in(backup: Manifest | None) -> str:
    """What the operator must know when the snapshot recorded members that had not started."""
    unnamed = [m for m in backup.members if not m.name and m.peer_urls and not m.learner] if backup else []
    if not unnamed or backup is None:
        return ""
    who = ", ".join(f"{m.id} ({m.peer_urls[0]})" for m in unnamed)
    return (
        f" Snapshot {backup.id} recorded member {who} as added but not started: it is left out of the "
        "rebuild. If it has run since (a replacement, say), add it again once the rebuilt cluster is "
        "healthy: etcdctl member add NAME --peer-urls=URL, then start it with an empty data dir."
    )


def recommend(
    ctx: Context,
    scenario: Scenario,
    members: Sequence[MemberHealth],
    q: Quorum,
    *,
    backup: Manifest | None,
    other_clusters: bool,
    alarms: Sequence[dict[str, str]] | None,
    newest_point: int | None = None,
    storage_error: str | None = None,
    before_added: Manifest | None = None,
) -> Runbook:
    """`newest_point`: the newest revision deltas after `backup` reach (restores then go there);
    `storage_error`: why storage could not be read (then "no snapshot" only means "none seen");
    `before_added`: the newest snapshot taken before the unstarted members were added
    (`membership_before`), which tells a replacement from a grow; default `backup`."""
    snapshot = backup.id if backup else SNAPSHOT_PLACEHOLDER
    # An unstarted member without quorum is rolled back by a rebuild too (scenario 2).
    rebuilds = scenario in (Scenario.SINGLE_MEMBER_DOWN, Scenario.QUORUM_LOST) or (
        scenario is Scenario.UNSTARTED_MEMBER and not q.held
    )
    if rebuilds and backup is not None and newest_point is not None and newest_point > backup.revision:
        # Deltas reach past the snapshot: restore what they hold too.
        ctx = dataclasses.replace(ctx, point=("--to-latest",), point_revision=newest_point)
    if scenario is Scenario.SINGLE_MEMBER_DOWN:
        return _single_down(ctx, snapshot, members, backup)
    if scenario is Scenario.QUORUM_LOST:
        return _quorum_lost(ctx, snapshot, members, backup)
    if scenario is Scenario.UNSTARTED_MEMBER:
        return _unstarted(ctx, snapshot, members, q, backup=backup, before_added=before_added or backup)
    if scenario is Scenario.MEMBER_DOWN:
        return _member_down(ctx, members)
    if alarms:
        return _alarmed(ctx, members, alarms)
    learners = [m for m in members if m.learner and m.started]
    if learners:
        return _promote(ctx, members, learners)
    if backup is None:
        if storage_error:
            cmd = ctx.etcd_backup("snapshot")
            return Runbook(
                cmd,
                f"The cluster is healthy, but storage cannot be read ({storage_error}), so no backup of it "
                "could be checked: fix the storage access, then take a snapshot.",
                (Step(cmd, StepKind.SNAPSHOT),),
            )
        if other_clusters:
            cmd = ctx.etcd_backup("snapshot", "--reason", AFTER_RESTORE)
            return Runbook(
                cmd,
                "The cluster is healthy, but storage holds no verified snapshot of this cluster yet, only of "
                "other clusters (e.g. this one before a restore gave it a new cluster id): take one now.",
                (Step(cmd, StepKind.SNAPSHOT),),
            )
        cmd = ctx.etcd_backup("snapshot")
        return Runbook(
            cmd, "The cluster is healthy, but storage holds no verified snapshot.", (Step(cmd, StepKind.SNAPSHOT),)
        )
    return Runbook(
        "",
        "The cluster is healthy. Before a membership change run: " + ctx.etcd_backup("pre-change", "--reason", "TEXT"),
    )


def _alarmed(ctx: Context, members: Sequence[MemberHealth], alarms: Sequence[dict[str, str]]) -> Runbook:
    raised = sorted({a["alarm"] for a in alarms})
    corrupt = [a for a in alarms if a["alarm"] == "CORRUPT"]
    if corrupt:
        # Disarming would let a member with diverged data serve reads: it is replaced instead.
        after = [host_of(m) for m in members]
        steps: list[Step] = []
        for m in members:
            if any(a["member_id"] == m.id for a in corrupt):
                steps += replace(ctx, m.name or m.id, host_of(m), after)
        names = ", ".join(a["member"] or a["member_id"] for a in corrupt)
        return _runbook(
            steps,
            f"Alarm CORRUPT raised by {names}: its data differs from the rest of the cluster. Do not disarm it. "
            "Stop that member and replace it with a fresh one (its data dir is kept, moved aside), one member at "
            "a time; the others keep quorum.",
        )
    reachable = [u for m in members if m.reachable for u in m.client_urls[:1]]
    steps = []
    if "NOSPACE" in raised:
        # Disarming alone lets the next write raise it again: the space comes back only once the
        # history is compacted away and each member's file is defragmented. A backup first: the
        # compaction drops every older revision for good.
        steps.append(Step(ctx.etcd_backup("snapshot", "--reason", "before-compaction"), StepKind.SNAPSHOT))
        revision = max((m.revision for m in members if m.revision is not None), default=None)
        if revision is not None:
            steps.append(Step(ctx.etcdctl(reachable[:1], "compact", str(revision)), StepKind.COMPACT))
        steps.append(Step(ctx.etcdctl(reachable, "defrag"), StepKind.DEFRAG))
    disarm = Step(ctx.etcdctl(reachable, "alarm", "disarm"), StepKind.DISARM)
    steps.append(disarm)
    steps.append(Step(ctx.etcdctl(reachable, "endpoint", "status", "-w", "table"), StepKind.CHECK))
    text = f"Alarm raised ({', '.join(raised)})."
    if "NOSPACE" in raised:
        text += (
            " The database reached its quota and etcd refuses writes: take a snapshot, compact the history, "
            "defragment every member, then disarm. If the database is still near the quota afterwards (DB "
            "SIZE in the status), the live data itself needs more room: raise --quota-backend-bytes on every "
            "member."
        )
    return _runbook(steps, text)


def _runbook(steps: list[Step], explanation: str, stop: Sequence[str] = ()) -> Runbook:
    return Runbook(steps[0].command if steps else "", explanation, tuple(steps), tuple(stop))


def _single_down(ctx: Context, snapshot: str, members: Sequence[MemberHealth], backup: Manifest | None) -> Runbook:
    known = [host_of(m) for m in members if m.started] or hosts_from_backup(backup)[:1]
    host = known[0] if known else Host(NAME_PLACEHOLDER, PEER_PLACEHOLDER)
    if not host.client_urls and len(ctx.etcd.endpoints) == 1:
        host = Host(host.name, host.peer_url, tuple(ctx.etcd.endpoints))
    text = (
        "The only member does not answer. If etcd merely stopped and its data dir survives, start it again: "
        "nothing is lost, and the restore below refuses to touch that data dir. If the host or its data dir "
        "is lost, rebuild it from the newest verified snapshot (scenario 3), then start etcd as shown."
    )
    if not known:
        text += " No member answered and no snapshot recorded the member, so its name and peer URL are placeholders."
    # No --force: an intact data dir must not be moved aside by a copied command.
    return _runbook(rebuild(ctx, snapshot, [host], force=False), text)


def _quorum_lost(ctx: Context, snapshot: str, members: Sequence[MemberHealth], backup: Manifest | None) -> Runbook:
    voting = [m for m in members if m.started and not m.learner]
    hosts = [host_of(m) for m in voting] or hosts_from_backup(backup)
    if not hosts:
        hosts = [Host(f"{NAME_PLACEHOLDER}{i}", f"{PEER_PLACEHOLDER}{i}") for i in (1, 2, 3)]
    alive = [m.name for m in voting if m.reachable]
    text = (
        "Quorum is lost: a majority of the voting members does not answer"
        + (f" (still answering: {', '.join(alive)})" if alive else "")
        + ". First make sure it is not only this host's view: on a missing member's own host, `etcdctl "
        "endpoint status -w table` against that member shows whether it runs and has a leader; if it does, "
        "the cluster is up, only unreachable from here (a network partition, a firewall): rebuild nothing. "
        "If the missing members can be started again with their data dirs, do that first: quorum returns "
        "by itself and nothing is lost. If two or more are lost for good, rebuild every member from one "
        "snapshot as a new cluster (scenario 4): "
        + (f"stop etcd on {', '.join(alive)} first, then " if alive else "")
        + "run each step on the host it names (--force moves an old data dir aside, never deletes it), "
        "and start every member."
    )
    if not members and not backup:
        text += " No member answered, so the member names and peer URLs are placeholders."
    elif not voting:
        text += _unnamed_in(backup)
    return _runbook(rebuild(ctx, snapshot, hosts, force=True), _salvage(ctx, voting, backup) + text, alive)


def _salvage(ctx: Context, voting: Sequence[MemberHealth], backup: Manifest | None) -> str:
    """Without quorum nothing is written, so a member that still answers holds every write the
    cluster made: when it is ahead of what the steps restore, it is saved first, and doctor, run
    again, restores that snapshot (the newest of this cluster)."""
    held = [(m.revision, m.name) for m in voting if m.reachable and m.revision is not None]
    restores = ctx.point_revision if ctx.point_revision is not None else (backup.revision if backup else 0)
    if not held or max(held)[0] <= restores:
        return ""
    revision, name = max(held)
    what = (
        f"{counted(revision - restores, 'revision')} past what the steps below restore ({restores})"
        if backup
        else "and storage holds no snapshot of this cluster"
    )
    cmd = ctx.etcd_backup("snapshot", "--reason", "before-restore", "--from-survivor")
    return (
        f"Member {name} still holds revision {revision}, {what}: before stopping it, save its data with "
        f"`{cmd}`, then run `etcd-backup doctor` again: its steps then restore that snapshot. "
    )


def _member_down(ctx: Context, members: Sequence[MemberHealth]) -> Runbook:
    down = [m for m in members if m.started and not m.reachable]
    after = [host_of(m) for m in members]
    steps: list[Step] = []
    for m in down:
        steps += replace(ctx, m.name or m.id, host_of(m), after)
    names = ", ".join(m.label for m in down)
    learners = [m.label for m in down if m.learner]
    role = (
        f" {', '.join(learners)} is a learner: its replacement is added as a learner too (it does not vote), "
        "to be promoted (etcdctl member promote ID) once it has caught up."
        if learners
        else ""
    )
    return _runbook(
        steps,
        f"Quorum holds, but {names} does not answer. If it will come back with its data dir, restart it. If "
        "it is lost, replace it on its (new) host: remove it and add a fresh member with the same name and peer "
        "URL (or pass other ones), then start it with an empty data dir as shown. Replace one member at a time." + role,
    )


def membership_before(manifests: Sequence[Manifest], members: Sequence[MemberHealth]) -> Manifest | None:
    """The newest of `manifests` (newest first) taken before the unstarted members were added.
    A snapshot taken after the add (the daemon's member-change one, a manual one) records the new
    member unstarted and no longer the member it replaced, so it cannot tell a replacement."""
    added = {m.id for m in members if not m.started}
    return next((b for b in manifests if not added & {r.id for r in b.members}), None)


def _promote(ctx: Context, members: Sequence[MemberHealth], learners: Sequence[MemberHealth]) -> Runbook:
    endpoints = [u for m in members if m.reachable and not m.learner for u in m.client_urls[:1]]
    steps = [Step(ctx.etcdctl(endpoints, "member", "promote", m.id), StepKind.PROMOTE) for m in learners]
    steps.append(Step(ctx.etcdctl(endpoints, "member", "list", "-w", "table"), StepKind.CHECK))
    names = ", ".join(m.label for m in learners)
    return _runbook(
        steps,
        f"The cluster is healthy and {names} runs as a learner: a membership change is half done. Promote "
        "it to a voting member once it has caught up with the leader (etcd refuses while it lags: try "
        "again in a moment), one at a time; or, to call the change off, remove it (etcdctl member remove).",
    )


def _replacing(members: Sequence[MemberHealth], backup: Manifest | None) -> list[str]:
    """The members the newest snapshot recorded that an unstarted one took the place of (as
    `restore replace-member` leaves it until the new member starts): as many members as then,
    but recorded ones missing. Empty for a member added on top (scenario 2's grow)."""
    recorded = [m.name for m in backup.members if m.name and not m.learner] if backup else []
    voting = [m for m in members if not m.learner]
    names = {m.name for m in voting if m.started}
    gone = [n for n in recorded if n not in names]
    return gone if gone and len(voting) == len(recorded) else []


def _unstarted(
    ctx: Context,
    snapshot: str,
    members: Sequence[MemberHealth],
    q: Quorum,
    *,
    backup: Manifest | None,
    before_added: Manifest | None,
) -> Runbook:
    unstarted = [m for m in members if not m.started]
    started = [m for m in members if m.started]
    who = ", ".join(f"{m.id} ({', '.join(m.peer_urls)})" for m in unstarted)
    replaced = _replacing(members, before_added) if q.held and len(unstarted) == 1 else []
    if q.held:
        endpoints = [u for m in started if m.reachable for u in m.client_urls[:1]]
        removes = [Step(ctx.etcdctl(endpoints, "member", "remove", m.id), StepKind.REMOVE) for m in unstarted]
        if replaced:
            peer = unstarted[0].peer_url or PEER_PLACEHOLDER
            # In the replaced member's very place (its peer URL): its client URLs, as replace-member prints.
            took = [r for r in before_added.members if r.name in replaced] if before_added else []
            same = next((r for r in took if norm_url(peer) in {norm_url(u) for u in r.peer_urls}), None)
            new = Host(NAME_PLACEHOLDER, peer, same.client_urls if same else ())
            after = [host_of(m) for m in started if not m.learner] + [new]
            return _runbook(
                join(ctx, new, after),
                f"Member {who} was added in place of {', '.join(replaced)} (a replacement, as `etcd-backup "
                "restore replace-member` leaves it) and has not started yet. Start it on its host with the flags "
                "replace-member printed (as below, NAME being the name you gave it). Only if it cannot start, "
                f"remove it ({removes[0].command}) and replace again.",
            )
        cost = (
            "A learner does not vote, so quorum is not at risk."
            if all(m.learner for m in unstarted)
            else "The cluster is one failure closer to losing quorum."
        )
        return _runbook(
            removes,
            f"Member {who} was added but has not started. If you are adding it right now, start it "
            "(--initial-cluster-state=existing) and this clears. If it crashed before joining (scenario 2), "
            f"remove it, then retry the change (etcd-backup pre-change first). {cost}",
        )
    hosts = [host_of(m) for m in started if not m.learner]
    alive = [m.name for m in started if m.reachable]
    return _runbook(
        rebuild(ctx, snapshot, hosts, force=True),
        _salvage(ctx, [m for m in started if not m.learner], backup)
        + f"Member {who} was added but never started, and without it there is no quorum, so it cannot be "
        "removed (scenario 2). Either start the added member now with --initial-cluster-state=existing, or "
        "roll back: stop etcd on " + ", ".join(alive or ["every member"]) + " and rebuild the original members "
        "from the newest backup as the steps show (the snapshot, plus the deltas after it where they say "
        "--to-latest): that undoes the membership change, not the writes stored before it.",
        alive,
    )
