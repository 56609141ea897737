"""The wire protocol's fuzzing properties, shared by ``tests/fuzz`` and ``scripts/fuzz``.

Each ``Property`` is a plain check plus the strategies that feed it and the explicit
examples it must always pass (inputs that once failed, and hand-picked edges). pytest runs
them with a bounded settings profile; ``scripts/fuzz`` runs the same ones for as long as it
is asked and reports ``TRIED``, the number of inputs each property was called with.

What they establish, for any input:
- a message round-trips through encode and decode, byte for byte and value for value;
- decoding yields frames and messages or raises ``DecodeError``, nothing else;
- the compiled codecs agree with the field by field ones: the same bytes for every message,
  the same message or the same error for every body;
- whatever is accepted is canonical: re-encoding it gives exactly the bytes received, so
  no damaged or forged input is mistaken for some other valid message;
- damage the checksums must catch (one flipped bit, an unsealed length lie) is caught in
  the frame where it happened, and a truncated stream yields its whole frames and no more;
- header fields are checked in the documented order (magic, version, header checksum,
  flags, reserved, body size, command, body checksum);
- the decoder's output does not depend on how the stream is chunked, and its buffer
  never holds a whole frame plus more than the chunk just fed;
- a header claiming a body over the limit is refused as soon as the header is complete.
"""

from __future__ import annotations

import contextlib
import struct
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from itertools import accumulate, pairwise
from typing import Any

import attrs
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from hypothesis.strategies import SearchStrategy
from wire_strategies import commands, messages, request_ids, small_messages

from craton.core.wire import (
    BODY_SIZE_MAX,
    FRAME_SIZE_MAX,
    HEADER_SIZE,
    AppendEvents,
    Command,
    DecodeError,
    ErrorCode,
    Frame,
    FrameDecoder,
    Message,
    ReadEvents,
    Sync,
    command_of,
    decode_frame,
    encode,
    error_reply,
    message_class,
    parse_frame,
)
from craton.core.wire.frame import FLAG_RETRY, MAGIC, PROTOCOL_VERSION, checksum, encode_frame
from craton.core.wire.schema import Reader, Record

TRIED: Counter[str] = Counter()

_HEADER = struct.Struct("<4sHHHHIQI")
_U32 = struct.Struct("<I")
BODY_SIZE_OFFSET = 12
BODY_CHECKSUM_OFFSET = 24
HEADER_CHECKSUM_OFFSET = 28


@attrs.frozen
class Property:
    name: str
    check: Callable[..., None]
    strategies: dict[str, SearchStrategy[Any]]
    examples: tuple[dict[str, Any], ...] = ()


# --- Helpers ---------------------------------------------------------------------------------


@attrs.frozen
class StreamOutcome:
    """What a FrameDecoder made of a byte stream."""

    frames: tuple[Frame, ...]
    error: tuple[str, ErrorCode] | None  # (reason, code) of the DecodeError that ended it
    leftover: int  # bytes of an unfinished frame at the end (0 after an error)


def decode_stream(data: bytes, cuts: Sequence[int] = ()) -> StreamOutcome:
    """Feed ``data`` in chunks split at ``cuts``, draining after each; check the bounds."""
    decoder = FrameDecoder()
    frames: list[Frame] = []
    bounds = [0, *sorted(cut for cut in cuts if 0 < cut < len(data)), len(data)]
    try:
        for start, end in pairwise(bounds):
            decoder.feed(data[start:end])
            assert decoder.buffered_size < FRAME_SIZE_MAX + (end - start), "buffer over bound"
            while (frame := decoder.next_frame()) is not None:
                frames.append(frame)
            assert decoder.buffered_size < FRAME_SIZE_MAX, "a whole frame stayed buffered"
    except DecodeError as error:
        check_answerable(error)
        assert decoder.buffered_size == 0, "a failed decoder must drop its buffer"
        try:
            decoder.next_frame()
        except DecodeError:
            pass
        else:
            raise AssertionError("a failed decoder must refuse to go on") from None
        return StreamOutcome(tuple(frames), (error.reason, error.code), 0)
    return StreamOutcome(tuple(frames), None, decoder.buffered_size)


