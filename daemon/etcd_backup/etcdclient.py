"""etcd access through python3-etcd3's gRPC stubs, one connection per endpoint.

We talk to each member separately (never through a load-balanced channel) because a snapshot,
a status or a member list must come from a known member. gRPC errors become project errors here.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlparse

import grpc
import grpc.experimental
import structlog

from .config import EtcdConfig
from .errors import ConfigError, EtcdErrorKind, EtcdUnavailable

T = TypeVar("T")
log = structlog.get_logger(__name__)

# Keepalive pings detect a frozen (SIGSTOPped) member whose TCP socket still looks open.
_CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.enable_retries", 0),
    # Snapshot is our only unary-stream call: read its messages on the calling thread instead of
    # handing each one over from gRPC's polling thread (a third less CPU per snapshot byte).
    (grpc.experimental.ChannelOptions.SingleThreadedUnaryStream, 1),
    # A fixed 2 MiB HTTP/2 window instead of one grown by bandwidth probes: what etcd may send
    # ahead of our reads is buffered in our memory, and the polling client (cli.main) reads it
    # only when this thread asks. Grown windows let an encrypted 1 GiB snapshot's RSS jump to
    # 164 MiB in one run of four; with 2 MiB it stayed at 107-114 MiB, as fast.
    ("grpc.http2.bdp_probe", 0),
    ("grpc.http2.lookahead_bytes", 2 * 1024 * 1024),
]


def hexid(value: int) -> str:
    return format(value, "x")


@dataclass(frozen=True, slots=True)
class MemberStatus:
    endpoint: str
    member_id: int
    cluster_id: int
    version: str
    db_size: int
    db_size_in_use: int
    leader: int
    raft_index: int
    raft_term: int
    is_learner: bool
    errors: tuple[str, ...]
    revision: int

    @property
    def is_leader(self) -> bool:
        return self.member_id == self.leader and self.leader != 0


@dataclass(frozen=True, slots=True)
class MemberInfo:
    id: int
    name: str
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...]
    is_learner: bool = False

    @property
    def started(self) -> bool:
        # etcd lists a member that was added but never joined with an empty name and no client URLs.
        return bool(self.name)


@dataclass(frozen=True, slots=True)
class KeyValue:
    """A key as etcd keeps it (mvccpb.KeyValue); `lease` 0 means none."""

    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int


@dataclass(frozen=True, slots=True)
class Event:
    """One change seen by a watch: a put (kv holds the new value) or a delete (kv holds the key
    and the revision of its deletion)."""

    deleted: bool
    kv: KeyValue


@dataclass(frozen=True, slots=True)
class WatchBatch:
    """One watch response: `revision` is etcd's current revision when it was sent; a progress
    notification has no events."""

    revision: int
    events: tuple[Event, ...]


class Compacted(EtcdUnavailable):
    """The watch (or read) asked for revisions etcd has compacted away."""

    def __init__(self, message: str, compact_revision: int) -> None:
        super().__init__(message, EtcdErrorKind.COMPACTED)
        self.compact_revision = compact_revision


def _kv(m: Any) -> KeyValue:
    return KeyValue(bytes(m.key), bytes(m.value), m.create_revision, m.mod_revision, m.version, m.lease)


@dataclass(frozen=True, slots=True)
class Alarm:
    member_id: int
    alarm: str


def _endpoint_parts(endpoint: str) -> tuple[str, int, bool]:
    """(host as a gRPC target names it, port, TLS): an IPv6 literal keeps its brackets, which
    urlparse drops and `host:port` needs ("::1:2379" is no address)."""
    url = urlparse(endpoint if "://" in endpoint else f"http://{endpoint}")
    host = url.hostname or "127.0.0.1"
    return f"[{host}]" if ":" in host else host, url.port or 2379, url.scheme == "https"


def _describe(exc: grpc.RpcError) -> str:
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    name = code.name if code is not None else "ERROR"
    return f"{name}: {(details or '').splitlines()[0] if details else ''}".rstrip(": ")


# etcd names its errors by their text (its own client maps them the same way, rpctypes.Error):
# this table and _kind are the only places that read it.
_ETCD_ERRORS = {
    "etcdserver: mvcc: required revision has been compacted": EtcdErrorKind.COMPACTED,
    "etcdserver: mvcc: required revision is a future revision": EtcdErrorKind.FUTURE_REVISION,
    "etcdserver: mvcc: database space exceeded": EtcdErrorKind.NO_SPACE,
    "etcdserver: no leader": EtcdErrorKind.NO_LEADER,
    "etcdserver: not leader": EtcdErrorKind.NOT_LEADER,
    "etcdserver: leader changed": EtcdErrorKind.LEADER_CHANGED,
    "etcdserver: unhealthy cluster": EtcdErrorKind.UNHEALTHY,
    "etcdserver: re-configuration failed due to not enough started members": EtcdErrorKind.TOO_SOON,
    "etcdserver: too many requests": EtcdErrorKind.TOO_SOON,
    "etcdserver: request timed out": EtcdErrorKind.TIMEOUT,
    "etcdserver: request timed out, possibly due to previous leader failure": EtcdErrorKind.TIMEOUT,
    "etcdserver: request timed out, possibly due to connection lost": EtcdErrorKind.TIMEOUT,
    "etcdserver: server stopped": EtcdErrorKind.UNAVAILABLE,
    "etcdserver: member not found": EtcdErrorKind.MEMBER_NOT_FOUND,
    "etcdserver: Peer URLs already exists": EtcdErrorKind.MEMBER_EXISTS,
    "etcdserver: member ID already exist": EtcdErrorKind.MEMBER_EXISTS,
    "etcdserver: permission denied": EtcdErrorKind.AUTH,
    "etcdserver: invalid auth token": EtcdErrorKind.AUTH,
    "etcdserver: authentication failed, invalid user ID or password": EtcdErrorKind.AUTH,
    "etcdserver: authentication is not enabled": EtcdErrorKind.AUTH_OFF,
    "etcdserver: given member URLs are invalid": EtcdErrorKind.INVALID,
    "etcdserver: lease already exists": EtcdErrorKind.LEASE_EXISTS,
    "etcdserver: requested lease not found": EtcdErrorKind.LEASE_NOT_FOUND,
}
_BY_CODE = {
    grpc.StatusCode.UNAVAILABLE: EtcdErrorKind.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: EtcdErrorKind.TIMEOUT,
    grpc.StatusCode.UNAUTHENTICATED: EtcdErrorKind.AUTH,
    grpc.StatusCode.PERMISSION_DENIED: EtcdErrorKind.AUTH,
    grpc.StatusCode.INVALID_ARGUMENT: EtcdErrorKind.INVALID,
    grpc.StatusCode.RESOURCE_EXHAUSTED: EtcdErrorKind.NO_SPACE,
}


def _kind(exc: grpc.RpcError) -> tuple[EtcdErrorKind, str | None]:
    code = exc.code() if hasattr(exc, "code") else None
    details = (exc.details() if hasattr(exc, "details") else "") or ""
    kind = _ETCD_ERRORS.get(details.strip())
    if kind is None:
        kind = _BY_CODE.get(code, EtcdErrorKind.UNKNOWN) if code is not None else EtcdErrorKind.UNKNOWN
    return kind, code.name if code is not None else None


def rpc_error(what: str, exc: grpc.RpcError) -> EtcdUnavailable:
    """A gRPC failure as the project's error, carrying etcd's error kind and the status code."""
    kind, code = _kind(exc)
    text = _describe(exc)
    if "handshake" in text.lower():
        if "CERTIFICATE" in text.upper():  # refused, not cut short: gRPC reports both UNAVAILABLE
            kind = EtcdErrorKind.TLS
        text += " (check etcd.cacert, etcd.cert and etcd.key: wrong CA, expired or mismatched certificate?)"
    return EtcdUnavailable(f"{what} failed: {text}", kind, code)


def _newer_fields(msg: Any, number: int) -> list[Any]:
    """Values of field `number` that python3-etcd3's protos (older than etcd 3.4) do not declare:
    protobuf keeps them as unknown fields. Varints come back as int, strings as bytes."""
    from google.protobuf.unknown_fields import UnknownFieldSet

    return [f.data for f in UnknownFieldSet(msg) if f.field_number == number]


def _newer_field(msg: Any, number: int, default: Any) -> Any:
    values = _newer_fields(msg, number)
    return values[-1] if values else default


class Member:
    """A connection to one endpoint."""

    def __init__(self, cfg: EtcdConfig, endpoint: str) -> None:
        import etcd3
        from etcd3 import etcdrpc
        from etcd3.client import Endpoint, MultiEndpointEtcd3Client

        self._rpc = etcdrpc
        self.endpoint = endpoint
        self.timeout = cfg.dial_timeout
        self.stall_timeout = cfg.stall_timeout
        host, port, secure = _endpoint_parts(endpoint)
        creds = None
        options = list(_CHANNEL_OPTIONS)
        if secure:
            # Always verified: config refuses etcd.insecure_skip_tls_verify (gRPC cannot honour it).
            creds = _credentials(cfg)
        ep = Endpoint(host, port, secure=secure, creds=creds, opts=options)
        password = cfg.password.get_secret_value() if cfg.password else None
        try:
            self.client = MultiEndpointEtcd3Client(
                endpoints=[ep], timeout=self.timeout, user=cfg.username, password=password
            )
        except grpc.RpcError as exc:
            ep.close()
            kind, code = _kind(exc)
            # The login is the first call: a member that is down fails it without judging the password.
            what = (
                "cannot connect"
                if kind in (EtcdErrorKind.UNAVAILABLE, EtcdErrorKind.TIMEOUT)
                else "authentication failed"
            )
            raise EtcdUnavailable(
                f"etcd {endpoint}: {what}: {_describe(exc)}",
                EtcdErrorKind.AUTH if kind is EtcdErrorKind.UNKNOWN else kind,
                code,
            ) from None
        except etcd3.exceptions.Etcd3Exception as exc:
            ep.close()
            raise EtcdUnavailable(f"etcd {endpoint}: {type(exc).__name__}", EtcdErrorKind.UNAVAILABLE) from None
        if password and not secure:
            # gRPC refuses call credentials on a plaintext channel ("insufficient security level");
            # the token also travels as plain metadata, which is what etcdctl does over http://.
            self.client.call_credentials = None
            _warn_plaintext_auth(endpoint)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Member:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except grpc.RpcError as exc:
            raise rpc_error(f"etcd {self.endpoint}: {what}", exc) from None

    def _kw(self, timeout: float | None = None) -> dict[str, Any]:
        return {
            "timeout": timeout or self.timeout,
            "credentials": self.client.call_credentials,
            "metadata": self.client.metadata,
        }

    def status(self) -> MemberStatus:
        r = self._call("status", lambda: self.client.maintenancestub.Status(self._rpc.StatusRequest(), **self._kw()))
        return MemberStatus(
            endpoint=self.endpoint,
            member_id=r.header.member_id,
            cluster_id=r.header.cluster_id,
            version=r.version,
            db_size=r.dbSize,
            db_size_in_use=int(_newer_field(r, 9, 0)),
            leader=r.leader,
            raft_index=r.raftIndex,
            raft_term=r.raftTerm,
            is_learner=bool(_newer_field(r, 10, 0)),
            errors=tuple(bytes(e).decode(errors="replace") for e in _newer_fields(r, 8)),
            revision=r.header.revision,
        )

    def members(self) -> list[MemberInfo]:
        r = self._call(
            "member list",
            lambda: self.client.clusterstub.MemberList(self._rpc.MemberListRequest(), **self._kw()),
        )
        return [
            MemberInfo(m.ID, m.name, tuple(m.peerURLs), tuple(m.clientURLs), bool(_newer_field(m, 5, 0)))
            for m in r.members
        ]

    def alarms(self) -> list[Alarm]:
        req = self._rpc.AlarmRequest(action=self._rpc.AlarmRequest.GET, memberID=0, alarm=self._rpc.NONE)
        r = self._call("alarm list", lambda: self.client.maintenancestub.Alarm(req, **self._kw()))
        # python3-etcd3's stubs predate CORRUPT (2); etcd sends it all the same.
        names = {self._rpc.NOSPACE: "NOSPACE", getattr(self._rpc, "CORRUPT", 2): "CORRUPT"}
        return [Alarm(a.memberID, names.get(a.alarm, str(a.alarm))) for a in r.alarms]

    def count_keys(self, revision: int = 0) -> int:
        """Live keys at `revision` (0: now), answered by this member alone (serializable)."""
        req = self._rpc.RangeRequest(key=b"\0", range_end=b"\0", count_only=True, revision=revision, serializable=True)
        r = self._call("key count", lambda: self.client.kvstub.Range(req, **self._kw(30.0)))
        return int(r.count)

    def add_member(self, peer_urls: list[str], *, learner: bool = False) -> MemberInfo:
        req = self._rpc.MemberAddRequest(peerURLs=peer_urls)
        if learner:
            req.MergeFromString(b"\x10\x01")  # isLearner (field 2), newer than these protos: kept as unknown
        r = self._call("member add", lambda: self.client.clusterstub.MemberAdd(req, **self._kw()))
        m = r.member
        return MemberInfo(m.ID, m.name, tuple(m.peerURLs), tuple(m.clientURLs), bool(_newer_field(m, 5, 0)))

    def remove_member(self, member_id: int) -> None:
        req = self._rpc.MemberRemoveRequest(ID=member_id)
        self._call("member remove", lambda: self.client.clusterstub.MemberRemove(req, **self._kw()))

    def txn(self, changes: Sequence[Event]) -> int:
        """Apply `changes` as one transaction (one revision); returns the revision it made."""
        ops = []
        for ev in changes:
            if ev.deleted:
                ops.append(self._rpc.RequestOp(request_delete_range=self._rpc.DeleteRangeRequest(key=ev.kv.key)))
            else:
                put = self._rpc.PutRequest(key=ev.kv.key, value=ev.kv.value, lease=ev.kv.lease)
                ops.append(self._rpc.RequestOp(request_put=put))
        req = self._rpc.TxnRequest(success=ops)
        r = self._call("txn", lambda: self.client.kvstub.Txn(req, **self._kw(60.0)))
        return int(r.header.revision)

    def range_page(self, start: bytes, *, revision: int, limit: int) -> tuple[list[KeyValue], bool]:
        """Keys from `start` on, in key order, as of `revision`: (at most `limit` of them, more left)."""
        req = self._rpc.RangeRequest(key=start, range_end=b"\0", revision=revision, limit=limit, serializable=True)
        r = self._call("range", lambda: self.client.kvstub.Range(req, **self._kw(60.0)))
        return [_kv(kv) for kv in r.kvs], bool(r.more)

    def lease_grant(self, lease_id: int, ttl: int) -> bool:
        """Grant lease `lease_id` with `ttl` seconds; False when it exists already."""
        req = self._rpc.LeaseGrantRequest(ID=lease_id, TTL=ttl)
        try:
            r = self._call("lease grant", lambda: self.client.leasestub.LeaseGrant(req, **self._kw()))
        except EtcdUnavailable as exc:
            if exc.kind is EtcdErrorKind.LEASE_EXISTS:
                return False
            raise
        if r.error:
            raise EtcdUnavailable(f"etcd {self.endpoint}: lease grant failed: {r.error}", EtcdErrorKind.INVALID)
        return True

    def lease_granted_ttl(self, lease_id: int) -> int | None:
        """The TTL lease `lease_id` was granted with; None once it expired or was revoked."""
        req = self._rpc.LeaseTimeToLiveRequest(ID=lease_id)
        r = self._call("lease time-to-live", lambda: self.client.leasestub.LeaseTimeToLive(req, **self._kw()))
        return int(r.grantedTTL) if r.TTL >= 0 else None

    def lease_ids(self) -> list[int]:
        """Every lease this member knows (LeaseLeases, etcd 3.3+: absent from python3-etcd3's
        stubs, so called by method name and its two-field response read here)."""
        call = self.client.channel.unary_unary(
            "/etcdserverpb.Lease/LeaseLeases",
            request_serializer=lambda _: b"",
            response_deserializer=_lease_ids,
        )
        return self._call("lease list", lambda: list(call(None, **self._kw())))

    def keepalive(self) -> KeepAlive:
        return KeepAlive(self)

    def watch(self, start_revision: int) -> WatchStream:
        """Every change of the whole keyspace from `start_revision` on."""
        return WatchStream(self, start_revision)

    def snapshot_chunks(self) -> Iterator[memoryview]:
        """The Maintenance.Snapshot stream, chunk by chunk, abandoned if it stalls."""
        # Decoded by hand: the blob stays a view of the received message (protobuf would copy each
        # 32 KiB chunk twice more, parsing and reading the field).
        snapshot = self.client.channel.unary_stream(
            "/etcdserverpb.Maintenance/Snapshot",
            request_serializer=lambda _: b"",  # SnapshotRequest has no fields
            response_deserializer=_snapshot_blob,
        )
        call = snapshot(None, credentials=self.client.call_credentials, metadata=self.client.metadata)
        last = [time.monotonic()]
        done = threading.Event()
        stalled = threading.Event()

        def watchdog() -> None:
            while not done.wait(1.0):
                if time.monotonic() - last[0] > self.stall_timeout:
                    stalled.set()
                    call.cancel()
                    return

        threading.Thread(target=watchdog, name="snapshot-watchdog", daemon=True).start()
        try:
            for blob in call:
                last[0] = time.monotonic()
                yield blob
        except grpc.RpcError as exc:
            if stalled.is_set():
                raise EtcdUnavailable(
                    f"etcd {self.endpoint}: snapshot stream stalled for {self.stall_timeout:.0f}s",
                    EtcdErrorKind.TIMEOUT,
                ) from None
            raise rpc_error(f"etcd {self.endpoint}: snapshot stream", exc) from None
        finally:
            done.set()
            call.cancel()


def _snapshot_blob(raw: bytes) -> memoryview:
    """SnapshotResponse {header = 1, remaining_bytes = 2, blob = 3, version = 4}: the blob, as a
    view of the message. Every tag of this message is one byte; a malformed message raises (gRPC
    then fails the call)."""
    view = memoryview(raw)
    blob = view[0:0]
    pos, end = 0, len(raw)
    while pos < end:
        tag = raw[pos]
        pos += 1
        wire = tag & 7
        if tag & 0x80 or wire not in (0, 2):
            raise ValueError(f"snapshot response: unexpected field tag {tag:#x}")
        length = shift = 0
        while True:  # a varint: the value (wire type 0) or the length (wire type 2)
            b = raw[pos]
            pos += 1
            length |= (b & 0x7F) << shift
            if b < 0x80:
                break
            shift += 7
        if wire == 2:
            if tag >> 3 == 3:
                blob = view[pos : pos + length]
            pos += length
    if pos != end:
        raise ValueError("snapshot response: truncated message")
    return blob


def _lease_ids(raw: bytes) -> list[int]:
    """LeaseLeasesResponse {header = 1, leases = 2 (LeaseStatus {ID = 1})}, hand-decoded."""
    from google.protobuf.internal.decoder import _DecodeVarint

    ids: list[int] = []
    pos = 0
    while pos < len(raw):
        tag, pos = _DecodeVarint(raw, pos)
        if tag & 7 != 2:
            raise EtcdUnavailable("lease list: unexpected response", EtcdErrorKind.INVALID)
        length, pos = _DecodeVarint(raw, pos)
        body, pos = raw[pos : pos + length], pos + length
        if tag >> 3 == 2:
            inner = 0
            while inner < len(body):
                itag, inner = _DecodeVarint(body, inner)
                value, inner = _DecodeVarint(body, inner)
                if itag >> 3 == 1:
                    ids.append(value - (1 << 64) if value >= 1 << 63 else value)
    return ids


class WatchStream:
    """A watch of the whole keyspace on one member. The member must know a leader ("hasleader"
    metadata): when it loses it, etcd ends the watch, so a quorum loss is noticed at once."""

    def __init__(self, member: Member, start_revision: int) -> None:
        rpc = member._rpc
        self._rpc = rpc
        self._member = member
        self._requests: queue.Queue[Any] = queue.Queue()
        create = rpc.WatchCreateRequest(key=b"\0", range_end=b"\0", start_revision=start_revision)
        self._requests.put(rpc.WatchRequest(create_request=create))
        metadata = [*(member.client.metadata or ()), ("hasleader", "true")]
        self._call = rpc.WatchStub(member.client.channel).Watch(
            self._outgoing(), credentials=member.client.call_credentials, metadata=metadata
        )

    def _outgoing(self) -> Iterator[Any]:
        while (req := self._requests.get()) is not None:
            yield req

    def request_progress(self) -> None:
        """Ask for a progress notification: etcd's current revision, when there are no events."""
        self._requests.put(self._rpc.WatchRequest(progress_request=self._rpc.WatchProgressRequest()))

    def __iter__(self) -> Iterator[WatchBatch]:
        where = f"etcd {self._member.endpoint}: watch"
        try:
            for resp in self._call:
                if resp.compact_revision:
                    raise Compacted(
                        f"{where}: revisions up to {resp.compact_revision} were compacted", resp.compact_revision
                    )
                if resp.canceled:
                    raise EtcdUnavailable(
                        f"{where} cancelled: {resp.cancel_reason or 'by etcd'}", EtcdErrorKind.UNKNOWN
                    )
                if resp.created and not resp.events:
                    continue
                events = tuple(Event(ev.type == 1, _kv(ev.kv)) for ev in resp.events)
                yield WatchBatch(int(resp.header.revision), events)
        except grpc.RpcError as exc:
            raise rpc_error(where, exc) from None

    def close(self) -> None:
        self._requests.put(None)
        self._call.cancel()


