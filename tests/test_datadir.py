"""What a data dir tells about itself, read from real etcd 3.5 and 3.4 members."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import ClusterFactory
from etcd_backup import datadir

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("version", ["3.5", "3.4"])
def test_lock_and_identity_of_a_real_member(etcd_cluster: ClusterFactory, version: str) -> None:
    cluster = etcd_cluster(1, version=version)
    member = cluster.members[0]
    status = json.loads(cluster.etcdctl("endpoint", "status", "-w", "json"))[0]["Status"]["header"]
    holder = datadir.in_use(member.data_dir)
    assert holder == f"pid {member.process.pid}"
    ident = datadir.identity(member.data_dir)
    assert ident == datadir.Identity(format(status["member_id"], "x"), format(status["cluster_id"], "x"))
    for near in (member.data_dir, member.data_dir.parent, member.data_dir / "member" / "wal"):
        assert datadir.live_nearby(near) == (member.data_dir.resolve(), holder), near
    member.stop()
    assert datadir.in_use(member.data_dir) is None
    assert datadir.live_nearby(member.data_dir.parent) is None
    assert datadir.identity(member.data_dir) == ident  # still names its member when stopped


def test_states_and_unreadable_dirs(tmp_path: Path) -> None:
    assert datadir.state(tmp_path / "nope") is datadir.DirState.ABSENT
    assert datadir.state(tmp_path) is datadir.DirState.EMPTY
    (tmp_path / "member" / "wal").mkdir(parents=True)
    assert datadir.state(tmp_path) is datadir.DirState.OCCUPIED
    assert datadir.in_use(tmp_path) is None and datadir.identity(tmp_path) is None
    (tmp_path / "member" / "wal" / "0000000000000000-0000000000000000.wal").write_bytes(os.urandom(4096))
    assert datadir.identity(tmp_path) is None  # garbage is no identity, not a crash
