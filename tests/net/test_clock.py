"""A client connection, the node's log and the client read time only from the ``Clock``
they are given (no sockets here).

The clock's wall-clock time starts years away from the machine's, so a token dated by it
is accepted only if the connection judges it by that clock and not by the system's.

How a token's expiry behaves during a connection's life (``craton.net.connection``): the
token is checked at the handshake, and its expiry (``Principal.expires_ms``: ``exp`` plus
``JWT_LEEWAY_S``) is judged again at every frame after it, against the wall-clock time read
when the frame is served. Nothing is cached: the first frame served after the expiry gets
``AUTHENTICATION_FAILED`` (request id 0) and the connection is closed, so a clock stepped
back afterwards finds nothing to revive; a frame that arrives while the (stepped-back)
clock reads a time before the expiry is served, as a handshake at that time would be.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Callable, Coroutine, Iterator

import jwt
import pytest

from craton.client.aio import _retrying
from craton.client.errors import ConnectionFailed
from craton.core.auth import JWT_LEEWAY_S, AuthMode, JwtPolicy
from craton.core.wire import (
    PROTOCOL_VERSION,
    ErrorCode,
    ErrorReply,
    FrameDecoder,
    Handshake,
    HandshakeReply,
    Sync,
    SyncReply,
    decode_frame,
    encode,
)
from craton.core.wire.codec import AnyMessage
from craton.net.config import LogLevel
from craton.net.connection import (
    AUTH_FAILURE_RECORDS_PER_S,
    ClientConnection,
    DirectReader,
    TokenBucket,
)
from craton.net.logs import EventLog
from craton.net.metrics import NodeMetrics
from craton.net.node import Outcome, Refused
from tests.clock_support import FakeClock

SECRET = "a jwt secret for the clock tests, 32 bytes or more"
POLICY = JwtPolicy(SECRET.encode(), "craton", "craton", 3600)
WALL_START_S = 2_000_000_000.0  # 2033: a token dated by the system clock would be refused
TOKEN_LIFETIME_S = 600
EXPIRES_S = WALL_START_S + TOKEN_LIFETIME_S + JWT_LEEWAY_S  # Principal.expires_ms, in s


def _token(iat_s: float = WALL_START_S, lifetime_s: int = TOKEN_LIFETIME_S) -> str:
    claims = {
        "sub": "clock-test",
        "tenant_id": 7,
        "role": "member",
        "iss": "craton",
        "aud": "craton",
        "iat": int(iat_s),
        "exp": int(iat_s) + lifetime_s,
    }
    return jwt.encode(claims, SECRET, algorithm="HS256")


class _Host:
    """The little of a ``ReplicaHost`` a connection serving syncs and handshakes uses."""

    replica_id = 0
    cluster_size = 1
    view = 0
    commit = 0
    halted = None
    serving = True

    def __init__(self) -> None:
        self.records: list[bytes] = []

    def when_recovered(self, then: Callable[[], None]) -> None:
        then()

    def open_session(
        self,
        tenant_id: int,
        client_id: int,
        handshake_request_id: int,
        ready: Callable[[Refused | None], None],
    ) -> None:
        ready(None)

    def submit_record(self, body: bytes) -> None:
        self.records.append(body)

    def submit_write(self, *args: object) -> None:
        raise AssertionError("these tests send no writes")

    def submit_read(self, body: bytes, done: Callable[[Outcome], None]) -> None:
        raise AssertionError("these tests send no reads")

    def api_key(self, key_id: int) -> None:
        return None


class _Owner:
    """The server side of a connection (``ConnectionOwner``), on the test's clock."""

    def __init__(self, clock: FakeClock, rate_limit_rps: float | None) -> None:
        self.host = _Host()
        self.metrics = NodeMetrics()
        self.log = EventLog(LogLevel.ERROR, io.StringIO(), clock)
        self.rate_limit_rps = rate_limit_rps
        self.auth_mode = AuthMode.JWT
        self.jwt_policy = POLICY
        self.auth_failure_records = TokenBucket(
            AUTH_FAILURE_RECORDS_PER_S, clock.monotonic_ns() / 1e9
        )
        self.shutting_down = False


