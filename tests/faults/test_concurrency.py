"""Two `snapshot` commands at once against the same store: two distinct, complete, valid snapshots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from faultkit import fill, popen_cli, s3_env, spool_files

from conftest import Bucket, Cluster, config_env, run_cli

pytestmark = pytest.mark.timeout(150)


@pytest.mark.parametrize("kind", ["s3", "file"])
def test_two_snapshots_at_once(kind: str, etcd_single: Cluster, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    fill(etcd_single, 8)  # large enough that the two streams and uploads overlap
    spool = tmp_path / "spool"
    if kind == "s3":
        bucket: Bucket = request.getfixturevalue("s3_bucket")
        env = s3_env(etcd_single, bucket, spool, storage__part_size="5MiB")
    else:
        env = config_env(etcd_single, f"file://{tmp_path}/store", storage__spool_dir=str(spool))
    procs = [popen_cli("snapshot", "--output", "json", env=env) for _ in range(2)]
    results = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err
    manifests = [json.loads(out) for out, _ in results]
    ids = {m["id"] for m in manifests}
    assert len(ids) == 2
    assert len({m["object_key"] for m in manifests}) == 2

    r = run_cli("list", "--output", "json", env=env)
    assert r.returncode == 0, r.stderr
    assert {m["id"] for m in json.loads(r.stdout)} == ids
    assert "warning" not in r.stderr
    for sid in ids:
        v = run_cli("verify", sid, env=env)
        assert v.returncode == 0, v.stderr
    assert spool_files(spool) == []
    if kind == "s3":
        assert len(bucket.keys()) == 4 and bucket.uploads() == []
