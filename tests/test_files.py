"""Control-plane files beside each snapshot ([files] paths, `restore files`), end to end.

Real etcd, a file:// store and S3 over HTTP (moto), the reference `age`, `zstd` and `tar` tools.
The files stand in for kubeadm's: private keys (0600) in directories of their own modes and
certificates (0644); every key file holds a marker that must never show up anywhere but in the
restored file (not in output, logs, manifests or metrics).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import secrets
import socket
import stat
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT, AgeTool, Bucket, Cluster, DaemonFactory, config_env, run_cli

pytestmark = pytest.mark.timeout(240)

MARKER = f"PRIVATE-KEY-MATERIAL-{secrets.token_hex(8)}"

# relative to the host root; mode, content (None: a directory)
TREE: dict[str, tuple[int, str | None]] = {
    "etc/kubernetes/pki": (0o755, None),
    "etc/kubernetes/pki/ca.crt": (0o644, "-----BEGIN CERTIFICATE-----\nca\n"),
    "etc/kubernetes/pki/ca.key": (0o600, f"-----BEGIN PRIVATE KEY-----\n{MARKER} ca\n"),
    "etc/kubernetes/pki/etcd": (0o750, None),
    "etc/kubernetes/pki/etcd/server.crt": (0o644, "-----BEGIN CERTIFICATE-----\netcd\n"),
    "etc/kubernetes/pki/etcd/server.key": (0o600, f"-----BEGIN PRIVATE KEY-----\n{MARKER} etcd\n"),
    "etc/kubernetes/enc/encryption-config.yaml": (0o600, f"secret: {MARKER}\n"),
}
FILES = sorted(k for k, (_, content) in TREE.items() if content is not None)


def make_host(root: Path) -> list[str]:
    """The control-plane files below `root`; returns the paths to configure."""
    for rel, (mode, content) in sorted(TREE.items()):
        path = root / rel
        if content is None:
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
        path.chmod(mode)
    return [str(root / "etc/kubernetes/pki"), str(root / "etc/kubernetes/enc/encryption-config.yaml")]


def archived(root: Path, rel: str) -> str:
    """The member name of a host file in the archive: its absolute path without the leading '/'."""
    return str(root / rel).lstrip("/")


def files_env(cluster: Cluster | None, store_url: str | None, paths: list[str], **settings: str) -> dict[str, str]:
    return config_env(cluster, store_url, files__paths=",".join(paths), **settings)


def cli(env: dict[str, str], *args: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
    r = run_cli(*args, env=env)
    assert r.returncode == expect, (
        f"{args}: exit {r.returncode}, expected {expect}: {r.stdout[-1000:]} {r.stderr[-2000:]}"
    )
    return r


def one_error_line(r: subprocess.CompletedProcess[str], *words: str) -> str:
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("etcd-backup:"), r.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def snapshot(env: dict[str, str]) -> tuple[dict[str, Any], subprocess.CompletedProcess[str]]:
    r = cli(env, "snapshot", "--output", "json")
    return json.loads(r.stdout), r


def restore_files(env: dict[str, str], ref: str, dest: Path, *extra: str, expect: int = 0) -> Any:
    r = cli(env, "restore", "files", "--snapshot", ref, "--to", str(dest), "--output", "json", *extra, expect=expect)
    return (json.loads(r.stdout) if expect == 0 else None), r


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def assert_restored(dest: Path, host: Path) -> None:
    for rel, (want, content) in TREE.items():
        path = dest / archived(host, rel)
        assert mode(path) == want, f"{rel}: {mode(path):o}"
        if content is None:
            assert path.is_dir()
        else:
            assert path.read_text() == content


def snapshot_tree(dest: Path) -> dict[str, tuple[int, bytes | None]]:
    """Every path below `dest` with its mode and content: to prove nothing changed."""
    out: dict[str, tuple[int, bytes | None]] = {}
    for path in sorted(dest.rglob("*")):
        out[str(path.relative_to(dest))] = (mode(path), path.read_bytes() if path.is_file() else None)
    return out


# --- configuration -------------------------------------------------------------------------


def test_refused_in_plain_without_the_opt_in_and_nothing_uploaded(tmp_path: Path) -> None:
    paths = make_host(tmp_path / "host")
    store = tmp_path / "store"
    env = files_env(None, f"file://{store}", paths)
    for command in (["snapshot"], ["run"], ["list"]):
        r = cli(env, *command, expect=2)
        one_error_line(r, "files.paths", "files.allow_unencrypted = true", "[encryption]")
    assert not store.exists()


def test_paths_from_the_environment_are_absolute_and_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from etcd_backup import config
    from etcd_backup.errors import ConfigError

    for k in [k for k in os.environ if k.startswith("ETCD_BACKUP_")]:
        monkeypatch.delenv(k)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ETCD_BACKUP_FILES__PATHS", "pki, /etc/kubernetes/enc/../enc/x.yaml,pki")
    monkeypatch.setenv("ETCD_BACKUP_FILES__ALLOW_UNENCRYPTED", "true")
    cfg = config.load(None)
    assert cfg.files.paths == [str(tmp_path / "pki"), "/etc/kubernetes/enc/x.yaml"]
    assert cfg.files.allow_unencrypted is True
    monkeypatch.setenv("ETCD_BACKUP_FILES__PATHS", "/")
    with pytest.raises(ConfigError, match=r"files\.paths"):
        config.load(None)
    # Encrypted needs no opt-in.
    monkeypatch.setenv("ETCD_BACKUP_FILES__PATHS", "/etc/kubernetes/pki")
    monkeypatch.delenv("ETCD_BACKUP_FILES__ALLOW_UNENCRYPTED")
    monkeypatch.setenv(
        "ETCD_BACKUP_ENCRYPTION__RECIPIENTS", "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"
    )
    assert config.load(None).files.paths == ["/etc/kubernetes/pki"]
    monkeypatch.setenv("ETCD_BACKUP_FILES__ALLOW_UNENCRYPTD", "true")
    with pytest.raises(ConfigError, match=r"unknown setting files\.allow_unencryptd"):
        config.load(None)


def test_a_missing_path_stops_snapshot_and_run_before_any_work(tmp_path: Path) -> None:
    paths = make_host(tmp_path / "host")
    gone = str(tmp_path / "host" / "etc/kubernetes/admin.conf")
    store = tmp_path / "store"
    # No etcd answers at the default endpoint either: the check comes first.
    env = files_env(None, f"file://{store}", [*paths, gone], files__allow_unencrypted="true")
    one_error_line(cli(env, "snapshot", expect=2), gone, "not found")
    one_error_line(cli(env, "run", expect=2), gone, "not found")
    assert not list(store.rglob("snapshots/*"))


# --- archived with a snapshot, restored -----------------------------------------------------


def test_archived_to_a_directory_store_listed_and_restored_with_modes(etcd_single: Cluster, tmp_path: Path) -> None:
    host = tmp_path / "host"
    paths = make_host(host)
    os.symlink("ca.crt", host / "etc/kubernetes/pki/ca-bundle.crt")  # inside: kept
    os.symlink("/etc/hostname", host / "etc/kubernetes/pki/elsewhere")  # outside: left out, named
    store = tmp_path / "store"
    env = files_env(etcd_single, f"file://{store}", paths, files__allow_unencrypted="true")
    m, _ = snapshot(env)

    f = m["files"]
    assert f["object_key"] == f"snapshots/{m['id']}.files.tar"
    stored = store / f["object_key"]
    assert stored.stat().st_size == f["object_size"] and sha256(stored.read_bytes()) == f["object_sha256"]
    assert mode(stored) == 0o600  # plain private keys in a plain store: private to the daemon's user
    assert f["count"] == len(FILES) + 1 and f["paths"] == paths
    assert f["skipped"] == [
        {
            "path": str(host / "etc/kubernetes/pki/elsewhere"),
            "reason": "symlink to /etc/hostname outside the archived paths",
        }
    ]
    entries = {e["path"]: e for e in f["entries"]}
    assert entries[archived(host, "etc/kubernetes/pki/ca.key")] == {
        "path": archived(host, "etc/kubernetes/pki/ca.key"),
        "type": "file",
        "mode": "0600",
        "size": len(TREE["etc/kubernetes/pki/ca.key"][1] or ""),
    }
    assert entries[archived(host, "etc/kubernetes/pki/etcd")]["mode"] == "0750"
    assert entries[archived(host, "etc/kubernetes/pki/ca-bundle.crt")]["type"] == "symlink"

    # Any tar reads it.
    listed = subprocess.run(["tar", "-tvf", str(stored)], capture_output=True, text=True, check=True).stdout
    for rel in FILES:
        assert archived(host, rel) in listed
    assert re.search(r"^-rw------- .*etc/kubernetes/pki/ca.key$", listed, re.M), listed

    # `list` shows which snapshots carry files.
    plain_env = config_env(etcd_single, f"file://{store}")
    bare, _ = snapshot(plain_env)
    assert bare["files"] is None
    text = cli(plain_env, "list").stdout.splitlines()
    assert text[0].split()[-1] == "FILES"
    row = {line.split()[0]: line.split() for line in text[1:]}
    assert row[m["id"]][-4:] == [str(f["count"]), "(1", "left", "out)"]
    assert row[bare["id"]][-1] == "verified"
    docs = {d["id"]: d for d in json.loads(cli(plain_env, "list", "--output", "json").stdout)}
    assert docs[m["id"]]["files"]["count"] == f["count"] and docs[bare["id"]]["files"] is None

    # Written back below DIR, each with its mode; the symlink stays relative.
    dest = tmp_path / "restored"
    out, _ = restore_files(env, m["id"], dest)
    assert out["snapshot"] == m["id"] and out["count"] == f["count"] and out["overwritten"] == []
    assert_restored(dest, host)
    link = dest / archived(host, "etc/kubernetes/pki/ca-bundle.crt")
    assert os.readlink(link) == "ca.crt" and link.read_text() == TREE["etc/kubernetes/pki/ca.crt"][1]
    assert not (dest / archived(host, "etc/kubernetes/pki/elsewhere")).exists()

    # Again: every file exists. Refused (exit 4), and nothing written, not even the missing one.
    changed = dest / archived(host, "etc/kubernetes/pki/ca.crt")
    changed.write_text("edited by the operator\n")
    removed = dest / archived(host, "etc/kubernetes/pki/etcd/server.key")
    removed.unlink()
    before = snapshot_tree(dest)
    _, r = restore_files(env, m["id"], dest, expect=4)
    one_error_line(r, "--force", "exist already", "nothing written")
    assert snapshot_tree(dest) == before

    # --force overwrites; the snapshot without files is `latest` now, so it is named.
    _, r = restore_files(env, "latest", dest, "--force", expect=2)
    one_error_line(r, bare["id"], "carries no control-plane files", m["id"])
    out, _ = restore_files(env, m["id"], dest, "--force")
    assert changed.as_posix() in out["overwritten"] and removed.as_posix() not in out["overwritten"]
    assert_restored(dest, host)

    # For people: what was written, with modes.
    text = cli(env, "restore", "files", "--snapshot", m["id"], "--to", str(tmp_path / "again")).stdout
    assert text.startswith(f"{f['count']} control-plane file(s) of snapshot {m['id']} written below ")
    assert f"0600  file     {tmp_path / 'again' / archived(host, 'etc/kubernetes/pki/ca.key')}" in text


def test_encrypted_on_s3_opens_with_age_and_never_shows_its_content(
    etcd_single: Cluster, s3_bucket: Bucket, age_tool: AgeTool, tmp_path: Path
) -> None:
    host = tmp_path / "host"
    paths = make_host(host)
    key = tmp_path / "age.key"
    recipient = age_tool.new_identity(key)
    env = {
        **files_env(
            etcd_single,
            None,
            paths,
            encryption__recipients=recipient,
            encryption__identity_file=str(key),
            storage__compression="zstd",
            storage__spool_dir=str(tmp_path / "spool"),
            log__level="debug",  # every log line a one-shot command has, on stderr
        ),
        **s3_bucket.env(),
    }
    m, snap = snapshot(env)
    f = m["files"]
    assert f["object_key"] == f"snapshots/{m['id']}.files.tar.zst.age"
    assert m["encryption"] == {"format": "age", "recipients": [recipient]}
    client = s3_bucket.server.client()
    stored = client.get_object(Bucket=s3_bucket.name, Key=f"{s3_bucket.prefix}/{f['object_key']}")["Body"].read()
    assert stored.startswith(b"age-encryption.org/v1\n") and len(stored) == f["object_size"]
    assert sha256(stored) == f["object_sha256"] and MARKER.encode() not in stored
    manifest = client.get_object(Bucket=s3_bucket.name, Key=f"{s3_bucket.prefix}/snapshots/{m['id']}.json")[
        "Body"
    ].read()

    # The README's line, as an operator without etcd-backup runs it.
    work = tmp_path / "by-hand"
    work.mkdir()
    name = Path(f["object_key"]).name
    (work / name).write_bytes(stored)
    (work / "age.key").write_bytes(key.read_bytes())
    readme = (ROOT / "README.md").read_text().split("The control-plane files object", 1)[1]
    line = readme.split("```sh\n", 1)[1].splitlines()[0].split("  #", 1)[0].strip()
    assert line.endswith("| zstd -d | tar -tv"), line
    line = re.sub(r"\S+\.files\.tar\.zst\.age", name, line)
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", line], cwd=work, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    for rel in FILES:
        assert archived(host, rel) in r.stdout
    # What it decrypts to is the key material itself (so the marker checks below mean something).
    plain = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", f"age -d -i age.key {name} | zstd -d | tar -xO"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert plain.returncode == 0 and MARKER in plain.stdout

    dest = tmp_path / "restored"
    out, restore = restore_files(env, "latest", dest)
    assert_restored(dest, host)

    # A key that does not open it: exit 2 naming the recipient, nothing written.
    other = tmp_path / "other.key"
    age_tool.new_identity(other)
    elsewhere = tmp_path / "elsewhere"
    _, wrong = restore_files({**env, "ETCD_BACKUP_ENCRYPTION__IDENTITY_FILE": str(other)}, m["id"], elsewhere, expect=2)
    one_error_line(wrong, recipient)
    assert not elsewhere.exists()

    listed = [cli(env, "list"), cli(env, "list", "--output", "json")]
    seen = [snap.stdout, snap.stderr, restore.stdout, restore.stderr, wrong.stderr, json.dumps(out), manifest.decode()]
    seen += [x for r in listed for x in (r.stdout, r.stderr)]
    assert "snapshot stored" in snap.stderr  # the debug logs were really captured
    for text in seen:
        assert MARKER not in text


def test_daemon_leaves_out_a_vanished_file_counts_it_and_never_logs_content(
    etcd_single: Cluster, start_daemon: DaemonFactory, age_tool: AgeTool, tmp_path: Path
) -> None:
    host = tmp_path / "host"
    paths = make_host(host)
    store = tmp_path / "store"
    recipient = age_tool.new_identity(tmp_path / "age.key")
    env = files_env(
        etcd_single,
        f"file://{store}",
        paths,
        encryption__recipients=recipient,
        schedule__interval="1s",
        verify__restore_drill="off",
        delta__interval="off",
        log__level="debug",
    )
    d = start_daemon(env)

    def manifests() -> list[dict[str, Any]]:
        out = []
        for p in sorted((store / "snapshots").glob("*.json")):
            try:
                out.append(json.loads(p.read_text()))
            except (OSError, ValueError):
                pass  # being replaced
        return out

    first = d.wait_until(lambda: [m for m in manifests() if m["files"]], 60, "a snapshot with files")[0]
    assert first["files"]["count"] == len(FILES) and first["files"]["skipped"] == []
    gone = host / "etc/kubernetes/enc/encryption-config.yaml"
    gone.unlink()
    later = d.wait_until(
        lambda: [m for m in manifests() if m["files"] and m["files"]["skipped"]], 60, "a snapshot without the file"
    )[0]
    assert later["files"]["skipped"] == [{"path": str(gone), "reason": "not found"}]
    assert later["files"]["count"] == len(FILES) - 1
    d.wait_until(lambda: d.metrics().get('etcd_backup_failures_total{stage="files"}', 0) >= 1, 10, "files failure")
    status, metrics = d.request("GET", "/metrics")
    assert status == 200
    _, listed = d.request("GET", "/v1/snapshots")
    assert any(e.get("event") == "control-plane file not archived" and e.get("path") == str(gone) for e in d.logs())
    d.terminate()
    for text in [metrics.decode(), listed.decode(), d.log_path.read_text(), *(json.dumps(m) for m in manifests())]:
        assert MARKER not in text


def test_retention_deletes_the_files_object_with_its_snapshot_and_never_as_debris(
    etcd_single: Cluster, tmp_path: Path
) -> None:
    paths = make_host(tmp_path / "host")
    store = tmp_path / "store"
    keep_one = {
        "retention__keep_last": "1",
        "retention__hourly": "0",
        "retention__daily": "0",
        "retention__weekly": "0",
        "retention__monthly": "0",
        "retention__debris_age": "0s",  # anything unclaimed is debris at once
    }
    env = files_env(etcd_single, f"file://{store}", paths, files__allow_unencrypted="true", **keep_one)
    old, _ = snapshot(env)
    new, _ = snapshot(env)
    dry = json.loads(cli(env, "prune", "--dry-run", "--output", "json").stdout)
    assert dry["debris"] == []
    cli(env, "prune")
    keys = sorted(str(p.relative_to(store)) for p in (store / "snapshots").iterdir())
    assert keys == sorted([new["object_key"], new["files"]["object_key"], f"snapshots/{new['id']}.json"])
    assert not (store / old["files"]["object_key"]).exists()


# --- archives that must not be written ------------------------------------------------------


def _tar(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, mode
    return info


def test_unsafe_archives_are_refused_and_nothing_is_written(etcd_single: Cluster, tmp_path: Path) -> None:
    paths = make_host(tmp_path / "host")
    store = tmp_path / "store"
    env = files_env(etcd_single, f"file://{store}", paths, files__allow_unencrypted="true")
    m, _ = snapshot(env)
    manifest_path = store / "snapshots" / f"{m['id']}.json"
    outside = tmp_path / "outside"
    data = b"planted\n"
    cases = {
        "dot-dot": _tar((_member("etc/../../outside/evil"), data)),
        "absolute": _tar((_member(str(outside / "evil")), data)),
        "absolute symlink, then through it": _tar(
            (_member("etc/link", tarfile.SYMTYPE, str(outside)), None), (_member("etc/link/evil"), data)
        ),
        "relative symlink out, then through it": _tar(
            (_member("etc/up", tarfile.SYMTYPE, "../../outside"), None), (_member("etc/up/evil"), data)
        ),
        "symlink out alone": _tar((_member("etc/passwd-link", tarfile.SYMTYPE, "../../../../etc/passwd"), None)),
        "hard link": _tar((_member("etc/hard", tarfile.LNKTYPE, "../../outside/evil"), None)),
        "device": _tar((_member("etc/null", tarfile.CHRTYPE), None)),
        "twice": _tar((_member("etc/a"), data), (_member("etc/a"), data)),
    }
    for case, archive in cases.items():
        (store / m["files"]["object_key"]).write_bytes(archive)
        doc = json.loads(manifest_path.read_text())
        # A "correct" manifest: the object it names, its size and digest (no entries to compare).
        doc["files"].update(object_size=len(archive), object_sha256=sha256(archive), entries=[], count=1)
        manifest_path.write_text(json.dumps(doc))
        dest = tmp_path / f"dest-{secrets.token_hex(3)}"
        _, r = restore_files(env, m["id"], dest, "--force", expect=3)
        print(case, "->", one_error_line(r, "nothing written"))
        assert not dest.exists(), case
        assert not outside.exists(), case

    # The real archive with one mode changed is not what the manifest lists.
    host_key = archived(tmp_path / "host", "etc/kubernetes/pki/ca.key")
    tampered = _tar((_member(host_key, mode=0o644), b"x"))
    (store / m["files"]["object_key"]).write_bytes(tampered)
    doc = json.loads(manifest_path.read_text())
    doc["files"].update(object_size=len(tampered), object_sha256=sha256(tampered), entries=m["files"]["entries"])
    manifest_path.write_text(json.dumps(doc))
    _, r = restore_files(env, m["id"], tmp_path / "dest-tampered", expect=3)
    one_error_line(r, "does not hold what its manifest lists")

    # A damaged object: its digest no longer matches.
    (store / m["files"]["object_key"]).write_bytes(b"\0" * len(tampered))
    _, r = restore_files(env, m["id"], tmp_path / "dest-damaged", expect=3)
    one_error_line(r, "SHA-256")
    assert not (tmp_path / "dest-damaged").exists() and not (tmp_path / "dest-tampered").exists()


# --- the archive itself (no etcd) -----------------------------------------------------------


def test_archive_skips_what_is_not_a_file_and_names_each_path_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from etcd_backup import cparchive
    from etcd_backup.errors import ConfigError

    host = tmp_path / "host"
    paths = make_host(host)
    pki = host / "etc/kubernetes/pki"
    os.symlink(str(pki / "ca.crt"), pki / "absolute-inside.crt")  # stored relative
    sock = socket.socket(socket.AF_UNIX)
    monkeypatch.chdir(pki)  # a relative name: socket paths are limited to 108 bytes
    sock.bind("agent.sock")
    try:
        buf = io.BytesIO()
        # The key file named again (it is inside pki already), and a directory through a symlink.
        os.symlink(str(pki), tmp_path / "pki-link")
        result = cparchive.write_archive([*paths, str(pki / "ca.key"), str(tmp_path / "pki-link")], buf, strict=False)
    finally:
        sock.close()
    names = [e.path for e in result.entries]
    assert len(names) == len(set(names))
    assert {s.path: s.reason for s in result.skipped} == {
        str(pki / "agent.sock"): "not a regular file, directory or symlink",
        str(tmp_path / "pki-link" / "agent.sock"): "not a regular file, directory or symlink",
    }
    # The symlinked directory is archived under the name configured, as what it points to.
    assert archived(tmp_path, "pki-link/etcd/server.key") in names
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as tar:
        link = tar.getmember(archived(host, "etc/kubernetes/pki/absolute-inside.crt"))
        assert link.issym() and link.linkname == "ca.crt"
        key = tar.getmember(archived(host, "etc/kubernetes/pki/ca.key"))
        assert stat.S_IMODE(key.mode) == 0o600
    with pytest.raises(ConfigError, match="not found"):
        cparchive.write_archive([str(host / "nope")], io.BytesIO(), strict=True)


def test_what_is_on_disk_below_the_target_is_checked_before_writing(tmp_path: Path) -> None:
    from etcd_backup import cparchive
    from etcd_backup.errors import UnsafeError

    host = tmp_path / "host"
    paths = make_host(host)
    archive = tmp_path / "files.tar"
    with open(archive, "wb") as fh:
        cparchive.write_archive(paths, fh, strict=True)
    top = archived(host, "etc").split("/")[0]  # the first component below the target

    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / top).write_text("a file where a directory must go\n")
    with pytest.raises(UnsafeError, match="is not a directory"):
        cparchive.plan(archive, blocked, force=True, what="t")

    escaping = tmp_path / "escaping"
    escaping.mkdir()
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", escaping / top)
    with pytest.raises(UnsafeError, match="leads outside"):
        cparchive.plan(archive, escaping, force=True, what="t")
    assert list((tmp_path / "elsewhere").iterdir()) == []

    # Unrelated files beside them stay; existing directories keep their mode.
    merged = tmp_path / "merged"
    (merged / "unrelated").mkdir(parents=True)
    (merged / "unrelated" / "note").write_text("mine\n")
    pki = merged / archived(host, "etc/kubernetes/pki")
    pki.mkdir(parents=True, mode=0o700)
    pki.chmod(0o700)
    cparchive.extract(cparchive.plan(archive, merged, force=False, what="t"))
    assert (merged / "unrelated" / "note").read_text() == "mine\n"
    assert mode(pki) == 0o700 and mode(pki / "ca.key") == 0o600 and mode(pki / "etcd") == 0o750


def test_verify_proves_the_files_object_and_names_it_when_damaged(etcd_single: Cluster, tmp_path: Path) -> None:
    host = tmp_path / "host"
    paths = make_host(host)
    store = tmp_path / "store"
    env = files_env(etcd_single, f"file://{store}", paths, files__allow_unencrypted="true")
    m, _ = snapshot(env)
    out = json.loads(cli(env, "verify", m["id"], "--output", "json").stdout)
    assert out["ok"] is True and out["files"] == {
        "ok": True,
        "object_key": m["files"]["object_key"],
        "count": m["files"]["count"],
    }
    assert "control-plane files ok" in cli(env, "verify", m["id"]).stdout

    stored = store / m["files"]["object_key"]
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.chmod(0o600)
    stored.write_bytes(bytes(data))
    r = cli(env, "verify", m["id"], expect=3)
    one_error_line(r, "control-plane files of snapshot", m["id"], "SHA-256")
