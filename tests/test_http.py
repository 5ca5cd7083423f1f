"""The HTTP layer's own rules (request parsing, limits, auth), in-process on a real (unstarted)
daemon with a real file:// store; the end-to-end behaviour is in test_daemon.py."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http import HTTPStatus
from pathlib import Path

import pytest

from etcd_backup import httpapi
from etcd_backup.config import Config
from etcd_backup.daemon import Daemon
from etcd_backup.etcdproc import free_port
from etcd_backup.httpapi import BadRequest, parse_snapshot_request
from etcd_backup.storage import open_store

pytestmark = pytest.mark.timeout(60)

TOKEN = "t0ken-for-http-tests"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"", ("manual", False)),
        (b"{}", ("manual", False)),
        (b'{"reason": "before upgrade", "pin": true}', ("before upgrade", True)),
        (b'{"reason": " spaced ", "pinned": false}', ("spaced", False)),
    ],
)
def test_parse_snapshot_request(body: bytes, expected: tuple[str, bool]) -> None:
    assert parse_snapshot_request(body) == expected


@pytest.mark.parametrize(
    "body",
    [
        b"[1]",
        b"{bad",
        b'{"reason": ""}',
        b'{"reason": 1}',
        b'{"reason": "a\\nb"}',
        b'{"pin": 1}',
        b'{"reason": "x", "extra": 1}',
        ('{"reason": "%s"}' % ("x" * 300)).encode(),
        b"\xff",
    ],
)
def test_parse_snapshot_request_rejects(body: bytes) -> None:
    with pytest.raises(BadRequest) as err:
        parse_snapshot_request(body)
    assert err.value.status == HTTPStatus.BAD_REQUEST


class Client:
    def __init__(self, port: int) -> None:
        self.port = port

    def call(self, method: str, path: str, body: bytes | None = None, token: str | None = None) -> tuple[int, dict]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                raw = resp.read()
                return resp.status, json.loads(raw) if resp.headers["Content-Type"] == "application/json" else {}
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            return exc.code, json.loads(raw) if raw else {}

    def raw(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[Client]:
    cfg = Config(
        etcd={"endpoints": [f"http://127.0.0.1:{free_port()}"], "dial_timeout": "1s"},
        storage={"url": f"file://{tmp_path}/store"},
    )
    daemon = Daemon(cfg, open_store(cfg.storage))
    server = httpapi.listen("127.0.0.1", 0, daemon, TOKEN, request_timeout=1.0, max_in_flight=3)
    yield Client(server.address[1])
    daemon.stop(1)
    server.close()


def test_endpoints_before_the_first_check(client: Client) -> None:
    assert client.call("GET", "/healthz") == (200, {"status": "ok"})
    status, body = client.call("GET", "/readyz")
    assert status == 503 and "first health check not finished" in body["reason"]
    assert client.call("GET", "/v1/snapshots") == (200, [])  # type: ignore[comparison-overlap]
    assert client.call("GET", "/metrics")[0] == 200
    assert client.call("POST", "/healthz", b"")[0] == 405
    assert client.call("GET", "/v2/anything")[0] == 404


def test_head_answers_as_get_without_a_body(client: Client) -> None:
    """Probes and load balancers that check with HEAD got 501."""
    for path, expected in (("/healthz", 200), ("/readyz", 503), ("/metrics", 200)):
        req = urllib.request.Request(f"http://127.0.0.1:{client.port}{path}", method="HEAD")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                status, raw, length = resp.status, resp.read(), resp.headers["Content-Length"]
        except urllib.error.HTTPError as exc:
            status, raw, length = exc.code, exc.read(), exc.headers["Content-Length"]
        assert (status, raw) == (expected, b""), path
        assert int(length) > 0, path  # the length of the body a GET gets
    assert client.call("GET", "/healthz") == (200, {"status": "ok"})


def test_post_auth_and_failure_answers(client: Client) -> None:
    assert client.call("POST", "/v1/snapshots", b"{}")[0] == 401
    assert client.call("POST", "/v1/snapshots", b"{}", token="nope")[0] == 401
    # Authorized, but etcd is unreachable: one JSON line saying so, 503.
    status, body = client.call("POST", "/v1/snapshots", b'{"reason": "r"}', token=TOKEN)
    assert status == 503 and "etcd" in body["error"] and "\n" not in body["error"]


def test_slow_body_is_cut_off(client: Client) -> None:
    sock = client.raw()
    started = time.monotonic()
    sock.sendall(
        b"POST /v1/snapshots HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + TOKEN.encode()
        + b"\r\nContent-Length: 100\r\n\r\n{"
    )
    answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.0 408")
    assert time.monotonic() - started < 5
    sock.close()


def test_chunked_and_oversized_bodies_are_refused(client: Client) -> None:
    sock = client.raw()
    sock.sendall(
        b"POST /v1/snapshots HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + TOKEN.encode()
        + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    assert sock.recv(4096).startswith(b"HTTP/1.0 411")
    sock.close()
    sock = client.raw()
    sock.sendall(
        b"POST /v1/snapshots HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + TOKEN.encode()
        + b"\r\nContent-Length: 999999999\r\n\r\n"
    )
    assert sock.recv(4096).startswith(b"HTTP/1.0 413")
    sock.close()


def test_idle_connections_are_bounded_and_released(client: Client) -> None:
    # Each holds one of the three slots, sending nothing; the server accepts in order, so the
    # fourth connection finds every slot taken.
    idle = [client.raw() for _ in range(3)]
    extra = client.raw()
    assert extra.recv(4096).startswith(b"HTTP/1.0 503")
    extra.close()
    # The silent clients are dropped after the request timeout; the server serves again.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            if client.call("GET", "/healthz")[0] == 200:
                break
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.1)
    else:
        raise AssertionError("server did not recover after idle clients timed out")
    for s in idle:
        s.close()
