"""The alerting rules, the PrometheusRule, and the Grafana dashboard: checked and unit-tested by
promtool, runbook links that resolve in the README, and every metric they name exported by a
running daemon."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import ROOT, Cluster, DaemonFactory, config_env

pytestmark = pytest.mark.timeout(120)

RULES = ROOT / "config" / "prometheus" / "etcd-backup.rules.yaml"
PROMETHEUS_RULE = ROOT / "config" / "prometheus" / "etcd-backup.prometheusrule.yaml"
RULE_TESTS = ROOT / "tests" / "prometheus" / "etcd-backup.rules.test.yaml"
DASHBOARD = ROOT / "config" / "grafana" / "etcd-backup.json"
README = ROOT / "README.md"
RUNBOOK_BASE = "https://etcd-backup.example.com/README.md#"


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool missing: apt-get install prometheus (scripts/test.sh installs it)")
    return path


def alerts() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in board["panels"]:
        out.append(p)
        out += p.get("panels", [])  # collapsed rows hold their panels
    return out


def dashboard_queries(board: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in panels(board) for t in p.get("targets", [])]


# --- PromQL metric names ------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<comment>\#[^\n]*)
  | (?P<range>\[[^\]]*\])
  | (?P<number>(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)(?:ms|s|m|h|d|w|y)*)
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<punct>[{}(),])
  | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=@!])
  | (?P<space>\s+)
    """,
    re.VERBOSE,
)
# Words that are PromQL syntax, never a metric name (case-insensitive, as in PromQL).
_KEYWORDS = {
    *("and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"),
    *("sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values"),
    *("bottomk", "topk", "quantile", "limitk", "limit_ratio"),
}
_LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_GRAFANA_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: not functions, keywords, label names
    (in matchers and in by/on/... lists), strings, numbers or durations."""
    text = _GRAFANA_VARIABLE.sub("0", expr)
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise ValueError(f"cannot tokenize {expr!r} at {text[pos:]!r}")
        pos = m.end()
        kind = m.lastgroup or ""
        if kind not in {"space", "comment"}:
            tokens.append((kind, m.group()))
    names: set[str] = set()
    depth_braces = 0
    skip_label_list = False
    paren_skip = 0
    for i, (kind, value) in enumerate(tokens):
        following = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if paren_skip:
            paren_skip += {"(": 1, ")": -1}.get(value, 0)
            continue
        if skip_label_list:
            skip_label_list = False
            if value == "(":
                paren_skip = 1
                continue
        if value == "{":
            depth_braces += 1
        elif value == "}":
            depth_braces -= 1
        elif kind == "ident" and depth_braces:
            # A label matcher; only {__name__="..."} names a metric.
            if value == "__name__":
                op, literal = tokens[i + 1][1], tokens[i + 2]
                if op != "=" or literal[0] != "string":
                    raise ValueError(f"{expr!r}: a __name__ matcher other than = cannot be checked")
                names.add(literal[1][1:-1])
        elif kind == "ident":
            lower = value.lower()
            if lower in _LABEL_LISTS:
                skip_label_list = True
            elif lower in _KEYWORDS or following == "(":
                continue
            else:
                names.add(value)
    return names


def template_query_names(query: str) -> set[str]:
    """Grafana's label_values(SELECTOR, label) and query_result(EXPR) around PromQL."""
    m = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", query, re.S)
    if m:
        return metric_names(m.group(1))
    m = re.fullmatch(r"\s*query_result\((.*)\)\s*", query, re.S)
    return metric_names(m.group(1) if m else query)


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("up", {"up"}),
        ('sum by (job, stage) (increase(a_total{stage=~"x|y", job!="z"}[10m])) > 0', {"a_total"}),
        ("time() - max by(job)(a) > 2 * max without (instance) (b)", {"a", "b"}),
        ("max(a) by (job) and on (job) group_left(version) b_info", {"a", "b_info"}),
        ("SUM BY (le) (rate(h_bucket[5m] offset 1h)) / ignoring(x) c", {"h_bucket", "c"}),
        ('label_replace(a, "dst", "$1", "src", "(.*)") unless b @ start()', {"a", "b"}),
        ("histogram_quantile(0.9, rate(x_bucket[$__rate_interval])) > 1e3", {"x_bucket"}),
        ("absent(a) or vector(0) * Inf + NaN - 0x1F", {"a"}),
        ('max_over_time(rate(a[5m])[1h:5m]) # a comment naming b\n + {__name__="c"}', {"a", "c"}),
        ('count_values("v", r:recorded:rate5m{job=~"$job"})', {"r:recorded:rate5m"}),
        ("topk(3, a) atan2 bool b", {"a", "b"}),
    ],
)
def test_metric_names_from_promql(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_metric_names_refuses_what_it_cannot_check() -> None:
    with pytest.raises(ValueError, match="__name__"):
        metric_names('{__name__=~"etcd_backup_.*"}')
    assert template_query_names("label_values(etcd_backup_build_info, job)") == {"etcd_backup_build_info"}


# --- the rules ----------------------------------------------------------------------------------


def test_promtool_checks_the_rules(promtool: str) -> None:
    r = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


def test_promtool_unit_tests_of_the_rules(promtool: str) -> None:
    r = subprocess.run(
        [promtool, "test", "rules", str(RULE_TESTS)], capture_output=True, text=True, timeout=120, cwd=RULE_TESTS.parent
    )
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


def test_prometheus_rule_carries_the_same_rules(promtool: str, tmp_path: Path) -> None:
    manifest = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert manifest["apiVersion"] == "monitoring.coreos.com/v1" and manifest["kind"] == "PrometheusRule"
    assert manifest["metadata"]["name"] and manifest["metadata"]["labels"]
    assert manifest["spec"] == yaml.safe_load(RULES.read_text())
    extracted = tmp_path / "from-prometheusrule.yaml"
    extracted.write_text(yaml.safe_dump(manifest["spec"]))
    r = subprocess.run([promtool, "check", "rules", str(extracted)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_alert_is_tested_firing_and_silent() -> None:
    names = {rule["alert"] for rule in alerts()}
    tests = [case for t in yaml.safe_load(RULE_TESTS.read_text())["tests"] for case in t["alert_rule_test"]]
    fires = {case["alertname"] for case in tests if case.get("exp_alerts")}
    silent = {case["alertname"] for case in tests if not case.get("exp_alerts")}
    assert fires == names, f"never shown firing: {names - fires}"
    assert silent == names, f"never shown silent: {names - silent}"


def github_anchors(markdown: str) -> set[str]:
    """The ids GitHub gives the README's headings (github-slugger: lower case, punctuation but
    `-` and `_` dropped, spaces to `-`, repeats numbered)."""
    seen: dict[str, int] = {}
    out = set()
    in_code = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        m = None if in_code else re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m is None:
            continue
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", m.group(1)).replace("`", "")
        slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def test_every_alert_explains_itself_and_links_a_readme_section() -> None:
    anchors = github_anchors(README.read_text())
    for rule in alerts():
        name = rule["alert"]
        notes = rule["annotations"]
        assert notes["summary"].strip() and notes["description"].strip(), name
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        url = notes["runbook_url"]
        assert url.startswith(RUNBOOK_BASE), name
        assert url.removeprefix(RUNBOOK_BASE) in anchors, f"{name}: no README section #{url.split('#')[1]}"
    assert "kubeadm-control-planes" in anchors


def test_sidecar_rules_aggregate_over_the_copies_of_a_job() -> None:
    for rule in alerts():
        expr = " ".join(rule["expr"].split())
        if rule["alert"] != "EtcdBackupAbsent":
            aggregations = re.findall(r"\b(?:max|min|sum) by \(([^)]*)\)", expr)
            assert aggregations and all("job" in a for a in aggregations), rule["alert"]


# --- the dashboard ------------------------------------------------------------------------------


def test_dashboard_shape() -> None:
    board = dashboard()
    ps = panels(board)
    ids = [p["id"] for p in ps]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["job"]["type"] == "query"
    for p in ps:
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"] and all(t["expr"].strip() and t["refId"] for t in p["targets"]), p["title"]
        assert all('job=~"$job"' in t["expr"] for t in p["targets"]), p["title"]
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
    titles = " | ".join(p["title"].lower() for p in ps)
    for wanted in ("newest backup age", "rpo", "snapshot duration", "snapshot size", "failures by stage"):
        assert wanted in titles
    assert "drill" in titles and "leadership" in titles


def test_dashboard_queries_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    # promtool parses PromQL only inside rules: each query becomes a recording rule.
    def concrete(expr: str) -> str:
        return expr.replace("$__rate_interval", "5m").replace("$job", ".+")

    board = dashboard()
    rules = [{"record": f"dashboard:query:{i}", "expr": concrete(e)} for i, e in enumerate(dashboard_queries(board))]
    f = tmp_path / "dashboard-queries.yaml"
    f.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    r = subprocess.run([promtool, "check", "rules", str(f)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


# --- every name is real ---------------------------------------------------------------------------


def exported_names(body: str) -> set[str]:
    return {re.split(r"[{ ]", line, maxsplit=1)[0] for line in body.splitlines() if line and not line.startswith("#")}


def test_every_metric_named_is_exported_by_a_running_daemon(
    etcd_single: Cluster, start_daemon: DaemonFactory, tmp_path: Path
) -> None:
    board = dashboard()
    used: dict[str, set[str]] = {}
    for rule in alerts():
        for name in metric_names(rule["expr"]):
            used.setdefault(name, set()).add(f"alert {rule['alert']}")
    for p in panels(board):
        for t in p.get("targets", []):
            for name in metric_names(t["expr"]):
                used.setdefault(name, set()).add(f"panel {p['title']!r}")
    for v in board["templating"]["list"]:
        if v["type"] == "query":
            query = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            for name in template_query_names(query):
                used.setdefault(name, set()).add(f"variable {v['name']}")
    assert {"etcd_backup_failures_total", "etcd_backup_delta_lag_seconds", "etcd_backup_is_leader"} <= set(used)

    d = start_daemon(config_env(etcd_single, f"file://{tmp_path}/store", verify__restore_drill="off"))
    status, body = d.request("GET", "/metrics")
    assert status == 200
    exported = exported_names(body.decode())
    missing = {name: sorted(where) for name, where in used.items() if name not in exported}
    assert not missing, f"not on a live daemon's /metrics: {missing}"
    # The failure stages the rules select exist from the start, at 0.
    text = body.decode()
    for stage in ("snapshot", "verify", "upload", "storage", "retention", "drill", "delta", "copy"):
        assert f'etcd_backup_failures_total{{stage="{stage}"}} 0.0' in text, stage
    # Before any delta: nothing stored yet (NaN), nothing waiting (0), no gap; what ages compare with.
    samples = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert samples["etcd_backup_delta_last_revision"] == "NaN"
    assert samples["etcd_backup_delta_last_success_timestamp_seconds"] == "NaN"
    assert samples["etcd_backup_delta_lag_seconds"] == "0.0"
    assert samples["etcd_backup_delta_gaps_total"] == "0.0"
    assert samples["etcd_backup_schedule_period_seconds"] == "1800.0"
    assert samples["etcd_backup_restore_drill_interval_seconds"] == "NaN"  # drills off in this daemon