class KeepAlive:
    """A lease keep-alive stream: `renew(ids)` refreshes those leases; their TTLs come back."""

    def __init__(self, member: Member) -> None:
        self._rpc = member._rpc
        self._requests: queue.Queue[Any] = queue.Queue()
        self._call = member.client.leasestub.LeaseKeepAlive(
            self._outgoing(), credentials=member.client.call_credentials, metadata=member.client.metadata
        )
        self.ttls: dict[int, int] = {}
        self._reader = threading.Thread(target=self._read, name="lease-keepalive", daemon=True)
        self._reader.start()

    def _outgoing(self) -> Iterator[Any]:
        while (req := self._requests.get()) is not None:
            yield req

    def _read(self) -> None:
        try:
            for resp in self._call:
                self.ttls[int(resp.ID)] = int(resp.TTL)
        except grpc.RpcError:
            return  # closed, or the member went away: the caller notices by the leases it loses

    def renew(self, ids: Iterable[int]) -> None:
        for lease_id in ids:
            self._requests.put(self._rpc.LeaseKeepAliveRequest(ID=lease_id))

    def close(self) -> None:
        self._requests.put(None)
        self._call.cancel()


_warned_plaintext: set[str] = set()


def _warn_plaintext_auth(endpoint: str) -> None:
    if endpoint not in _warned_plaintext:
        _warned_plaintext.add(endpoint)
        log.warning("etcd password and auth token sent without TLS (http:// endpoint)", endpoint=endpoint)


