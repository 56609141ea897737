"""The client-connection protocol (``craton.core.connection``) driven with no sockets: bytes,
answers and time go in by hand, and the effects that come out are checked.

The unit tests pin one rule each (handshake first, framing errors, the order of service,
the sync barrier, flow control, the rate limit, a token's expiry, the idle deadline). The
stateful test feeds random interleavings of valid frames, garbage split at random points,
answers, send-buffer changes and time steps, and checks the protocol against a plain model:
frames are served in the order received, each exactly when admission allows; a sync is
answered exactly when every request before it has been; nothing is answered twice; the
counters stay under their limits; after a close nothing more comes out.
"""

from __future__ import annotations

import itertools
import struct
import zlib

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from craton.core.auth import AuthRefusal, Principal, Refusal, Role
from craton.core.connection import (
    EOF_DRAIN_TIMEOUT_NS,
    NS_PER_S,
    RESERVATION_BYTES_MAX,
    AnswerSync,
    AwaitDrain,
    BadFrame,
    Close,
    Conditions,
    ConnectionMisuse,
    ConnectionProtocol,
    ConnectionState,
    Effect,
    PauseReading,
    RefuseCredential,
    RequestDone,
    ResumeReading,
    Send,
    StartHandshake,
    SubmitRead,
    SubmitWrite,
    TokenBucket,
    make_error_reply,
    reply_bytes_max,
)
from craton.core.wire import (
    BODY_SIZE_MAX,
    FLAG_RETRY,
    PROTOCOL_VERSION,
    AppendEvents,
    Command,
    DecodeError,
    ErrorCode,
    ErrorReply,
    FrameDecoder,
    Handshake,
    HandshakeReply,
    ReadEvents,
    Sync,
    SyncReply,
    decode_frame,
    encode,
    error_reply,
)
from craton.core.wire.codec import AnyMessage
from craton.core.wire.frame import MAGIC, encode_frame
from craton.core.wire.messages import ERROR_MESSAGE_SIZE_MAX

T0_NS = 5_000 * NS_PER_S  # an arbitrary monotonic origin
WALL_MS = 2_000_000_000_000  # Unix ms
REQUEST_NUMBER_MAX = 1_000
IDLE_TIMEOUT_NS = 30 * NS_PER_S
PRINCIPAL = Principal(7, "protocol-test", Role.ADMIN)
HANDSHAKE = Handshake(PROTOCOL_VERSION, 0xC0FFEE, None)
SMALL_READ = ReadEvents("s", 0, 1, 1)
BIG_READ = ReadEvents("s", 0, 8192, 8 * 1024 * 1024)
WRITE = AppendEvents("s", (b"event",), None)


def _protocol(**limits: int | float | None) -> ConnectionProtocol:
    return ConnectionProtocol(T0_NS, request_number_max=REQUEST_NUMBER_MAX, **limits)  # type: ignore[arg-type]


def _now(
    now_ns: int = T0_NS, unsent_bytes: int = 0, wall_ms: int = WALL_MS, shutting_down: bool = False
) -> Conditions:
    return Conditions(now_ns, wall_ms, unsent_bytes, shutting_down)


def _serve_all(protocol: ConnectionProtocol, now: Conditions | None = None) -> list[Effect]:
    """Serve every frame the protocol lets through now (as the adapter's loop does)."""
    effects: list[Effect] = []
    while (served := protocol.serve_next(now or _now())) is not None:
        effects += served
    return effects


def _sent(effects: list[Effect]) -> list[tuple[int, AnyMessage]]:
    """The frames the ``Send`` effects write, decoded: (request id, message)."""
    decoder = FrameDecoder()
    for effect in effects:
        if isinstance(effect, Send):
            decoder.feed(effect.data)
    found = []
    while (frame := decoder.next_frame()) is not None:
        found.append((frame.request_id, decode_frame(frame)))
    return found


def _open(protocol: ConnectionProtocol, principal: Principal = PRINCIPAL) -> None:
    """Handshake: the node accepts it at once."""
    protocol.receive_data(encode(HANDSHAKE, 1), T0_NS)
    assert _serve_all(protocol) == [StartHandshake(HANDSHAKE, 1)]
    effects = protocol.on_session_opened(principal, 0, 1, 0, T0_NS)
    assert [type(e) for e in effects] == [Send, RequestDone], effects
    assert protocol.state is ConnectionState.OPEN


def _oversized_header(request_id: int) -> bytes:
    """A header that announces a body one byte over ``BODY_SIZE_MAX`` (checksums right)."""
    fields = struct.pack(
        "<4sHHHHIQI", MAGIC, PROTOCOL_VERSION, Command.APPEND_EVENTS, 0, 0, BODY_SIZE_MAX + 1,
        request_id, 0,
    )  # fmt: skip
    return fields + struct.pack("<I", zlib.crc32(fields) & 0xFFFFFFFF)


