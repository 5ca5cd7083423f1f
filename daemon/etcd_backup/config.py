"""Typed configuration: TOML file, then `ETCD_BACKUP_<SECTION>__<KEY>` environment overrides.

pydantic checks the types; this module merges the environment over the file (by hand: the rule
is a dozen lines, and pydantic-settings doubled every command's start-up time), and adds the
unit syntax (`30s`, `16MiB`), comma-separated lists, and the checks that need the filesystem or
a clock (TLS files exist, a cron expression fires). Every failure becomes one ConfigError line
naming the key.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlparse

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from . import crypto, kubeadm
from .configfile import DEFAULT_LISTEN, ENV_CONFIG, ENV_PREFIX, resolve_path
from .errors import ConfigError
from .units import parse_duration, parse_size


def _split_list(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


_OFF = {"off", "never", "false", "0"}


def _duration_or_off(value: Any) -> float | None:
    """A duration, or off (`_OFF`, or TOML's false). Empty is an error: an unset variable in a
    template must not switch drills or deltas off unseen."""
    if value is None or value is False or (isinstance(value, str) and value.strip().lower() in _OFF):
        return None
    if isinstance(value, str) and not value.strip():
        raise ValueError('empty: give a duration like "24h", or "off"')
    return parse_duration(value)


Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]
StrList = Annotated[list[str], BeforeValidator(_split_list)]


def _existing_file(key: str, value: str | None) -> str | None:
    if value and not os.path.isfile(value):
        raise ValueError(f"file not found: {value}")
    return value or None


def _require_pem(path: str, want: str) -> None:
    """ValueError unless the file holds a PEM block of `want` ("CERTIFICATE", "PRIVATE KEY")."""
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 20)
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    if b"-----BEGIN " not in head or want.encode() not in head:
        raise ValueError(f"{path} holds no PEM {want.lower()}")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EtcdConfig(_Section):
    endpoints: StrList = Field(default_factory=lambda: ["http://127.0.0.1:2379"], min_length=1)
    cacert: str | None = None
    cert: str | None = None
    key: str | None = None
    username: str | None = None
    password: SecretStr | None = None
    dial_timeout: Duration = 5.0
    # A snapshot stream that delivers nothing for this long is abandoned (frozen member).
    stall_timeout: Duration = 30.0
    # gRPC Python cannot skip certificate verification: `true` is refused (see _no_skip_verify).
    insecure_skip_tls_verify: bool = False
    # A kubeadm static pod manifest: fills endpoints, cacert, cert and key not set explicitly.
    kubeadm_manifest: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _kubeadm(cls, data: Any) -> Any:
        if not isinstance(data, Mapping) or not data.get("kubeadm_manifest"):
            return data
        path = str(data["kubeadm_manifest"])
        explicit = {k for k, v in data.items() if v not in (None, "", [])}
        found = kubeadm.settings(kubeadm.parse(_read_manifest(path), path), path, explicit)
        for key, flag in kubeadm.TLS_FLAGS.items():
            # Named here by the flag that gave it, not only by the key it fills.
            if key in found and not os.path.isfile(found[key]):
                raise kubeadm.fail(path, f"--{flag}={found[key]}: file not found")
        return {**data, **found}

    @field_validator("endpoints")
    @classmethod
    def _endpoints(cls, value: list[str]) -> list[str]:
        for ep in value:
            url = urlparse(ep if "://" in ep else f"http://{ep}")
            if url.scheme not in {"http", "https"} or not url.hostname:
                raise ValueError(f"{ep!r} is not an endpoint like https://10.0.0.1:2379")
            try:
                url.port  # noqa: B018 - raises on a bad port
            except ValueError as exc:
                raise ValueError(f"{ep!r}: {exc}") from None
        return value

    @field_validator("cacert", "cert", "key")
    @classmethod
    def _files(cls, value: str | None, info: ValidationInfo) -> str | None:
        path = _existing_file("", value)
        if path is not None:
            # gRPC would only fail at the first call, with lines of its own on stderr, and a
            # member it cannot talk to looks down to doctor.
            _require_pem(path, "PRIVATE KEY" if info.field_name == "key" else "CERTIFICATE")
        return path

    @field_validator("dial_timeout", "stall_timeout")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be greater than 0")
        return value

    @field_validator("insecure_skip_tls_verify")
    @classmethod
    def _no_skip_verify(cls, value: bool) -> bool:
        # Accepting it and verifying anyway would be a lie; silently not verifying is not possible.
        if value:
            raise ValueError(
                "not supported: etcd's gRPC client always verifies the server certificate; "
                "set etcd.cacert to the CA that signed it"
            )
        return value

    @field_validator("username")
    @classmethod
    def _username(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("empty: give the etcd user name, or leave the key out for no authentication")
        return value

    @model_validator(mode="after")
    def _pairs(self) -> EtcdConfig:
        if bool(self.cert) != bool(self.key):
            raise ValueError("cert and key must be set together")
        if bool(self.username) != bool(self.password and self.password.get_secret_value()):
            raise ValueError("username and password must be set together")
        return self


def _read_manifest(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise kubeadm.fail(path, "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise kubeadm.fail(path, f"cannot read: {getattr(exc, 'strerror', None) or exc}") from None


class StorageConfig(_Section):
    url: str = "file://./etcd-backups"
    endpoint_url: str | None = None
    region: str | None = None
    sse: Literal["AES256", "aws:kms"] | None = None
    kms_key_id: str | None = None
    storage_class: str | None = None
    part_size: Size = 8 * 1024 * 1024
    concurrency: int = Field(default=4, ge=1, le=64)
    compression: Literal["none", "zstd"] = "none"
    compression_level: int = Field(default=3, ge=1, le=22)
    # Where the incoming stream is spooled while it is verified and uploaded.
    spool_dir: str | None = None
    # Connect and read timeout of each S3 request; botocore retries (5 attempts, with backoff).
    timeout: Duration = 60.0
    insecure_skip_tls_verify: bool = False
    # S3-compatible stores: bucket in the path or in the host name; a private CA for https://.
    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    ca_file: str | None = None
    # How each upload proves the stored bytes (storage/s3checksum.py): "md5" for stores that
    # reject or ignore the x-amz-checksum headers. The object's SHA-256 is computed in any case.
    checksum: Literal["sha256", "crc32c", "md5"] = "crc32c"
    # S3 Object Lock on every object written: retain-until = write time + lock_for.
    object_lock: Literal["off", "governance", "compliance"] = "off"
    lock_for: Duration = 14 * 86400.0
    # A second store every committed object is copied to after the primary commit. Its S3
    # endpoint and region default to the primary's; its credentials come from the standard AWS
    # chain too, or from a named profile of the shared AWS config. Every other setting is shared.
    copy_to: str | None = None
    copy_endpoint_url: str | None = None
    copy_region: str | None = None
    copy_profile: str | None = None

    @field_validator("copy_to", "copy_endpoint_url", "copy_region", "copy_profile", mode="before")
    @classmethod
    def _unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("url", "copy_to")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        url = urlparse(value)
        if url.scheme == "s3":
            if not url.netloc:
                raise ValueError(f"{value!r} names no bucket (expected s3://bucket/prefix)")
        elif url.scheme == "file":
            if not (url.netloc + url.path):
                raise ValueError(f"{value!r} names no directory (expected file:///path)")
        else:
            raise ValueError(f"{value!r}: scheme must be s3:// or file://")
        return value

    @field_validator("endpoint_url", "copy_endpoint_url")
    @classmethod
    def _endpoint_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        url = urlparse(value.strip())
        try:
            port_ok = url.port is None or url.port > 0
        except ValueError:
            port_ok = False
        if url.scheme not in {"http", "https"} or not url.hostname or not port_ok:
            raise ValueError(f"{value!r} is not an S3 endpoint like https://s3.example.com or http://127.0.0.1:9000")
        return value.strip()

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be greater than 0")
        return value

    @field_validator("part_size")
    @classmethod
    def _part_size(cls, value: int) -> int:
        if not 5 * 1024 * 1024 <= value <= 5 * 1024**3:
            raise ValueError("must be between 5MiB and 5GiB (S3 multipart limits)")
        return value

    @field_validator("ca_file")
    @classmethod
    def _ca_file(cls, value: str | None) -> str | None:
        path = _existing_file("", value)
        if path is not None:
            _require_pem(path, "CERTIFICATE")  # else a handshake error at the first request (exit 1)
        return path

    @model_validator(mode="after")
    def _kms(self) -> StorageConfig:
        if self.kms_key_id and self.sse != "aws:kms":
            raise ValueError('kms_key_id needs sse = "aws:kms"')
        if self.object_lock != "off" and self.scheme != "s3":
            raise ValueError(f"object_lock = {self.object_lock!r} needs an s3:// store with Object Lock enabled")
        if self.object_lock != "off" and self.lock_for < 1:
            raise ValueError("lock_for must be at least 1s when object_lock is on")
        if self.ca_file and self.insecure_skip_tls_verify:
            raise ValueError("ca_file and insecure_skip_tls_verify contradict each other: set one")
        if not self.copy_to:
            unused = [k for k in ("copy_endpoint_url", "copy_region", "copy_profile") if getattr(self, k)]
            if unused:
                raise ValueError(f"{unused[0]} is set but copy_to is not")
        elif _overlap(self.url, self.endpoint_url, self.copy_to, self.copy_endpoint_url or self.endpoint_url):
            raise ValueError(
                f"copy_to {self.copy_to!r} overlaps url {self.url!r}: the second copy needs a place of its own "
                "(another bucket, prefix or directory, neither inside the other)"
            )
        return self

    @property
    def scheme(self) -> str:
        return urlparse(self.url).scheme

    def copy_storage(self) -> StorageConfig | None:
        """The second store's settings (`copy_to` as its url), or None without one."""
        if not self.copy_to:
            return None
        return self.model_copy(
            update={
                "url": self.copy_to,
                "endpoint_url": self.copy_endpoint_url or self.endpoint_url,
                "region": self.copy_region or self.region,
                "copy_to": None,
                "copy_endpoint_url": None,
                "copy_region": None,
                "copy_profile": None,
            }
        )


def _overlap(url: str, endpoint: str | None, other: str, other_endpoint: str | None) -> bool:
    """Whether two store locations are the same or one lies inside the other."""
    a, b = urlparse(url), urlparse(other)
    if a.scheme != b.scheme:
        return False
    if a.scheme == "s3":
        if a.netloc != b.netloc or (endpoint or "") != (other_endpoint or ""):
            return False
        first, second = a.path.strip("/"), b.path.strip("/")
    else:
        first = str(Path(unquote(a.netloc + a.path)).resolve()).rstrip("/")
        second = str(Path(unquote(b.netloc + b.path)).resolve()).rstrip("/")
    if not first or not second or first == second:
        return True
    return first.startswith(second + "/") or second.startswith(first + "/")


class ScheduleConfig(_Section):
    interval: Duration = 30 * 60.0
    cron: str | None = None
    on_member_change: bool = True
    jitter: Duration = 0.0
    # "single": this copy always snapshots (one copy pointed at all members).
    # "sidecar": one copy per member; only the copy beside the raft leader snapshots and prunes.
    mode: Literal["single", "sidecar"] = "single"

    @field_validator("interval")
    @classmethod
    def _interval(cls, value: float) -> float:
        if value < 1:
            raise ValueError("must be at least 1s")
        return value

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        from apscheduler.triggers.cron import CronTrigger

        try:
            trigger = CronTrigger.from_crontab(value, timezone="UTC")
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a cron expression: {exc}") from None
        if trigger.get_next_fire_time(None, datetime.now(UTC)) is None:
            raise ValueError(f"{value!r} never fires")
        return value

    @model_validator(mode="after")
    def _jitter(self) -> ScheduleConfig:
        # A delay as long as the period would let two runs swap places, and the newest snapshot
        # look overdue to /readyz (two periods) while nothing is wrong.
        if self.jitter < 0:
            raise ValueError("jitter must not be negative")
        if self.jitter and self.jitter >= self.period():
            raise ValueError(f"jitter {self.jitter:g}s must be shorter than the schedule's period ({self.period():g}s)")
        return self

    def period(self) -> float:
        """Seconds between two scheduled runs (for cron: the gap after the next run)."""
        if not self.cron:
            return self.interval
        from apscheduler.triggers.cron import CronTrigger

        trigger = CronTrigger.from_crontab(self.cron, timezone="UTC")
        first = trigger.get_next_fire_time(None, datetime.now(UTC))
        second = trigger.get_next_fire_time(first, first) if first else None
        if first is None or second is None or second <= first:
            return self.interval
        return float((second - first).total_seconds())


class RetentionConfig(_Section):
    keep_last: int = Field(default=10, ge=1, le=100_000)
    hourly: int = Field(default=24, ge=0, le=100_000)
    daily: int = Field(default=7, ge=0, le=100_000)
    weekly: int = Field(default=4, ge=0, le=100_000)
    monthly: int = Field(default=12, ge=0, le=100_000)
    keep_pinned_for: Duration = 30 * 86400.0
    # Data objects without a manifest and unfinished multipart uploads older than this are debris.
    debris_age: Duration = 86400.0


class VerifyConfig(_Section):
    restore_drill: Annotated[float | None, BeforeValidator(_duration_or_off)] = 86400.0

    @field_validator("restore_drill")
    @classmethod
    def _restore_drill(cls, value: float | None) -> float | None:
        if value is not None and value < 1:
            raise ValueError('must be at least 1s (or "off")')
        return value


class DeltaConfig(_Section):
    # How often the changes the watch saw are stored as a delta; "off": no deltas (run only).
    interval: Annotated[float | None, BeforeValidator(_duration_or_off)] = 10.0
    # A delta is stored early once this much is buffered: the writer's memory bound.
    max_buffer: Size = 16 * 1024 * 1024

    @field_validator("interval")
    @classmethod
    def _interval(cls, value: float | None) -> float | None:
        if value is not None and value < 0.1:
            raise ValueError("must be at least 100ms (or off)")
        return value

    @field_validator("max_buffer")
    @classmethod
    def _max_buffer(cls, value: int) -> int:
        if not 64 * 1024 <= value <= 1024**3:
            raise ValueError("must be between 64KiB and 1GiB")
        return value


class ToolsConfig(_Section):
    etcdutl: str = ""
    etcd: str = ""

    @field_validator("etcdutl", "etcd")
    @classmethod
    def _tool(cls, value: str) -> str:
        # A path must be there; a bare name is looked up on PATH when the tool is needed (a
        # backup-only host has no etcdutl, and `list` must still work there).
        if os.sep in value and not (os.path.isfile(value) and os.access(value, os.X_OK)):
            raise ValueError(f"{value}: no executable file there")
        return value


class RestoreConfig(_Section):
    # Where a member's data dir lives on its host (kubeadm's and the distribution packages' default);
    # "{name}" is replaced by the member name, for hosts that run several members.
    data_dir: str = "/var/lib/etcd"

    @field_validator("data_dir")
    @classmethod
    def _data_dir(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        if any(c in value for c in "<>\n\r\t") or "{" in value.replace("{name}", ""):
            raise ValueError(f"{value!r} is not a directory path (only {{name}} may be substituted)")
        return value


class ServerConfig(_Section):
    listen: str = DEFAULT_LISTEN
    token_file: str | None = None

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"{value!r} is not HOST:PORT")
        return value

    @field_validator("token_file")
    @classmethod
    def _token(cls, value: str | None) -> str | None:
        return _existing_file("", value)

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


class EncryptionConfig(_Section):
    """Client-side age encryption of every data object (see crypto.py).

    Recipients (public keys) encrypt new objects; the identity file (private keys) opens them.
    Without explicit recipients, new objects are encrypted to the identity file's own keys.
    """

    recipients: StrList = Field(default_factory=list)
    recipients_file: str | None = None
    identity_file: str | None = None
    _recipients: tuple[str, ...] = PrivateAttr(default=())

    @field_validator("recipients")
    @classmethod
    def _recipients_valid(cls, value: list[str]) -> list[str]:
        return list(crypto.parse_recipients(value))

    @field_validator("recipients_file")
    @classmethod
    def _recipients_file(cls, value: str | None) -> str | None:
        if value:
            crypto.read_recipients_file(_not_a_key(value))
        return value or None

    @field_validator("identity_file")
    @classmethod
    def _identity_file(cls, value: str | None) -> str | None:
        if value:
            crypto.load_identities(_not_a_key(value))
        return value or None

    @model_validator(mode="after")
    def _effective(self) -> EncryptionConfig:
        if self.recipients and self.recipients_file:
            raise ValueError("set recipients or recipients_file, not both")
        given = self.model_fields_set & {"recipients", "recipients_file"}
        if given and not (self.recipients or self.recipients_file or self.identity_file):
            # An empty value (a template or variable that expanded to nothing) must not quietly
            # store every Secret in plaintext: encryption is off only when no key is given.
            name = sorted(given)[0]
            raise ValueError(
                f"{name} is empty: name at least one age recipient, or leave the key out to store unencrypted"
            )
        if self.recipients:
            self._recipients = tuple(self.recipients)
        elif self.recipients_file:
            self._recipients = crypto.read_recipients_file(self.recipients_file)
        elif self.identity_file:
            self._recipients = crypto.load_identities(self.identity_file).recipients
        return self

    @property
    def enabled(self) -> bool:
        """Whether new data objects are encrypted."""
        return bool(self._recipients)

    @property
    def recipient_list(self) -> tuple[str, ...]:
        """The public keys new data objects are encrypted to (empty: encryption off)."""
        return self._recipients

    def identities(self) -> crypto.Identities | None:
        """The private keys of identity_file (read now), or None when none is configured."""
        if not self.identity_file:
            return None
        try:
            return crypto.load_identities(self.identity_file)
        except ValueError as exc:
            raise ConfigError(f"encryption.identity_file: {exc}") from None


def _not_a_key(value: str) -> str:
    """A key pasted where a path belongs must not be echoed in a 'file not found' error."""
    if crypto.SECRET_KEY_RE.search(value):
        raise ValueError("expected the path of a key file, not a private key")
    return value


class FilesConfig(_Section):
    """Control-plane files (kubeadm's pki, the API server's EncryptionConfiguration) archived with
    every full snapshot. They hold private keys: refused in plain unless explicitly allowed."""

    paths: StrList = Field(default_factory=list)
    allow_unencrypted: bool = False

    @field_validator("paths")
    @classmethod
    def _paths(cls, value: list[str]) -> list[str]:
        out: list[str] = []
        for raw in value:
            if "\0" in raw or not raw.strip():
                raise ValueError(f"{raw!r} is not a path")
            # Absolute and normalised: the daemon's working directory is nobody's business, and
            # the archive names files by their place below /.
            path = os.path.abspath(raw)
            if path == "/":
                raise ValueError("'/' is the whole filesystem: name the directories and files to archive")
            if path not in out:
                out.append(path)
        return out


class LogConfig(_Section):
    format: Literal["json", "console"] = "json"
    level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    etcd: EtcdConfig = Field(default_factory=EtcdConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    verify: VerifyConfig = Field(default_factory=VerifyConfig)
    delta: DeltaConfig = Field(default_factory=DeltaConfig)
    tools: ToolsConfig = Field(default_factory=ToolsConfig)
    restore: RestoreConfig = Field(default_factory=RestoreConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    encryption: EncryptionConfig = Field(default_factory=EncryptionConfig)
    files: FilesConfig = Field(default_factory=FilesConfig)
    log: LogConfig = Field(default_factory=LogConfig)


# What Kubernetes puts into every pod of a namespace with a Service named etcd-backup (service
# links are on by default): ETCD_BACKUP_SERVICE_HOST, ETCD_BACKUP_PORT_9479_TCP_ADDR, ...
_SERVICE_LINK = re.compile(
    re.escape(ENV_PREFIX) + r"(SERVICE_HOST|SERVICE_PORT(_\w+)?|PORT(_\d+_(TCP|UDP|SCTP)(_PROTO|_PORT|_ADDR)?)?)"
)


def _check_env_names(environ: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """The overrides in `environ` by section and key; a misspelt one is an error, never ignored."""
    sections = Config.model_fields
    out: dict[str, dict[str, str]] = {}
    for name, value in environ.items():
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper == ENV_CONFIG or _SERVICE_LINK.fullmatch(upper):
            continue
        rest = upper[len(ENV_PREFIX) :].lower()
        section, sep, key = rest.partition("__")
        if not sep or section not in sections:
            raise ConfigError(f"{name}: unknown setting (expected {ENV_PREFIX}<SECTION>__<KEY>)")
        model = sections[section].annotation
        if key not in model.model_fields:  # type: ignore[union-attr]
            raise ConfigError(f"{name}: unknown setting {section}.{key}")
        out.setdefault(section, {})[key] = value
    return out


def _merged(data: dict[str, Any], overrides: dict[str, dict[str, str]], origin: str) -> dict[str, Any]:
    """The file's sections with the environment's keys on top."""
    merged = dict(data)
    for section, values in overrides.items():
        current = merged.get(section, {})
        if not isinstance(current, dict):
            raise ConfigError(f"configuration error in {origin}: {section}: must be a table")
        merged[section] = {**current, **values}
    return merged


def _origin(
    loc: tuple[Any, ...], overrides: dict[str, dict[str, str]], origin: str, in_file: Mapping[str, Any] | None = None
) -> str:
    """Where the value an error names came from: its environment variable, or the file. An error
    of a whole section (keys that contradict each other) names the section's variables, and the
    file too when it sets keys of that section (`in_file`: what the file holds)."""
    if len(loc) >= 2 and str(loc[1]) in overrides.get(str(loc[0]), {}):
        return _variable(str(loc[0]), str(loc[1]))
    if len(loc) == 1 and (keys := overrides.get(str(loc[0]))):
        variables = ", ".join(_variable(str(loc[0]), k) for k in sorted(keys))
        return f"{origin} and {variables}" if (in_file or {}).get(str(loc[0])) else variables
    return origin


def _variable(section: str, key: str) -> str:
    return f"{ENV_PREFIX}{section.upper()}__{key.upper()}"


def _strict_types(data: dict[str, Any], overrides: dict[str, dict[str, str]], origin: str) -> str | None:
    """Why a TOML value has the wrong type (`keep_last = true` is not 1), or None. Environment
    values are text by nature and are converted; only the file's own values are held to this."""
    try:
        Config.model_validate(data, strict=True)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            if err["type"].endswith("_type") and _origin(tuple(err["loc"]), overrides, origin) == origin:
                return _format_error(exc, origin, err=err)
    except (ValueError, TypeError):
        pass  # the validation proper reports it
    return None


def _format_error(
    exc: ValidationError,
    origin: str,
    overrides: dict[str, dict[str, str]] | None = None,
    *,
    err: Any = None,
    in_file: Mapping[str, Any] | None = None,
) -> str:
    err = err if err is not None else exc.errors(include_url=False)[0]
    origin = _origin(tuple(err["loc"]), overrides or {}, origin, in_file)
    loc = ".".join(str(p) for p in err["loc"] if not isinstance(p, int)) or "config"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    elif err["type"] == "missing":
        msg = "required"
    # A value quoted in the message may hold line breaks: the error stays one line.
    return f"configuration error in {origin}: {loc}: {msg}".replace("\r", "\\r").replace("\n", "\\n")


def load(cli_path: str | None = None) -> Config:
    """Load and validate the configuration; raise ConfigError with one line on any problem."""
    path = resolve_path(cli_path)
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    overrides = _check_env_names(os.environ)
    origin = str(path) if path else "environment"
    try:
        wrong_type = _strict_types(data, overrides, origin)
        if wrong_type:
            raise ConfigError(wrong_type)
        cfg = Config(**_merged(data, overrides, origin))
    except ConfigError as exc:  # raised inside a validator (kubeadm discovery): masked all the same
        text = str(exc)
        generic = f"configuration error: {kubeadm.KEY}"
        if "kubeadm_manifest" in overrides.get("etcd", {}) and text.startswith(generic):
            named = text.removeprefix("configuration error: ")
            text = f"configuration error in {ENV_PREFIX}ETCD__KUBEADM_MANIFEST: {named}"
        raise ConfigError(_without_secrets(text, data)) from None
    except ValidationError as exc:
        raise ConfigError(_without_secrets(_format_error(exc, origin, overrides, in_file=data), data)) from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(_without_secrets(f"configuration error in {origin}: {exc}".splitlines()[0], data)) from None
    problem = files_unprotected(cfg)
    if problem:
        raise ConfigError(f"configuration error in {origin}: {problem}")
    return cfg


def files_unprotected(cfg: Config) -> str | None:
    """Why the configured control-plane files may not be stored (None: they may)."""
    if cfg.files.paths and not cfg.encryption.enabled and not cfg.files.allow_unencrypted:
        return (
            "files.paths: control-plane files hold private keys and [encryption] is off: "
            "set encryption.recipients (or identity_file), or files.allow_unencrypted = true"
        )
    return None


def _without_secrets(message: str, data: dict[str, Any]) -> str:
    """Error messages quote bad values; a secret pasted into the wrong key must not be echoed."""
    values = [
        v
        for k, v in os.environ.items()
        if k.upper() in {f"{ENV_PREFIX}ETCD__PASSWORD", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}
    ]
    etcd = data.get("etcd")
    if isinstance(etcd, dict) and isinstance(etcd.get("password"), str):
        values.append(etcd["password"])
    server = data.get("server")
    token_file = os.environ.get(f"{ENV_PREFIX}SERVER__TOKEN_FILE") or (
        server.get("token_file") if isinstance(server, dict) else None
    )
    if isinstance(token_file, str) and token_file:
        # ValueError: a path no file can have (a NUL byte); UnicodeDecodeError is one.
        with contextlib.suppress(OSError, ValueError):
            values.append(Path(token_file).read_text().strip())  # the bearer token itself
    return crypto.mask(message, values)


def token(server: ServerConfig) -> str | None:
    """The bearer token for POST endpoints, read from server.token_file (trailing newline ignored)."""
    if not server.token_file:
        return None
    try:
        value = Path(server.token_file).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"server.token_file: cannot read {server.token_file}: {exc.strerror}") from None
    if not value:
        raise ConfigError(f"server.token_file: {server.token_file} is empty")
    return value
