"""How an upload to S3 proves the stored bytes are the bytes sent, for each `storage.checksum`.

- "sha256" / "crc32c": each request carries `x-amz-checksum-<alg>` (computed here, so the digests
  are known whatever the store answers); the store rejects a mismatch on receipt, and the read-back
  compares the checksum it reports for the object (plain, or composite "<digest>-<parts>").
- "md5": each request carries `Content-MD5`, the one header every S3 store has checked since 2006,
  for stores that reject or ignore the newer ones; the read-back compares the ETag, which is the
  MD5 (one part) or the MD5 of the part MD5s plus "-<parts>" (multipart).

When the store reports nothing comparable (it ignores the header, or an ETag that is no MD5 under
SSE-KMS), the read-back downloads the object and hashes it part by part: the proof never falls
back to sizes alone.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import crc32c

from .base import Digest

Algorithm = Literal["sha256", "crc32c", "md5"]


class _Crc32c:
    def __init__(self) -> None:
        self._value = 0

    def update(self, data: bytes | memoryview, /) -> None:
        self._value = crc32c.crc32c(data, self._value)

    def digest(self) -> bytes:
        return struct.pack(">I", self._value)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


@dataclass(frozen=True, slots=True)
class Checksum:
    algorithm: Algorithm

    def new(self) -> Digest:
        if self.algorithm == "sha256":
            return hashlib.sha256()
        if self.algorithm == "md5":
            return hashlib.md5()  # an integrity check every store understands, not security
        return _Crc32c()

    def request_args(self, digest: bytes) -> dict[str, str]:
        """Arguments of PutObject / UploadPart that make the store check the body against `digest`."""
        if self.algorithm == "md5":
            return {"ContentMD5": _b64(digest)}
        name = self.algorithm.upper()
        return {"ChecksumAlgorithm": name, f"Checksum{name}": _b64(digest)}

    def create_args(self) -> dict[str, str]:
        """Arguments of CreateMultipartUpload."""
        return {} if self.algorithm == "md5" else {"ChecksumAlgorithm": self.algorithm.upper()}

    def head_args(self) -> dict[str, str]:
        """Arguments of HeadObject that ask for the stored checksum (a newer header too)."""
        return {} if self.algorithm == "md5" else {"ChecksumMode": "ENABLED"}

    def complete_part(self, digest: bytes) -> dict[str, str]:
        """What CompleteMultipartUpload repeats for each part."""
        return {} if self.algorithm == "md5" else {f"Checksum{self.algorithm.upper()}": _b64(digest)}

    def expected(self, parts: list[bytes], multipart: bool) -> set[str]:
        """What the store may report for the whole object, given each part's digest."""
        if self.algorithm == "md5":
            if not multipart:
                return {f'"{parts[0].hex()}"'}
            combined = hashlib.md5(b"".join(parts)).hexdigest()
            return {f'"{combined}-{len(parts)}"'}
        if not multipart:
            return {_b64(parts[0])}
        whole = self.new()
        whole.update(b"".join(parts))
        composite = _b64(whole.digest())
        # Real S3 reports "<digest>-<parts>"; some compatible stores leave the count out.
        return {composite, f"{composite}-{len(parts)}"}

    def reported(self, head: dict[str, Any]) -> str | None:
        """The store's own checksum for the whole object in a HeadObject answer, if it gives one."""
        if self.algorithm == "md5":
            etag = head.get("ETag")
            return etag if isinstance(etag, str) and _is_md5_etag(etag) else None
        value = head.get(f"Checksum{self.algorithm.upper()}")
        return value if isinstance(value, str) and value else None

    def of_ranges(self, read: Callable[[int], bytes], size: int, part_size: int) -> list[bytes]:
        """Each part's digest, reading `size` bytes in parts of `part_size` (the download proof)."""
        out: list[bytes] = []
        left = size
        while left > 0:
            digest = self.new()
            want = min(part_size, left)
            while want:
                chunk = read(min(want, 1024 * 1024))
                if not chunk:
                    return out  # short: the caller compares sizes
                digest.update(chunk)
                want -= len(chunk)
                left -= len(chunk)
            out.append(digest.digest())
        return out


def _is_md5_etag(etag: str) -> bool:
    body = etag.strip('"').split("-", 1)
    try:
        return len(body[0]) == 32 and int(body[0], 16) >= 0 and (len(body) == 1 or int(body[1]) > 0)
    except ValueError:
        return False
