"""Hostile HTTP clients against the daemon's endpoints, and secrets never leaving the daemon.

Slow clients neither block other requests nor hold a connection past the request budget; bad
bodies get a 4xx with one JSON line; random bodies never get a 500 or a dropped connection; a
wrong token gets 401 and no token (right or wrong) reaches the log.
"""

from __future__ import annotations

import json
import os
import secrets
import select
import socket
import threading
import time
import urllib.error
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from faultkit import s3_env, s3_proxy
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import AWS_ENV, Bucket, Cluster, DaemonFactory, DaemonProcess, config_env
from etcd_backup.httpapi import MAX_BODY, REQUEST_TIMEOUT

pytestmark = pytest.mark.timeout(180)

TOKEN = f"hostile-{secrets.token_hex(12)}"
ALLOWED = {201, 400, 401, 409, 413, 503}


@pytest.fixture
def daemon(etcd_single: Cluster, tmp_path: Path, start_daemon: DaemonFactory) -> Iterator[DaemonProcess]:
    """The daemon on a directory store, POST token set, debug logging (the most it would ever log)."""
    etcd_single.put("/app/k", "v")
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    env = config_env(
        etcd_single,
        f"file://{tmp_path / 'store'}",
        schedule__interval="1h",
        verify__restore_drill="off",
        schedule__on_member_change="false",
        server__token_file=str(token_file),
        log__level="debug",
    )
    yield start_daemon(env)


def raw(d: DaemonProcess, request: bytes, timeout: float = 30) -> tuple[int, bytes]:
    """Send bytes as they are, then end the sending side; the status and body of the answer."""
    with socket.create_connection(("127.0.0.1", d.port), timeout=timeout) as sock:
        try:
            sock.sendall(request)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may answer (413) and close before taking everything
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def post_raw(d: DaemonProcess, body: bytes, token: str | None = TOKEN, length: str | None = None) -> tuple[int, bytes]:
    head = "POST /v1/snapshots HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    if token is not None:
        head += f"Authorization: Bearer {token}\r\n"
    head += f"Content-Length: {length if length is not None else len(body)}\r\n\r\n"
    return raw(d, head.encode() + body)


def post(d: DaemonProcess, body: bytes, token: str | None = TOKEN) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return d.request("POST", "/v1/snapshots", body, headers)


def assert_one_json_line(body: bytes) -> str:
    assert body.endswith(b"\n") and body.count(b"\n") == 1, body[:300]
    doc = json.loads(body)
    assert isinstance(doc["error"], str) and "\n" not in doc["error"], doc
    assert "Traceback" not in doc["error"]
    return doc["error"]


def healthz_fast(d: DaemonProcess) -> None:
    started = time.monotonic()
    assert d.request("GET", "/healthz", timeout=5)[0] == 200
    assert time.monotonic() - started < 2


def test_slow_clients_do_not_block_others_and_are_dropped(daemon: DaemonProcess) -> None:
    dropped: dict[str, float] = {}
    started = time.monotonic()

    def silent(name: str) -> None:
        with socket.create_connection(("127.0.0.1", daemon.port), timeout=REQUEST_TIMEOUT + 20) as sock:
            try:
                sock.recv(1)  # nothing sent: the server must hang up on its own
            except OSError:
                pass
            dropped[name] = time.monotonic() - started

    def trickle(name: str) -> None:
        # Headers one byte every 0.2 s: each read is quick, the request never completes.
        request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 4096
        with socket.create_connection(("127.0.0.1", daemon.port), timeout=5) as sock:
            for i in range(len(request)):
                try:
                    sock.sendall(request[i : i + 1])
                    if select.select([sock], [], [], 0.2)[0] and not sock.recv(4096):
                        break  # EOF: dropped
                except OSError:
                    break
            dropped[name] = time.monotonic() - started

    threads = [
        threading.Thread(target=f, args=(f"{f.__name__}{i}",), daemon=True) for f in (silent, trickle) for i in range(4)
    ]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads) and time.monotonic() - started < REQUEST_TIMEOUT + 15:
        healthz_fast(daemon)  # other requests are served meanwhile
        time.sleep(0.3)
    assert len(dropped) == 8, dropped
    assert all(REQUEST_TIMEOUT - 1 < t < REQUEST_TIMEOUT + 5 for t in dropped.values()), dropped
    healthz_fast(daemon)
    assert daemon.alive()


def test_bad_bodies_get_one_line_4xx(daemon: DaemonProcess) -> None:
    # Too large: refused from the header alone, and when really sent.
    status, body = post_raw(daemon, b"", length=str(10 * 1024 * 1024))
    assert status == 413 and "larger" in assert_one_json_line(body)
    status, body = post(daemon, b"{" + b" " * (MAX_BODY + 10) + b"}")
    assert status == 413
    for bad in (
        b"{not json",
        b"\xff\xfe",
        b"[]",
        b'"x"',
        b"null",
        b"1e999",
        b'{"reason": 5}',
        b'{"reason": ""}',
        b'{"reason": null}',
        b'{"pin": "yes"}',
        b'{"pin": 1}',
        b'{"reason": "two\\nlines"}',
        b'{"reason": "x", "other": 1}',
        b'{"reason": {"a": 1}}',
        json.dumps({"reason": "r" * 300}).encode(),
        json.dumps({"reason": "r" * 60000}).encode(),
    ):
        status, body = post(daemon, bad)
        assert status == 400, (bad[:50], status, body)
        assert_one_json_line(body)
    for length in ("abc", "-5", "1 2", "99999999999999999999999"):
        status, body = post_raw(daemon, b"{}", length=length)
        assert status in {400, 413}, (length, status)
        assert_one_json_line(body)
    status, body = post_raw(daemon, b'{"reason": "x"}', length="100")  # shorter than announced
    assert status == 400 and "shorter" in assert_one_json_line(body)
    assert daemon.alive()
    healthz_fast(daemon)


