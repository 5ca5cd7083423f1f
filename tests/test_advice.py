"""The pure core of `doctor`: classification and the runbook it prints, without a cluster.

These fail in milliseconds where the real-cluster walks (test_outage_walk.py) take seconds.
"""

from __future__ import annotations

import dataclasses
import shlex

import pytest

from etcd_backup.advice import membership_before, recommend
from etcd_backup.assessment import MemberHealth, MemberState, Scenario, classify, quorum
from etcd_backup.config import EtcdConfig
from etcd_backup.model import Check, ClusterMember, Manifest, Verification
from etcd_backup.runbook import Context, StepKind, start_command

CTX = Context(EtcdConfig(endpoints=["http://10.0.0.1:2379"]), "/var/lib/etcd")


def member(name: str, n: int, *, reachable: bool = True, leader: bool = False, started: bool = True) -> MemberHealth:
    return MemberHealth(
        id=f"{n:x}" * 4,
        name=name if started else "",
        peer_urls=(f"https://10.0.0.{n}:2380",),
        client_urls=(f"https://10.0.0.{n}:2379",) if started else (),
        started=started,
        learner=False,
        reachable=reachable,
        is_leader=leader,
        has_leader=reachable,
    )


def manifest(members: tuple[ClusterMember, ...] = ()) -> Manifest:
    ok = Check(True, "2026-01-01T00:00:00.000Z")
    return Manifest(
        id="20260101T000000000Z-abcdef",
        created_at="2026-01-01T00:00:00.000Z",
        reason="schedule",
        pinned=False,
        cluster_id="c1",
        member_id="1",
        endpoint="http://10.0.0.1:2379",
        etcd_version="3.5.1",
        revision=10,
        keys=3,
        db_size=4096,
        object_key="snapshots/20260101T000000000Z-abcdef.db",
        object_size=4128,
        object_sha256="0" * 64,
        compression="none",
        verification=Verification(ok, ok),
        members=members,
    )


def commands(scenario: Scenario, members: list[MemberHealth], backup: Manifest | None = None) -> list[str]:
    book = recommend(CTX, scenario, members, quorum(members), backup=backup, other_clusters=False, alarms=[])
    return [s.command for s in book.steps]


def test_classification() -> None:
    three = [member("a", 1, leader=True), member("b", 2), member("c", 3)]
    assert classify(three, True, 3) is Scenario.HEALTHY
    down = [three[0], member("b", 2, reachable=False), three[2]]
    assert classify(down, quorum(down).held, 3) is Scenario.MEMBER_DOWN
    lost = [member("a", 1), member("b", 2, reachable=False), member("c", 3, reachable=False)]
    assert not quorum(lost).held and classify(lost, False, 3) is Scenario.QUORUM_LOST
    assert classify([], False, 1) is Scenario.SINGLE_MEMBER_DOWN
    assert classify([], False, 3) is Scenario.QUORUM_LOST
    grown = [member("a", 1), member("", 2, started=False)]
    assert classify(grown, False, 1) is Scenario.UNSTARTED_MEMBER


def test_states_say_reachable_and_started_apart() -> None:
    assert member("a", 1).state is MemberState.OK
    no_leader = MemberHealth("1", "a", (), (), started=True, learner=False, reachable=True, has_leader=False)
    assert no_leader.state is MemberState.NO_LEADER
    assert member("b", 2, reachable=False).state is MemberState.DOWN
    assert member("", 3, started=False).state is MemberState.UNSTARTED


@pytest.mark.parametrize(
    ("scenario", "members"),
    [
        (Scenario.QUORUM_LOST, [member("a", 1), member("b", 2, reachable=False), member("c", 3, reachable=False)]),
        (Scenario.MEMBER_DOWN, [member("a", 1, leader=True), member("b", 2, reachable=False), member("c", 3)]),
        (Scenario.SINGLE_MEMBER_DOWN, []),
        (Scenario.UNSTARTED_MEMBER, [member("a", 1), member("", 2, started=False)]),
    ],
)
def test_every_printed_command_is_shell_safe(scenario: Scenario, members: list[MemberHealth]) -> None:
    for cmd in commands(scenario, members, manifest()):
        assert "<" not in cmd and ">" not in cmd, cmd
        assert shlex.join(shlex.split(cmd)) == cmd