def check_answerable(error: DecodeError) -> None:
    """Every decode error can be answered with a valid ErrorReply frame."""
    assert error.code in (
        ErrorCode.INVALID_REQUEST,
        ErrorCode.TOO_LARGE,
        ErrorCode.UNSUPPORTED_VERSION,
    ), f"unexpected code for a decode error: {error!r}"
    assert error.reason, "a decode error says what is wrong"
    reply = error_reply(error)
    assert decode_frame(parse_frame(encode(reply, 0))) == reply


@contextlib.contextmanager
def field_by_field() -> Iterator[None]:
    """Records encode and decode one field at a time, with no compiled code anywhere."""
    saved = Record.decode, Record.encode
    Record.decode, Record.encode = Record.decode_checked, Record.encode_checked  # type: ignore[method-assign]
    try:
        yield
    finally:
        Record.decode, Record.encode = saved  # type: ignore[method-assign]


def reference_decode(frame: Frame) -> Message | tuple[str, ErrorCode]:
    """The message in ``frame`` by the field by field decoder, or its error's (reason, code)."""
    with field_by_field():
        reader = Reader(frame.body)
        try:
            message = Record(message_class(frame.command)).decode(reader)
            reader.finish()
        except DecodeError as error:
            return error.reason, error.code
    return message  # type: ignore[no-any-return]


def reference_encode(message: Message) -> bytes:
    out = bytearray()
    with field_by_field():
        Record(message_class(command_of(message))).encode(message, out)
    return bytes(out)


def check_accepted_frames_are_canonical(data: bytes, outcome: StreamOutcome) -> list[Message]:
    """Every frame taken from ``data`` is its exact bytes; every message re-encodes to them."""
    decoded = []
    offset = 0
    for frame in outcome.frames:
        raw = data[offset : offset + HEADER_SIZE + len(frame.body)]
        offset += len(raw)
        assert encode_frame(frame.command, frame.request_id, frame.body, frame.flags) == raw, (
            "an accepted frame must be the canonical encoding of its fields"
        )
        expected = reference_decode(frame)
        try:
            message = decode_frame(frame)
        except DecodeError as error:
            check_answerable(error)
            assert (error.reason, error.code) == expected, (
                f"the compiled decoder raised {error!r}, the field by field one gave {expected!r}"
            )
            continue
        assert message == expected and type(message) is type(expected), (
            f"the compiled decoder gave {message!r}, the field by field one {expected!r}"
        )
        assert encode(message, frame.request_id, frame.flags) == raw, (
            f"accepted {message!r} but it does not re-encode to the bytes received"
        )
        decoded.append(message)
    if outcome.error is None:
        assert offset + outcome.leftover == len(data), "every byte is in a frame or left over"
    return decoded


def reseal(data: bytes) -> bytes:
    """Recompute the checksums of each frame-shaped piece, trusting the length fields."""
    out = bytearray(data)
    offset = 0
    while offset + HEADER_SIZE <= len(out):
        (body_size,) = _U32.unpack_from(out, offset + BODY_SIZE_OFFSET)
        body_start = offset + HEADER_SIZE
        body = out[body_start : body_start + body_size]
        if len(body) == body_size:
            _U32.pack_into(out, offset + BODY_CHECKSUM_OFFSET, checksum(body))
        header = out[offset : offset + HEADER_CHECKSUM_OFFSET]
        _U32.pack_into(out, offset + HEADER_CHECKSUM_OFFSET, checksum(header))
        offset = body_start + body_size
    return bytes(out)


def frame_bounds(frames: Sequence[bytes]) -> list[int]:
    """Start offsets of each frame in their concatenation, then the total size."""
    return list(accumulate((len(frame) for frame in frames), initial=0))


def sealed_header(
    *,
    version: int,
    command: int,
    flags: int,
    reserved: int,
    body_size: int,
    request_id: int,
    body_checksum: int,
) -> bytes:
    header = _HEADER.pack(
        MAGIC, version, command, flags, reserved, body_size, request_id, body_checksum
    )
    return header + _U32.pack(checksum(header))