def _credentials(cfg: EtcdConfig) -> grpc.ChannelCredentials:
    def read(path: str | None, key: str) -> bytes | None:
        if not path:
            return None
        try:
            with open(path, "rb") as fh:
                return fh.read()
        except OSError as exc:
            raise ConfigError(f"etcd.{key}: cannot read {path}: {exc.strerror}") from None

    return grpc.ssl_channel_credentials(read(cfg.cacert, "cacert"), read(cfg.key, "key"), read(cfg.cert, "cert"))


@dataclass
class Probe:
    """What one endpoint answered (or why it did not)."""

    endpoint: str
    status: MemberStatus | None = None
    error: str | None = None
    error_kind: EtcdErrorKind | None = None
    members: list[MemberInfo] = field(default_factory=list)
    alarms: list[Alarm] = field(default_factory=list)


def probe(cfg: EtcdConfig, endpoint: str, *, members: bool = False, alarms: bool = False) -> Probe:
    result = Probe(endpoint)
    try:
        with Member(cfg, endpoint) as m:
            result.status = m.status()
            if members:
                result.members = m.members()
            if alarms:
                result.alarms = m.alarms()
    except EtcdUnavailable as exc:
        result.error = str(exc)
        result.error_kind = exc.kind
    return result


def probe_all(
    cfg: EtcdConfig, endpoints: list[str] | None = None, *, members: bool = False, alarms: bool = False
) -> list[Probe]:
    """Probe every endpoint in parallel, so one dead host costs one timeout, not one per member."""
    eps = list(endpoints or cfg.endpoints)
    if not eps:
        return []
    with ThreadPoolExecutor(max_workers=min(16, len(eps))) as pool:
        return list(pool.map(lambda ep: probe(cfg, ep, members=members, alarms=alarms), eps))


