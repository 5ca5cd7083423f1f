"""age encryption at the edge: recipients, identities, streaming encrypt and decrypt, new keys.

pyrage (bindings to rage, the Rust implementation of age) parses and makes keys and decrypts;
encryption is agefile.py's (OpenSSL through `cryptography`, for speed), so what one writes the
other reads. This module validates key material, streams with bounded memory, and translates
pyrage's exceptions.

Only X25519 keys are supported: `age1...` recipients and `AGE-SECRET-KEY-1...` identities, the
kind `age-keygen` and `etcd-backup keygen` make. Stored objects are standard binary age files.

pyrage streams whole files only (decrypt_io pulls from a reader and pushes into a writer until
EOF) and loses the text of Python exceptions raised inside them; the guards below
keep the original exception so a failing source (a snapshot that failed verification) or sink
(a full disk) surfaces as itself, and anything else is the ciphertext's fault.
"""

from __future__ import annotations

import io
import os
import re
import stat
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import pyrage
from pyrage import x25519

from .errors import IntegrityError, MissingIdentity

FORMAT = "age"
HEADER = b"age-encryption.org/v1\n"  # every age file starts with this line
RECIPIENT_PREFIX = "age1"
IDENTITY_PREFIX = "AGE-SECRET-KEY-1"
# A private key anywhere in a text: what logs and error lines are scrubbed of.
SECRET_KEY_RE = re.compile(r"AGE-SECRET-KEY-1[0-9A-Z]+", re.IGNORECASE)


def mask(text: str, secrets: Iterable[str]) -> str:
    """`text` with each of `secrets` (of 4 characters or more) replaced by ***, in any case (a
    resolver or URL parser may have lowercased it: `etcd.endpoints` set to a password), and any
    age private key, also one nobody named (a wrong key file)."""
    lowered = text.lower()
    for secret in secrets:
        if len(secret) >= 4 and secret.lower() in lowered:
            text = re.sub(re.escape(secret), "***", text, flags=re.IGNORECASE)
            lowered = text.lower()
    return SECRET_KEY_RE.sub("AGE-SECRET-KEY-1***", text)


# pyrage reads 8 KiB at a time: serve those from a C buffer, not Python. Below the mmap threshold
# set in cli.main, so each refill reuses heap memory instead of faulting in fresh pages.
_READ_BUFFER = 128 * 1024


