"""`prune`: not built yet."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import UsageError
from .common import Context, add_output


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("prune", help="(not built yet)")
    add_output(p)
    return p


def run(args: argparse.Namespace, ctx: Context) -> int:
    raise UsageError("prune is not built yet")
