"""Time `restore cluster` to a healthy 3-member cluster for a big snapshot.

    PYTHONPATH=daemon .venv/bin/python bench/restore_bench.py [--mib 256] [--workdir DIR] [--only]

Starts a scratch etcd 3.5 on loopback (quota 4 GiB), fills it with 1 MiB random values until its
database holds --mib MiB, takes a snapshot with `etcd-backup snapshot` into a file:// store, then
runs `etcd-backup restore cluster` for three members (one run, or with --only three runs), starts
the three members from the printed flags and waits until all three are healthy and listed as
started. Prints each phase and the total from the restore command to a healthy cluster.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from etcd_backup.config import EtcdConfig
from etcd_backup.etcdclient import Member
from etcd_backup.etcdproc import LOOPBACK, EtcdProcess, find_binary, free_port, scratch_member, wait_healthy

QUOTA = ["--quota-backend-bytes=4294967296"]
MIB = 1024 * 1024


def fill(endpoint: str, mib: int) -> int:
    import etcd3

    host, port = endpoint.rsplit("//", 1)[1].split(":")
    client = etcd3.client(host=host, port=int(port), timeout=60)
    status = Member(EtcdConfig(endpoints=[endpoint]), endpoint)
    i = 0
    try:
        while status.status().db_size < mib * MIB:
            client.put(f"/bench/{i:06d}", os.urandom(MIB))
            i += 1
        return status.status().db_size
    finally:
        status.close()
        client.close()


def cli(env: dict[str, str], *args: str) -> dict:
    r = subprocess.run(
        [sys.executable, "-m", "etcd_backup", *args, "--output", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    if r.returncode != 0:
        raise SystemExit(f"etcd-backup {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
    result: dict = json.loads(r.stdout)
    return result


def start(etcd: str, flags: list[str], log: Path) -> EtcdProcess:
    client_url = f"http://{LOOPBACK}:{free_port()}"
    args = [*flags, f"--listen-client-urls={client_url}", f"--advertise-client-urls={client_url}", *QUOTA]
    with open(log, "ab") as out:
        proc = subprocess.Popen([etcd, *args], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    name = next(f.split("=", 1)[1] for f in flags if f.startswith("--name="))
    return EtcdProcess(name, log.parent, client_url, "", proc, log, args)


def started_members(endpoint: str) -> int:
    with Member(EtcdConfig(endpoints=[endpoint]), endpoint) as m:
        return sum(1 for x in m.members() if x.started)


def wait_cluster(members: list[EtcdProcess], timeout: float = 600) -> None:
    for m in members:
        wait_healthy(m.client_url, timeout, m)
    deadline = time.monotonic() + timeout
    while started_members(members[0].client_url) < len(members):
        if time.monotonic() > deadline:
            raise SystemExit("members did not all start")
        time.sleep(0.1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--only", action="store_true", help="rebuild each member with its own --only run")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="restore-bench-", dir=args.workdir))
    etcd = find_binary("etcd")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_BACKUP_")}
    env.update({"ETCD_BACKUP_STORAGE__URL": f"file://{work}/store", "ETCD_BACKUP_LOG__FORMAT": "json"})
    started: list[EtcdProcess] = []
    try:
        with scratch_member(etcd, work / "source", extra_args=QUOTA) as source:
            t = time.monotonic()
            db_size = fill(source.client_url, args.mib)
            print(f"filled source: db {db_size / MIB:.0f} MiB in {time.monotonic() - t:.1f}s")
            env["ETCD_BACKUP_ETCD__ENDPOINTS"] = source.client_url
            t = time.monotonic()
            snap = cli(env, "snapshot")
            print(
                f"snapshot {snap['id']}: {snap['db_size'] / MIB:.0f} MiB, {snap['keys']} keys, "
                f"{time.monotonic() - t:.1f}s"
            )
        shutil.rmtree(work / "source")
        members = {f"m{i}": f"http://{LOOPBACK}:{free_port()}" for i in (1, 2, 3)}
        base = ["restore", "cluster", "--snapshot", snap["id"], "--data-dir", str(work / "{name}")]
        for name, url in members.items():
            base += ["--member", f"{name}={url}"]
        t0 = time.monotonic()
        runs = [cli(env, *base, "--only", n) for n in members] if args.only else [cli(env, *base)]
        t1 = time.monotonic()
        print(f"restore cluster ({'3 --only runs' if args.only else 'one run'}): {t1 - t0:.1f}s")
        for out in runs:
            for m in out["members"]:
                started.append(start(etcd, m["etcd_flags"], work / f"{m['name']}.log"))
        wait_cluster(started)
        t2 = time.monotonic()
        keys = Member(EtcdConfig(endpoints=[started[0].client_url]), started[0].client_url)
        try:
            assert keys.count_keys() == snap["keys"], "restored cluster lost keys"
        finally:
            keys.close()
        print(f"start to 3 healthy started members: {t2 - t1:.1f}s")
        print(
            f"TOTAL restore cluster -> healthy 3-member cluster: {t2 - t0:.1f}s "
            f"({snap['db_size'] / MIB:.0f} MiB snapshot)"
        )
    finally:
        for p in started:
            p.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