@pytest.mark.parametrize(
    "token",
    [None, "", "wrong", TOKEN[:-1], TOKEN + "x", TOKEN.upper()],
    ids=["none", "empty", "wrong", "one-short", "one-long", "upper-case"],
)
def test_wrong_or_missing_token_is_401(daemon: DaemonProcess, token: str | None) -> None:
    status, body = post(daemon, b'{"reason": "x"}', token)
    assert status == 401 and "token" in assert_one_json_line(body)
    for header in (f"Basic {TOKEN}", TOKEN, f"Bearer{TOKEN}"):
        status, body = daemon.request("POST", "/v1/snapshots", b"{}", {"Authorization": header})
        assert status == 401, header
    status, _ = post(daemon, b'{"reason": "the right token"}')
    assert status == 201
    log = daemon.log_path.read_text()
    assert '"http request"' in log  # debug logging is on: requests are logged...
    assert TOKEN not in log and TOKEN[:-1] not in log and TOKEN.upper() not in log  # ...tokens are not


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
requests = st.fixed_dictionaries(
    {}, optional={"reason": json_values | st.text(max_size=400), "pin": json_values, "pinned": st.booleans()}
)
bodies = st.binary(max_size=300) | (json_values | requests).map(lambda v: json.dumps(v).encode())


@settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "60")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=bodies)
@example(body=b'{"reason": "fuzz", "pin": false}')
def test_fuzzed_post_bodies(daemon: DaemonProcess, body: bytes) -> None:
    try:
        status, answer = post(daemon, body)
    except (urllib.error.URLError, ConnectionError) as exc:
        raise AssertionError(f"connection dropped for body {body[:80]!r}: {exc}") from None
    assert status in ALLOWED, (status, body[:80], answer[:300])
    if status == 201:
        doc: dict[str, Any] = json.loads(answer)
        assert doc["verification"]["hash"]["ok"] is True
    else:
        assert_one_json_line(answer)


# --- secrets ---------------------------------------------------------------------------------------


def test_daemon_never_reveals_a_secret(
    etcd_single: Cluster, s3_bucket: Bucket, tmp_path: Path, start_daemon: DaemonFactory
) -> None:
    password = f"etcd-pw-{secrets.token_hex(8)}"
    wrong_token = f"wrong-{secrets.token_hex(8)}"
    etcd_single.put("/s/k", "v")
    etcd_single.etcdctl("user", "add", f"root:{password}", "--interactive=false")
    etcd_single.etcdctl("auth", "enable")
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    proxy = s3_proxy(s3_bucket)
    env = s3_env(
        etcd_single,
        s3_bucket,
        tmp_path / "spool",
        proxy.url,
        storage__timeout="1s",
        schedule__interval="2s",
        verify__restore_drill="3s",
        etcd__username="root",
        etcd__password=password,
        server__token_file=str(token_file),
        log__level="debug",
    )
    secret_values = [password, TOKEN, wrong_token, AWS_ENV["AWS_SECRET_ACCESS_KEY"]]
    try:
        d = start_daemon(env)
        d.wait_until(lambda: d.metrics()['etcd_backup_snapshots_total{reason="schedule"}'] >= 2, 60, "snapshots")
        d.wait_until(lambda: d.metrics()["etcd_backup_last_drill_timestamp_seconds"] > 0, 60, "a drill")
        assert post(d, b'{"reason": "with token"}')[0] == 201
        assert post(d, b"{}", wrong_token)[0] == 401
        assert post(d, b"{}", password)[0] == 401
        failed = d.metrics()['etcd_backup_failures_total{stage="upload"}']
        proxy.go_away()  # error paths log too
        d.wait_until(lambda: d.metrics()['etcd_backup_failures_total{stage="upload"}'] > failed, 60, "a failure")
        proxy.come_back()
        outputs = [
            d.request("GET", "/metrics")[1].decode(),
            d.request("GET", "/v1/snapshots")[1].decode(),
            d.request("GET", "/readyz")[1].decode(),
        ]
    finally:
        proxy.close()
    d.terminate()
    outputs.append(d.log_path.read_text())
    client = s3_bucket.server.client()
    manifests = [k for k in s3_bucket.keys() if k.endswith(".json")]  # noqa: SIM118 - a list
    assert len(manifests) >= 3
    outputs += [client.get_object(Bucket=s3_bucket.name, Key=k)["Body"].read().decode() for k in manifests]
    for text in outputs:
        for value in secret_values:
            assert value not in text, f"a secret leaked into: {text[:2000]}"