# --- Properties ------------------------------------------------------------------------------


def round_trip(message: Message, request_id: int) -> None:
    TRIED["round_trip"] += 1
    data = encode(message, request_id)
    frame = parse_frame(data)
    assert frame.request_id == request_id, "the request id must survive the trip"
    decoded = decode_frame(frame)
    assert decoded == message, f"decoded {decoded!r}, expected {message!r}"
    assert type(decoded) is type(message)
    assert encode(decoded, request_id) == data, "re-encoding must give the same bytes"
    assert data[HEADER_SIZE:] == reference_encode(message), (
        "the compiled encoder must write what the field by field one writes"
    )


def arbitrary_bytes(data: bytes) -> None:
    TRIED["arbitrary_bytes"] += 1
    outcome = decode_stream(data)
    check_accepted_frames_are_canonical(data, outcome)


def sealed_body(command: Command, request_id: int, body: bytes) -> None:
    """A well-sealed frame around any body: the schema decoder alone stands guard."""
    TRIED["sealed_body"] += 1
    data = encode_frame(command, request_id, body)
    outcome = decode_stream(data)
    assert outcome.error is None and len(outcome.frames) == 1, "the frame itself is valid"
    check_accepted_frames_are_canonical(data, outcome)


def forged_header(
    version: int,
    command: int,
    flags: int,
    reserved: int,
    body_size: int,
    request_id: int,
    body: bytes,
    body_checksum_ok: bool,
) -> None:
    """Headers with valid checksums and any field values, against a model of the checks."""
    TRIED["forged_header"] += 1
    body_checksum = checksum(body[:body_size]) ^ (0 if body_checksum_ok else 1)
    data = (
        sealed_header(
            version=version,
            command=command,
            flags=flags,
            reserved=reserved,
            body_size=body_size,
            request_id=request_id,
            body_checksum=body_checksum,
        )
        + body
    )
    outcome = decode_stream(data, cuts=[HEADER_SIZE])
    expected = _expected_header_verdict(version, command, flags, reserved, body_size)
    if expected is None and len(body) < body_size:
        assert outcome == StreamOutcome((), None, len(data)), "a partial frame waits"
    elif expected is None and not body_checksum_ok:
        assert outcome.error is not None and "body checksum" in outcome.error[0]
    elif expected is None:
        assert len(outcome.frames) == 1 and outcome.frames[0].request_id == request_id
        check_accepted_frames_are_canonical(data, outcome)
    else:
        word, code = expected
        assert outcome.frames == () and outcome.error is not None, f"expected a {word} error"
        assert word in outcome.error[0] and outcome.error[1] == code, (
            f"expected the {word} check ({code.name}) to fire first, got {outcome.error}"
        )


def _expected_header_verdict(
    version: int, command: int, flags: int, reserved: int, body_size: int
) -> tuple[str, ErrorCode] | None:
    if version != PROTOCOL_VERSION:
        return "protocol version", ErrorCode.UNSUPPORTED_VERSION
    if flags & ~FLAG_RETRY:  # RETRY is the one flag defined
        return "flags", ErrorCode.INVALID_REQUEST
    if reserved != 0:
        return "reserved", ErrorCode.INVALID_REQUEST
    if body_size > BODY_SIZE_MAX:
        return "body_size", ErrorCode.TOO_LARGE
    if command not in [int(known) for known in Command]:
        return "unknown command", ErrorCode.INVALID_REQUEST
    return None


MUTATIONS = (
    "bit_flip",
    "bit_flips",
    "truncate",
    "length_lie",
    "length_lie_sealed",
    "splice",
    "overwrite",
    "insert",
    "delete",
    "body_damage_sealed",
)


