"""The replica hello and the peer queues, without processes: the hello's client id says who
sends it and is documented byte for byte (docs/PROTOCOL.md, "Replica connections"); hellos
with an impossible identity are refused; a peer's queue is bounded in frames and bytes and
drops its oldest frames, counting them."""

from __future__ import annotations

from pathlib import Path

import pytest

from craton.core.peer_auth import make_proof
from craton.core.wire import Command, Handshake, encode, parse_frame
from craton.net import peers
from craton.net.config import Address, LogLevel
from craton.net.logs import EventLog
from craton.net.metrics import NodeMetrics
from craton.net.peers import (
    PEER_QUEUE_FRAMES_MAX,
    ClusterSettings,
    PeerHello,
    PeerNetwork,
    PeerRefused,
    hello_client_id,
    hello_frame,
    parse_hello,
)

DOC = (Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md").read_text(encoding="utf-8")
ADDRESSES = tuple(Address("10.0.0.1", 5432 + index) for index in range(3))


SECRET = b"an example cluster secret, 32+ B"


def network(replica_id: int = 0, metrics: NodeMetrics | None = None) -> PeerNetwork:
    return PeerNetwork(
        ClusterSettings(replica_id, ADDRESSES, SECRET),
        metrics or NodeMetrics(),
        EventLog(LogLevel.ERROR),
        view=lambda: 0,
    )


def hex_block(data: bytes) -> str:
    pairs = data.hex(" ").split(" ")
    return "\n".join(" ".join(pairs[i : i + 16]) for i in range(0, len(pairs), 16))


def test_the_documented_hello_is_what_a_replica_sends() -> None:
    settings = ClusterSettings(1, ADDRESSES, SECRET)
    hello = hello_frame(settings, 0, 1_800_000_000_000, bytes(range(16)))
    proof = make_proof(SECRET, hello_client_id(1, 3), 0, 1_800_000_000_000, bytes(range(16)))
    assert hello == encode(Handshake(1, hello_client_id(1, 3), proof), 1)
    assert f"`{SECRET.decode()}`" in DOC
    assert f"```text\n{hex_block(hello)}\n```" in DOC
    live = parse_frame(network(replica_id=1).hello(0))
    assert live.command == Command.HANDSHAKE and live.body != hello[32:], "a fresh proof"
    assert f"`0x{peers.PEER_MARKER:016X}`" in DOC


def test_a_hello_says_who_sends_it_and_a_client_id_is_no_hello() -> None:
    for replica, size in ((0, 1), (2, 3), (15, 16)):
        client_id = hello_client_id(replica, size)
        assert parse_hello(client_id) == PeerHello(replica, size, 0, client_id)
    assert parse_hello(0xC0FFEE) is None
    assert parse_hello((1 << 128) - 1) is None


@pytest.mark.parametrize(
    ("hello", "why"),
    [
        (PeerHello(0, 3, 0), "own"),
        (PeerHello(3, 3, 0), "not in 0..2"),
        (PeerHello(1, 5, 0), "5 replicas"),
        (PeerHello(1, 3, 1), "reserved"),
    ],
)
def test_impossible_hellos_are_refused(hello: PeerHello, why: str) -> None:
    with pytest.raises(PeerRefused, match=why):
        network(replica_id=0).check_hello(hello)
    network(replica_id=0).check_hello(PeerHello(2, 3, 0))  # a real peer passes


def test_a_full_queue_drops_its_oldest_frames_and_counts_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    metrics = NodeMetrics()
    net = network(metrics=metrics)
    for number in range(PEER_QUEUE_FRAMES_MAX + 10):
        net.send(1, number.to_bytes(4, "little"))
    queue = net._links[1]._queue
    assert len(queue) == PEER_QUEUE_FRAMES_MAX
    assert queue[0] == (10).to_bytes(4, "little"), "the oldest went first"
    assert metrics.peer_dropped.labels("1")._value.get() == 10
    assert metrics.peer_dropped.labels("2")._value.get() == 0

    monkeypatch.setattr(peers, "PEER_QUEUE_BYTES_MAX", 1000)
    small = network(metrics=metrics)
    for _ in range(5):
        small.send(2, bytes(300))
    assert len(small._links[2]._queue) == 3 and small._links[2]._queued_bytes == 900
    assert metrics.peer_dropped.labels("2")._value.get() == 2
