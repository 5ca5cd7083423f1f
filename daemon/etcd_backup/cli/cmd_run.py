"""`run`: the daemon: scheduled snapshots, retention, restore drills, HTTP endpoints."""

from __future__ import annotations

import argparse
import logging
import os
from typing import TYPE_CHECKING

from ..errors import ConfigError, OperationalError
from .common import Context, Subparsers, add_output

if TYPE_CHECKING:
    from ..config import ServerConfig

STOP_BUDGET = 12.0  # seconds for jobs to wind down; the whole stop stays under 15 s


def add_parser(sub: Subparsers) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "run",
        help="the daemon: scheduled snapshots, retention, restore drills, HTTP endpoints",
        description="Run until SIGTERM/SIGINT: snapshot on schedule.interval or schedule.cron, apply "
        "retention after each scheduled snapshot, run restore drills every verify.restore_drill, and "
        'serve /healthz, /readyz, /metrics and /v1/snapshots on server.listen. With schedule.mode = "sidecar" '
        "only the copy beside the raft leader snapshots, prunes and drills. Logs go to stderr (log.format).",
    )
    add_output(p)  # accepted like on every command; the daemon's only output is its log
    return p


def server_token(server: ServerConfig) -> str | None:
    """The POST token; refuses a non-loopback listen address without one."""
    from .. import config

    token = config.token(server)
    if token is None and not server.is_loopback():
        raise ConfigError(
            f"server.listen {server.listen} is not a loopback address: a token is required "
            "(set server.token_file to a file holding the bearer token)"
        )
    return token


def run(args: argparse.Namespace, ctx: Context) -> int:
    cfg = ctx.config
    token = server_token(cfg.server)
    if cfg.files.paths:
        from ..cparchive import check_paths

        check_paths(cfg.files.paths)  # at start, like a TLS file; later runs leave out what went missing
    import structlog

    from .. import httpapi
    from ..daemon import Daemon, start_wait
    from ..process import StopSignals, within
    from ..systemd import sd_notify

    log = structlog.get_logger(__name__)
    wait = start_wait(cfg)
    try:
        # A bucket that contradicts the configuration (no Object Lock) is exit 2 now.
        if not within(wait, ctx.store.ping, "start-ping"):
            log.warning("storage did not answer at start; starting all the same", seconds=wait)
    except OperationalError:
        pass  # storage unreachable at start: the daemon reports it and retries
    within(wait, ctx.check_copy_store, "start-ping-copy")
    signals = StopSignals()
    signals.install()
    daemon = Daemon(cfg, ctx.store, copy=ctx.copy_store)
    http = httpapi.listen(cfg.server.host, cfg.server.port, daemon, token)
    clean = True
    try:
        if not signals.event.is_set():
            daemon.start()
            sd_notify("READY=1\nSTATUS=running")
        received = signals.wait()
        log.info("stopping", signal=received)
    finally:
        sd_notify("STOPPING=1")
        clean = daemon.stop(STOP_BUDGET)
        http.close()
        signals.restore()
    if not clean:
        # A job stuck in a blocking call (a storage request that ignores cancellation) must not
        # keep the process past its stop timeout: the snapshot it belongs to has no manifest.
        logging.shutdown()
        os._exit(0)
    return 0
