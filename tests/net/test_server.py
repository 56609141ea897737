"""A real ``craton-server`` process, driven through the client, raw frames and HTTP.

One node (module scope) serves the tests that leave it running: the client round trip,
exactly-once retries, probes and metrics on both ports, and bad bytes on one connection
while another keeps working. The tests that stop or limit a node start their own.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from craton.client import (
    Client,
    InvalidRequest,
    StreamAlreadyExists,
    StreamNotFound,
    UnexpectedOffset,
)
from craton.core.wire import (
    AppendEvents,
    AppendEventsReply,
    CreateStream,
    CreateStreamReply,
    DataClass,
    ErrorCode,
    ErrorReply,
    Handshake,
    HandshakeReply,
    Placement,
    PlacementKind,
    ReadEvents,
    ReadEventsReply,
    Sync,
    SyncReply,
    encode,
)
from craton.net.connection import INFLIGHT_REQUESTS_MAX
from tests.net.support import RawConnection, ServerProcess, http_get

GUIDE_METRICS = (
    "vdb_requests_total",
    "vdb_request_duration_seconds",
    "vdb_connections_active",
    "vdb_connections_total",
    "vdb_storage_bytes_written_total",
    "vdb_storage_records_total",
    "vdb_storage_checkpoints_total",
    "vdb_replication_lag_records",
    "vdb_replication_view_number",
)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("node")
    with ServerProcess(root / "data", root / "server.log") as server:
        server.start()
        yield server
        assert server.stop() == 0, server.tail()


def handshaken(address: str, client_id: int) -> RawConnection:
    connection = RawConnection(address)
    connection.send(Handshake(1, client_id, None), 1)
    request_id, reply = connection.receive()
    assert request_id == 1 and isinstance(reply, HandshakeReply), reply
    return connection


def test_client_round_trip(node: ServerProcess) -> None:
    with Client(node.address, retry_deadline_s=10) as client:
        info = client.info
        assert info is not None and (info.replica_id, info.cluster_size, info.view) == (0, 1, 0)
        created = client.create_stream("orders", DataClass.PII)
        with pytest.raises(StreamAlreadyExists):
            client.create_stream("orders")
        first = client.append("orders", [b"placed", b"paid"])
        assert first.first_offset == 0 and first.log_position > created
        second = client.append("orders", [b"shipped"], expected_offset=2)
        assert (second.first_offset, second.log_position > first.log_position) == (2, True)
        with pytest.raises(UnexpectedOffset):
            client.append("orders", [b"again"], expected_offset=2)
        read = client.read("orders", 0)
        assert read.events == (b"placed", b"paid", b"shipped") and read.next_offset == 3
        assert client.read("orders", 1, max_events=1).events == (b"paid",)
        past = client.read_as_of("orders", first.log_position)
        assert past.events == (b"placed", b"paid") and past.log_position == first.log_position
        with pytest.raises(StreamNotFound):
            client.read_as_of("orders", created - 1)
        with pytest.raises(StreamNotFound):
            client.read("no-such-stream")
        assert client.sync() > second.log_position


def test_a_retried_append_is_applied_once(node: ServerProcess) -> None:
    client_id = 0x5EED_0001
    first = handshaken(node.address, client_id)
    first.send(CreateStream("retried", DataClass.INTERNAL, Placement(PlacementKind.GLOBAL, "")), 2)
    assert isinstance(first.receive()[1], CreateStreamReply)
    append = AppendEvents("retried", (b"once",), None)
    first.send(append, 3)
    request_id, reply = first.receive()
    assert request_id == 3 and isinstance(reply, AppendEventsReply), reply
    first.send(append, 3)  # the same request again on the same connection
    assert first.receive() == (3, reply)
    first.close()
    again = handshaken(node.address, client_id)  # a new connection of the same client
    again.send(append, 3)
    assert again.receive() == (3, reply)
    again.send(ReadEvents("retried", 0, 10, 1000), 4)
    _, read = again.receive()
    assert isinstance(read, ReadEventsReply) and read.events == (b"once",), read
    again.close()


def test_pipelined_requests_are_answered_by_id_and_sync_waits(node: ServerProcess) -> None:
    connection = handshaken(node.address, 0x5EED_0002)
    placement = Placement(PlacementKind.GLOBAL, "")
    frames = encode(CreateStream("piped", DataClass.PUBLIC, placement), 2)
    for number in range(3, 13):
        frames += encode(AppendEvents("piped", (b"%d" % number,), None), number)
    frames += encode(Sync(), 13)
    connection.send_bytes(frames)
    replies = dict(connection.receive() for _ in range(12))
    assert sorted(replies) == list(range(2, 14))
    appended = [replies[n] for n in range(3, 13)]
    positions = [r.log_position for r in appended if isinstance(r, AppendEventsReply)]
    assert len(positions) == 10, appended
    assert positions == sorted(positions), "appends are applied in the order sent"
    sync = replies[13]
    assert isinstance(sync, SyncReply) and sync.log_position > positions[-1]
    connection.close()


def test_more_pipelined_requests_than_may_be_in_flight_are_all_answered(
    node: ServerProcess,
) -> None:
    """Past INFLIGHT_REQUESTS_MAX the node stops reading, and reads on as replies go out."""
    connection = handshaken(node.address, 0x5EED_0007)
    placement = Placement(PlacementKind.GLOBAL, "")
    count = INFLIGHT_REQUESTS_MAX * 2 + 100
    frames = encode(CreateStream("flood", DataClass.PUBLIC, placement), 2)
    for number in range(3, 3 + count):
        frames += encode(AppendEvents("flood", (b"%d" % number,), None), number)
    frames += encode(Sync(), 3 + count)
    sender = threading.Thread(target=connection.send_bytes, args=(frames,))
    sender.start()
    replies = dict(connection.receive() for _ in range(count + 2))
    sender.join()
    assert sorted(replies) == list(range(2, 4 + count)), "every request gets one reply"
    offsets = [replies[n] for n in range(3, 3 + count)]
    assert all(isinstance(r, AppendEventsReply) for r in offsets), offsets[:3]
    assert [r.first_offset for r in offsets if isinstance(r, AppendEventsReply)] == list(
        range(count)
    ), "appends are applied once each, in the order sent"
    sync = replies[3 + count]
    assert isinstance(sync, SyncReply), sync
    connection.close()


def test_an_out_of_range_write_id_is_refused_and_the_connection_goes_on(
    node: ServerProcess,
) -> None:
    connection = handshaken(node.address, 0x5EED_0003)
    connection.send(CreateStream("ids", DataClass.PUBLIC, Placement(PlacementKind.GLOBAL, "")), 2)
    connection.receive()
    connection.send(AppendEvents("ids", (b"x",), None), 2**40)
    request_id, reply = connection.receive()
    assert request_id == 2**40 and isinstance(reply, ErrorReply)
    assert reply.code == ErrorCode.INVALID_REQUEST
    connection.send(Sync(), 5)
    assert isinstance(connection.receive()[1], SyncReply)
    connection.close()


def test_health_ready_and_metrics_on_both_ports(node: ServerProcess) -> None:
    for address in (node.address, node.metrics_address):
        status, headers, body = http_get(address, "/health")
        assert status == 200 and headers["content-type"].startswith("application/json")
        health = json.loads(body)
        assert health["status"] == "ok" and health["version"] == "0.1.0"
        assert isinstance(health["uptime_seconds"], int)
        status, _, body = http_get(address, "/ready")
        ready = json.loads(body)
        assert status == 200 and ready["status"] == "ok", ready
        assert {"disk", "memory", "data_dir", "log"} <= set(ready["checks"])
        for check in ready["checks"].values():
            assert check["status"] == "ok" and isinstance(check["duration_ms"], int)
        status, headers, body = http_get(address, "/metrics")
        assert status == 200 and headers["content-type"].startswith("text/plain")
        text = body.decode()
        for name in GUIDE_METRICS:
            assert re.search(rf"^{name}", text, re.MULTILINE), f"{name} missing on {address}"
        assert 'vdb_request_duration_seconds_bucket{le="0.001"' in text
        status, _, body = http_get(address, "/health", method="HEAD")
        assert status == 200 and body == b""
        assert http_get(address, "/nowhere")[0] == 404
    assert http_get(node.address, "/health", method="POST")[0] == 405


def metric(address: str, sample: str) -> float:
    text = http_get(address, "/metrics")[2].decode()
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split(" ")[1])
    return 0.0


def test_metrics_move_with_real_events(node: ServerProcess) -> None:
    success = 'vdb_requests_total{method="AppendEvents",status="success"}'
    missing = 'vdb_requests_total{method="AppendEvents",status="stream_not_found"}'
    before = {
        name: metric(node.metrics_address, name)
        for name in (
            success,
            missing,
            "vdb_connections_total",
            "vdb_storage_records_total",
            "vdb_storage_bytes_written_total",
        )
    }
    with Client(node.address, retry_deadline_s=10) as client:
        client.create_stream("metered")
        for _ in range(5):
            client.append("metered", [b"m" * 64])
        with pytest.raises(StreamNotFound):
            client.append("unmetered", [b"m"])
        assert metric(node.metrics_address, "vdb_connections_active") >= 1
    after = {name: metric(node.metrics_address, name) for name in before}
    assert after[success] - before[success] == 5
    assert after[missing] - before[missing] == 1
    assert after["vdb_connections_total"] - before["vdb_connections_total"] >= 1
    assert after["vdb_storage_records_total"] - before["vdb_storage_records_total"] >= 7
    assert after["vdb_storage_bytes_written_total"] > before["vdb_storage_bytes_written_total"]
    count = 'vdb_request_duration_seconds_count{method="AppendEvents"}'
    assert metric(node.address, count) >= 6


def test_garbage_and_damaged_frames_close_only_their_connection(node: ServerProcess) -> None:
    with Client(node.address, retry_deadline_s=10) as bystander:
        bystander.create_stream("bystander")
        garbage = RawConnection(node.address)
        garbage.send_bytes(b"\x00\xffnot a craton frame at all" * 4)
        request_id, reply = garbage.receive()
        assert request_id == 0 and isinstance(reply, ErrorReply)
        assert reply.code == ErrorCode.INVALID_REQUEST
        assert garbage.closed_by_peer()
        bystander.append("bystander", [b"still served"])

        damaged = handshaken(node.address, 0x5EED_0004)
        frame = bytearray(encode(AppendEvents("bystander", (b"payload",), None), 2))
        frame[-3] ^= 0x40  # a bit flipped in the body: its checksum no longer matches
        damaged.send_bytes(bytes(frame))
        request_id, reply = damaged.receive()
        assert request_id == 0 and isinstance(reply, ErrorReply)
        assert reply.code == ErrorCode.INVALID_REQUEST and "checksum" in reply.message
        assert damaged.closed_by_peer()

        early = RawConnection(node.address)
        early.send(Sync(), 1)  # anything before the handshake
        request_id, reply = early.receive()
        assert request_id == 0 and isinstance(reply, ErrorReply) and early.closed_by_peer()

        huge = handshaken(node.address, 0x5EED_0005)
        header = bytearray(encode(Sync(), 2))
        huge.send_bytes(_with_body_size(header, 2**31))
        request_id, reply = huge.receive()
        assert request_id == 0 and isinstance(reply, ErrorReply)
        assert reply.code == ErrorCode.TOO_LARGE and huge.closed_by_peer()

        assert bystander.read("bystander").events == (b"still served",)
        with pytest.raises(InvalidRequest):
            bystander.read_as_of("bystander", 2**62)


def _with_body_size(header: bytearray, body_size: int) -> bytes:
    """A header claiming ``body_size`` bytes, with checksums that match the claim."""
    import struct
    import zlib

    struct.pack_into("<I", header, 12, body_size)
    struct.pack_into("<I", header, 28, zlib.crc32(bytes(header[:28])) & 0xFFFFFFFF)
    return bytes(header)


def test_the_log_is_verifiable_while_served(node: ServerProcess, tmp_path: Path) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "craton", "verify", str(node.data_dir)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_logs_are_json_lines_without_payloads_or_frames(node: ServerProcess) -> None:
    text = node.log_path.read_text(encoding="utf-8")
    lines = text.splitlines()
    assert lines, "the node logs"
    for line in lines:
        record = json.loads(line)  # every line is one JSON object
        assert {"ts", "level", "event"} <= set(record)
    for payload in ("placed", "shipped", "still served", "exactly", "payload", "not a craton"):
        assert payload not in text, f"an event payload reached the log: {payload!r}"


def test_requests_sent_with_the_handshake_are_served_after_it(node: ServerProcess) -> None:
    connection = RawConnection(node.address)
    placement = Placement(PlacementKind.GLOBAL, "")
    connection.send_bytes(
        encode(Handshake(1, 0x5EED_0006, None), 1)
        + encode(CreateStream("eager", DataClass.PUBLIC, placement), 2)
        + encode(AppendEvents("eager", (b"early",), None), 3)
        + encode(Sync(), 4)
    )
    replies = [connection.receive() for _ in range(4)]
    assert replies[0][0] == 1 and isinstance(replies[0][1], HandshakeReply)
    assert {request_id for request_id, _ in replies} == {1, 2, 3, 4}
    appended = dict(replies)[3]
    assert isinstance(appended, AppendEventsReply) and appended.first_offset == 0
    connection.close()
