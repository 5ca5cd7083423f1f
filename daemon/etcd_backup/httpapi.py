"""The daemon's HTTP endpoints, on the standard library's threading HTTP server.

GET  /healthz       liveness: the process serves requests
GET  /readyz        200 when etcd and storage answer and the newest backup is fresh, else 503 + reasons
GET  /metrics       Prometheus text
GET  /v1/snapshots  manifests in storage, newest first (no token)
POST /v1/snapshots  {"reason": "...", "pin": true}: snapshot now; 201 + manifest (bearer token)

Defensive limits: request bodies up to 64 KiB, a 10 s budget to send one, at most 32 requests in
flight (more are refused with 503), and the token compared in constant time.
"""

from __future__ import annotations

import hmac
import json
import socket
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import urlsplit

import structlog

from . import __version__
from .errors import EtcdBackupError, OperationalError
from .model import Manifest

log = structlog.get_logger(__name__)

MAX_BODY = 64 * 1024
REQUEST_TIMEOUT = 10.0
MAX_IN_FLIGHT = 32
MAX_REASON = 256
SNAPSHOTS = "/v1/snapshots"
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Backend(Protocol):
    """What the endpoints need from the daemon."""

    def readiness(self) -> list[str]: ...

    def snapshots(self) -> list[Manifest]: ...

    def snapshot_now(self, reason: str, pinned: bool) -> Manifest: ...

    def metrics_text(self) -> bytes: ...


