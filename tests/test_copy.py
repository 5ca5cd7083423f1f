"""The second copy (storage.copy_to): every committed object copied after the primary commit, data
first and manifest last; a copy that is down never fails a backup and is filled in by the next
run; `--store copy` for every read command; retention on both stores; the daemon's metric."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlparse

import pytest

from conftest import (
    BUCKET_FIXTURES,
    AgeTool,
    Bucket,
    Cluster,
    DaemonFactory,
    StartEtcd,
    config_env,
    run_cli,
)
from etcd_backup.config import Config
from etcd_backup.etcdproc import free_port, wait_healthy
from etcd_backup.service.backup import take_snapshot
from etcd_backup.service.copy import named_objects, sync
from etcd_backup.storage import SnapshotStore, get_bytes, open_copy_store, open_store, put_bytes
from etcd_backup.storage.memory import MemoryStore
from faultproxy import FaultProxy

pytestmark = pytest.mark.timeout(240)
MiB = 1024 * 1024
ONLY_LAST = {
    "retention__keep_last": "1",
    "retention__hourly": "0",
    "retention__daily": "0",
    "retention__weekly": "0",
    "retention__monthly": "0",
}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _manifest(key: str, data: bytes, **extra: Any) -> bytes:
    return json.dumps({"object_key": key, "object_size": len(data), "object_sha256": _sha(data), **extra}).encode()


# --- what a committed object is --------------------------------------------------------------


def test_a_manifest_names_its_data_objects_at_the_top_and_in_sections() -> None:
    raw = json.dumps(
        {
            "id": "x",
            "object_key": "snapshots/x.db",
            "object_size": 3,
            "object_sha256": "a" * 64,
            "files": {"object_key": "snapshots/x.files.tar", "object_size": 5, "object_sha256": "b" * 64, "count": 2},
            "verification": {"hash": {"ok": True}},
        }
    ).encode()
    assert [(o.key, o.size) for o in named_objects("snapshots/x.json", raw)] == [
        ("snapshots/x.db", 3),
        ("snapshots/x.files.tar", 5),
    ]


@pytest.mark.parametrize(
    "doc",
    [
        {"id": "no data"},
        {"object_key": "other/x.db", "object_size": 1, "object_sha256": "a" * 64},  # another folder
        {"object_key": "snapshots/../x.db", "object_size": 1, "object_sha256": "a" * 64},
        {"object_key": "snapshots/x.json", "object_size": 1, "object_sha256": "a" * 64},  # itself
        {"object_key": "snapshots/x.db", "object_size": "1", "object_sha256": "a" * 64},
        {"object_key": "snapshots/x.db", "object_size": 1, "object_sha256": "not hex"},
        ["a list"],
    ],
)
def test_what_is_no_manifest(doc: Any) -> None:
    with pytest.raises(ValueError):
        named_objects("snapshots/x.json", json.dumps(doc).encode())


class Recording(MemoryStore):
    """A memory store that remembers the order of its puts."""

    def __init__(self) -> None:
        super().__init__("copy")
        self.order: list[str] = []

    def put(self, key: str, source: BinaryIO, *, spooled: Any = None) -> Any:
        info = super().put(key, source, spooled=spooled)
        self.order.append(key)
        return info


def _commit(store: SnapshotStore, manifest: str, data_key: str, data: bytes) -> None:
    put_bytes(store, data_key, data)
    put_bytes(store, manifest, _manifest(data_key, data))


SNAP = "snapshots/20260101T000000000Z-aaaaaa"
DELTA = "deltas/c1/20260101T000001000Z-bbbbbb"


def test_every_committed_kind_is_copied_data_first_and_only_once() -> None:
    primary, copy = MemoryStore("primary"), Recording()
    snap, delta = os.urandom(3000), os.urandom(700)
    _commit(primary, f"{SNAP}.json", f"{SNAP}.db", snap)
    # A kind this module knows nothing about (deltas), committed the same way.
    _commit(primary, f"{DELTA}.json", f"{DELTA}.delta", delta)
    put_bytes(primary, "snapshots/20260101T000002000Z-cccccc.db", b"an orphan: no manifest")

    report = sync(primary, copy)
    assert report.complete and report.bytes == len(snap) + len(delta)
    assert sorted(copy.order) == sorted(o.key for o in primary.list() if not o.key.endswith("cccccc.db"))
    for manifest, data in ((f"{SNAP}.json", f"{SNAP}.db"), (f"{DELTA}.json", f"{DELTA}.delta")):
        assert copy.order.index(data) < copy.order.index(manifest)
        assert get_bytes(copy, manifest) == get_bytes(primary, manifest)
    assert copy.order[:2] == [f"{DELTA}.delta", f"{DELTA}.json"]  # newest first, whatever the folder

    copy.order.clear()
    assert sync(primary, copy).bytes == 0 and copy.order == []  # nothing lacks: nothing copied

    # A drill result recorded in the primary: the manifest is copied again, its data is not.
    key = f"{SNAP}.json"
    put_bytes(primary, key, _manifest(f"{SNAP}.db", snap, drill={"ok": True}))
    again = sync(primary, copy)
    assert again.refreshed == [key] and again.bytes == 0 and copy.order == [key]

    # `verify --store copy` found the copy's data damaged and marked its manifest: the data is
    # copied again before the primary's manifest (which calls it verified) replaces that mark.
    put_bytes(copy, f"{SNAP}.db", bytes(len(snap)))
    put_bytes(copy, key, _manifest(f"{SNAP}.db", snap, verification={"hash": {"ok": False}}))
    copy.order.clear()
    repaired = sync(primary, copy)
    assert repaired.refreshed == [key] and repaired.bytes == len(snap)
    assert copy.order == [f"{SNAP}.db", key] and get_bytes(copy, f"{SNAP}.db") == snap


def test_damaged_or_incomplete_objects_of_the_primary_are_not_copied() -> None:
    primary, copy = MemoryStore("primary"), MemoryStore("copy")
    good = os.urandom(100)
    # Not the bytes its manifest records (the last byte flipped: a random one may already be 0).
    put_bytes(primary, "snapshots/a.db", good[:-1] + bytes([good[-1] ^ 0xFF]))
    put_bytes(primary, "snapshots/a.json", _manifest("snapshots/a.db", good))
    put_bytes(primary, "snapshots/b.json", _manifest("snapshots/b.db", good))  # its data is missing
    put_bytes(primary, "snapshots/c.json", b"{not json")
    report = sync(primary, copy)
    assert [d.split(":")[0] for d in report.damaged] == ["snapshots/a.json"]
    assert sorted(s.split(":")[0] for s in report.skipped) == ["snapshots/b.json", "snapshots/c.json"]
    assert not report.complete
    assert copy.list() == []  # no manifest, and the damaged copy of the data is gone too


# --- the CLI, on each kind of store ------------------------------------------------------------


def _fill(cluster: Cluster, mib: int) -> dict[str, bytes]:
    import etcd3

    u = urlparse(cluster.endpoints[0])
    client = etcd3.client(u.hostname, u.port, timeout=30)
    values = {f"/big/{i:02d}": os.urandom(MiB - 1024) for i in range(mib)}
    try:
        for key, value in values.items():
            client.put(key, value)
    finally:
        client.close()
    return values


def _cli_json(env: dict[str, str], *args: str) -> Any:
    r = run_cli(*args, "--output", "json", env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _stores(env: dict[str, str]) -> tuple[SnapshotStore, SnapshotStore]:
    """The two stores as the CLI opens them from this environment."""
    saved = dict(os.environ)
    try:
        os.environ.update({k: v for k, v in env.items() if k.startswith(("ETCD_BACKUP_", "AWS_"))})
        from etcd_backup.config import load

        cfg = load(None)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    copy = open_copy_store(cfg.storage)
    assert copy is not None
    return open_store(cfg.storage), copy


def _same_objects(primary: SnapshotStore, copy: SnapshotStore) -> list[str]:
    """The committed objects of the primary, each byte for byte in the copy."""
    keys = sorted(o.key for o in primary.list())
    assert keys == sorted(o.key for o in copy.list())
    for key in keys:
        a, b = io.BytesIO(), io.BytesIO()
        primary.get(key, a)
        copy.get(key, b)
        assert a.getvalue() == b.getvalue(), key
    return keys


# primary -> copy: on one S3 endpoint the copy is server-side; across endpoints or to file:// it is
# made from the spool; older objects the copy lacks are streamed (see the down-then-back test).
KINDS = [
    ("file", "moto"),
    ("moto", "file"),
    ("moto", "moto"),
    ("seaweedfs", "seaweedfs"),
    ("moto", "seaweedfs"),
    ("file", "file"),
]


def _location(kind: str, request: pytest.FixtureRequest, tmp_path: Path, name: str) -> tuple[str, str | None]:
    """(url, endpoint) of a fresh store of `kind`."""
    if kind == "file":
        return f"file://{tmp_path / name}", None
    bucket: Bucket = request.getfixturevalue(BUCKET_FIXTURES[kind])
    if name == "copy":  # a bucket of its own, on the same server
        other = f"{bucket.name}-c"
        bucket.server.client().create_bucket(Bucket=other)
        return f"s3://{other}/second", bucket.server.endpoint
    return bucket.url, bucket.server.endpoint


def _env(
    cluster: Cluster, primary: tuple[str, str | None], copy: tuple[str, str | None], **extra: str
) -> dict[str, str]:
    from conftest import AWS_ENV

    env = {**config_env(cluster, primary[0], storage__part_size="5MiB", **extra), **AWS_ENV}
    if primary[1]:
        env["ETCD_BACKUP_STORAGE__ENDPOINT_URL"] = primary[1]
    env["ETCD_BACKUP_STORAGE__COPY_TO"] = copy[0]
    if copy[1] and copy[1] != primary[1]:
        env["ETCD_BACKUP_STORAGE__COPY_ENDPOINT_URL"] = copy[1]
    return env


@pytest.mark.parametrize(("primary_kind", "copy_kind"), KINDS, ids=[f"{a}-to-{b}" for a, b in KINDS])
def test_snapshot_is_copied_and_read_back_from_the_copy(
    etcd_single: Cluster, request: pytest.FixtureRequest, tmp_path: Path, primary_kind: str, copy_kind: str
) -> None:
    _fill(etcd_single, 6)  # two parts of 5 MiB
    env = _env(
        etcd_single,
        _location(primary_kind, request, tmp_path, "primary"),
        _location(copy_kind, request, tmp_path, "copy"),
    )
    r = run_cli("snapshot", env=env)
    assert r.returncode == 0, r.stderr
    assert "copy      copied to" in r.stdout, r.stdout
    m = _cli_json(env, "list")[0]
    keys = _same_objects(*_stores(env))
    assert keys == sorted([m["object_key"], f"snapshots/{m['id']}.json"])
    listed = _cli_json(env, "list", "--store", "copy")
    assert [x["id"] for x in listed] == [m["id"]] and listed[0]["object_sha256"] == m["object_sha256"]
    assert _cli_json(env, "verify", "latest", "--store", "copy")["ok"] is True


@pytest.mark.parametrize("copy_kind", ["seaweedfs", "file"])
def test_an_encrypted_snapshot_is_copied_whole_from_its_kept_ciphertext(
    etcd_single: Cluster, request: pytest.FixtureRequest, tmp_path: Path, age_tool: AgeTool, copy_kind: str
) -> None:
    """To S3, the ciphertext spool is freed part by part behind the upload, except when it is the
    copy's source: then the copy, made from it, must still be every byte (an S3 copy from a freed
    spool would store zeros that its own checksums call correct)."""
    _fill(etcd_single, 12)  # a few parts of 5 MiB
    identity = tmp_path / "age.key"
    recipient = age_tool.new_identity(identity)
    env = _env(
        etcd_single,
        _location("moto", request, tmp_path, "primary"),
        _location(copy_kind, request, tmp_path, "copy"),
        encryption__recipients=recipient,
        encryption__identity_file=str(identity),
    )
    r = run_cli("snapshot", env=env)
    assert r.returncode == 0, r.stderr
    assert "copy      copied to" in r.stdout, r.stdout
    m = _cli_json(env, "list")[0]
    assert m["object_key"].endswith(".db.age")
    assert m["object_key"] in _same_objects(*_stores(env))
    assert _cli_json(env, "verify", "latest", "--store", "copy")["ok"] is True


def test_copy_target_down_then_back(etcd_single: Cluster, tmp_path: Path) -> None:
    etcd_single.put("k", "v1")
    down = tmp_path / "copy"
    down.write_text("a file where the copy's directory should be")  # the copy store fails
    env = _env(etcd_single, (f"file://{tmp_path / 'primary'}", None), (f"file://{down}", None))
    r = run_cli("snapshot", "--output", "json", env=env)
    assert r.returncode == 0, r.stderr  # the backup itself succeeded
    first = json.loads(r.stdout)
    assert "copy to file://" in r.stderr and "retried at the next run" in r.stderr
    assert [m["id"] for m in _cli_json(env, "list")] == [first["id"]]
    assert run_cli("list", "--store", "copy", env=env).returncode == 1

    down.unlink()  # the copy store is back
    etcd_single.put("k", "v2")
    second = _cli_json(env, "snapshot")
    # The next run copies what the copy lacks: the older snapshot (read from the primary) and its own.
    assert [m["id"] for m in _cli_json(env, "list", "--store", "copy")] == [second["id"], first["id"]]
    _same_objects(*_stores(env))


def test_store_copy_when_the_primary_is_gone(
    etcd_single: Cluster, s3_bucket: Bucket, seaweedfs_bucket: Bucket, start_etcd: StartEtcd, tmp_path: Path
) -> None:
    values = _fill(etcd_single, 3)
    env = _env(
        etcd_single,
        (s3_bucket.url, s3_bucket.server.endpoint),
        (seaweedfs_bucket.url, seaweedfs_bucket.server.endpoint),
    )
    m = _cli_json(env, "snapshot")
    # The primary region is down: its endpoint answers no more.
    env["ETCD_BACKUP_STORAGE__ENDPOINT_URL"] = f"http://127.0.0.1:{free_port()}"
    env["ETCD_BACKUP_STORAGE__TIMEOUT"] = "2s"
    assert run_cli("list", env=env).returncode == 1
    assert [x["id"] for x in _cli_json(env, "list", "--store", "copy")] == [m["id"]]
    assert _cli_json(env, "verify", m["id"], "--store", "copy")["ok"] is True
    fetched = tmp_path / "fetched.db"
    assert _cli_json(env, "fetch", "latest", "--to", str(fetched), "--store", "copy")["id"] == m["id"]
    assert _sha(fetched.read_bytes()[:-32]) == m["db_sha256"]

    for kind in ("single", "cluster"):
        peer = f"http://127.0.0.1:{free_port()}"
        target = tmp_path / kind / "m1.etcd"
        members = ["--name", "m1", "--peer-url", peer] if kind == "single" else ["--member", f"m1={peer}"]
        out = _cli_json(
            env, "restore", kind, "--snapshot", "latest", *members, "--data-dir", str(target), "--store", "copy"
        )
        flags = out["etcd_flags"] if kind == "single" else out["members"][0]["etcd_flags"]
        restored = start_etcd(etcd_single.tools.etcd, flags)
        wait_healthy(restored.client_url, 30, restored)
        got = subprocess.run(
            [etcd_single.tools.etcdctl, f"--endpoints={restored.client_url}", "get", "/big/01", "-w", "json"],
            capture_output=True,
            check=True,
            env={**os.environ, "ETCDCTL_API": "3"},
        ).stdout
        assert base64.b64decode(json.loads(got)["kvs"][0]["value"]) == values["/big/01"]
        restored.kill()


def test_the_copy_with_credentials_of_its_own(etcd_single: Cluster, seaweedfs_bucket: Bucket, tmp_path: Path) -> None:
    # The primary's credentials (the environment) are not valid on the copy's store: a named
    # profile of the shared AWS config is.
    from conftest import AWS_ENV

    etcd_single.put("k", "v")
    credentials = tmp_path / "aws-credentials"
    credentials.write_text(
        f"[second]\naws_access_key_id = {AWS_ENV['AWS_ACCESS_KEY_ID']}\n"
        f"aws_secret_access_key = {AWS_ENV['AWS_SECRET_ACCESS_KEY']}\n"
    )
    env = _env(
        etcd_single,
        (f"file://{tmp_path / 'primary'}", None),
        (seaweedfs_bucket.url, seaweedfs_bucket.server.endpoint),
    )
    env.update(
        AWS_ACCESS_KEY_ID="not-the-copys",
        AWS_SECRET_ACCESS_KEY="not-the-copys-either",
        AWS_SHARED_CREDENTIALS_FILE=str(credentials),
        AWS_CONFIG_FILE=str(tmp_path / "aws-config"),
    )
    r = run_cli("list", "--store", "copy", env=env)
    assert r.returncode == 1, r.stderr  # the environment's keys are refused there
    env["ETCD_BACKUP_STORAGE__COPY_PROFILE"] = "second"
    m = _cli_json(env, "snapshot")
    assert [x["id"] for x in _cli_json(env, "list", "--store", "copy")] == [m["id"]]


def test_store_copy_without_a_copy_is_a_usage_error(tmp_path: Path) -> None:
    r = run_cli("list", "--store", "copy", env=config_env(None, f"file://{tmp_path}"))
    assert r.returncode == 2 and "storage.copy_to" in r.stderr


def test_retention_applies_to_both_stores(etcd_single: Cluster, tmp_path: Path) -> None:
    etcd_single.put("k", "v")
    primary, copy_dir = tmp_path / "primary", tmp_path / "copy"
    cfg = Config(etcd={"endpoints": etcd_single.endpoints}, storage={"url": f"file://{primary}"})
    now = datetime.now(UTC)
    taken = [take_snapshot(cfg, open_store(cfg.storage), now=lambda s=s: now - timedelta(hours=s)) for s in (3, 2, 1)]
    copy = open_store(Config(storage={"url": f"file://{copy_dir}"}).storage)
    assert len(sync(open_store(cfg.storage), copy).copied) == 3
    env = _env(etcd_single, (f"file://{primary}", None), (f"file://{copy_dir}", None), **ONLY_LAST)
    out = _cli_json(env, "prune")
    older = sorted(m.id for m in taken[:2])
    assert sorted(d["id"] for d in out["deleted"]) == older
    assert sorted(d["id"] for d in out["copy"]["deleted"]) == older
    for store in ("primary", "copy"):
        assert [m["id"] for m in _cli_json(env, "list", "--store", store)] == [taken[2].id]
    text = run_cli("prune", "--dry-run", env=env)
    assert text.returncode == 0 and f"copy file://{copy_dir}:" in text.stdout


# --- the daemon -------------------------------------------------------------------------------


def test_daemon_copy_down_then_back_is_counted_and_filled_in(
    etcd_single: Cluster, s3_bucket: Bucket, start_daemon: DaemonFactory, tmp_path: Path
) -> None:
    etcd_single.put("k", "v")
    host, port = s3_bucket.server.endpoint.removeprefix("http://").split(":")
    proxy = FaultProxy((host, int(port)), http=True)
    proxy.go_away()  # the second store is down from the start
    try:
        env = _env(
            etcd_single,
            (f"file://{tmp_path / 'primary'}", None),
            (s3_bucket.url, proxy.url),
            schedule__interval="2s",
            storage__timeout="2s",
            **{**ONLY_LAST, "retention__keep_last": "2"},
        )
        d = start_daemon(env)
        failed = 'etcd_backup_failures_total{stage="copy"}'
        d.wait_until(lambda: d.metrics().get(failed, 0) >= 2, 60, "failed copy passes counted")
        # A copy that is down never stops the backups nor makes them look unhealthy.
        d.wait_until(lambda: len(d.get_json("/v1/snapshots")[1]) >= 2, 60, "snapshots go on")
        status, body = d.get_json("/readyz")
        assert status == 200, body
        assert math.isnan(d.metrics()["etcd_backup_copy_last_success_timestamp_seconds"])

        proxy.come_back()
        d.wait_until(
            lambda: not math.isnan(d.metrics()["etcd_backup_copy_last_success_timestamp_seconds"]),
            60,
            "a complete copy pass",
        )

        # Retention applies to the copy too (keep_last 2): snapshots go from there as well.
        def copy_pruned() -> bool:
            return any(x.get("event") == "retention applied to the copy" and x["deleted"] for x in d.logs())

        d.wait_until(copy_pruned, 60, "retention deleting from the copy")
        assert d.terminate()[0] == 0
        copy = open_store(Config(storage={"url": s3_bucket.url, "endpoint_url": s3_bucket.server.endpoint}).storage)
        left = [o.key for o in copy.list("snapshots/") if o.key.endswith(".json")]
        assert 1 <= len(left) <= 3, left  # the policy's 2, and one taken since its last run
    finally:
        proxy.close()


def test_a_missed_copy_into_a_locked_bucket_is_filled_in(etcd_single: Cluster, any_locked_bucket: Bucket) -> None:
    """Catching up copies server-side on one endpoint; a store that wants a checksum header on a
    locked CopyObject (moto) must not leave the missed snapshot out of the copy for ever."""
    from conftest import AWS_ENV

    client = any_locked_bucket.server.client()
    copy_bucket = f"{any_locked_bucket.name}-c"
    env = {
        **config_env(etcd_single, any_locked_bucket.url, storage__object_lock="governance", storage__lock_for="5s"),
        **AWS_ENV,
        "ETCD_BACKUP_STORAGE__ENDPOINT_URL": any_locked_bucket.server.endpoint,
        "ETCD_BACKUP_STORAGE__COPY_TO": f"s3://{copy_bucket}/second",
    }
    etcd_single.put("k", "v1")
    first = _cli_json(env, "snapshot")  # the copy bucket does not exist yet: the copy fails
    client.create_bucket(Bucket=copy_bucket, ObjectLockEnabledForBucket=True)
    etcd_single.put("k", "v2")
    r = run_cli("snapshot", "--output", "json", env=env)
    assert r.returncode == 0 and "failed" not in r.stderr, r.stderr
    second = json.loads(r.stdout)
    assert [m["id"] for m in _cli_json(env, "list", "--store", "copy")] == [second["id"], first["id"]]
    for m in (first, second):
        head = client.head_object(Bucket=copy_bucket, Key=f"second/{m['object_key']}")
        assert head.get("ObjectLockMode") == "GOVERNANCE", m["id"]
    _same_objects(*_stores(env))


def test_a_copy_target_that_never_answers_gets_two_attempts(etcd_single: Cluster, tmp_path: Path) -> None:
    """The copy is retried at the next run: a one-shot command does not also sit through the
    primary's five attempts per request after its snapshot is committed."""
    import socket

    with socket.socket() as hung:  # accepts connections (the kernel's backlog), never answers
        hung.bind(("127.0.0.1", 0))
        hung.listen(16)
        endpoint = f"http://127.0.0.1:{hung.getsockname()[1]}"
        env = _env(etcd_single, (f"file://{tmp_path / 'primary'}", None), ("s3://copy/second", endpoint))
        env["ETCD_BACKUP_STORAGE__TIMEOUT"] = "1s"
        etcd_single.put("k", "v")
        r = run_cli("snapshot", env=env, timeout=120)
    assert r.returncode == 0, r.stderr  # the backup itself succeeded
    assert "retried at the next run" in r.stderr and "(after 2 attempts)" in r.stderr, r.stderr
    assert len(_cli_json(env, "list")) == 1


def test_a_copy_bucket_without_object_lock_is_exit_2_naming_copy_to(etcd_single: Cluster, s3_bucket: Bucket) -> None:
    """object_lock applies to the copy too: a copy bucket that cannot lock stops the command at
    start, and the line names storage.copy_to (the primary bucket is fine), not only the setting."""
    from conftest import AWS_ENV

    client = s3_bucket.server.client()
    client.create_bucket(Bucket=f"{s3_bucket.name}-locked", ObjectLockEnabledForBucket=True)
    env = {
        **config_env(
            etcd_single, f"s3://{s3_bucket.name}-locked/p", storage__object_lock="governance", storage__lock_for="5s"
        ),
        **AWS_ENV,
        "ETCD_BACKUP_STORAGE__ENDPOINT_URL": s3_bucket.server.endpoint,
        "ETCD_BACKUP_STORAGE__COPY_TO": f"s3://{s3_bucket.name}/second",
    }
    r = run_cli("snapshot", env=env)
    assert r.returncode == 2, r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert "storage.copy_to" in line and "no Object Lock enabled" in line and repr(s3_bucket.name) in line, line
    assert s3_bucket.keys() == [], "nothing stored in the copy"
