"""Configuration: file, environment overrides, defaults, and one-line errors naming the key."""

from __future__ import annotations

from pathlib import Path

import botocore
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import AgeTool, TLSFiles, clean_env, run_cli
from etcd_backup import config, units
from etcd_backup.errors import ConfigError

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def _no_ambient_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in list(__import__("os").environ):
        if k.startswith("ETCD_BACKUP_"):
            monkeypatch.delenv(k)


def test_defaults_work_on_a_laptop() -> None:
    cfg = config.load(None)
    assert cfg.etcd.endpoints == ["http://127.0.0.1:2379"]
    assert cfg.storage.url == "file://./etcd-backups"
    assert cfg.schedule.interval == 1800
    assert cfg.retention.keep_last == 10
    assert cfg.server.listen == "127.0.0.1:9479"


def test_file_then_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "c.toml"
    f.write_text(
        '[etcd]\nendpoints = ["http://a:1", "http://b:2"]\n[retention]\nkeep_last = 3\ndaily = 2\n'
        '[storage]\nurl = "s3://bkt/pre"\npart_size = "16MiB"\n[verify]\nrestore_drill = "off"\n'
    )
    monkeypatch.setenv("ETCD_BACKUP_RETENTION__DAILY", "9")
    monkeypatch.setenv("ETCD_BACKUP_SCHEDULE__INTERVAL", "1h30m")
    cfg = config.load(str(f))
    assert cfg.etcd.endpoints == ["http://a:1", "http://b:2"]
    assert cfg.retention.keep_last == 3 and cfg.retention.daily == 9
    assert cfg.storage.part_size == 16 * 1024 * 1024
    assert cfg.schedule.interval == 5400
    assert cfg.verify.restore_drill is None


def test_env_lists_are_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ETCD_BACKUP_ETCD__ENDPOINTS", "https://10.0.0.1:2379, https://10.0.0.2:2379")
    assert config.load(None).etcd.endpoints == ["https://10.0.0.1:2379", "https://10.0.0.2:2379"]


def test_config_path_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "c.toml"
    f.write_text("[retention]\nkeep_last = 7\n")
    monkeypatch.setenv("ETCD_BACKUP_CONFIG", str(f))
    assert config.load(None).retention.keep_last == 7


