"""A load generator for etcd: puts at a steady rate (or as fast as it can), recording the revision
etcd acknowledged for every write.

    .venv/bin/python bench/loadgen.py --endpoints http://127.0.0.1:2379,... [--rate 500] [--concurrency 16]
        [--duration 0] [--count 0] [--value-size 256] [--keys 1000] [--prefix /load/] [--out summary.json]
        [--acks acks.bin] [--status status.json] [--gone-after 2]

Writes go round-robin to every endpoint (as a Kubernetes API server spreads its clients), at most
`--concurrency` in flight. It stops after `--duration` seconds or `--count` writes (0: no limit), on SIGTERM/SIGINT, or
once no write was acknowledged for `--gone-after` seconds while writes failed (etcd is gone). It
then writes a JSON summary to `--out` (and stdout): writes acknowledged, failed, the newest
acknowledged revision and when it was acknowledged, the rate reached and acks per second. With
`--acks`, every acknowledgement as (unix time float64, revision int64) pairs, little-endian.
With `--status`, a small JSON file rewritten every 0.5 s (acked, newest revision, rate so far).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
from etcd3 import etcdrpc


class Recorder:
    """Acknowledgements as they arrive (from gRPC's callback threads)."""

    def __init__(self, keep_acks: bool) -> None:
        self.lock = threading.Lock()
        self.acked = 0
        self.failed = 0
        self.newest_revision = 0
        self.newest_at = 0.0  # unix time the newest revision was acknowledged
        self.last_ack_at = 0.0
        self.first_ack_at = 0.0
        self.last_failure_at = 0.0
        self.last_error = ""
        self.per_second: dict[int, int] = {}
        self.acks: list[tuple[float, int]] | None = [] if keep_acks else None

    def ok(self, revision: int) -> None:
        now = time.time()
        with self.lock:
            self.acked += 1
            if not self.first_ack_at:
                self.first_ack_at = now
            self.last_ack_at = now
            if revision > self.newest_revision:
                self.newest_revision, self.newest_at = revision, now
            second = int(now)
            self.per_second[second] = self.per_second.get(second, 0) + 1
            if self.acks is not None:
                self.acks.append((now, revision))

    def fail(self, error: str) -> None:
        with self.lock:
            self.failed += 1
            self.last_failure_at = time.time()
            self.last_error = error


def _channel(endpoint: str) -> grpc.Channel:
    target = endpoint.split("//", 1)[1]
    return grpc.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)])


def run(args: argparse.Namespace) -> dict[str, Any]:
    endpoints = args.endpoints.split(",")
    channels = [_channel(e) for e in endpoints]
    stubs = [etcdrpc.KVStub(c) for c in channels]
    rec = Recorder(keep_acks=bool(args.acks))
    slots = threading.Semaphore(args.concurrency)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    payload = os.urandom(args.value_size)
    keys = [f"{args.prefix}{i:06d}".encode() for i in range(args.keys)]

    def done(fut: grpc.Future) -> None:
        slots.release()
        try:
            rec.ok(int(fut.result().header.revision))
        except grpc.RpcError as exc:
            rec.fail(f"{exc.code().name}: {exc.details()}")  # type: ignore[attr-defined]
        except Exception as exc:  # noqa: BLE001 - cancelled at exit, or anything else: a failed write
            rec.fail(f"{type(exc).__name__}: {exc}")

    def status_writer() -> None:
        while not stop.wait(0.5):
            _write_json(Path(args.status), _summary(rec, started, sent))

    started = time.time()
    sent = 0
    if args.status:
        threading.Thread(target=status_writer, daemon=True).start()
    interval = 1.0 / args.rate if args.rate else 0.0
    next_at = time.monotonic()
    while not stop.is_set():
        now = time.monotonic()
        if args.duration and time.time() - started >= args.duration:
            break
        if args.count and sent >= args.count:
            break
        if rec.failed and rec.last_failure_at > rec.last_ack_at and time.time() - rec.last_ack_at > args.gone_after:
            break  # etcd is gone: nothing acknowledged for a while, and writes fail
        if interval:
            if now < next_at:
                time.sleep(min(next_at - now, 0.05))
                continue
            next_at += interval
            if next_at < now - 1.0:
                next_at = now  # fell behind by more than a second: do not burst to catch up
        if not slots.acquire(timeout=0.1):
            continue
        i = sent
        sent += 1
        value = i.to_bytes(8, "little") + payload[8:]
        req = etcdrpc.PutRequest(key=keys[i % len(keys)], value=value)
        try:
            fut = stubs[i % len(stubs)].Put.future(req, timeout=args.timeout)
        except Exception as exc:  # noqa: BLE001 - a channel that cannot even start the call
            slots.release()
            rec.fail(f"{type(exc).__name__}: {exc}")
            continue
        fut.add_done_callback(done)
    stop.set()
    # Let what is in flight finish (or fail), so the newest acknowledged revision is final.
    for _ in range(args.concurrency):
        slots.acquire(timeout=args.timeout + 1)
    for c in channels:
        c.close()
    summary = _summary(rec, started, sent)
    if args.acks and rec.acks is not None:
        with open(args.acks, "wb") as f:
            for t, r in rec.acks:
                f.write(struct.pack("<dq", t, r))
    return summary


def _summary(rec: Recorder, started: float, sent: int) -> dict[str, Any]:
    with rec.lock:
        span = (rec.last_ack_at - rec.first_ack_at) if rec.acked > 1 else 0.0
        return {
            "sent": sent,
            "acked": rec.acked,
            "failed": rec.failed,
            "newest_revision": rec.newest_revision,
            "newest_at": rec.newest_at,
            "first_ack_at": rec.first_ack_at,
            "last_ack_at": rec.last_ack_at,
            "started": started,
            "rate": rec.acked / span if span > 0 else 0.0,
            "last_error": rec.last_error,
            "per_second": sorted(rec.per_second.items()),
        }


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


def read_acks(path: Path) -> list[tuple[float, int]]:
    raw = path.read_bytes()
    return [struct.unpack_from("<dq", raw, i) for i in range(0, len(raw), 16)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--endpoints", required=True)
    ap.add_argument("--rate", type=float, default=500.0, help="writes per second; 0: as fast as possible")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--duration", type=float, default=0.0)
    ap.add_argument("--count", type=int, default=0, help="stop after sending this many writes (0: no limit)")
    ap.add_argument("--value-size", type=int, default=256)
    ap.add_argument("--keys", type=int, default=1000)
    ap.add_argument("--prefix", default="/load/")
    ap.add_argument("--timeout", type=float, default=3.0)
    ap.add_argument("--gone-after", type=float, default=2.0)
    ap.add_argument("--out", default=None)
    ap.add_argument("--acks", default=None)
    ap.add_argument("--status", default=None)
    args = ap.parse_args()
    summary = run(args)
    if args.out:
        _write_json(Path(args.out), summary)
    json.dump({k: v for k, v in summary.items() if k != "per_second"}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
