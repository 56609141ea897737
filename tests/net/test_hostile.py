"""Hostile and careless clients of a real ``craton-server``: clients that never read their
replies, that trickle a frame, that send malformed HTTP to the metrics port. Each gets a
clear answer or a closed connection, the node's memory and sockets stay bounded, and a
bystander client is served throughout.

Each test starts its own node on free loopback ports with a temporary data directory and
stops it by its PID.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

from craton.client import Client
from craton.core.wire import Handshake, HandshakeReply, ReadEvents, encode
from craton.core.wire.messages import EVENT_SIZE_MAX, READ_SIZE_MAX
from tests.net.support import RawConnection, ServerProcess

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
    connection.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
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
