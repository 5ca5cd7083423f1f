"""The manifest's `encryption` field: strict round trip, and manifests from before it load as plain."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from etcd_backup.errors import IntegrityError
from etcd_backup.model import Check, Encryption, FileEntry, FilesObject, Manifest, SkippedFile, Verification

RECIPIENT = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"


def manifest(**overrides: Any) -> Manifest:
    fields: dict[str, Any] = {
        "id": "20300101T000000000Z-abcdef",
        "created_at": "2030-01-01T00:00:00.000Z",
        "reason": "manual",
        "pinned": False,
        "cluster_id": "a",
        "member_id": "b",
        "endpoint": "http://127.0.0.1:2379",
        "etcd_version": "3.5.1",
        "revision": 7,
        "keys": 3,
        "db_size": 20480,
        "object_key": "snapshots/20300101T000000000Z-abcdef.db.age",
        "object_size": 20700,
        "object_sha256": "00" * 32,
        "compression": "none",
        "verification": Verification(Check(True, "2030-01-01T00:00:00.000Z"), Check(True, "2030-01-01T00:00:00.000Z")),
        "encryption": Encryption("age", (RECIPIENT,)),
    }
    fields.update(overrides)
    return Manifest(**fields)


def test_encrypted_manifest_round_trip() -> None:
    m = manifest()
    doc = json.loads(m.to_json())
    assert doc["encryption"] == {"format": "age", "recipients": [RECIPIENT]}
    assert list(doc).index("encryption") == list(doc).index("compression") + 1
    assert Manifest.from_json(m.to_json()) == m


def test_manifest_from_before_encryption_loads_as_plain() -> None:
    doc = manifest(encryption=None, object_key="snapshots/20300101T000000000Z-abcdef.db").to_dict()
    del doc["encryption"]
    m = Manifest.from_dict(doc)
    assert m.encryption is None and m.to_dict()["encryption"] is None
    assert Manifest.from_json(m.to_json()) == m


@pytest.mark.parametrize(
    "value",
    [
        "age",
        [RECIPIENT],
        {"format": "gpg", "recipients": [RECIPIENT]},
        {"format": "age", "recipients": []},
        {"format": "age", "recipients": [1]},
        {"format": "age"},
        {"recipients": [RECIPIENT]},
    ],
)
def test_malformed_encryption_field_is_an_integrity_error(value: Any) -> None:
    doc = {**manifest().to_dict(), "encryption": value}
    with pytest.raises(IntegrityError, match="encryption") as exc:
        Manifest.from_dict(doc)
    assert "\n" not in str(exc.value)


@settings(max_examples=150, deadline=None, database=None)
@given(
    st.one_of(
        st.none(),
        st.text(max_size=10),
        st.dictionaries(
            st.sampled_from(["format", "recipients", "x"]),
            st.one_of(st.just("age"), st.lists(st.text(max_size=12), max_size=3), st.integers()),
            max_size=3,
        ),
    )
)
def test_encryption_field_fuzz_parses_or_is_refused(value: Any) -> None:
    doc = {**manifest().to_dict(), "encryption": value}
    try:
        m = Manifest.from_dict(doc)
    except IntegrityError as exc:
        assert "\n" not in str(exc)
        return
    assert Manifest.from_json(m.to_json()) == m


# --- the control-plane files object ----------------------------------------------------------


def files_object(**overrides: Any) -> FilesObject:
    fields: dict[str, Any] = {
        "object_key": "snapshots/20300101T000000000Z-abcdef.files.tar.age",
        "object_size": 4096,
        "object_sha256": "11" * 32,
        "compression": "none",
        "count": 1,
        "paths": ("/etc/kubernetes/pki",),
        "entries": (
            FileEntry("etc/kubernetes/pki", "dir", 0o755),
            FileEntry("etc/kubernetes/pki/ca.key", "file", 0o600, 1675),
        ),
        "skipped": (SkippedFile("/etc/kubernetes/pki/agent.sock", "not a regular file, directory or symlink"),),
    }
    fields.update(overrides)
    return FilesObject(**fields)


def test_files_round_trip_with_octal_modes() -> None:
    m = manifest(files=files_object())
    doc = json.loads(m.to_json())
    assert list(doc).index("files") == list(doc).index("encryption") + 1
    assert doc["files"]["entries"][1] == {
        "path": "etc/kubernetes/pki/ca.key",
        "type": "file",
        "mode": "0600",
        "size": 1675,
    }
    assert Manifest.from_json(m.to_json()) == m
    assert manifest().to_dict()["files"] is None


def test_files_written_by_hand_need_only_the_object() -> None:
    doc = manifest().to_dict()
    doc["files"] = {"object_key": "snapshots/x.files.tar.zst.age", "object_size": 10, "object_sha256": "22" * 32}
    f = Manifest.from_dict(doc).files
    assert f is not None and f.compression == "zstd" and f.count == 0 and f.entries == ()


@pytest.mark.parametrize(
    "value",
    [
        [],
        {"object_key": 1, "object_size": 1, "object_sha256": "x"},
        {"object_key": "k", "object_size": -1, "object_sha256": "x"},
        {"object_key": "k", "object_size": 1, "object_sha256": "x", "entries": [{"path": "a", "type": "fifo"}]},
        {
            "object_key": "k",
            "object_size": 1,
            "object_sha256": "x",
            "entries": [{"path": "a", "type": "file", "mode": 384}],
        },
        {
            "object_key": "k",
            "object_size": 1,
            "object_sha256": "x",
            "entries": [{"path": "a", "type": "file", "mode": "0900"}],
        },
        {"object_key": "k", "object_size": 1, "object_sha256": "x", "count": True},
    ],
)
def test_malformed_files_field_is_an_integrity_error(value: Any) -> None:
    doc = {**manifest().to_dict(), "files": value}
    with pytest.raises(IntegrityError, match="files") as exc:
        Manifest.from_dict(doc)
    assert "\n" not in str(exc.value)
