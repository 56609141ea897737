"""Unit tests of the messages and their schema: construction rules and strict decoding."""

from __future__ import annotations

import attrs
import pytest

from craton.core.wire import (
    AppendEvents,
    Command,
    CreateStream,
    DataClass,
    DecodeError,
    ErrorCode,
    ErrorReply,
    Frame,
    Handshake,
    HandshakeReply,
    Placement,
    PlacementKind,
    ReadEvents,
    Sync,
    command_of,
    decode_frame,
    encode,
    error_reply,
    parse_frame,
)
from craton.core.wire.messages import (
    APPEND_EVENTS_MAX,
    EVENT_SIZE_MAX,
    READ_SIZE_MAX,
    STREAM_NAME_SIZE_MAX,
)
from craton.core.wire.schema import wire_fields


def body_of(command: Command, body: bytes) -> Frame:
    return Frame(command, 1, body)


@pytest.mark.parametrize(
    ("build", "error"),
    [
        (lambda: AppendEvents("s", (), None), ValueError),
        (lambda: AppendEvents("s", (b"",) * (APPEND_EVENTS_MAX + 1), None), ValueError),
        (lambda: AppendEvents("s", (b"x" * (EVENT_SIZE_MAX + 1),), None), ValueError),
        (lambda: AppendEvents("s", [b"x"], None), TypeError),  # type: ignore[arg-type]
        (lambda: AppendEvents("s", ("x",), None), TypeError),  # type: ignore[arg-type]
        (lambda: AppendEvents("s", (b"x",), -1), ValueError),
        (lambda: AppendEvents("s", (b"x",), 2**64), ValueError),
        (lambda: AppendEvents("s", (b"x",), True), TypeError),
        (lambda: AppendEvents("", (b"x",), None), ValueError),
        (lambda: AppendEvents("a" * (STREAM_NAME_SIZE_MAX + 1), (b"x",), None), ValueError),
        (lambda: AppendEvents("-leading-dash", (b"x",), None), ValueError),
        (lambda: AppendEvents("has space", (b"x",), None), ValueError),
        (lambda: AppendEvents("caf\u00e9", (b"x",), None), ValueError),
        (lambda: ReadEvents("s", 0, 0, 1), ValueError),
        (lambda: ReadEvents("s", 0, 1, READ_SIZE_MAX + 1), ValueError),
        (lambda: Handshake(1, 0, None), ValueError),
        (lambda: Handshake(0, 1, None), ValueError),
        (lambda: Handshake(1, 1, "has space"), ValueError),
        (lambda: Handshake(1, 1, ""), ValueError),
        (lambda: HandshakeReply(1, "0.1.0", 3, 3, 0), ValueError),
        (lambda: HandshakeReply(1, "0.1.0", 0, 0, 0), ValueError),
        (lambda: CreateStream("s", 1, Placement(PlacementKind.GLOBAL, "")), TypeError),  # type: ignore[arg-type]
        (lambda: Placement(PlacementKind.GLOBAL, "eu-west"), ValueError),
        (lambda: Placement(PlacementKind.REGION, ""), ValueError),
        (lambda: Placement(PlacementKind.REGION, "EU"), ValueError),
        (lambda: ErrorReply(ErrorCode.INTERNAL, "x", "10.0.0.1:5432"), ValueError),
        (lambda: ErrorReply(ErrorCode.INTERNAL, "\ud800", None), ValueError),
        (lambda: ErrorReply(ErrorCode.INTERNAL, "é" * 513, None), ValueError),
    ],
)
def test_construction_refuses_what_the_wire_would(build: object, error: type) -> None:
    with pytest.raises(error):
        build()  # type: ignore[operator]


def test_construction_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match=r"^max_events: 0 is outside 1\.\.8192$"):
        ReadEvents("s", 0, 0, 1)
    with pytest.raises(TypeError, match=r"^events: \[0\]: expected bytes, got str$"):
        AppendEvents("s", ("x",), None)  # type: ignore[arg-type]


def test_messages_are_frozen() -> None:
    message = AppendEvents("s", (b"x",), None)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        message.stream = "t"  # type: ignore[misc]


def test_a_nested_record_round_trips() -> None:
    message = CreateStream("audit.eu", DataClass.PHI, Placement(PlacementKind.REGION, "eu-west-1"))
    assert decode_frame(parse_frame(encode(message, 9))) == message


