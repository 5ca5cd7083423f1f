"""The stored form of a data object: zstd-compressed and/or age-encrypted, as its manifest records.

On the way in, `encode` turns the plaintext reader into what the store uploads: compress (if
configured), then encrypt (if recipients are set). On the way out, `decode` undoes it in the
reverse order, streaming: decrypt, then decompress. Memory stays flat both ways. Any kind of
data object (full snapshots, deltas) goes through here, so each is encrypted the same way.

Encrypted output goes through a second spool file rather than an in-memory pipe: the stores
take a growing spool file as a source (S3 sends its parts as ranges of it with flat memory,
whatever the concurrency; file:// links it into place instead of copying), and the ciphertext
is hashed on its way in, for the manifest's object_sha256.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO

from . import crypto
from .config import Config
from .errors import IntegrityError
from .model import Encryption
from .spool import Spool, SpoolReader

_CHUNK = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Form:
    """How new data objects are stored."""

    compression: str = "none"  # "none" | "zstd"
    level: int = 3
    recipients: tuple[str, ...] = ()  # empty: not encrypted

    @classmethod
    def of(cls, cfg: Config) -> Form:
        return cls(cfg.storage.compression, cfg.storage.compression_level, cfg.encryption.recipient_list)

    @property
    def encryption(self) -> Encryption | None:
        """What the manifest records."""
        return Encryption(crypto.FORMAT, self.recipients) if self.recipients else None

    @property
    def transformed(self) -> bool:
        return self.compression != "none" or bool(self.recipients)


class Compressing:
    """zstd-compresses a reader on the fly (file-like read())."""

    def __init__(self, source: Any, level: int) -> None:
        import zstandard

        self._reader = zstandard.ZstdCompressor(level=level, threads=0).stream_reader(
            source, read_size=_CHUNK, closefd=False
        )

    def read(self, n: int = -1) -> bytes:
        return self._reader.read(n)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False


class Encoded:
    """What `encode` yields: the reader to upload, the same bytes as a growing local file when
    they are one (`spooled`, for stores that send ranges of it or link it), and for encrypted
    forms the stored bytes' digest."""

    def __init__(self, reader: Any, spooled: SpoolReader | None) -> None:
        self.reader = reader
        self.spooled = spooled
        self.sha256: str | None = None  # hex, once the whole ciphertext is written; None when not encrypted
        self.size: int | None = None


class _Sealing:
    """Compress-and-encrypt on a thread, from the plaintext source into a spool the store follows.

    The spool ends (EOF for the store) only when the source ended, so a source that ends only once
    verified (the snapshot spool) keeps the upload from completing before. A failure of the source
    fails the spool (the upload aborts) and vice versa; whichever of the thread and the consumer
    leaves last removes the spool file.
    """

    def __init__(self, source: Any, form: Form, spool: Spool) -> None:
        self._source = source
        self._form = form
        self.spool = spool
        reader = spool.reader()
        self.encoded = Encoded(reader, reader)
        self._hash = hashlib.sha256()
        self._batch: list[bytes] = []
        self._pending = 0
        self._users = 2
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"encrypt-{spool.path.name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def write(self, data: bytes) -> int:
        # age writes 64 KiB chunks: hash each, spool them ~1 MiB at a time (fewer syscalls and wake-ups).
        self._hash.update(data)
        self._batch.append(data)
        self._pending += len(data)
        if self._pending >= _CHUNK:
            self._flush()
        return len(data)

    def _flush(self) -> None:
        if self._batch:
            self.spool.append_all(self._batch, self._pending)
            self._batch, self._pending = [], 0

    def _run(self) -> None:
        try:
            source = Compressing(self._source, self._form.level) if self._form.compression == "zstd" else self._source
            crypto.encrypt(source, self, self._form.recipients)
            self._flush()
            self.encoded.sha256 = self._hash.hexdigest()
            self.encoded.size = self.spool.written
            self.spool.finish()
            self.spool.release()
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer through the spool
            self.spool.fail(exc)
        finally:
            self._leave()

    def close(self, error: BaseException | None) -> None:
        """The consumer is done (with `error` if it failed)."""
        if error is not None:
            self.spool.fail(error)  # stops the thread at its next write
        else:
            self._thread.join()
        self.encoded.reader.close()
        self._leave()

    def _leave(self) -> None:
        with self._lock:
            self._users -= 1
            last = self._users == 0
        if last:
            self.spool.close()


@contextmanager
def encode(
    source: Any, form: Form, *, spool_dir: str | None = None, durable: bool = False, label: str = "object"
) -> Iterator[Encoded]:
    """The stored form of `source` as a reader for `SnapshotStore.put`.

    `spool_dir` and `durable` are those of the encrypted output's spool (durable when the store
    links the spool file into place). The source itself is not closed here.
    """
    if not form.recipients:
        if form.compression == "zstd":
            yield Encoded(Compressing(source, form.level), None)  # the stored bytes are no file of ours
        else:
            yield Encoded(source, source if isinstance(source, SpoolReader) else None)
        return
    sealing = _Sealing(source, form, Spool(spool_dir, f"{label}-age", durable=durable, disposable=True))
    sealing.start()
    error: BaseException | None = None
    try:
        yield sealing.encoded
    except BaseException as exc:
        error = exc
        raise
    finally:
        sealing.close(error)


class _Decompressing:
    """A writer that zstd-decompresses into `dest`."""

    def __init__(self, dest: BinaryIO) -> None:
        import zstandard

        self._writer: Any = zstandard.ZstdDecompressor().stream_writer(dest, write_size=_CHUNK, closefd=False)

    def write(self, data: bytes) -> int:
        import zstandard

        try:
            self._writer.write(data)
        except zstandard.ZstdError as exc:
            raise IntegrityError(f"data object does not decompress: {exc}") from None
        return len(data)

    def finish(self) -> None:
        self._writer.flush()


def decode(
    source: BinaryIO,
    dest: BinaryIO,
    *,
    compression: str,
    encryption: Encryption | None,
    identities: crypto.Identities | None,
    what: str,
) -> None:
    """Write the plaintext of the stored object `source` to `dest`: decrypt, then decompress.

    A damaged or tampered object is an IntegrityError; `dest` may hold part of the plaintext
    then (the caller discards it). Without a matching identity: MissingIdentity, nothing written.
    """
    sink: Any = _Decompressing(dest) if compression == "zstd" else dest
    if encryption is not None:
        keys = crypto.require(identities, encryption.recipients, what)
        crypto.decrypt(source, sink, keys, what)
    else:
        while chunk := source.read(_CHUNK):
            sink.write(chunk)
    if isinstance(sink, _Decompressing):
        sink.finish()
    dest.flush()


__all__ = ["Compressing", "Encoded", "Form", "decode", "encode"]
