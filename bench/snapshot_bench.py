"""Benchmark: `etcd-backup snapshot` against the manual baseline, at a given database size.

    .venv/bin/python bench/snapshot_bench.py 256 [--storage s3,file] [--runs 1] [--encrypt]

Fills a throwaway local etcd 3.5 to SIZE_MB with incompressible values, starts a local S3
endpoint (moto server), then times, per storage kind:
  baseline  `etcdctl snapshot save` + `sha256sum` + boto3 `upload_file` (S3) or `cp` (file)
  ours      `etcd-backup snapshot` (streamed, verified, stored, manifest written)
  ours+age  with --encrypt, also `etcd-backup snapshot` encrypting to a fresh age recipient
and prints wall time, the ratio, each one's peak RSS (largest single process), and the time of
the structural (bbolt) verification alone. With --encrypt each run is baseline, ours, ours+age,
and the encrypted run's ratios to both are printed. Loopback only; everything is cleaned up on exit.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "daemon"))

from etcd_backup import bbolt, crypto  # noqa: E402
from etcd_backup.etcdproc import find_binary, free_port, start_member, wait_healthy  # noqa: E402

AWS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret", "AWS_DEFAULT_REGION": "us-east-1"}


class Measured(NamedTuple):
    seconds: float  # wall time
    rss_kib: int  # peak RSS
    cpu: float  # user + system seconds


def run_measured(cmd: list[str], env: dict[str, str] | None = None) -> Measured:
    """Wall seconds, peak RSS and CPU seconds of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        err = proc.stderr.read().decode()[-500:] if proc.stderr else ""
        raise SystemExit(f"{' '.join(cmd[:3])} failed: {err}")
    return Measured(elapsed, usage.ru_maxrss, usage.ru_utime + usage.ru_stime)


def fill(endpoint: str, size_mb: int) -> None:
    import etcd3

    host, port = endpoint.split("//")[1].split(":")
    value_size = 1024 * 1024 - 1024
    count = size_mb * 1024 * 1024 // value_size

    def put_range(start: int) -> None:
        client = etcd3.client(host=host, port=int(port), timeout=60)
        for i in range(start, count, 4):
            client.put(f"/bench/{i:06d}", os.urandom(value_size))
        client.close()

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(put_range, range(4)))