def test_quorum_lost_rebuilds_every_member_on_its_host_with_force() -> None:
    members = [member("a", 1), member("b", 2, reachable=False), member("c", 3, reachable=False)]
    book = recommend(
        CTX, Scenario.QUORUM_LOST, members, quorum(members), backup=manifest(), other_clusters=False, alarms=[]
    )
    assert book.stop_first == ("a",)
    restores = [s for s in book.steps if s.kind is StepKind.RESTORE]
    starts = [s for s in book.steps if s.kind is StepKind.START]
    assert [s.host for s in restores] == [s.host for s in starts] == ["a", "b", "c"]
    for step in restores:
        argv = shlex.split(step.command)
        assert argv[argv.index("--only") + 1] == step.host and "--force" in argv
        assert argv[argv.index("--data-dir") + 1] == "/var/lib/etcd"
    a_start = shlex.split(starts[0].command)
    assert "--advertise-client-urls=https://10.0.0.1:2379" in a_start
    assert "--initial-cluster-token=etcd-restore-20260101T000000000Z-abcdef" in a_start
    assert "--cert-file=SERVER_CERT" in a_start  # https: the server's TLS files are the host's own
    assert book.command == book.steps[0].command


def test_quorum_lost_first_asks_whether_the_missing_members_are_only_unreachable_from_here() -> None:
    # A partition, or this host's own network, looks the same as lost members: the majority may
    # still have a leader behind it, and rebuilding it would roll back every write since the snapshot.
    for members in ([member("a", 1), member("b", 2, reachable=False), member("c", 3, reachable=False)], []):
        book = recommend(
            CTX, Scenario.QUORUM_LOST, members, quorum(members), backup=manifest(), other_clusters=False, alarms=[]
        )
        first, _, rest = book.explanation.partition("rebuild nothing.")
        assert "only unreachable from here" in first and "endpoint status" in first
        assert "rebuild every member" in rest  # the check comes before the rebuild


def test_single_member_down_is_filled_from_the_snapshot() -> None:
    recorded = (ClusterMember("1", "etcd-0", ("http://10.0.0.1:2380",), ("http://10.0.0.1:2379",)),)
    (restore, start, check, snap) = commands(Scenario.SINGLE_MEMBER_DOWN, [], manifest(recorded))
    assert shlex.split(restore) == [
        "etcd-backup",
        "restore",
        "single",
        "--snapshot",
        "20260101T000000000Z-abcdef",
        "--name",
        "etcd-0",
        "--peer-url",
        "http://10.0.0.1:2380",
        "--data-dir",
        "/var/lib/etcd",
    ]
    assert "--advertise-client-urls=http://10.0.0.1:2379" in start and "--cert-file" not in start
    assert "endpoint health" in check and snap.endswith("snapshot --reason after-restore")
    # Nothing known at all: only then placeholders, and shell-safe ones.
    unknown = commands(Scenario.SINGLE_MEMBER_DOWN, [], None)[0]
    assert "SNAPSHOT_ID" in unknown and "--name NAME" in unknown and "--peer-url PEER_URL" in unknown


def test_member_down_replaces_and_joins_existing() -> None:
    members = [member("a", 1, leader=True), member("b", 2, reachable=False), member("c", 3)]
    replace, start, _check = commands(Scenario.MEMBER_DOWN, members)
    assert "--failed b --name b --peer-url https://10.0.0.2:2380 --data-dir /var/lib/etcd" in replace
    assert "--initial-cluster-state=existing" in start and "initial-cluster-token" not in start
    assert "--initial-cluster=a=https://10.0.0.1:2380,b=https://10.0.0.2:2380,c=https://10.0.0.3:2380" in start


