"""Parser root, logging set-up, and the one place errors become exit codes.

Exit codes: 0 success; 1 operational failure (etcd or storage unreachable, upload failed);
2 usage or configuration error; 3 integrity failure (a snapshot failed verification);
4 refused as unsafe (non-empty data dir, quorum lost, unhealthy cluster); 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .. import __version__
from ..errors import ConfigError, EtcdBackupError, UsageError
from . import (
    cmd_doctor,
    cmd_fetch,
    cmd_keygen,
    cmd_list,
    cmd_pre_change,
    cmd_prune,
    cmd_restore,
    cmd_run,
    cmd_snapshot,
    cmd_timeline,
    cmd_verify,
)
from .common import Context

if TYPE_CHECKING:
    from ..config import Config

COMMANDS = [
    cmd_run,
    cmd_snapshot,
    cmd_pre_change,
    cmd_list,
    cmd_timeline,
    cmd_verify,
    cmd_prune,
    cmd_doctor,
    cmd_fetch,
    cmd_restore,
    cmd_keygen,
]

OUTAGE = """in an outage, start with `etcd-backup doctor`: it names the failure scenario (member down,
quorum lost, single member down, member added but never started) and prints the exact commands
to run, in order, with the real member names, URLs, data dirs and snapshot id filled in.
"""

EPILOG = """exit codes:
  0    success
  1    operational failure (etcd or storage unreachable, upload failed)
  2    usage or configuration error
  3    integrity failure (a snapshot failed verification)
  4    refused as unsafe (non-empty data dir, quorum lost, unhealthy cluster before a change)
  130  interrupted
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="etcd-backup",
        description="Snapshot etcd to S3 or a directory, prove the snapshots restorable, and restore.",
        epilog=OUTAGE + "\n" + EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="TOML configuration file (default: $ETCD_BACKUP_CONFIG, else /etc/etcd-backup/config.toml if present)",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("--version", action="version", version=f"etcd-backup {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for module in COMMANDS:
        p = module.add_parser(sub)
        p.formatter_class = argparse.RawDescriptionHelpFormatter
        if p.epilog is None:  # a command with exit codes of its own (doctor) sets them itself
            p.epilog = EPILOG
        # Also accepted after the command, where operators tend to type them.
        p.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        p.set_defaults(handler=module.run, needs_config=getattr(module, "NEEDS_CONFIG", True))
    return parser


def _tune_malloc() -> None:
    """Serve large buffers (upload parts, stream batches) from mmap so freeing them returns the
    memory; glibc's adaptive threshold otherwise keeps freed multi-MiB parts in per-thread arenas
    and RSS creeps up with every part.

    Fixing the mmap threshold also fixes the trim threshold at its 128 KiB default: the heap then
    shrinks and grows again around every 256 KiB read buffer, and the kernel faults in (and
    zeroes) fresh pages each time: 400,000 faults and a third of the CPU of a 1 GiB snapshot.
    Keeping up to 4 MiB free at the top of each arena ends that for a few MiB of RSS.

    At most 4 arenas: glibc makes up to 8 per core, one for each thread that meets a busy one
    (the receive loop, the encryptor, 4 part uploads, gRPC's), and each may keep its 4 MiB. An
    encrypted 1 GiB snapshot's anonymous memory peaked at 79-96 MB with glibc's default, 75-81 MB
    with 2 to 4 arenas (3 to 5 runs each)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8
        libc.mallopt(m_mmap_threshold, 1024 * 1024)
        libc.mallopt(m_trim_threshold, 4 * 1024 * 1024)
        libc.mallopt(m_arena_max, 4)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


def main(argv: Sequence[str] | None = None) -> int:
    _tune_malloc()
    raw = list(argv if argv is not None else sys.argv[1:])
    debug = "--debug" in raw
    # gRPC's C core logs a failed TLS handshake on stderr itself, beside our one error line
    # (which says the same, with what to check); with --debug it may speak.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR" if debug else "NONE")
    # gRPC's EventEngine client reads the socket on its own threads and hands each received
    # message to ours: for a snapshot, a wake-up per 32 KiB message (85,000 context switches per
    # GiB). The poller it replaced runs on the thread that waits for the message, which
    # SingleThreadedUnaryStream (etcdclient) makes the reading one: 0.7-0.9 CPU-s less per GiB
    # received (README, Measured figures). An operator's own GRPC_EXPERIMENTS wins; a gRPC that no
    # longer knows the experiment ignores it.
    os.environ.setdefault("GRPC_EXPERIMENTS", "-event_engine_client")
    json_out = _wants_json(raw)
    from .common import new_command

    new_command()
    try:
        args = build_parser().parse_args(argv)
        if not getattr(args, "command", None):
            raise UsageError("etcd-backup: a command is required (see --help)")
        ctx = Context(args)
        from .. import logsetup

        if args.needs_config:
            cfg = ctx.config
            logsetup.configure(cfg.log.format, _log_level(args, cfg))
        else:
            logsetup.configure("console", "debug" if args.debug else "critical")
        return int(args.handler(args, ctx) or 0)
    except EtcdBackupError as exc:
        return _fail(exc, exc.exit_code, debug, json_out=json_out)
    except KeyboardInterrupt:
        print("etcd-backup: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, not a traceback
        return _fail(exc, 1, debug, unexpected=True, json_out=json_out)


def _wants_json(argv: Sequence[str]) -> bool:
    """--output json (-o json, --output=json) anywhere: known before (or without) a parse."""
    pairs = zip(argv, [*argv[1:], ""], strict=True)
    return any(
        (a in ("--output", "-o") and b == "json") or a in ("--output=json", "-ojson", "-o=json") for a, b in pairs
    )


def _log_level(args: argparse.Namespace, cfg: Config) -> str:
    """The daemon logs at the configured level. One-shot commands stay quiet unless asked
    (--debug, or log.level set explicitly): their result goes to stdout and a failure is the
    one error line on stderr, which is what scripts and operators at a prompt rely on."""
    if args.debug:
        return "debug"
    if args.command == "run" or "level" in cfg.log.model_fields_set:
        return cfg.log.level
    return "critical"


def _fail(exc: BaseException, code: int, debug: bool, unexpected: bool = False, *, json_out: bool = False) -> int:
    if debug:
        traceback.print_exc()
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if unexpected:
        text = f"internal error: {type(exc).__name__}: {text} (run with --debug for details)"
    label = "configuration error" if isinstance(exc, ConfigError) and "configuration" not in text else None
    prefix = f"etcd-backup: {label}: " if label else "etcd-backup: error: "
    from ..logsetup import scrub

    line = prefix + scrub(text)
    print(line, file=sys.stderr)
    if json_out:
        from .common import emit_json_error

        emit_json_error(line.removeprefix("etcd-backup: error: ").removeprefix("etcd-backup: "), code)
    return code


def entrypoint() -> None:
    sys.exit(main())


__all__ = ["build_parser", "entrypoint", "main"]
