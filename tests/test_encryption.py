"""Client-side encryption end to end: real etcd, S3 over HTTP (moto server), the reference `age` tool.

A stored object is a standard age file that `age -d` (and `zstd -d`) turn back into a snapshot
etcdutl restores, following the README's runbook line by line. A host with only recipients backs
up but cannot read; a wrong key exits 2 naming the recipients, a tampered object exits 3, and
neither touches a data dir. Keys rotate; plain snapshots from before stay restorable.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT, AgeTool, Bucket, Cluster, config_env, run_cli, tools_35
from etcd_backup.etcdproc import free_port, start_member, wait_healthy

pytestmark = pytest.mark.timeout(240)

SECRET_VALUE = "s3cr3t-db-password-plaintext-marker"


def s3_env(cluster: Cluster, bucket: Bucket, spool: Path, **settings: str) -> dict[str, str]:
    return {**config_env(cluster, **settings), **bucket.env(), "ETCD_BACKUP_STORAGE__SPOOL_DIR": str(spool)}


def assert_clean_failure(code: int, stderr: str, expected: int, *words: str) -> None:
    """The exit code, and one error line (the last one, no traceback) with every word in it."""
    assert code == expected, f"exit {code}, expected {expected}: {stderr[-2000:]}"
    assert "Traceback" not in stderr, stderr
    # Notes and warnings (e.g. restore's advice about --bump-revision) may come before the error.
    notes = ("etcd-backup: note:", "etcd-backup: warning:")
    errors = [line for line in stderr.splitlines() if line.startswith("etcd-backup:") and not line.startswith(notes)]
    assert len(errors) == 1 and stderr.strip().splitlines()[-1] == errors[0], stderr
    print("error line:", errors[0])  # shown with -rP, and for a failing test
    for word in words:
        assert word.lower() in errors[0].lower(), errors[0]


def cli(env: dict[str, str], *args: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
    r = run_cli(*args, env=env)
    assert r.returncode == expect, f"{args}: exit {r.returncode}: {r.stderr[-2000:]}"
    return r


def snapshot(env: dict[str, str]) -> dict[str, Any]:
    return json.loads(cli(env, "snapshot", "--output", "json").stdout)


def write_secrets(cluster: Cluster) -> None:
    cluster.put("/registry/secrets/prod/db", SECRET_VALUE)
    for i in range(20):
        cluster.put(f"/registry/configmaps/{i:03d}", f"value {i} " + "x" * 200)


def keygen(env: dict[str, str], path: Path) -> str:
    return cli(env, "keygen", "--out", str(path)).stdout.strip()


def get_object(bucket: Bucket, key: str) -> bytes:
    body: bytes = bucket.server.client().get_object(Bucket=bucket.name, Key=f"{bucket.prefix}/{key}")["Body"].read()
    return body


def put_object(bucket: Bucket, key: str, data: bytes) -> None:
    bucket.server.client().put_object(Bucket=bucket.name, Key=f"{bucket.prefix}/{key}", Body=data)


def restore_single(env: dict[str, str], snapshot_id: str, data_dir: Path, expect: int = 0) -> str:
    r = cli(
        env,
        "restore",
        "single",
        "--snapshot",
        snapshot_id,
        "--name",
        "m1",
        "--peer-url",
        f"http://127.0.0.1:{free_port()}",
        "--data-dir",
        str(data_dir),
        expect=expect,
    )
    return r.stderr


def serve(data_dir: Path, name: str, peer_url: str, tmp_path: Path) -> Any:
    """Start etcd on a restored data dir; returns the member (killed by the caller)."""
    client_url = f"http://127.0.0.1:{free_port()}"
    member = start_member(
        tools_35().etcd,
        name=name,
        data_dir=data_dir,
        client_url=client_url,
        peer_url=peer_url,
        log_path=tmp_path / f"{name}-restored.log",
    )
    wait_healthy(client_url, 30, member)
    return member


# --- the README runbook: reading a backup without etcd-backup --------------------------------------


def runbook() -> list[str]:
    """The shell lines of the README's "Reading a backup without etcd-backup" block, continuation
    lines joined, comments and the S3 download (done by the test) left out."""
    text = (ROOT / "README.md").read_text()
    section = text.split("### Reading a backup without etcd-backup", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    joined = re.sub(r"\\\n\s*", " ", block)
    lines = [line.split("  #", 1)[0].strip() for line in joined.splitlines()]
    return [line for line in lines if line and not line.startswith("#") and not line.startswith("aws ")]


def here(line: str, work: Path, peer: str, compression: str) -> str:
    """A runbook line with this test's data dir and peer URL; for an uncompressed object, without
    the `| zstd -d` step, as the README says."""
    line = line.replace("/var/lib/etcd", str(work / "data")).replace("https://10.0.0.1:2380", peer)
    if compression == "none":
        line = line.replace("snapshot.db.zst.age | zstd -d", "snapshot.db.age").replace(".db.zst.age", ".db.age")
    return line


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_stored_object_opens_with_age_and_restores_with_etcdutl(
    etcd_single: Cluster, s3_bucket: Bucket, tmp_path: Path, age_tool: AgeTool, compression: str
) -> None:
    write_secrets(etcd_single)
    base = config_env(etcd_single)
    recipient = keygen(base, tmp_path / "age.key")
    assert recipient == age_tool.recipient_of(tmp_path / "age.key")
    env = s3_env(
        etcd_single,
        s3_bucket,
        tmp_path / "spool",
        encryption__recipients=recipient,
        storage__compression=compression,
    )
    m = snapshot(env)
    suffix = ".db.zst.age" if compression == "zstd" else ".db.age"
    assert m["object_key"] == f"snapshots/{m['id']}{suffix}"
    assert m["encryption"] == {"format": "age", "recipients": [recipient]}
    stored = get_object(s3_bucket, m["object_key"])
    assert stored.startswith(b"age-encryption.org/v1\n-> X25519 ")
    assert SECRET_VALUE.encode() not in stored and b"/registry/secrets" not in stored
    assert len(stored) == m["object_size"]

    # The runbook, as an operator without etcd-backup runs it.
    work = tmp_path / "by-hand"
    work.mkdir()
    (work / f"snapshot{suffix}").write_bytes(stored)
    (work / "age.key").write_bytes((tmp_path / "age.key").read_bytes())
    (work / "age.key").chmod(0o600)
    peer = f"http://127.0.0.1:{free_port()}"
    script = [here(line, work, peer, compression) for line in runbook()]
    assert any(line.startswith("age -d -i age.key") for line in script), script
    assert any(line.startswith("etcdutl snapshot restore snapshot.db") for line in script), script
    path = f"{Path(tools_35().etcdutl).parent}:/usr/bin:/bin"
    r = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", "\n".join(script)],
        cwd=work,
        capture_output=True,
        text=True,
        env={"PATH": path, "HOME": str(work)},
        timeout=120,
    )
    assert r.returncode == 0, f"{script}\n{r.stdout}\n{r.stderr}"
    assert m["object_sha256"] in r.stdout  # the runbook's sha256sum line, to compare with the manifest
    member = serve(work / "data", "m1", peer, tmp_path)
    try:
        assert etcd_single.get_all(endpoints=[member.client_url])["/registry/secrets/prod/db"] == SECRET_VALUE
    finally:
        member.kill()

    # And etcd-backup itself, given the identity, reads it back to the same bytes.
    with_key = {**env, "ETCD_BACKUP_ENCRYPTION__IDENTITY_FILE": str(tmp_path / "age.key")}
    out = json.loads(cli(with_key, "verify", m["id"], "--output", "json").stdout)
    assert out["ok"] is True and out["structure"]["revision"] == m["revision"]
    cli(with_key, "fetch", m["id"], "--to", str(tmp_path / "fetched.db"))
    assert (tmp_path / "fetched.db").read_bytes() == (work / "snapshot.db").read_bytes()


def test_write_only_host_backs_up_lists_prunes_but_cannot_read(
    etcd_single: Cluster, s3_bucket: Bucket, tmp_path: Path
) -> None:
    write_secrets(etcd_single)
    recipient = keygen(config_env(), tmp_path / "age.key")
    env = s3_env(etcd_single, s3_bucket, tmp_path / "spool", encryption__recipients=recipient, retention__keep_last="1")
    first, second = snapshot(env), snapshot(env)
    listed = json.loads(cli(env, "list", "--output", "json").stdout)
    assert [x["id"] for x in listed] == [second["id"], first["id"]]
    pruned = cli(env, "prune").stdout
    assert first["id"] in pruned
    assert [x["id"] for x in json.loads(cli(env, "list", "--output", "json").stdout)] == [second["id"]]

    out = json.loads(cli(env, "verify", "latest", "--output", "json").stdout)
    assert out["ok"] is True and out["structure"] is None and "identity_file" in out["note"]
    assert out["hash"]["ok"] is True
    text = cli(env, "verify", "latest").stdout
    assert "size and SHA-256" in text and "encryption.identity_file" in text

    dest = tmp_path / "out"
    dest.mkdir()
    r = run_cli("fetch", "latest", "--to", str(dest / "snap.db"), env=env)
    assert_clean_failure(r.returncode, r.stderr, 2, "encrypted", recipient, "encryption.identity_file")
    assert list(dest.iterdir()) == []
    target = tmp_path / "new-host" / "m1.etcd"
    r = run_cli(
        "restore",
        "single",
        "--snapshot",
        "latest",
        "--name",
        "m1",
        "--peer-url",
        f"http://127.0.0.1:{free_port()}",
        "--data-dir",
        str(target),
        env=env,
    )
    assert_clean_failure(r.returncode, r.stderr, 2, "encryption.identity_file")
    assert not target.exists() and not target.parent.exists()
    r = run_cli("pre-change", "--reason", "add a member", "--drill", env=env)
    assert_clean_failure(r.returncode, r.stderr, 2, "--drill", "encryption.identity_file")
    assert len(json.loads(cli(env, "list", "--output", "json").stdout)) == 1  # refused before any snapshot
    # Nothing recorded as a failure: the snapshot is fine, this host just cannot read it.
    assert json.loads(cli(env, "list", "--output", "json").stdout)[0]["verification"]["hash"]["ok"] is True


def test_wrong_identity_exits_2_naming_the_recipients(etcd_single: Cluster, tmp_path: Path, age_tool: AgeTool) -> None:
    write_secrets(etcd_single)
    recipient = age_tool.new_identity(tmp_path / "right.key")
    age_tool.new_identity(tmp_path / "wrong.key")
    env = config_env(etcd_single, f"file://{tmp_path}/store", encryption__recipients=recipient)
    m = snapshot(env)
    wrong = {**env, "ETCD_BACKUP_ENCRYPTION__IDENTITY_FILE": str(tmp_path / "wrong.key")}
    for args in (["verify", m["id"]], ["fetch", m["id"], "--to", str(tmp_path / "x.db")]):
        r = run_cli(*args, env=wrong)
        assert_clean_failure(r.returncode, r.stderr, 2, "no key in", str(tmp_path / "wrong.key"), recipient)
    assert not (tmp_path / "x.db").exists()
    target = tmp_path / "data"
    stderr = restore_single(wrong, m["id"], target, expect=2)
    assert recipient in stderr and not target.exists()
    assert json.loads(cli(env, "list", "--output", "json").stdout)[0]["verification"]["hash"]["ok"] is True


def test_tampered_ciphertext_exits_3_and_touches_nothing(
    etcd_single: Cluster, s3_bucket: Bucket, tmp_path: Path, age_tool: AgeTool
) -> None:
    write_secrets(etcd_single)
    recipient = age_tool.new_identity(tmp_path / "age.key")
    env = s3_env(
        etcd_single,
        s3_bucket,
        tmp_path / "spool",
        encryption__recipients=recipient,
        encryption__identity_file=str(tmp_path / "age.key"),
    )
    m = snapshot(env)
    stored = bytearray(get_object(s3_bucket, m["object_key"]))
    stored[len(stored) // 2] ^= 0x01
    put_object(s3_bucket, m["object_key"], bytes(stored))
    target = tmp_path / "data"
    r = run_cli(
        "restore",
        "single",
        "--snapshot",
        m["id"],
        "--name",
        "m1",
        "--peer-url",
        f"http://127.0.0.1:{free_port()}",
        "--data-dir",
        str(target),
        env=env,
    )
    assert_clean_failure(r.returncode, r.stderr, 3, "SHA-256")
    assert not target.exists()

    # Tampering that also rewrote the manifest's size and digest: age's authentication catches it.
    manifest_key = f"snapshots/{m['id']}.json"
    doc = json.loads(get_object(s3_bucket, manifest_key))
    doc["object_sha256"] = hashlib.sha256(stored).hexdigest()
    put_object(s3_bucket, manifest_key, json.dumps(doc).encode())
    target.mkdir()
    (target / "keep").write_text("precious")
    r = run_cli(
        "restore",
        "single",
        "--snapshot",
        m["id"],
        "--name",
        "m1",
        "--peer-url",
        f"http://127.0.0.1:{free_port()}",
        "--data-dir",
        str(target),
        "--force",
        env=env,
    )
    assert_clean_failure(r.returncode, r.stderr, 3, "does not decrypt", "tampered")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("data")] == ["data"]  # nothing moved aside
    assert (target / "keep").read_text() == "precious"
    r = run_cli("verify", m["id"], env=env)
    assert_clean_failure(r.returncode, r.stderr, 3, "does not decrypt")
    listed = json.loads(cli(env, "list", "--output", "json").stdout)
    assert listed[0]["id"] == m["id"] and listed[0]["verification"]["hash"]["ok"] is False


def test_key_rotation_and_plain_snapshots_from_before(etcd_single: Cluster, tmp_path: Path, age_tool: AgeTool) -> None:
    write_secrets(etcd_single)
    old, new = tmp_path / "old.key", tmp_path / "new.key"
    old_r, new_r = age_tool.new_identity(old), age_tool.new_identity(new)
    both = tmp_path / "both.key"
    both.write_text(old.read_text() + new.read_text())
    both.chmod(0o600)
    store = f"file://{tmp_path}/store"
    plain = snapshot(config_env(etcd_single, store))
    assert plain["encryption"] is None and plain["object_key"].endswith(".db")
    etcd_single.put("/after", "1")
    by_old = snapshot(config_env(etcd_single, store, encryption__recipients=old_r))
    etcd_single.put("/after", "2")
    # Rotation: new objects go to the new key (and, from a recipients file, to a second one).
    rfile = tmp_path / "recipients.txt"
    rfile.write_text(f"# current key\n{new_r}\n")
    by_new = snapshot(config_env(etcd_single, store, encryption__recipients_file=str(rfile)))
    assert by_old["encryption"]["recipients"] == [old_r] and by_new["encryption"]["recipients"] == [new_r]

    reader = config_env(etcd_single, store, encryption__recipients=new_r, encryption__identity_file=str(both))
    for m in (plain, by_old, by_new):
        cli(reader, "fetch", m["id"], "--to", str(tmp_path / f"{m['id']}.db"))
    restore_single(reader, plain["id"], tmp_path / "from-plain")
    assert (tmp_path / "from-plain" / "member").is_dir()

    only_new = {**reader, "ETCD_BACKUP_ENCRYPTION__IDENTITY_FILE": str(new)}
    cli(only_new, "verify", by_new["id"])
    cli(only_new, "verify", plain["id"])
    r = run_cli("fetch", by_old["id"], "--to", str(tmp_path / "old.db"), env=only_new)
    assert_clean_failure(r.returncode, r.stderr, 2, old_r)


def test_daemon_on_a_write_only_host_skips_drills_once(
    etcd_single: Cluster, tmp_path: Path, age_tool: AgeTool, start_daemon: Any
) -> None:
    recipient = age_tool.new_identity(tmp_path / "age.key")
    env = config_env(
        etcd_single,
        f"file://{tmp_path}/store",
        encryption__recipients=recipient,
        verify__restore_drill="1s",
        schedule__on_member_change="false",
    )
    daemon = start_daemon(env)

    def skipped() -> float:
        return daemon.metrics().get('etcd_backup_drills_skipped_total{reason="no_identity"}', 0.0)

    daemon.wait_until(lambda: skipped() >= 3, 60, "three skipped drills")
    metrics = daemon.metrics()
    assert metrics['etcd_backup_failures_total{stage="drill"}'] == 0
    warnings = [e for e in daemon.logs() if "restore drills skipped" in str(e.get("event"))]
    assert len(warnings) == 1 and warnings[0]["level"] == "warning", warnings
    rc, _ = daemon.terminate()
    assert rc == 0
    listed = json.loads(cli(env, "list", "--output", "json").stdout)
    assert listed and listed[0]["encryption"]["recipients"] == [recipient]
    assert listed[0]["verification"]["drill"] is None