def cluster_id_of(cfg: EtcdConfig) -> str | None:
    """The cluster id (hex) the answering endpoints agree on; None if none answers or they disagree."""
    ids = {hexid(p.status.cluster_id) for p in probe_all(cfg) if p.status is not None}
    return ids.pop() if len(ids) == 1 else None


def connect_healthy(
    cfg: EtcdConfig,
    *,
    exclude: set[str] | None = None,
    allow_alarms: bool = False,
    log_skips: bool = True,
    tried: dict[str, str | None] | None = None,
) -> tuple[Member, MemberStatus]:
    """The first endpoint, in configured order, that answers and can serve a snapshot.
    `log_skips=False` for a caller that polls and reports an outage itself (the skips go to debug);
    `tried` is filled with each endpoint asked: why it was passed over, or None for the one taken.

    A member that raised NOSPACE itself is passed over for one that did not; when every member
    that answers is full (one quota for all: the usual case), the first of them is taken, since
    its data is whole and a backup before the compaction and defragmentation is what is wanted
    then. A CORRUPT member never is."""
    problems: list[str] = []
    full: tuple[Member, MemberStatus] | None = None  # the first passed over only for its own NOSPACE
    leaderless = False  # a member answered but knows no leader: the failure is then NO_LEADER
    for endpoint in cfg.endpoints:
        if exclude and endpoint in exclude:
            continue
        try:
            member = Member(cfg, endpoint)
        except EtcdUnavailable as exc:
            problems.append(str(exc))
            if tried is not None:
                tried[endpoint] = str(exc)
            continue
        status: MemberStatus | None = None
        try:
            status = member.status()
            if status.is_learner:
                raise EtcdUnavailable(f"etcd {endpoint}: is a learner, not a voting member", EtcdErrorKind.NOT_LEADER)
            if status.leader == 0:
                raise EtcdUnavailable(f"etcd {endpoint}: has no leader (quorum lost?)", EtcdErrorKind.NO_LEADER)
            if not allow_alarms:
                _refuse_own_alarms(member, status)
        except EtcdUnavailable as exc:
            problems.append(str(exc))
            leaderless = leaderless or exc.kind is EtcdErrorKind.NO_LEADER
            if tried is not None:
                tried[endpoint] = str(exc)
            (log.warning if log_skips else log.debug)("etcd endpoint skipped", endpoint=endpoint, reason=str(exc))
            if exc.kind is EtcdErrorKind.NO_SPACE and status is not None and full is None:
                full = (member, status)  # kept open: taken if no member without an alarm answers
            else:
                member.close()
            continue
        if full is not None:
            full[0].close()
        if tried is not None:
            tried[endpoint] = None
        return member, status
    if full is not None:
        log.warning("every member that answers is full (NOSPACE): taking one all the same", endpoint=full[0].endpoint)
        return full
    detail = "; ".join(problems) if problems else "no endpoints configured"
    kind = EtcdErrorKind.NO_LEADER if leaderless else EtcdErrorKind.UNAVAILABLE
    raise EtcdUnavailable(f"no healthy etcd endpoint ({detail})", kind)


