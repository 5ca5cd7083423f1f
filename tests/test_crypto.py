"""age at the edge: key material validated without ever echoing a private key, streams that the
reference `age` tool opens (and the other way round), tampering caught, errors kept as themselves."""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path

import pytest

from conftest import AgeTool
from etcd_backup import agefile, crypto
from etcd_backup.errors import IntegrityError, MissingIdentity

pytestmark = pytest.mark.timeout(60)
MiB = 1024 * 1024


def _secret_line(identity: Path) -> str:
    return next(line for line in identity.read_text().splitlines() if line.startswith("AGE-SECRET-KEY-1"))


@pytest.fixture
def keys(tmp_path: Path, age_tool: AgeTool) -> tuple[Path, str]:
    path = tmp_path / "age.key"
    return path, age_tool.new_identity(path)


# --- recipients --------------------------------------------------------------------------------


def test_recipient_is_validated_and_canonical(keys: tuple[Path, str]) -> None:
    _, recipient = keys
    assert crypto.parse_recipient(f"  {recipient.upper()} ") == recipient
    assert crypto.parse_recipients([recipient, recipient.upper()]) == (recipient,)
    broken = recipient[:-1] + ("q" if recipient[-1] != "q" else "p")
    with pytest.raises(ValueError, match="checksum"):
        crypto.parse_recipient(broken)
    with pytest.raises(ValueError, match="entry 2"):
        crypto.parse_recipients([recipient, "ssh-ed25519 AAAA"])


def test_private_key_given_as_recipient_is_never_echoed(keys: tuple[Path, str]) -> None:
    identity, _ = keys
    secret = _secret_line(identity)
    with pytest.raises(ValueError) as exc:
        crypto.parse_recipient(secret)
    assert "private key" in str(exc.value)
    assert secret not in str(exc.value) and secret[16:30] not in str(exc.value)


def test_recipients_file(tmp_path: Path, keys: tuple[Path, str], age_tool: AgeTool) -> None:
    _, first = keys
    second = age_tool.new_identity(tmp_path / "second.key")
    f = tmp_path / "recipients.txt"
    f.write_text(f"# ops team\n{first}\n\n   # backup key in the safe\n{second}\n{first}\n")
    assert crypto.read_recipients_file(str(f)) == (first, second)
    f.write_text(f"{first}\nage1notakey\n")
    with pytest.raises(ValueError, match="line 2"):
        crypto.read_recipients_file(str(f))
    f.write_text("# nothing here\n")
    with pytest.raises(ValueError, match="no recipient"):
        crypto.read_recipients_file(str(f))
    with pytest.raises(ValueError, match="file not found"):
        crypto.read_recipients_file(str(tmp_path / "missing.txt"))


# --- identities --------------------------------------------------------------------------------


def test_identity_file_with_several_keys_as_age_keygen_writes_them(tmp_path: Path, age_tool: AgeTool) -> None:
    a, b = tmp_path / "a.key", tmp_path / "b.key"
    ra, rb = age_tool.new_identity(a), age_tool.new_identity(b)
    both = tmp_path / "both.key"
    both.write_text(a.read_text() + "\n" + b.read_text())  # comments and blank lines included
    both.chmod(0o600)
    identities = crypto.load_identities(str(both))
    assert identities.recipients == (ra, rb)
    assert identities.opens([rb]) and identities.opens([ra.upper()]) and not identities.opens(["age1other"])
    assert _secret_line(a) in identities.secret_values()
    assert _secret_line(a) not in repr(identities) and "2 key(s)" in repr(identities)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_identity_file_readable_by_others_is_refused(keys: tuple[Path, str], mode: int) -> None:
    identity, _ = keys
    identity.chmod(mode)
    with pytest.raises(ValueError, match="readable by group or others"):
        crypto.load_identities(str(identity))
    identity.chmod(0o400)
    assert crypto.load_identities(str(identity)).recipients


def test_malformed_identity_file_never_quotes_its_content(tmp_path: Path, keys: tuple[Path, str]) -> None:
    identity, _ = keys
    secret = _secret_line(identity)
    bad = tmp_path / "bad.key"
    for text, words in [
        (f"# mine\n{secret[:-2]}zz\n", "line 2"),  # a broken checksum
        (f"{secret}\nAGE-PLUGIN-YUBIKEY-1XYZ\n", "line 2"),
        ("# only comments\n", "no identity"),
    ]:
        bad.write_text(text)
        bad.chmod(0o600)
        with pytest.raises(ValueError, match=words) as exc:
            crypto.load_identities(str(bad))
        assert secret not in str(exc.value) and secret[20:40] not in str(exc.value)
    with pytest.raises(ValueError, match="file not found"):
        crypto.load_identities(str(tmp_path / "missing.key"))


def test_require_names_the_recipients(tmp_path: Path, keys: tuple[Path, str], age_tool: AgeTool) -> None:
    identity, recipient = keys
    other = age_tool.new_identity(tmp_path / "other.key")
    identities = crypto.load_identities(str(identity))
    assert crypto.require(identities, [recipient], "snapshot X") is identities
    with pytest.raises(MissingIdentity, match=f"encrypted to {other}") as exc:
        crypto.require(identities, [other], "snapshot X")
    assert exc.value.exit_code == 2
    with pytest.raises(MissingIdentity, match=r"encryption\.identity_file"):
        crypto.require(None, [recipient], "snapshot X")


def test_keygen_file_is_private_and_never_overwritten(tmp_path: Path, age_tool: AgeTool) -> None:
    path = tmp_path / "new.key"
    old = os.umask(0)
    try:
        recipient = crypto.write_identity_file(str(path))
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o600
    assert age_tool.recipient_of(path) == recipient
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        crypto.write_identity_file(str(path))
    assert path.read_bytes() == before