def mutated_frames(data: st.DataObject) -> None:
    """Valid frames, damaged one way or another, decode to messages or DecodeError only."""
    TRIED["mutated_frames"] += 1
    frames = [
        encode(message, request_id)
        for message, request_id in data.draw(
            st.lists(st.tuples(small_messages(), request_ids()), min_size=1, max_size=4),
            label="frames",
        )
    ]
    mutation = data.draw(st.sampled_from(MUTATIONS), label="mutation")
    stream = b"".join(frames)
    mutated = _mutate(data, mutation, frames, stream)
    outcome = decode_stream(mutated)
    check_accepted_frames_are_canonical(mutated, outcome)
    _check_exact_outcome(mutation, frames, stream, mutated, outcome)


def _mutate(data: st.DataObject, mutation: str, frames: list[bytes], stream: bytes) -> bytes:
    out = bytearray(stream)
    index = data.draw(st.integers(0, len(stream) - 1), label="position")
    frame_index = data.draw(st.integers(0, len(frames) - 1), label="frame")
    frame_start = frame_bounds(frames)[frame_index]
    if mutation == "bit_flip":
        out[index] ^= 1 << data.draw(st.integers(0, 7), label="bit")
    elif mutation == "bit_flips":
        for position in data.draw(st.lists(st.integers(0, len(stream) - 1), min_size=2)):
            out[position] ^= 1 << data.draw(st.integers(0, 7))
    elif mutation == "truncate":
        del out[index:]
    elif mutation in ("length_lie", "length_lie_sealed"):
        (true_size,) = _U32.unpack_from(out, frame_start + BODY_SIZE_OFFSET)
        lie = data.draw(
            st.one_of(
                st.integers(max(0, true_size - 8), true_size + 8),
                st.sampled_from([0, BODY_SIZE_MAX, BODY_SIZE_MAX + 1, 2**32 - 1]),
                st.integers(0, 2**32 - 1),
            ),
            label="lie",
        )
        _U32.pack_into(out, frame_start + BODY_SIZE_OFFSET, lie)
        if mutation == "length_lie_sealed":
            out = bytearray(reseal(bytes(out)))
    elif mutation == "splice":
        other = b"".join(
            encode(message, 0)
            for message in data.draw(st.lists(small_messages(), min_size=1, max_size=3))
        )
        cut = data.draw(st.integers(0, len(other)), label="cut")
        out = out[:index] + other[cut:]
    elif mutation == "overwrite":
        patch = data.draw(st.binary(min_size=1, max_size=16), label="patch")
        out[index : index + len(patch)] = patch
    elif mutation == "insert":
        out[index:index] = data.draw(st.binary(min_size=1, max_size=16), label="insert")
    elif mutation == "delete":
        del out[index : index + data.draw(st.integers(1, 16), label="size")]
    else:
        assert mutation == "body_damage_sealed", mutation
        body_start = frame_start + HEADER_SIZE
        body_end = frame_bounds(frames)[frame_index + 1]
        if body_end > body_start:
            position = data.draw(st.integers(body_start, body_end - 1), label="body position")
            out[position] = data.draw(st.integers(0, 255), label="byte")
        out = bytearray(reseal(bytes(out)))
    return bytes(out)


def _check_exact_outcome(
    mutation: str,
    frames: list[bytes],
    stream: bytes,
    mutated: bytes,
    outcome: StreamOutcome,
) -> None:
    """Where the damage is one the checksums must catch, the outcome is known exactly."""
    bounds = frame_bounds(frames)
    if mutation == "bit_flip":
        position = next(i for i, (a, b) in enumerate(zip(stream, mutated, strict=True)) if a != b)
        damaged = max(i for i, start in enumerate(bounds[:-1]) if start <= position)
        assert len(outcome.frames) == damaged and outcome.error is not None, (
            f"a flipped bit in frame {damaged} must stop decoding exactly there, got "
            f"{len(outcome.frames)} frames and error {outcome.error}"
        )
    elif mutation == "truncate":
        whole = max(i for i, end in enumerate(bounds) if end <= len(mutated))
        assert outcome.error is None and len(outcome.frames) == whole, (
            f"a stream cut at {len(mutated)} holds {whole} whole frames and no error"
        )
        assert outcome.leftover == len(mutated) - bounds[whole]
    elif mutation == "length_lie" and mutated != stream:
        damaged = next(
            i
            for i in range(len(frames))
            if mutated[bounds[i] : bounds[i + 1]] != stream[bounds[i] : bounds[i + 1]]
        )
        assert len(outcome.frames) == damaged and outcome.error is not None, (
            "an unsealed length lie must be caught by the header checksum of that frame"
        )
        assert "checksum" in outcome.error[0], f"expected a checksum error, got {outcome.error}"


