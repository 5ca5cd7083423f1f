"""kubeadm discovery: where the etcd of a static pod listens and which TLS files it uses.

Pure: takes the manifest's text and returns what its etcd container's command line says, so the
sidecar and the systemd unit need no hand-copied endpoint or certificate paths. Reading the file
and deciding which keys it may fill is `config.py`'s job.
"""

from __future__ import annotations

import shlex
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from .errors import ConfigError

KEY = "etcd.kubeadm_manifest"

# The flags read; only these may take their value from the next argument (`--cert-file PATH`).
ADVERTISE = "advertise-client-urls"
LISTEN = "listen-client-urls"
CA = "trusted-ca-file"
CERT = "cert-file"
KEY_FILE = "key-file"
_VALUE_FLAGS = frozenset({ADVERTISE, LISTEN, CA, CERT, KEY_FILE})
# Which [etcd] key each TLS flag fills.
TLS_FLAGS = {"cacert": CA, "cert": CERT, "key": KEY_FILE}

# A listen URL on every address is dialled on loopback (this host's member).
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}


@dataclass(frozen=True, slots=True)
class EtcdFlags:
    """What the etcd container's command line says about its clients."""

    client_urls: tuple[str, ...]
    client_urls_flag: str  # the flag they came from, for error messages
    trusted_ca_file: str | None
    cert_file: str | None
    key_file: str | None

    @property
    def tls(self) -> bool:
        return any(u.startswith("https://") for u in self.client_urls)


def fail(source: str, why: str) -> ConfigError:
    return ConfigError(f"configuration error: {KEY}: {source}: {why}")


def parse(text: str, source: str) -> EtcdFlags:
    """The etcd container's client flags in a static pod manifest (YAML or JSON)."""
    import yaml  # only when a manifest is configured: one-shot commands start faster without it

    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise fail(source, f"not valid YAML{where}") from None
    if not isinstance(doc, Mapping) or doc.get("kind", "Pod") != "Pod":
        raise fail(source, "not a Pod manifest (expected kind: Pod with spec.containers)")
    spec = doc.get("spec")
    containers = spec.get("containers") if isinstance(spec, Mapping) else None
    if not isinstance(containers, list) or not containers:
        raise fail(source, "no spec.containers")
    argv = _etcd_argv(containers, source)
    flags = _flags(argv)
    flag = ADVERTISE if flags.get(ADVERTISE) else LISTEN
    raw = flags.get(flag)
    if not raw:
        raise fail(source, f"the etcd container has no --{ADVERTISE} or --{LISTEN}")
    urls = tuple(_client_url(u, flag, source) for u in raw.split(",") if u.strip())
    if not urls:
        raise fail(source, f"--{flag} names no URL")
    return EtcdFlags(urls, flag, flags.get(CA) or None, flags.get(CERT) or None, flags.get(KEY_FILE) or None)


def _etcd_argv(containers: list[Any], source: str) -> list[str]:
    """command + args of the container named `etcd`, else of the one whose program is etcd."""
    candidates = [c for c in containers if isinstance(c, Mapping)]
    named = [c for c in candidates if c.get("name") == "etcd"]
    chosen = named or [c for c in candidates if _program(c) == "etcd"]
    if not chosen:
        raise fail(source, "no container named etcd (or running etcd)")
    container = chosen[0]
    argv: list[str] = []
    for field in ("command", "args"):
        value = container.get(field)
        if value is None:
            continue
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise fail(source, f"the etcd container's {field} is not a list of strings")
        argv += value
    if not argv:
        raise fail(source, "the etcd container has no command or args")
    return argv


def _program(container: Mapping[str, Any]) -> str:
    command = container.get("command")
    if isinstance(command, list) and command and isinstance(command[0], str):
        return command[0].rsplit("/", 1)[-1]
    return ""


def _flags(argv: Sequence[str]) -> dict[str, str]:
    """Go flag syntax: -name=value, --name=value, or the value as the next argument; last one wins.

    A non-flag argument with spaces (`sh -c "exec etcd --cert-file=..."`) is split as a shell would.
    """
    tokens: list[str] = []
    for arg in argv:
        if not arg.startswith("-") and any(ch.isspace() for ch in arg.strip()):
            try:
                tokens += shlex.split(arg)
            except ValueError:
                tokens.append(arg)
        else:
            tokens.append(arg.strip())
    out: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if not token.startswith("-") or token in {"-", "--"}:
            continue
        name, eq, value = token.lstrip("-").partition("=")
        if not eq and name in _VALUE_FLAGS and i < len(tokens) and not tokens[i].startswith("-"):
            value = tokens[i]
            i += 1
        if name in _VALUE_FLAGS:
            out[name] = value.strip()
    return out


def _client_url(raw: str, flag: str, source: str) -> str:
    url = raw.strip()
    parsed = urlparse(url)
    if parsed.scheme not in {"http", "https"}:
        raise fail(source, f"--{flag}: {url!r} is not an http:// or https:// URL")
    try:
        port = parsed.port
    except ValueError:
        raise fail(source, f"--{flag}: {url!r} has a bad port") from None
    host = parsed.hostname or ""
    if host in _WILDCARDS:
        netloc = _WILDCARDS[host] + (f":{port}" if port else "")
        return f"{parsed.scheme}://{netloc}"
    return f"{parsed.scheme}://{parsed.netloc}"


def settings(flags: EtcdFlags, source: str, explicit: Collection[str]) -> dict[str, Any]:
    """The `[etcd]` keys the manifest provides, leaving out those set explicitly (they win).

    The client presents the server's own cert and key, as kubeadm's health checks do, unless
    both `cert` and `key` are set. A TLS flag is needed only for a key it has to fill.
    """
    out: dict[str, Any] = {}
    if "endpoints" not in explicit:
        out["endpoints"] = list(flags.client_urls)
    if not flags.tls:
        return out
    if "cacert" not in explicit:
        out["cacert"] = _need(flags.trusted_ca_file, CA, source)
    if "cert" not in explicit and "key" not in explicit:
        out["cert"] = _need(flags.cert_file, CERT, source)
        out["key"] = _need(flags.key_file, KEY_FILE, source)
    return out


def _need(value: str | None, flag: str, source: str) -> str:
    if not value:
        raise fail(source, f"the etcd container has no --{flag}")
    return value
