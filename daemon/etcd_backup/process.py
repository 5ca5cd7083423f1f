"""This process's own plumbing: the stop signals it waits for, and the child processes it
started (a drill's scratch etcd, etcdutl), kept by handle so a stop can end exactly those.
"""

from __future__ import annotations

import signal
import subprocess
import threading
from collections.abc import Callable, Sequence
from typing import Any

import structlog

log = structlog.get_logger(__name__)


class Children:
    """Every child process started through `spawn`, until it has been waited for."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._procs: set[subprocess.Popen[Any]] = set()

    def add(self, proc: subprocess.Popen[Any]) -> None:
        with self._lock:
            self._procs.add(proc)

    def discard(self, proc: subprocess.Popen[Any]) -> None:
        with self._lock:
            self._procs.discard(proc)

    def signal_all(self, sig: int) -> int:
        """Send `sig` to every child still running; returns how many got it."""
        with self._lock:
            running = [p for p in self._procs if p.poll() is None]
        for p in running:
            try:
                p.send_signal(sig)
            except OSError:
                continue
        if running:
            log.warning("stopped child processes", count=len(running), signal=signal.Signals(sig).name)
        return len(running)


CHILDREN = Children()


def spawn(args: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
    """subprocess.Popen, remembered in CHILDREN until `reap`."""
    proc: subprocess.Popen[Any] = subprocess.Popen(list(args), **kwargs)
    CHILDREN.add(proc)
    return proc


def reap(proc: subprocess.Popen[Any]) -> None:
    CHILDREN.discard(proc)


def run(args: Sequence[str], *, timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """subprocess.run(capture_output, text) with the child in CHILDREN while it runs."""
    proc = spawn(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise
    finally:
        reap(proc)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def within(seconds: float, fn: Callable[[], None], name: str) -> bool:
    """Run `fn` on a thread of its own for at most `seconds`. True when it returned (an exception
    it raised is raised here); False when it still runs: it goes on, and its outcome is dropped.
    For the start-up checks of a store that accepts connections and never answers: the daemon
    must still come up, answer HTTP and say what is wrong, not sit in botocore's retries."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            fn()
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            outcome.append(exc)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    thread.join(seconds)
    if not outcome:
        return False
    if outcome[0] is not None:
        raise outcome[0]
    return True


class StopSignals:
    """SIGTERM and SIGINT set an event instead of killing the process (installed before start-up,
    so a stop during start-up is graceful too)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handler)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handler(self, signum: int, _frame: object) -> None:
        self.received = self.received or signal.Signals(signum).name
        self.event.set()

    def wait(self) -> str:
        while not self.event.wait(1.0):
            pass
        return self.received or "stopped"
