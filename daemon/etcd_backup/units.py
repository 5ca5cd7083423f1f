"""Durations ("30s", "1h30m", "7d") and sizes ("16MiB", "64M") as operators write them. Pure and
import-light: the CLI's argument parser uses it before any configuration is loaded."""

from __future__ import annotations

import re
from typing import Any

_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "ki": 1024,
    "kib": 1024,
    "mi": 1024**2,
    "mib": 1024**2,
    "gi": 1024**3,
    "gib": 1024**3,
    "ti": 1024**4,
    "tib": 1024**4,
}
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_MAX_DURATION = 10 * 365 * 86400.0


def parse_duration(value: Any) -> float:
    """'30s', '5m', '1h30m', '7d' -> seconds. The unit is required ("0" alone excepted): a bare
    `30` meant as days would otherwise be 30 seconds, and a pin or a lock would end that soon."""
    if isinstance(value, bool | int | float):
        raise ValueError(
            f"{value!r} is not a duration: write it as a string with a unit, like '30s', '5m', '24h' or '7d'"
        )
    if isinstance(value, str):
        text = value.strip().lower()
        if not text:
            raise ValueError("empty duration")
        if re.fullmatch(r"\d+(\.\d+)?", text):
            if float(text) != 0:
                raise ValueError(f"{value!r} has no unit: write '{text}s', '{text}m', '{text}h' or '{text}d'")
            seconds = 0.0
        else:
            pos, seconds = 0, 0.0
            for m in _DURATION_RE.finditer(text):
                if m.start() != pos:
                    break
                seconds += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
                pos = m.end()
            if pos != len(text):
                raise ValueError(f"{value!r} is not a duration like '30s', '5m', '24h' or '7d'")
    else:
        raise ValueError("expected a duration like '30s', '5m', '24h' or '7d'")
    if seconds < 0 or seconds > _MAX_DURATION:
        raise ValueError(f"{value!r} is out of range (0 to 10 years)")
    return seconds


def parse_size(value: Any) -> int:
    """'16MiB', '64M', 1048576 -> bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size like '16MiB'")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", value)
        if not m or m.group(2).lower() not in _SIZE_UNITS:
            raise ValueError(f"{value!r} is not a size like '16MiB'")
        size = int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]
    else:
        raise ValueError("expected a size like '16MiB'")
    if size < 0 or size > 5 * 1024**4:
        raise ValueError(f"{value!r} is out of range")
    return size


def counted(n: int, noun: str) -> str:
    """`1 delta`, `2 deltas`: for the lines an operator reads (nouns whose plural adds an s)."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
