"""The stored form of a data object: compress then encrypt from a growing spool, with the upload
following; decrypt then decompress on the way back. Failures on either side end both sides and
leave no spool file behind."""

from __future__ import annotations

import hashlib
import io
import os
import threading
from pathlib import Path

import pytest
import zstandard

from conftest import AgeTool
from etcd_backup import codec, crypto
from etcd_backup.errors import IntegrityError, MissingIdentity
from etcd_backup.model import Encryption
from etcd_backup.spool import Spool
from etcd_backup.storage.local import LocalStore

pytestmark = pytest.mark.timeout(60)
MiB = 1024 * 1024


@pytest.fixture
def keys(tmp_path: Path, age_tool: AgeTool) -> tuple[crypto.Identities, str]:
    path = tmp_path / "age.key"
    recipient = age_tool.new_identity(path)
    return crypto.load_identities(str(path)), recipient


def _feed(spool: Spool, data: bytes, *, fail: BaseException | None = None) -> threading.Thread:
    """Write `data` into the spool in pieces, as the snapshot stream does; then end (or fail) it."""

    def run() -> None:
        for i in range(0, len(data), 300_007):
            spool.append(data[i : i + 300_007])
        if fail is not None:
            spool.fail(fail)
            return
        spool.finish()
        spool.release()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_encrypted_object_from_a_growing_spool(
    tmp_path: Path, keys: tuple[crypto.Identities, str], age_tool: AgeTool, compression: str
) -> None:
    identities, recipient = keys
    data = os.urandom(4 * MiB) + b"\0" * (3 * MiB)
    spool_dir = tmp_path / "spool"
    spool = Spool(str(spool_dir), "plain")
    store = LocalStore(tmp_path / "store")
    form = codec.Form(compression, 3, (recipient,))
    feeder = _feed(spool, data)
    reader = spool.reader()
    with codec.encode(reader, form, spool_dir=str(spool_dir), durable=True, label="t") as encoded:
        info = store.put("obj", encoded.reader)
    feeder.join(10)
    reader.close()
    spool.close()
    stored = (tmp_path / "store" / "obj").read_bytes()
    assert stored.startswith(crypto.HEADER)
    assert encoded.sha256 == hashlib.sha256(stored).hexdigest() and encoded.size == info.size == len(stored)
    assert list(spool_dir.iterdir()) == []  # both spools gone; the object was linked into the store
    plain = tmp_path / "plain"
    age_tool.decrypt(Path(identities.path), tmp_path / "store" / "obj", plain)
    if compression == "zstd":
        assert zstandard.ZstdDecompressor().stream_reader(plain.read_bytes()).read() == data
    else:
        assert plain.read_bytes() == data
    out = io.BytesIO()
    with open(tmp_path / "store" / "obj", "rb") as src:
        codec.decode(
            src,
            out,
            compression=compression,
            encryption=form.encryption,
            identities=identities,
            what="obj",
        )
    assert out.getvalue() == data


def test_a_failing_source_fails_the_upload_and_leaves_nothing(
    tmp_path: Path, keys: tuple[crypto.Identities, str]
) -> None:
    _, recipient = keys
    spool_dir = tmp_path / "spool"
    spool = Spool(str(spool_dir), "plain")
    store = LocalStore(tmp_path / "store")
    boom = IntegrityError("trailer check failed")
    feeder = _feed(spool, os.urandom(2 * MiB), fail=boom)
    reader = spool.reader()
    with (
        pytest.raises(IntegrityError) as exc,
        codec.encode(reader, codec.Form("none", 3, (recipient,)), spool_dir=str(spool_dir), label="t") as encoded,
    ):
        store.put("obj", encoded.reader)
    assert exc.value is boom
    feeder.join(10)
    reader.close()
    spool.close()
    assert not (tmp_path / "store" / "obj").exists()
    assert list(spool_dir.iterdir()) == []


def test_a_failing_consumer_stops_the_encryption(tmp_path: Path, keys: tuple[crypto.Identities, str]) -> None:
    _, recipient = keys
    spool_dir = tmp_path / "spool"
    spool = Spool(str(spool_dir), "plain")
    spool.append(os.urandom(3 * MiB))  # the stream is still "arriving": no finish yet
    reader = spool.reader()
    with (
        pytest.raises(RuntimeError),
        codec.encode(reader, codec.Form("none", 3, (recipient,)), spool_dir=str(spool_dir), label="t") as encoded,
    ):
        assert encoded.reader.read(1000).startswith(b"age-encryption.org")
        raise RuntimeError("upload failed")
    spool.fail(RuntimeError("upload failed"))  # what the snapshot's uploader does next
    reader.close()
    spool.close()
    for _ in range(100):
        if not list(spool_dir.iterdir()):
            break
        threading.Event().wait(0.05)
    assert list(spool_dir.iterdir()) == []


def test_decode_plain_and_compressed_without_keys(tmp_path: Path) -> None:
    data = os.urandom(MiB)
    out = io.BytesIO()
    codec.decode(io.BytesIO(data), out, compression="none", encryption=None, identities=None, what="x")
    assert out.getvalue() == data
    out = io.BytesIO()
    packed = zstandard.ZstdCompressor().compress(data)
    codec.decode(io.BytesIO(packed), out, compression="zstd", encryption=None, identities=None, what="x")
    assert out.getvalue() == data
    with pytest.raises(IntegrityError, match="decompress"):
        codec.decode(
            io.BytesIO(b"\x28\xb5\x2f\xfd" + os.urandom(5000)),
            io.BytesIO(),
            compression="zstd",
            encryption=None,
            identities=None,
            what="x",
        )
    with pytest.raises(MissingIdentity):
        codec.decode(
            io.BytesIO(b""),
            io.BytesIO(),
            compression="none",
            encryption=Encryption("age", ("age1x",)),
            identities=None,
            what="x",
        )
