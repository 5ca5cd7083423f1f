"""What every command shares: lazy config and store, and rendering results."""

from __future__ import annotations

import argparse
import json
import os
import sys
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypeAlias

from ..errors import UsageError

# Heavy modules load inside the commands that need them: `--help` and `list` start fast.
if TYPE_CHECKING:
    from ..config import Config
    from ..runbook import Context as RunbookContext
    from ..storage import SnapshotStore

# What each command's add_parser gets from main (subscriptable for the type checker only).
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def add_output(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--output",
        "-o",
        choices=["text", "json"],
        default="text",
        help="text for people (default) or exactly one JSON document on stdout",
    )


def reason_text(value: str) -> str:
    """--reason: recorded and shown in `list`; an empty one (an unset shell variable) says nothing."""
    if not value.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return value


def add_point(p: argparse.ArgumentParser) -> None:
    """--to-latest | --to-revision N | --to-time T: a point the deltas after a full snapshot reach."""
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--to-latest", action="store_true", help="the newest point: the full snapshot plus every delta after it"
    )
    g.add_argument("--to-revision", type=int, metavar="REV", help="exactly this revision (see `etcd-backup timeline`)")
    g.add_argument("--to-time", metavar="RFC3339", help="the newest revision the watch had seen at or before this time")


def point_target(args: argparse.Namespace) -> Any:
    """The point options as a service.point.Target, or None when none was given."""
    from ..service.point import parse_target

    return parse_target(bool(args.to_latest), args.to_revision, args.to_time)


def add_store(p: argparse.ArgumentParser) -> None:
    """Every read command can use the second store instead, e.g. when the primary region is down."""
    p.add_argument(
        "--store",
        choices=["primary", "copy"],
        default="primary",
        help="read from storage.url (primary, the default) or from the second copy, storage.copy_to",
    )


class Context:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args

    @cached_property
    def config(self) -> Config:
        from .. import config, logsetup

        cfg = config.load(getattr(self.args, "config", None))
        logsetup.register_secrets(
            [
                cfg.etcd.password.get_secret_value() if cfg.etcd.password else None,
                os.environ.get("AWS_SECRET_ACCESS_KEY"),
                os.environ.get("AWS_SESSION_TOKEN"),
            ]
        )
        if cfg.server.token_file:
            try:
                logsetup.register_secrets([config.token(cfg.server)])
            except Exception:  # noqa: BLE001 - reported by the command that needs the token
                pass
        identities = cfg.encryption.identities()
        if identities is not None:
            logsetup.register_secrets(identities.secret_values())
        return cfg

    @cached_property
    def store(self) -> SnapshotStore:
        """The store the command works on: the primary, or the copy with `--store copy`."""
        from ..storage import open_store

        storage = self.config.storage
        if getattr(self.args, "store", "primary") == "copy":
            if self.copy_store is None:
                raise UsageError("--store copy: no second copy is configured (storage.copy_to)")
            return self.copy_store
        if storage.insecure_skip_tls_verify and storage.scheme == "s3" and self.args.command != "run":
            # One-shot commands log nothing by default; this must be seen all the same.
            print(
                "etcd-backup: warning: TLS verification of the S3 endpoint is OFF (storage.insecure_skip_tls_verify)",
                file=sys.stderr,
            )
        return open_store(storage)

    @cached_property
    def copy_store(self) -> SnapshotStore | None:
        """The second store (storage.copy_to), or None."""
        from ..storage import open_copy_store

        return open_copy_store(self.config.storage)

    def check_copy_store(self) -> None:
        """A copy bucket that contradicts the configuration (object_lock on, no Object Lock
        there) is exit 2 at start, as the primary's is; a copy target that is down is not an
        error here (the copy is retried at the next run)."""
        from ..errors import ConfigError, OperationalError

        if self.copy_store is not None:
            try:
                self.copy_store.ping()
            except OperationalError:
                pass
            except ConfigError as exc:
                raise ConfigError(f"storage.copy_to = {self.config.storage.copy_to!r}: {exc}") from None

    @cached_property
    def snapshot_store(self) -> SnapshotStore:
        """What a command takes snapshots through: with a second copy, the primary wrapped so that
        the newest spool stays readable for the copy (see storage/kept.py)."""
        if self.copy_store is None:
            return self.store
        from ..storage.kept import KeepSpool

        return KeepSpool(self.store)

    def copy_committed(self) -> str | None:
        """After a command committed a snapshot: copy what the second store lacks. A failure never
        fails the command (the next run retries); the line returned says what happened, and a
        failure is also a warning on stderr. None without a second copy."""
        from ..storage.kept import KeepSpool

        copy, kept = self.copy_store, self.snapshot_store
        if copy is None or not isinstance(kept, KeepSpool):
            return None
        from ..service.copy import sync

        try:
            report = sync(kept.inner, copy, kept=kept.take)
        except Exception as exc:  # noqa: BLE001 - the snapshot is committed whatever happens here
            line = f"copy to {copy.description} FAILED, retried at the next run: {exc}"
            print(f"etcd-backup: warning: {line}", file=sys.stderr)
            return line
        finally:
            kept.close()
        if report.damaged:
            line = f"copy to {copy.description} incomplete: {report.damaged[0]}"
            print(f"etcd-backup: warning: {line}", file=sys.stderr)
            return line
        done = len(report.copied) + len(report.refreshed)
        return f"copied to {copy.description} ({done} object(s), {human_size(report.bytes)}, {report.seconds:.2f}s)"

    @property
    def config_path(self) -> str | None:
        """The --config given on the command line: printed commands repeat it, as an absolute
        path (the operator runs them later, and maybe from another directory)."""
        path = getattr(self.args, "config", None)
        return os.path.abspath(path) if path else None

    @property
    def runbook(self) -> RunbookContext:
        from ..runbook import Context as RunbookContext

        return RunbookContext(self.config.etcd, self.config.restore.data_dir, self.config_path)

    def live_cluster_id(self) -> str | None:
        """The cluster id the configured etcd endpoints agree on (None if none answers): asked only
        when `latest` is ambiguous between clusters."""
        from ..etcdclient import cluster_id_of

        return cluster_id_of(self.config.etcd)

    @property
    def json(self) -> bool:
        return getattr(self.args, "output", "text") == "json"


_emitted: list[bool] = []  # a document went to stdout in this command


def new_command() -> None:
    """main may run more than once in a process (tests, embedding): nothing emitted yet."""
    _emitted.clear()


def emit_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    sys.stdout.flush()
    _emitted.append(True)


def emit_json_error(message: str, exit_code: int) -> None:
    """With --output json stdout is one document, also when the command failed before printing
    one: the error line of stderr and the exit code, for a script that parses stdout first."""
    if not _emitted:
        emit_json({"error": message, "exit_code": exit_code})


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=False)).rstrip()]
    for row in rows:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)).rstrip())
    return "\n".join(lines)
