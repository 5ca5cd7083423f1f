"""The writing half of the age v1 file format (https://age-encryption.org/v1), X25519 recipients only.

Written by hand, on OpenSSL's primitives through `cryptography`, for speed: rage (through pyrage)
runs ChaCha20-Poly1305 at about 1 GB/s here and holds the GIL, OpenSSL at 3.2 GB/s without it, so
the encryption of a snapshot no longer competes with the receive loop. Reading stays with rage
(crypto.decrypt), so every object this module writes is opened by an independent implementation
in every restore and drill, and by the reference `age` tool in the tests.

A file is: the header (version line, one `-> X25519` stanza per recipient wrapping the 16-byte
file key, `---` and the header's HMAC), a 16-byte nonce, then the payload in STREAM chunks of
64 KiB of plaintext, each sealed with ChaCha20-Poly1305 under a 12-byte nonce (11-byte big-endian
counter, then 1 on the final chunk, 0 before).
"""

from __future__ import annotations

import base64
import hmac
import os
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

VERSION_LINE = b"age-encryption.org/v1\n"
CHUNK = 64 * 1024  # plaintext per STREAM chunk, fixed by the format
TAG = 16  # Poly1305 tag appended to every chunk
_X25519_LABEL = b"age-encryption.org/v1/X25519"
_BECH32 = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
# One read of the source feeds 8 chunks. Below the malloc mmap threshold set in cli.main (1 MiB):
# a 1 MiB read would be a fresh mapping each time, and on a VM every fresh page is a fault in the
# host (about 2 CPU-s per GiB here).
_READ = 8 * CHUNK


class Reader(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class Writer(Protocol):
    def write(self, data: bytes, /) -> Any: ...


def _b64(data: bytes) -> bytes:
    return base64.b64encode(data).rstrip(b"=")  # age's base64: standard alphabet, no padding


def _hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


def _bech32_polymod(values: Sequence[int]) -> int:
    chk = 1
    for v in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ v
        for i, g in enumerate((0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)):
            chk ^= g if (top >> i) & 1 else 0
    return chk


def recipient_key(recipient: str) -> bytes:
    """The 32-byte X25519 public key of an `age1...` recipient (Bech32, checksum checked)."""
    text = recipient.strip().lower()
    hrp, sep, data = text.rpartition("1")
    if hrp != "age" or not sep or len(data) < 6 or any(c not in _BECH32 for c in data):
        raise ValueError("not an age X25519 recipient")
    values = [_BECH32.index(c) for c in data]
    expanded = [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]
    if _bech32_polymod(expanded + values) != 1:
        raise ValueError("age recipient has a bad checksum")
    acc, bits, out = 0, 0, bytearray()
    for v in values[:-6]:
        acc, bits = (acc << 5 | v) & 0xFFF, bits + 5
        if bits >= 8:
            bits -= 8
            out.append(acc >> bits & 0xFF)
    if len(out) != 32 or acc & ((1 << bits) - 1):
        raise ValueError("age recipient is not a 32-byte X25519 key")
    return bytes(out)


def _stanza(file_key: bytes, recipient: bytes) -> bytes:
    ephemeral = X25519PrivateKey.generate()
    share = ephemeral.public_key().public_bytes_raw()
    shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(recipient))  # refuses low-order points
    wrap_key = _hkdf(shared, share + recipient, _X25519_LABEL)
    body = ChaCha20Poly1305(wrap_key).encrypt(bytes(12), file_key, None)
    return b"-> X25519 " + _b64(share) + b"\n" + _b64(body) + b"\n"  # 32-byte body: one 43-column line


def header(file_key: bytes, recipients: Sequence[str]) -> bytes:
    """The header wrapping `file_key` to each recipient, MAC included."""
    if not recipients:
        raise ValueError("an age file needs at least one recipient")
    text = VERSION_LINE + b"".join(_stanza(file_key, recipient_key(r)) for r in recipients) + b"---"
    mac = hmac.digest(_hkdf(file_key, b"", b"header"), text, "sha256")
    return text + b" " + _b64(mac) + b"\n"


def _chunks(source: Reader) -> Iterator[tuple[memoryview, bool]]:
    """The plaintext in 64 KiB chunks, each with whether it is the last. The last is short or, for
    an input of whole chunks, full; it is empty only when the whole input is."""
    pending = memoryview(b"")  # the chunk not yet known to be the last
    while data := source.read(_READ):
        view = memoryview(data)
        if 0 < len(pending) < CHUNK:  # a short read left it short: complete it (copies under 64 KiB)
            fill = CHUNK - len(pending)
            pending, view = memoryview(bytes(pending) + bytes(view[:fill])), view[fill:]
        while view:
            if pending:
                yield pending, False
            pending, view = view[:CHUNK], view[CHUNK:]
    yield pending, True


def encrypt(source: Reader, sink: Writer, recipients: Sequence[str]) -> None:
    """Read `source` to EOF and write it to `sink` as an age file for `recipients`, 64 KiB of
    ciphertext (plus tag) per write. Exceptions of the source or the sink propagate as they are."""
    file_key = os.urandom(16)
    sink.write(header(file_key, recipients))
    nonce = os.urandom(16)
    sink.write(nonce)
    aead = ChaCha20Poly1305(_hkdf(file_key, nonce, b"payload"))
    for counter, (chunk, last) in enumerate(_chunks(source)):
        sink.write(aead.encrypt(counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00"), chunk, None))


__all__ = ["CHUNK", "TAG", "VERSION_LINE", "encrypt", "header", "recipient_key"]
