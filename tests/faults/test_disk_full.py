"""The local disk fills up while the snapshot is spooled: a clear error naming the spool, the spool
cleaned up, nothing stored; once there is room again the next run succeeds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from faultkit import assert_clean_failure, fill, s3_env, spool_files

from conftest import Bucket, Cluster, config_env, run_cli

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def etcd_6mib(etcd_single: Cluster) -> Cluster:
    fill(etcd_single, 6)
    return etcd_single


def test_spool_full_with_s3_store(etcd_6mib: Cluster, s3_bucket: Bucket, tiny_fs: Path, tmp_path: Path) -> None:
    spool = tiny_fs / "spool"
    env = s3_env(etcd_6mib, s3_bucket, spool, storage__part_size="5MiB")
    r = run_cli("snapshot", env=env)
    assert_clean_failure(r.returncode, r.stderr, 1, str(spool), "full", "no space left")
    assert spool_files(spool) == []
    assert s3_bucket.keys() == [] and s3_bucket.uploads() == []
    # With room to spool, the next run stores it.
    r = run_cli("snapshot", env={**env, "ETCD_BACKUP_STORAGE__SPOOL_DIR": str(tmp_path / "roomy")})
    assert r.returncode == 0, r.stderr
    assert len(s3_bucket.keys()) == 2


def test_directory_store_full(etcd_6mib: Cluster, tiny_fs: Path) -> None:
    store = tiny_fs / "store"
    env = config_env(etcd_6mib, f"file://{store}")
    r = run_cli("snapshot", env=env)
    assert_clean_failure(r.returncode, r.stderr, 1, "full")
    assert [p for p in store.rglob("*") if p.is_file()] == []  # no partial object, no spool file
    r = subprocess.run(["mount", "-o", "remount,size=64m", str(tiny_fs)], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    r = run_cli("snapshot", "--output", "json", env=env)
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert (store / m["object_key"]).stat().st_size == m["object_size"]


def test_file_size_limit(etcd_6mib: Cluster, s3_bucket: Bucket, tmp_path: Path) -> None:
    """RLIMIT_FSIZE (Python ignores SIGXFSZ, so the write fails with EFBIG)."""
    spool = tmp_path / "spool"
    env = s3_env(etcd_6mib, s3_bucket, spool, storage__part_size="5MiB")
    r = subprocess.run(
        ["prlimit", f"--fsize={2 * 1024 * 1024}", sys.executable, "-m", "etcd_backup", "snapshot"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert_clean_failure(r.returncode, r.stderr, 1, str(spool), "file too large")
    assert spool_files(spool) == []
    assert s3_bucket.keys() == [] and s3_bucket.uploads() == []
