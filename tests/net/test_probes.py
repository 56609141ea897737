"""Probe answers from the node's state, without a process: ``/ready`` is unhealthy until
the log is recovered, ``/health`` once the node stopped after a fault; near the connection
limit the node is degraded, at it not ready."""

from __future__ import annotations

import json
from pathlib import Path

from craton.net.config import LogLevel
from craton.net.logs import EventLog
from craton.net.metrics import NodeMetrics
from craton.net.node import ReplicaHost
from craton.net.probes import Probes


def probes_for(tmp_path: Path, connections: int = 0) -> tuple[Probes, ReplicaHost]:
    metrics = NodeMetrics()
    host = ReplicaHost(tmp_path, EventLog(LogLevel.ERROR), metrics)  # never opened
    probes = Probes(host, metrics, max_connections=10, connections=lambda: connections)
    return probes, host


def test_not_ready_until_the_log_is_recovered(tmp_path: Path) -> None:
    probes, _ = probes_for(tmp_path)
    answer = probes.answer("/ready")
    body = json.loads(answer.body)
    assert answer.status == 503 and body["status"] == "unhealthy"
    assert body["checks"]["log"] == {
        "status": "unhealthy",
        "duration_ms": 0,
        "detail": "recovering the log",
    }
    for name in ("disk", "memory", "data_dir"):
        assert body["checks"][name]["status"] == "ok"
    health = probes.answer("/health")
    assert health.status == 200 and json.loads(health.body)["status"] == "ok"


def test_a_halted_node_is_unhealthy(tmp_path: Path) -> None:
    probes, host = probes_for(tmp_path)
    host.halted = "file 'log/0000000000.seg' offset 10: damaged"
    health = probes.answer("/health")
    assert health.status == 503 and json.loads(health.body)["status"] == "unhealthy"


def test_connections_near_and_at_the_limit(tmp_path: Path) -> None:
    near, _ = probes_for(tmp_path, connections=9)
    assert json.loads(near.answer("/health").body)["status"] == "degraded"
    assert json.loads(near.answer("/ready").body)["checks"]["memory"]["status"] == "degraded"
    full, _ = probes_for(tmp_path, connections=10)
    memory = json.loads(full.answer("/ready").body)["checks"]["memory"]
    assert memory["status"] == "unhealthy" and "10 connections" in memory["detail"]


def test_a_missing_data_dir_is_not_ready(tmp_path: Path) -> None:
    probes, _ = probes_for(tmp_path / "gone")
    checks = json.loads(probes.answer("/ready").body)["checks"]
    assert checks["data_dir"]["status"] == "unhealthy"
    assert checks["disk"]["status"] == "unhealthy"
    assert probes.answer("/elsewhere").status == 404
