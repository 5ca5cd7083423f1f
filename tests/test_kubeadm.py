"""kubeadm discovery: static pod manifests in the shapes kubeadm versions write, malformed ones,
the configuration keys they fill (explicit keys win), and a snapshot of a real TLS etcd that is
described by nothing but such a manifest."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import ROOT, Cluster, ClusterFactory, TLSFiles, clean_env, run_cli
from etcd_backup import config, kubeadm
from etcd_backup.errors import ConfigError
from etcd_backup.etcdproc import free_port

pytestmark = pytest.mark.timeout(120)

PKI = "/etc/kubernetes/pki/etcd"

# kubeadm 1.10-1.12: etcd on loopback only, an etcdctl exec probe (its `[127.0.0.1]` is not ours to read).
KUBEADM_1_10 = """\
apiVersion: v1
kind: Pod
metadata:
  annotations:
    scheduler.alpha.kubernetes.io/critical-pod: ""
  creationTimestamp: null
  labels:
    component: etcd
    tier: control-plane
  name: etcd
  namespace: kube-system
spec:
  containers:
  - command:
    - etcd
    - --advertise-client-urls={adv}
    - --cert-file={cert}
    - --client-cert-auth=true
    - --data-dir=/var/lib/etcd
    - --initial-advertise-peer-urls=https://127.0.0.1:2380
    - --initial-cluster=cp-1=https://127.0.0.1:2380
    - --key-file={key}
    - --listen-client-urls={listen}
    - --listen-peer-urls=https://127.0.0.1:2380
    - --name=cp-1
    - --peer-cert-file=/etc/kubernetes/pki/etcd/peer.crt
    - --peer-client-cert-auth=true
    - --peer-key-file=/etc/kubernetes/pki/etcd/peer.key
    - --peer-trusted-ca-file=/etc/kubernetes/pki/etcd/ca.crt
    - --snapshot-count=10000
    - --trusted-ca-file={ca}
    image: k8s.gcr.io/etcd-amd64:3.2.18
    imagePullPolicy: IfNotPresent
    livenessProbe:
      exec:
        command:
        - /bin/sh
        - -ec
        - ETCDCTL_API=3 etcdctl --endpoints=https://[127.0.0.1]:2379 --cacert=/etc/kubernetes/pki/etcd/ca.crt
          --cert=/etc/kubernetes/pki/etcd/healthcheck-client.crt --key=/etc/kubernetes/pki/etcd/healthcheck-client.key
          get foo
      failureThreshold: 8
      initialDelaySeconds: 15
      timeoutSeconds: 15
    name: etcd
    resources: {{}}
    volumeMounts:
    - mountPath: /var/lib/etcd
      name: etcd-data
    - mountPath: /etc/kubernetes/pki/etcd
      name: etcd-certs
  hostNetwork: true
  priorityClassName: system-cluster-critical
  volumes:
  - hostPath:
      path: /var/lib/etcd
      type: DirectoryOrCreate
    name: etcd-data
  - hostPath:
      path: /etc/kubernetes/pki/etcd
      type: DirectoryOrCreate
    name: etcd-certs
status: {{}}
"""

# kubeadm 1.22-1.31: the advertise annotation, metrics URL, httpGet and startup probes, seccomp.
KUBEADM_1_29 = """\
apiVersion: v1
kind: Pod
metadata:
  annotations:
    kubeadm.kubernetes.io/etcd.advertise-client-urls: {adv}
  creationTimestamp: null
  labels:
    component: etcd
    tier: control-plane
  name: etcd
  namespace: kube-system
