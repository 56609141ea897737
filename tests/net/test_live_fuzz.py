"""Fuzzing a running node over real sockets.

Each example opens a connection to a live ``craton-server`` (handshaken first, or not) and
sends it hostile bytes: arbitrary garbage, or valid frames of any message type with bits
flipped, cut short, their length field lying, or spliced together. Whatever arrives, the
node may answer with error frames, answer a frame that is still valid, wait for the rest of
a frame that was cut short, or close that one connection — and nothing else: a bystander
client appends between examples and must be answered every time, and at the end every
event the bystander saw acknowledged is read back at the offset it was told.

CI runs a bounded number of examples; CRATON_LIVE_FUZZ_EXAMPLES selects more.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from craton.client import Client
from craton.core.wire import Handshake, decode_frame, encode
from craton.core.wire.frame import Frame, FrameDecoder
from craton.core.wire.schema import DecodeError
from tests.fuzz.wire_strategies import request_ids, small_messages
from tests.net.support import ServerProcess, split

EXAMPLES = int(os.environ.get("CRATON_LIVE_FUZZ_EXAMPLES", "60"))
REPLY_WAIT_S = 0.3  # how long an example listens for the node's answer
STREAM = "bystander"

frames = st.tuples(small_messages(), request_ids()).map(lambda pair: encode(*pair))


@st.composite
def hostile_bytes(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["garbage", "flip", "truncate", "length", "splice"]))
    if kind == "garbage":
        return draw(st.binary(min_size=1, max_size=512))
    frame = bytearray(draw(frames))
    if kind == "flip":
        for _ in range(draw(st.integers(1, 4))):
            bit = draw(st.integers(0, len(frame) * 8 - 1))
            frame[bit // 8] ^= 1 << (bit % 8)
    elif kind == "truncate":
        frame = frame[: draw(st.integers(1, len(frame) - 1))]
    elif kind == "length":
        claimed = draw(st.integers(0, 2**32 - 1))
        frame[12:16] = claimed.to_bytes(4, "little")
    else:
        other = draw(frames)
        cut = draw(st.integers(1, len(frame) - 1))
        frame = frame[:cut] + bytearray(other)
    return bytes(frame)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("fuzzed")
    with ServerProcess(root / "data", root / "server.log") as server:
        server.start()
        yield server
        assert server.stop() == 0, server.tail()


@pytest.fixture(scope="module")
def bystander(node: ServerProcess) -> Iterator[tuple[Client, list[tuple[int, bytes]]]]:
    with Client(node.address, retry_deadline_s=10) as client:
        client.create_stream(STREAM)
        acknowledged: list[tuple[int, bytes]] = []
        yield client, acknowledged


def provoke(address: str, payload: bytes, handshake: bool) -> list[Frame]:
    """Send ``payload`` on a fresh connection; return what the node answered."""
    answers: list[Frame] = []
    decoder = FrameDecoder()
    with socket.create_connection(split(address), timeout=REPLY_WAIT_S) as sock:
        if handshake:
            sock.sendall(encode(Handshake(1, 0xF022_0001, None), 1))
        try:
            sock.sendall(payload)
            while True:
                data = sock.recv(65536)
                if not data:
                    break  # the node closed this connection: allowed
                decoder.feed(data)
                while (frame := decoder.next_frame()) is not None:
                    answers.append(frame)
        except (TimeoutError, ConnectionResetError, BrokenPipeError):
            pass  # waiting for the rest of a cut frame, or closed: both allowed
        except DecodeError as error:  # pragma: no cover - the node sent bad bytes
            raise AssertionError(f"the node sent an invalid frame: {error.reason}") from None
    return answers


def test_hostile_bytes_get_an_error_or_a_close_and_nothing_else(
    node: ServerProcess,
    bystander: tuple[Client, list[tuple[int, bytes]]],
) -> None:
    """Each hostile connection gets valid error frames or a close; between them a bystander's
    append is acknowledged; afterwards every acknowledged event is still where it landed.
    (One test, so that no test runner can split the fuzzing from the check after it.)"""
    client, acknowledged = bystander

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        database=None,
    )
    @given(payload=hostile_bytes(), handshake=st.booleans())
    def provoke_then_append(payload: bytes, handshake: bool) -> None:
        answers = provoke(node.address, payload, handshake)
        for frame in answers:  # whole, checksummed frames (the decoder checked), and valid
            decode_frame(frame)
        event = f"event {len(acknowledged)}".encode()
        reply = client.append(STREAM, [event])
        acknowledged.append((reply.first_offset, event))
        assert node.process is not None and node.process.poll() is None, node.tail()

    provoke_then_append()
    assert acknowledged, "the fuzzing acknowledged the bystander's events"
    events = client.read(STREAM, max_events=len(acknowledged) + 10).events
    for offset, event in acknowledged:
        assert events[offset] == event, f"event at offset {offset} changed or vanished"
