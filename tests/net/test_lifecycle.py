"""A node's life on real files: kill -9 under load, graceful SIGTERM, restarts, refusals to
start, and the connection limits (count, rate, idleness).

Each test starts its own ``craton-server`` process on free loopback ports with a temporary
data directory and stops it by its PID.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import attrs

from craton.client import Client, CratonError
from craton.core.wire import (
    AppendEvents,
    AppendEventsReply,
    CreateStream,
    DataClass,
    ErrorCode,
    ErrorReply,
    Handshake,
    HandshakeReply,
    Placement,
    PlacementKind,
    Sync,
    SyncReply,
    encode,
)
from tests.net.support import RawConnection, ServerProcess, http_get

WRITERS = 4
SHUTDOWN_BOUND_S = 12.0  # the node's grace (10 s) and the process's exit


@attrs.define
class Writer:
    """Appends numbered events to its own stream until told to stop or the node goes away;
    records every acknowledged append."""

    address: str
    stream: str
    acknowledged: list[tuple[bytes, int, int]] = attrs.Factory(list)  # event, offset, position
    failure: str = ""

    def run(self, stop: threading.Event) -> None:
        try:
            with Client(self.address, retry_deadline_s=1.0, request_timeout_s=1.0) as client:
                number = 0
                while not stop.is_set():
                    event = f"{self.stream}-{number}".encode()
                    result = client.append(self.stream, [event])
                    self.acknowledged.append((event, result.first_offset, result.log_position))
                    number += 1
        except CratonError as error:
            self.failure = str(error)


def start_writers(
    address: str, prefix: str
) -> tuple[list[Writer], list[threading.Thread], threading.Event]:
    with Client(address, retry_deadline_s=10) as client:
        for index in range(WRITERS):
            client.create_stream(f"{prefix}{index}")
    stop = threading.Event()
    writers = [Writer(address, f"{prefix}{index}") for index in range(WRITERS)]
    threads = [threading.Thread(target=w.run, args=(stop,), daemon=True) for w in writers]
    for thread in threads:
        thread.start()
    return writers, threads, stop


def wait_for_acknowledged(writers: list[Writer], count: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while sum(len(w.acknowledged) for w in writers) < count:
        assert time.monotonic() < deadline, "the writers made no progress"
        time.sleep(0.01)


def check_everything_acknowledged_is_there(address: str, writers: list[Writer]) -> None:
    with Client(address, retry_deadline_s=10) as client:
        for writer in writers:
            events = client.read(writer.stream, 0).events
            acked = writer.acknowledged
            assert len(events) in (len(acked), len(acked) + 1), (
                f"{writer.stream}: {len(acked)} appends acknowledged, {len(events)} found "
                "(at most the one in flight may be there unacknowledged)"
            )
            for event, offset, _ in acked:
                assert events[offset] == event, f"{writer.stream}: offset {offset} moved"
            if acked:
                event, offset, position = acked[-1]
                past = client.read_as_of(writer.stream, position).events
                assert len(past) == offset + 1 and past[offset] == event


def verify(data_dir: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "craton", "verify", "--json", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["ok"] is True


def test_kill_9_under_load_loses_no_acknowledged_append(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with ServerProcess(data, tmp_path / "server.log") as server:
        server.start()
        retried = RawConnection(server.address)
        retried.send(Handshake(1, 0xC0FFEE, None), 1)
        assert isinstance(retried.receive()[1], HandshakeReply)
        retried.send(
            CreateStream("retry", DataClass.PUBLIC, Placement(PlacementKind.GLOBAL, "")), 2
        )
        retried.receive()
        retried.send(AppendEvents("retry", (b"exactly once",), None), 3)
        _, before_crash = retried.receive()
        assert isinstance(before_crash, AppendEventsReply)
        retried.close()

        writers, threads, stop = start_writers(server.address, "killed")
        wait_for_acknowledged(writers, 200)
        server.kill9()
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
        assert all(w.failure for w in writers), "every writer saw the node go away"

        server.start()
        check_everything_acknowledged_is_there(server.address, writers)
        again = RawConnection(server.address)  # the same client retries after the crash
        again.send(Handshake(1, 0xC0FFEE, None), 1)
        assert isinstance(again.receive()[1], HandshakeReply)
        again.send(AppendEvents("retry", (b"exactly once",), None), 3)
        assert again.receive() == (3, before_crash), "the retry is answered, not applied again"
        again.close()
        with Client(server.address) as client:
            assert client.read("retry").events == (b"exactly once",)
        assert server.stop() == 0, server.tail()
    verify(data)


def test_sigterm_answers_in_flight_requests_and_exits_0(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with ServerProcess(data, tmp_path / "server.log") as server:
        server.start()
        writers, threads, stop = start_writers(server.address, "termed")
        wait_for_acknowledged(writers, 100)
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        assert server.wait(timeout_s=SHUTDOWN_BOUND_S) == 0, server.tail()
        elapsed_s = time.monotonic() - started
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
        assert elapsed_s < SHUTDOWN_BOUND_S
        stopped = [e for e in server.events() if e["event"] == "server.stopped"]
        assert stopped and stopped[-1]["clean"] is True

        server.start()
        check_everything_acknowledged_is_there(server.address, writers)
        assert server.stop() == 0, server.tail()
    verify(data)


def test_a_second_node_on_the_same_directory_or_port_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with ServerProcess(data, tmp_path / "first.log") as first:
        first.start()
        locked = ServerProcess(data, tmp_path / "second.log")
        with locked:
            locked.start(wait_ready=False)
            assert locked.wait() == 1
        lines = (tmp_path / "second.log").read_text().splitlines()
        refusal = [line for line in lines if line.startswith("craton-server:")]
        assert len(refusal) == 1 and "locked" in refusal[0], lines
        port_taken = ServerProcess(
            tmp_path / "other", tmp_path / "third.log", VDB_BIND_ADDR=first.address
        )
        with port_taken:
            port_taken.start(wait_ready=False)
            assert port_taken.wait() == 1
        lines = (tmp_path / "third.log").read_text().splitlines()
        refusal = [line for line in lines if line.startswith("craton-server:")]
        assert len(refusal) == 1 and "VDB_BIND_ADDR: cannot listen" in refusal[0], lines
        assert first.stop() == 0


def test_a_damaged_committed_record_stops_the_node_with_file_and_offset(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with ServerProcess(data, tmp_path / "server.log") as server:
        server.start()
        with Client(server.address) as client:
            client.create_stream("fragile")
            for number in range(20):
                client.append("fragile", [b"record %d " % number + b"x" * 100])
        assert server.stop() == 0
        segment = data / "log" / "0000000000.seg"
        damaged = bytearray(segment.read_bytes())
        damaged[len(damaged) // 2] ^= 0x01
        segment.write_bytes(bytes(damaged))
        server.start(wait_ready=False)
        assert server.wait() == 1
        lines = server.tail(200).splitlines()
        refusal = [line for line in lines if line.startswith("craton-server:")]
        assert len(refusal) == 1, server.tail()
        assert "log/0000000000.seg" in refusal[0] and "offset" in refusal[0], refusal[0]


def test_connection_count_rate_and_idle_limits(tmp_path: Path) -> None:
    env = {
        "VDB_MAX_CONNECTIONS": "2",
        "VDB_RATE_LIMIT_RPS": "5",
        "VDB_IDLE_TIMEOUT_SECS": "1",
    }
    with ServerProcess(tmp_path / "data", tmp_path / "server.log", **env) as server:
        server.start()
        first, second = RawConnection(server.address), RawConnection(server.address)
        for number, connection in enumerate((first, second)):
            connection.send(Handshake(1, 0xAB00 + number, None), 1)
            assert isinstance(connection.receive()[1], HandshakeReply)
        status, _, body = http_get(server.metrics_address, "/ready")
        assert status == 503 and json.loads(body)["checks"]["memory"]["status"] == "unhealthy"

        extra = RawConnection(server.address)
        extra.send(Handshake(1, 0xAB99, None), 1)
        request_id, refused = extra.receive()
        assert request_id == 0 and isinstance(refused, ErrorReply)
        assert refused.code == ErrorCode.UNAVAILABLE and extra.closed_by_peer()
        assert http_get(server.address, "/health")[0] == 200, "probes are not turned away"

        first.send_bytes(b"".join(encode(Sync(), n) for n in range(2, 22)))
        replies = [first.receive()[1] for _ in range(20)]
        limited = [r for r in replies if isinstance(r, ErrorReply)]
        assert all(r.code == ErrorCode.RATE_LIMITED for r in limited)
        assert len(limited) >= 10 and any(isinstance(r, SyncReply) for r in replies)

        request_id, idle = second.receive()  # says nothing for over a second
        assert request_id == 0 and isinstance(idle, ErrorReply)
        assert idle.code == ErrorCode.UNAVAILABLE and "without requests" in idle.message
        assert second.closed_by_peer()
        for connection in (first, second, extra):
            connection.close()
        assert server.stop() == 0


def test_silent_newcomers_are_capped_and_timed_out(tmp_path: Path) -> None:
    """Sockets that never say what they are hold no more than ``VDB_MAX_CONNECTIONS`` slots,
    and only for the first-bytes timeout (here the 2 s idle timeout, the shorter)."""
    env = {"VDB_MAX_CONNECTIONS": "2", "VDB_IDLE_TIMEOUT_SECS": "2"}
    with ServerProcess(tmp_path / "data", tmp_path / "server.log", **env) as server:
        server.start()
        silent = [RawConnection(server.address) for _ in range(2)]
        time.sleep(0.3)  # the node has accepted both before the third arrives
        third = RawConnection(server.address)
        third.sock.settimeout(1.0)
        assert third.closed_by_peer(), "a third silent newcomer beyond the cap is closed at once"
        silent[0].send(Handshake(1, 0xCD01, None), 1)  # one of them speaks in time
        assert isinstance(silent[0].receive()[1], HandshakeReply)
        assert silent[1].closed_by_peer(), "a newcomer silent past the timeout is closed"
        assert http_get(server.address, "/health")[0] == 200, "the node still serves"
        for connection in (*silent, third):
            connection.close()
        assert server.stop() == 0
