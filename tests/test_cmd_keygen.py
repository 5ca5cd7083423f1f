"""`keygen --out FILE`: a private key file only its owner reads, its recipient on stdout, no overwrite."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import AgeTool, clean_env, run_cli

pytestmark = pytest.mark.timeout(60)


def test_keygen_writes_a_private_identity_and_prints_its_recipient(tmp_path: Path, age_tool: AgeTool) -> None:
    out = tmp_path / "age.key"
    # Run under umask 0: the file is 0600 all the same.
    r = subprocess.run(
        [sys.executable, "-m", "etcd_backup", "keygen", "--out", str(out)],
        capture_output=True,
        text=True,
        env=clean_env(),
        umask=0,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    recipient = r.stdout.strip()
    assert recipient.startswith("age1") and len(r.stdout.splitlines()) == 1
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert age_tool.recipient_of(out) == recipient
    assert "AGE-SECRET-KEY" not in r.stdout + r.stderr

    before = out.read_bytes()
    r = run_cli("keygen", "--out", str(out), env=clean_env())
    assert r.returncode == 2 and "never overwrites" in r.stderr, r.stderr
    assert out.read_bytes() == before


def test_keygen_needs_no_configuration_and_speaks_json(tmp_path: Path, age_tool: AgeTool) -> None:
    out = tmp_path / "age.key"
    # The configuration already names the file keygen is about to create (and would refuse it).
    env = clean_env(ETCD_BACKUP_ENCRYPTION__IDENTITY_FILE=str(out))
    r = run_cli("keygen", "--out", str(out), "--output", "json", env=env)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc == {"identity_file": str(out), "recipient": age_tool.recipient_of(out)}
    r = run_cli("keygen", "--out", str(tmp_path / "no" / "such" / "dir.key"), env=env)
    assert r.returncode == 2 and "cannot create" in r.stderr, r.stderr
