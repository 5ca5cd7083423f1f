"""Secrets never leave the process; files holding snapshots are private; TLS is verified.

Every output of every command here (successful, failing, with --debug) and every manifest in the
bucket is searched for the AWS secret key, the etcd password, the bearer token and the age private
keys; the daemon's log, metrics and HTTP answers for the age private key.
"""

from __future__ import annotations

import json
import secrets
import stat
from pathlib import Path

import pytest
from faultkit import fill, popen_cli, s3_env, s3_proxy, spool_files, wait_for

from conftest import AWS_ENV, AgeTool, Bucket, Cluster, DaemonFactory, config_env, run_cli
from faultproxy import Rule, upload_part

pytestmark = pytest.mark.timeout(180)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _age_secret(identity: Path) -> str:
    return next(line for line in identity.read_text().splitlines() if line.startswith("AGE-SECRET-KEY-1"))


def test_secrets_never_in_output_or_manifests(
    etcd_single: Cluster, s3_bucket: Bucket, tmp_path: Path, age_tool: AgeTool
) -> None:
    password = f"Etcd-PW-{secrets.token_hex(8)}"  # mixed case: a resolver lowercases a host name
    wrong_password = f"not-it-{secrets.token_hex(8)}"
    token = f"bearer-{secrets.token_hex(16)}"
    identity, wrong_identity = tmp_path / "age.key", tmp_path / "wrong.key"
    recipient = age_tool.new_identity(identity)
    age_tool.new_identity(wrong_identity)
    age_secret, wrong_age_secret = _age_secret(identity), _age_secret(wrong_identity)
    secret_values = [password, wrong_password, token, AWS_ENV["AWS_SECRET_ACCESS_KEY"], age_secret, wrong_age_secret]
    secret_values += [password.lower(), password[8:]]  # lowercased, or its random part alone
    # The key's body without its prefix, in case something printed it in another case or cut up.
    secret_values += [age_secret[len("AGE-SECRET-KEY-1") :].lower(), age_secret[20:50]]
    for i in range(10):
        etcd_single.put(f"/s/{i}", "v")
    etcd_single.etcdctl("user", "add", f"root:{password}", "--interactive=false")
    etcd_single.etcdctl("auth", "enable")
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    proxy = s3_proxy(s3_bucket)
    env = s3_env(
        etcd_single,
        s3_bucket,
        tmp_path / "spool",
        proxy.url,
        storage__timeout="2s",
        etcd__username="root",
        etcd__password=password,
        server__token_file=str(token_file),
        encryption__recipients=recipient,
        encryption__identity_file=str(identity),
    )
    outputs: list[str] = []

    def run(*args: str, expect: int, **overrides: str | None) -> None:
        e = dict(env)
        for k, v in overrides.items():
            e.pop(f"ETCD_BACKUP_{k.upper()}", None)
            if v is not None:
                e[f"ETCD_BACKUP_{k.upper()}"] = v
        r = run_cli(*args, env=e)
        outputs.extend([r.stdout, r.stderr])
        assert r.returncode == expect, f"{args}: {r.stderr[-1500:]}"

    try:
        run("snapshot", "--output", "json", expect=0)
        run("snapshot", "--debug", expect=0)
        run("list", expect=0)
        run("list", "--output", "json", "--debug", expect=0)
        run("verify", "latest", expect=0)
        run("fetch", "latest", "--to", str(tmp_path / "fetched.db"), expect=0)
        # Failing: etcd refuses the password, S3 is gone, the configuration is wrong.
        run("snapshot", expect=1, etcd__password=wrong_password)
        run("snapshot", "--debug", expect=1, etcd__password=wrong_password)
        proxy.go_away()
        run("snapshot", "--debug", expect=1)
        run("list", expect=1)
        proxy.come_back()
        run("snapshot", expect=2, etcd__username=None)
        run("snapshot", expect=2, etcd__dial_timeout=password)
        # Secrets pasted into keys whose errors quote their value, or that reach a resolver.
        run("snapshot", expect=2, etcd__kubeadm_manifest=password)
        run("snapshot", expect=1, etcd__endpoints=password, etcd__dial_timeout="1s")
        run("list", expect=2, storage__endpoint_url=token)
        run("list", expect=2, server__listen=token)
        run("list", expect=2, encryption__recipients=password)
        run("fetch", "latest", "--to", str(tmp_path / "nowhere" / "x.db"), expect=2, server__token_file="/no/such")
        # Encrypted snapshots with the wrong key, and private keys pasted where they do not belong.
        run("verify", "latest", expect=2, encryption__identity_file=str(wrong_identity))
        run("verify", "latest", "--debug", expect=2, encryption__identity_file=str(wrong_identity))
        run("snapshot", "--debug", expect=2, encryption__recipients=age_secret)
        run("list", "--debug", expect=2, encryption__identity_file=age_secret)
        run("list", expect=2, encryption__recipients=f"{recipient},{wrong_age_secret}")
    finally:
        proxy.close()
    assert "authentication failed" in "".join(outputs)  # the wrong password was really tried
    assert f"encrypted to {recipient}" in "".join(outputs)  # the wrong key was really tried
    stored = s3_bucket.keys()
    manifests = [k for k in stored if k.endswith(".json")]
    assert len(manifests) == 2
    client = s3_bucket.server.client()
    bodies = [client.get_object(Bucket=s3_bucket.name, Key=k)["Body"].read().decode() for k in manifests]
    for text in outputs + bodies:
        for value in secret_values:
            assert value not in text, f"a secret leaked into: {text[:3000]}"


