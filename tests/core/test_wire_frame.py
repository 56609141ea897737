"""Unit tests of the frame layer: header layout, the incremental decoder and its bounds."""

from __future__ import annotations

import struct
import tracemalloc

import pytest

from craton.core.wire import (
    BODY_SIZE_MAX,
    FLAG_RETRY,
    FRAME_SIZE_MAX,
    HEADER_SIZE,
    AppendEvents,
    Command,
    DecodeError,
    DecoderNotDrained,
    ErrorCode,
    FrameDecoder,
    MessageTooLarge,
    Sync,
    decode_frame,
    encode,
    parse_frame,
)
from craton.core.wire.frame import (
    COMMAND_CLIENT_RANGE,
    COMMAND_REPLICA_RANGE,
    MAGIC,
    checksum,
    encode_frame,
)

HEADER = struct.Struct("<4sHHHHIQII")


def sealed(
    *,
    version: int = 1,
    command: int = Command.SYNC,
    flags: int = 0,
    reserved: int = 0,
    body_size: int = 0,
    request_id: int = 1,
    body: bytes = b"",
) -> bytes:
    head = struct.pack(
        "<4sHHHHIQI",
        MAGIC,
        version,
        command,
        flags,
        reserved,
        body_size,
        request_id,
        checksum(body),
    )
    return head + struct.pack("<I", checksum(head)) + body


def test_header_fields_sit_where_the_protocol_says() -> None:
    data = encode(AppendEvents("s", (b"abc",), None), request_id=0x0102030405060708)
    magic, version, command, flags, reserved, body_size, request_id, body_sum, head_sum = (
        HEADER.unpack_from(data)
    )
    assert (magic, version, command, flags, reserved) == (b"CRTN", 1, 0x0005, 0, 0)
    assert body_size == len(data) - HEADER_SIZE
    assert request_id == 0x0102030405060708
    assert body_sum == checksum(data[HEADER_SIZE:])
    assert head_sum == checksum(data[:28])


def test_a_sealed_header_built_by_hand_is_accepted() -> None:
    assert parse_frame(sealed()).command == Command.SYNC
    assert sealed() == encode(Sync(), 1)


@pytest.mark.parametrize(
    ("fields", "code", "words"),
    [
        ({"version": 2}, ErrorCode.UNSUPPORTED_VERSION, "protocol version 2"),
        ({"version": 0}, ErrorCode.UNSUPPORTED_VERSION, "protocol version 0"),
        ({"flags": 2}, ErrorCode.INVALID_REQUEST, "unknown flags"),
        ({"reserved": 7}, ErrorCode.INVALID_REQUEST, "reserved"),
        ({"body_size": BODY_SIZE_MAX + 1}, ErrorCode.TOO_LARGE, "body_size"),
        ({"command": 0}, ErrorCode.INVALID_REQUEST, "unknown command 0x0000"),
        ({"command": 0x0100}, ErrorCode.INVALID_REQUEST, "unknown command 0x0100"),
    ],
)
def test_bad_header_fields_are_refused_with_their_code(
    fields: dict[str, int], code: ErrorCode, words: str
) -> None:
    with pytest.raises(DecodeError) as caught:
        parse_frame(sealed(**fields))
    assert caught.value.code == code and words in caught.value.reason


def test_damaged_header_or_body_fails_its_checksum() -> None:
    data = bytearray(encode(AppendEvents("s", (b"abc",), None), 1))
    data[20] ^= 0x10  # request id, under the header checksum
    with pytest.raises(DecodeError, match="header checksum"):
        parse_frame(bytes(data))
    data[20] ^= 0x10
    data[-1] ^= 0x01
    with pytest.raises(DecodeError, match="body checksum"):
        parse_frame(bytes(data))


def test_parse_frame_wants_exactly_one_frame() -> None:
    data = encode(Sync(), 1)
    with pytest.raises(DecodeError, match="truncated"):
        parse_frame(data[:-1])
    with pytest.raises(DecodeError, match="trailing"):
        parse_frame(data + b"C")


def test_a_stranger_is_refused_at_its_first_wrong_byte() -> None:
    decoder = FrameDecoder()
    with pytest.raises(DecodeError, match="byte 0 is 0x47"):
        decoder.feed(b"G")  # "GET / HTTP/1.1": no need to wait for 32 bytes
    decoder = FrameDecoder()
    decoder.feed(b"CR")
    with pytest.raises(DecodeError, match="byte 2 is 0x00"):
        decoder.feed(b"\x00")


