"""The open-files limit: the start-up clamp of ``VDB_MAX_CONNECTIONS``, probes and clients
that keep being served while more sockets than the limit knock, and an accept loop that
backs off (and logs at a bounded rate) when accept fails for want of descriptors."""

from __future__ import annotations

import asyncio
import errno
import io
import json
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from craton.client import Client
from craton.core.wire import Handshake, encode
from craton.net import descriptors
from craton.net.config import Address, LogLevel
from craton.net.descriptors import (
    FDS_PER_CLIENT_SLOT,
    PEER_FDS_PER_PEER,
    DescriptorError,
    plan_descriptors,
    reserve_fds,
)
from craton.net.listener import (
    ACCEPT_BACKOFF_MAX_S,
    ACCEPT_BACKOFF_MIN_S,
    ACCEPT_FAILURE_LOG_INTERVAL_S,
    Listener,
    RateLimitedLog,
    bind,
)
from craton.net.logs import EventLog
from tests.net.support import SOCKET_TIMEOUT_S, ServerProcess, http_get, split

CHILD_OPEN_FILES = 256  # the node's RLIMIT_NOFILE, soft and hard, in the flood test
FLOOD_CONNECTIONS = 400  # sockets opened against it: more than its limit
FLOOD_SETTLE_S = 2.0  # time for the node to accept, serve or refuse the flood
FLOOD_LOG_LINES_MAX = 200  # log lines the node may write while the flood is held
PROBE_ROUNDS = 5  # /health on both ports, and one append and read, this many times


class StepClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now_ns = 0

    def monotonic_ns(self) -> int:
        return self.now_ns

    def realtime_ns(self) -> int:
        return self.now_ns


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_rate_limited_log_writes_one_line_per_interval_with_a_count() -> None:
    stream, clock = io.StringIO(), StepClock()
    limited = RateLimitedLog(EventLog(LogLevel.INFO, stream, clock), "x.failed", 1.0, clock)
    for _ in range(1000):  # a hot loop within one interval
        limited.record(error="Too many open files")
    clock.now_ns = 1_500_000_000
    limited.record(error="Too many open files")
    limited.record(error="Too many open files")
    limited.flush()  # too early: still within the interval
    clock.now_ns = 3_000_000_000
    limited.flush()
    limited.flush()  # nothing left to count
    seen = lines(stream)
    assert [line["count"] for line in seen] == [1, 1000, 1], (
        "expected one line at once, then one counting the other 999 and the new one, then "
        f"one for the last, flushed once its interval had passed: {seen}"
    )


def test_the_reserve_grows_with_files_and_peers_and_the_plan_fits_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert reserve_fds(10, 0) == reserve_fds(0, 0) + 10
    assert reserve_fds(0, 3) == reserve_fds(0, 0) + 3 * PEER_FDS_PER_PEER
    (tmp_path / "segment-0").write_bytes(b"")
    monkeypatch.setattr(descriptors, "raise_open_files_limit", lambda: (1024, 512))
    plan = plan_descriptors(1024, tmp_path, peers=2)
    assert plan.reserve_fds == reserve_fds(1, 2) and plan.raised_from_fds == 512
    assert plan.max_connections == (1024 - plan.reserve_fds) // FDS_PER_CLIENT_SLOT
    assert plan.clamped and plan.needed_fds(1024) > 1024
    monkeypatch.setattr(descriptors, "raise_open_files_limit", lambda: (1 << 20, None))
    roomy = plan_descriptors(1024, tmp_path, peers=2)
    assert roomy.max_connections == 1024 and not roomy.clamped


