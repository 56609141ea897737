"""The node's Prometheus metrics, in a registry of its own.

Names and labels are the deployment guide's:

    vdb_requests_total{method,status}       requests answered, by command and outcome
    vdb_request_duration_seconds{method}    histogram: frame received to reply written
    vdb_connections_active                  client-protocol connections open now
    vdb_connections_total                   client-protocol connections admitted
    vdb_storage_bytes_written_total         bytes the node's disk wrote (completed writes)
    vdb_storage_records_total               log records made durable by this process
    vdb_storage_checkpoints_total           checkpoints sealed by this process
    vdb_replication_lag_records             ops behind, as this replica knows (0 alone): on
                                            the primary, its commit number minus the ops
                                            the slowest backup acknowledged; on a backup,
                                            the primary's commit number minus its own
    vdb_replication_view_number             the replica's current VSR view
    vdb_replication_peer_connected{peer}    1 while the connection to replica ``peer`` is up
    vdb_replication_messages_sent_total{peer}      replica messages written to ``peer``
    vdb_replication_messages_received_total{peer}  replica messages received from ``peer``
    vdb_replication_messages_dropped_total{peer}   messages for ``peer`` dropped because its
                                                   queue was full (VSR resends what matters)
    vdb_auth_failures_total{reason}         client handshakes refused, by the refusal's
                                            reason (``craton.core.auth.Refusal`` name)
    vdb_peer_auth_failures_total            replica hellos refused because they did not
                                            prove knowledge of VDB_CLUSTER_SECRET

``method`` is the wire command's message name (``AppendEvents``, ``ReadEvents``, ...,
``Other`` for a command that is no request, ``Frame`` for bytes that never became a
request); ``status`` is ``success`` or the lower-case ``ErrorCode`` name; ``peer`` is a
replica id (0..15); ``reason`` is the lower-case ``Refusal`` name. Every label set is
closed, so the number of series is bounded. Every series exists from start-up, at 0: each
method with each status (``METHODS`` x ``STATUSES``), each refusal reason, and, once the
node knows its cluster (``start_peers``), each peer; a rate or an alert over a series that
has not moved yet reads 0 rather than nothing.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from craton.core.auth import Refusal
from craton.core.connection import method_name
from craton.core.wire import Command
from craton.core.wire.errors import ErrorCode

METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST
STATUS_SUCCESS = "success"
# The ``method`` of bytes the decoder refused before they named a command.
METHOD_FRAME = "Frame"
# Seconds: from a loopback sync (tens of microseconds) to a stalled disk.
DURATION_BUCKETS_S = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


def status_label(code: ErrorCode | None) -> str:
    return STATUS_SUCCESS if code is None else code.name.lower()


def _methods() -> tuple[str, ...]:
    """Every ``method`` label: what the connection protocol's own ``method_name`` makes of
    each wire command (its message name, or ``Other``), and ``Frame``."""
    names = dict.fromkeys(method_name(command) for command in Command)
    names[METHOD_FRAME] = None
    return tuple(names)


# Every label value the node can report, in a fixed order.
METHODS = _methods()
STATUSES = (STATUS_SUCCESS, *(status_label(code) for code in ErrorCode))
AUTH_REASONS = tuple(reason.name.lower() for reason in Refusal)


class NodeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        # Labelled children by label values; bounded by the wire commands times the codes.
        self._request_counters: dict[tuple[str, ErrorCode | None], Counter] = {}
        self._duration_histograms: dict[str, Histogram] = {}
        self.requests = Counter(
            "vdb_requests",
            "Requests answered, by wire command and outcome.",
            ["method", "status"],
            registry=registry,
        )
        self.request_duration = Histogram(
            "vdb_request_duration_seconds",
            "Time from a request's frame arriving to its reply being written.",
            ["method"],
            buckets=DURATION_BUCKETS_S,
            registry=registry,
        )
        self.connections_active = Gauge(
            "vdb_connections_active", "Client-protocol connections open now.", registry=registry
        )
        self.connections = Counter(
            "vdb_connections", "Client-protocol connections admitted.", registry=registry
        )
        self.bytes_written = Counter(
            "vdb_storage_bytes_written", "Bytes written to the data directory.", registry=registry
        )
        self.records = Counter(
            "vdb_storage_records", "Log records made durable by this process.", registry=registry
        )
        self.checkpoints = Counter(
            "vdb_storage_checkpoints", "Checkpoints sealed by this process.", registry=registry
        )
        self.replication_lag = Gauge(
            "vdb_replication_lag_records",
            "Committed ops not yet held: on the primary, by its slowest backup; on a backup, "
            "by itself (0 without peers).",
            registry=registry,
        )
        self.view = Gauge(
            "vdb_replication_view_number", "The replica's current VSR view.", registry=registry
        )
        self.peer_connected = Gauge(
            "vdb_replication_peer_connected",
            "1 while this replica's connection to the peer is open.",
            ["peer"],
            registry=registry,
        )
        self.peer_sent = Counter(
            "vdb_replication_messages_sent",
            "Replica messages written to the peer's connection.",
            ["peer"],
            registry=registry,
        )
        self.peer_received = Counter(
            "vdb_replication_messages_received",
            "Replica messages received from the peer.",
            ["peer"],
            registry=registry,
        )
        self.peer_dropped = Counter(
            "vdb_replication_messages_dropped",
            "Replica messages for the peer dropped because its send queue was full.",
            ["peer"],
            registry=registry,
        )

        self.auth_failures = Counter(
            "vdb_auth_failures",
            "Client handshakes refused: the credential did not authenticate.",
            ["reason"],
            registry=registry,
        )
        self.peer_auth_failures = Counter(
            "vdb_peer_auth_failures",
            "Replica hellos refused: no valid proof of the cluster secret.",
            registry=registry,
        )
        self._start_series()

    def _start_series(self) -> None:
        """Create every request and refusal series at 0 (see the module docstring)."""
        for method in METHODS:
            self._duration_histograms[method] = self.request_duration.labels(method)
            for status in STATUSES:
                self.requests.labels(method, status)
        for reason in AUTH_REASONS:
            self.auth_failures.labels(reason)

    def start_peers(self, replicas: Iterable[int]) -> None:
        """Create the series of each peer ``replicas`` at 0: not connected, nothing sent,
        received or dropped."""
        for replica in replicas:
            label = str(replica)
            self.peer_connected.labels(label).set(0)
            for counter in (self.peer_sent, self.peer_received, self.peer_dropped):
                counter.labels(label)

    def observe_request(self, method: str, code: ErrorCode | None, duration_s: float) -> None:
        # Looking a labelled child up costs more than the update itself: keep them.
        key = (method, code)
        counter = self._request_counters.get(key)
        if counter is None:
            counter = self._request_counters[key] = self.requests.labels(method, status_label(code))
        histogram = self._duration_histograms.get(method)
        if histogram is None:
            histogram = self._duration_histograms[method] = self.request_duration.labels(method)
        counter.inc()
        histogram.observe(max(0.0, duration_s))

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
