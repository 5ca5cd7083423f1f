"""Benchmark of point-in-time recovery (issue 14, "Targets"): real etcd 3.5 members, the real
daemon and CLI, S3 over HTTP (moto, SeaweedFS) and file://, loopback only.

    .venv/bin/python bench/pitr_bench.py [--only rpo,rpo-killed,overhead,replay,memory,scale] [options]

Figures (each printed with the command that produced it):
  rpo         the daemon alive: at a steady --rate writes/s (bench/loadgen.py records the revision
              of every acknowledged write) every member of a 3-member cluster is killed (SIGKILL)
              at a random moment; once the daemon stored what its broken watch had seen,
              `etcd-backup timeline --output json` -> newest.revision against the newest
              acknowledged revision, per trial (--trials)
  rpo-killed  the daemon is killed (SIGKILL) with every member: seconds and revisions of
              acknowledged writes the store does not hold (--killed-trials)
  overhead    closed-loop write throughput of the 3-member cluster without and with the daemon
              watching, alternating in one run (--overhead-rounds, --overhead-seconds)
  replay      `restore cluster --to-latest` of 3 members from a --replay-mib MiB snapshot plus
              --replay-revisions revisions of 1 KiB values that the daemon stored: one run with
              `{name}`, and one `--only` run per member; the replay rate from the scratch member
  memory      daemon RSS, second by second, over --memory-minutes of --memory-rate writes/s
  scale       synthetic buckets of --scale-sizes delta objects (each with its manifest, in the
              layout delta.py defines, chains of --deltas-per-chain deltas behind full snapshots)
              on --scale-stores: `list`, `timeline`, `prune --dry-run`, the time until
              `restore single --to-latest` applies its first transaction, and the daemon's work
              per interval (S3 requests it makes, seconds per delta written)

Every figure runs --runs times where that makes sense and is reported as median (min-max).
The load average and the busiest other processes are printed with each figure: the machine is
shared. Nothing listens beyond 127.0.0.1; everything started is stopped on exit.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "daemon"))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

import loadgen  # noqa: E402
from snapshot_bench import start_moto, start_seaweedfs  # noqa: E402

from etcd_backup import delta  # noqa: E402
from etcd_backup.etcdproc import EtcdProcess, find_binary, free_port, start_member, wait_healthy  # noqa: E402
from etcd_backup.model import rfc3339  # noqa: E402

PY = sys.executable
LOOPBACK = "127.0.0.1"
AWS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret", "AWS_DEFAULT_REGION": "us-east-1"}
MIB = 1024 * 1024
FIGURES = ("rpo", "rpo-killed", "overhead", "replay", "memory", "scale")


# --- reporting ---------------------------------------------------------------------------------


def say(text: str = "") -> None:
    print(text, flush=True)


def spread(values: Sequence[float], fmt: str = "{:.2f}") -> str:
    """median (min-max, n) of a few measurements."""
    if not values:
        return "-"
    med = fmt.format(statistics.median(values))
    if len(values) == 1:
        return med
    return f"{med} ({fmt.format(min(values))}-{fmt.format(max(values))}, n={len(values)})"


def _cpu_by_process() -> dict[int, tuple[str, float]]:
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            fields = stat.rsplit(")", 1)[1].split()
            out[int(entry.name)] = (name, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"))
    return out


def machine() -> str:
    """The load average and the busiest processes over one second: what else was running."""
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    before = _cpu_by_process()
    time.sleep(1.0)
    after = _cpu_by_process()
    busy = sorted(((cpu - before[pid][1], name) for pid, (name, cpu) in after.items() if pid in before), reverse=True)
    top = ", ".join(f"{name} {100 * used:.0f}%" for used, name in busy[:5] if used > 0.005) or "none"
    return f"load average {load}; busiest processes over 1 s: {top}"


def command(env: dict[str, str], args: Sequence[str]) -> str:
    """`etcd-backup ARGS` with the settings that matter to the figure (credentials left out)."""
    hidden = {"ETCD_BACKUP_LOG__FORMAT", "ETCD_BACKUP_TOOLS__ETCDUTL", "ETCD_BACKUP_STORAGE__SPOOL_DIR"}
    shown = []
    for k, v in sorted(env.items()):
        if k.startswith("ETCD_BACKUP_") and k not in hidden:
            value = f"<{len(v.split(','))} member(s)>" if k == "ETCD_BACKUP_ETCD__ENDPOINTS" else v
            shown.append(f"{k}={value}")
    return " ".join([*shown, "etcd-backup", *args])


# --- processes ---------------------------------------------------------------------------------


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a running process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(entry.name))
    return out


def etcd_revision(client_url: str, timeout: float = 1.0) -> int:
    """The member's current revision, over etcd's JSON gateway (no gRPC client needed)."""
    req = urllib.request.Request(f"{client_url}/v3/maintenance/status", data=b"{}", method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return int(json.loads(resp.read())["header"]["revision"])


@dataclass
class Timed:
    seconds: float
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


class Bench:
    """The work dir, the S3 servers, and every process started (stopped at the end)."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.etcds: list[EtcdProcess] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self.servers: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
        self.etcd = find_binary("etcd")
        self.etcdutl = find_binary("etcdutl")

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        for m in self.etcds:
            m.kill()
        for proc, _ in self.servers.values():
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()

    def dir(self, name: str) -> Path:
        path = self.work / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    # --- etcd ----------------------------------------------------------------------------------

    def cluster(self, size: int, label: str, extra_args: Sequence[str] = ()) -> list[EtcdProcess]:
        base = self.dir(label)
        names = [f"m{i}" for i in range(1, size + 1)]
        peers = {n: f"http://{LOOPBACK}:{free_port()}" for n in names}
        initial = ",".join(f"{n}={u}" for n, u in peers.items())
        members = [
            start_member(
                self.etcd,
                name=n,
                data_dir=base / n,
                client_url=f"http://{LOOPBACK}:{free_port()}",
                peer_url=peers[n],
                initial_cluster=initial,
                token=f"bench-{label}",
                extra_args=["--quota-backend-bytes=8589934592", *extra_args],
                log_path=base / f"{n}.log",
            )
            for n in names
        ]
        self.etcds += members
        for m in members:
            wait_healthy(m.client_url, 60, m)
        return members

    # --- S3 ------------------------------------------------------------------------------------

    def s3(self, kind: str) -> str:
        if kind not in self.servers:
            start = start_moto if kind == "moto" else start_seaweedfs
            self.servers[kind] = start(self.dir(kind))
        return self.servers[kind][1]

    def store(self, kind: str, label: str) -> Store:
        if kind == "file":
            root = self.work / f"{label}-store"
            return Store("file", f"file://{root}", {"ETCD_BACKUP_STORAGE__URL": f"file://{root}"}, root=root)
        endpoint = self.s3(kind)
        bucket = f"{label.replace('_', '-')}-{secrets.token_hex(3)}"
        s3_client(endpoint).create_bucket(Bucket=bucket)
        url = f"s3://{bucket}/etcd"
        env = {**AWS, "ETCD_BACKUP_STORAGE__URL": url, "ETCD_BACKUP_STORAGE__ENDPOINT_URL": endpoint}
        return Store(kind, url, env, endpoint=endpoint, bucket=bucket, prefix="etcd/")

    # --- etcd-backup -----------------------------------------------------------------------------

    def env(self, endpoints: Sequence[str], store: Store, **settings: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ETCD_BACKUP_", "AWS_"))}
        env.update(store.env)
        env.update(
            {
                "ETCD_BACKUP_ETCD__ENDPOINTS": ",".join(endpoints),
                "ETCD_BACKUP_LOG__FORMAT": "json",
                "ETCD_BACKUP_TOOLS__ETCDUTL": self.etcdutl,
                "ETCD_BACKUP_STORAGE__SPOOL_DIR": str(self.dir("spool")),
            }
        )
        for k, v in settings.items():
            env[f"ETCD_BACKUP_{k.upper()}"] = v
        return env

    def cli(self, env: dict[str, str], *args: str, timeout: float = 3600) -> Timed:
        started = time.perf_counter()
        r = subprocess.run([PY, "-m", "etcd_backup", *args], env=env, capture_output=True, text=True, timeout=timeout)
        return Timed(time.perf_counter() - started, r.returncode, r.stdout, r.stderr)

    def daemon(self, env: dict[str, str], label: str) -> Daemon:
        port = free_port()
        log = self.dir("logs") / f"daemon-{label}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [PY, "-m", "etcd_backup", "run"],
                env={**env, "ETCD_BACKUP_SERVER__LISTEN": f"{LOOPBACK}:{port}"},
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.procs.append(proc)
        return Daemon(proc, port, log)

    def load(self, endpoints: Sequence[str], label: str, *, rate: float, **options: Any) -> Load:
        files = self.dir("load")
        out, status, acks = files / f"{label}.json", files / f"{label}.status", files / f"{label}.acks"
        for f in (out, status, acks):
            f.unlink(missing_ok=True)
        args = [PY, str(ROOT / "bench" / "loadgen.py"), "--endpoints", ",".join(endpoints), "--rate", str(rate)]
        args += ["--out", str(out), "--status", str(status)]
        if options.pop("acks", False):
            args += ["--acks", str(acks)]
        for k, v in options.items():
            args += [f"--{k.replace('_', '-')}", str(v)]
        with open(files / f"{label}.err", "wb") as err:
            proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err)
        self.procs.append(proc)
        return Load(proc, out, status, acks, args)