class _Transport:
    def __init__(self) -> None:
        self.closing = False

    def get_write_buffer_size(self) -> int:
        return 0

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return 0, 64 * 1024

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class _Writer:
    """A ``StreamWriter`` that keeps what is written."""

    def __init__(self) -> None:
        self.transport = _Transport()
        self.written = bytearray()

    def write(self, data: bytes) -> None:
        assert not self.transport.closing, "nothing is written after close"
        self.written += data

    def is_closing(self) -> bool:
        return self.transport.closing

    def close(self) -> None:
        self.transport.closing = True

    async def drain(self) -> None:
        pass


class _Client:
    """One connection driven frame by frame; ``send`` returns the replies it produced."""

    def __init__(self, clock: FakeClock, rate_limit_rps: float | None = None) -> None:
        self.clock = clock
        self.owner = _Owner(clock, rate_limit_rps)
        self.reader = DirectReader()
        self.writer = _Writer()
        self.connection = ClientConnection(
            self.owner,
            self.reader,
            self.writer,  # type: ignore[arg-type]
            "test-peer",
            clock,
        )
        self._decoder = FrameDecoder()
        self._task = asyncio.create_task(self.connection.run(b""))

    async def start(self, credential: str) -> list[tuple[int, AnyMessage]]:
        await asyncio.sleep(0)  # ``run`` attaches the reader
        return self.send(Handshake(PROTOCOL_VERSION, 0xC10C, credential), 1)

    def send(self, message: AnyMessage, request_id: int) -> list[tuple[int, AnyMessage]]:
        self.reader.feed_data(encode(message, request_id))
        return self.replies()

    def replies(self) -> list[tuple[int, AnyMessage]]:
        self._decoder.feed(bytes(self.writer.written))
        self.writer.written.clear()
        found = []
        while (frame := self._decoder.next_frame()) is not None:
            found.append((frame.request_id, decode_frame(frame)))
        return found

    @property
    def closed(self) -> bool:
        return self.writer.is_closing()

    async def end(self) -> None:
        if not self.closed:
            self.reader.feed_eof()
        await asyncio.wait_for(self._task, 5.0)

    def expired_count(self) -> float:
        value = self.owner.metrics.registry.get_sample_value(
            "vdb_auth_failures_total", {"reason": "expired"}
        )
        return value or 0.0


def _run(test: Callable[[], Coroutine[object, object, None]]) -> None:
    asyncio.run(test())


@pytest.fixture
def clock() -> Iterator[FakeClock]:
    yield FakeClock(WALL_START_S)


def _is_sync_reply(replies: list[tuple[int, AnyMessage]], request_id: int) -> bool:
    return (
        len(replies) == 1 and replies[0][0] == request_id and isinstance(replies[0][1], SyncReply)
    )


# --- JWT expiry follows the injected wall clock ---------------------------------------------


def test_the_handshake_judges_a_token_by_the_injected_clock(clock: FakeClock) -> None:
    async def test() -> None:
        client = _Client(clock)
        replies = await client.start(_token())
        assert [type(m) for _, m in replies] == [HandshakeReply], (
            f"a token dated by the injected clock is accepted: {replies}"
        )
        await client.end()

        clock.set_wall_s(EXPIRES_S + 1)  # the same token, judged a moment past its expiry
        late = _Client(clock)
        replies = await late.start(_token())
        assert len(replies) == 1 and replies[0][0] == 0, f"expected one refusal: {replies}"
        refusal = replies[0][1]
        assert isinstance(refusal, ErrorReply), refusal
        assert refusal.code == ErrorCode.AUTHENTICATION_FAILED, refusal
        assert late.closed and late.expired_count() == 1
        await late.end()

    _run(test)


def test_a_forward_jump_past_exp_ends_the_connection_and_a_backward_one_cannot_revive_it(
    clock: FakeClock,
) -> None:
    async def test() -> None:
        client = _Client(clock)
        replies = await client.start(_token())
        assert isinstance(replies[0][1], HandshakeReply), replies
        assert _is_sync_reply(client.send(Sync(), 2), 2), "the token is good now"

        clock.set_wall_s(EXPIRES_S - 1)  # just inside exp + leeway: still good
        assert _is_sync_reply(client.send(Sync(), 3), 3), "expected served before the expiry"

        clock.set_wall_s(EXPIRES_S + 1)  # the wall clock jumps past exp + leeway
        replies = client.send(Sync(), 4)
        assert len(replies) == 1, f"expected one refusal, got {replies}"
        request_id, refusal = replies[0]
        assert isinstance(refusal, ErrorReply) and request_id == 0, replies
        assert refusal.code == ErrorCode.AUTHENTICATION_FAILED, refusal
        assert client.closed, "an expired token's connection is closed"
        assert client.expired_count() == 1
        assert len(client.owner.host.records) == 1, "the refusal is audited"

        clock.set_wall_s(WALL_START_S)  # back before exp: the connection stays ended
        assert client.send(Sync(), 5) == [], "a closed connection serves nothing more"
        assert client.expired_count() == 1
        await client.end()

    _run(test)