def _decode_error(data: bytes) -> DecodeError:
    decoder = FrameDecoder()
    with pytest.raises(DecodeError) as caught:
        decoder.feed(data)
        while decoder.next_frame() is not None:
            pass
    return caught.value


# --- the handshake ----------------------------------------------------------------------------


def test_the_first_frame_must_be_a_handshake() -> None:
    protocol = _protocol()
    protocol.receive_data(encode(Sync(), 9), T0_NS)
    effects = _serve_all(protocol)
    expected = ErrorReply(ErrorCode.INVALID_REQUEST, "the first request must be HANDSHAKE", None)
    assert effects == [RequestDone("Sync", ErrorCode.INVALID_REQUEST, None), Close(expected)]
    assert protocol.closed
    protocol.receive_data(encode(HANDSHAKE, 10), T0_NS)
    assert protocol.serve_next(_now()) is None, "a closed connection serves nothing"


def test_a_handshake_whose_body_does_not_decode_closes_the_connection() -> None:
    protocol = _protocol()
    protocol.receive_data(encode_frame(Command.HANDSHAKE, 1, b"\x01"), T0_NS)
    effects = _serve_all(protocol)
    assert len(effects) == 2 and isinstance(effects[1], Close), effects
    assert effects[0] == RequestDone("Handshake", ErrorCode.INVALID_REQUEST, None)
    reply = effects[1].reply
    assert reply is not None and reply.code == ErrorCode.INVALID_REQUEST, reply
    assert protocol.closed


def test_frames_after_the_handshake_wait_until_the_session_is_open() -> None:
    protocol = _protocol()
    protocol.receive_data(encode(HANDSHAKE, 1) + encode(Sync(), 2), T0_NS)
    assert _serve_all(protocol) == [StartHandshake(HANDSHAKE, 1)]
    assert protocol.frames_waiting == 1, "the sync waits for the handshake's answer"
    assert protocol.throttle(False) == [PauseReading()], "reading stops while a frame waits"

    effects = protocol.on_session_opened(PRINCIPAL, 2, 3, 4, T0_NS + 5)
    reply = HandshakeReply(PROTOCOL_VERSION, _version(), 2, 3, 4)
    assert _sent(effects) == [(1, reply)], effects
    assert effects[1] == RequestDone("Handshake", None, T0_NS)
    assert _serve_all(protocol) == [AnswerSync(2, T0_NS)]
    assert protocol.throttle(False) == [ResumeReading()]


def _version() -> str:
    from craton import __version__

    return __version__


@pytest.mark.parametrize(
    ("answer", "code"),
    [
        ("refused", ErrorCode.NOT_PRIMARY),
        ("halted", ErrorCode.UNAVAILABLE),
        ("credential", ErrorCode.AUTHENTICATION_FAILED),
    ],
)
def test_a_refused_handshake_closes_with_request_id_0(answer: str, code: ErrorCode) -> None:
    protocol = _protocol()
    protocol.receive_data(encode(HANDSHAKE, 1) + encode(Sync(), 2), T0_NS)
    _serve_all(protocol)
    if answer == "refused":
        effects = protocol.on_session_refused(code, "not me", "10.0.0.2:5432", T0_NS)
        assert effects[-1] == Close(ErrorReply(code, "not me", "10.0.0.2:5432"))
    elif answer == "halted":
        effects = protocol.on_node_halted(T0_NS)
        assert effects[0] == RequestDone("Handshake", code, None), "no duration: node error"
    else:
        refusal = AuthRefusal(Refusal.SIGNATURE)
        effects = protocol.on_credential_refused(refusal, T0_NS)
        assert effects[0] == RefuseCredential(refusal, T0_NS), "counted, logged and audited"
        assert effects[1] == Close(ErrorReply(code, refusal.message, None))
    last = effects[-1]
    assert isinstance(last, Close) and last.reply is not None and last.reply.code == code
    assert protocol.closed and _serve_all(protocol) == [], "the waiting sync is never served"


def test_a_second_handshake_is_refused_and_the_connection_goes_on() -> None:
    protocol = _protocol()
    _open(protocol)
    protocol.receive_data(encode(HANDSHAKE, 2) + encode(Sync(), 3), T0_NS)
    effects = _serve_all(protocol)
    refusal = ErrorReply(
        ErrorCode.INVALID_REQUEST, "the connection's handshake was done already", None
    )
    assert _sent(effects) == [(2, refusal)], effects
    assert effects[-1] == AnswerSync(3, T0_NS)
    assert not protocol.closed


def test_answering_a_handshake_that_was_not_asked_is_a_misuse() -> None:
    protocol = _protocol()
    with pytest.raises(ConnectionMisuse):
        protocol.on_session_opened(PRINCIPAL, 0, 1, 0, T0_NS)


# --- framing ------------------------------------------------------------------------------------