INTERESTING_BYTES = (0, 1, 2, 3, 0x7F, 0x80, 0xFE, 0xFF)
FIELD_MUTATIONS = ("first_byte", "length", "replace", "drop", "duplicate", "append")


def field_mutation(data: st.DataObject) -> None:
    """Damage one field of a valid body where decoding decides: its tag, length or count.

    The body is resealed, so only the schema decoder stands between the damage and a
    message; whatever it accepts must be canonical.
    """
    TRIED["field_mutation"] += 1
    message = data.draw(small_messages(), label="message")
    command = command_of(message)
    pieces = []
    for name, wire in Record(message_class(command)).fields:
        piece = bytearray()
        wire.encode(getattr(message, name), piece)
        pieces.append(bytes(piece))
    mutation = data.draw(st.sampled_from(FIELD_MUTATIONS), label="mutation")
    if pieces and mutation != "append":
        index = data.draw(st.integers(0, len(pieces) - 1), label="field")
        pieces[index] = _mutate_field(data, mutation, pieces[index])
    else:
        pieces.append(data.draw(st.binary(min_size=1, max_size=8), label="appended"))
    body = b"".join(pieces)
    frame_bytes = encode_frame(command, 1, body)
    outcome = decode_stream(frame_bytes)
    assert len(outcome.frames) == 1, "a resealed frame is a valid frame"
    check_accepted_frames_are_canonical(frame_bytes, outcome)


def _mutate_field(data: st.DataObject, mutation: str, piece: bytes) -> bytes:
    if mutation == "first_byte" and piece:
        byte = data.draw(st.one_of(st.sampled_from(INTERESTING_BYTES), st.integers(0, 255)))
        return bytes([byte]) + piece[1:]
    if mutation == "length" and len(piece) >= 4:
        (true_value,) = _U32.unpack_from(piece)
        value = data.draw(
            st.one_of(
                st.integers(max(0, true_value - 2), min(true_value + 2, 2**32 - 1)),
                st.sampled_from([0, 1, 2**31, 2**32 - 1]),
            )
        )
        return _U32.pack(value) + piece[4:]
    if mutation == "replace":
        return data.draw(st.binary(max_size=len(piece) + 8), label="replacement")
    if mutation == "drop":
        return b""
    return piece * 2


def chunking(data: st.DataObject) -> None:
    """Frames and errors are the same however the bytes are cut into chunks."""
    TRIED["chunking"] += 1
    frames = [
        encode(message, request_id)
        for message, request_id in data.draw(
            st.lists(st.tuples(small_messages(), request_ids()), max_size=5), label="frames"
        )
    ]
    tail = data.draw(st.one_of(st.just(b""), st.binary(max_size=64)), label="tail")
    stream = b"".join(frames) + tail
    whole = decode_stream(stream)
    cuts = data.draw(st.lists(st.integers(0, len(stream))), label="cuts")
    assert decode_stream(stream, cuts) == whole, f"chunks cut at {sorted(cuts)} changed it"
    if len(stream) <= 1024:
        one_by_one = decode_stream(stream, range(len(stream)))
        assert one_by_one == whole, "byte-at-a-time feeding changed the outcome"
    if not tail:
        assert whole.error is None and whole.leftover == 0, "valid frames decode cleanly"
        rebuilt = [encode_frame(f.command, f.request_id, f.body) for f in whole.frames]
        assert rebuilt == frames, "valid frames come out exactly as they went in"