def test_expiry_is_judged_per_frame_by_the_clock_at_that_frame(clock: FakeClock) -> None:
    # No decision is cached between frames: a wall clock that went past the expiry and
    # came back before any frame arrived never refused anything.
    async def test() -> None:
        client = _Client(clock)
        await client.start(_token())
        clock.set_wall_s(EXPIRES_S + 3600)
        clock.set_wall_s(WALL_START_S + 1)
        assert _is_sync_reply(client.send(Sync(), 2), 2)
        assert not client.closed and client.expired_count() == 0
        await client.end()

    _run(test)


# --- the rate limit refills on the injected monotonic clock ----------------------------------


def test_the_rate_limit_refills_by_the_injected_monotonic_clock(clock: FakeClock) -> None:
    async def test() -> None:
        client = _Client(clock, rate_limit_rps=2.0)  # a bucket of 2 tokens, 2 a second
        replies = await client.start(_token())
        assert isinstance(replies[0][1], HandshakeReply), "the handshake takes no token"

        def limited(request_id: int) -> bool:
            replies = client.send(Sync(), request_id)
            assert len(replies) == 1 and replies[0][0] == request_id, replies
            reply = replies[0][1]
            return isinstance(reply, ErrorReply) and reply.code == ErrorCode.RATE_LIMITED

        assert [limited(2), limited(3), limited(4)] == [False, False, True], (
            "2 tokens saved up, none refilled while the injected clock stands still"
        )
        clock.advance(0.25)
        assert limited(5), "half a token after 0.25 s"
        clock.advance(0.25)
        assert [limited(6), limited(7)] == [False, True], "one token after another 0.25 s"
        clock.advance(60.0)  # well within the token's life
        assert [limited(8), limited(9), limited(10)] == [False, False, True], (
            "a minute refills the bucket to its capacity, 2, and no more"
        )
        assert not client.closed
        await client.end()

    _run(test)


def test_a_connection_is_active_on_the_injected_monotonic_clock(clock: FakeClock) -> None:
    async def test() -> None:
        client = _Client(clock)
        await client.start(_token())
        clock.advance(42.0)
        client.send(Sync(), 2)
        assert client.connection.last_active_s == clock.monotonic_ns() / 1e9, (
            "the idle sweep compares the server clock's time with this"
        )
        await client.end()

    _run(test)


def test_the_token_bucket_alone() -> None:
    bucket = TokenBucket(4.0, 100.0)
    assert [bucket.take(100.0) for _ in range(5)] == [True] * 4 + [False]
    assert bucket.take(100.25) and not bucket.take(100.25)
    assert not bucket.take(99.0), "time that goes backwards adds no tokens"


# --- log stamps and client deadlines -----------------------------------------------------------


def test_log_lines_are_stamped_with_the_injected_wall_clock(clock: FakeClock) -> None:
    stream = io.StringIO()
    EventLog(LogLevel.INFO, stream, clock).info("server.listening", addr="0.0.0.0:5432")
    line = json.loads(stream.getvalue())
    assert line["ts"] == "2033-05-18T03:33:20.000Z", line


def test_a_client_call_gives_up_when_the_injected_clock_passes_its_deadline(
    clock: FakeClock,
) -> None:
    # Each try takes one second of the injected clock (and almost none of the machine's):
    # a deadline 2.5 s away allows exactly three tries.
    tries: list[int] = []

    async def attempt() -> ConnectionFailed:
        tries.append(1)
        clock.advance(1.0)
        return ConnectionFailed("no node there")

    async def call() -> None:
        with pytest.raises(ConnectionFailed):
            deadline_s = clock.monotonic_ns() / 1e9 + 2.5
            await _retrying(attempt, lambda _error: deadline_s, clock)

    asyncio.run(call())
    assert len(tries) == 3, f"expected 3 tries within the injected deadline, made {len(tries)}"