def test_config_path_and_data_dir_template_are_repeated() -> None:
    ctx = Context(EtcdConfig(), "/srv/etcd/{name}", config_path="/etc/eb/config.toml")
    members = [member("a", 1), member("b", 2, reachable=False), member("c", 3, reachable=False)]
    book = recommend(
        ctx, Scenario.QUORUM_LOST, members, quorum(members), backup=manifest(), other_clusters=False, alarms=[]
    )
    first = shlex.split(book.steps[0].command)
    assert first[:3] == ["etcd-backup", "--config", "/etc/eb/config.toml"]
    assert first[first.index("--data-dir") + 1] == "/srv/etcd/{name}"
    start = next(s for s in book.steps if s.kind is StepKind.START and s.host == "b")
    assert "--data-dir=/srv/etcd/b" in shlex.split(start.command)


def test_start_command_without_client_urls_names_the_placeholder() -> None:
    cmd = start_command(["--name=a"], [])
    assert "--listen-client-urls=CLIENT_URL" in cmd and "<" not in cmd


def test_with_every_member_down_the_newest_cluster_on_the_endpoints_is_the_one_to_restore() -> None:
    """A `restore cluster` gives the cluster a new id on the same URLs: at its next outage both the
    old and the new cluster's snapshots match the endpoints, and the newer cluster is the live one."""
    import dataclasses

    from etcd_backup.manifest import Listing
    from etcd_backup.service.doctor import this_clusters_backup

    urls = ("http://10.0.0.1:2379",)
    members = (ClusterMember("m1", "1", ("http://10.0.0.1:2380",), urls),)
    old = dataclasses.replace(manifest(members), id="20260101T000000000Z-aaaaaa", cluster_id="old")
    new = dataclasses.replace(
        manifest(members), id="20260102T000000000Z-bbbbbb", created_at="2026-01-02T00:00:00.000Z", cluster_id="new"
    )
    other = dataclasses.replace(
        manifest(), id="20260103T000000000Z-cccccc", created_at="2026-01-03T00:00:00.000Z", cluster_id="x"
    )
    other = dataclasses.replace(other, endpoint="http://10.9.9.9:2379")
    listing = Listing([other, new, old])
    assert this_clusters_backup(listing, None, list(urls)) == new
    assert this_clusters_backup(Listing([other, old, new]), None, list(urls)) == new  # not by listing order
    assert this_clusters_backup(listing, None, ["http://10.5.5.5:2379"]) is None  # none of ours
    assert this_clusters_backup(listing, "old", list(urls)) == old  # a live cluster names itself


def test_a_corrupt_member_is_replaced_never_disarmed() -> None:
    members = [member("a", 1, leader=True), member("b", 2), member("c", 3)]
    corrupt = [{"member_id": "2222", "member": "b", "alarm": "CORRUPT"}]
    book = recommend(CTX, Scenario.HEALTHY, members, quorum(members), backup=None, other_clusters=False, alarms=corrupt)
    assert [s.kind for s in book.steps][:1] == [StepKind.REPLACE]
    assert "--failed b " in book.command and "Do not disarm" in book.explanation
    assert not any("disarm" in s.command for s in book.steps)