# --- streams -----------------------------------------------------------------------------------


class _Trickle:
    """A source that returns short reads, as a spool following a stream does."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        n = min(n if n > 0 else len(self._data), 100_003)
        chunk = bytes(self._data[self._pos : self._pos + n])
        self._pos += len(chunk)
        return chunk


def test_encrypted_stream_opens_with_the_age_tool(tmp_path: Path, keys: tuple[Path, str], age_tool: AgeTool) -> None:
    identity, recipient = keys
    data = os.urandom(3 * MiB + 12345)
    enc = tmp_path / "data.age"
    with open(enc, "wb") as out:
        crypto.encrypt(_Trickle(data), out, [recipient])
    assert enc.read_bytes().startswith(crypto.HEADER)
    age_tool.decrypt(identity, enc, tmp_path / "plain")
    assert (tmp_path / "plain").read_bytes() == data


def test_age_tool_output_decrypts_here(tmp_path: Path, keys: tuple[Path, str], age_tool: AgeTool) -> None:
    identity, recipient = keys
    data = os.urandom(MiB + 7)
    (tmp_path / "plain").write_bytes(data)
    age_tool.encrypt(recipient, tmp_path / "plain", tmp_path / "data.age")
    out = io.BytesIO()
    with open(tmp_path / "data.age", "rb") as src:
        crypto.decrypt(src, out, crypto.load_identities(str(identity)), "object")
    assert out.getvalue() == data


@pytest.mark.parametrize(
    "size", [0, 1, agefile.CHUNK - 1, agefile.CHUNK, agefile.CHUNK + 1, 2 * agefile.CHUNK, 17 * agefile.CHUNK + 5]
)
def test_every_chunk_boundary_opens_with_the_age_tool_and_with_rage(
    tmp_path: Path, keys: tuple[Path, str], age_tool: AgeTool, size: int
) -> None:
    """The STREAM payload is written here (agefile.py): the final-chunk flag and the empty or
    full last chunk are where a hand-written writer goes wrong, and either reader would refuse it."""
    identity, recipient = keys
    other = age_tool.new_identity(tmp_path / "other.key")
    data = os.urandom(size)
    enc = tmp_path / "data.age"
    with open(enc, "wb") as out:
        crypto.encrypt(_Trickle(data), out, [other, recipient])
    assert enc.stat().st_size == len(_header_of(enc.read_bytes())) + 16 + size + agefile.TAG * max(
        1, -(-size // agefile.CHUNK)
    )
    for key in (identity, tmp_path / "other.key"):  # each recipient's stanza opens it
        plain = tmp_path / f"plain-{key.name}"
        age_tool.decrypt(key, enc, plain)
        assert (plain.read_bytes() if plain.exists() else b"") == data  # age creates no file for no bytes
    out_here = io.BytesIO()
    with open(enc, "rb") as src:
        crypto.decrypt(src, out_here, crypto.load_identities(str(identity)), "object")
    assert out_here.getvalue() == data


def _header_of(blob: bytes) -> bytes:
    end = blob.index(b"\n---") + 1
    return blob[: blob.index(b"\n", end) + 1]


def test_recipient_key_is_the_bech32_payload_and_checks_the_checksum(keys: tuple[Path, str]) -> None:
    _, recipient = keys
    raw = agefile.recipient_key(recipient)
    assert len(raw) == 32 and agefile.recipient_key(recipient.upper()) == raw
    flipped = recipient[:-1] + ("q" if recipient[-1] != "q" else "p")
    with pytest.raises(ValueError, match="checksum"):
        agefile.recipient_key(flipped)


@pytest.mark.parametrize("damage", ["payload", "header", "truncated", "not-age"])
def test_damaged_ciphertext_is_an_integrity_error(keys: tuple[Path, str], damage: str) -> None:
    identity, recipient = keys
    out = io.BytesIO()
    crypto.encrypt(io.BytesIO(os.urandom(200_000)), out, [recipient])
    blob = bytearray(out.getvalue())
    if damage == "payload":
        blob[len(blob) // 2] ^= 0x01
    elif damage == "header":
        blob[40] ^= 0x01  # inside the X25519 stanza: reads as "no matching keys"
    elif damage == "truncated":
        del blob[-1000:]
    else:
        blob = bytearray(os.urandom(1000))
    with pytest.raises(IntegrityError, match="does not decrypt") as exc:
        crypto.decrypt(io.BytesIO(bytes(blob)), io.BytesIO(), crypto.load_identities(str(identity)), "snapshot X")
    assert exc.value.exit_code == 3


def test_source_and_sink_failures_surface_as_themselves(keys: tuple[Path, str]) -> None:
    identity, recipient = keys

    class Failing:
        def __init__(self, exc: BaseException) -> None:
            self.exc = exc

        def read(self, n: int = -1) -> bytes:
            raise self.exc

        def write(self, data: bytes) -> int:
            raise self.exc

    failed = IntegrityError("snapshot failed its trailer check")
    with pytest.raises(IntegrityError) as exc:
        crypto.encrypt(Failing(failed), io.BytesIO(), [recipient])
    assert exc.value is failed
    full = OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(OSError) as os_exc:
        crypto.encrypt(io.BytesIO(b"x" * 100_000), Failing(full), [recipient])
    assert os_exc.value is full
    blob = io.BytesIO()
    crypto.encrypt(io.BytesIO(b"x" * 100_000), blob, [recipient])
    with pytest.raises(OSError) as os_exc:
        crypto.decrypt(io.BytesIO(blob.getvalue()), Failing(full), crypto.load_identities(str(identity)), "x")
    assert os_exc.value is full
    with pytest.raises(ValueError):
        crypto.encrypt(io.BytesIO(b""), io.BytesIO(), [])