class BadRequest(Exception):
    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_snapshot_request(body: bytes) -> tuple[str, bool]:
    """`{"reason": "...", "pin": true}` (both optional) -> (reason, pinned); BadRequest otherwise."""
    if not body.strip():
        return "manual", False
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest(HTTPStatus.BAD_REQUEST, "body is not valid JSON") from None
    if not isinstance(doc, dict):
        raise BadRequest(HTTPStatus.BAD_REQUEST, 'body must be a JSON object like {"reason": "...", "pin": true}')
    unknown = sorted(set(doc) - {"reason", "pin", "pinned"})
    if unknown:
        raise BadRequest(HTTPStatus.BAD_REQUEST, f"unknown field {unknown[0]!r} (expected reason, pin)")
    reason = doc.get("reason", "manual")
    if not isinstance(reason, str) or not reason.strip():
        raise BadRequest(HTTPStatus.BAD_REQUEST, "reason must be a non-empty string")
    if len(reason) > MAX_REASON or any(ord(c) < 32 for c in reason):
        raise BadRequest(HTTPStatus.BAD_REQUEST, f"reason must be one line of at most {MAX_REASON} characters")
    pinned = doc.get("pin", doc.get("pinned", False))
    if not isinstance(pinned, bool):
        raise BadRequest(HTTPStatus.BAD_REQUEST, "pin must be true or false")
    return reason.strip(), pinned


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(
        self,
        address: tuple[str, int],
        backend: Backend,
        token: str | None,
        *,
        family: int,
        request_timeout: float,
        max_in_flight: int,
    ) -> None:
        self.address_family = family
        self.backend = backend
        self.token = token.encode() if token else None
        self.request_timeout = request_timeout
        self._slots = threading.BoundedSemaphore(max_in_flight)
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            try:
                request.sendall(b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver would print a bare traceback to stderr; keep the log one JSON line each.
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            log.debug("http connection error", client=client_address[0], error=str(exc))
        else:
            log.exception("http handler failed", client=client_address[0], error=f"{type(exc).__name__}: {exc}")


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = f"etcd-backup/{__version__}"
    sys_version = ""
    _head_only = False  # answering HEAD: headers as for GET, no body

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.request_timeout)  # per read: a silent client cannot hold a thread
        # The per-read timeout never fires for a client trickling its request a byte at a time:
        # the request line and headers must arrive within the budget too, or we hang up. (The
        # body has its own deadline in _body, which answers 408.)
        self._read_deadline = threading.Timer(self.server.request_timeout, self._hang_up)
        self._read_deadline.daemon = True
        self._read_deadline.start()

    def _hang_up(self) -> None:
        try:
            self.connection.shutdown(socket.SHUT_RDWR)  # wakes the blocked read with EOF
        except OSError:
            pass

    def _request_read(self) -> None:
        """Request line and headers are in: the rest is bounded by _body or takes what it takes."""
        self._read_deadline.cancel()

    def finish(self) -> None:
        self._read_deadline.cancel()
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http request", client=self.client_address[0], line=format % args)

    # --- routing ---------------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._request_read()
        path = urlsplit(self.path).path
        if path == "/healthz":
            self._json(HTTPStatus.OK, {"status": "ok"})
        elif path == "/readyz":
            reasons = self.server.backend.readiness()
            if reasons:
                self._json(
                    HTTPStatus.SERVICE_UNAVAILABLE,
                    {"ready": False, "reason": "; ".join(reasons), "reasons": reasons},
                )
            else:
                self._json(HTTPStatus.OK, {"ready": True})
        elif path == "/metrics":
            self._send(HTTPStatus.OK, self.server.backend.metrics_text(), METRICS_CONTENT_TYPE)
        elif path == SNAPSHOTS:
            try:
                manifests = self.server.backend.snapshots()
            except EtcdBackupError as exc:
                self._error(HTTPStatus.SERVICE_UNAVAILABLE, str(exc))
                return
            self._json(HTTPStatus.OK, [m.to_dict() for m in manifests])
        else:
            self._error(HTTPStatus.NOT_FOUND, f"no such endpoint: {path}")

    def do_HEAD(self) -> None:
        """As GET, without the body (probes and load balancers that check with HEAD)."""
        self._head_only = True
        try:
            self.do_GET()
        finally:
            self._head_only = False  # the next request on this connection may be a GET

    def do_POST(self) -> None:
        self._request_read()
        path = urlsplit(self.path).path
        if path != SNAPSHOTS:
            if path in {"/healthz", "/readyz", "/metrics"}:
                self._error(HTTPStatus.METHOD_NOT_ALLOWED, "use GET", allow="GET")
            else:
                self._error(HTTPStatus.NOT_FOUND, f"no such endpoint: {path}")
            return
        if not self._authorized():
            return
        try:
            reason, pinned = parse_snapshot_request(self._body())
        except BadRequest as exc:
            self._error(exc.status, str(exc))
            return
        try:
            manifest = self.server.backend.snapshot_now(reason, pinned)
        except EtcdBackupError as exc:
            self._error(_status_of(exc), str(exc))
            return
        except Exception as exc:
            log.exception("snapshot request failed unexpectedly", error=f"{type(exc).__name__}: {exc}")
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error: {type(exc).__name__}")
            return
        self._json(HTTPStatus.CREATED, manifest.to_dict())

    def _not_allowed(self) -> None:
        self._error(HTTPStatus.METHOD_NOT_ALLOWED, f"{self.command} not allowed", allow="GET, POST")

    do_PUT = do_DELETE = do_PATCH = _not_allowed

    # --- helpers ---------------------------------------------------------------------------------

    def _authorized(self) -> bool:
        expected = self.server.token
        if expected is None:
            self._error(
                HTTPStatus.UNAUTHORIZED,
                "snapshots over HTTP need a bearer token: set server.token_file",
                authenticate=True,
            )
            return False
        scheme, _, given = (self.headers.get("Authorization") or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
            self._error(HTTPStatus.UNAUTHORIZED, "missing or wrong bearer token", authenticate=True)
            return False
        return True

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding"):
            raise BadRequest(HTTPStatus.LENGTH_REQUIRED, "send the body with a Content-Length")
        raw = self.headers.get("Content-Length") or "0"
        if not raw.isdigit():
            raise BadRequest(HTTPStatus.BAD_REQUEST, "bad Content-Length")
        length = int(raw)
        if length > MAX_BODY:
            raise BadRequest(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body larger than {MAX_BODY} bytes")
        # The socket timeout bounds each read; this bounds the whole body (a client trickling bytes).
        deadline = time.monotonic() + self.server.request_timeout
        chunks: list[bytes] = []
        remaining = length
        while remaining:
            if time.monotonic() > deadline:
                raise BadRequest(HTTPStatus.REQUEST_TIMEOUT, "body not received in time")
            try:
                chunk = self.rfile.read1(min(remaining, 16384))
            except (TimeoutError, OSError):
                raise BadRequest(HTTPStatus.REQUEST_TIMEOUT, "body not received in time") from None
            if not chunk:
                raise BadRequest(HTTPStatus.BAD_REQUEST, "body shorter than Content-Length")
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)

    def _json(self, status: HTTPStatus, doc: Any, **headers: str) -> None:
        self._send(status, json.dumps(doc).encode() + b"\n", "application/json", **headers)

    def _error(self, status: HTTPStatus, message: str, *, authenticate: bool = False, allow: str = "") -> None:
        headers = {}
        if authenticate:
            headers["WWW-Authenticate"] = 'Bearer realm="etcd-backup"'
        if allow:
            headers["Allow"] = allow
        self._json(status, {"error": message.splitlines()[0] if message else status.phrase}, **headers)

    def _send(self, status: HTTPStatus, body: bytes, content_type: str, **headers: str) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            for name, value in headers.items():
                self.send_header(name.replace("_", "-"), value)
            self.end_headers()
            if not self._head_only:
                self.wfile.write(body)
        except OSError:
            pass  # the client went away


def _status_of(exc: EtcdBackupError) -> HTTPStatus:
    return HTTPStatus(exc.http_status)


class HttpServer:
    def __init__(self, server: _Server) -> None:
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.5}, name="http", daemon=True
        )

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def listen(
    host: str,
    port: int,
    backend: Backend,
    token: str | None,
    *,
    request_timeout: float = REQUEST_TIMEOUT,
    max_in_flight: int = MAX_IN_FLIGHT,
) -> HttpServer:
    """Bind and start serving in a background thread. OperationalError if the address is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        server = _Server(
            (host, port),
            backend,
            token,
            family=family,
            request_timeout=request_timeout,
            max_in_flight=max_in_flight,
        )
    except OSError as exc:
        raise OperationalError(f"cannot listen on {host}:{port} (server.listen): {exc.strerror or exc}") from None
    http = HttpServer(server)
    http.start()
    log.info("http listening", address=f"{host}:{http.address[1]}")
    return http