def test_a_replacement_waiting_for_its_member_to_start_says_start_it_not_remove_it() -> None:
    """Between `restore replace-member` and starting the new member: the failed one is gone from the
    member list, the new one is unstarted. Removing it (scenario 2's advice) would undo the
    replacement; a member added on top of the recorded ones is still scenario 2."""
    recorded = tuple(
        ClusterMember(str(n), name, (f"https://10.0.0.{n}:2380",), (f"https://10.0.0.{n}:2379",))
        for n, name in ((1, "a"), (2, "b"), (3, "c"))
    )
    replacing = [member("a", 1, leader=True), member("c", 3), member("", 4, started=False)]
    book = recommend(
        CTX, Scenario.UNSTARTED_MEMBER, replacing, quorum(replacing), backup=manifest(recorded),
        other_clusters=False, alarms=[],
    )  # fmt: skip
    assert [s.kind for s in book.steps] == [StepKind.START, StepKind.CHECK], book.steps
    start = shlex.split(book.steps[0].command)
    assert "--initial-cluster=a=https://10.0.0.1:2380,c=https://10.0.0.3:2380,NAME=https://10.0.0.4:2380" in start
    assert "--initial-cluster-state=existing" in start
    assert "in place of b" in book.explanation and "member remove" in book.explanation

    grown = [member("a", 1, leader=True), member("b", 2), member("c", 3), member("", 4, started=False)]
    book = recommend(
        CTX, Scenario.UNSTARTED_MEMBER, grown, quorum(grown), backup=manifest(recorded), other_clusters=False, alarms=[]
    )
    assert [s.kind for s in book.steps] == [StepKind.REMOVE], book.steps


def test_a_snapshot_taken_while_the_replacement_waits_still_says_start_it() -> None:
    """The daemon snapshots when the member list changes: right after replace-member, that snapshot
    records the new member unstarted and the failed one no more. The replacement is told from the
    newest snapshot taken before the new member was added."""
    recorded = tuple(
        ClusterMember(f"{n:x}" * 4, name, (f"https://10.0.0.{n}:2380",), (f"https://10.0.0.{n}:2379",))
        for n, name in ((1, "a"), (2, "b"), (3, "c"))
    )
    before = manifest(recorded)
    after_add = manifest((recorded[0], recorded[2], ClusterMember("4444", "", ("https://10.0.0.4:2380",), ())))
    replacing = [member("a", 1, leader=True), member("c", 3), member("", 4, started=False)]
    assert membership_before([after_add, before], replacing) is before
    assert membership_before([after_add], replacing) is None

    def kinds(before_added: Manifest | None) -> list[StepKind]:
        book = recommend(
            CTX, Scenario.UNSTARTED_MEMBER, replacing, quorum(replacing), backup=after_add,
            other_clusters=False, alarms=[], before_added=before_added,
        )  # fmt: skip
        return [s.kind for s in book.steps]

    assert kinds(before) == [StepKind.START, StepKind.CHECK]
    assert kinds(None) == [StepKind.REMOVE]  # nothing older to tell it by: scenario 2's advice


def test_quorum_lost_leaves_out_a_member_the_snapshot_recorded_unstarted_and_says_so() -> None:
    """Nothing answers and the newest snapshot was taken while a member was added but not started
    (a grow, or a replacement waiting): it is left out of the rebuild, as an unstarted member of a
    live member list is, and the explanation names it. Kept under a placeholder, its start step
    had `--listen-client-urls=CLIENT_URL`, which etcd refuses, and a rebuilt cluster counted it."""
    recorded = (
        ClusterMember("1111", "a", ("https://10.0.0.1:2380",), ("https://10.0.0.1:2379",)),
        ClusterMember("4444", "", ("https://10.0.0.4:2380",), ()),
        ClusterMember("3333", "c", ("https://10.0.0.3:2380",), ("https://10.0.0.3:2379",)),
    )
    book = recommend(
        CTX, Scenario.QUORUM_LOST, [], quorum([]), backup=manifest(recorded), other_clusters=False, alarms=[]
    )
    restores = [shlex.split(s.command) for s in book.steps if s.kind is StepKind.RESTORE]
    assert len(restores) == 2, book.steps
    for cmd in restores:
        assert [cmd[i + 1] for i, a in enumerate(cmd) if a == "--member"] == [
            "a=https://10.0.0.1:2380", "c=https://10.0.0.3:2380",
        ]  # fmt: skip
    assert not any("10.0.0.4" in s.command for s in book.steps), book.steps
    assert "4444 (https://10.0.0.4:2380) as added but not started" in book.explanation, book.explanation


