"""The README's first command: the daemon with built-in defaults, and a throwaway etcd when none
answers at the default endpoint. Runs `python -m etcd_backup.localdev` (what scripts/run-local.sh
execs) in an empty directory, exactly as on a fresh laptop."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import clean_env
from etcd_backup.etcdproc import free_port

pytestmark = pytest.mark.timeout(120)


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_quick_start_snapshots_a_throwaway_etcd_and_stops_it(tmp_path: Path) -> None:
    assert not _port_open(2379), "something listens on 127.0.0.1:2379; the quick start test needs it free"
    env = clean_env(ETCD_BACKUP_SERVER__LISTEN=f"127.0.0.1:{free_port()}", ETCD_BACKUP_VERIFY__RESTORE_DRILL="off")
    log = (tmp_path / "localdev.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "etcd_backup.localdev"], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 60
        manifests: list[Path] = []
        while time.monotonic() < deadline and not manifests and proc.poll() is None:
            manifests = list((tmp_path / "etcd-backups" / "snapshots").glob("*.json"))
            time.sleep(0.2)
        assert manifests, (tmp_path / "localdev.log").read_text()[-2000:]
        manifest = json.loads(manifests[0].read_text())
        assert manifest["keys"] == 100 and manifest["reason"] == "schedule"  # the demo keys
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not _port_open(2379), "the throwaway etcd outlived the daemon"
    assert (tmp_path / ".local-etcd" / "data" / "member").is_dir()


def test_free_ports_come_from_below_the_ephemeral_range_and_never_twice_in_a_row() -> None:
    """A port from the ephemeral range can go to an outgoing connection (etcd dialling a peer)
    between the check and etcd's bind: "address already in use" (seen in CI). Ports handed out
    before they are bound must not repeat either (a member's peer and client URL on one port)."""
    from etcd_backup.etcdproc import _ephemeral_low, free_port

    low = _ephemeral_low()
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    if low - 8192 >= 1024:
        assert all(low - 8192 <= p < low for p in ports), (low, min(ports), max(ports))
