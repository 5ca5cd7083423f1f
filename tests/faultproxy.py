"""A small TCP proxy of the test suite's own, for injecting faults between us and a real server.

Bytes flow unchanged unless a fault is armed. `corrupt_http2_data_at` flips one byte of the
HTTP/2 DATA payload coming back from the server at the given payload offset: for a gRPC
snapshot stream that corrupts the snapshot bytes themselves (not the framing), which is what
etcd's SHA-256 trailer exists to catch.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field


@dataclass
class FaultProxy:
    upstream: tuple[str, int]
    corrupt_http2_data_at: int | None = None
    listen_host: str = "127.0.0.1"
    corrupted: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((self.listen_host, 0))
        self._sock.listen(16)
        self.port = self._sock.getsockname()[1]
        self._closed = threading.Event()
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://{self.listen_host}:{self.port}"

    def close(self) -> None:
        self._closed.set()
        self._sock.close()
        for c in self._conns:
            try:
                c.close()
            except OSError:
                pass

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            self._conns += [client, server]
            threading.Thread(target=self._pipe, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, True), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, from_server: bool) -> None:
        frames = _Http2Corrupter(self) if from_server and self.corrupt_http2_data_at is not None else None
        try:
            while data := src.recv(65536):
                if frames is not None:
                    data = frames.feed(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


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