def huge_length(command: int, request_id: int, body_size: int, sealed: bool) -> None:
    """A header claiming too big a body is refused on sight; nothing is held for it."""
    TRIED["huge_length"] += 1
    header = bytearray(
        sealed_header(
            version=PROTOCOL_VERSION,
            command=command,
            flags=0,
            reserved=0,
            body_size=body_size,
            request_id=request_id,
            body_checksum=0,
        )
    )
    if not sealed:
        header[HEADER_CHECKSUM_OFFSET] ^= 0xFF
    decoder = FrameDecoder()
    decoder.feed(bytes(header[: HEADER_SIZE - 1]))
    assert decoder.buffered_size == HEADER_SIZE - 1, "nothing is allocated before the header"
    try:
        decoder.feed(bytes(header[HEADER_SIZE - 1 :]))
    except DecodeError as error:
        expected = ErrorCode.TOO_LARGE if sealed else ErrorCode.INVALID_REQUEST
        assert error.code == expected, f"expected {expected.name}, got {error!r}"
    else:
        raise AssertionError(f"a header claiming {body_size} body bytes must be refused")
    assert decoder.buffered_size == 0, "a refused frame leaves nothing buffered"


def hypothesis_test(prop: Property, test_settings: settings) -> Callable[[], None]:
    """``prop`` as a Hypothesis test: its strategies, its explicit examples, these settings."""
    test = given(**prop.strategies)(prop.check)
    for explicit in reversed(prop.examples):
        test = example(**explicit)(test)
    wrapped: Callable[[], None] = test_settings(test)
    return wrapped


class DecoderMachine(RuleBasedStateMachine):
    """FrameDecoder against a queue model: frames sent, bytes delivered at any pace.

    The model knows which frames have been delivered whole; after each delivery exactly those
    must have come out, in order, and the decoder must hold exactly the bytes after them.
    """

    def __init__(self) -> None:
        super().__init__()
        TRIED["decoder_machine"] += 1
        self.decoder = FrameDecoder()
        self.undelivered = bytearray()
        self.in_flight: deque[tuple[Message, int, int]] = deque()  # message, id, end offset
        self.sent_size = 0
        self.delivered_size = 0
        self.decoded_size = 0

    @rule(message=small_messages(), request_id=request_ids())
    def send(self, message: Message, request_id: int) -> None:
        raw = encode(message, request_id)
        self.undelivered += raw
        self.sent_size += len(raw)
        self.in_flight.append((message, request_id, self.sent_size))

    @rule(data=st.data())
    def deliver(self, data: st.DataObject) -> None:
        size = data.draw(st.integers(0, len(self.undelivered)), label="chunk size")
        chunk = bytes(self.undelivered[:size])
        del self.undelivered[:size]
        self.decoder.feed(chunk)
        self.delivered_size += size
        while (frame := self.decoder.next_frame()) is not None:
            message, request_id, end = self.in_flight.popleft()
            assert frame.request_id == request_id and decode_frame(frame) == message
            self.decoded_size = end
        whole = [end for _, _, end in self.in_flight if end <= self.delivered_size]
        assert not whole, f"frames ending at {whole} were delivered whole but not returned"

    @rule()
    def finish(self) -> None:
        if self.delivered_size == self.decoded_size:
            self.decoder.finish()
        else:
            try:
                self.decoder.finish()
            except DecodeError:
                self.decoder = FrameDecoder()  # the stream is over; a new one starts
                self.undelivered.clear()
                self.in_flight.clear()
                self.sent_size = self.delivered_size = self.decoded_size = 0
            else:
                raise AssertionError("finish() inside a frame must raise DecodeError")

    @invariant()
    def buffer_holds_exactly_the_undecoded_bytes(self) -> None:
        assert self.decoder.buffered_size == self.delivered_size - self.decoded_size
        assert self.decoder.buffered_size < FRAME_SIZE_MAX


# --- The table -------------------------------------------------------------------------------

_SYNC_FRAME = encode(Sync(), 1)
_APPEND_FRAME = encode(AppendEvents("s", (b"event",), None), 2)
_READ_FRAME = encode(ReadEvents("s", 0, 1, 1), 3)