spec:
  containers:
  - command:
    - etcd
    - --advertise-client-urls={adv}
    - --cert-file={cert}
    - --client-cert-auth=true
    - --data-dir=/var/lib/etcd
    - --experimental-initial-corrupt-check=true
    - --experimental-watch-progress-notify-interval=5s
    - --initial-advertise-peer-urls=https://10.0.0.1:2380
    - --initial-cluster=cp-1=https://10.0.0.1:2380
    - --key-file={key}
    - --listen-client-urls={listen}
    - --listen-metrics-urls=http://127.0.0.1:2381
    - --listen-peer-urls=https://10.0.0.1:2380
    - --name=cp-1
    - --peer-cert-file=/etc/kubernetes/pki/etcd/peer.crt
    - --peer-client-cert-auth=true
    - --peer-key-file=/etc/kubernetes/pki/etcd/peer.key
    - --peer-trusted-ca-file=/etc/kubernetes/pki/etcd/ca.crt
    - --snapshot-count=10000
    - --trusted-ca-file={ca}
    image: registry.k8s.io/etcd:3.5.12-0
    imagePullPolicy: IfNotPresent
    livenessProbe:
      failureThreshold: 8
      httpGet:
        host: 127.0.0.1
        path: /health?exclude=NOSPACE&serializable=true
        port: 2381
        scheme: HTTP
      initialDelaySeconds: 10
      periodSeconds: 10
      timeoutSeconds: 15
    name: etcd
    resources:
      requests:
        cpu: 100m
        memory: 100Mi
    startupProbe:
      failureThreshold: 24
      httpGet:
        host: 127.0.0.1
        path: /health?serializable=false
        port: 2381
        scheme: HTTP
      initialDelaySeconds: 10
      periodSeconds: 10
      timeoutSeconds: 15
    volumeMounts:
    - mountPath: /var/lib/etcd
      name: etcd-data
    - mountPath: /etc/kubernetes/pki/etcd
      name: etcd-certs
  hostNetwork: true
  priority: 2000001000
  priorityClassName: system-node-critical
  securityContext:
    seccompProfile:
      type: RuntimeDefault
  volumes:
  - hostPath:
      path: /etc/kubernetes/pki/etcd
      type: DirectoryOrCreate
    name: etcd-certs
  - hostPath:
      path: /var/lib/etcd
      type: DirectoryOrCreate
    name: etcd-data
status: {{}}
"""

# Not kubeadm's own, but common: the program in `command`, its flags in `args` (indented lists).
COMMAND_AND_ARGS = """\
apiVersion: v1
kind: Pod
metadata:
  name: etcd
  namespace: kube-system
spec:
  hostNetwork: true
  containers:
    - name: etcd
      image: registry.k8s.io/etcd:3.5.15-0
      command: ["/usr/local/bin/etcd"]
      args:
        - --name=cp-1
        - --listen-client-urls={listen}
        - --advertise-client-urls={adv}
        - --trusted-ca-file={ca}
        - --cert-file={cert}
        - --key-file={key}