def test_garbage_is_served_in_its_turn_and_closes_with_the_decoders_error() -> None:
    protocol = _protocol()
    _open(protocol)
    garbage = b"\x00garbage"
    protocol.receive_data(encode(Sync(), 2) + garbage, T0_NS + 1)
    protocol.receive_data(encode(Sync(), 3), T0_NS + 2)  # after the garbage: never read
    effects = _serve_all(protocol)
    error = _decode_error(garbage)
    assert effects == [
        AnswerSync(2, T0_NS + 1),
        RequestDone("Frame", error.code, None),
        BadFrame(error.code, error.reason),
        Close(error_reply(error)),
    ]
    assert protocol.closed and protocol.frames_waiting == 0


def test_an_oversized_frame_is_refused_before_its_body_arrives() -> None:
    protocol = _protocol()
    _open(protocol)
    protocol.receive_data(_oversized_header(2), T0_NS)
    effects = _serve_all(protocol)
    assert [type(e) for e in effects] == [RequestDone, BadFrame, Close], effects
    close = effects[-1]
    assert isinstance(close, Close) and close.reply is not None
    assert close.reply.code == ErrorCode.TOO_LARGE, close


def test_a_frame_split_at_every_byte_is_served_once_whole() -> None:
    protocol = _protocol()
    _open(protocol)
    data = encode(Sync(), 2)
    for index, byte in enumerate(data):
        protocol.receive_data(bytes([byte]), T0_NS + index)
        if index < len(data) - 1:
            assert protocol.frames_waiting == 0, f"no frame after {index + 1} bytes"
    assert _serve_all(protocol) == [AnswerSync(2, T0_NS + len(data) - 1)]


def test_a_sound_frame_whose_body_does_not_decode_is_refused_with_its_request_id() -> None:
    protocol = _protocol()
    _open(protocol)
    protocol.receive_data(encode_frame(Command.READ_EVENTS, 5, b"\x01"), T0_NS)
    effects = _serve_all(protocol)
    [(request_id, reply)] = _sent(effects)
    assert request_id == 5 and isinstance(reply, ErrorReply), effects
    assert reply.code == ErrorCode.INVALID_REQUEST and not protocol.closed


def test_a_reply_is_not_a_request_a_client_may_send() -> None:
    protocol = _protocol()
    _open(protocol)
    protocol.receive_data(encode(SyncReply(1), 4), T0_NS)
    why = "SYNC_REPLY is not a request a client may send"
    assert _sent(_serve_all(protocol)) == [(4, ErrorReply(ErrorCode.INVALID_REQUEST, why, None))]


@pytest.mark.parametrize(
    ("request_id", "taken"), [(0, False), (1, True), (1_000, True), (1_001, False)]
)
def test_a_writes_request_id_must_fit_the_session_table(request_id: int, taken: bool) -> None:
    protocol = _protocol()
    _open(protocol)
    protocol.receive_data(encode(WRITE, request_id), T0_NS)
    effects = _serve_all(protocol)
    if taken:
        assert [type(e) for e in effects] == [SubmitWrite], effects
    else:
        why = f"a write's request id must be in 1..{REQUEST_NUMBER_MAX}"
        assert _sent(effects) == [(request_id, ErrorReply(ErrorCode.INVALID_REQUEST, why, None))]


def test_a_shutting_down_node_refuses_requests() -> None:
    protocol = _protocol()
    _open(protocol)
    protocol.receive_data(encode(SMALL_READ, 3), T0_NS)
    effects = _serve_all(protocol, _now(shutting_down=True))
    why = "the node is shutting down"
    assert _sent(effects) == [(3, ErrorReply(ErrorCode.UNAVAILABLE, why, None))]


# --- the sync barrier -------------------------------------------------------------------------


def test_a_sync_is_answered_once_every_request_before_it_is() -> None:
    protocol = _protocol()
    _open(protocol)
    data = encode(SMALL_READ, 2) + encode(WRITE, 3) + encode(Sync(), 4) + encode(SMALL_READ, 5)
    protocol.receive_data(data, T0_NS)
    effects = _serve_all(protocol)
    read, write, later = effects
    assert isinstance(read, SubmitRead) and isinstance(write, SubmitWrite), effects
    assert isinstance(later, SubmitRead) and protocol.inflight == 4

    assert protocol.on_answered(later.seq, b"later", T0_NS) == [Send(b"later")], (
        "a read after the sync does not hold it back, nor is it held back"
    )
    assert protocol.on_answered(write.seq, b"write", T0_NS) == [Send(b"write")], (
        "the read before the sync is still open"
    )
    assert protocol.on_answered(read.seq, b"read", T0_NS) == [Send(b"read"), AnswerSync(4, T0_NS)]
    assert protocol.inflight == 0


def test_a_sync_with_nothing_open_is_answered_at_once_and_syncs_keep_their_order() -> None:
    protocol = _protocol()
    _open(protocol)
    protocol.receive_data(encode(Sync(), 2) + encode(Sync(), 3), T0_NS)
    assert _serve_all(protocol) == [AnswerSync(2, T0_NS), AnswerSync(3, T0_NS)]


