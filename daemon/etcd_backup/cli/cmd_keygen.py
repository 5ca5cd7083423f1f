"""`keygen --out FILE`: a new age identity for `[encryption]`; prints its recipient."""

from __future__ import annotations

import argparse
import sys

from ..errors import UsageError
from .common import Context, Subparsers, add_output, emit_json

# Needs no configuration: it makes the key the configuration will name.
NEEDS_CONFIG = False


def add_parser(sub: Subparsers) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "keygen",
        help="write a new age identity file (mode 0600) and print its recipient",
        description="Write a new age X25519 identity (private key) to FILE, mode 0600, as age-keygen does, "
        "and print its recipient (public key) for encryption.recipients. An existing FILE is never overwritten.",
    )
    p.add_argument("--out", required=True, metavar="FILE", help="the identity file to create")
    add_output(p)
    return p


def run(args: argparse.Namespace, ctx: Context) -> int:
    from .. import crypto

    try:
        recipient = crypto.write_identity_file(args.out)
    except FileExistsError:
        raise UsageError(f"{args.out} exists; keygen never overwrites a key (choose another --out)") from None
    except OSError as exc:
        raise UsageError(f"cannot create {args.out}: {exc.strerror}") from None
    if ctx.json:
        emit_json({"identity_file": args.out, "recipient": recipient})
    else:
        print(recipient)
        print(
            f"etcd-backup: identity written to {args.out} (mode 0600). Keep a copy offline: without it no "
            "snapshot encrypted to this recipient can be read.",
            file=sys.stderr,
        )
    return 0