def test_the_decoder_stays_failed() -> None:
    decoder = FrameDecoder()
    with pytest.raises(DecodeError):
        decoder.feed(b"xx")
    for call in (lambda: decoder.feed(encode(Sync(), 1)), decoder.next_frame, decoder.finish):
        with pytest.raises(DecodeError, match="earlier error"):
            call()


def test_feeding_before_draining_is_refused() -> None:
    decoder = FrameDecoder()
    decoder.feed(encode(Sync(), 1) + encode(Sync(), 2)[:5])
    with pytest.raises(DecoderNotDrained):
        decoder.feed(b"more")
    assert decoder.next_frame() is not None
    decoder.feed(encode(Sync(), 2)[5:])
    frame = decoder.next_frame()
    assert frame is not None and frame.request_id == 2
    assert decoder.next_frame() is None and decoder.buffered_size == 0
    decoder.finish()


def test_feeding_after_a_partial_drain_is_refused_too() -> None:
    decoder = FrameDecoder()
    decoder.feed(encode(Sync(), 1) + encode(Sync(), 2))
    assert decoder.next_frame() is not None  # the second frame is still waiting
    with pytest.raises(DecoderNotDrained):
        decoder.feed(encode(Sync(), 3))


def test_finish_inside_a_frame_raises() -> None:
    decoder = FrameDecoder()
    decoder.feed(encode(Sync(), 1)[:10])
    with pytest.raises(DecodeError, match="inside a frame"):
        decoder.finish()


def test_a_huge_length_is_refused_as_soon_as_the_header_is_complete() -> None:
    header = sealed(body_size=2**32 - 1)
    decoder = FrameDecoder()
    decoder.feed(header[:-1])
    with pytest.raises(DecodeError) as caught:
        decoder.feed(header[-1:])
    assert caught.value.code == ErrorCode.TOO_LARGE
    assert decoder.buffered_size == 0


def test_a_large_legal_frame_is_not_allocated_ahead_of_its_bytes() -> None:
    header = sealed(command=Command.APPEND_EVENTS, body_size=BODY_SIZE_MAX)
    decoder = FrameDecoder()
    tracemalloc.start()
    try:
        decoder.feed(header)
        decoder.feed(b"\x00" * 1000)
        assert decoder.next_frame() is None
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert decoder.buffered_size == HEADER_SIZE + 1000
    assert peak_bytes < 256 * 1024, f"decoder allocated {peak_bytes} bytes for 1032 received"


def test_the_largest_frame_round_trips_and_one_byte_more_does_not_encode() -> None:
    overhead = 4 + 1 + 4 + 1  # name length, name "s", event count, absent expected offset
    events_size = BODY_SIZE_MAX - overhead
    sizes = [1024 * 1024] * (events_size // (1024 * 1024 + 4))
    last = events_size - sum(size + 4 for size in sizes) - 4
    events = tuple(b"e" * size for size in [*sizes, last])
    message = AppendEvents("s", events, None)
    data = encode(message, 1)
    assert len(data) == FRAME_SIZE_MAX
    assert decode_frame(parse_frame(data)) == message
    too_big = AppendEvents("s", (*events[:-1], events[-1] + b"e"), None)
    with pytest.raises(MessageTooLarge):
        encode(too_big, 1)


def test_encode_frame_refuses_ids_out_of_range() -> None:
    with pytest.raises(ValueError, match="request_id"):
        encode_frame(Command.SYNC, 2**64, b"")
    with pytest.raises(ValueError, match="request_id"):
        encode(Sync(), -1)


def test_commands_lie_in_their_ranges() -> None:
    for command in Command:
        assert command in COMMAND_CLIENT_RANGE or command in COMMAND_REPLICA_RANGE, command
    assert COMMAND_CLIENT_RANGE.stop == COMMAND_REPLICA_RANGE.start


def test_the_retry_flag_travels_in_the_header_and_no_other_flag_is_sent() -> None:
    data = encode_frame(Command.APPEND_EVENTS, 7, b"body", FLAG_RETRY)
    frame = parse_frame(data)
    assert (frame.flags, frame.request_id, frame.body) == (FLAG_RETRY, 7, b"body")
    assert parse_frame(encode_frame(Command.APPEND_EVENTS, 7, b"body")).flags == 0
    with pytest.raises(ValueError, match="unknown flags"):
        encode_frame(Command.APPEND_EVENTS, 7, b"body", 0x0002)