@pytest.mark.parametrize(
    ("command", "body", "words"),
    [
        (Command.SYNC, b"\x00", "1 trailing bytes"),
        (Command.SYNC_REPLY, b"\x00" * 7, "needs 8 bytes"),
        (
            Command.APPEND_EVENTS,
            b"\x01\x00\x00\x00s\x01\x00\x00\x00\x00\x00\x00\x00\x02",
            "expected_offset: presence byte is 2",
        ),
        (
            Command.APPEND_EVENTS,
            b"\x01\x00\x00\x00s\x00\x00\x00\x00\x00",
            "events: count 0 is below the minimum 1",
        ),
        (
            Command.APPEND_EVENTS,
            b"\x01\x00\x00\x00s\x01\x20\x00\x00",
            "events: count 8193 exceeds the limit 8192",
        ),
        (
            Command.APPEND_EVENTS,
            b"\x01\x00\x00\x00s\x00\x10\x00\x00\x00",
            "events: count 4096 cannot fit",
        ),
        (Command.APPEND_EVENTS, b"\x01\x00\x00\x00\xff", "stream: invalid UTF-8 at byte 0"),
        (Command.APPEND_EVENTS, b"\x01\x00\x00\x00-", "stream: text does not match"),
        (Command.APPEND_EVENTS, b"\xff\xff\xff\xff", "stream: length 4294967295 exceeds"),
        (Command.CREATE_STREAM, b"\x01\x00\x00\x00s\x09", "data_class: 9 is not a DataClass"),
        (
            Command.CREATE_STREAM,
            b"\x01\x00\x00\x00s\x01\x01\x02\x00\x00\x00eu",
            "Placement: region must be given",
        ),
        (
            Command.ERROR_REPLY,
            b"\x0b\x00" + b"\x00" * 4 + b"\x01\x01\x00\x00\x00x",
            "ErrorReply: primary_address is only sent with NOT_PRIMARY",
        ),
        (Command.ERROR_REPLY, b"\x00\x00" + b"\x00" * 5, "code: 0 is not a ErrorCode value"),
    ],
)
def test_strict_decoding_says_what_is_wrong(command: Command, body: bytes, words: str) -> None:
    with pytest.raises(DecodeError) as caught:
        decode_frame(body_of(command, body))
    assert words in caught.value.reason, caught.value.reason


def test_limit_violations_are_too_large_and_the_rest_invalid() -> None:
    with pytest.raises(DecodeError) as caught:
        decode_frame(body_of(Command.APPEND_EVENTS, b"\xff\xff\xff\xff"))
    assert caught.value.code == ErrorCode.TOO_LARGE
    with pytest.raises(DecodeError) as caught:
        decode_frame(body_of(Command.SYNC, b"\x00"))
    assert caught.value.code == ErrorCode.INVALID_REQUEST


def test_command_of_refuses_non_messages() -> None:
    assert command_of(Sync()) == Command.SYNC
    with pytest.raises(TypeError):
        command_of(Placement(PlacementKind.GLOBAL, ""))  # type: ignore[arg-type]


def test_a_field_without_a_wire_type_is_refused_when_the_class_is_made() -> None:
    with pytest.raises(TypeError, match="Annotated"):

        @attrs.frozen(field_transformer=wire_fields)
        class Untyped:
            count: int


def test_decode_errors_do_not_quote_what_was_received() -> None:
    token = "secret-token"
    body = b"\x01\x00" + b"\x01" * 16 + b"\x01" + len(token + " ").to_bytes(4, "little")
    with pytest.raises(DecodeError) as caught:
        decode_frame(body_of(Command.HANDSHAKE, body + (token + " ").encode()))
    assert "auth_token: text does not match" in caught.value.reason
    assert token not in caught.value.reason
    with pytest.raises(ValueError) as refused:
        Handshake(1, 1, token + " ")
    assert token not in str(refused.value)


def test_error_reply_carries_the_code_and_a_reason_that_fits() -> None:
    reply = error_reply(DecodeError("x" + "é" * 1000, ErrorCode.TOO_LARGE))
    assert reply.code == ErrorCode.TOO_LARGE and reply.primary_address is None
    assert reply.message == "x" + "é" * 511  # byte 1024 would split an "é": it is dropped
    assert decode_frame(parse_frame(encode(reply, 0))) == reply
