"""The systemd unit: valid for systemd itself, notify-type with a watchdog, and hardened."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = pytest.mark.timeout(60)

UNIT = ROOT / "systemd" / "etcd-backup.service"


def _directives() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


@pytest.fixture
def unit_here(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's console script (verify checks it exists)."""
    exe = shutil.which("etcd-backup", path=str(Path(sys.executable).parent))
    assert exe, "etcd-backup console script not installed next to this Python"
    text = "\n".join(
        f"ExecStart={exe} run" if line.startswith("ExecStart=") else line for line in UNIT.read_text().splitlines()
    )
    path = tmp_path / UNIT.name
    path.write_text(text + "\n")
    return path


def _systemd_analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.fail("systemd-analyze missing: apt-get install systemd")
    return exe


def test_systemd_analyze_verify_is_clean(unit_here: Path) -> None:
    r = subprocess.run([_systemd_analyze(), "verify", str(unit_here)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert unit_here.name not in r.stderr, r.stderr


def test_exposure_level_is_low(unit_here: Path) -> None:
    # systemd's own hardening score: 0 (locked down) to 10 (exposed); "OK" is below 2.
    r = subprocess.run(
        [_systemd_analyze(), "security", "--offline=yes", "--threshold=20", str(unit_here)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr


def test_unit_has_what_a_reviewer_expects() -> None:
    d = _directives()
    assert d["Type"] == ["notify"]
    assert d["ExecStart"][0].endswith("etcd-backup run")
    assert d["Restart"] == ["on-failure"]
    assert d["WatchdogSec"] and d["TimeoutStopSec"]
    assert d["EnvironmentFile"] == ["-/etc/etcd-backup/env"]
    # Scratch space on disk, created by systemd, and no ETCD_BACKUP_ variable that would silently
    # beat the config file's own storage.spool_dir.
    assert d["Environment"] == ["TMPDIR=/var/lib/etcd-backup/spool"]
    assert d["StateDirectory"] == ["etcd-backup etcd-backup/spool"]
    assert d["User"] == ["etcd-backup"]
    hardening = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
    }
    for key, value in hardening.items():
        assert d[key] == [value], key
