"""Damaged or foreign objects under the prefix: reported by `list` and `verify`, never `latest`, no crash.

The damaged snapshots are copies of a real one under newer ids, so each is the newest in storage
and would be picked by a careless `latest`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from faultkit import assert_clean_failure, error_lines, s3_env

from conftest import Bucket, Cluster, run_cli
from etcd_backup.errors import EtcdBackupError, IntegrityError, UsageError
from etcd_backup.manifest import Listing
from etcd_backup.model import Manifest, new_snapshot_id, rfc3339, utcnow

pytestmark = pytest.mark.timeout(150)


@dataclass
class Stored:
    env: dict[str, str]
    bucket: Bucket
    good: dict[str, Any]  # the manifest of the one real, intact snapshot

    def _key(self, rel: str) -> str:
        return f"{self.bucket.prefix}/{rel}"

    def put(self, rel: str, body: bytes) -> None:
        self.bucket.server.client().put_object(Bucket=self.bucket.name, Key=self._key(rel), Body=body)

    def get(self, rel: str) -> bytes:
        obj = self.bucket.server.client().get_object(Bucket=self.bucket.name, Key=self._key(rel))
        return bytes(obj["Body"].read())

    def newer_copy(
        self,
        data: Callable[[bytes], bytes | None] = lambda b: b,
        manifest: Callable[[bytes], bytes] = lambda b: b,
        **changes: Any,
    ) -> str:
        """A copy of the good snapshot under a newer id; `data`/`manifest` damage what is stored."""
        sid = new_snapshot_id(utcnow())
        doc = {**self.good, "id": sid, "object_key": f"snapshots/{sid}.db", "created_at": rfc3339(utcnow()), **changes}
        body = data(self.get(self.good["object_key"]))
        if body is not None:
            self.put(doc["object_key"], body)
        self.put(f"snapshots/{sid}.json", manifest(json.dumps(doc).encode()))
        return sid

    def cli(self, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
        r = run_cli(*args, env=env or self.env)
        assert "Traceback" not in r.stderr, r.stderr
        return r.returncode, r.stdout, r.stderr


@pytest.fixture
def stored(etcd_single: Cluster, s3_bucket: Bucket, tmp_path: Path) -> Stored:
    for i in range(30):
        etcd_single.put(f"/c/{i}", "v" * 300)
    env = s3_env(etcd_single, s3_bucket, tmp_path / "spool")
    r = run_cli("snapshot", "--output", "json", env=env)
    assert r.returncode == 0, r.stderr
    return Stored(env, s3_bucket, json.loads(r.stdout))


def _flip(data: bytes) -> bytes:
    out = bytearray(data)
    out[len(out) // 2] ^= 0x01
    return bytes(out)


def _latest(s: Stored, env: dict[str, str] | None = None) -> str:
    code, out, err = s.cli("verify", "latest", "--output", "json", env=env)
    assert code == 0, err
    return str(json.loads(out)["id"])


def test_unreadable_incomplete_and_truncated_snapshots(stored: Stored) -> None:
    s = stored
    bad = {
        "not json": s.newer_copy(manifest=lambda b: b[: len(b) // 2]),
        "missing object": s.newer_copy(data=lambda b: None),
        "truncated": s.newer_copy(data=lambda b: b[:-4096]),
    }
    code, out, err = s.cli("list", "--output", "json")
    assert code == 0, err
    assert [m["id"] for m in json.loads(out)] == [s.good["id"]]
    warnings = error_lines(err)
    for kind, sid in bad.items():
        assert any(sid in w and "warning" in w for w in warnings), f"{kind}: not reported by list: {err}"
    assert _latest(s) == s.good["id"]
    for kind, sid in bad.items():
        code, _, err = s.cli("verify", sid)
        assert code == 3, f"{kind}: verify exit {code}: {err}"
        assert len(error_lines(err)) == 1, err
    code, _, err = s.cli("fetch", "latest", "--to", str(Path(s.env["ETCD_BACKUP_STORAGE__SPOOL_DIR"]) / "x.db"))
    assert code == 0, err


def test_flipped_byte_is_found_then_never_latest_again(stored: Stored, tmp_path: Path) -> None:
    s = stored
    sid = s.newer_copy(data=_flip)
    # Sizes match, so only a download tells: the first full check finds it...
    code, _, err = s.cli("verify", "latest")
    line = assert_clean_failure(code, err, 3, sid)
    assert "SHA-256" in line
    # ...and records it: listed as FAILED, with a warning, and `latest` moves to the intact one.
    code, out, err = s.cli("list", "--output", "json")
    assert code == 0, err
    listed = {m["id"]: m for m in json.loads(out)}
    assert listed[sid]["verification"]["hash"]["ok"] is False
    assert any(sid in w and "failed verification" in w for w in error_lines(err)), err
    assert _latest(s) == s.good["id"]
    dest = tmp_path / "out" / "latest.db"
    code, out, err = s.cli("fetch", "latest", "--to", str(dest), "--output", "json")
    assert code == 0, err
    assert json.loads(out)["id"] == s.good["id"]
    assert dest.stat().st_mode & 0o777 == 0o600
    # The damaged one by id: exit 3, nothing left at the destination.
    code, _, err = s.cli("fetch", sid, "--to", str(tmp_path / "out" / "bad.db"))
    assert code == 3, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["latest.db"]


def test_snapshot_of_another_cluster(stored: Stored) -> None:
    s = stored
    foreign = s.newer_copy(cluster_id="deadbeefdeadbeef", member_id="1234")
    code, out, err = s.cli("list", "--output", "json")
    assert code == 0, err
    assert {m["id"] for m in json.loads(out)} == {foreign, s.good["id"]}  # intact, so listed
    assert any("2 etcd clusters" in w and "deadbeefdeadbeef" in w for w in error_lines(err)), err
    # etcd answers: `latest` is the newest of the cluster the endpoints belong to.
    assert _latest(s) == s.good["id"]
    # etcd does not answer: refuse to guess whose data `latest` is.
    dead = {**s.env, "ETCD_BACKUP_ETCD__ENDPOINTS": "http://127.0.0.1:1", "ETCD_BACKUP_ETCD__DIAL_TIMEOUT": "1s"}
    code, _, err = s.cli("verify", "latest", env=dead)
    assert_clean_failure(code, err, 2, "name the snapshot by id", "deadbeefdeadbeef", s.good["cluster_id"])
    code, _, err = s.cli("verify", s.good["id"], env=dead)  # by id it still works
    assert code == 0, err


# --- the `latest` rule, pure -------------------------------------------------------------------


def _manifest(n: int, cluster: str, ok: bool = True) -> Manifest:
    sid = f"2030010{n}T000000000Z-abcdef"
    check = {"ok": ok, "at": "2030-01-01T00:00:00.000Z"}
    return Manifest.from_dict(
        {
            "id": sid,
            "created_at": f"2030-01-0{n}T00:00:00.000Z",
            "reason": "manual",
            "pinned": False,
            "cluster_id": cluster,
            "member_id": "1",
            "endpoint": "http://e",
            "etcd_version": "3.5.1",
            "revision": n,
            "keys": 1,
            "db_size": 10,
            "object_key": f"snapshots/{sid}.db",
            "object_size": 42,
            "object_sha256": "00",
            "compression": "none",
            "verification": {"hash": check, "structure": {"ok": True, "at": ""}, "drill": None},
        }
    )


def _listing(*ms: Manifest) -> Listing:
    return Listing(manifests=sorted(ms, key=lambda m: m.id, reverse=True))


def test_latest_rule_single_cluster_never_asks_etcd() -> None:
    def ask() -> str | None:
        raise AssertionError("etcd asked although only one cluster is stored")

    listing = _listing(_manifest(1, "aa"), _manifest(2, "aa"), _manifest(3, "aa", ok=False))
    assert listing.latest("store", ask).revision == 2  # the failed newest is skipped


def test_latest_rule_prefers_the_live_cluster_over_a_newer_foreign_one() -> None:
    listing = _listing(_manifest(1, "aa"), _manifest(2, "aa"), _manifest(3, "ff"))
    assert listing.latest("store", lambda: "aa").revision == 2
    assert listing.latest("store", "ff").revision == 3


def test_latest_rule_refuses_to_guess() -> None:
    listing = _listing(_manifest(1, "aa"), _manifest(3, "ff"))
    with pytest.raises(UsageError, match="name the snapshot by id"):
        listing.latest("store", lambda: None)
    with pytest.raises(EtcdBackupError, match="live cluster bb"):
        listing.latest("store", "bb")
    # Only failed ones: an integrity failure (exit 3) that names them, never a storage error (1).
    with pytest.raises(IntegrityError, match="no verified snapshot in store: all 1 failed verification"):
        _listing(_manifest(1, "aa", ok=False)).latest("store")
    with pytest.raises(EtcdBackupError, match=r"no verified snapshot in store$"):
        _listing().latest("store")


def test_latest_rule_failed_snapshots_of_the_live_cluster_are_no_licence_for_another() -> None:
    """The live cluster (a restored one, its own snapshots failing) has no verified snapshot: latest
    must not quietly be the old cluster's, whose restore would drop every write since. With etcd
    down nothing says which cluster is live: the one verified cluster is latest, as before."""
    listing = _listing(_manifest(1, "aa"), _manifest(2, "ff", ok=False), _manifest(3, "ff", ok=False))
    with pytest.raises(UsageError, match=r"live cluster ff \(its 2 snapshot\(s\) here failed verification\)"):
        listing.latest("store", "ff")
    assert listing.latest("store", "aa").revision == 1
    assert listing.latest("store", lambda: None).revision == 1