_ALARM_HINTS = {
    "NOSPACE": "its database reached the quota: compact, defragment, then `etcdctl alarm disarm`",
    "CORRUPT": "its data differs from the other members'",
}


def _refuse_own_alarms(member: Member, status: MemberStatus) -> None:
    """A member that raised an alarm itself is not snapshotted; an alarm raised by another member
    is cluster-wide in etcd (every member reports it) but says nothing about this member's data.

    Uses the Alarm RPC: python3-etcd3's StatusResponse predates the `errors` field.
    """
    own = sorted({a.alarm for a in member.alarms() if a.member_id == status.member_id})
    if own:
        if own == ["NOSPACE"]:
            raise EtcdUnavailable(
                f"etcd {member.endpoint}: member {hexid(status.member_id)} raised the NOSPACE alarm "
                f"({_ALARM_HINTS['NOSPACE']})",
                EtcdErrorKind.NO_SPACE,
            )
        hints = "; ".join(_ALARM_HINTS.get(a, a) for a in own)
        raise EtcdUnavailable(
            f"etcd {member.endpoint}: member {hexid(status.member_id)} raised the {', '.join(own)} alarm ({hints})",
            EtcdErrorKind.UNKNOWN,  # CORRUPT (with or without NOSPACE): never snapshotted
        )
