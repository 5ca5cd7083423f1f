"""The spool's pacing: a ciphertext spool's writer stays within `pace` bytes of what the store has,
and etcd's stream (the plaintext spool) is never held back."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from etcd_backup.spool import Spool

MiB = 1024 * 1024


@contextlib.contextmanager
def paced_writer(
    tmp_path: Path, ahead: int, chunks: int
) -> Iterator[tuple[Spool, threading.Thread, list[BaseException]]]:
    """A ciphertext spool paced at `ahead` bytes, a thread appending `chunks` MiB to it (what
    it raised is in the list), once it has met the limit."""
    spool = Spool(str(tmp_path), "cipher", disposable=True)
    spool.pace(ahead)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            for _ in range(chunks):
                spool.append(b"x" * MiB)
        except BaseException as exc:  # noqa: BLE001 - checked by the test
            errors.append(exc)

    writer = threading.Thread(target=run, daemon=True)
    writer.start()
    try:
        _until(lambda: spool.written == ahead)
        yield spool, writer, errors
    finally:
        spool.fail(RuntimeError("test over"))
        writer.join(10)
        spool.close()


def _until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


@pytest.mark.timeout(30)
def test_a_paced_writer_waits_for_what_was_sent_and_the_sent_bytes_are_freed(tmp_path: Path) -> None:
    with paced_writer(tmp_path, 4 * MiB, 8) as (spool, writer, errors):
        writer.join(0.3)  # it must not go on: nothing was sent yet
        assert writer.is_alive() and spool.written == 4 * MiB
        spool.sent(0, MiB)
        _until(lambda: spool.written == 5 * MiB)
        writer.join(0.3)
        assert writer.is_alive() and spool.written == 5 * MiB
        with open(spool.path, "rb") as f:
            assert f.read(MiB) == bytes(MiB)  # punched: the page cache gave those pages back
        spool.sent(MiB, 4 * MiB)
        writer.join(10)
        assert not writer.is_alive() and not errors and spool.written == 8 * MiB


@pytest.mark.timeout(30)
def test_a_failed_upload_releases_a_waiting_writer_with_its_error(tmp_path: Path) -> None:
    with paced_writer(tmp_path, 2 * MiB, 4) as (spool, writer, errors):
        failure = RuntimeError("part 3 was refused")
        spool.fail(failure)
        writer.join(10)
        assert not writer.is_alive() and errors == [failure]


@pytest.mark.timeout(30)
def test_the_snapshot_spool_is_never_held_back(tmp_path: Path) -> None:
    # Not disposable: etcd's stream writes it (and the structural check reads it at the end).
    spool = Spool(str(tmp_path), "plain")
    try:
        spool.pace(MiB)
        for _ in range(4):
            spool.append(b"y" * MiB)  # in this thread: a wait here would hang the test
        spool.sent(0, 4 * MiB)
        assert spool.written == 4 * MiB
        assert os.path.getsize(spool.path) == 4 * MiB
        with open(spool.path, "rb") as f:
            assert f.read(MiB) == b"y" * MiB  # nothing punched out of it
    finally:
        spool.close()
