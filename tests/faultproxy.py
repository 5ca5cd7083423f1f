"""A small TCP proxy of the test suite's own, for injecting faults between us and a real server.

Bytes flow unchanged unless a fault is armed.

Raw TCP (etcd's gRPC):
- `corrupt_http2_data_at` flips one byte of the HTTP/2 DATA payload coming back from the server at
  the given payload offset: for a gRPC snapshot stream that corrupts the snapshot bytes themselves
  (not the framing), which is what etcd's SHA-256 trailer exists to catch.
- `on_server_bytes=(n, callback)` calls `callback` once, as soon as more than `n` bytes came back
  from the server (e.g. SIGKILL or SIGSTOP the member in the middle of a snapshot stream).

HTTP/1.1 (S3), with `http=True`: each request is parsed (head and body framing) so faults hit whole
requests. `add_rule(Rule(...))` arms one: answer `503 SlowDown`, reset the connection after some
body bytes (mid-part), stall (read the request, never answer), hold (until `release()`), or go
away (refuse every connection until `come_back()`); `delay` passes each request on after
`seconds` (a slow store). Rules match on method and path+query and fire
`count` times (None: for ever). `seen` records what happened to every request. Two more stand in
for a store that is not AWS: `reject` answers an S3 error (`status`, `code`), `corrupt` flips one
body byte on the way; `strip_head_headers` drops response headers of HEAD answers.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

Action = Literal["slowdown", "reset", "stall", "hold", "delay", "gone", "reject", "corrupt"]

_SLOWDOWN_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message><RequestId>faultproxy</RequestId></Error>"
)


@dataclass(frozen=True)
class Request:
    method: str
    target: str  # path and query, as sent
    headers: dict[str, str]

    @property
    def is_part(self) -> bool:
        """An UploadPart of a multipart upload."""
        return self.method == "PUT" and "partNumber=" in self.target and "uploadId=" in self.target

    @property
    def content_length(self) -> int:
        return int(self.headers.get("content-length", "0") or 0)

    @property
    def chunked(self) -> bool:
        return "chunked" in self.headers.get("transfer-encoding", "").lower()


def any_request(_: Request) -> bool:
    return True


def upload_part(req: Request) -> bool:
    return req.is_part


@dataclass
class Rule:
    action: Action
    match: Callable[[Request], bool] = any_request
    count: int | None = None  # how many matching requests it applies to; None: all of them
    after_bytes: int = 0  # reset: body bytes forwarded to the server first; corrupt: the byte flipped
    seconds: float = 1.0  # delay: how long each matching request waits before it goes on
    status: int = 400  # reject: the answer's status and S3 error code
    code: str = "InvalidArgument"
    fired: int = 0


@dataclass
class FaultProxy:
    upstream: tuple[str, int]
    corrupt_http2_data_at: int | None = None
    on_server_bytes: tuple[int, Callable[[], None]] | None = None
    http: bool = False
    # HEAD answers lose the response headers starting with these (a store that ignores checksums).
    strip_head_headers: tuple[str, ...] = ()
    listen_host: str = "127.0.0.1"
    corrupted: threading.Event = field(default_factory=threading.Event)
    triggered: threading.Event = field(default_factory=threading.Event)  # on_server_bytes fired

    def __post_init__(self) -> None:
        self.port = 0
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._rules: list[Rule] = []
        self._released = threading.Event()
        self._server_bytes = 0
        self.seen: list[tuple[str, str, str]] = []  # (method, target, action or "pass")
        self.gone = threading.Event()
        self._listen()

    # --- control -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.listen_host}:{self.port}"

    def add_rule(self, rule: Rule) -> Rule:
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear_rules(self) -> None:
        with self._lock:
            self._rules.clear()
        self._released.set()

    def release(self) -> None:
        """Let held requests through."""
        self._released.set()

    def rearm(self) -> None:
        """Hold again: "hold" rules added from now on block until the next `release()`."""
        self._released.clear()

    def go_away(self) -> None:
        """Refuse connections (nothing listens on the port) and reset every open one."""
        self.gone.set()
        self._stop_listening()
        self._reset_all()

    def come_back(self) -> None:
        """Listen again on the same port."""
        if self.gone.is_set():
            self.gone.clear()
            self._listen(self.port)

    def close(self) -> None:
        self._closed.set()
        self._released.set()
        self._stop_listening()
        self._reset_all()

    def actions(self, action: str) -> list[tuple[str, str, str]]:
        with self._lock:
            return [s for s in self.seen if s[2] == action]

    # --- plumbing ------------------------------------------------------------------------------

    def _listen(self, port: int = 0) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.listen_host, port))
        sock.listen(64)
        self._sock = sock
        self.port = sock.getsockname()[1]
        threading.Thread(target=self._accept, args=(sock,), daemon=True).start()

    def _stop_listening(self) -> None:
        # close() alone does not wake a thread blocked in accept(): the socket would keep listening.
        for op in (lambda: self._sock.shutdown(socket.SHUT_RDWR), self._sock.close):
            try:
                op()
            except OSError:
                pass

    def _reset_all(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            _reset(c)

    def _track(self, *socks: socket.socket) -> None:
        with self._lock:
            self._conns += socks

    def _accept(self, listener: socket.socket) -> None:
        while not self._closed.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            self._track(client)
            if self.http:
                threading.Thread(target=self._http_client, args=(client,), daemon=True).start()
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            self._track(server)
            threading.Thread(target=self._pipe, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, True), daemon=True).start()

    def _count_server_bytes(self, n: int) -> None:
        if self.on_server_bytes is None or self.triggered.is_set():
            return
        with self._lock:
            self._server_bytes += n
            fire = self._server_bytes > self.on_server_bytes[0] and not self.triggered.is_set()
            if fire:
                self.triggered.set()
        if fire:
            self.on_server_bytes[1]()

    def _pipe(self, src: socket.socket, dst: socket.socket, from_server: bool) -> None:
        frames = _Http2Corrupter(self) if from_server and self.corrupt_http2_data_at is not None else None
        try:
            while data := src.recv(65536):
                if frames is not None:
                    data = frames.feed(data)
                dst.sendall(data)
                if from_server:
                    self._count_server_bytes(len(data))
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    # --- HTTP/1.1 ------------------------------------------------------------------------------

    def _rule_for(self, req: Request) -> Rule | None:
        with self._lock:
            for rule in self._rules:
                if (rule.count is None or rule.fired < rule.count) and rule.match(req):
                    rule.fired += 1
                    self.seen.append((req.method, req.target, rule.action))
                    return rule
            self.seen.append((req.method, req.target, "pass"))
        return None

    def _http_client(self, client: socket.socket) -> None:
        reader = _Reader(client)
        server: socket.socket | None = None
        try:
            while not self._closed.is_set():
                head = reader.head()
                if head is None:
                    return
                req = _parse_head(head)
                rule = self._rule_for(req)
                action = rule.action if rule else None
                if action == "gone":
                    self.go_away()
                    return
                if action == "slowdown":
                    self._answer_slowdown(client, reader, req)
                    return
                if action == "reject":
                    assert rule is not None
                    self._answer_error(client, reader, req, rule.status, rule.code)
                    continue
                if req.method == "HEAD" and self.strip_head_headers:
                    self._head_stripped(client, head)
                    continue
                if action == "stall":
                    # Read whatever the client sends, never answer: its read timeout must fire.
                    reader.drain_until(self._closed)
                    return
                if action == "hold":
                    while not self._released.wait(0.2):
                        if self._closed.is_set():
                            return
                if action == "delay" and rule is not None and self._closed.wait(rule.seconds):
                    return
                if server is None:
                    server = socket.create_connection(self.upstream, timeout=5)
                    server.settimeout(None)
                    self._track(server)
                    threading.Thread(target=self._pipe, args=(server, client, True), daemon=True).start()
                server.sendall(head)
                if action == "reset":
                    reader.forward_body(req, server, limit=rule.after_bytes if rule else 0)
                    _reset(client)
                    _reset(server)
                    return
                reader.forward_body(req, server, flip_at=rule.after_bytes if action == "corrupt" and rule else None)
        except OSError:
            pass
        finally:
            if server is not None:
                try:
                    server.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            try:
                client.close()
            except OSError:
                pass

    def _head_stripped(self, client: socket.socket, head: bytes) -> None:
        """Answer a HEAD over a connection of its own (its answer has no body), headers filtered."""
        with socket.create_connection(self.upstream, timeout=10) as server:
            server.sendall(head)
            answer = b""
            while b"\r\n\r\n" not in answer:
                data = server.recv(65536)
                if not data:
                    break
                answer += data
        lines = answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
        kept = [lines[0]] + [
            line for line in lines[1:] if not line.decode("latin-1").lower().startswith(self.strip_head_headers)
        ]
        client.sendall(b"\r\n".join(kept) + b"\r\n\r\n")

    @staticmethod
    def _answer_error(client: socket.socket, reader: _Reader, req: Request, status: int, code: str) -> None:
        """An S3 error answer to this request; the connection stays usable."""
        if req.headers.get("expect", "").lower() != "100-continue":
            reader.skip_body(req)
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>rejected by faultproxy</Message><RequestId>faultproxy</RequestId></Error>"
        ).encode()
        close = req.headers.get("expect", "").lower() == "100-continue"
        client.sendall(
            f"HTTP/1.1 {status} Rejected\r\nContent-Type: application/xml\r\nContent-Length: {len(body)}\r\n".encode()
            + (b"Connection: close\r\n" if close else b"")
            + b"\r\n"
            + body
        )
        if close:
            raise ConnectionError("closed after rejecting a request whose body was never sent")

    @staticmethod
    def _answer_slowdown(client: socket.socket, reader: _Reader, req: Request) -> None:
        # With "Expect: 100-continue" the body is not sent before an answer; otherwise read it first.
        if req.headers.get("expect", "").lower() != "100-continue":
            reader.skip_body(req)
        client.sendall(
            b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n"
            + f"Content-Length: {len(_SLOWDOWN_BODY)}\r\nConnection: close\r\n\r\n".encode()
            + _SLOWDOWN_BODY
        )


def _reset(sock: socket.socket) -> None:
    """Close with a TCP RST (SO_LINGER 0), as a crashed or firewalled peer would."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


