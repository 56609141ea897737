"""Hostile and careless clients of a real ``craton-server``: clients that never read their
replies, that trickle a frame, that send malformed HTTP to the metrics port. Each gets a
clear answer or a closed connection, the node's memory and sockets stay bounded, and a
bystander client is served throughout.

Each test starts its own node on free loopback ports with a temporary data directory and
stops it by its PID.
"""

from __future__ import annotations

import signal
import socket
import ssl
import time
from pathlib import Path

import pytest

from craton.client import Client
from craton.core.wire import (
    HEADER_SIZE,
    AppendEvents,
    ErrorCode,
    ErrorReply,
    Handshake,
    HandshakeReply,
    ReadEvents,
    ReadEventsReply,
    Sync,
    SyncReply,
    encode,
)
from craton.core.wire.codec import AnyMessage
from craton.core.wire.messages import EVENT_SIZE_MAX, READ_SIZE_MAX
from craton.net.connection import REPLY_BYTES_MAX
from tests.net.support import RawConnection, ServerProcess, http_get, split

EVENT = b"e" * (EVENT_SIZE_MAX - 64)  # about 1 MiB: a read of the stream is a big reply
WAIT_S = 20.0  # hang guard for anything the node is expected to do


def filled_node(tmp_path: Path, events: int, **env: str) -> ServerProcess:
    """A node whose stream ``big`` holds ``events`` events of about 1 MiB each."""
    server = ServerProcess(tmp_path / "data", tmp_path / "server.log", **env)
    server.start()
    with Client(server.address, retry_deadline_s=10) as client:
        client.create_stream("big")
        for _ in range(events):
            client.append("big", [EVENT])
    return server


def non_reader(address: str, client_id: int, reads: int) -> RawConnection:
    """A client that pipelines ``reads`` whole-stream reads of ``big`` and reads nothing."""
    connection = RawConnection(address)
    connection.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    connection.send(Handshake(1, client_id, None), 1)
    assert isinstance(connection.receive()[1], HandshakeReply)
    frames = [encode(ReadEvents("big", 0, 8192, READ_SIZE_MAX), 10 + n) for n in range(reads)]
    connection.send_bytes(b"".join(frames))
    return connection