PROPERTIES: tuple[Property, ...] = (
    Property(
        "round_trip",
        round_trip,
        {"message": messages, "request_id": request_ids()},
        (
            {"message": Sync(), "request_id": 0},
            {"message": AppendEvents("a", (b"",), 0), "request_id": 2**64 - 1},
        ),
    ),
    Property(
        "arbitrary_bytes",
        arbitrary_bytes,
        {
            "data": st.one_of(
                st.binary(max_size=512),
                st.binary(max_size=512).map(lambda tail: MAGIC + tail),
                st.binary(max_size=512).map(lambda tail: _SYNC_FRAME + tail),
            )
        },
        (
            {"data": b""},
            {"data": b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"},
            {"data": MAGIC},
            {"data": _SYNC_FRAME + _APPEND_FRAME + _READ_FRAME},
            {"data": _APPEND_FRAME[:-1]},
        ),
    ),
    Property(
        "sealed_body",
        sealed_body,
        {
            "command": commands,
            "request_id": request_ids(),
            "body": st.one_of(
                st.binary(max_size=256),
                st.binary(max_size=64).map(lambda noise: _APPEND_FRAME[HEADER_SIZE:] + noise),
                st.integers(0, len(_APPEND_FRAME) - HEADER_SIZE).map(
                    lambda cut: _APPEND_FRAME[HEADER_SIZE : HEADER_SIZE + cut]
                ),
            ),
        },
        (
            {"command": Command.SYNC, "request_id": 1, "body": b"\x00"},
            {"command": Command.APPEND_EVENTS, "request_id": 1, "body": b"\xff\xff\xff\xff"},
            {"command": Command.HANDSHAKE_REPLY, "request_id": 1, "body": b""},
            # replica_id 3 >= cluster_size 3: only the rule across fields refuses it.
            {
                "command": Command.HANDSHAKE_REPLY,
                "request_id": 1,
                "body": b"\x01\x00" + b"\x01\x00\x00\x00x" + b"\x03\x03" + bytes(8),
            },
            # APPEND_EVENTS whose count claims more events than the body could hold.
            {
                "command": Command.APPEND_EVENTS,
                "request_id": 1,
                "body": b"\x01\x00\x00\x00s" + b"\x00\x20\x00\x00" + b"\x00",
            },
        ),
    ),
    Property(
        "forged_header",
        forged_header,
        {
            "version": st.sampled_from([0, 1, 1, 1, 2, 0xFFFF]),
            "command": st.one_of(
                st.sampled_from([int(command) for command in Command]),
                st.sampled_from([0, 0x00FF, 0x0100, 0x01FF, 0xFFFF]),
            ),
            "flags": st.sampled_from([0, 0, 0, 1, 0x8000]),
            "reserved": st.sampled_from([0, 0, 0, 1, 0xFFFF]),
            "body_size": st.one_of(
                st.integers(0, 40),
                st.sampled_from([BODY_SIZE_MAX, BODY_SIZE_MAX + 1, 2**32 - 1]),
            ),
            "request_id": request_ids(),
            "body": st.binary(max_size=40),
            "body_checksum_ok": st.booleans(),
        },
        (
            {
                "version": 1,
                "command": int(Command.SYNC),
                "flags": 0,
                "reserved": 0,
                "body_size": BODY_SIZE_MAX + 1,
                "request_id": 0,
                "body": b"",
                "body_checksum_ok": True,
            },
        ),
    ),
    Property("mutated_frames", mutated_frames, {"data": st.data()}),
    Property("field_mutation", field_mutation, {"data": st.data()}),
    Property("chunking", chunking, {"data": st.data()}),
    Property(
        "huge_length",
        huge_length,
        {
            "command": st.sampled_from([int(command) for command in Command]),
            "request_id": request_ids(),
            "body_size": st.one_of(
                st.sampled_from([BODY_SIZE_MAX + 1, 2**31, 2**32 - 1]),
                st.integers(BODY_SIZE_MAX + 1, 2**32 - 1),
            ),
            "sealed": st.booleans(),
        },
        (
            {
                "command": int(Command.APPEND_EVENTS),
                "request_id": 1,
                "body_size": 2**32 - 1,
                "sealed": True,
            },
        ),
    ),
)