def _parse_head(head: bytes) -> Request:
    lines = head.decode("latin-1").split("\r\n")
    method, target, *_ = [*lines[0].split(" "), "", ""]
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return Request(method, target, headers)


class _Reader:
    """Buffered reads from the client socket: request heads and bodies."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        if not data:
            return False
        self.buf += data
        return True

    def head(self) -> bytes | None:
        while b"\r\n\r\n" not in self.buf:
            if not self._fill():
                return None
        end = self.buf.index(b"\r\n\r\n") + 4
        head, self.buf = self.buf[:end], self.buf[end:]
        return head

    def _take(self, n: int) -> bytes:
        if not self.buf and not self._fill():
            raise ConnectionError("client closed mid-body")
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            if not self._fill():
                raise ConnectionError("client closed mid-chunk")
        end = self.buf.index(b"\r\n") + 2
        line, self.buf = self.buf[:end], self.buf[end:]
        return line

    def _body_pieces(self, req: Request) -> Iterator[bytes]:
        if req.chunked:
            while True:
                line = self._line()
                yield line
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while (trailer := self._line()) != b"\r\n":
                        yield trailer
                    yield b"\r\n"
                    return
                left = size + 2  # data and its CRLF
                while left:
                    piece = self._take(left)
                    left -= len(piece)
                    yield piece
        else:
            left = req.content_length
            while left:
                piece = self._take(min(left, 65536))
                left -= len(piece)
                yield piece

    def forward_body(
        self, req: Request, dst: socket.socket, limit: int | None = None, flip_at: int | None = None
    ) -> None:
        sent = 0
        for piece in self._body_pieces(req):
            if limit is not None and sent + len(piece) >= limit:
                dst.sendall(piece[: max(0, limit - sent)])
                return
            out = piece
            if flip_at is not None and sent <= flip_at < sent + len(piece):
                i = flip_at - sent
                out = piece[:i] + bytes([piece[i] ^ 0xFF]) + piece[i + 1 :]
            dst.sendall(out)
            sent += len(piece)

    def skip_body(self, req: Request) -> None:
        for _ in self._body_pieces(req):
            pass

    def drain_until(self, closed: threading.Event) -> None:
        self.sock.settimeout(0.2)
        while not closed.is_set():
            try:
                if not self.sock.recv(65536):
                    return
            except TimeoutError:
                continue
            except OSError:
                return


class _Http2Corrupter:
    """Tracks HTTP/2 frame boundaries in a byte stream and flips one DATA payload byte."""

    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy
        self.target = proxy.corrupt_http2_data_at or 0
        self.data_seen = 0
        self.header = b""
        self.remaining = 0  # payload bytes left in the current frame
        self.in_data = False

    def feed(self, chunk: bytes) -> bytes:
        out = bytearray(chunk)
        i = 0
        while i < len(out):
            if self.remaining == 0:
                need = 9 - len(self.header)
                self.header += bytes(out[i : i + need])
                i += min(need, len(out) - i)
                if len(self.header) == 9:
                    self.remaining = int.from_bytes(self.header[:3], "big")
                    self.in_data = self.header[3] == 0
                    self.header = b""
                continue
            take = min(self.remaining, len(out) - i)
            if self.in_data and not self.proxy.corrupted.is_set():
                if self.data_seen <= self.target < self.data_seen + take:
                    out[i + self.target - self.data_seen] ^= 0xFF
                    self.proxy.corrupted.set()
                self.data_seen += take
            i += take
            self.remaining -= take
        return bytes(out)
