"""The node's /metrics before any request, without a process: every labelled series exists
at 0 from start-up (each method with each status, each duration histogram, each auth
refusal reason, each peer of the cluster), and every label value the node's code can report
is one of those created."""

from __future__ import annotations

import ast
from pathlib import Path

from craton.core.wire import ErrorCode
from craton.net.config import Address, LogLevel
from craton.net.logs import EventLog
from craton.net.metrics import AUTH_REASONS, METHODS, STATUSES, NodeMetrics
from craton.net.node import ReplicaHost
from craton.net.peers import ClusterSettings
from craton.net.probes import Probes

ROOT = Path(__file__).resolve().parents[2]
# The modules that label requests, and the calls whose first argument is a ``method``.
LABELLING_MODULES = ("craton/core/connection.py", "craton/net/connection.py")
LABELLING_CALLS = ("RequestDone", "observe_request")
SECRET = b"an example cluster secret, 32+ B"


def fresh_metrics(tmp_path: Path, cluster: ClusterSettings | None = None) -> dict[str, float]:
    """The samples of a new node's /metrics (the node is built, never opened or asked)."""
    metrics = NodeMetrics()
    host = ReplicaHost(tmp_path, EventLog(LogLevel.ERROR), metrics, cluster=cluster)
    answer = Probes(host, metrics, max_connections=10, connections=lambda: 0).answer("/metrics")
    assert answer.status == 200, f"expected /metrics to answer 200, got {answer.status}"
    samples: dict[str, float] = {}
    for line in answer.body.decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_every_request_series_is_at_zero_before_any_request(tmp_path: Path) -> None:
    samples = fresh_metrics(tmp_path)
    assert samples.get('vdb_requests_total{method="AppendEvents",status="success"}') == 0.0
    for method in METHODS:
        for status in STATUSES:
            series = f'vdb_requests_total{{method="{method}",status="{status}"}}'
            assert samples.get(series) == 0.0, f"expected {series} at 0 before any request"
        for suffix in ("_count", "_sum"):
            series = f'vdb_request_duration_seconds{suffix}{{method="{method}"}}'
            assert samples.get(series) == 0.0, f"expected {series} at 0 before any request"
        bucket = f'vdb_request_duration_seconds_bucket{{le="+Inf",method="{method}"}}'
        assert samples.get(bucket) == 0.0, f"expected {bucket} at 0 before any request"
    for reason in AUTH_REASONS:
        series = f'vdb_auth_failures_total{{reason="{reason}"}}'
        assert samples.get(series) == 0.0, f"expected {series} at 0 before any handshake"


def test_the_known_labels_are_the_wire_vocabulary() -> None:
    assert {"Handshake", "AppendEvents", "ReadEventsAsOf", "Sync", "Other", "Frame"} <= set(
        METHODS
    ), METHODS
    assert len(set(METHODS)) == len(METHODS), f"expected no method twice in {METHODS}"
    assert STATUSES[0] == "success" and len(STATUSES) == 1 + len(ErrorCode), STATUSES
    assert "stream_not_found" in STATUSES and "expired" in AUTH_REASONS


def test_every_method_the_code_names_is_created_at_start_up() -> None:
    """A ``method`` written out literally where requests are labelled (beside the ones
    ``method_name`` derives from the wire commands) must be in ``METHODS``, or its series
    would appear only once it first moved."""
    literals: set[str] = set()
    for module in LABELLING_MODULES:
        tree = ast.parse((ROOT / module).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            callee = node.func
            name = callee.attr if isinstance(callee, ast.Attribute) else getattr(callee, "id", "")
            first = node.args[0]
            if name in LABELLING_CALLS and isinstance(first, ast.Constant):
                literals.add(str(first.value))
    assert {"Handshake", "Sync", "Frame"} <= literals, f"expected the labelling calls: {literals}"
    missing = sorted(literals - set(METHODS))
    assert not missing, f"expected every literal method in METHODS, missing {missing}"


def test_every_peer_series_is_at_zero_before_any_connection(tmp_path: Path) -> None:
    addresses = tuple(Address("127.0.0.1", 5432 + index) for index in range(3))
    cluster = ClusterSettings(replica_id=1, addresses=addresses, secret=SECRET)
    samples = fresh_metrics(tmp_path, cluster)
    names = (
        "vdb_replication_peer_connected",
        "vdb_replication_messages_sent_total",
        "vdb_replication_messages_received_total",
        "vdb_replication_messages_dropped_total",
    )
    for name in names:
        for peer in ("0", "2"):
            series = f'{name}{{peer="{peer}"}}'
            assert samples.get(series) == 0.0, f"expected {series} at 0 before any connection"
        assert f'{name}{{peer="1"}}' not in samples, f"expected no {name} for the replica itself"


def test_a_single_node_has_no_peer_series(tmp_path: Path) -> None:
    samples = fresh_metrics(tmp_path)
    peers = [name for name in samples if name.startswith("vdb_replication_peer_connected{")]
    assert peers == [], f"expected no peer series without a cluster, got {peers}"