def test_nothing_is_answered_twice() -> None:
    protocol = _protocol()
    _open(protocol)
    protocol.receive_data(encode(SMALL_READ, 2), T0_NS)
    [submit] = _serve_all(protocol)
    assert isinstance(submit, SubmitRead)
    protocol.on_answered(submit.seq, b"reply", T0_NS)
    with pytest.raises(ConnectionMisuse):
        protocol.on_answered(submit.seq, b"again", T0_NS)


# --- flow control -------------------------------------------------------------------------------


def test_past_the_inflight_limit_frames_wait_and_an_answer_lets_the_next_in() -> None:
    protocol = _protocol(inflight_requests_max=2)
    _open(protocol)
    protocol.receive_data(b"".join(encode(SMALL_READ, rid) for rid in (2, 3, 4)), T0_NS)
    first, _second = _serve_all(protocol)
    assert protocol.inflight == 2 and protocol.frames_waiting == 1
    assert protocol.throttle(False) == [PauseReading()]
    assert protocol.stalled, "an answer must let the waiting frame go on"
    assert isinstance(first, SubmitRead)
    protocol.on_answered(first.seq, b"reply", T0_NS)
    [third] = _serve_all(protocol)
    assert isinstance(third, SubmitRead) and third.request_id == 4
    assert protocol.throttle(False) == [ResumeReading()]


def test_reserved_reply_bytes_stop_serving_at_the_limit_but_one_read_is_always_taken() -> None:
    reserved = reply_bytes_max(BIG_READ)
    assert reserved > 16 * 1024 * 1024 // 2, "one big read reserves most of the limit"
    protocol = _protocol(reply_bytes_max=reserved)
    _open(protocol)
    protocol.receive_data(encode(BIG_READ, 2) + encode(SMALL_READ, 3), T0_NS)
    [first] = _serve_all(protocol)
    assert protocol.reserved_bytes == reserved and protocol.frames_waiting == 1
    assert isinstance(first, SubmitRead)
    protocol.on_answered(first.seq, b"reply", T0_NS)
    assert protocol.reserved_bytes == 0
    assert [type(e) for e in _serve_all(protocol)] == [SubmitRead]


def test_unsent_bytes_count_against_the_limit() -> None:
    protocol = _protocol(reply_bytes_max=1000)
    _open(protocol)
    protocol.receive_data(encode(Sync(), 2), T0_NS)
    assert protocol.serve_next(_now(unsent_bytes=1000)) is None, "the client took no replies"
    assert protocol.serve_next(_now(unsent_bytes=999)) == [AnswerSync(2, T0_NS)]


def test_a_full_send_buffer_pauses_reading_and_is_awaited_once() -> None:
    protocol = _protocol()
    _open(protocol)
    assert protocol.throttle(True) == [AwaitDrain(), PauseReading()]
    assert protocol.throttle(True) == [], "one wait at a time, already paused"
    protocol.on_drained()
    assert protocol.throttle(False) == [ResumeReading()]
    assert protocol.throttle(True) == [AwaitDrain(), PauseReading()], "a new wait after a drain"


# --- the rate limit and tokens -------------------------------------------------------------------