@dataclass
class Store:
    kind: str
    url: str
    env: dict[str, str]
    root: Path | None = None  # file://
    endpoint: str = ""  # S3
    bucket: str = ""
    prefix: str = ""


def s3_client(endpoint: str, pool: int = 10) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=AWS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=AWS["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
        config=Config(max_pool_connections=pool, s3={"addressing_style": "path"}),
    )


@dataclass
class Daemon:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def wait_event(self, event: str, timeout: float, where: Callable[[dict[str, Any]], bool] = lambda e: True) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [e for e in self.events() if e.get("event", "").startswith(event) and where(e)]
            if found:
                return found[-1]
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        tail = self.log_path.read_text(errors="replace")[-2000:]
        raise SystemExit(f"daemon: no {event!r} after {timeout:.0f}s:\n{tail}")

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{self.port}/metrics", timeout=5) as resp:
            body = resp.read().decode()
        out = {}
        for line in body.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                with contextlib.suppress(ValueError):
                    out[name] = float(value)
        return out

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@dataclass
class Load:
    process: subprocess.Popen[bytes]
    out: Path
    status_path: Path
    acks_path: Path
    args: list[str]

    def status(self) -> dict[str, Any]:
        try:
            result: dict[str, Any] = json.loads(self.status_path.read_text())
            return result
        except (OSError, ValueError):
            return {"acked": 0, "newest_revision": 0, "failed": 0}

    def wait(self, timeout: float = 600) -> dict[str, Any]:
        self.process.wait(timeout)
        result: dict[str, Any] = json.loads(self.out.read_text())
        return result

    def stop(self) -> dict[str, Any]:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.wait(60)

    def acks(self) -> list[tuple[float, int]]:
        return loadgen.read_acks(self.acks_path)

    def wait_acked(self, n: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.status()["acked"] < n:
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise SystemExit(f"load generator: fewer than {n} writes acknowledged ({self.status()})")
            time.sleep(0.1)

    @property
    def shown(self) -> str:
        words = []
        for flag, value in zip(self.args[2::2], self.args[3::2], strict=False):
            if flag == "--endpoints":
                words.append(f"--endpoints <{len(value.split(','))} member(s)>")
            elif flag not in {"--out", "--status", "--acks"}:
                words.append(f"{flag} {value}")
        return "bench/loadgen.py " + " ".join(words)


def newest_revision(b: Bench, env: dict[str, str]) -> int:
    """The newest restorable revision, as `timeline` says (0: none)."""
    t = b.cli(env, "timeline", "--output", "json")
    newest = t.json()["newest"] if t.returncode == 0 else None
    return int(newest["revision"]) if newest else 0


def event_time(e: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(e["timestamp"]).replace("Z", "+00:00")).timestamp()


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")


# --- 1 and 2: RPO ------------------------------------------------------------------------------


def rpo(b: Bench, args: argparse.Namespace, *, daemon_killed: bool) -> None:
    trials = args.killed_trials if daemon_killed else args.trials
    interval = args.interval
    what = "daemon killed with etcd" if daemon_killed else "daemon alive"
    say(f"\n## RPO, {what}: {trials} trials at {args.rate:.0f} writes/s, delta.interval={interval}s, {args.rpo_store}")
    say(f"   ({machine()})")
    rows = []
    for trial in range(1, trials + 1):
        rows.append(_rpo_trial(b, args, trial, daemon_killed=daemon_killed))
        r = rows[-1]
        if daemon_killed:
            say(
                f"  trial {trial:2}: kill at {r['kill_after']:5.1f}s of load; acked up to {r['acked_revision']}, "
                f"restorable {r['restorable']}: lost {r['lost_revisions']} revisions = {r['lost_seconds']:.2f}s of "
                f"writes (newest restorable point {r['point_age']:.2f}s before the kill)"
            )
        else:
            verdict = (
                "EQUAL"
                if r["restorable"] == r["acked_revision"]
                else (
                    f"+{r['restorable'] - r['acked_revision']} (applied, ack lost in the kill)"
                    if r["restorable"] > r["acked_revision"]
                    else f"LOST {r['acked_revision'] - r['restorable']} acknowledged revisions"
                )
            )
            say(
                f"  trial {trial:2}: kill at {r['kill_after']:5.1f}s of load ({r['acked']} writes acked); newest acked "
                f"revision {r['acked_revision']}, newest restorable {r['restorable']}: {verdict}; stored "
                f"{r['flush_after']:.2f}s after the kill (timeline {r['timeline_s']:.2f}s)"
            )
    say(f"  commands: {rows[0]['daemon_cmd']}")
    say(f"            {rows[0]['load_cmd']}")
    say(f"            kill -9 <every etcd member>{' <the daemon>' if daemon_killed else ''} at a random moment, then")
    say(f"            {rows[0]['timeline_cmd']}  -> newest.revision")
    if daemon_killed:
        lost = [r["lost_seconds"] for r in rows]
        revs = [float(r["lost_revisions"]) for r in rows]
        say(
            f"  seconds of acknowledged writes lost: {spread(lost)}; max {max(lost):.2f}s "
            f"(target <= delta.interval + 1 = {interval + 1:.0f}s: {'met' if max(lost) <= interval + 1 else 'MISSED'})"
        )
        say(f"  revisions lost: {spread(revs, '{:.0f}')}")
    else:
        lost = [r for r in rows if r["restorable"] < r["acked_revision"]]
        equal = sum(1 for r in rows if r["restorable"] == r["acked_revision"])
        say(
            f"  newest restorable == newest acknowledged in {equal}/{trials} trials; an acknowledged write lost in "
            f"{len(lost)}/{trials}; flush after the kill {spread([r['flush_after'] for r in rows])}s"
        )
    say(f"   ({machine()})")


def _rpo_trial(b: Bench, args: argparse.Namespace, trial: int, *, daemon_killed: bool) -> dict[str, Any]:
    label = f"rpo{'k' if daemon_killed else ''}{trial}"
    members = b.cluster(3, label)
    store = b.store(args.rpo_store, label)
    env = b.env(
        [m.client_url for m in members],
        store,
        delta__interval=f"{args.interval:g}s",
        schedule__interval="1h",
        verify__restore_drill="off",
    )
    d = b.daemon(env, label)
    d.wait_event("delta watch started", 90)
    load = b.load([m.client_url for m in members], label, rate=args.rate, concurrency=16, acks=daemon_killed)
    load.wait_acked(int(args.rate))  # a second of steady load
    started = load.status().get("first_ack_at") or time.time()
    # A random moment anywhere in the flush cycle (and a few seconds of load at least).
    time.sleep(random.uniform(2.0, 2.0 + 2 * args.interval))
    killed_at = time.time()
    if daemon_killed:
        os.kill(d.pid, signal.SIGKILL)
    for m in members:
        os.kill(m.process.pid, signal.SIGKILL)
    summary = load.wait(120)
    for m in members:
        m.kill()
    row: dict[str, Any] = {
        "kill_after": killed_at - started,
        "acked": summary["acked"],
        "acked_revision": summary["newest_revision"],
        "daemon_cmd": command(env, ["run"]),
        "load_cmd": load.shown,
        "timeline_cmd": command(store.env, ["timeline", "--output", "json"]),
    }
    if not daemon_killed:
        # What the broken watch had buffered is stored at once: wait for that, then ask storage.
        d.wait_event("delta watch broken", 30)
        wait_for(lambda: d.metrics().get("etcd_backup_delta_lag_seconds") == 0.0, 30, "the buffer stored")
        stored = [e for e in d.events() if e.get("event") == "delta stored"]
        row["flush_after"] = max(0.0, event_time(stored[-1]) - killed_at) if stored else float("nan")
    t = b.cli(env, "timeline", "--output", "json")
    if t.returncode != 0:
        raise SystemExit(f"timeline failed: {t.stderr}")
    newest = t.json()["newest"]
    row["restorable"] = newest["revision"] if newest else 0
    row["timeline_s"] = t.seconds
    if daemon_killed:
        acks = load.acks()
        last_at = summary["newest_at"]
        kept = [at for at, rev in acks if rev <= row["restorable"]]
        row["lost_revisions"] = max(0, summary["newest_revision"] - row["restorable"])
        row["lost_seconds"] = max(0.0, last_at - max(kept)) if kept else last_at - started
        point = datetime.fromisoformat(newest["time"].replace("Z", "+00:00")).timestamp() if newest else started
        row["point_age"] = killed_at - point
    d.kill()
    return row


# --- 3: overhead -------------------------------------------------------------------------------


def overhead(b: Bench, args: argparse.Namespace) -> None:
    say(
        f"\n## Overhead on etcd: closed-loop writes ({args.overhead_concurrency} in flight, 256 B values) to a "
        f"3-member cluster, {args.overhead_seconds:.0f}s per phase, {args.overhead_rounds} rounds"
    )
    say(f"   ({machine()})")
    members = b.cluster(3, "overhead")
    endpoints = [m.client_url for m in members]
    store = b.store("file", "overhead")
    env = b.env(
        endpoints, store, delta__interval=f"{args.interval:g}s", schedule__interval="1h", verify__restore_drill="off"
    )
    rates: dict[str, list[float]] = {"without": [], "with": []}
    ratios = []
    daemon_cpu = []
    etcd_cpu: dict[str, list[float]] = {"without": [], "with": []}
    revision = 0
    shown = ""
    for rnd in range(1, args.overhead_rounds + 1):
        order = ["without", "with"] if rnd % 2 else ["with", "without"]
        got: dict[str, float] = {}
        for phase in order:
            d = None
            if phase == "with":
                d = b.daemon(env, f"overhead{rnd}")
                d.wait_event("delta watch started", 120)
                # Caught up with what it missed while stopped: only then does it watch at the head.
                wait_for(lambda r=revision: newest_revision(b, env) >= r, 120, "the daemon to catch up", 0.5)
            cpu0 = proc_cpu(d.pid) if d else 0.0
            etcd0 = sum(proc_cpu(m.process.pid) for m in members)
            load = b.load(
                endpoints,
                f"overhead{rnd}{phase}",
                rate=0,
                concurrency=args.overhead_concurrency,
                duration=args.overhead_seconds,
            )
            shown = load.shown
            s = load.wait(args.overhead_seconds + 60)
            revision = s["newest_revision"]
            got[phase] = s["rate"]
            rates[phase].append(s["rate"])
            etcd_cpu[phase].append((sum(proc_cpu(m.process.pid) for m in members) - etcd0) / args.overhead_seconds)
            if d is not None:
                daemon_cpu.append((proc_cpu(d.pid) - cpu0) / args.overhead_seconds)
                d.stop()
        ratios.append(got["with"] / got["without"])
        say(
            f"  round {rnd} ({' then '.join(order)}): without {got['without']:.0f} writes/s, with "
            f"{got['with']:.0f} writes/s: {100 * ratios[-1]:.1f} %"
        )
    say(
        f"  without the daemon: {spread(rates['without'], '{:.0f}')} writes/s; with: "
        f"{spread(rates['with'], '{:.0f}')} writes/s"
    )
    med = statistics.median(ratios)
    say(
        f"  with/without: {spread([100 * r for r in ratios], '{:.1f}')} % (target >= 95 %: "
        f"{'met' if med >= 0.95 else 'MISSED'} by the median)"
    )
    say(
        f"  CPU cores used: daemon {spread(daemon_cpu)}, the 3 etcd members without {spread(etcd_cpu['without'])} "
        f"/ with {spread(etcd_cpu['with'])} (2 cores in this machine)"
    )
    say(f"  commands: {shown}")
    say(f"            with: {command(env, ['run'])} (started before, stopped after each 'with' phase)")
    say(f"   ({machine()})")
    for m in members:
        m.kill()


# --- 4: replay ---------------------------------------------------------------------------------


def fill_mib(endpoint: str, mib: int) -> None:
    """Random 1 MiB values until the database holds `mib` MiB (as bench/restore_bench.py)."""
    from etcd_backup.config import EtcdConfig
    from etcd_backup.etcdclient import Event, KeyValue, Member

    with Member(EtcdConfig(endpoints=[endpoint]), endpoint) as m:
        i = 0
        while m.status().db_size < mib * MIB:
            m.txn([Event(False, KeyValue(f"/big/{i:06d}".encode(), os.urandom(MIB), 0, 0, 0, 0))])
            i += 1


class ScratchWatch:
    """Polls the scratch etcd that a restore starts (a child of the CLI process): when it first
    holds a revision above the base (the first replayed transaction) and when it reaches the target."""

    def __init__(self, cli_pid: int, base_revision: int, target: int) -> None:
        self.cli_pid = cli_pid
        self.base = base_revision
        self.target = target
        self.scratch_up: float | None = None
        self.first_txn: float | None = None
        self.reached: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _client_url(self) -> str | None:
        for pid in children(self.cli_pid):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"etcd") and b"--name=scratch" in argv:
                for a in argv:
                    if a.startswith(b"--listen-client-urls="):
                        return a.split(b"=", 1)[1].decode()
        return None

    def _run(self) -> None:
        url = None
        while not self._stop.is_set() and self.reached is None:
            if url is None:
                url = self._client_url()
                if url is None:
                    time.sleep(0.02)
                    continue
            try:
                rev = etcd_revision(url, 0.5)
            except OSError:
                time.sleep(0.02)
                continue
            now = time.perf_counter()
            self.scratch_up = self.scratch_up or now
            if rev > self.base and self.first_txn is None:
                self.first_txn = now
            if rev >= self.target:
                self.reached = now
            time.sleep(0.02)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


