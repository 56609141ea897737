"""Probe answers from the node's state, without a process: ``/ready`` is unhealthy until
the log is recovered, ``/health`` once the node stopped after a fault; near the connection
limit the node is degraded, at it not ready; a cluster replica is ready only while it knows
a primary."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from craton.core.vsr.replica import Status
from craton.core.wire import ErrorCode
from craton.net.config import Address, LogLevel
from craton.net.logs import EventLog
from craton.net.metrics import NodeMetrics
from craton.net.node import Outcome, Refused, ReplicaHost
from craton.net.peers import ClusterSettings
from craton.net.probes import Probes
from tests.net.cluster_support import free_ports


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


def test_a_cluster_replica_is_not_ready_before_it_has_heard_its_primary(tmp_path: Path) -> None:
    """Replica 1 of a cluster whose other replicas never answer: recovered, it is a backup
    of view 0 (requests redirected to replica 0) but not ready, since it has not heard its
    primary and cannot know it holds the view's log; once it gives up on the silent primary
    it is in a view change, and still not ready."""
    addresses = tuple(Address("127.0.0.1", port) for port in free_ports(3))
    metrics = NodeMetrics()
    host = ReplicaHost(
        tmp_path,
        EventLog(LogLevel.ERROR),
        metrics,
        cluster=ClusterSettings(replica_id=1, addresses=addresses, secret=b"s" * 32),
    )
    probes = Probes(host, metrics, max_connections=10, connections=lambda: 0)
    body = json.loads(probes.answer("/ready").body)
    assert body["checks"]["replication"]["status"] == "unhealthy"
    assert body["checks"]["log"]["detail"] == "recovering the log"

    async def scenario() -> tuple[dict[str, object], Refused, dict[str, object], Refused]:
        host.open()
        try:
            while not host.ready:  # normal status: it knows its view's primary
                await asyncio.sleep(0.01)
            as_backup = json.loads(probes.answer("/ready").body)
            redirected: list[Refused] = []
            host.submit_read(b"", lambda outcome: redirected.append(_refused(outcome)))
            while host.replica is not None and host.replica.status is not Status.VIEW_CHANGE:
                await asyncio.sleep(0.05)
            in_view_change = json.loads(probes.answer("/ready").body)
            waiting: list[Refused] = []
            host.submit_read(b"", lambda outcome: waiting.append(_refused(outcome)))
            await asyncio.sleep(0)  # answers reach the connections on the next loop turn
            return as_backup, redirected[0], in_view_change, waiting[0]
        finally:
            host.close()

    as_backup, redirected, in_view_change, waiting = asyncio.run(asyncio.wait_for(scenario(), 20))
    assert as_backup["status"] == "unhealthy", as_backup
    backup = as_backup["checks"]
    assert isinstance(backup, dict)
    assert "catching up" in backup["replication"]["detail"], backup
    assert backup["log"]["status"] == "ok", backup
    assert redirected.code is ErrorCode.NOT_PRIMARY
    assert redirected.primary_address == str(addresses[0])
    replication = in_view_change["checks"]
    assert isinstance(replication, dict)
    assert replication["replication"]["status"] == "unhealthy"
    assert "view change" in replication["replication"]["detail"]
    assert replication["log"]["status"] == "ok"
    assert waiting.code is ErrorCode.UNAVAILABLE and waiting.primary_address is None


def _refused(outcome: Outcome) -> Refused:
    assert isinstance(outcome, Refused), outcome
    return outcome