def test_a_hinted_member_counts_for_the_recorded_cluster_or_the_one_the_configured_endpoint_is_in() -> None:
    """Hints come from the newest snapshot's member list. An answer there counts if it is that
    cluster, or the cluster a `restore cluster` made since on the same URLs (its member list
    names the configured endpoint); another cluster now on a recorded URL does not."""
    from etcd_backup.etcdclient import MemberInfo, MemberStatus, Probe
    from etcd_backup.survey import _ours

    def answer(cluster: int, client_urls: tuple[str, ...]) -> Probe:
        status = MemberStatus("http://h:2379", 1, cluster, "3.5.1", 0, 0, 1, 1, 1, False, (), 1)
        return Probe("http://h:2379", status, members=[MemberInfo(1, "m", ("http://h:2380",), client_urls)])

    configured = ["http://10.0.0.1:2379"]
    assert _ours(answer(0xC1, ("http://10.0.0.2:2379",)), "c1", configured)
    assert _ours(answer(0xAB, ("http://10.0.0.1:2379", "http://10.0.0.2:2379")), "c1", configured)
    assert not _ours(answer(0xAB, ("http://10.0.0.9:2379",)), "c1", configured)
    assert not _ours(Probe("http://h:2379", error="refused"), "c1", configured)


def test_without_quorum_a_member_ahead_of_what_the_steps_restore_is_saved_first() -> None:
    def ahead(m: MemberHealth, revision: int) -> MemberHealth:
        return dataclasses.replace(m, revision=revision, has_leader=False)

    lost = [ahead(member("a", 1), 15), member("b", 2, reachable=False), member("c", 3, reachable=False)]
    book = recommend(CTX, Scenario.QUORUM_LOST, lost, quorum(lost), backup=manifest(), other_clusters=False, alarms=[])
    salvage = "etcd-backup snapshot --reason before-restore --from-survivor"
    assert book.explanation.startswith(
        f"Member a still holds revision 15, 5 revisions past what the steps below restore (10): before stopping it, "
        f"save its data with `{salvage}`, then run `etcd-backup doctor` again"
    )
    assert book.command.startswith("etcd-backup restore cluster --snapshot 20260101T000000000Z-abcdef")  # unchanged

    # Deltas that reach the survivor's revision: the steps restore it all already.
    book = recommend(
        CTX,
        Scenario.QUORUM_LOST,
        lost,
        quorum(lost),
        backup=manifest(),
        other_clusters=False,
        alarms=[],
        newest_point=15,
    )
    assert "--from-survivor" not in book.explanation and "--to-latest" in book.command
    # A survivor at the backup's revision: nothing to save.
    level = [ahead(member("a", 1), 10), *lost[1:]]
    book = recommend(
        CTX, Scenario.QUORUM_LOST, level, quorum(level), backup=manifest(), other_clusters=False, alarms=[]
    )
    assert "--from-survivor" not in book.explanation
    # No backup at all: the survivor is the only copy.
    book = recommend(CTX, Scenario.QUORUM_LOST, lost, quorum(lost), backup=None, other_clusters=False, alarms=[])
    assert book.explanation.startswith(
        "Member a still holds revision 15, and storage holds no snapshot of this cluster"
    )
    # Scenario 2 without quorum rolls back by a rebuild too: the same advice first.
    grown = [ahead(member("a", 1), 12), member("", 2, started=False)]
    book = recommend(
        CTX, Scenario.UNSTARTED_MEMBER, grown, quorum(grown), backup=manifest(), other_clusters=False, alarms=[]
    )
    assert (
        book.explanation.startswith("Member a still holds revision 12, 2 revisions past")
        and salvage in book.explanation
    )
