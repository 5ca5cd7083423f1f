"""Benchmark: what `storage.copy_to` costs the primary snapshot, per kind of second store.

    .venv/bin/python bench/copy_bench.py 1024 [--primary moto] [--copy file,same,other] [--runs 3]

Fills a throwaway local etcd 3.5 to SIZE_MB, starts moto and SeaweedFS, then runs
`etcd-backup snapshot --output json` to the primary store without a copy and with each kind of
copy, alternating the order from run to run, every run meeting empty stores:
  file   copy_to a local directory (made from the kept spool)
  same   copy_to another bucket of the primary's S3 server (server-side CopyObject)
  other  copy_to a bucket of the other S3 server (made from the kept spool)
and prints, per run: the primary snapshot's duration (the manifest's duration_seconds: stream
start to the primary commit; the copy starts after it), its ratio to the run without a copy, the
command's wall time (which includes the copy), and etcd-backup's CPU seconds per GiB.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from snapshot_bench import AWS, fill, s3_client, start_bench_etcd, start_moto, start_seaweedfs

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "daemon"))

from etcd_backup.etcdproc import wait_healthy  # noqa: E402


def snapshot(env: dict[str, str]) -> tuple[float, float, float]:
    """(primary duration, wall seconds, CPU seconds) of one `etcd-backup snapshot`."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "etcd_backup", "snapshot", "--output", "json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(proc.pid, 0)  # the output is small: it waits in the pipes
    wall = time.perf_counter() - start
    out, err = proc.stdout.read() if proc.stdout else b"", proc.stderr.read() if proc.stderr else b""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"snapshot failed: {err.decode()[-800:]}")
    if err.strip():
        raise SystemExit(f"snapshot warned (the copy failed?): {err.decode()[-800:]}")
    return float(json.loads(out)["duration_seconds"]), wall, usage.ru_utime + usage.ru_stime


def empty(servers: dict[str, str], work: Path) -> None:
    for endpoint in servers.values():
        s3 = s3_client(endpoint)
        for bucket in ("bench", "copy"):
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                for obj in page.get("Contents", []):
                    s3.delete_object(Bucket=bucket, Key=obj["Key"])
    for name in ("primary-store", "copy-store"):
        shutil.rmtree(work / name, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("size_mb", type=int)
    ap.add_argument("--primary", default="moto", help="moto, seaweedfs or file")
    ap.add_argument("--copy", default="file,same,other", help="kinds of second store (see above)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workdir", default=None, help="where etcd data, spool and file stores go")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="etcd-backup-copy-bench-", dir=args.workdir))
    etcd = start_bench_etcd(work)
    client_url = etcd.client_url
    procs: list[subprocess.Popen[bytes]] = []
    servers: dict[str, str] = {}
    try:
        wait_healthy(client_url, 30, etcd)
        fill(client_url, args.size_mb)
        for name in ("moto", "seaweedfs"):
            (base := work / name).mkdir()
            proc, endpoint = start_moto(base) if name == "moto" else start_seaweedfs(base)
            procs.append(proc)
            servers[name] = endpoint
            for bucket in ("bench", "copy"):
                s3_client(endpoint).create_bucket(Bucket=bucket)
        # As installed: with compiled bytecode (a PYTHONDONTWRITEBYTECODE of the shell would have
        # every run compile etcd-backup's modules anew, about 0.1 CPU-s that no installation pays).
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_BACKUP_")}
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env.update(
            {**AWS, "ETCD_BACKUP_ETCD__ENDPOINTS": client_url, "ETCD_BACKUP_LOG__LEVEL": "warning"},
            ETCD_BACKUP_STORAGE__SPOOL_DIR=str(work / "spool"),
        )
        if args.primary == "file":
            env["ETCD_BACKUP_STORAGE__URL"] = f"file://{work}/primary-store"
        else:
            env["ETCD_BACKUP_STORAGE__URL"] = "s3://bench/primary"
            env["ETCD_BACKUP_STORAGE__ENDPOINT_URL"] = servers[args.primary]
        other = "seaweedfs" if args.primary != "seaweedfs" else "moto"
        copies = {
            "file": {"ETCD_BACKUP_STORAGE__COPY_TO": f"file://{work}/copy-store"},
            "same": {"ETCD_BACKUP_STORAGE__COPY_TO": "s3://copy/second"},
            "other": {
                "ETCD_BACKUP_STORAGE__COPY_TO": "s3://copy/second",
                "ETCD_BACKUP_STORAGE__COPY_ENDPOINT_URL": servers[other],
            },
        }
        gib = args.size_mb / 1024
        print(f"primary {args.primary}, {args.size_mb} MiB; copy 'other' is {other}")
        print(f"{'copy':6} {'run':>3} {'primary s':>9} {'no copy s':>9} {'ratio':>6} {'wall s':>7} {'CPU s/GiB':>9}")
        ratios: dict[str, list[float]] = {}
        for kind in args.copy.split(","):
            for run in range(1, args.runs + 1):
                order = [None, kind] if run % 2 else [kind, None]
                got: dict[str | None, tuple[float, float, float]] = {}
                for variant in order:
                    empty(servers, work)
                    os.sync()
                    got[variant] = snapshot({**env, **(copies[variant] if variant else {})})
                (with_copy, wall, cpu), (without, _, _) = got[kind], got[None]
                ratios.setdefault(kind, []).append(with_copy / without)
                print(
                    f"{kind:6} {run:>3} {with_copy:>9.2f} {without:>9.2f} {with_copy / without:>6.3f} "
                    f"{wall:>7.2f} {cpu / gib:>9.2f}",
                    flush=True,
                )
        for kind, values in ratios.items():
            print(f"{kind}: primary duration with the copy / without, median {statistics.median(values):.3f}")
    finally:
        etcd.stop()
        for proc in procs:
            proc.terminate()
            proc.wait(15)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
