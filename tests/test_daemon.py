"""`etcd-backup run` as a real process: schedule, retention, HTTP, metrics, systemd notify, SIGTERM."""

from __future__ import annotations

import json
import secrets
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from conftest import Bucket, Cluster, ClusterFactory, DaemonFactory, DaemonProcess, config_env, run_cli
from etcd_backup.etcdproc import free_port
from faultproxy import FaultProxy, Rule, upload_part

pytestmark = pytest.mark.timeout(180)

TOKEN = "s3cret-token-for-tests"
KEEP_ONLY_LAST_3 = {
    "retention__keep_last": "3",
    "retention__hourly": "0",
    "retention__daily": "0",
    "retention__weekly": "0",
    "retention__monthly": "0",
}


def manifests_in(store: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((store / "snapshots").glob("*.json"))]


def assert_every_manifest_has_its_data(store: Path) -> None:
    for m in manifests_in(store):
        data = store / m["object_key"]
        assert data.is_file() and data.stat().st_size == m["object_size"], m["id"]


class NotifySocket:
    """A stand-in for systemd's notification socket (abstract namespace, like systemd's own)."""

    def __init__(self) -> None:
        self.name = f"@etcd-backup-test-{secrets.token_hex(6)}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name[1:])
        self.sock.settimeout(0.2)
        self.messages: list[str] = []

    def drain(self) -> list[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                return self.messages

    def seen(self, text: str) -> bool:
        return any(text in m for m in self.drain())


def post(d: DaemonProcess, body: bytes, token: str | None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    status, raw = d.request("POST", "/v1/snapshots", body, headers)
    return status, json.loads(raw) if raw else None


@dataclass
class Running:
    """One daemon on a 2 s schedule, shared by the tests of TestOneDaemon (in this order)."""

    cluster: Cluster
    daemon: DaemonProcess
    store: Path
    notify: NotifySocket


@pytest.fixture(scope="class")
def running(
    class_etcd_cluster: ClusterFactory, class_start_daemon: DaemonFactory, tmp_path_factory: pytest.TempPathFactory
) -> Running:
    cluster = class_etcd_cluster(1)
    cluster.put("/app/a", "1")
    tmp = tmp_path_factory.mktemp("one-daemon")
    store = tmp / "store"
    token_file = tmp / "token"
    token_file.write_text(TOKEN + "\n")  # a trailing newline is fine
    notify = NotifySocket()
    env = config_env(
        cluster,
        f"file://{store}",
        schedule__interval="2s",
        verify__restore_drill="off",
        server__token_file=str(token_file),
        **KEEP_ONLY_LAST_3,
    )
    env.update(NOTIFY_SOCKET=notify.name, WATCHDOG_USEC="1000000")
    d = class_start_daemon(env)
    d.wait_until(
        lambda: d.metrics().get('etcd_backup_snapshots_total{reason="schedule"}', 0) >= 5,
        40,
        "five scheduled snapshots",
    )
    return Running(cluster, d, store, notify)


class TestOneDaemon:
    def test_retention_after_each_run_keeps_the_newest_three(self, running: Running) -> None:
        d, store = running.daemon, running.store
        d.wait_until(lambda: len(manifests_in(store)) == 3, 10, "retention down to keep_last 3")
        assert {m["reason"] for m in manifests_in(store)} == {"schedule"}
        assert any(
            e.get("event") == "snapshot deleted" and e.get("reason", "").startswith("outside policy") for e in d.logs()
        )

    def test_live_and_ready(self, running: Running) -> None:
        d = running.daemon
        assert d.request("GET", "/healthz")[0] == 200
        d.wait_until(lambda: d.request("GET", "/readyz")[0] == 200, 10, "/readyz 200")
        assert d.get_json("/readyz") == (200, {"ready": True})
        assert d.metrics()["etcd_backup_ready"] == 1  # what /readyz answers now, not at the last check

    def test_metrics_of_the_newest_snapshot(self, running: Running) -> None:
        metrics = running.daemon.metrics()
        assert metrics["etcd_backup_last_success_timestamp_seconds"] > time.time() - 30
        assert metrics["etcd_backup_snapshot_duration_seconds"] > 0
        assert metrics["etcd_backup_snapshot_size_bytes"] > 0
        assert metrics['etcd_backup_failures_total{stage="snapshot"}'] == 0
        assert metrics["etcd_backup_snapshots_stored"] >= 3
        assert metrics["etcd_backup_is_leader"] == 1
        assert metrics["etcd_backup_revision_lag"] == 0

    def test_get_needs_no_token_and_lists_newest_first(self, running: Running) -> None:
        status, listed = running.daemon.get_json("/v1/snapshots")
        assert status == 200 and len(listed) >= 3
        assert [m["created_at"] for m in listed] == sorted((m["created_at"] for m in listed), reverse=True)

    def test_post_needs_the_token(self, running: Running) -> None:
        d = running.daemon
        assert post(d, b'{"reason": "x"}', None)[0] == 401
        assert post(d, b'{"reason": "x"}', "wrong-token")[0] == 401
        assert post(d, b'{"reason": "x"}', TOKEN[:-1])[0] == 401

    def test_post_rejects_bad_bodies(self, running: Running) -> None:
        d = running.daemon
        status, err = post(d, b"{not json", TOKEN)
        assert status == 400 and "JSON" in err["error"]
        assert post(d, b'{"reason": 5}', TOKEN)[0] == 400
        assert post(d, b'{"pin": "yes"}', TOKEN)[0] == 400
        assert post(d, b" " * (65 * 1024), TOKEN)[0] == 413

    def test_post_takes_a_verified_pinned_snapshot(self, running: Running) -> None:
        d = running.daemon
        status, manifest = post(d, b'{"reason": "before upgrade", "pin": true}', TOKEN)
        assert status == 201, manifest
        assert manifest["reason"] == "before upgrade" and manifest["pinned"] is True
        assert manifest["verification"]["hash"]["ok"] and manifest["verification"]["structure"]["ok"]
        assert (running.store / manifest["object_key"]).is_file()
        assert TOKEN not in d.log_path.read_text()

    def test_member_list_change_triggers_a_snapshot(self, running: Running) -> None:
        running.cluster.etcdctl("member", "add", "learner1", "--learner", f"--peer-urls=http://127.0.0.1:{free_port()}")
        running.daemon.wait_until(
            lambda: any(m["reason"] == "member-change" for m in manifests_in(running.store)),
            20,
            "member-change snapshot",
        )

    def test_log_lines_name_the_snapshot_and_stage(self, running: Running) -> None:
        stored = [e for e in running.daemon.logs() if e.get("event") == "snapshot stored"]
        assert stored and all(e.get("snapshot") and e.get("stage") == "commit" and "seconds" in e for e in stored)

    def test_systemd_ready_and_watchdog(self, running: Running) -> None:
        assert running.notify.seen("READY=1")
        running.daemon.wait_until(lambda: running.notify.seen("WATCHDOG=1"), 5, "watchdog ping")

    def test_sigterm_stops_within_15s_leaving_every_manifest_whole(self, running: Running) -> None:
        rc, took = running.daemon.terminate()
        assert rc == 0 and took < 15
        assert running.notify.seen("STOPPING=1")
        assert_every_manifest_has_its_data(running.store)


def test_sigterm_during_upload_leaves_nothing_half_done(
    etcd_single: Cluster, s3_bucket: Bucket, start_daemon: DaemonFactory
) -> None:
    import etcd3

    host, port = etcd_single.endpoints[0].removeprefix("http://").split(":")
    client = etcd3.client(host=host, port=int(port))
    blob = secrets.token_bytes(1024 * 1024)
    for i in range(64):
        client.put(f"/big/{i:03d}", blob)
    client.close()
    # No snapshot in storage yet: the daemon takes one right at start (catch-up). Each upload part
    # waits a second in a proxy (a slow store), so the stop surely lands while the upload is under way.
    s3 = urlparse(s3_bucket.server.endpoint)
    proxy = FaultProxy((s3.hostname or "127.0.0.1", s3.port or 80), http=True)
    proxy.add_rule(Rule("delay", upload_part, seconds=1.0))
    env = {
        **config_env(
            etcd_single,
            schedule__interval="1h",
            verify__restore_drill="off",
            storage__part_size="5MiB",
            storage__concurrency="2",
        ),
        **s3_bucket.env(),
        "ETCD_BACKUP_STORAGE__ENDPOINT_URL": proxy.url,
    }
    try:
        d = start_daemon(env)
        d.wait_until(lambda: s3_bucket.uploads() and any(a == "delay" for _, _, a in proxy.seen), 30, "a slow part")
        rc, took = d.terminate()
        assert rc == 0 and took < 15, d.log_path.read_text()[-2000:]
        assert any("cancelled" in str(e.get("error", "")) for e in d.logs()), d.log_path.read_text()[-2000:]
        stored = s3_bucket.keys()
        assert [k for k in stored if k.endswith(".json")] == []
        d.wait_until(lambda: s3_bucket.uploads() == [], 10, "the upload aborted")
    finally:
        proxy.close()


def test_unreachable_etcd_is_live_but_not_ready(tmp_path: Path, start_daemon: DaemonFactory) -> None:
    env = config_env(
        None,
        f"file://{tmp_path}/store",
        etcd__endpoints=f"http://127.0.0.1:{free_port()}",
        etcd__dial_timeout="1s",
        schedule__interval="4s",
        verify__restore_drill="off",
    )
    d = start_daemon(env)
    assert d.request("GET", "/healthz")[0] == 200
    status, body = d.get_json("/readyz")
    assert status == 503 and body["ready"] is False
    assert d.metrics()["etcd_backup_ready"] == 0
    d.wait_until(lambda: "etcd" in d.get_json("/readyz")[1]["reason"], 15, "readyz naming etcd")
    assert "no successful snapshot yet" in d.get_json("/readyz")[1]["reason"]
    # Failed runs are counted and retried; the schedule keeps going.
    d.wait_until(lambda: d.metrics()['etcd_backup_failures_total{stage="snapshot"}'] >= 2, 20, "retries")
    assert d.request("GET", "/nope")[0] == 404
    assert d.request("DELETE", "/v1/snapshots")[0] == 405
    rc, took = d.terminate()
    assert rc == 0 and took < 15


def test_an_outage_is_logged_when_it_starts_and_ends_not_at_every_health_check(
    etcd_single: Cluster, tmp_path: Path, start_daemon: DaemonFactory
) -> None:
    """One endpoint down, then both, then both back: a warning for each thing that stops answering
    and a line when it answers again, however many health checks (one a second here) ran between."""
    upstream = urlparse(etcd_single.endpoints[0])
    first, second = (FaultProxy((upstream.hostname or "127.0.0.1", upstream.port or 2379)) for _ in range(2))
    env = config_env(
        etcd_single,
        f"file://{tmp_path}/store",
        etcd__endpoints=f"{first.url},{second.url}",
        etcd__dial_timeout="1s",
        schedule__interval="2s",
        verify__restore_drill="off",
        log__level="debug",
    )

    def health(d: DaemonProcess, event: str) -> list[dict[str, Any]]:
        # The periodic check ("refresh") and the one at start (no job); snapshot runs warn apart.
        return [e for e in d.logs() if e.get("event") == event and e.get("job") in ("refresh", None)]

    def checks_skipping(d: DaemonProcess, n: int) -> bool:
        skips = [e for e in health(d, "etcd endpoint skipped") if e["level"] == "debug" and e.get("job")]
        return len(skips) >= n

    try:
        d = start_daemon(env)
        first.go_away()
        d.wait_until(lambda: checks_skipping(d, 3), 30, "three health checks passing over the first endpoint")
        skipped = [e for e in health(d, "etcd endpoint skipped") if e["level"] == "warning"]
        assert [e["endpoint"] for e in skipped] == [first.url]
        assert health(d, "etcd unreachable") == []
        second.go_away()
        d.wait_until(lambda: d.metrics()['etcd_backup_failures_total{stage="etcd"}'] >= 3, 30, "three failed checks")
        assert [e["level"] for e in health(d, "etcd unreachable")] == ["warning"]
        assert "no healthy etcd endpoint" in health(d, "etcd unreachable")[0]["reason"]
        skipped = [e for e in health(d, "etcd endpoint skipped") if e["level"] == "warning"]
        assert [e["endpoint"] for e in skipped] == [first.url, second.url]
        first.come_back()
        second.come_back()
        d.wait_until(lambda: health(d, "etcd reachable again"), 30, "etcd answering again")
        d.wait_until(lambda: d.get_json("/readyz")[0] == 200, 30, "ready again")
        assert [e["level"] for e in health(d, "etcd reachable again")] == ["info"]
        # The first answers again and is taken; the second, not needed, is asked on its own.
        d.wait_until(lambda: len(health(d, "etcd endpoint answers again")) == 2, 30, "both endpoints answering")
        assert sorted(e["endpoint"] for e in health(d, "etcd endpoint answers again")) == sorted(
            [first.url, second.url]
        )
        assert len(health(d, "etcd unreachable")) == 1
    finally:
        first.close()
        second.close()


def test_non_loopback_listen_needs_a_token(tmp_path: Path) -> None:
    env = config_env(None, f"file://{tmp_path}/store", server__listen=f"0.0.0.0:{free_port()}")
    r = run_cli("run", env=env, timeout=30)
    assert r.returncode == 2
    assert "token is required" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_missing_token_file_is_config_error(tmp_path: Path) -> None:
    env = config_env(None, f"file://{tmp_path}/store", server__token_file=str(tmp_path / "no-token"))
    r = run_cli("run", env=env, timeout=30)
    assert r.returncode == 2
    assert "no-token" in r.stderr and "Traceback" not in r.stderr


def test_cron_schedule_catches_up_at_start(etcd_single: Cluster, tmp_path: Path, start_daemon: DaemonFactory) -> None:
    store = tmp_path / "store"
    env = config_env(
        etcd_single,
        f"file://{store}",
        schedule__cron="0 */6 * * *",
        schedule__jitter="30s",
        verify__restore_drill="off",
    )
    d = start_daemon(env)
    # Nothing in storage is younger than a period (6 h), so the first snapshot does not wait for 00/06/12/18h.
    d.wait_until(lambda: len(manifests_in(store)) == 1, 20, "catch-up snapshot")
    assert manifests_in(store)[0]["reason"] == "schedule"
    d.wait_until(lambda: d.request("GET", "/readyz")[0] == 200, 10, "ready")
    assert d.metrics()["etcd_backup_ready"] == 1  # at once, not at the next check (30 s here)
    rc, took = d.terminate()
    assert rc == 0 and took < 15
    # Restarted with a fresh snapshot in storage: no second catch-up.
    d2 = start_daemon(env)
    d2.wait_until(lambda: d2.request("GET", "/readyz")[0] == 200, 10, "ready after restart")
    deadline = time.monotonic() + 2  # a catch-up would start right away; give it the chance to show
    while time.monotonic() < deadline:
        assert not any(e.get("event") == "snapshot started" for e in d2.logs())
        time.sleep(0.2)
    assert len(manifests_in(store)) == 1
    assert d2.terminate()[0] == 0


def test_a_store_directory_removed_under_the_daemon_is_not_created_again(
    etcd_single: Cluster, tmp_path: Path, start_daemon: DaemonFactory
) -> None:
    # As a backup mount that goes away: writing on into a fresh empty directory beneath it would
    # hide the old backups and fill another filesystem. The runs fail (counted) until it is back.
    store = tmp_path / "store"
    env = config_env(
        etcd_single, f"file://{store}", schedule__interval="2s", verify__restore_drill="off", delta__interval="off"
    )
    d = start_daemon(env)
    d.wait_until(lambda: len(manifests_in(store)) >= 1, 20, "first snapshot")
    shutil.rmtree(store)

    def failed() -> float:
        return sum(v for k, v in d.metrics().items() if k.startswith("etcd_backup_failures_total{"))

    before = failed()
    d.wait_until(lambda: failed() >= before + 2, 30, "failed runs")
    assert not store.exists()
    assert any("store directory is gone" in str(e.get("error", "")) for e in d.logs())
    d.wait_until(lambda: d.request("GET", "/readyz")[0] == 503, 40, "not ready")
    store.mkdir()  # put back: the next run stores again
    d.wait_until(lambda: len(manifests_in(store)) >= 1, 20, "snapshot once it is back")
    assert d.terminate()[0] == 0


def test_a_fresh_snapshot_of_another_cluster_does_not_postpone_the_first(
    etcd_cluster: ClusterFactory, tmp_path: Path, start_daemon: DaemonFactory
) -> None:
    """After `restore cluster` the cluster has a new id: the old cluster's snapshot, however
    young, backs up nothing that runs, so the daemon takes one of this cluster at start."""
    old, new = etcd_cluster(1), etcd_cluster(1)
    store = tmp_path / "store"
    r = run_cli("snapshot", env=config_env(old, f"file://{store}"))
    assert r.returncode == 0, r.stderr
    env = config_env(
        new, f"file://{store}", schedule__interval="1h", verify__restore_drill="off", delta__interval="off"
    )
    d = start_daemon(env)
    d.wait_until(lambda: len(manifests_in(store)) == 2, 30, "a snapshot of the running cluster at start")
    clusters = {m["cluster_id"] for m in manifests_in(store)}
    assert len(clusters) == 2
    d.wait_until(lambda: d.request("GET", "/readyz")[0] == 200, 10, "ready")
    assert d.terminate()[0] == 0


def test_a_store_that_never_answers_does_not_keep_the_daemon_from_starting(
    etcd_single: Cluster, tmp_path: Path, start_daemon: DaemonFactory
) -> None:
    """Start-up checks of storage are bounded (two request timeouts): systemd's start timeout and
    a liveness probe must see the daemon up, saying that storage is the problem."""
    import socket

    from conftest import AWS_ENV

    with socket.socket() as hung:  # accepts connections (the kernel's backlog), never answers
        hung.bind(("127.0.0.1", 0))
        hung.listen(16)
        env = {
            **config_env(etcd_single, "s3://never/answers", verify__restore_drill="off", delta__interval="off"),
            **AWS_ENV,
            "ETCD_BACKUP_STORAGE__ENDPOINT_URL": f"http://127.0.0.1:{hung.getsockname()[1]}",
            "ETCD_BACKUP_STORAGE__TIMEOUT": "5s",  # five attempts: over 25 s per request
        }
        d = start_daemon(env, wait=False)
        d.wait_serving(timeout=45)
        assert d.request("GET", "/healthz")[0] == 200
        assert d.get_json("/readyz")[0] == 503
        d.wait_until(lambda: any(e.get("event") == "daemon started" for e in d.logs()), 30, "the daemon started")
        said = [e for e in d.logs() if e.get("event") == "storage did not answer at start; starting all the same"]
        assert len(said) == 2  # the ping before HTTP, the first health check before the schedule
        # A request stuck in the store outlasts the stop budget: the process still ends.
        assert d.terminate(timeout=40)[0] == 0