def test_the_rate_limit_takes_tokens_at_the_time_a_frame_was_received() -> None:
    protocol = _protocol(rate_limit_rps=2.0)
    _open(protocol)

    def limited(request_id: int, received_ns: int, served_ns: int) -> bool:
        protocol.receive_data(encode(Sync(), request_id), received_ns)
        effects = _serve_all(protocol, _now(served_ns))
        return any(
            isinstance(m, ErrorReply) and m.code == ErrorCode.RATE_LIMITED
            for _, m in _sent(effects)
        )

    assert [limited(2, T0_NS, T0_NS), limited(3, T0_NS, T0_NS)] == [False, False]
    assert limited(4, T0_NS, T0_NS + 60 * NS_PER_S), "served late, received with no token left"
    assert not limited(5, T0_NS + NS_PER_S // 2, T0_NS), "one token refilled by the time received"


def test_the_token_bucket_refills_by_the_time_it_is_given() -> None:
    bucket = TokenBucket(4.0, T0_NS)
    assert [bucket.take(T0_NS) for _ in range(5)] == [True] * 4 + [False]
    assert bucket.take(T0_NS + NS_PER_S // 4) and not bucket.take(T0_NS + NS_PER_S // 4)
    assert not bucket.take(T0_NS - NS_PER_S), "time that goes backwards adds no tokens"
    stepped = TokenBucket(4.0, T0_NS)
    assert stepped.take(T0_NS - NS_PER_S), "nor does it take any away"
    slow = TokenBucket(0.5, T0_NS)
    assert slow.take(T0_NS) and not slow.take(T0_NS + NS_PER_S), "capacity 1, half a token a s"
    assert slow.take(T0_NS + 2 * NS_PER_S)
    full = TokenBucket(2.0, T0_NS)
    assert [full.take(T0_NS + 3600 * NS_PER_S) for _ in range(3)] == [True, True, False]


def test_a_token_is_judged_at_every_frame_by_the_wall_clock_then() -> None:
    expires_ms = WALL_MS + 1_000
    protocol = _protocol()
    _open(protocol, Principal(7, "jwt-user", Role.MEMBER, 0, expires_ms))
    protocol.receive_data(encode(Sync(), 2), T0_NS)
    assert _serve_all(protocol, _now(wall_ms=expires_ms)) == [AnswerSync(2, T0_NS)]
    protocol.receive_data(encode(Sync(), 3) + encode(Sync(), 4), T0_NS + 1)
    effects = _serve_all(protocol, _now(wall_ms=expires_ms + 1))
    refusal = AuthRefusal(Refusal.EXPIRED, 7, "jwt-user")
    assert effects == [
        RefuseCredential(refusal, T0_NS + 1),
        Close(ErrorReply(ErrorCode.AUTHENTICATION_FAILED, refusal.message, None)),
    ]
    assert _serve_all(protocol, _now(wall_ms=WALL_MS)) == [], "a clock stepped back revives nothing"


# --- time: idle and EOF ------------------------------------------------------------------------


def test_the_idle_deadline_follows_whole_frames_and_replies_only() -> None:
    protocol = _protocol()
    _open(protocol)
    assert protocol.idle_deadline_ns(IDLE_TIMEOUT_NS) == T0_NS + IDLE_TIMEOUT_NS
    data = encode(SMALL_READ, 2)
    protocol.receive_data(data[:-1], T0_NS + 10 * NS_PER_S)
    assert protocol.idle_deadline_ns(IDLE_TIMEOUT_NS) == T0_NS + IDLE_TIMEOUT_NS, (
        "a frame trickled in part by part is no activity"
    )
    protocol.receive_data(data[-1:], T0_NS + 20 * NS_PER_S)
    [submit] = _serve_all(protocol)
    assert protocol.idle_deadline_ns(IDLE_TIMEOUT_NS) is None, "not idle with a request in flight"
    assert protocol.on_tick(T0_NS + 3600 * NS_PER_S, IDLE_TIMEOUT_NS) == []
    assert isinstance(submit, SubmitRead)
    protocol.on_answered(submit.seq, b"reply", T0_NS + 25 * NS_PER_S)
    deadline_ns = T0_NS + 25 * NS_PER_S + IDLE_TIMEOUT_NS
    assert protocol.idle_deadline_ns(IDLE_TIMEOUT_NS) == deadline_ns, "a reply is activity"
    assert protocol.on_tick(deadline_ns - 1, IDLE_TIMEOUT_NS) == []
    message = "closed after 30 s without requests"
    assert protocol.on_tick(deadline_ns, IDLE_TIMEOUT_NS) == [
        Close(ErrorReply(ErrorCode.UNAVAILABLE, message, None))
    ]
    assert protocol.on_tick(deadline_ns + 1, IDLE_TIMEOUT_NS) == [], "closed once"


def test_a_sync_answered_later_is_activity_then() -> None:
    protocol = _protocol(reply_bytes_max=1000)
    _open(protocol)
    protocol.receive_data(encode(Sync(), 2), T0_NS)
    assert protocol.serve_next(_now(T0_NS, unsent_bytes=1000)) is None
    later_ns = T0_NS + 10 * NS_PER_S
    assert _serve_all(protocol, _now(later_ns)) == [AnswerSync(2, T0_NS)]
    assert protocol.idle_deadline_ns(IDLE_TIMEOUT_NS) == later_ns + IDLE_TIMEOUT_NS


def test_after_eof_replies_are_awaited_until_answered_or_the_deadline() -> None:
    protocol = _protocol()
    _open(protocol)
    protocol.receive_data(encode(SMALL_READ, 2), T0_NS)
    [submit] = _serve_all(protocol)
    protocol.on_eof(T0_NS)
    assert not protocol.settled(T0_NS + EOF_DRAIN_TIMEOUT_NS - 1)
    assert protocol.settled(T0_NS + EOF_DRAIN_TIMEOUT_NS)
    assert isinstance(submit, SubmitRead)
    protocol.on_answered(submit.seq, b"reply", T0_NS)
    assert protocol.settled(T0_NS), "nothing left to await"


def test_after_close_nothing_is_emitted_and_answers_only_free_their_slot() -> None:
    protocol = _protocol()
    _open(protocol)
    protocol.receive_data(encode(SMALL_READ, 2) + encode(Sync(), 3), T0_NS)
    [submit] = _serve_all(protocol)
    protocol.on_close()
    assert isinstance(submit, SubmitRead)
    assert protocol.on_answered(submit.seq, b"reply", T0_NS) == []
    assert protocol.reserved_bytes == 0
    protocol.receive_data(encode(Sync(), 4), T0_NS)
    assert _serve_all(protocol) == [] and protocol.throttle(True) == []
    assert protocol.refuse("late", T0_NS) == [] and protocol.close_idle(NS_PER_S, T0_NS) == []


def test_error_replies_are_cut_to_the_wire_and_carry_an_address_only_for_not_primary() -> None:
    long = make_error_reply(ErrorCode.INTERNAL, "é" * ERROR_MESSAGE_SIZE_MAX)
    assert len(long.message.encode()) <= ERROR_MESSAGE_SIZE_MAX, "cut on a character boundary"
    assert make_error_reply(ErrorCode.UNAVAILABLE, "x", "h:1").primary_address is None
    assert make_error_reply(ErrorCode.NOT_PRIMARY, "x", "h:1").primary_address == "h:1"
    assert make_error_reply(ErrorCode.NOT_PRIMARY, "x", "bad address").primary_address is None


# --- the stateful model -------------------------------------------------------------------------

INFLIGHT_MAX = 3
REPLY_MAX = 2 * reply_bytes_max(BIG_READ)
KINDS = ("sync", "read", "big_read", "write", "bad_write_id", "bad_body", "reply", "handshake")
_REFUSED_KINDS = {
    "bad_write_id": ErrorCode.INVALID_REQUEST,
    "bad_body": ErrorCode.INVALID_REQUEST,
    "reply": ErrorCode.INVALID_REQUEST,
    "handshake": ErrorCode.INVALID_REQUEST,
}


def _frame_of(kind: str, request_id: int) -> bytes:
    match kind:
        case "sync":
            return encode(Sync(), request_id)
        case "read":
            return encode(SMALL_READ, request_id)
        case "big_read":
            return encode(BIG_READ, request_id)
        case "write" | "bad_write_id":
            return encode(WRITE, request_id)
        case "bad_body":
            return encode_frame(Command.READ_EVENTS, request_id, b"\xff")
        case "reply":
            return encode(SyncReply(0), request_id)
        case _:
            return encode(HANDSHAKE, request_id)


class ConnectionModel(RuleBasedStateMachine):
    """The protocol against a plain model of the stream, the requests open and the time."""

    def __init__(self) -> None:
        super().__init__()
        self.now_ns = T0_NS
        self.protocol = ConnectionProtocol(
            T0_NS,
            request_number_max=REQUEST_NUMBER_MAX,
            inflight_requests_max=INFLIGHT_MAX,
            reply_bytes_max=REPLY_MAX,
        )
        self.reference = FrameDecoder()  # what the stream holds, frame by frame
        self.held = b""  # the tail of the last send, not sent yet
        self.stream_dead = False  # the reference refused the stream
        self.waiting: list[tuple[int | None, int]] = []  # (request id | None: error, received)
        self.kinds: dict[int, str] = {}
        self.next_id = 1
        self.state = "awaiting"  # awaiting, handshaking, open, closed
        self.handshake_id = 0
        self.served: list[int] = []  # request ids of the requests served, in order
        self.open: dict[int, tuple[int, int]] = {}  # seq -> (request id, reserved bytes)
        self.serve_index: dict[int, int] = {}  # seq -> its place in ``served``
        self.received_at: dict[int, int] = {}  # request id -> when its frame was received
        self.syncs: list[tuple[int, int]] = []  # (serve index, request id) waiting
        self.answered: set[int] = set()
        self.last_active_ns = T0_NS
        self.unsent_bytes = 0
        self.buffer_full = False
        self.awaiting_drain = False
        self.paused = False

    # --- rules -----------------------------------------------------------------------------

    @initialize(handshake_first=st.integers(min_value=0, max_value=9))
    def start(self, handshake_first: int) -> None:
        """Most connections start with a handshake; the others with any frame."""
        if handshake_first:
            self.receive(["handshake"], b"", 1, [], 0)

    @rule(
        kinds=st.lists(st.sampled_from(KINDS), min_size=1, max_size=4),
        garbage=st.binary(min_size=0, max_size=24).map(lambda b: b"\x00" + b),
        garbage_dice=st.integers(min_value=0, max_value=9),  # garbage ends one send in ten
        cuts=st.lists(st.integers(min_value=0, max_value=4096), max_size=4),
        step_ns=st.integers(min_value=0, max_value=2 * NS_PER_S),
        held=st.integers(min_value=0, max_value=48),  # bytes left for the next send
    )
    def receive(
        self,
        kinds: list[str],
        garbage: bytes,
        garbage_dice: int,
        cuts: list[int],
        step_ns: int,
        held: int = 0,
    ) -> None:
        data, self.held = self.held, b""
        for kind in kinds:
            request_id = self.next_id + (REQUEST_NUMBER_MAX if kind == "bad_write_id" else 0)
            self.next_id += 1
            self.kinds[request_id] = kind
            data += _frame_of(kind, request_id)
        data += garbage if garbage_dice == 0 else b""
        if 0 < held < len(data):  # a frame cut short at the end of a send: the rest comes later
            data, self.held = data[:-held], data[-held:]
        points = sorted({min(cut, len(data)) for cut in cuts} | {0, len(data)})
        for start, end in itertools.pairwise(points):
            self.now_ns += step_ns
            self._feed(data[start:end])
        self._advance()

    @precondition(lambda self: self.state == "handshaking")
    @rule()
    def open_session(self) -> None:
        effects = self._emitted(self.protocol.on_session_opened(PRINCIPAL, 0, 1, 0, self.now_ns))
        assert [(rid, type(m)) for rid, m in _sent(effects)] == [
            (self.handshake_id, HandshakeReply)
        ]
        self._answer_once(self.handshake_id)
        self.state = "open"
        self._advance()

    @precondition(lambda self: self.state == "handshaking")
    @rule(dice=st.integers(min_value=0, max_value=4))
    def refuse_session(self, dice: int) -> None:
        if dice != 0:  # the node refuses one handshake in five
            return
        effects = self.protocol.on_session_refused(ErrorCode.UNAVAILABLE, "no", None, self.now_ns)
        self._emitted(effects)
        assert isinstance(effects[-1], Close), effects
        self.state = "closed"

    @precondition(lambda self: bool(self.open))
    @rule(data=st.data())
    def answer(self, data: st.DataObject) -> None:
        seq = data.draw(st.sampled_from(sorted(self.open)))
        request_id, _ = self.open.pop(seq)
        reply = encode(SyncReply(seq), request_id)
        effects = self._emitted(self.protocol.on_answered(seq, reply, self.now_ns))
        if self.state == "closed":
            assert effects == [], "a closed connection writes nothing"
            return
        assert effects[0] == Send(reply), effects
        self._answer_once(request_id)
        assert effects[1:] == self._released_syncs(), "the syncs the answer releases, in order"
        self._advance()

    @rule(
        unsent=st.sampled_from([0, 0, 0, 1, REPLY_MAX // 2, REPLY_MAX - 1, REPLY_MAX]),
        full=st.booleans(),
    )
    def send_buffer(self, unsent: int, full: bool) -> None:
        self.unsent_bytes, self.buffer_full = unsent, full
        self._advance()

    @precondition(lambda self: self.awaiting_drain)
    @rule()
    def drained(self) -> None:
        self.protocol.on_drained()
        self.awaiting_drain = False
        self._advance()

    @rule(
        step_ns=st.integers(min_value=0, max_value=NS_PER_S)
        | st.integers(min_value=0, max_value=2 * IDLE_TIMEOUT_NS)
        | st.just(IDLE_TIMEOUT_NS)
    )
    def time_passes(self, step_ns: int) -> None:
        self.now_ns += step_ns
        idle = (
            self.state != "closed"
            and not self._inflight()
            and self.now_ns - self.last_active_ns >= IDLE_TIMEOUT_NS
        )
        effects = self._emitted(self.protocol.on_tick(self.now_ns, IDLE_TIMEOUT_NS))
        assert (effects != []) == idle, (effects, idle)
        if idle:
            assert [type(e) for e in effects] == [Close], effects
            self.state = "closed"

    @rule(dice=st.integers(min_value=0, max_value=9))
    def close(self, dice: int) -> None:
        if dice == 0:  # the adapter closes the connection at one call in ten
            self.protocol.on_close()
            self.state = "closed"

    # --- the model ------------------------------------------------------------------------

    def _feed(self, chunk: bytes) -> None:
        self.protocol.receive_data(chunk, self.now_ns)
        if self.state == "closed" or self.stream_dead:
            return
        before = len(self.waiting)
        try:
            self.reference.feed(chunk)
            while (frame := self.reference.next_frame()) is not None:
                self.waiting.append((frame.request_id, self.now_ns))
        except DecodeError:
            self.waiting.append((None, self.now_ns))
            self.stream_dead = True
        if len(self.waiting) > before:
            self.last_active_ns = self.now_ns

    def _admits(self) -> bool:
        if self.state in ("handshaking", "closed") or self._inflight() >= INFLIGHT_MAX:
            return False
        reserved = sum(bytes_ for _, bytes_ in self.open.values())
        return reserved + self.unsent_bytes < REPLY_MAX

    def _inflight(self) -> int:
        return len(self.open) + len(self.syncs)

    def _advance(self) -> None:
        """The adapter's loop: serve while the protocol lets frames through; then throttle."""
        now = Conditions(self.now_ns, WALL_MS, self.unsent_bytes)
        while True:
            admits = bool(self.waiting) and self._admits()
            effects = self.protocol.serve_next(now)
            assert (effects is not None) == admits, (
                f"expected {'a frame served' if admits else 'nothing served'}: {effects}"
            )
            if effects is None:
                break
            self._emitted(effects)
            self._check_served(*self.waiting.pop(0), effects)
        effects = self._emitted(self.protocol.throttle(self.buffer_full))
        if self.state == "closed":
            return
        expected: list[Effect] = []
        if self.buffer_full and not self.awaiting_drain:
            self.awaiting_drain = True
            expected.append(AwaitDrain())
        pause = self.buffer_full or bool(self.waiting)
        if pause != self.paused:
            self.paused = pause
            expected.append(PauseReading() if pause else ResumeReading())
        assert effects == expected, (effects, expected)

    def _check_served(
        self, request_id: int | None, received_ns: int, effects: list[Effect]
    ) -> None:
        """``effects`` are those of serving the frame the model expects next."""
        types = [type(e) for e in effects]
        if request_id is None:
            assert types == [RequestDone, BadFrame, Close], effects
            self.state = "closed"
            return
        kind = self.kinds[request_id]
        self.served.append(request_id)
        self.received_at[request_id] = received_ns
        if self.state == "awaiting":
            if kind == "handshake":
                assert types == [StartHandshake], effects
                self.state, self.handshake_id = "handshaking", request_id
            else:
                assert types == [RequestDone, Close], (
                    f"the first frame must be a handshake: {effects}"
                )
                self.state = "closed"
            return
        if kind in _REFUSED_KINDS:
            [(replied_id, reply)] = _sent(effects)
            assert replied_id == request_id and isinstance(reply, ErrorReply), effects
            assert reply.code == _REFUSED_KINDS[kind], reply
            assert effects[1] == RequestDone(reply_method(kind), reply.code, received_ns), effects
            self._answer_once(request_id)
        elif kind == "sync":
            self.syncs.append((len(self.served), request_id))
            assert effects == self._released_syncs(), "a sync waits only for requests before it"
        else:
            [submit] = effects
            assert isinstance(submit, SubmitRead | SubmitWrite), effects
            assert isinstance(submit, SubmitWrite) == (kind == "write"), (kind, submit)
            assert submit.request_id == request_id and submit.received_ns == received_ns
            assert submit.seq not in self.open, "a seq names one request"
            message = BIG_READ if kind == "big_read" else SMALL_READ
            reserved = reply_bytes_max(message) if isinstance(submit, SubmitRead) else 0
            self.open[submit.seq] = (request_id, reserved)
            self.serve_index[submit.seq] = len(self.served)

    def _released_syncs(self) -> list[Effect]:
        """The syncs no open request served before them holds back, answered now, in order."""
        oldest = min((self.serve_index[seq] for seq in self.open), default=None)
        released = [(i, rid) for i, rid in self.syncs if oldest is None or i < oldest]
        self.syncs = [(i, rid) for i, rid in self.syncs if not (oldest is None or i < oldest)]
        for _, request_id in released:
            self._answer_once(request_id)
        return [AnswerSync(rid, self.received_at[rid]) for _, rid in released]

    def _answer_once(self, request_id: int) -> None:
        assert request_id not in self.answered, f"request {request_id} answered twice"
        self.answered.add(request_id)

    def _emitted(self, effects: list[Effect]) -> list[Effect]:
        if self.state == "closed":
            assert effects == [], f"nothing is emitted after a close: {effects}"
        writes = [e for e in effects if isinstance(e, Send | AnswerSync)]
        closes = [e for e in effects if isinstance(e, Close) and e.reply is not None]
        if writes or closes:
            self.last_active_ns = self.now_ns
        return effects

    # --- invariants -------------------------------------------------------------------------

    @invariant()
    def protocol_invariants_hold(self) -> None:
        self.protocol.invariants()

    @invariant()
    def counters_match_the_model_and_stay_under_their_limits(self) -> None:
        protocol = self.protocol
        assert protocol.inflight == self._inflight() <= INFLIGHT_MAX, protocol.inflight
        reserved = sum(bytes_ for _, bytes_ in self.open.values())
        assert protocol.reserved_bytes == reserved < REPLY_MAX + RESERVATION_BYTES_MAX
        assert protocol.closed == (self.state == "closed")

    @invariant()
    def activity_is_whole_frames_and_writes(self) -> None:
        if self.state != "closed":
            assert self.protocol.last_active_ns == self.last_active_ns


def reply_method(kind: str) -> str:
    return {
        "bad_write_id": "AppendEvents",
        "bad_body": "ReadEvents",
        "reply": "Other",
        "handshake": "Handshake",
    }[kind]


TestConnectionModel = ConnectionModel.TestCase
TestConnectionModel.settings = settings(
    max_examples=300,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def test_a_write_marked_a_retry_or_seen_before_is_not_a_first_attempt() -> None:
    protocol = _protocol()
    _open(protocol)
    protocol.receive_data(
        encode(WRITE, 5) + encode(WRITE, 6, FLAG_RETRY) + encode(WRITE, 5) + encode(WRITE, 7),
        T0_NS,
    )
    writes = [e for e in _serve_all(protocol) if isinstance(e, SubmitWrite)]
    assert [(w.request_id, w.fresh) for w in writes] == [
        (5, True),
        (6, False),  # its client marked it a retry
        (5, False),  # this connection forwarded 5 already
        (7, True),
    ]