# A real CA bundle that is on every machine the suite runs on (botocore ships one).
A_CA_BUNDLE = str(Path(botocore.__file__).parent / "cacert.pem")


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        ("[retention]\nkeep_last = 0\n", "retention.keep_last"),
        ("[retention]\nkeep_lastt = 3\n", "retention.keep_lastt: unknown key"),
        ("[nosuchsection]\nx = 1\n", "nosuchsection"),
        ('[schedule]\ncron = "0 0 31 2 *"\n', "never fires"),
        ('[schedule]\ncron = "not a cron"\n', "schedule.cron"),
        ('[schedule]\ninterval = "5 fortnights"\n', "schedule.interval"),
        ('[etcd]\ncacert = "/does/not/exist.crt"\n', "/does/not/exist.crt"),
        ('[etcd]\ncert = "/etc/hostname"\n', "etcd.cert: /etc/hostname holds no PEM certificate"),
        ('[etcd]\ncacert = "/etc/hostname"\n', "etcd.cacert: /etc/hostname holds no PEM certificate"),
        ("[retention]\nkeep_last = true\n", "retention.keep_last"),  # not 1
        ('[retention]\nkeep_last = "3"\n', "retention.keep_last"),
        ('[schedule]\non_member_change = "yes"\n', "schedule.on_member_change"),
        ('[storage]\nendpoint_url = "notaurl"\n', "storage.endpoint_url: 'notaurl' is not an S3 endpoint"),
        ('[storage]\nendpoint_url = "ftp://127.0.0.1:1"\n', "storage.endpoint_url"),
        ('[tools]\netcdutl = "/no/etcdutl"\n', "tools.etcdutl: /no/etcdutl: no executable file there"),
        ('[schedule]\ninterval = "5m"\njitter = "5m"\n', "jitter 300s must be shorter than the schedule's period"),
        ('[storage]\nurl = "ftp://x"\n', "storage.url"),
        ('[storage]\npart_size = "1KiB"\n', "storage.part_size"),
        ('[storage]\nconcurrency = "lots"\n', "storage.concurrency"),
        ('[storage]\naddressing_style = "sideways"\n', "storage.addressing_style"),
        ('[storage]\nchecksum = "crc64"\n', "storage.checksum"),
        ('[storage]\nobject_lock = "governance"\n', "needs an s3:// store"),
        ('[storage]\nobject_lock = "forever"\n', "storage.object_lock"),
        ('[storage]\nca_file = "/no/ca.crt"\n', "/no/ca.crt"),
        ('[storage]\nca_file = "/etc/hostname"\n', "storage.ca_file: /etc/hostname holds no PEM certificate"),
        (f'[storage]\nca_file = "{A_CA_BUNDLE}"\ninsecure_skip_tls_verify = true\n', "contradict"),
        ('[storage]\ncopy_to = "ftp://x"\n', "storage.copy_to"),
        ('[storage]\nurl = "s3://b/etcd"\ncopy_to = "s3://b/etcd/copy"\n', "copy_to 's3://b/etcd/copy' overlaps"),
        ('[storage]\nurl = "file:///srv/a"\ncopy_to = "file:///srv"\n', "overlaps url"),
        ('[storage]\ncopy_region = "eu-west-1"\n', "copy_region is set but copy_to is not"),
        ('[server]\ntoken_file = "/no/token"\n', "/no/token"),
        ('[log]\nlevel = "verbose"\n', "log.level"),
        ("[retention\n", "not valid TOML"),
        ("[retention]\nkeep_last = 99999999999999999999999\n", "retention.keep_last"),
        # A duration needs its unit: `30` meant as days would unpin (or unlock) after 30 seconds.
        ("[retention]\nkeep_pinned_for = 30\n", "retention.keep_pinned_for: 30 is not a duration"),
        ('[retention]\nkeep_pinned_for = "30"\n', "retention.keep_pinned_for: '30' has no unit"),
        ("[schedule]\ninterval = 1.5\n", "schedule.interval"),
        ('[delta]\ninterval = "30"\n', "delta.interval: '30' has no unit"),
        ('[verify]\nrestore_drill = "0s"\n', "verify.restore_drill: must be at least 1s"),
        ('[verify]\nrestore_drill = ""\n', "verify.restore_drill: empty"),
    ],
)
def test_bad_config_is_exit_2_with_one_line(tmp_path: Path, toml: str, needle: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(toml)
    r = run_cli("--config", str(f), "list", env=clean_env(), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert needle in lines[0]
    assert "Traceback" not in r.stderr


def test_cert_without_key_is_exit_2(tmp_path: Path, tls_files: TLSFiles) -> None:
    f = tmp_path / "c.toml"
    f.write_text(f'[etcd]\ncert = "{tls_files.client_cert}"\n')
    r = run_cli("--config", str(f), "list", env=clean_env(), cwd=tmp_path)
    assert r.returncode == 2 and "cert and key" in r.stderr, r.stderr


def test_an_environment_value_is_blamed_on_its_variable_not_the_file(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text("[retention]\nkeep_last = 3\n")
    r = run_cli("--config", str(f), "list", env=clean_env(ETCD_BACKUP_RETENTION__KEEP_LAST="0"), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "ETCD_BACKUP_RETENTION__KEEP_LAST: retention.keep_last" in r.stderr and "c.toml" not in r.stderr
    # Text from the environment is converted: "5" is 5 there, and "true" a boolean.
    cfg_env = {"ETCD_BACKUP_RETENTION__KEEP_LAST": "5", "ETCD_BACKUP_SCHEDULE__ON_MEMBER_CHANGE": "false"}
    r = run_cli("--config", str(f), "list", env=clean_env(**cfg_env), cwd=tmp_path)
    assert r.returncode == 0, r.stderr


def test_keys_that_contradict_each_other_are_blamed_on_where_each_came_from(tmp_path: Path) -> None:
    """An error of a whole section names its variables, and the file only when it sets keys there."""
    f = tmp_path / "c.toml"
    f.write_text('[storage]\nurl = "s3://b/etcd"\n')
    r = run_cli(
        "--config", str(f), "list", env=clean_env(ETCD_BACKUP_STORAGE__COPY_TO="s3://b/etcd/copy"), cwd=tmp_path
    )
    assert r.returncode == 2, r.stderr
    assert f"configuration error in {f} and ETCD_BACKUP_STORAGE__COPY_TO: storage: copy_to" in r.stderr, r.stderr
    r = run_cli("--config", str(f), "list", env=clean_env(ETCD_BACKUP_ENCRYPTION__RECIPIENTS=""), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "configuration error in ETCD_BACKUP_ENCRYPTION__RECIPIENTS: encryption:" in r.stderr, r.stderr


def test_kubernetes_service_link_variables_are_not_settings(tmp_path: Path) -> None:
    """A Service named etcd-backup puts these into every pod of its namespace."""
    links = {
        "ETCD_BACKUP_SERVICE_HOST": "10.96.0.12",
        "ETCD_BACKUP_SERVICE_PORT": "9479",
        "ETCD_BACKUP_SERVICE_PORT_METRICS": "9479",
        "ETCD_BACKUP_PORT": "tcp://10.96.0.12:9479",
        "ETCD_BACKUP_PORT_9479_TCP": "tcp://10.96.0.12:9479",
        "ETCD_BACKUP_PORT_9479_TCP_PROTO": "tcp",
        "ETCD_BACKUP_PORT_9479_TCP_PORT": "9479",
        "ETCD_BACKUP_PORT_9479_TCP_ADDR": "10.96.0.12",
    }
    r = run_cli("list", env=clean_env(**links), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = run_cli("list", env=clean_env(**links, ETCD_BACKUP_STORAGE_URL="file:///x"), cwd=tmp_path)
    assert r.returncode == 2 and "ETCD_BACKUP_STORAGE_URL: unknown setting" in r.stderr  # a typo still is


def test_copy_on_another_endpoint_may_use_the_same_bucket_and_prefix() -> None:
    cfg = config.StorageConfig(url="s3://b/etcd", copy_to="s3://b/etcd", copy_endpoint_url="https://elsewhere:9000")
    copy = cfg.copy_storage()
    assert copy is not None and copy.url == "s3://b/etcd" and copy.endpoint_url == "https://elsewhere:9000"
    assert config.StorageConfig().copy_storage() is None


def test_unknown_copy_profile_is_exit_2(tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    credentials.write_text("[other]\naws_access_key_id = x\naws_secret_access_key = y\n")
    env = clean_env(
        ETCD_BACKUP_STORAGE__URL=f"file://{tmp_path}/store",
        ETCD_BACKUP_STORAGE__COPY_TO="s3://b/copy",
        ETCD_BACKUP_STORAGE__COPY_PROFILE="nosuch",
        AWS_SHARED_CREDENTIALS_FILE=str(credentials),
        AWS_CONFIG_FILE=str(tmp_path / "config"),
    )
    r = run_cli("list", "--store", "copy", env=env)
    assert r.returncode == 2, r.stderr
    assert "storage.copy_profile" in r.stderr and "'nosuch'" in r.stderr


def test_misspelt_env_override_is_exit_2() -> None:
    r = run_cli("list", env=clean_env(ETCD_BACKUP_RETENTION__KEEP_LST="3"))
    assert r.returncode == 2
    assert "ETCD_BACKUP_RETENTION__KEEP_LST" in r.stderr


def test_missing_config_file_is_exit_2(tmp_path: Path) -> None:
    r = run_cli("--config", str(tmp_path / "nope.toml"), "list", env=clean_env())
    assert r.returncode == 2
    assert "nope.toml" in r.stderr


def test_usage_error_is_exit_2() -> None:
    r = run_cli("no-such-command", env=clean_env())
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("24h", 86400), ("7d", 604800), ("1h30m", 5400), ("250ms", 0.25), ("0", 0)],
)
def test_durations(text: str, seconds: float) -> None:
    assert config.parse_duration(text) == seconds


def test_counts_read_as_english() -> None:
    assert [units.counted(n, "delta") for n in (0, 1, 2)] == ["0 deltas", "1 delta", "2 deltas"]


@pytest.mark.parametrize("value", ["45", "1.5", 45, 1.5, True])
def test_a_duration_without_its_unit_is_refused(value: object) -> None:
    with pytest.raises(ValueError, match="unit"):
        config.parse_duration(value)


@pytest.mark.parametrize(
    ("variables", "needle"),
    [
        ({"ETCD_BACKUP_ETCD__USERNAME": ""}, "ETCD_BACKUP_ETCD__USERNAME: etcd.username: empty"),
        ({"ETCD_BACKUP_ETCD__USERNAME": "root"}, "username and password must be set together"),
    ],
)
def test_etcd_credentials_half_given_are_a_configuration_error(
    tmp_path: Path, variables: dict[str, str], needle: str
) -> None:
    """An empty user name (an unset template variable) was an "internal error", exit 1."""
    env = {**clean_env(), **variables, "ETCD_BACKUP_STORAGE__URL": f"file://{tmp_path}"}
    r = run_cli("snapshot", env=env, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr and "internal error" not in r.stderr, r.stderr


def test_a_duration_from_the_environment_needs_its_unit_too(tmp_path: Path) -> None:
    env = {
        **clean_env(),
        "ETCD_BACKUP_RETENTION__KEEP_PINNED_FOR": "30",
        "ETCD_BACKUP_STORAGE__URL": f"file://{tmp_path}",
    }
    r = run_cli("prune", "--dry-run", env=env, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "ETCD_BACKUP_RETENTION__KEEP_PINNED_FOR" in r.stderr and "no unit" in r.stderr, r.stderr


@pytest.mark.parametrize(("text", "size"), [("16MiB", 16 * 2**20), ("1GiB", 2**30), ("64M", 64 * 10**6), (1024, 1024)])
def test_sizes(text: str | int, size: int) -> None:
    assert config.parse_size(text) == size


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=30))
def test_duration_parser_never_crashes(text: str) -> None:
    try:
        value = config.parse_duration(text)
    except ValueError:
        return
    assert value >= 0


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["keep_last", "hourly", "daily", "bogus"]),
        st.one_of(st.integers(), st.text(max_size=5), st.booleans(), st.none()),
        max_size=4,
    )
)
def test_retention_section_fuzz_gives_config_error_or_config(
    tmp_path_factory: pytest.TempPathFactory, section: dict[str, object]
) -> None:
    lines = ["[retention]"]
    for k, v in section.items():
        if v is None:
            continue
        lines.append(f"{k} = {_toml_value(v)}")
    f = tmp_path_factory.mktemp("fz") / "c.toml"
    f.write_text("\n".join(lines) + "\n")
    try:
        config.load(str(f))
    except ConfigError as exc:
        assert "\n" not in str(exc)


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    import json

    return json.dumps(v)


def test_reference_config_loads_and_matches_defaults() -> None:
    from conftest import ROOT

    assert config.load(str(ROOT / "config" / "config.toml")) == config.load(None)


# --- [encryption] ------------------------------------------------------------------------------


@pytest.fixture
def age_keys(tmp_path: Path, age_tool: AgeTool) -> tuple[Path, str, str]:
    """An identity file (0600) and two recipients, the first one the identity's."""
    identity = tmp_path / "age.key"
    return identity, age_tool.new_identity(identity), age_tool.new_identity(tmp_path / "other.key")


def test_encryption_recipients_from_env_comma_separated(
    monkeypatch: pytest.MonkeyPatch, age_keys: tuple[Path, str, str]
) -> None:
    _, first, second = age_keys
    assert config.load(None).encryption.enabled is False
    monkeypatch.setenv("ETCD_BACKUP_ENCRYPTION__RECIPIENTS", f"{first}, {second.upper()}")
    enc = config.load(None).encryption
    assert enc.enabled and enc.recipient_list == (first, second) and enc.identities() is None
    monkeypatch.setenv("ETCD_BACKUP_ENCRYPTION__RECIPIENTS", "")  # an unset variable in a template
    with pytest.raises(ConfigError, match="recipients is empty"):
        config.load(None)


def test_encryption_recipients_file_and_identity(tmp_path: Path, age_keys: tuple[Path, str, str]) -> None:
    identity, first, second = age_keys
    rfile = tmp_path / "recipients.txt"
    rfile.write_text(f"# ops\n{second}\n")
    f = tmp_path / "c.toml"
    f.write_text(f'[encryption]\nrecipients_file = "{rfile}"\nidentity_file = "{identity}"\n')
    enc = config.load(str(f)).encryption
    assert enc.recipient_list == (second,)
    keys = enc.identities()
    assert keys is not None and keys.recipients == (first,)
    # An identity alone: new objects are encrypted to its own key, never silently in the clear.
    f.write_text(f'[encryption]\nidentity_file = "{identity}"\n')
    assert config.load(str(f)).encryption.recipient_list == (first,)


@pytest.mark.parametrize(
    ("setting", "needle"),
    [
        ("recipients = ['age1notavalidkey']", "encryption.recipients: entry 1"),
        ("recipients = ['ssh-ed25519 AAAAC3Nz']", "encryption.recipients"),
        ("recipients_file = '/no/recipients.txt'", "encryption.recipients_file: file not found"),
        ("identity_file = '/no/age.key'", "encryption.identity_file: file not found"),
        ("identity_file = '{identity_0644}'", "encryption.identity_file: "),
        ("identity_file = '{not_a_key}'", "encryption.identity_file: "),
        ("recipients = ['{first}']\nrecipients_file = '{rfile}'", "not both"),
        ("recipient = ['{first}']", "encryption.recipient: unknown key"),
        # Given but empty (a template that expanded to nothing): never quietly unencrypted.
        ("recipients = []", "encryption: recipients is empty"),
        ("recipients_file = ''", "encryption: recipients_file is empty"),
    ],
)
def test_bad_encryption_config_is_exit_2_naming_the_key(
    tmp_path: Path, age_keys: tuple[Path, str, str], setting: str, needle: str
) -> None:
    identity, first, _ = age_keys
    open_key = tmp_path / "open.key"
    open_key.write_bytes(identity.read_bytes())
    open_key.chmod(0o644)
    junk = tmp_path / "junk.key"
    junk.write_text("# a key file that holds no key\nhello\n")
    junk.chmod(0o600)
    rfile = tmp_path / "recipients.txt"
    rfile.write_text(first + "\n")
    toml = setting.format(identity_0644=open_key, not_a_key=junk, first=first, rfile=rfile)
    f = tmp_path / "bad.toml"
    f.write_text(f"[encryption]\n{toml}\n")
    r = run_cli("--config", str(f), "list", env=clean_env(), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r.stderr
    if "open.key" in toml:
        assert "readable by group or others" in lines[0] and "chmod 600" in lines[0]


def test_private_key_in_the_wrong_setting_is_never_echoed(age_keys: tuple[Path, str, str]) -> None:
    identity, _, _ = age_keys
    secret = next(x for x in identity.read_text().splitlines() if x.startswith("AGE-SECRET-KEY-1"))
    for name in ("RECIPIENTS", "IDENTITY_FILE", "RECIPIENTS_FILE"):
        r = run_cli("list", env=clean_env(**{f"ETCD_BACKUP_ENCRYPTION__{name}": secret}))
        assert r.returncode == 2, r.stderr
        assert "private key" in r.stderr and secret not in r.stderr and secret[20:40] not in r.stderr
