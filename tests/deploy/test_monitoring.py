"""The monitoring files against a live node: every metric the Grafana dashboard and the
Prometheus rules use is one that a running ``craton-server`` exports at ``/metrics``, the
rules file is well-formed (what ``promtool check rules`` would check; no PyPI package ships
promtool), and the guide's metrics are all there."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy.support import (
    DASHBOARD,
    ROOT,
    RULES,
    SCRAPE_CONFIG,
    dashboard_expressions,
    exported_names,
    load_dashboard,
    metric_names,
    rule_expressions,
    unknown_metrics,
)
from tests.net.support import ServerProcess, http_get

GUIDE = ROOT.parent / "shared" / "seed" / "DEPLOYMENT.md"
# What the issue asks the dashboard to show, by the metric each panel needs.
DASHBOARD_METRICS = {
    "vdb_requests_total",
    "vdb_request_duration_seconds_bucket",
    "vdb_connections_active",
    "vdb_storage_bytes_written_total",
    "vdb_storage_records_total",
    "vdb_storage_checkpoints_total",
    "vdb_replication_lag_records",
    "vdb_replication_view_number",
}
DURATION = re.compile(r"([0-9]+(ms|s|m|h|d|w|y))+")
RULE_KEYS = {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}
SEVERITIES = {"critical", "warning", "info"}


@pytest.fixture(scope="module")
def exposition(node: ServerProcess) -> str:
    status, _, body = http_get(node.metrics_address, "/metrics")
    assert status == 200, body[:200]
    return body.decode()


@pytest.fixture(scope="module")
def exported(exposition: str) -> set[str]:
    return exported_names(exposition)


def test_the_exposition_parses_and_has_the_guides_metrics(exposition: str) -> None:
    """``promtool check metrics`` is not on PyPI: the Prometheus client's own parser reads
    the live text instead, and every ``vdb_*`` name of the guide must be in it."""
    families = {family.name: family for family in text_string_to_metric_families(exposition)}
    assert families, "expected metric families in /metrics"
    for name, family in families.items():
        assert re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", name), f"bad metric name {name!r}"
        assert family.documentation, f"{name} has no HELP text"
    assert families["vdb_request_duration_seconds"].type == "histogram"
    names = exported_names(exposition)
    guide_names = set(re.findall(r"\bvdb_[a-z_]+", GUIDE.read_text())) if GUIDE.exists() else set()
    documented = set(re.findall(r"\bvdb_[a-z_]+", (ROOT / "docs" / "DEPLOYMENT.md").read_text()))
    for name in sorted(guide_names | documented):
        assert name in names or name + "_bucket" in names, f"{name} is documented, not exported"


def test_every_dashboard_metric_is_exported(exported: set[str]) -> None:
    expressions = dashboard_expressions(load_dashboard())
    assert len(expressions) >= len(DASHBOARD_METRICS), expressions
    assert unknown_metrics(expressions, exported) == {}, "dashboard metrics a node lacks"
    used = set().union(*(metric_names(e) for e in expressions))
    assert used >= DASHBOARD_METRICS, f"panels missing for {DASHBOARD_METRICS - used}"


@pytest.mark.parametrize(
    ("good", "broken"),
    [
        ("vdb_storage_records_total", "vdb_storage_record_total"),
        ("vdb_request_duration_seconds_bucket", "vdb_request_duration_bucket"),
        ("label_values(vdb_replication_view_number", "label_values(vdb_replication_view"),
    ],
)
def test_a_broken_dashboard_metric_name_is_caught(
    exported: set[str], good: str, broken: str
) -> None:
    text = DASHBOARD.read_text()
    assert good in text, f"the dashboard no longer uses {good}: update this test"
    mutated = load_dashboard(text.replace(good, broken, 1))
    missing = unknown_metrics(dashboard_expressions(mutated), exported)
    wrong = broken.removeprefix("label_values(")
    assert any(wrong in names for names in missing.values()), f"{broken} not caught: {missing}"


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ('sum by (le) (rate(x_bucket{a="b}"}[5m]))', {"x_bucket"}),
        ("a / on (job) group_left (peer) b > 1e3", {"a", "b"}),
        ("histogram_quantile(0.99, rate(m[$__rate_interval])) offset 5m", {"m"}),
        ("sum(rate(vdb_requests[5m])) without (status) and up == 0", {"vdb_requests", "up"}),
    ],
)
def test_metric_names_of_an_expression(expr: str, expected: set[str]) -> None:
    assert metric_names(expr) == expected


def _rules() -> dict[str, Any]:
    loaded = yaml.safe_load(RULES.read_text())
    assert isinstance(loaded, dict)
    return loaded


def rule_problems(rules: dict[str, Any]) -> list[str]:
    """What ``promtool check rules`` would refuse, and the guide's alerts' labels."""
    problems = []
    groups = rules.get("groups")
    if not isinstance(groups, list) or not groups:
        return ["expected a non-empty 'groups' list"]
    names = [group.get("name") for group in groups]
    if len(set(names)) != len(names) or not all(names):
        problems.append(f"group names must be present and unique: {names}")
    for group in groups:
        for rule in group.get("rules") or [None]:
            if not isinstance(rule, dict):
                problems.append(f"group {group.get('name')}: a rule is not a mapping")
                continue
            label = rule.get("alert") or rule.get("record")
            if ("alert" in rule) == ("record" in rule):
                problems.append(f"{label}: exactly one of alert and record")
            if set(rule) - RULE_KEYS:
                problems.append(f"{label}: unknown keys {sorted(set(rule) - RULE_KEYS)}")
            expr = rule.get("expr")
            if not isinstance(expr, str) or not expr.strip():
                problems.append(f"{label}: expr must be a non-empty string")
            elif expr.count("(") != expr.count(")") or expr.count("[") != expr.count("]"):
                problems.append(f"{label}: unbalanced brackets in {expr!r}")
            if "for" in rule and not DURATION.fullmatch(str(rule["for"])):
                problems.append(f"{label}: 'for' is not a duration: {rule['for']!r}")
            if "alert" in rule:
                labels = rule.get("labels") or {}
                if labels.get("severity") not in SEVERITIES:
                    problems.append(f"{label}: labels.severity must be one of {SEVERITIES}")
                if not (rule.get("annotations") or {}).get("summary"):
                    problems.append(f"{label}: annotations.summary is missing")
    return problems


def test_rules_are_well_formed_and_use_exported_metrics(exported: set[str]) -> None:
    rules = _rules()
    assert rule_problems(rules) == []
    alerts = {rule.get("alert") for group in rules["groups"] for rule in group["rules"]}
    assert {"CratonHighLatency", "CratonReplicationLag"} <= alerts, "the guide's two alerts"
    assert unknown_metrics(rule_expressions(rules), exported) == {}


def test_rule_checks_catch_the_guides_typo_and_a_bad_metric(exported: set[str]) -> None:
    text = RULES.read_text()
    typo = yaml.safe_load(text.replace("severity:", "secraton:", 1))
    assert any("severity" in problem for problem in rule_problems(typo)), "typo not caught"
    bad_for = yaml.safe_load(text.replace("for: 5m", "for: five minutes", 1))
    assert any("duration" in problem for problem in rule_problems(bad_for))
    renamed = yaml.safe_load(text.replace("vdb_replication_lag_records", "vdb_lag", 1))
    assert unknown_metrics(rule_expressions(renamed), exported), "a renamed metric not caught"


def test_the_scrape_config_names_the_rules_and_the_metrics_port() -> None:
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    assert [Path(SCRAPE_CONFIG.parent / f).resolve() for f in config["rule_files"]] == [RULES]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = [t for s in jobs["craton"]["static_configs"] for t in s["targets"]]
    assert targets and all(t.endswith(":9090") for t in targets), targets
    relabels = jobs["craton-kubernetes"]["relabel_configs"]
    assert {"action": "keep", "regex": "metrics"} in [
        {k: v for k, v in r.items() if k in ("action", "regex")} for r in relabels
    ], "the Kubernetes job keeps the port named metrics"
