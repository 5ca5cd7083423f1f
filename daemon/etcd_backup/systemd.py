"""systemd's notification protocol (sd_notify(3)) and its watchdog, by hand: one datagram to
$NOTIFY_SOCKET is all it takes, not worth a dependency."""

from __future__ import annotations

import os
import socket

import structlog

log = structlog.get_logger(__name__)


def sd_notify(message: str) -> bool:
    """Send `message` (e.g. "READY=1") to systemd. False when not under systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
        return True
    except OSError as exc:
        log.warning("sd_notify failed", error=str(exc))
        return False


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WatchdogSec), or None without a watchdog."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    return max(0.1, int(usec) / 1e6 / 2)