def test_the_soft_open_files_limit_is_raised_to_the_hard_limit() -> None:
    """In a child whose limits are 128 (soft) and 512 (hard): raised to 512."""
    script = "from craton.net.descriptors import raise_open_files_limit as r; print(r())"

    def limits() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (128, 512))

    result = subprocess.run(
        [sys.executable, "-c", script],
        preexec_fn=limits,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.stdout.strip() == "(512, 128)", result.stdout + result.stderr


def test_accept_failures_back_off_and_are_logged_at_a_bounded_rate() -> None:
    """accept fails with EMFILE a hundred times in a row: the loop sleeps between tries
    (growing to ACCEPT_BACKOFF_MAX_S) and writes far fewer lines than failures."""
    stream = io.StringIO()
    failures_total = 100
    calls: list[int] = []
    clock = StepClock()

    async def run() -> None:
        loop = asyncio.get_running_loop()

        async def failing_accept(sock: socket.socket) -> tuple[socket.socket, object]:
            calls.append(clock.now_ns)
            if len(calls) <= failures_total:
                raise OSError(errno.EMFILE, "Too many open files")
            await asyncio.Event().wait()  # then nobody connects
            raise AssertionError("unreachable")

        loop.sock_accept = failing_accept  # type: ignore[method-assign]
        sockets = bind(Address("127.0.0.1", 0))
        log = EventLog(LogLevel.INFO, stream, clock)
        listener = Listener(sockets, asyncio.Protocol, log, clock, variable="VDB_BIND_ADDR")
        listener.start()
        # Each sleep moves the test clock by the sleep's length: the log's rate is measured
        # in the node's time, which this test plays.
        real_sleep = asyncio.sleep

        async def stepping_sleep(delay: float, result: object = None) -> object:
            clock.now_ns += int(delay * 1e9)
            return await real_sleep(0, result)

        asyncio.sleep = stepping_sleep  # type: ignore[assignment]
        try:
            for _ in range(10_000):
                if len(calls) > failures_total:
                    break
                await real_sleep(0)
        finally:
            asyncio.sleep = real_sleep
            listener.close()

    asyncio.run(run())
    assert len(calls) == failures_total + 1, f"expected {failures_total} failures and a retry"
    seen = [line for line in lines(stream) if line["event"] == "server.accept_failed"]
    backoffs = [float(str(line["backoff_s"])) for line in seen]
    assert seen and sum(int(str(line["count"])) for line in seen) <= failures_total
    elapsed_s = clock.now_ns / 1e9
    assert elapsed_s >= (failures_total - 10) * ACCEPT_BACKOFF_MAX_S, "the loop did not wait"
    assert len(seen) <= 1 + elapsed_s / ACCEPT_FAILURE_LOG_INTERVAL_S, (
        f"expected at most one line per {ACCEPT_FAILURE_LOG_INTERVAL_S} s: {len(seen)} lines"
    )
    assert len(seen) < failures_total // 2, f"one line per failure is the hot loop: {len(seen)}"
    assert backoffs[0] == ACCEPT_BACKOFF_MIN_S and max(backoffs) == ACCEPT_BACKOFF_MAX_S


def test_the_plan_refuses_a_limit_below_the_reserve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(descriptors, "raise_open_files_limit", lambda: (64, None))
    with pytest.raises(DescriptorError, match="open-files limit"):
        plan_descriptors(1024, tmp_path, peers=0)


def test_more_sockets_than_the_open_files_limit_leave_probes_and_clients_served(
    tmp_path: Path,
) -> None:
    log_path = tmp_path / "server.log"
    server = ServerProcess(tmp_path / "data", log_path, open_files_limit=CHILD_OPEN_FILES)
    flood: list[socket.socket] = []
    with server:
        server.start()
        clamped = server.wait_for("server.max_connections_clamped")
        assert clamped["asked"] == 1024 and clamped["open_files_limit"] == CHILD_OPEN_FILES
        assert 0 < int(str(clamped["max_connections"])) < 1024
        assert "LimitNOFILE" in str(clamped["note"]), clamped
        with Client(server.address, retry_deadline_s=10) as client:
            client.create_stream("held")
            client.append("held", [b"before"])
            lines_before = len(log_path.read_text().splitlines())
            try:
                hello = encode(Handshake(1, 0xF100D, None), 1)
                for _ in range(FLOOD_CONNECTIONS):
                    sock = socket.create_connection(split(server.address), timeout=SOCKET_TIMEOUT_S)
                    flood.append(sock)
                    sock.sendall(hello)  # an idle client, as many as the 1,100
                time.sleep(FLOOD_SETTLE_S)
                for round_number in range(PROBE_ROUNDS):
                    for address in (server.metrics_address, server.address):
                        status, _, body = http_get(address, "/health")
                        assert status == 200, f"/health on {address}: {status} {body!r}"
                    event = f"during-{round_number}".encode()
                    client.append("held", [event])
                    assert client.read("held", 0).events[-1] == event
                held_lines = log_path.read_text().splitlines()[lines_before:]
            finally:
                for sock in flood:
                    sock.close()
        print(f"flood: {len(held_lines)} log lines while {FLOOD_CONNECTIONS} sockets were held")
        assert len(held_lines) < FLOOD_LOG_LINES_MAX, (
            f"expected under {FLOOD_LOG_LINES_MAX} log lines during the flood, got "
            f"{len(held_lines)}:\n" + "\n".join(held_lines[-20:])
        )
        assert not any("unhandled_error" in line for line in held_lines), held_lines[-20:]
        assert server.stop() == 0