def timed_restore(b: Bench, env: dict[str, str], args: Sequence[str], base: int, target: int) -> dict[str, Any]:
    """Run a restore, timing the phases seen from outside: scratch etcd serving, first replayed
    transaction, target reached, command done."""
    started = time.perf_counter()
    proc = subprocess.Popen([PY, "-m", "etcd_backup", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    watch = ScratchWatch(proc.pid, base, target)
    out, err = proc.communicate(timeout=3600)
    ended = time.perf_counter()
    watch.close()
    if proc.returncode != 0:
        raise SystemExit(f"etcd-backup {' '.join(args[:3])} failed ({proc.returncode}): {err.decode()[-1500:]}")

    def since(t: float | None) -> float:
        return t - started if t is not None else float("nan")

    return {
        "total": ended - started,
        "scratch_up": since(watch.scratch_up),
        "first_txn": since(watch.first_txn),
        "reached": since(watch.reached),
        "replay": (watch.reached - watch.first_txn) if watch.reached and watch.first_txn else float("nan"),
        "out": json.loads(out),
        "stderr": err.decode(),
    }


def replay(b: Bench, args: argparse.Namespace) -> None:
    n = args.replay_revisions
    say(
        f"\n## Replay: restore cluster --to-latest of 3 members from a {args.replay_mib} MiB snapshot + {n} "
        f"revisions of {args.replay_value} B values ({args.replay_store}, {args.runs} run(s) each)"
    )
    say(f"   ({machine()})")
    (src,) = b.cluster(1, "replay-source")
    store = b.store(args.replay_store, "replay")
    env = b.env(
        [src.client_url],
        store,
        delta__interval=f"{args.interval:g}s",
        schedule__interval="1h",
        verify__restore_drill="off",
    )
    t = time.perf_counter()
    fill_mib(src.client_url, args.replay_mib)
    say(f"  source filled to {args.replay_mib} MiB in {time.perf_counter() - t:.0f}s")
    d = b.daemon(env, "replay")
    d.wait_event("delta watch started", 300)
    t = time.perf_counter()
    load = b.load(
        [src.client_url],
        "replay",
        rate=0,
        concurrency=32,
        count=n,
        value_size=args.replay_value,
        keys=10000,
        prefix="/replay/",
    )
    s = load.wait(3600)
    if s["acked"] != n:
        raise SystemExit(f"load generator: {s['acked']} of {n} writes acknowledged: {s['last_error']}")
    last = s["newest_revision"]
    say(f"  {n} writes in {time.perf_counter() - t:.0f}s ({s['rate']:.0f}/s): revisions up to {last}")
    wait_for(lambda: (d.metrics().get("etcd_backup_delta_last_revision") or 0) >= last, 120, "deltas stored", 0.5)
    d.stop()
    src.kill()
    tl = b.cli(env, "timeline", "--output", "json").json()
    chain = tl["chains"][0]
    base, target = chain["from_revision"], tl["newest"]["revision"]
    say(
        f"  chain: snapshot {chain['snapshot']} at revision {base} + {chain['deltas']} deltas to {target} "
        f"({target - base} revisions), gaps {chain['gaps']}"
    )
    members = {f"m{i}": f"http://{LOOPBACK}:{free_port()}" for i in (1, 2, 3)}
    restore_args = ["restore", "cluster", "--to-latest"]
    for name, url in members.items():
        restore_args += ["--member", f"{name}={url}"]
    results: dict[str, list[dict[str, Any]]] = {"one run with {name}": [], "--only, per member": []}
    healthy: list[float] = []
    for run in range(1, args.runs + 1):
        out_dir = b.dir(f"replay-r{run}")
        one = [*restore_args, "--data-dir", str(out_dir / "one" / "{name}"), "--output", "json"]
        r = timed_restore(b, env, one, base, target)
        results["one run with {name}"].append(r)
        t0 = time.perf_counter()
        _start_restored(b, r["out"]["members"], target, f"replay-r{run}")
        healthy.append(r["total"] + time.perf_counter() - t0)
        for name in members:
            only = [*restore_args, "--data-dir", str(out_dir / "only" / "{name}"), "--only", name, "--output", "json"]
            results["--only, per member"].append(timed_restore(b, env, only, base, target))
        shutil.rmtree(out_dir, ignore_errors=True)
    say(f"  {'variant':22} {'total s':>24} {'scratch up s':>12} {'1st txn s':>10} {'replay s':>24} {'rev/s':>22}")
    for variant, rs in results.items():
        rate = [(target - base) / r["replay"] for r in rs]
        say(
            f"  {variant:22} {spread([r['total'] for r in rs]):>24} {spread([r['scratch_up'] for r in rs]):>12} "
            f"{spread([r['first_txn'] for r in rs]):>10} {spread([r['replay'] for r in rs]):>24} "
            f"{spread(rate, '{:.0f}'):>22}"
        )
    one_total = statistics.median(r["total"] for r in results["one run with {name}"])
    say(f"  one run with {{name}} to 3 healthy members (started from the printed flags): {spread(healthy)}s")
    say(
        f"  target: under 60 s: {'met' if one_total < 60 else 'MISSED'} (one run; --only runs on three hosts "
        "run in parallel, each one as long as one row of its variant)"
    )
    say(f"  commands: {command(env, [*restore_args, '--data-dir', 'DIR/{name}', '--output', 'json'])}")
    say("            ... --only m1 / --only m2 / --only m3 (one run each)")
    say(f"            deltas written by: {command(env, ['run'])} while {load.shown}")
    say(f"   ({machine()})")


def _start_restored(b: Bench, members: list[dict[str, Any]], target: int, label: str) -> None:
    """Start the restored members from the printed flags; check the cluster's revision."""
    started = []
    for m in members:
        client = f"http://{LOOPBACK}:{free_port()}"
        flags = [
            *m["etcd_flags"],
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            "--quota-backend-bytes=8589934592",
        ]
        log = open(b.dir("logs") / f"{label}-{m['name']}.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen([b.etcd, *flags], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        started.append(EtcdProcess(m["name"], Path(m["data_dir"]), client, "", proc, Path(log.name), flags))
    b.etcds += started
    try:
        for p in started:
            wait_healthy(p.client_url, 300, p)
        got = etcd_revision(started[0].client_url)
        if got != target:
            raise SystemExit(f"restored cluster is at revision {got}, not {target}")
    finally:
        for p in started:
            p.kill()


# --- 5: memory ---------------------------------------------------------------------------------


def memory(b: Bench, args: argparse.Namespace) -> None:
    minutes = args.memory_minutes
    say(
        f"\n## Memory: daemon RSS over {minutes:g} min of {args.memory_rate:.0f} writes/s (256 B values) to a "
        f"3-member cluster, file:// store, delta.interval={args.interval:g}s, max_buffer default (16 MiB)"
    )
    say(f"   ({machine()})")
    members = b.cluster(3, "memory")
    endpoints = [m.client_url for m in members]
    store = b.store("file", "memory")
    env = b.env(
        endpoints, store, delta__interval=f"{args.interval:g}s", schedule__interval="1h", verify__restore_drill="off"
    )
    d = b.daemon(env, "memory")
    d.wait_event("delta watch started", 120)
    load = b.load(endpoints, "memory", rate=args.memory_rate, concurrency=64, duration=minutes * 60)
    samples: list[tuple[float, int, float, int]] = []  # (seconds, RSS KiB, daemon CPU s, writes acked)
    t0 = time.monotonic()
    while load.process.poll() is None:
        samples.append((time.monotonic() - t0, proc_rss_kib(d.pid), proc_cpu(d.pid), load.status()["acked"]))
        time.sleep(1.0)
    s = load.wait()
    say(f"  {'minute':>6} {'RSS MiB median':>15} {'min':>7} {'max':>7} {'writes/s':>9} {'daemon CPU %':>13}")
    per_minute = []
    for minute in range(int(minutes + 0.999)):
        window = [x for x in samples if minute * 60 <= x[0] < (minute + 1) * 60]
        if len(window) < 2:
            continue
        rss = [x[1] / 1024 for x in window]
        span = window[-1][0] - window[0][0]
        writes = (window[-1][3] - window[0][3]) / span
        cpu = 100 * (window[-1][2] - window[0][2]) / span
        per_minute.append(statistics.median(rss))
        say(
            f"  {minute + 1:>6} {statistics.median(rss):>15.1f} {min(rss):>7.1f} {max(rss):>7.1f} {writes:>9.0f} "
            f"{cpu:>13.0f}"
        )
    peak = max(x[1] for x in samples) / 1024
    say(f"  load reached {s['rate']:.0f} writes/s on average ({s['acked']} acked, {s['failed']} failed)")
    say(
        f"  peak RSS {peak:.1f} MiB; minute medians from {min(per_minute):.1f} to {max(per_minute):.1f} MiB "
        f"(target <= 150 MB and flat: {'met' if peak * MIB <= 150e6 else 'MISSED'})"
    )
    stored = [e for e in d.events() if e.get("event") == "delta stored"]
    say(
        f"  deltas stored: {len(stored)}; events per delta {spread([float(e['events']) for e in stored], '{:.0f}')}; "
        f"object size {spread([e['object_size'] / MIB for e in stored])} MiB"
    )
    say(f"  commands: {command(env, ['run'])}")
    say(f"            {load.shown}; RSS = VmRSS of the daemon process, sampled every second")
    say(f"   ({machine()})")
    d.stop()
    for m in members:
        m.kill()


# --- 6: scale ----------------------------------------------------------------------------------

SYNTHETIC_WRITER = "000syn"
SPACING = 10.0  # seconds between synthetic deltas, as with the default delta.interval


@dataclass
class Scaled:
    """A store being grown with synthetic history below its real newest full snapshot."""

    store: Store
    env: dict[str, str]
    real: dict[str, Any]  # the real full snapshot's manifest
    built: int = 0  # synthetic deltas in it so far
    bases: int = 0
    writer: Callable[[list[tuple[str, bytes]]], None] = field(default=lambda objs: None)


def synthetic_history(real: dict[str, Any], lo: int, hi: int, per_chain: int) -> Iterator[tuple[str, bytes]]:
    """Objects (key, bytes) of the synthetic deltas k in [lo, hi) below the real snapshot: delta
    k holds revision B - k (one put), seen k * SPACING seconds before the real snapshot; a full
    snapshot (manifest and a tiny data object) stands at every revision B - k with k a multiple
    of `per_chain`. Older deltas have higher k."""
    top = real["revision"]
    cluster = real["cluster_id"]
    real_time = datetime.fromisoformat(real["created_at"].replace("Z", "+00:00"))
    for k in range(lo, hi):
        rev = top - k
        seen = real_time - timedelta(seconds=k * SPACING)
        if k and k % per_chain == 0:
            yield from _synthetic_base(real, rev, seen + timedelta(milliseconds=500))
        if k == 0:
            continue  # revision B is the real snapshot's
        stem = delta.stem_of(rev, rev, seen, seen, SYNTHETIC_WRITER)
        key = f"/syn/{rev % 1000:03d}".encode()
        event = delta.encode_revision(delta.Revision(rev, seen, (_put(key, b"synthetic-%d" % rev, rev),)))
        body = delta.encode_header(cluster_id=cluster, member_id=real["member_id"], first=rev, last=rev, leases={})
        body += event
        data_key = delta.data_key(cluster, stem, "none", False)
        manifest = delta.DeltaManifest(
            id=stem,
            cluster_id=cluster,
            member_id=real["member_id"],
            first_revision=rev,
            last_revision=rev,
            events=1,
            first_time=rfc3339(seen),
            last_time=rfc3339(seen),
            object_key=data_key,
            object_size=len(body),
            object_sha256=hashlib.sha256(body).hexdigest(),
            compression="none",
            encryption=None,
            created_at=rfc3339(seen + timedelta(milliseconds=5)),
            tool_version="bench",
        )
        yield data_key, body
        yield delta.manifest_key(cluster, stem), manifest.to_json()


def _put(key: bytes, value: bytes, rev: int) -> Any:
    from etcd_backup.etcdclient import Event, KeyValue

    return Event(False, KeyValue(key, value, rev, rev, 1, 0))


def _synthetic_base(real: dict[str, Any], rev: int, created: datetime) -> Iterator[tuple[str, bytes]]:
    """A full snapshot's manifest at `rev`, with a tiny data object: listed and planned with like
    any other, never downloaded by the commands timed here (only the real newest one is)."""
    sid = f"{created:%Y%m%dT%H%M%S}{created.microsecond // 1000:03d}Z-{secrets.token_hex(3)}"
    data = b"synthetic full snapshot " + sid.encode()
    m = json.loads(json.dumps(real))
    m.update(
        id=sid,
        created_at=rfc3339(created),
        revision=rev,
        object_key=f"snapshots/{sid}.db",
        object_size=len(data),
        object_sha256=hashlib.sha256(data).hexdigest(),
        compression="none",
        reason="schedule",
        pinned=False,
    )
    yield m["object_key"], data
    yield f"snapshots/{sid}.json", (json.dumps(m, indent=2) + "\n").encode()


def _file_writer(root: Path) -> Callable[[list[tuple[str, bytes]]], None]:
    def write(objs: list[tuple[str, bytes]]) -> None:
        dirs: set[Path] = set()
        for key, data in objs:
            path = root / key
            if path.parent not in dirs:
                path.parent.mkdir(parents=True, exist_ok=True)
                dirs.add(path.parent)
            path.write_bytes(data)

    return write


def _s3_writer(store: Store, threads: int) -> Callable[[list[tuple[str, bytes]]], None]:
    client = s3_client(store.endpoint, pool=threads * 2)
    pool = ThreadPoolExecutor(threads)

    def put(item: tuple[str, bytes]) -> None:
        for attempt in range(5):
            try:
                client.put_object(Bucket=store.bucket, Key=store.prefix + item[0], Body=item[1])
                return
            except Exception:
                if attempt == 4:
                    raise
                time.sleep(0.5 * (attempt + 1))

    def write(objs: list[tuple[str, bytes]]) -> None:
        list(pool.map(put, objs))

    return write


def _grow(sc: Scaled, size: int, per_chain: int) -> float:
    """Add synthetic deltas until the store holds `size` of them; returns seconds taken."""
    t = time.perf_counter()
    batch: list[tuple[str, bytes]] = []
    # k = 0 is the real snapshot's revision; synthetic deltas are k = 1 .. size.
    for key, data in synthetic_history(sc.real, sc.built + 1, size + 1, per_chain):
        if key.startswith("snapshots/") and key.endswith(".json"):
            sc.bases += 1
        batch.append((key, data))
        if len(batch) >= 2000:
            sc.writer(batch)
            batch = []
    if batch:
        sc.writer(batch)
    sc.built = size
    return time.perf_counter() - t


def scale(b: Bench, args: argparse.Namespace) -> None:
    sizes = sorted(int(s) for s in args.scale_sizes.split(","))
    per_chain = args.deltas_per_chain
    say(
        f"\n## Scale of the bucket: {', '.join(f'{s:,}' for s in sizes)} synthetic delta objects (+ as many "
        f"manifests), chains of {per_chain} deltas ({per_chain * SPACING / 60:g} min of 10 s deltas) behind full "
        f"snapshots, on {args.scale_stores}; {args.runs} run(s) per command"
    )
    say(f"   ({machine()})")
    (etcd,) = b.cluster(1, "scale-etcd", ["--unsafe-no-fsync"])
    # The real full snapshot must stand above every synthetic revision.
    need = sizes[-1] + 2 * per_chain + 100
    t = time.perf_counter()
    bump = b.load(
        [etcd.client_url], "scale-bump", rate=0, concurrency=64, count=need, value_size=16, keys=1000, prefix="/bump/"
    )
    bumped = bump.wait(3600)["newest_revision"]
    subprocess.run(
        [find_binary("etcdctl"), f"--endpoints={etcd.client_url}", "compact", str(bumped)],
        check=True,
        capture_output=True,
        env={**os.environ, "ETCDCTL_API": "3"},
    )
    subprocess.run(
        [find_binary("etcdctl"), f"--endpoints={etcd.client_url}", "defrag"],
        check=True,
        capture_output=True,
        env={**os.environ, "ETCDCTL_API": "3"},
    )
    say(f"  real etcd brought to revision {bumped} in {time.perf_counter() - t:.0f}s (compacted, defragmented)")
    stores = []
    for kind in args.scale_stores.split(","):
        store = b.store(kind, f"scale-{kind}")
        env = b.env(
            [etcd.client_url],
            store,
            delta__interval=f"{args.interval:g}s",
            schedule__interval="1h",
            verify__restore_drill="off",
        )
        snap = b.cli(env, "snapshot", "--output", "json")
        if snap.returncode != 0:
            raise SystemExit(f"snapshot on {kind} failed: {snap.stderr}")
        writer = _file_writer(store.root) if store.root else _s3_writer(store, args.s3_threads)
        stores.append(Scaled(store, env, snap.json(), writer=writer))
    table: list[tuple[str, int, str, str]] = []
    for size in sizes:
        for sc in stores:
            kind = sc.store.kind
            if kind == "moto" and size > args.moto_max:
                say(
                    f"  moto at {size:,}: skipped (--moto-max {args.moto_max:,}): moto answers every listing page "
                    "by going through the whole bucket (see its bare listing below), hours at this size"
                )
                continue
            try:
                took = _grow(sc, size, per_chain)
            except Exception as exc:  # noqa: BLE001 - a store that does not cope is a finding
                say(f"  {kind} at {size:,}: building the bucket failed ({type(exc).__name__}: {exc}); skipped")
                continue
            say(
                f"  {kind}: {size:,} deltas, {sc.bases + 1} full snapshots ({2 * size + 2 * sc.bases + 2:,} objects) "
                f"built in {took:.0f}s"
            )
            for name, figure in _scale_figures(b, args, sc, etcd, size):
                table.append((kind, size, name, figure))
                say(f"    {name:38} {figure}")
    say("\n  summary (seconds, median (min-max) of the runs):")
    say(f"  {'store':10} {'deltas':>8}  figure")
    for kind, size, name, figure in table:
        say(f"  {kind:10} {size:>8,}  {name:38} {figure}")
    sc0 = stores[0]
    say(f"  commands: {command(sc0.env, ['list', '--output', 'json'])}")
    say(
        "            ... timeline --output json / prune --dry-run --output json / restore single --to-latest --name x "
        "--peer-url URL --data-dir DIR --output json (time until the scratch member first holds a revision above the "
        "snapshot's)"
    )
    say(f"            daemon: {command(sc0.env, ['run'])} for {args.scale_daemon_seconds:g}s at 50 writes/s")
    say(f"   ({machine()})")


def _scale_figures(
    b: Bench, args: argparse.Namespace, sc: Scaled, etcd: EtcdProcess, size: int
) -> Iterator[tuple[str, str]]:
    yield "bare listing of deltas/ (no etcd-backup)", spread([_bare_listing(sc.store) for _ in range(args.runs)])
    # The daemon first: its deltas after the real snapshot are what the restore below replays.
    yield from _daemon_at_scale(b, args, sc, etcd, size)
    for name, cmd in (
        ("list", ["list", "--output", "json"]),
        ("timeline", ["timeline", "--output", "json"]),
        ("prune --dry-run", ["prune", "--dry-run", "--output", "json"]),
    ):
        times = []
        for _ in range(args.runs):
            r = b.cli(sc.env, *cmd)
            if r.returncode != 0:
                yield name, f"FAILED ({r.returncode}): {r.stderr.strip()[-300:]}"
                break
            times.append(r.seconds)
        else:
            yield name, spread(times)
    tl = b.cli(sc.env, "timeline", "--output", "json").json()
    base, target = tl["chains"][0]["from_revision"], tl["newest"]["revision"]
    first, total = [], []
    for run in range(args.runs):
        target_dir = b.work / f"scale-restore-{sc.store.kind}-{size}-{run}"
        cmd = [
            "restore",
            "single",
            "--to-latest",
            "--name",
            "x",
            "--peer-url",
            f"http://{LOOPBACK}:{free_port()}",
            "--data-dir",
            str(target_dir),
            "--output",
            "json",
        ]
        r = timed_restore(b, sc.env, cmd, base, target)
        first.append(r["first_txn"])
        total.append(r["total"])
        shutil.rmtree(target_dir, ignore_errors=True)
    verdict = "met" if max(first) <= 5 else "MISSED"
    yield "restore --to-latest: first transaction", f"{spread(first)} (target 5 s: {verdict})"
    yield "restore --to-latest: done", f"{spread(total)} ({target - base} revisions replayed)"


def _bare_listing(store: Store) -> float:
    """Seconds the store itself takes to list deltas/ with sizes and times: boto3's paginator
    over ListObjectsV2, or a walk with a stat per file: what any tool pays for a full listing."""
    t = time.perf_counter()
    if store.root is not None:
        for dirpath, _, files in os.walk(store.root / "deltas"):
            for name in files:
                os.stat(os.path.join(dirpath, name))
    else:
        client = s3_client(store.endpoint)
        for _ in client.get_paginator("list_objects_v2").paginate(Bucket=store.bucket, Prefix=f"{store.prefix}deltas/"):
            pass
    return time.perf_counter() - t


class TimedRequests(list[tuple[str, str, str]]):
    """faultproxy's `seen`, with the time of each request."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def append(self, item: tuple[str, str, str]) -> None:
        self.times.append(time.time())
        super().append(item)


def _daemon_at_scale(
    b: Bench, args: argparse.Namespace, sc: Scaled, etcd: EtcdProcess, size: int
) -> Iterator[tuple[str, str]]:
    """The daemon on this bucket: start-up (to watching, the one-off debris clean-up), then its
    steady work per delta.interval while 50 writes/s arrive: seconds per delta stored (its log),
    CPU, and on S3 every request it makes (through a recording proxy)."""
    env = dict(sc.env)
    proxy = None
    seen = TimedRequests()
    if sc.store.endpoint:
        from faultproxy import FaultProxy

        host, port = sc.store.endpoint.rsplit("//", 1)[1].split(":")
        proxy = FaultProxy((host, int(port)), http=True)
        proxy.seen = seen
        env["ETCD_BACKUP_STORAGE__ENDPOINT_URL"] = proxy.url
    started = time.time()
    d = b.daemon(env, f"scale-{sc.store.kind}-{size}")
    try:
        d.wait_event("delta watch started", 600)
        up = time.time() - started
        cleanup = d.wait_event("start-up clean-up done", 3600)
        cleaned = time.time()
        cpu0, t0 = proc_cpu(d.pid), time.time()
        load = b.load(
            [etcd.client_url],
            f"scale-{sc.store.kind}-{size}",
            rate=50,
            concurrency=4,
            duration=args.scale_daemon_seconds,
            value_size=256,
            keys=100,
            prefix="/scale/",
        )
        load.wait(args.scale_daemon_seconds + 60)
        d.wait_event("delta stored", args.interval + 30, lambda e: event_time(e) > t0 + args.scale_daemon_seconds)
        cpu, span = proc_cpu(d.pid) - cpu0, time.time() - t0
        stored = [e for e in d.events() if e.get("event") == "delta stored" and event_time(e) >= t0]
        d.stop()
    finally:
        d.kill()
        if proxy is not None:
            proxy.close()
    intervals = span / args.interval
    yield "daemon: start to watching", f"{up:.2f}"
    yield "daemon: start-up debris clean-up", f"{cleanup['seconds']:.2f} (once per start, lists everything)"
    if proxy is not None:
        yield "daemon: S3 requests at start-up", _requests(seen, started, cleaned, 1.0)
    secs = [float(e["seconds"]) for e in stored if "seconds" in e]
    yield "daemon: per delta stored", f"{len(stored)} deltas in {span:.0f}s, {spread(secs, '{:.3f}')}s each"
    yield "daemon: CPU per interval", f"{cpu / intervals:.2f}s per {args.interval:g}s (watch, encode, store, refresh)"
    if proxy is not None:
        yield "daemon: S3 requests per interval", _requests(seen, t0, t0 + span, intervals)


def _requests(seen: TimedRequests, since: float, until: float, per: float) -> str:
    """S3 requests in a time window by kind and folder, divided by `per`."""
    from urllib.parse import parse_qs, unquote, urlsplit

    kinds: dict[str, int] = {}
    for (method, target, _), at in zip(seen, seen.times, strict=False):
        if not since <= at <= until:
            continue
        url = urlsplit(target)
        query = parse_qs(url.query, keep_blank_values=True)
        if method == "GET" and ("list-type" in query or "prefix" in query):
            where = query.get("prefix", [""])[0]
            what = "LIST" + (" start-after" if "start-after" in query else "")
        elif "uploads" in query:
            where, what = "", "LIST uploads"
        else:
            where, what = unquote(url.path).split("/", 2)[-1], method
        folder = next((f for f in ("deltas/", "snapshots/") if f in where), "")
        label = f"{what} {folder}".strip()
        kinds[label] = kinds.get(label, 0) + 1
    return ", ".join(f"{k} {v / per:.1f}" for k, v in sorted(kinds.items())) or "none"


# --- main --------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(FIGURES), help=f"figures to run, of {','.join(FIGURES)}")
    ap.add_argument("--workdir", default=None, help="where etcd data and stores go (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir")
    ap.add_argument("--runs", type=int, default=3, help="runs of each timed command (replay, scale)")
    ap.add_argument("--interval", type=float, default=10.0, help="delta.interval in seconds (default 10)")
    ap.add_argument("--rate", type=float, default=500.0, help="writes/s for rpo and rpo-killed")
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--killed-trials", type=int, default=5)
    ap.add_argument("--rpo-store", default="file", help="file, moto or seaweedfs")
    ap.add_argument("--overhead-rounds", type=int, default=4)
    ap.add_argument("--overhead-seconds", type=float, default=20.0)
    ap.add_argument("--overhead-concurrency", type=int, default=32)
    ap.add_argument("--replay-mib", type=int, default=256)
    ap.add_argument("--replay-revisions", type=int, default=100_000)
    ap.add_argument("--replay-value", type=int, default=1024)
    ap.add_argument("--replay-store", default="file")
    ap.add_argument("--memory-minutes", type=float, default=10.0)
    ap.add_argument("--memory-rate", type=float, default=2000.0)
    ap.add_argument("--scale-sizes", default="10000,100000,250000")
    ap.add_argument("--scale-stores", default="file,moto,seaweedfs")
    ap.add_argument("--deltas-per-chain", type=int, default=180)
    ap.add_argument("--moto-max", type=int, default=100_000, help="largest scale size tried on moto")
    ap.add_argument("--scale-daemon-seconds", type=float, default=40.0)
    ap.add_argument("--s3-threads", type=int, default=16, help="threads putting synthetic objects into S3")
    args = ap.parse_args()
    only = args.only.split(",")
    unknown = set(only) - set(FIGURES)
    if unknown:
        ap.error(f"unknown figure(s) {', '.join(sorted(unknown))}; choose from {','.join(FIGURES)}")
    work = Path(tempfile.mkdtemp(prefix="pitr-bench-", dir=args.workdir))
    say(f"# pitr_bench: {' '.join(sys.argv[1:]) or '(defaults)'}; work dir {work}; {os.cpu_count()} CPUs")
    b = Bench(work)
    # A SIGTERM (an interrupted run) stops what the bench started, as the end of a run does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        for figure in FIGURES:
            if figure not in only:
                continue
            if figure == "rpo":
                rpo(b, args, daemon_killed=False)
            elif figure == "rpo-killed":
                rpo(b, args, daemon_killed=True)
            elif figure == "overhead":
                overhead(b, args)
            elif figure == "replay":
                replay(b, args)
            elif figure == "memory":
                memory(b, args)
            elif figure == "scale":
                scale(b, args)
    finally:
        b.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