def test_spool_and_fetched_files_are_private_whatever_the_umask(
    etcd_single: Cluster, s3_bucket: Bucket, tmp_path: Path
) -> None:
    fill(etcd_single, 6)
    proxy = s3_proxy(s3_bucket)
    proxy.add_rule(Rule("hold", match=upload_part, count=1))  # keeps the spool file around to look at
    spool = tmp_path / "spool"
    env = s3_env(etcd_single, s3_bucket, spool, proxy.url, storage__part_size="5MiB")
    try:
        p = popen_cli("snapshot", "--output", "json", env=env, umask=0)
        wait_for("the upload of the first part", lambda: proxy.actions("hold"), timeout=60)
        files = spool_files(spool)
        assert len(files) == 1 and files[0].name.endswith(".spool"), files
        assert _mode(files[0]) == 0o600
        assert _mode(spool) & 0o077 == 0  # a spool directory we create is ours alone
        proxy.release()
        out, err = p.communicate(timeout=120)
    finally:
        proxy.close()
    assert p.returncode == 0, err
    m = json.loads(out)

    dest = tmp_path / "out" / "snap.db"
    f = popen_cli(
        "fetch",
        m["id"],
        "--to",
        str(dest),
        env={**env, "ETCD_BACKUP_STORAGE__ENDPOINT_URL": s3_bucket.server.endpoint},
        umask=0,
    )
    _, err = f.communicate(timeout=120)
    assert f.returncode == 0, err
    assert _mode(dest) == 0o600
    assert [x.name for x in dest.parent.iterdir()] == ["snap.db"]

    # A directory store: data object and manifest are 0600 as well.
    d = popen_cli("snapshot", "--output", "json", env=config_env(etcd_single, f"file://{tmp_path}/store"), umask=0)
    out, err = d.communicate(timeout=120)
    assert d.returncode == 0, err
    m = json.loads(out)
    assert _mode(tmp_path / "store" / m["object_key"]) == 0o600
    assert _mode(tmp_path / "store" / "snapshots" / f"{m['id']}.json") == 0o600


def test_s3_tls_verification_off_is_logged_loudly(s3_bucket: Bucket, tmp_path: Path) -> None:
    env = s3_env(None, s3_bucket, tmp_path / "spool", storage__insecure_skip_tls_verify="true")
    r = run_cli("list", "--output", "json", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == []
    # One-shot commands log nothing by default: this warning is printed all the same.
    assert "etcd-backup: warning: TLS verification of the S3 endpoint is OFF" in r.stderr
    r = run_cli("list", env=s3_env(None, s3_bucket, tmp_path / "spool"))
    assert "TLS verification" not in r.stderr


def test_age_identity_never_in_daemon_logs_metrics_or_http(
    etcd_single: Cluster, tmp_path: Path, age_tool: AgeTool, start_daemon: DaemonFactory
) -> None:
    identity = tmp_path / "age.key"
    recipient = age_tool.new_identity(identity)
    secret = _age_secret(identity)
    token = f"bearer-{secrets.token_hex(16)}"
    (tmp_path / "token").write_text(token)
    env = config_env(
        etcd_single,
        f"file://{tmp_path}/store",
        encryption__recipients=recipient,
        encryption__identity_file=str(identity),
        verify__restore_drill="1s",
        server__token_file=str(tmp_path / "token"),
        log__level="debug",
    )
    daemon = start_daemon(env)

    def drilled() -> bool:
        status, listed = daemon.get_json("/v1/snapshots")
        return status == 200 and bool(listed) and (listed[0]["verification"]["drill"] or {}).get("ok") is True

    daemon.wait_until(drilled, 90, "a restore drill of an encrypted snapshot")
    status, body = daemon.request(
        "POST", "/v1/snapshots", b'{"reason": "hygiene"}', {"Authorization": f"Bearer {token}"}, timeout=120
    )
    assert status == 201, body
    answers = [body] + [daemon.request("GET", path)[1] for path in ("/v1/snapshots", "/metrics", "/readyz", "/healthz")]
    assert json.loads(answers[1])[0]["encryption"]["recipients"] == [recipient]
    daemon.terminate()
    texts = [a.decode() for a in answers] + [daemon.log_path.read_text(errors="replace")]
    texts += [p.read_text() for p in (tmp_path / "store" / "snapshots").glob("*.json")]
    for text in texts:
        assert secret not in text and secret[20:50] not in text and secret.lower() not in text, text[:3000]