"""


def render(template: str, **values: str) -> str:
    defaults = {
        "adv": "https://10.0.0.1:2379",
        "listen": "https://127.0.0.1:2379,https://10.0.0.1:2379",
        "ca": f"{PKI}/ca.crt",
        "cert": f"{PKI}/server.crt",
        "key": f"{PKI}/server.key",
    }
    return template.format(**{**defaults, **values})


@pytest.mark.parametrize("template", [KUBEADM_1_10, KUBEADM_1_29, COMMAND_AND_ARGS], ids=["1.10", "1.29", "args"])
def test_kubeadm_shapes(template: str) -> None:
    flags = kubeadm.parse(render(template), "etcd.yaml")
    assert flags.client_urls == ("https://10.0.0.1:2379",)
    assert flags.client_urls_flag == "advertise-client-urls"
    assert (flags.trusted_ca_file, flags.cert_file, flags.key_file) == (
        f"{PKI}/ca.crt",
        f"{PKI}/server.crt",
        f"{PKI}/server.key",
    )
    assert kubeadm.settings(flags, "etcd.yaml", explicit=set()) == {
        "endpoints": ["https://10.0.0.1:2379"],
        "cacert": f"{PKI}/ca.crt",
        "cert": f"{PKI}/server.crt",
        "key": f"{PKI}/server.key",
    }


def test_loopback_only_kubeadm_1_10() -> None:
    text = render(KUBEADM_1_10, adv="https://127.0.0.1:2379", listen="https://127.0.0.1:2379")
    assert kubeadm.parse(text, "etcd.yaml").client_urls == ("https://127.0.0.1:2379",)


def test_ipv6_control_plane() -> None:
    text = render(KUBEADM_1_29, adv="https://[fd00:10::1]:2379", listen="https://[::1]:2379,https://[fd00:10::1]:2379")
    assert kubeadm.parse(text, "etcd.yaml").client_urls == ("https://[fd00:10::1]:2379",)


def test_several_advertised_urls_are_all_endpoints_of_this_member() -> None:
    text = render(KUBEADM_1_29, adv="https://10.0.0.1:2379,https://cp-1.example.internal:2379")
    assert kubeadm.parse(text, "etcd.yaml").client_urls == (
        "https://10.0.0.1:2379",
        "https://cp-1.example.internal:2379",
    )


def test_listen_urls_when_nothing_is_advertised() -> None:
    text = render(COMMAND_AND_ARGS).replace("        - --advertise-client-urls=https://10.0.0.1:2379\n", "")
    flags = kubeadm.parse(text, "etcd.yaml")
    assert flags.client_urls == ("https://127.0.0.1:2379", "https://10.0.0.1:2379")
    assert flags.client_urls_flag == "listen-client-urls"


def test_wildcard_listen_urls_are_dialled_on_loopback() -> None:
    text = render(COMMAND_AND_ARGS, listen="https://0.0.0.0:2379, https://[::]:2379").replace(
        "        - --advertise-client-urls=https://10.0.0.1:2379\n", ""
    )
    assert kubeadm.parse(text, "etcd.yaml").client_urls == ("https://127.0.0.1:2379", "https://[::1]:2379")


def test_json_manifest_flags_as_separate_arguments_last_one_wins() -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "spec": {
            "containers": [
                {"name": "etcd-backup", "args": ["run"]},
                {
                    "name": "etcd",
                    "command": ["etcd", "--cert-file", "/old.crt", "-cert-file=/new.crt", "--key-file", "/k.key"],
                    "args": ["--trusted-ca-file", "/ca.crt", "--advertise-client-urls", "https://10.0.0.1:2379"],
                },
            ]
        },
    }
    flags = kubeadm.parse(json.dumps(pod), "etcd.json")
    assert (flags.cert_file, flags.key_file, flags.trusted_ca_file) == ("/new.crt", "/k.key", "/ca.crt")
    assert flags.client_urls == ("https://10.0.0.1:2379",)


def test_shell_wrapped_command_and_unnamed_container() -> None:
    pod = {
        "kind": "Pod",
        "spec": {
            "containers": [
                {
                    "name": "main",
                    "command": ["etcd"],
                    "args": ["--advertise-client-urls=http://10.0.0.1:2379"],
                },
            ]
        },
    }
    assert kubeadm.parse(json.dumps(pod), "p").client_urls == ("http://10.0.0.1:2379",)
    wrapped = {
        "kind": "Pod",
        "spec": {
            "containers": [
                {"name": "etcd", "command": ["/bin/sh", "-c", "exec etcd --advertise-client-urls=http://10.0.0.1:2379"]}
            ]
        },
    }
    assert kubeadm.parse(json.dumps(wrapped), "p").client_urls == ("http://10.0.0.1:2379",)


def test_plain_http_etcd_needs_no_tls_flags() -> None:
    text = "kind: Pod\nspec:\n  containers:\n  - name: etcd\n    command: [etcd, --listen-client-urls=http://127.0.0.1:2379]\n"
    flags = kubeadm.parse(text, "p")
    assert kubeadm.settings(flags, "p", explicit=set()) == {"endpoints": ["http://127.0.0.1:2379"]}


def test_the_sidecar_example_describes_its_own_etcd() -> None:
    flags = kubeadm.parse((ROOT / "config" / "kubernetes" / "etcd-sidecar.yaml").read_text(), "etcd-sidecar.yaml")
    assert flags.client_urls == ("https://10.0.0.1:2379",)
    assert flags.cert_file == f"{PKI}/server.crt" and flags.trusted_ca_file == f"{PKI}/ca.crt"


def without(template: str, flag: str) -> str:
    return "\n".join(line for line in render(template).splitlines() if f"--{flag}=" not in line) + "\n"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("spec: [unclosed\n", "not valid YAML (line "),
        ("kind: Pod\nspec:\n\tcontainers: []\n", "not valid YAML"),
        ("- etcd\n- --cert-file=x\n", "not a Pod manifest"),
        ("", "not a Pod manifest"),
        ("apiVersion: apps/v1\nkind: Deployment\nspec: {}\n", "not a Pod manifest"),
        ("kind: Pod\nspec:\n  containers: []\n", "no spec.containers"),
        ("kind: Pod\nspec:\n  containers:\n  - name: kube-apiserver\n    command: [kube-apiserver]\n", "no container"),
        ("kind: Pod\nspec:\n  containers:\n  - name: etcd\n    image: etcd\n", "no command or args"),
        ("kind: Pod\nspec:\n  containers:\n  - name: etcd\n    command: etcd --name=x\n", "not a list of strings"),
        ("kind: Pod\nspec:\n  containers:\n  - name: etcd\n    command: [etcd, 2379]\n", "not a list of strings"),
        (without(KUBEADM_1_29, "advertise-client-urls").replace("--listen-client-urls", "--x"), "no --advertise"),
        (render(KUBEADM_1_29, adv="10.0.0.1:2379"), "--advertise-client-urls: '10.0.0.1:2379' is not an http"),
        (render(KUBEADM_1_29, adv="https://10.0.0.1:99999"), "has a bad port"),
        (render(COMMAND_AND_ARGS, adv=","), "--advertise-client-urls names no URL"),
    ],
)
def test_malformed_manifests(text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        kubeadm.parse(text, "/etc/kubernetes/manifests/etcd.yaml")
    message = str(err.value)
    assert f"{kubeadm.KEY}: /etc/kubernetes/manifests/etcd.yaml: " in message and needle in message, message
    assert "\n" not in message and err.value.exit_code == 2


@pytest.mark.parametrize("flag", ["trusted-ca-file", "cert-file", "key-file"])
def test_missing_tls_flag_is_named(flag: str) -> None:
    flags = kubeadm.parse(without(KUBEADM_1_29, flag), "m.yaml")
    with pytest.raises(ConfigError, match=f"m.yaml: the etcd container has no --{flag}$"):
        kubeadm.settings(flags, "m.yaml", explicit=set())


# --- as configuration -------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _no_ambient_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in list(os.environ):
        if k.startswith("ETCD_BACKUP_"):
            monkeypatch.delenv(k)


def write_manifest(path: Path, tls: TLSFiles, template: str = KUBEADM_1_29, **values: str) -> Path:
    path.write_text(render(template, **{"ca": tls.ca, "cert": tls.server_cert, "key": tls.server_key, **values}))
    return path


def test_config_takes_endpoint_and_server_tls_from_the_manifest(
    tmp_path: Path, tls_files: TLSFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = write_manifest(tmp_path / "etcd.yaml", tls_files)
    monkeypatch.setenv("ETCD_BACKUP_ETCD__KUBEADM_MANIFEST", str(manifest))
    etcd = config.load(None).etcd
    assert etcd.endpoints == ["https://10.0.0.1:2379"]
    assert (etcd.cacert, etcd.cert, etcd.key) == (tls_files.ca, tls_files.server_cert, tls_files.server_key)
    assert etcd.kubeadm_manifest == str(manifest)


def test_explicit_keys_win(tmp_path: Path, tls_files: TLSFiles, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = write_manifest(tmp_path / "etcd.yaml", tls_files)
    conf = tmp_path / "c.toml"
    conf.write_text(
        f'[etcd]\nkubeadm_manifest = "{manifest}"\ncert = "{tls_files.client_cert}"\nkey = "{tls_files.client_key}"\n'
    )
    monkeypatch.setenv("ETCD_BACKUP_ETCD__ENDPOINTS", "https://127.0.0.1:2379")
    etcd = config.load(str(conf)).etcd
    assert etcd.endpoints == ["https://127.0.0.1:2379"]
    assert (etcd.cert, etcd.key) == (tls_files.client_cert, tls_files.client_key)
    assert etcd.cacert == tls_files.ca  # not set explicitly: from --trusted-ca-file


def test_explicit_tls_keys_cover_flags_the_manifest_lacks(
    tmp_path: Path, tls_files: TLSFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = tmp_path / "etcd.yaml"
    manifest.write_text(without(KUBEADM_1_29, "key-file").replace(f"{PKI}/ca.crt", tls_files.ca))
    monkeypatch.setenv("ETCD_BACKUP_ETCD__KUBEADM_MANIFEST", str(manifest))
    monkeypatch.setenv("ETCD_BACKUP_ETCD__CERT", tls_files.client_cert)
    monkeypatch.setenv("ETCD_BACKUP_ETCD__KEY", tls_files.client_key)
    etcd = config.load(None).etcd
    assert etcd.key == tls_files.client_key and etcd.cacert == tls_files.ca


def test_cert_without_key_is_not_mixed_with_the_server_key(
    tmp_path: Path, tls_files: TLSFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ETCD_BACKUP_ETCD__KUBEADM_MANIFEST", str(write_manifest(tmp_path / "etcd.yaml", tls_files)))
    monkeypatch.setenv("ETCD_BACKUP_ETCD__CERT", tls_files.client_cert)
    with pytest.raises(ConfigError, match="cert and key must be set together"):
        config.load(None)


def test_no_manifest_configured_changes_nothing(tmp_path: Path) -> None:
    assert config.load(None).etcd.endpoints == ["http://127.0.0.1:2379"]
    assert config.load(None).etcd.kubeadm_manifest is None


@pytest.mark.parametrize(
    ("setup", "needle"),
    [
        ("missing", "etcd.yaml: file not found"),
        ("directory", "etcd.yaml: cannot read"),
        ("no-ca-flag", "etcd.yaml: the etcd container has no --trusted-ca-file"),
        ("ca-file-gone", "etcd.yaml: --trusted-ca-file=/etc/kubernetes/pki/etcd/ca.crt: file not found"),
        ("garbage", "etcd.yaml: not valid YAML"),
    ],
)
def test_bad_manifest_is_exit_2_with_one_line(tmp_path: Path, tls_files: TLSFiles, setup: str, needle: str) -> None:
    manifest = tmp_path / "etcd.yaml"
    if setup == "directory":
        manifest.mkdir()
    elif setup == "no-ca-flag":
        manifest.write_text(without(KUBEADM_1_29, "trusted-ca-file"))
    elif setup == "ca-file-gone":
        write_manifest(manifest, tls_files, ca=f"{PKI}/ca.crt")
    elif setup == "garbage":
        manifest.write_text("spec:\n  containers:\n  - command: [etcd\n")
    r = run_cli("list", env=clean_env(ETCD_BACKUP_ETCD__KUBEADM_MANIFEST=str(manifest)), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "etcd.kubeadm_manifest" in lines[0] and needle in lines[0], r.stderr


def test_reference_config_shows_the_key() -> None:
    text = (ROOT / "config" / "config.toml").read_text()
    assert '# kubeadm_manifest = "/etc/kubernetes/manifests/etcd.yaml"' in text
    assert "`kubeadm_manifest`" in (ROOT / "README.md").read_text()


# --- end to end -------------------------------------------------------------------------------


def test_snapshot_of_tls_etcd_described_only_by_its_manifest(
    etcd_cluster: ClusterFactory, tls_files: TLSFiles, tmp_path: Path
) -> None:
    cluster: Cluster = etcd_cluster(1, tls=tls_files)
    for i in range(20):
        cluster.put(f"/registry/pods/default/p{i}", f"v{i}")
    url = cluster.endpoints[0]
    manifest = write_manifest(
        tmp_path / "etcd.yaml", tls_files, adv=url, listen=f"{url},https://127.0.0.1:{free_port()}"
    )
    env = clean_env(
        ETCD_BACKUP_ETCD__KUBEADM_MANIFEST=str(manifest), ETCD_BACKUP_STORAGE__URL=f"file://{tmp_path}/store"
    )
    r = run_cli("snapshot", "--output", "json", env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["endpoint"] == url and m["keys"] == 20
    assert m["verification"]["hash"]["ok"] and m["verification"]["structure"]["ok"]