def start_moto(base: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent))
    log = open(base / "moto.log", "wb")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen(
        [exe or "moto_server", "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT
    )
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
            return proc, endpoint
        except OSError:
            time.sleep(0.1)
    raise SystemExit("moto server did not start")


UPLOAD = """
import sys, boto3
from boto3.s3.transfer import TransferConfig
c = boto3.client("s3", endpoint_url=sys.argv[1])
c.upload_file(sys.argv[2], sys.argv[3], sys.argv[4], Config=TransferConfig(multipart_chunksize=8*1024*1024))
"""


def baseline(kind: str, endpoint: str, moto: str, bucket: str, work: Path) -> tuple[float, int]:
    etcdctl = find_binary("etcdctl")
    snap = work / "baseline.db"
    snap.unlink(missing_ok=True)
    env = {**os.environ, "ETCDCTL_API": "3", **AWS}
    t1, r1, _ = run_measured([etcdctl, f"--endpoints={endpoint}", "snapshot", "save", str(snap)], env)
    t2, r2, _ = run_measured(["sha256sum", str(snap)])
    if kind == "s3":
        t3, r3, _ = run_measured([sys.executable, "-c", UPLOAD, moto, str(snap), bucket, "baseline/snap.db"], env)
    else:
        dest = work / "baseline-store"
        dest.mkdir(exist_ok=True)
        t3, r3, _ = run_measured(["cp", str(snap), str(dest / "snap.db")])
    snap.unlink()
    print(
        f"  baseline parts: save {t1:.2f}s  sha256sum {t2:.2f}s  {'upload' if kind == 's3' else 'cp'} {t3:.2f}s",
        flush=True,
    )
    return t1 + t2 + t3, max(r1, r2, r3)


def ours(
    kind: str, endpoint: str, moto: str, bucket: str, work: Path, *, concurrency: int, recipient: str | None = None
) -> Measured:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_BACKUP_")}
    env.update(AWS)
    env.update(
        {
            "ETCD_BACKUP_ETCD__ENDPOINTS": endpoint,
            "ETCD_BACKUP_LOG__LEVEL": "warning",
            "ETCD_BACKUP_STORAGE__SPOOL_DIR": str(work / "spool"),
            "ETCD_BACKUP_STORAGE__CONCURRENCY": str(concurrency),
        }
    )
    if recipient:
        env["ETCD_BACKUP_ENCRYPTION__RECIPIENTS"] = recipient
    if kind == "s3":
        env.update({"ETCD_BACKUP_STORAGE__URL": f"s3://{bucket}/ours", "ETCD_BACKUP_STORAGE__ENDPOINT_URL": moto})
    else:
        env["ETCD_BACKUP_STORAGE__URL"] = f"file://{work}/ours-store"
    return run_measured([sys.executable, "-m", "etcd_backup", "snapshot"], env)


def clear_store(s3: Any, work: Path) -> None:
    """Every run starts from the same store: moto keeps objects in its own process, so each kept
    1 GiB snapshot would make the next run's S3 slower than the one before."""
    shutil.rmtree(work / "ours-store", ignore_errors=True)
    shutil.rmtree(work / "baseline-store", ignore_errors=True)
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket="bench"):
        for obj in page.get("Contents", []):
            s3.delete_object(Bucket="bench", Key=obj["Key"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("size_mb", type=int)
    ap.add_argument("--storage", default="s3,file")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--concurrency", type=int, default=4, help="storage.concurrency for etcd-backup (default 4)")
    ap.add_argument("--workdir", default=None, help="where etcd data and spool files go (default: a temp dir)")
    ap.add_argument("--encrypt", action="store_true", help="also time etcd-backup with age encryption")
    args = ap.parse_args()
    recipient = crypto.generate()[1] if args.encrypt else None  # the private key is not even kept

    work = Path(tempfile.mkdtemp(prefix="etcd-backup-bench-", dir=args.workdir))
    client_url, peer_url = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
    etcd = start_member(
        find_binary("etcd"),
        name="bench",
        data_dir=work / "etcd",
        client_url=client_url,
        peer_url=peer_url,
        extra_args=["--quota-backend-bytes=17179869184"],
        log_path=work / "etcd.log",
    )
    moto, moto_url = start_moto(work)
    try:
        wait_healthy(client_url, 30, etcd)
        t = time.perf_counter()
        fill(client_url, args.size_mb)
        print(f"filled etcd to ~{args.size_mb} MiB in {time.perf_counter() - t:.1f}s")
        import boto3

        s3 = boto3.client(
            "s3",
            endpoint_url=moto_url,
            **{k.lower(): v for k, v in AWS.items() if k != "AWS_DEFAULT_REGION"},
            region_name="us-east-1",
        )
        s3.create_bucket(Bucket="bench")
        print(
            f"{'storage':8} {'run':>3} {'baseline s':>10} {'ours s':>8} {'ratio':>6} "
            f"{'base RSS MiB':>12} {'ours RSS MiB':>12}"
        )
        for kind in args.storage.split(","):
            for run in range(1, args.runs + 1):
                # Flush dirty pages first so neither side pays for the other's writeback.
                os.sync()
                bt, br = baseline(kind, client_url, moto_url, "bench", work)
                # With --encrypt, plain and encrypted take turns going first (page cache, moto's state).
                variants = [None, recipient] if recipient else [None]
                if run % 2 == 0:
                    variants.reverse()
                timed: dict[str | None, Measured] = {}
                for variant in variants:
                    clear_store(s3, work)  # each meets an empty store (the baseline's object gone too)
                    os.sync()
                    timed[variant] = ours(
                        kind, client_url, moto_url, "bench", work, concurrency=args.concurrency, recipient=variant
                    )
                clear_store(s3, work)
                ot, orss, cpu = timed[None]
                print(
                    f"{kind:8} {run:>3} {bt:>10.2f} {ot:>8.2f} {ot / bt:>6.2f} {br / 1024:>12.1f} "
                    f"{orss / 1024:>12.1f}   (etcd-backup used {cpu:.1f} CPU s)",
                    flush=True,
                )
                if recipient:
                    et, erss, ecpu = timed[recipient]
                    print(
                        f"{kind + '+age':8} {run:>3} {bt:>10.2f} {et:>8.2f} {et / bt:>6.2f} {br / 1024:>12.1f} "
                        f"{erss / 1024:>12.1f}   (etcd-backup used {ecpu:.1f} CPU s; "
                        f"{et / ot:.3f}x etcd-backup without encryption)",
                        flush=True,
                    )
        snap = work / "verify.db"
        subprocess.run(
            [find_binary("etcdctl"), f"--endpoints={client_url}", "snapshot", "save", str(snap)],
            check=True,
            capture_output=True,
            env={**os.environ, "ETCDCTL_API": "3"},
        )
        t = time.perf_counter()
        status = bbolt.check(snap, size=snap.stat().st_size - 32)
        print(
            f"structural verification of {snap.stat().st_size / 2**20:.0f} MiB: "
            f"{time.perf_counter() - t:.2f}s (revision {status.revision}, {status.total_key} entries)"
        )
    finally:
        etcd.stop()
        moto.terminate()
        moto.wait(10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
