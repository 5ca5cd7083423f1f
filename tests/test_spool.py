"""The spool's pacing: a ciphertext spool's writer stays within `pace` bytes of what the store has
(its file a ring of that size it writes over), and etcd's stream (the plaintext spool) is never
held back."""

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
    """A ciphertext spool paced at `ahead` bytes, a thread appending `chunks` MiB to it (MiB i
    is bytes([i]) * MiB; what it raised is in the list), once it has met the limit."""
    spool = Spool(str(tmp_path), "cipher", disposable=True)
    spool.pace(ahead)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            for i in range(chunks):
                spool.append(bytes([i]) * MiB)
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
def test_a_paced_writer_waits_for_what_was_sent_and_writes_over_it(tmp_path: Path) -> None:
    with paced_writer(tmp_path, 4 * MiB, 8) as (spool, writer, errors):
        writer.join(0.3)  # it must not go on: nothing was sent yet
        assert writer.is_alive() and spool.written == 4 * MiB
        spool.sent(MiB, MiB)  # out of order: the first MiB still waits for the store
        writer.join(0.3)
        assert writer.is_alive() and spool.written == 4 * MiB
        spool.sent(0, MiB)
        _until(lambda: spool.written == 6 * MiB)
        writer.join(0.3)
        assert writer.is_alive() and spool.written == 6 * MiB
        # A ring of 4 MiB: MiB 4 and 5 went where 0 and 1 were; 2 and 3 are where they were.
        assert os.path.getsize(spool.path) == 4 * MiB
        assert spool.at(4 * MiB, MiB) == 0 and spool.at(2 * MiB, MiB) == 2 * MiB
        with open(spool.path, "rb") as f:
            assert [f.read(MiB)[::65536] for _ in range(4)] == [bytes([i]) * 16 for i in (4, 5, 2, 3)]
        with pytest.raises(ValueError, match="not in the ring"):
            spool.at(0, MiB)  # sent, and written over since
        spool.sent(2 * MiB, 4 * MiB)
        writer.join(10)
        assert not writer.is_alive() and not errors and spool.written == 8 * MiB


@pytest.mark.timeout(30)
def test_a_spool_paced_too_late_for_a_ring_gives_sent_pages_back(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path), "cipher", disposable=True)
    try:
        for i in range(3):
            spool.append(bytes([i + 1]) * MiB)
        spool.pace(2 * MiB)  # 3 MiB are at their own offsets already: no ring of 2 MiB
        spool.sent(0, 2 * MiB)
        spool.append(bytes([4]) * MiB)  # 3 MiB written - 2 sent < 2 ahead: room
        assert spool.at(3 * MiB, MiB) == 3 * MiB
        with open(spool.path, "rb") as f:
            data = f.read()
        assert data == bytes(2 * MiB) + bytes([3]) * MiB + bytes([4]) * MiB  # punched, then appended
    finally:
        spool.close()


@pytest.mark.timeout(30)
def test_an_append_larger_than_the_ring_waits_for_each_part_of_it(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path), "cipher", disposable=True)
    spool.pace(2 * MiB)
    sender_done = threading.Event()

    def send() -> None:  # the store's side: each MiB is sent once written
        try:
            for i in range(5):
                _until(lambda i=i: spool.written >= (i + 1) * MiB)
                fd = os.open(spool.path, os.O_RDONLY)
                try:
                    assert os.pread(fd, MiB, spool.at(i * MiB, MiB)) == bytes([i]) * MiB
                finally:
                    os.close(fd)
                spool.sent(i * MiB, MiB)
            sender_done.set()
        except BaseException as exc:  # noqa: BLE001 - the writer raises it, and the test fails
            spool.fail(exc)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        spool.append_all([bytes([i]) * MiB for i in range(5)], 5 * MiB)  # one call, 2.5 rings long
        sender.join(10)
        assert sender_done.is_set() and spool.written == 5 * MiB
        assert os.path.getsize(spool.path) == 2 * MiB
    finally:
        spool.fail(RuntimeError("test over"))
        spool.close()


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
