"""What the deployment tests share: the repository's deployment files, the validation tools
(installed by ``scripts/test`` from the ``test`` extra), and the metric names a PromQL
expression, a Grafana dashboard or a Prometheus rules file uses, to hold against the
names a live node exports."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "craton-dashboard.json"
RULES = ROOT / "deploy" / "prometheus" / "rules.yaml"
SCRAPE_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
K8S = ROOT / "deploy" / "k8s"
COMPOSE_FILES = (ROOT / "docker-compose.yml", ROOT / "docker-compose.cluster.yml")
DOCKERFILES = tuple(sorted(ROOT.glob("Dockerfile*")))
GUIDE_DOC = ROOT / "docs" / "DEPLOYMENT.md"
TOOL_TIMEOUT_S = 60
SKIPPED_FOLDERS = {".venv", ".git", "node_modules", "build", "dist"}
# Series Prometheus makes itself for every target; a rule may use them.
PROMETHEUS_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
_PROMQL_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "and", "or", "unless", "offset", "inf", "nan", "atan2",
}  # fmt: skip


def tool(name: str) -> Path:
    """A validation tool from the venv; a clear failure when the test extra is missing."""
    path = Path(sys.executable).parent / name
    assert path.exists(), f"{name} is not installed: run scripts/test (the test extra has it)"
    return path


def run(*command: str | Path, cwd: Path = ROOT, **env: str) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT_S,
        env={**os.environ, **env},
    )


def yaml_files() -> list[Path]:
    """Every YAML file of the repository outside virtual environments and build output."""
    found = []
    for path in sorted([*ROOT.rglob("*.yaml"), *ROOT.rglob("*.yml")]):
        parts = set(path.relative_to(ROOT).parts[:-1])
        if not parts & SKIPPED_FOLDERS and not any(p.startswith(".") for p in parts):
            found.append(path)
    return found


# --- PromQL ----------------------------------------------------------------------------------


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects: identifiers that are not functions,
    keywords, label names (inside ``{}`` or ``by (...)``), durations or Grafana variables."""
    text = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        before = text[match.start() - 1] if match.start() else " "
        if before.isdigit() or before == ".":
            continue  # the exponent of 1e3 or the unit of 5m
        if text[match.end() :].lstrip().startswith("("):
            continue  # a function (or an aggregation)
        if match.group().lower() in _PROMQL_KEYWORDS:
            continue
        names.add(match.group())
    return names


def exported_names(exposition: str) -> set[str]:
    """Every series name a ``/metrics`` text makes queryable: a histogram's ``_bucket``,
    ``_sum`` and ``_count``, a counter's ``_total``, and any sample seen."""
    names: set[str] = set()
    suffixes = {
        "counter": ("_total",),
        "gauge": ("",),
        "histogram": ("_bucket", "_sum", "_count"),
        "summary": ("", "_sum", "_count"),
    }
    for family in text_string_to_metric_families(exposition):
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


# --- Grafana and Prometheus files ------------------------------------------------------------


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item)


def dashboard_expressions(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression of a dashboard: panel targets and template queries (for
    ``label_values(metric, label)`` only the metric counts)."""
    expressions = []
    for node in _walk(dashboard):
        if isinstance(node.get("expr"), str):
            expressions.append(node["expr"])
        query = node.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if isinstance(query, str):
            values = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", query)
            expressions.append(values.group(1) if values else query)
    return expressions


def rule_expressions(rules: dict[str, Any]) -> list[str]:
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def unknown_metrics(expressions: list[str], exported: set[str]) -> dict[str, set[str]]:
    """Expression → the metric names in it that no live node exports (empty: all known)."""
    known = exported | PROMETHEUS_SERIES
    found = {}
    for expr in expressions:
        missing = metric_names(expr) - known
        if missing:
            found[expr] = missing
    return found


def load_dashboard(text: str | None = None) -> dict[str, Any]:
    loaded = json.loads(DASHBOARD.read_text() if text is None else text)
    assert isinstance(loaded, dict), "the dashboard is one JSON object"
    return loaded
