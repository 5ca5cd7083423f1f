"""The daemon (`etcd-backup run`, a real process) under faults: killed mid-upload, racing itself and
`prune`, storage gone, disk full, storage corrupted. Whatever happens, nothing half-written is ever
listed or counted, the daemon keeps running, the failure is loud (log line with stage, metric), and
the next run succeeds.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from faultkit import MiB, fill, host_port, s3_env, s3_proxy, spool_files, wait_for

from conftest import Bucket, Cluster, DaemonFactory, DaemonProcess, config_env, run_cli
from etcd_backup.model import new_snapshot_id, rfc3339, utcnow
from faultproxy import FaultProxy, Request, Rule, upload_part

pytestmark = pytest.mark.timeout(180)

TOKEN = "daemon-faults-token"
QUIET = {"verify__restore_drill": "off", "schedule__on_member_change": "false"}
SCHEDULED = 'etcd_backup_snapshots_total{reason="schedule"}'


def failures(d: DaemonProcess, stage: str) -> float:
    return d.metrics()[f'etcd_backup_failures_total{{stage="{stage}"}}']


def manifest_put(req: Request) -> bool:
    return req.method == "PUT" and req.target.split("?")[0].endswith(".json")


def list_request(req: Request) -> bool:
    return req.method == "GET" and "list-type=2" in req.target


def data_objects(bucket: Bucket) -> list[str]:
    return [k for k in bucket.keys() if not k.endswith(".json")]  # noqa: SIM118 - a list, not a dict


def manifest_objects(bucket: Bucket) -> list[str]:
    return [k for k in bucket.keys() if k.endswith(".json")]  # noqa: SIM118


def direct(env: dict[str, str], bucket: Bucket) -> dict[str, str]:
    """The same configuration, talking to S3 without the proxy (what an operator would run)."""
    return {**env, "ETCD_BACKUP_STORAGE__ENDPOINT_URL": bucket.server.endpoint}


def listed(env: dict[str, str]) -> list[dict[str, Any]]:
    r = run_cli("list", "--output", "json", env=env)
    assert r.returncode == 0, r.stderr
    return list(json.loads(r.stdout))


def event_seen(d: DaemonProcess, event: str, **fields: Any) -> dict[str, Any] | None:
    for e in d.logs():
        if e.get("event", "").startswith(event) and all(
            (v(e.get(k)) if callable(v) else e.get(k) == v) for k, v in fields.items()
        ):
            return e
    return None


def send_post(d: DaemonProcess, body: bytes) -> socket.socket:
    """A POST written completely before this returns (so it is known to be in flight); read later."""
    sock = socket.create_connection(("127.0.0.1", d.port), timeout=150)
    head = (
        f"POST /v1/snapshots HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    sock.sendall(head.encode() + body)
    return sock


def read_response(sock: socket.socket) -> tuple[int, Any]:
    data = b""
    with sock:
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


# --- 1. SIGKILL mid-upload ---------------------------------------------------------------------


def test_sigkill_mid_upload_s3_leaves_only_debris_the_next_start_cleans(
    etcd_single: Cluster, s3_bucket: Bucket, tmp_path: Path, start_daemon: DaemonFactory
) -> None:
    fill(etcd_single, 30)
    spool = tmp_path / "spool"
    proxy = s3_proxy(s3_bucket)
    env = s3_env(etcd_single, s3_bucket, spool, proxy.url, storage__part_size="5MiB", schedule__interval="1h", **QUIET)
    operator = direct(env, s3_bucket)  # default debris_age (24h)
    try:
        # Kill 1: parts in flight (held by the proxy) -> an unfinished multipart upload.
        proxy.add_rule(Rule("hold", match=upload_part))
        d1 = start_daemon(env)
        wait_for("the first UploadPart", lambda: proxy.actions("hold"), timeout=60)
        d1.kill()
        assert len(s3_bucket.uploads()) == 1 and s3_bucket.keys() == []
        # Kill 2: data object complete, manifest PUT held -> a data object without manifest.
        proxy.clear_rules()
        proxy.rearm()
        held = len(proxy.actions("hold"))
        proxy.add_rule(Rule("hold", match=manifest_put, count=1))
        d2 = start_daemon(env)
        wait_for("the manifest PUT", lambda: len(proxy.actions("hold")) > held, timeout=60)
        d2.kill()
        killed = time.monotonic()
    finally:
        proxy.close()
    data_keys = data_objects(s3_bucket)
    assert len(data_keys) == 1 and not manifest_objects(s3_bucket)
    orphan_id = data_keys[0].rsplit("/", 1)[1].split(".")[0]

    # Nothing half-written is listed, verified, fetched, restored or counted by retention.
    assert listed(operator) == []
    assert run_cli("verify", "latest", env=operator).returncode != 0
    assert run_cli("verify", orphan_id, env=operator).returncode != 0
    assert run_cli("fetch", "latest", "--to", str(tmp_path / "f.db"), env=operator).returncode != 0
    assert not (tmp_path / "f.db").exists()
    r = run_cli(
        "restore",
        "single",
        "--snapshot",
        "latest",
        "--name",
        "x",
        "--peer-url",
        "http://127.0.0.1:2380",
        "--data-dir",
        str(tmp_path / "restored"),
        env=operator,
    )
    assert r.returncode != 0 and not (tmp_path / "restored").exists()
    r = run_cli("prune", "--dry-run", "--output", "json", env=operator)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["deleted"] == [] and report["kept"] == []
    assert report["debris"] == []  # younger than debris_age: may still be in flight, left alone
    assert len(s3_bucket.uploads()) == 1

    # The next start (debris older than debris_age) cleans up, then snapshots successfully.
    wait_for("the debris to age past debris_age", lambda: time.monotonic() - killed > 1.5, timeout=10)
    d3 = start_daemon({**operator, "ETCD_BACKUP_RETENTION__DEBRIS_AGE": "1s"})
    d3.wait_until(lambda: d3.metrics()[SCHEDULED] >= 1, 90, "the first snapshot after restart")
    d3.wait_until(lambda: len(s3_bucket.keys()) == 2 and not s3_bucket.uploads(), 30, "debris removed")
    removed = {
        (e.get("kind"), e.get("key", "").rsplit("/", 1)[-1].split(".")[0])
        for e in d3.logs()
        if e.get("event") == "debris removed"
    }
    assert ("orphan", orphan_id) in removed and any(kind == "partial" for kind, _ in removed), removed
    (m,) = listed(operator)
    assert run_cli("verify", m["id"], env=operator).returncode == 0
    d3.wait_until(lambda: spool_files(spool) == [], 10, "the killed runs' spool files removed")
    assert d3.alive()


def test_sigkill_mid_spool_file_store(etcd_single: Cluster, tmp_path: Path, start_daemon: DaemonFactory) -> None:
    fill(etcd_single, 30)
    store = tmp_path / "store"
    holder: list[DaemonProcess] = []

    def kill() -> None:
        holder[0].kill()

    # The kill lands once 8 MiB of the snapshot stream went through: mid-spool, nothing linked yet.
    etcd_proxy = FaultProxy(host_port(etcd_single.endpoints[0]), on_server_bytes=(8 * MiB, kill))
    env = config_env(etcd_single, f"file://{store}", schedule__interval="1h", **QUIET)
    try:
        holder.append(start_daemon({**env, "ETCD_BACKUP_ETCD__ENDPOINTS": etcd_proxy.url}, wait=False))
        wait_for("the kill", lambda: etcd_proxy.triggered.is_set() and not holder[0].alive(), timeout=60)
    finally:
        etcd_proxy.close()
    debris = [p for p in store.rglob("*") if p.is_file()]
    assert debris and all(p.parent.name == ".spool" for p in debris), debris
    assert listed(env) == []

    # Debris younger than debris_age may belong to a run still in progress: let it age first.
    last_write = max(p.stat().st_mtime for p in debris)
    wait_for("the debris to age past debris_age", lambda: time.time() - last_write > 1.5, timeout=10)
    d = start_daemon({**env, "ETCD_BACKUP_RETENTION__DEBRIS_AGE": "1s"})
    d.wait_until(lambda: d.metrics()[SCHEDULED] >= 1, 60, "the first snapshot after restart")
    d.wait_until(lambda: not any(p.exists() for p in debris), 10, "spool debris removed")
    files = sorted(p.relative_to(store).as_posix() for p in store.rglob("*") if p.is_file())
    (m,) = listed(env)
    assert files == sorted([m["object_key"], f"snapshots/{m['id']}.json"])
    assert run_cli("verify", m["id"], env=env).returncode == 0


# --- 2. concurrency ------------------------------------------------------------------------------


def test_prune_and_post_racing_a_scheduled_snapshot(
    etcd_single: Cluster, s3_bucket: Bucket, tmp_path: Path, start_daemon: DaemonFactory
) -> None:
    fill(etcd_single, 12)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    proxy = s3_proxy(s3_bucket)
    env = s3_env(
        etcd_single,
        s3_bucket,
        tmp_path / "spool",
        proxy.url,
        storage__part_size="5MiB",
        schedule__interval="1h",
        server__token_file=str(token_file),
        **QUIET,
    )
    operator = direct(env, s3_bucket)

    def prune_deletes_nothing() -> None:
        # Default debris_age (24h); moto reports every upload as initiated in 2010.
        r = run_cli("prune", "--output", "json", env=operator)
        assert r.returncode == 0, r.stderr
        report = json.loads(r.stdout)
        assert report["deleted"] == [] and report["debris"] == [], report

    try:
        proxy.add_rule(Rule("hold", match=upload_part))
        d = start_daemon(env)
        wait_for("the scheduled snapshot's first part", lambda: proxy.actions("hold"), timeout=60)
        prune_deletes_nothing()
        assert len(s3_bucket.uploads()) == 1, "prune aborted the upload of a snapshot being written"
        posted = send_post(d, b'{"reason": "racing the schedule"}')  # waits for the scheduled one
        proxy.clear_rules()  # releases the held parts
        status, manual = read_response(posted)
        assert status == 201, manual
        d.wait_until(lambda: d.metrics()[SCHEDULED] >= 1, 30, "the scheduled snapshot")

        # Data object complete, manifest not written yet: prune must not take it for debris.
        proxy.rearm()
        held = len(proxy.actions("hold"))
        proxy.add_rule(Rule("hold", match=manifest_put, count=1))
        posted = send_post(d, b'{"reason": "manifest held"}')
        wait_for("the held manifest PUT", lambda: len(proxy.actions("hold")) > held, timeout=60)
        in_flight = data_objects(s3_bucket)
        assert len(in_flight) == 3
        prune_deletes_nothing()
        assert data_objects(s3_bucket) == in_flight
        proxy.release()
        status, held = read_response(posted)
        assert status == 201, held
    finally:
        proxy.close()
    snapshots = listed(operator)
    assert len(snapshots) == 3 and len({m["id"] for m in snapshots}) == 3
    assert {m["reason"] for m in snapshots} == {"schedule", "racing the schedule", "manifest held"}
    assert len({m["object_key"] for m in snapshots}) == 3
    for m in snapshots:
        v = run_cli("verify", m["id"], env=operator)
        assert v.returncode == 0, v.stderr
    assert len(s3_bucket.keys()) == 6 and s3_bucket.uploads() == []


# --- 3. storage gone, listing failing ---------------------------------------------------------------


def test_s3_gone_then_back_and_failed_listing_deletes_nothing(
    etcd_single: Cluster, s3_bucket: Bucket, tmp_path: Path, start_daemon: DaemonFactory
) -> None:
    etcd_single.put("/app/k", "v")
    proxy = s3_proxy(s3_bucket)
    env = s3_env(
        etcd_single,
        s3_bucket,
        tmp_path / "spool",
        proxy.url,
        storage__timeout="1s",
        schedule__interval="2s",
        retention__keep_last="2",
        retention__hourly="0",
        retention__daily="0",
        retention__weekly="0",
        retention__monthly="0",
        **QUIET,
    )
    try:
        d = start_daemon(env)
        d.wait_until(lambda: d.metrics()[SCHEDULED] >= 1, 30, "a first snapshot")
        upload_failures = failures(d, "upload")

        proxy.go_away()
        d.wait_until(lambda: event_seen(d, "snapshot failed", stage="upload"), 60, "a failure log line with stage")
        d.wait_until(lambda: failures(d, "upload") > upload_failures, 10, "the upload failure counted")

        def stale() -> bool:
            status, body = d.get_json("/readyz")
            return status == 503 and "newest successful snapshot is" in body["reason"]

        d.wait_until(stale, 30, "/readyz 503 with a stale backup")
        assert "storage:" in d.get_json("/readyz")[1]["reason"]
        assert d.alive() and d.request("GET", "/healthz")[0] == 200

        taken = d.metrics()[SCHEDULED]
        proxy.come_back()
        d.wait_until(lambda: d.metrics()[SCHEDULED] > taken, 60, "a snapshot after S3 came back")
        d.wait_until(lambda: d.request("GET", "/readyz")[0] == 200, 30, "/readyz 200 again")

        # Listings fail (uploads work): snapshots pile up, retention deletes nothing meanwhile.
        d.wait_until(lambda: len(listed(direct(env, s3_bucket))) == 2, 30, "retention at keep_last 2")
        proxy.add_rule(Rule("slowdown", match=list_request))
        d.wait_until(
            lambda: event_seen(d, "retention skipped: listing failed", stage="retention"),
            60,
            "retention skipped after a failed listing",
        )
        d.wait_until(lambda: len(manifest_objects(s3_bucket)) >= 4, 60, "snapshots kept while listings fail")
        proxy.clear_rules()
        d.wait_until(lambda: len(listed(direct(env, s3_bucket))) == 2, 60, "retention caught up")
        assert d.alive()
    finally:
        proxy.close()
    latest = run_cli("verify", "latest", env=direct(env, s3_bucket))
    assert latest.returncode == 0, latest.stderr


# --- 4. disk full while spooling ---------------------------------------------------------------


def test_spool_disk_full_with_the_daemon(
    etcd_single: Cluster, s3_bucket: Bucket, tiny_fs: Path, start_daemon: DaemonFactory
) -> None:
    fill(etcd_single, 6)
    spool = tiny_fs / "spool"
    env = s3_env(etcd_single, s3_bucket, spool, storage__part_size="5MiB", schedule__interval="2s", **QUIET)
    d = start_daemon(env)
    failed = d.wait_until(
        lambda: event_seen(d, "snapshot failed", error=lambda e: "full" in str(e)), 60, "a spool-full failure"
    )
    assert str(spool) in failed["error"] and "no space left" in failed["error"].lower(), failed
    d.wait_until(lambda: failures(d, "snapshot") >= 1, 10, "the failure counted")
    assert d.alive()
    # The failed attempt left no object and no upload (the next attempt may already be under way).
    assert s3_bucket.keys() == []
    assert not [u for u in s3_bucket.uploads() if failed["snapshot"] in u["Key"]]
    d.wait_until(lambda: spool_files(spool) == [], 10, "an empty spool between attempts")
    r = subprocess.run(["mount", "-o", "remount,size=64m", str(tiny_fs)], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    d.wait_until(lambda: d.metrics()[SCHEDULED] >= 1, 60, "a snapshot once there is room")
    assert d.alive() and len(s3_bucket.keys()) >= 2 and s3_bucket.uploads() == []


# --- 5. corrupted storage ----------------------------------------------------------------------------


def test_corrupted_storage_never_crashes_the_daemon(
    etcd_single: Cluster, tmp_path: Path, start_daemon: DaemonFactory
) -> None:
    for i in range(20):
        etcd_single.put(f"/app/{i}", "v" * 100)
    store = tmp_path / "store"
    env = config_env(
        etcd_single,
        f"file://{store}",
        schedule__interval="1h",
        verify__restore_drill="2s",
        schedule__on_member_change="false",
    )
    r = run_cli("snapshot", "--output", "json", env=env)
    assert r.returncode == 0, r.stderr
    good = json.loads(r.stdout)
    snaps = store / "snapshots"
    base = utcnow()

    def copy(n: int, data: bytes | None, **changes: Any) -> str:
        """The good snapshot again under a newer id (n ms later), its data replaced or left out."""
        created = base + timedelta(milliseconds=n)
        sid = new_snapshot_id(created)
        suffix = good["object_key"].split(".", 1)[1]
        doc = {**good, "id": sid, "object_key": f"snapshots/{sid}.{suffix}", "created_at": rfc3339(created), **changes}
        if data is not None:
            (store / doc["object_key"]).write_bytes(data)
        (snaps / f"{sid}.json").write_text(json.dumps(doc))
        return sid

    original = (store / good["object_key"]).read_bytes()
    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 0x01
    (snaps / f"{new_snapshot_id(base + timedelta(milliseconds=1))}.json").write_text("{not json")
    copy(2, None)  # names a data object that is not there
    other = copy(3, original, cluster_id="deadbeefdeadbeef")
    broken = copy(4, bytes(flipped))  # the newest, and it looks verified

    d = start_daemon(env)
    d.wait_until(lambda: event_seen(d, "RESTORE DRILL FAILED", snapshot=broken), 60, "the failed drill")
    metrics = d.metrics()
    assert metrics["etcd_backup_last_drill_success"] == 0
    assert metrics['etcd_backup_failures_total{stage="drill"}'] >= 1
    assert metrics["etcd_backup_manifest_problems"] == 2
    assert metrics["etcd_backup_snapshots_stored"] == 3
    status, body = d.get_json("/v1/snapshots")
    assert status == 200 and {m["id"] for m in body} == {good["id"], other, broken}
    recorded = json.loads((snaps / f"{broken}.json").read_text())["verification"]["drill"]
    assert recorded["ok"] is False, recorded
    assert d.alive() and d.request("GET", "/healthz")[0] == 200

    # A new good snapshot becomes the drill target, and the drill passes again.
    r = run_cli("snapshot", "--output", "json", env=env)
    assert r.returncode == 0, r.stderr
    fresh = json.loads(r.stdout)["id"]
    d.wait_until(lambda: event_seen(d, "restore drill recorded", snapshot=fresh), 60, "a passing drill")
    assert d.metrics()["etcd_backup_last_drill_success"] == 1
    assert d.alive()


def test_a_snapshot_a_drill_finds_broken_no_longer_makes_the_daemon_ready(
    etcd_single: Cluster, tmp_path: Path, start_daemon: DaemonFactory
) -> None:
    """The only snapshot, taken by the daemon itself, does not restore (a byte flipped in storage):
    once the drill says so, /readyz must stop calling the backups fresh; it did not, since the
    snapshot had counted as a success when it was committed."""
    etcd_single.put("/app/k", "v" * 100)
    store = tmp_path / "store"
    env = config_env(
        etcd_single,
        f"file://{store}",
        schedule__interval="1h",
        verify__restore_drill="2s",
        delta__interval="off",
        schedule__on_member_change="false",
    )
    d = start_daemon(env)
    d.wait_until(lambda: event_seen(d, "restore drill recorded"), 60, "the first drill passing")
    assert d.request("GET", "/readyz")[0] == 200
    (data,) = (store / "snapshots").glob("*.db")
    flipped = bytearray(data.read_bytes())
    flipped[len(flipped) // 2] ^= 0x01
    data.write_bytes(bytes(flipped))
    d.wait_until(lambda: event_seen(d, "RESTORE DRILL FAILED"), 60, "the failed drill")
    d.wait_until(lambda: d.request("GET", "/readyz")[0] == 503, 60, "not ready once the drill failed")
    _, body = d.get_json("/readyz")
    assert any("snapshot" in reason for reason in body["reasons"]), body
