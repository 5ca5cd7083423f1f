"""Quick start on a laptop: run the daemon with the built-in defaults, starting a throwaway
etcd when nothing answers at the default endpoint (scripts/run-local.sh calls this).

Only for the default endpoint: when endpoints are configured, nothing is started. The daemon
itself is `etcd-backup run` in a child process (stop signals are passed on), so this module
needs nothing of the CLI; the throwaway etcd is stopped when the daemon has exited.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from . import config
from .errors import EtcdBackupError
from .etcdclient import Member
from .etcdproc import EtcdProcess, find_binary, free_port, start_member, wait_healthy

DEFAULT_ENDPOINT = "http://127.0.0.1:2379"


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2):
            return True
    except OSError:
        return False


def _start_throwaway(base: Path) -> EtcdProcess:
    base.mkdir(parents=True, exist_ok=True)
    peer = "http://127.0.0.1:2380"
    if not _port_free(2380):
        peer = f"http://127.0.0.1:{free_port()}"
    proc = start_member(
        find_binary("etcd"),
        name="local",
        data_dir=base / "data",
        client_url=DEFAULT_ENDPOINT,
        peer_url=peer,
        token="etcd-backup-local",
        log_path=base / "etcd.log",
        state="existing" if (base / "data" / "member").exists() else "new",
    )
    wait_healthy(DEFAULT_ENDPOINT, 30, proc)
    return proc


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _seed(cfg: config.Config) -> None:
    with Member(cfg.etcd, DEFAULT_ENDPOINT) as m:
        if m.count_keys() == 0:
            for i in range(100):
                m.client.put(f"/demo/key-{i:03d}", f"value {i}")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if sys.stderr.isatty():
        # A person is watching: readable lines unless they chose a format.
        os.environ.setdefault("ETCD_BACKUP_LOG__FORMAT", "console")
    try:
        cfg = config.load(None)
    except EtcdBackupError as exc:
        print(f"etcd-backup: {exc}", file=sys.stderr)
        return exc.exit_code
    proc = None
    if cfg.etcd.endpoints == [DEFAULT_ENDPOINT] and not _answers(DEFAULT_ENDPOINT):
        base = Path(".local-etcd").absolute()
        print(f"etcd-backup: no etcd at {DEFAULT_ENDPOINT}; starting a throwaway one in {base}", file=sys.stderr)
        proc = _start_throwaway(base)
        _seed(cfg)
    try:
        return _run_daemon(args)
    finally:
        if proc is not None:
            proc.stop()


def _run_daemon(args: list[str]) -> int:
    daemon = subprocess.Popen([sys.executable, "-m", "etcd_backup", "run", *args])

    def forward(signum: int, _frame: object) -> None:
        if daemon.poll() is None:
            daemon.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    return daemon.wait()


if __name__ == "__main__":
    sys.exit(main())
