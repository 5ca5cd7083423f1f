"""Shared helpers of the fault tests: filling etcd, CLI environments, checking a failure is clean."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from conftest import AWS_ENV, Bucket, Cluster, TLSFiles, config_env
from faultproxy import FaultProxy

MiB = 1024 * 1024


def host_port(url: str) -> tuple[str, int]:
    u = urlparse(url)
    return u.hostname or "127.0.0.1", u.port or 80


def fill(cluster: Cluster, mib: int, endpoint: str | None = None, prefix: str = "/fill/") -> None:
    """Write `mib` values of 1 MiB each (incompressible), so the db is at least that large."""
    import etcd3

    host, port = host_port(endpoint or cluster.endpoints[0])
    client = etcd3.client(host, port, timeout=30)
    try:
        for i in range(mib):
            client.put(f"{prefix}{i:04d}", os.urandom(MiB - 1024))
    finally:
        client.close()


def s3_env(
    cluster: Cluster | None, bucket: Bucket, spool: Path, endpoint_url: str | None = None, **settings: str
) -> dict[str, str]:
    """CLI environment: etcd of `cluster`, the bucket (optionally through a proxy), a private spool."""
    env = {**config_env(cluster), **bucket.env(), "ETCD_BACKUP_STORAGE__SPOOL_DIR": str(spool)}
    if endpoint_url:
        env["ETCD_BACKUP_STORAGE__ENDPOINT_URL"] = endpoint_url
    for k, v in settings.items():
        env[f"ETCD_BACKUP_{k.upper()}"] = v
    return env


def s3_proxy(bucket: Bucket) -> FaultProxy:
    return FaultProxy(host_port(bucket.server.endpoint), http=True)


def popen_cli(*args: str, env: dict[str, str], umask: int | None = None) -> subprocess.Popen[str]:
    """`etcd-backup ARGS` in the background (a fresh process), optionally with a umask."""
    return subprocess.Popen(
        [sys.executable, "-m", "etcd_backup", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        umask=-1 if umask is None else umask,
    )


def error_lines(stderr: str) -> list[str]:
    """The CLI's own error lines (log records are JSON lines on stderr too)."""
    return [line for line in stderr.splitlines() if line.startswith("etcd-backup:")]


def assert_clean_failure(code: int, stderr: str, expected: int, *words: str) -> str:
    """Exit code as expected, exactly one error line, it is the last line, no traceback."""
    assert code == expected, f"exit {code}, expected {expected}: {stderr[-2000:]}"
    assert "Traceback" not in stderr, stderr
    errors = error_lines(stderr)
    assert len(errors) == 1, stderr
    print("error line:", errors[0])  # shown with -rP, and for a failing test
    assert stderr.strip().splitlines()[-1] == errors[0]
    for w in words:
        assert w.lower() in errors[0].lower(), errors[0]
    return errors[0]


def assert_no_secrets(*texts: str | bytes) -> None:
    for text in texts:
        blob = text.decode(errors="replace") if isinstance(text, bytes) else text
        assert AWS_ENV["AWS_SECRET_ACCESS_KEY"] not in blob


def wait_for(what: str, cond: Callable[[], Any], timeout: float = 60.0, every: float = 0.05) -> Any:
    """Poll `cond` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def spool_files(spool: Path) -> list[Path]:
    return sorted(p for p in spool.iterdir()) if spool.exists() else []


def make_tls(base: Path) -> tuple[TLSFiles, str, str]:
    """A CA, server and client certificates (as conftest's TLSFiles), plus an expired client
    certificate and its key signed by the same CA."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)
    base.mkdir(parents=True, exist_ok=True)

    def write_key(k: ec.EllipticCurvePrivateKey, name: str) -> str:
        (base / name).write_bytes(
            k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
        return str(base / name)

    def write_cert(c: x509.Certificate, name: str) -> str:
        (base / name).write_bytes(c.public_bytes(serialization.Encoding.PEM))
        return str(base / name)

    def build(
        cn: str,
        key: ec.EllipticCurvePrivateKey,
        issuer: x509.Name | None,
        signer: ec.EllipticCurvePrivateKey,
        *,
        start: dt.datetime,
        end: dt.datetime,
        usage: list[x509.ObjectIdentifier] | None,
    ) -> x509.Certificate:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        b = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(issuer or name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
        )
        if usage is None:
            b = b.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        else:
            b = b.add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
                ),
                critical=False,
            )
            b = b.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        return b.sign(signer, hashes.SHA256())

    hour, day = dt.timedelta(hours=1), dt.timedelta(days=1)
    ca_key, other_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = build("faults-ca", ca_key, None, ca_key, start=now - hour, end=now + day, usage=None)
    other = build("other-ca", other_key, None, other_key, start=now - hour, end=now + day, usage=None)
    keys = {n: ec.generate_private_key(ec.SECP256R1()) for n in ("server", "client", "expired")}
    server = build(
        "etcd",
        keys["server"],
        ca.subject,
        ca_key,
        start=now - hour,
        end=now + day,
        usage=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
    )
    client = build(
        "backup",
        keys["client"],
        ca.subject,
        ca_key,
        start=now - hour,
        end=now + day,
        usage=[ExtendedKeyUsageOID.CLIENT_AUTH],
    )
    expired = build(
        "backup",
        keys["expired"],
        ca.subject,
        ca_key,
        start=now - 3 * day,
        end=now - day,
        usage=[ExtendedKeyUsageOID.CLIENT_AUTH],
    )
    files = TLSFiles(
        ca=write_cert(ca, "ca.crt"),
        server_cert=write_cert(server, "server.crt"),
        server_key=write_key(keys["server"], "server.key"),
        client_cert=write_cert(client, "client.crt"),
        client_key=write_key(keys["client"], "client.key"),
        other_ca=write_cert(other, "other-ca.crt"),
    )
    return files, write_cert(expired, "expired.crt"), write_key(keys["expired"], "expired.key")