def wait_for_event(server: ServerProcess, event: str, peer: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if any(e["event"] == event and e.get("peer") == peer for e in server.events()):
            return
        time.sleep(0.05)
    raise AssertionError(f"no {event} for {peer} within {WAIT_S} s:\n" + server.tail())


def ended_by_reset(sock: socket.socket) -> bool:
    """Read what reaches ``sock`` (within ``WAIT_S``): True if it ends with a reset, False
    if it ends with an orderly close or is still open then."""
    sock.settimeout(1.0)
    deadline = time.monotonic() + WAIT_S
    try:
        while time.monotonic() < deadline:
            try:
                if not sock.recv(1 << 20):
                    return False
            except TimeoutError:
                continue
    except ConnectionResetError:
        return True
    return False


def rss_bytes(pid: int) -> int:
    """The resident memory of process ``pid`` (Linux's /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux's /proc")
def test_replies_a_client_does_not_take_hold_bounded_memory(tmp_path: Path) -> None:
    """A client pipelines 64 reads whose replies are about 8 MiB each, and reads none of
    them: the node takes requests from it only while its replies in flight and unsent
    stay under REPLY_BYTES_MAX, so its memory grows by a bounded amount rather than by
    half a gigabyte; a bystander is served meanwhile, and the flood is answered, in
    order, once its client starts reading."""
    with filled_node(tmp_path, 8) as server:
        with Client(server.address, retry_deadline_s=10) as bystander:
            bystander.read("big", 0, max_bytes=READ_SIZE_MAX)  # such a reply was built once
            before = rss_bytes(server.pid)
            flood = non_reader(server.address, 0xBAD0_0002, 64)
            # requests are applied in the order received: once the bystander's read is
            # answered, every read of the flood the node took has been answered too
            assert len(bystander.read("big", 0, max_bytes=READ_SIZE_MAX).events) == 8
            grown = rss_bytes(server.pid) - before
        bound = 6 * REPLY_BYTES_MAX
        assert grown < bound, f"the node grew by {grown} bytes; expected under {bound}"
        flood.sock.settimeout(WAIT_S)
        replies = [flood.receive() for _ in range(2)]  # the client starts reading at last
        assert [request_id for request_id, _ in replies] == [10, 11]
        assert all(isinstance(reply, ReadEventsReply) for _, reply in replies), replies[0]
        flood.close()
        assert server.stop() == 0, server.tail()


def test_a_closed_connection_whose_client_takes_no_replies_is_reset(tmp_path: Path) -> None:
    """The idle timeout closes a connection whose client stopped reading with megabytes of
    replies unsent; the node then resets it rather than keeping the socket and the
    replies for ever (it no longer counts it against VDB_MAX_CONNECTIONS)."""
    with filled_node(tmp_path, 4, VDB_IDLE_TIMEOUT_SECS="1") as server:
        stuck = non_reader(server.address, 0xBAD0_0001, 6)
        name = stuck.sock.getsockname()
        wait_for_event(server, "connection.closed", f"{name[0]}:{name[1]}")
        assert ended_by_reset(stuck.sock), "the node resets the connection it gave up on"
        stuck.close()
        with Client(server.address, retry_deadline_s=10) as bystander:
            assert bystander.read("big", 0, max_events=1).events == (EVENT,)
        assert server.stop() == 0, server.tail()


def http_exchange(address: str, request: bytes) -> bytes:
    """Send ``request`` raw; what the server answered before it closed (or reset)."""
    answer = b""
    with socket.create_connection(split(address), timeout=WAIT_S) as sock:
        try:
            sock.sendall(request)
            while chunk := sock.recv(65536):
                answer += chunk
        except (ConnectionResetError, BrokenPipeError):
            pass  # closed while the rest of the request was still coming: allowed
    return answer


def test_malformed_http_on_the_metrics_port_is_answered_400_and_not_logged(
    tmp_path: Path,
) -> None:
    """Requests aiohttp cannot parse get a 400; the log records no error for them and
    none of their bytes (a client's bytes never reach the log)."""
    marker = b"hostileheadermarker"
    requests = (
        b"GET /health HTTP/1.1\r\nX-Long: " + marker * 60_000 + b"\r\n\r\n",
        b"GET /" + marker * 1000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /health HTTP/1.1\r\nBad Header" + marker + b"\r\n\r\n",
        b"BREW /" + marker + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    with ServerProcess(tmp_path / "data", tmp_path / "server.log") as server:
        server.start()
        for request in requests:
            answer = http_exchange(server.metrics_address, request)
            assert answer.split(b" ", 2)[1:2] == [b"400"], (request[:40], answer[:80])
        status, _, _ = http_get(server.metrics_address, "/health")
        assert status == 200, "the metrics port still serves"
        assert server.stop() == 0, server.tail()
        errors = [e for e in server.events() if e["level"] == "error"]
        assert errors == [], f"expected no error for a client's bad request: {errors}"
        assert marker.decode() not in server.log_path.read_text(), "a client's bytes were logged"


def test_a_frame_trickled_byte_by_byte_does_not_hold_the_connection(tmp_path: Path) -> None:
    """A client announces a 1 MB append and sends its body one byte at a time, never
    completing it: the connection is closed at the idle timeout as one without requests
    (a byte now and then is no request), and the append is not applied."""
    env = {"VDB_IDLE_TIMEOUT_SECS": "1"}
    with ServerProcess(tmp_path / "data", tmp_path / "server.log", **env) as server:
        server.start()
        with Client(server.address, retry_deadline_s=10) as bystander:
            bystander.create_stream("slow")
            connection = RawConnection(server.address)
            connection.send(Handshake(1, 0xBAD0_0003, None), 1)
            assert isinstance(connection.receive()[1], HandshakeReply)
            frame = encode(AppendEvents("slow", (b"s" * 1_000_000,), None), 2)
            connection.send_bytes(frame[:HEADER_SIZE])
            answer = trickle(connection, frame[HEADER_SIZE:])
            assert answer is not None, f"the connection was still open after {WAIT_S} s"
            request_id, reply = answer
            assert request_id == 0 and isinstance(reply, ErrorReply), answer
            assert reply.code == ErrorCode.UNAVAILABLE and "without requests" in reply.message
            assert connection.closed_by_peer()
            connection.close()
            assert bystander.read("slow").events == (), "the unfinished append was not applied"
        assert server.stop() == 0, server.tail()


def trickle(connection: RawConnection, body: bytes) -> tuple[int, AnyMessage] | None:
    """Send ``body`` a byte every 0.2 s until the node answers (its answer) or ``WAIT_S``
    pass (None)."""
    deadline = time.monotonic() + WAIT_S
    connection.sock.settimeout(0.2)
    for byte in body:
        if time.monotonic() >= deadline:
            return None
        try:
            connection.send_bytes(bytes([byte]))
            return connection.receive()
        except TimeoutError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            break
    connection.sock.settimeout(WAIT_S)
    return connection.receive()


def test_silent_and_unfinished_requests_on_the_metrics_port_are_closed(tmp_path: Path) -> None:
    """Sockets that open the metrics port and send nothing, or half a request, are closed
    after the HTTP read timeout instead of holding a descriptor each for an hour."""
    with ServerProcess(tmp_path / "data", tmp_path / "server.log") as server:
        server.start()
        silent = RawConnection(server.metrics_address)
        unfinished = RawConnection(server.metrics_address)
        unfinished.send_bytes(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        for connection in (silent, unfinished):
            connection.sock.settimeout(WAIT_S)
            assert connection.closed_by_peer(), f"still open after {WAIT_S} s"
            connection.close()
        assert http_get(server.metrics_address, "/health")[0] == 200
        assert server.stop() == 0, server.tail()


def test_a_graceful_stop_with_unfinished_connections_logs_no_error(tmp_path: Path) -> None:
    """SIGTERM while one socket has said nothing yet, one has sent half an HTTP request and
    one takes none of its replies: the node still exits 0 after a clean stop, resets the
    one that takes nothing, and logs no error (no connection task ends as unhandled)."""
    with filled_node(tmp_path, 4) as server:
        silent = RawConnection(server.address)
        half = RawConnection(server.address)
        half.send_bytes(b"GET /health HTTP/1.1\r\n")
        stuck = non_reader(server.address, 0xBAD0_0004, 8)
        with Client(server.address, retry_deadline_s=10) as bystander:
            bystander.read("big", 0)  # the stuck client's reads were taken before this
        server.signal(signal.SIGTERM)
        assert server.wait() == 0, server.tail()
        events = server.events()
        stopped = [e for e in events if e["event"] == "server.stopped"]
        assert stopped and stopped[-1]["clean"] is True, server.tail()
        errors = [e for e in events if e["level"] == "error"]
        assert errors == [], f"expected no error for a client's unfinished connection: {errors}"
        name = stuck.sock.getsockname()
        reset = [e for e in events if e["event"] == "connection.reset"]
        assert [e["peer"] for e in reset] == [f"{name[0]}:{name[1]}"], server.tail()
        for connection in (silent, half, stuck):
            connection.close()


def test_a_silent_socket_on_the_tls_port_is_closed_at_the_first_bytes_timeout(
    tmp_path: Path,
) -> None:
    """With TLS, a socket that never starts its TLS handshake is closed as a silent newcomer
    is on a plain port (here at the 1 s idle timeout, shorter than FIRST_BYTES_TIMEOUT_S),
    not after asyncio's default minute; a TLS client is served meanwhile."""
    from tests.net.test_tls import self_signed

    cert, key = self_signed(tmp_path)
    env = {"VDB_TLS_CERT": str(cert), "VDB_TLS_KEY": str(key), "VDB_IDLE_TIMEOUT_SECS": "1"}
    with ServerProcess(tmp_path / "data", tmp_path / "server.log", **env) as server:
        server.start()
        silent = RawConnection(server.address)
        silent.sock.settimeout(WAIT_S)
        assert silent.closed_by_peer(), f"a silent socket was still open after {WAIT_S} s"
        silent.close()
        trust = ssl.create_default_context(cafile=str(cert))
        tls_client = RawConnection(server.address, tls=trust)
        tls_client.send(Handshake(1, 0xBAD0_0005, None), 1)
        assert isinstance(tls_client.receive()[1], HandshakeReply)
        tls_client.close()
        assert server.stop() == 0, server.tail()


def test_frames_pipelined_behind_the_handshake_wait_for_it_however_many(tmp_path: Path) -> None:
    """A client sends its handshake and 3000 requests in one go: they wait, in order, until
    the handshake is answered (the node stops reading meanwhile), and all are answered."""
    with ServerProcess(tmp_path / "data", tmp_path / "server.log") as server:
        server.start()
        connection = RawConnection(server.address)
        count = 3000
        syncs = b"".join(encode(Sync(), 2 + n) for n in range(count))
        connection.send_bytes(encode(Handshake(1, 0xBAD0_0006, None), 1) + syncs)
        request_id, reply = connection.receive()
        assert request_id == 1 and isinstance(reply, HandshakeReply), reply
        replies = [connection.receive() for _ in range(count)]
        assert [request_id for request_id, _ in replies] == list(range(2, 2 + count))
        assert all(isinstance(reply, SyncReply) for _, reply in replies), replies[0]
        connection.close()
        assert server.stop() == 0, server.tail()