class Reader(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class Writer(Protocol):
    def write(self, data: bytes, /) -> Any: ...


# --- keys --------------------------------------------------------------------------------------


def _describe(text: str) -> str:
    """How a bad key is named in an error: never the key itself (it may be a private key)."""
    if SECRET_KEY_RE.search(text):
        return "a private key (AGE-SECRET-KEY-1...); give its public key (age1...), e.g. from age-keygen -y"
    if text.startswith("age1"):  # a public key, mistyped: its start says which one
        return f"{text[:8]!r}... ({len(text)} characters)"
    # Anything else may be a secret pasted into the wrong place: not even a part of it.
    return f"a value of {len(text)} characters that does not start with age1"


def parse_recipient(text: str) -> str:
    """An `age1...` X25519 public key, validated (Bech32 checksum included), in canonical lower case."""
    value = text.strip()
    if not value.lower().startswith(RECIPIENT_PREFIX):
        raise ValueError(f"not an age X25519 recipient (age1...): {_describe(value)}")
    try:
        x25519.Recipient.from_str(value)
    except pyrage.RecipientError:
        raise ValueError(f"not a valid age recipient (bad encoding or checksum): {_describe(value)}") from None
    return value.lower()


def parse_recipients(values: Iterable[str]) -> tuple[str, ...]:
    """Validated and de-duplicated, in the order given."""
    out: list[str] = []
    for i, value in enumerate(values, 1):
        try:
            recipient = parse_recipient(value)
        except ValueError as exc:
            raise ValueError(f"entry {i}: {exc}") from None
        if recipient not in out:
            out.append(recipient)
    return tuple(out)


def _key_lines(path: str, what: str) -> list[tuple[int, str]]:
    """(line number, text) of the lines that are not blank or `#` comments (age's file format)."""
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except FileNotFoundError:
        raise ValueError(f"file not found: {path}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a text file of {what}") from None
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    return [(n, line.strip()) for n, line in enumerate(lines, 1) if line.strip() and not line.lstrip().startswith("#")]


def read_recipients_file(path: str) -> tuple[str, ...]:
    """A recipients file: one `age1...` per line; blank lines and `#` comments allowed."""
    out: list[str] = []
    for n, line in _key_lines(path, "age recipients"):
        try:
            recipient = parse_recipient(line)
        except ValueError as exc:
            raise ValueError(f"{path} line {n}: {exc}") from None
        if recipient not in out:
            out.append(recipient)
    if not out:
        raise ValueError(f"{path} holds no recipient")
    return tuple(out)


class Identities:
    """Private keys from an identity file. The keys never leave this object in any printable form."""

    __slots__ = ("_keys", "_secrets", "path", "recipients")

    def __init__(self, path: str, keys: Sequence[Any], secrets: Sequence[str]) -> None:
        self.path = path
        self._keys = list(keys)
        self._secrets = tuple(secrets)
        self.recipients = tuple(str(k.to_public()) for k in self._keys)

    def __repr__(self) -> str:
        return f"Identities({len(self._keys)} key(s) from {self.path})"

    def opens(self, recipients: Iterable[str]) -> bool:
        """Whether one of these keys is among `recipients` (what a manifest says an object is encrypted to)."""
        wanted = {r.lower() for r in recipients}
        return any(r in wanted for r in self.recipients)

    def secret_values(self) -> tuple[str, ...]:
        """For logsetup.register_secrets: the exact strings that must never be printed."""
        return self._secrets


def load_identities(path: str) -> Identities:
    """An identity file: one or more `AGE-SECRET-KEY-1...` lines; blank lines and `#` comments allowed.

    Refused when group or others may read it: a private key readable by others is no longer private.
    ValueError (never quoting the file's content) when anything is wrong.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ValueError(f"file not found: {path}") from None
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{path} is not a regular file")
    if st.st_mode & 0o044:
        raise ValueError(
            f"{path} is readable by group or others (mode {stat.S_IMODE(st.st_mode):04o}); chmod 600 {path}"
        )
    keys: list[Any] = []
    secrets: list[str] = []
    for n, line in _key_lines(path, "age identities"):
        if not line.upper().startswith(IDENTITY_PREFIX):
            raise ValueError(f"{path} line {n}: not an age X25519 identity (AGE-SECRET-KEY-1...)")
        try:
            keys.append(x25519.Identity.from_str(line))
        except pyrage.IdentityError:
            raise ValueError(f"{path} line {n}: not a valid age identity (bad encoding or checksum)") from None
        secrets += [line, line.upper(), line.lower()]
    if not keys:
        raise ValueError(f"{path} holds no identity (AGE-SECRET-KEY-1... line)")
    return Identities(path, keys, secrets)


def require(identities: Identities | None, recipients: Sequence[str], what: str) -> Identities:
    """The identities, if one of them opens an object encrypted to `recipients`; else MissingIdentity."""
    names = ", ".join(recipients) or "no recorded recipient"
    if identities is None:
        raise MissingIdentity(
            f"{what} is encrypted (age, to {names}): reading it needs the matching private key in "
            "encryption.identity_file"
        )
    if not identities.opens(recipients):
        raise MissingIdentity(
            f"no key in {identities.path} opens {what}: it is encrypted to {names}; "
            "add the matching private key to encryption.identity_file"
        )
    return identities


def generate() -> tuple[str, str]:
    """A new X25519 key pair: (private key line, recipient)."""
    identity = x25519.Identity.generate()
    return str(identity), str(identity.to_public())


def write_identity_file(path: str) -> str:
    """Create `path` (mode 0600, never over an existing file) with a new key, as age-keygen writes it.
    Returns its recipient. OSError as the filesystem raises it."""
    secret, recipient = generate()
    created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    text = f"# created: {created}\n# public key: {recipient}\n{secret}\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return recipient


# --- streams -----------------------------------------------------------------------------------


class _GuardedSource(io.RawIOBase):
    """The source as raw I/O, keeping the exception it raises (pyrage would reduce it to a string)."""

    def __init__(self, source: Reader) -> None:
        super().__init__()
        self._source = source
        self.error: BaseException | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data = self._source.read(len(buffer))
        except BaseException as exc:
            self.error = exc
            raise
        n = len(data)
        buffer[:n] = data
        return n


class _GuardedSink:
    """The sink, keeping the exception it raises."""

    def __init__(self, sink: Writer) -> None:
        self._sink = sink
        self.error: BaseException | None = None

    def write(self, data: bytes) -> int:
        try:
            self._sink.write(data)
        except BaseException as exc:
            self.error = exc
            raise
        return len(data)

    def flush(self) -> None:
        flush = getattr(self._sink, "flush", None)
        if flush is not None:
            try:
                flush()
            except BaseException as exc:
                self.error = exc
                raise

    def writable(self) -> bool:
        return True


def _own_failure(*guards: _GuardedSource | _GuardedSink) -> BaseException | None:
    for guard in guards:
        if guard.error is not None:
            return guard.error
    return None


def encrypt(source: Reader, sink: Writer, recipients: Sequence[str]) -> None:
    """Read `source` to EOF and write it to `sink` as an age file for `recipients` (agefile.py).

    Memory stays flat (64 KiB chunks). An exception of the source or the sink propagates as is.
    """
    if not recipients:
        raise ValueError("encrypt needs at least one recipient")
    from . import agefile  # cryptography costs 60 ms of start-up: only for commands that encrypt

    agefile.encrypt(source, sink, recipients)


def decrypt(source: Reader, sink: Writer, identities: Identities, what: str) -> None:
    """Read the age file `source` and write its plaintext to `sink`, authenticating every chunk.

    Call `require` first: a ciphertext that the identities were expected to open but does not open,
    or that fails authentication, is an IntegrityError (tampered or truncated). The sink may have
    received part of the plaintext by then: the caller discards it. Sink errors propagate as is.
    """
    raw = _GuardedSource(source)
    out = _GuardedSink(sink)
    try:
        pyrage.decrypt_io(io.BufferedReader(raw, _READ_BUFFER), out, identities._keys)
    except Exception as exc:  # noqa: BLE001 - pyrage raises its own types, OSError, or ours again
        own = _own_failure(raw, out)
        if own is not None:
            raise own from None
        # DecryptError: header unreadable or no stanza opens (a tampered header reads as "no
        # matching keys"); OSError: a payload chunk failed authentication or the file is truncated.
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise IntegrityError(
            f"{what} does not decrypt ({detail}): the object is damaged or was tampered with"
        ) from None
