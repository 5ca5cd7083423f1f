"""Helpers of the point-in-time recovery tests: etcd's keyspace and revision, `timeline`, waiting
for deltas to be stored, restores of a point, a daemon writing deltas."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import (
    ROOT,
    Cluster,
    DaemonFactory,
    DaemonProcess,
    StartEtcd,
    config_env,
    run_cli,
)
from etcd_backup.etcdproc import EtcdProcess, free_port, wait_healthy

SECRET = "s3cr3t-in-a-delta-plaintext-marker"


DELTA = {"delta__interval": "500ms", "verify__restore_drill": "off", "schedule__interval": "1h"}


def keyspace(cluster: Cluster, endpoint: str, revision: int | None = None) -> dict[str, dict[str, Any]]:
    """Every key with its value, revisions, version and lease, as etcd answers (`get -w json`)."""
    args = ["get", "", "--prefix", "-w", "json"] + ([f"--rev={revision}"] if revision else [])
    out = json.loads(cluster.etcdctl(*args, endpoints=[endpoint]))
    return {
        base64.b64decode(kv["key"]).decode(): {
            "value": base64.b64decode(kv.get("value", "")).decode(),
            "create_revision": kv["create_revision"],
            "mod_revision": kv["mod_revision"],
            "version": kv["version"],
            "lease": kv.get("lease", 0),
        }
        for kv in out.get("kvs", [])
    }


def revision_of(cluster: Cluster, endpoint: str) -> int:
    return int(
        json.loads(cluster.etcdctl("endpoint", "status", "-w", "json", endpoints=[endpoint]))[0]["Status"]["header"][
            "revision"
        ]
    )


def timeline(env: dict[str, str]) -> dict[str, Any]:
    r = run_cli("timeline", "--output", "json", env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def stored_up_to(env: dict[str, str], revision: int) -> Callable[[], bool]:
    def check() -> bool:
        newest = timeline(env)["newest"]
        return newest is not None and newest["revision"] >= revision

    return check


def delta_runbook() -> list[str]:
    """The shell lines of the README's "Reading deltas without etcd-backup" block, without comments
    and the S3 download (the test copies the objects)."""
    section = (ROOT / "README.md").read_text().split("### Reading deltas without etcd-backup", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    lines = [line.strip() for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#") and not line.startswith("aws ")]


def txn(cluster: Cluster, ops: list[str]) -> None:
    """One etcd transaction of several operations: one revision with several events."""
    r = subprocess.run(
        [cluster.tools.etcdctl, f"--endpoints={cluster.endpoints[0]}", "txn"],
        input="\n" + "\n".join(ops) + "\n\n\n",  # no compares, the ops, no failure ops
        capture_output=True,
        text=True,
        env={**os.environ, "ETCDCTL_API": "3"},
        timeout=30,
    )
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stderr


def writes(cluster: Cluster, n: int, prefix: str = "/app") -> None:
    for i in range(n):
        cluster.put(f"{prefix}/{i % 7}", f"value-{i}")


def restore_single(
    env: dict[str, str], data_dir: Path, *options: str, name: str = "m1"
) -> subprocess.CompletedProcess[str]:
    """`restore single OPTIONS` as one new member on a free loopback peer port, JSON on stdout."""
    peer = f"http://127.0.0.1:{free_port()}"
    return run_cli(
        "restore", "single", *options, "--name", name, "--peer-url", peer, "--data-dir", str(data_dir),
        "--output", "json", env=env,
    )  # fmt: skip


def start_restored(
    r: subprocess.CompletedProcess[str], cluster: Cluster, start_etcd: StartEtcd
) -> tuple[dict[str, Any], EtcdProcess]:
    """The member that a `restore single --output json`, which must have succeeded, made: started
    and healthy. Returns the command's JSON and the member."""
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    member = start_etcd(cluster.tools.etcd, out["etcd_flags"])
    wait_healthy(member.client_url, 60, member)
    return out, member


def start_with_deltas(
    start_daemon: DaemonFactory, cluster: Cluster, store: str, **extra: str
) -> tuple[DaemonProcess, dict[str, str]]:
    env = config_env(cluster, store, **{**DELTA, **extra})
    d = start_daemon(env)
    d.wait_until(lambda: any(e.get("event") == "delta watch started" for e in d.logs()), 30, "the delta watch")
    return d, env
