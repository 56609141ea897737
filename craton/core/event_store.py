"""Craton's event store: tenants, streams of events, appends and reads as of a log position.

The event store is the state machine behind the client protocol (docs/PROTOCOL.md). Each
tenant has its own namespace of streams: a stream is named within its tenant, so tenant A
cannot see, read or append to tenant B's streams, whatever their names ("stream not found",
as if they did not exist). Tenants are identified by a u64 id that the node derives from a
client's credentials and puts in every request; a tenant exists as soon as it is used.

Operations, each applied at the op (log position) it committed at:
- create stream (name, data class, placement) → the op of its creation;
  ``STREAM_ALREADY_EXISTS`` if the tenant has a stream of that name.
- append events (a batch, all or none) with an optional expected offset → the offset of the
  first event and the op; if the expected offset is given and is not the stream's length,
  ``UNEXPECTED_OFFSET`` (carrying the actual length) and nothing is written.
- read events from an offset (at most max events; max bytes, but the first event always) →
  the events as of the read's own op.
- read events as of a log position → the stream as it was when the log ended at that
  position: only events whose append committed at an op ≤ that position; a stream created
  after it is "not found"; a position beyond the read's own op is ``INVALID_REQUEST``.

Encodings (integers little-endian; the records are the wire protocol's own, see
``craton.core.wire.messages``, so a node translates requests and replies without copying):

    request := u8 RequestKind | u64 tenant_id | CreateStream | AppendEvents | ReadEvents
                                            | ReadEventsAsOf record
    reply   := u8 ReplyKind | CreateStreamReply | AppendEventsReply | ReadEventsReply
                            | StoreError record

Rules: every limit is named below or in the wire protocol (events per append, event size,
read sizes); a body that does not decode gets a ``StoreError`` (``INVALID_REQUEST`` or
``TOO_LARGE``) and changes nothing; error codes are the wire protocol's ``ErrorCode``, and
error messages never quote names or payloads. The digest encodes the streams sorted by
(tenant, name), each stream's events by a SHA-256 chain over (op, event), so computing it
costs one step per stream, not per event. Snapshots hold every event.

This module deliberately does not use ``from __future__ import annotations``: the wire
schema of ``StoreError`` is read from its annotations when the class is created.
"""

import bisect
import enum
import hashlib
import struct
from collections.abc import Sequence
from typing import Annotated, Any, assert_never

import attrs

from craton.core.state_machine import OP_MAX, SnapshotMachine, next_op
from craton.core.wire.errors import DecodeError, ErrorCode
from craton.core.wire.frame import BODY_SIZE_MAX
from craton.core.wire.messages import (
    APPEND_EVENTS_MAX,
    ERROR_MESSAGE_SIZE_MAX,
    EVENT,
    READ_EVENTS_MAX,
    READ_SIZE_MAX,
    STREAM_NAME,
    U64,
    AppendEvents,
    AppendEventsReply,
    CreateStream,
    CreateStreamReply,
    DataClass,
    ErrorReply,
    Placement,
    PlacementKind,
    ReadEvents,
    ReadEventsAsOf,
    ReadEventsReply,
)
from craton.core.wire.schema import EnumType, Option, Reader, Record, Seq, Text, UInt, wire_fields

NAME = "craton.event_store"
STREAMS_MAX = 100_000  # streams held at once, all tenants together
STREAM_EVENTS_MAX = 2**31  # events in one stream
TENANT_ID_MAX = 2**64 - 1  # tenant ids are u64
REQUEST_SIZE_MAX = 1 + 8 + BODY_SIZE_MAX  # bytes: tag, tenant, the largest wire body
SHOWN_BYTES_MAX = 32  # bytes of an event that ``describe_*`` show before cutting

_CHAIN_START = bytes(32)
_CHAIN_LINK = struct.Struct("<QI")  # op, event size: prefixed to each event in the chain
_U32 = struct.Struct("<I")


class RequestKind(enum.IntEnum):
    """The first byte of a request body."""

    CREATE_STREAM = 1
    APPEND_EVENTS = 2
    READ_EVENTS = 3
    READ_EVENTS_AS_OF = 4


class ReplyKind(enum.IntEnum):
    """The first byte of a reply body."""

    STREAM_CREATED = 1
    EVENTS_APPENDED = 2
    EVENTS_READ = 3
    ERROR = 4


@attrs.frozen(field_transformer=wire_fields)
class StoreError:
    """A refused operation. ``stream_length`` is the stream's actual length (the offset the
    next append gets), given with ``UNEXPECTED_OFFSET`` and only with it."""

    code: Annotated[ErrorCode, EnumType(ErrorCode, 16)]
    message: Annotated[str, Text(0, ERROR_MESSAGE_SIZE_MAX)]
    stream_length: Annotated[int | None, Option(U64)]

    def __attrs_post_init__(self) -> None:
        if (self.stream_length is not None) != (self.code == ErrorCode.UNEXPECTED_OFFSET):
            raise ValueError("stream_length comes with UNEXPECTED_OFFSET and only with it")

    def to_wire(self) -> ErrorReply:
        """The wire protocol's error reply for this error."""
        return ErrorReply(self.code, self.message, None)


StoreMessage = CreateStream | AppendEvents | ReadEvents | ReadEventsAsOf
StoreReply = CreateStreamReply | AppendEventsReply | ReadEventsReply | StoreError


@attrs.frozen
class StoreRequest:
    """One operation of tenant ``tenant_id``."""

    tenant_id: int = attrs.field(
        validator=attrs.validators.and_(
            attrs.validators.instance_of(int),
            attrs.validators.ge(0),
            attrs.validators.le(TENANT_ID_MAX),
        )
    )
    message: StoreMessage


_TAG_REQUEST = EnumType(RequestKind, 8)
_TAG_REPLY = EnumType(ReplyKind, 8)
_TENANT = UInt(64, maximum=TENANT_ID_MAX)
_OP_NEXT = UInt(64, maximum=OP_MAX + 1)
_OP = UInt(64, maximum=OP_MAX)
_DATA_CLASS = EnumType(DataClass, 8)
_PLACEMENT = Record(Placement)
_APPENDED_EVENTS = Seq(EVENT, 1, APPEND_EVENTS_MAX)
_REQUESTS: dict[RequestKind, tuple[type, Record[Any]]] = {
    RequestKind.CREATE_STREAM: (CreateStream, Record(CreateStream)),
    RequestKind.APPEND_EVENTS: (AppendEvents, Record(AppendEvents)),
    RequestKind.READ_EVENTS: (ReadEvents, Record(ReadEvents)),
    RequestKind.READ_EVENTS_AS_OF: (ReadEventsAsOf, Record(ReadEventsAsOf)),
}
_REPLIES: dict[ReplyKind, tuple[type, Record[Any]]] = {
    ReplyKind.STREAM_CREATED: (CreateStreamReply, Record(CreateStreamReply)),
    ReplyKind.EVENTS_APPENDED: (AppendEventsReply, Record(AppendEventsReply)),
    ReplyKind.EVENTS_READ: (ReadEventsReply, Record(ReadEventsReply)),
    ReplyKind.ERROR: (StoreError, Record(StoreError)),
}
assert len(_REQUESTS) == len(RequestKind) and len(_REPLIES) == len(ReplyKind)


# --- Encoding --------------------------------------------------------------------------------


def encode_create_stream(
    tenant_id: int,
    name: str,
    data_class: DataClass,
    placement: Placement = Placement(PlacementKind.GLOBAL, ""),  # noqa: B008 (frozen)
) -> bytes:
    """The body of "create stream ``name`` in tenant ``tenant_id``"."""
    return encode_request(StoreRequest(tenant_id, CreateStream(name, data_class, placement)))


def encode_append(
    tenant_id: int, stream: str, events: Sequence[bytes], expected_offset: int | None = None
) -> bytes:
    """The body of an append of ``events`` (1..APPEND_EVENTS_MAX of them) to ``stream``."""
    message = AppendEvents(stream, tuple(events), expected_offset)
    return encode_request(StoreRequest(tenant_id, message))


def encode_read(
    tenant_id: int,
    stream: str,
    from_offset: int,
    max_events: int = READ_EVENTS_MAX,
    max_bytes: int = READ_SIZE_MAX,
) -> bytes:
    """The body of a read of ``stream`` from ``from_offset``, as of the read's own op."""
    message = ReadEvents(stream, from_offset, max_events, max_bytes)
    return encode_request(StoreRequest(tenant_id, message))


def encode_read_as_of(
    tenant_id: int,
    stream: str,
    log_position: int,
    from_offset: int,
    max_events: int = READ_EVENTS_MAX,
    max_bytes: int = READ_SIZE_MAX,
) -> bytes:
    """The body of a read of ``stream`` as it was when the log ended at ``log_position``."""
    message = ReadEventsAsOf(stream, log_position, from_offset, max_events, max_bytes)
    return encode_request(StoreRequest(tenant_id, message))


def encode_request(request: StoreRequest) -> bytes:
    out = bytearray()
    kind = _request_kind_of(request.message)
    _TAG_REQUEST.encode(kind, out)
    _TENANT.encode(request.tenant_id, out)
    _REQUESTS[kind][1].encode(request.message, out)
    return bytes(out)


def decode_request(body: bytes) -> StoreRequest:
    """The request in ``body``, exactly; ``DecodeError`` for anything else."""
    if len(body) > REQUEST_SIZE_MAX:
        raise DecodeError(
            f"body of {len(body)} bytes exceeds the limit {REQUEST_SIZE_MAX}", ErrorCode.TOO_LARGE
        )
    reader = Reader(body)
    kind = _TAG_REQUEST.decode(reader)
    tenant_id = _TENANT.decode(reader)
    message: StoreMessage = _REQUESTS[kind][1].decode(reader)
    reader.finish()
    return StoreRequest(tenant_id, message)


def encode_reply(reply: StoreReply) -> bytes:
    out = bytearray()
    kind = _reply_kind_of(reply)
    _TAG_REPLY.encode(kind, out)
    _REPLIES[kind][1].encode(reply, out)
    return bytes(out)


def decode_reply(body: bytes) -> StoreReply:
    """The reply in ``body``, exactly; ``DecodeError`` for anything else."""
    reader = Reader(body)
    kind = _TAG_REPLY.decode(reader)
    reply: StoreReply = _REPLIES[kind][1].decode(reader)
    reader.finish()
    return reply


def to_wire_reply(
    reply: StoreReply,
) -> CreateStreamReply | AppendEventsReply | ReadEventsReply | ErrorReply:
    """The wire protocol message that answers the client with ``reply``."""
    return reply.to_wire() if isinstance(reply, StoreError) else reply


def store_error(code: ErrorCode, reason: str, stream_length: int | None = None) -> StoreError:
    """A ``StoreError``, its message cut to ``ERROR_MESSAGE_SIZE_MAX`` bytes of UTF-8."""
    message = reason.encode("utf-8")[:ERROR_MESSAGE_SIZE_MAX].decode("utf-8", errors="ignore")
    return StoreError(code, message, stream_length)


def describe_body(body: bytes) -> str:
    """A request body in words, for checker reports and traces."""
    try:
        request = decode_request(body)
    except DecodeError as error:
        return f"malformed request ({error.reason})"
    message = request.message
    name = message.name if isinstance(message, CreateStream) else message.stream
    where = f"tenant {request.tenant_id} stream {name!r}"
    match message:
        case CreateStream():
            return f"create {where} ({message.data_class.name}, {message.placement.kind.name})"
        case AppendEvents():
            expected = "" if message.expected_offset is None else f" at {message.expected_offset}"
            return f"append to {where}{expected}: {_show_events(message.events)}"
        case ReadEvents():
            return f"read {where} from {message.from_offset}"
        case ReadEventsAsOf():
            return f"read {where} from {message.from_offset} as of {message.log_position}"
        case _:
            assert_never(message)


def describe_reply(body: bytes) -> str:
    """A reply body in words, for checker reports and traces."""
    try:
        reply = decode_reply(body)
    except DecodeError as error:
        return f"malformed reply ({error.reason})"
    match reply:
        case CreateStreamReply():
            return f"created at {reply.log_position}"
        case AppendEventsReply():
            return f"appended at offset {reply.first_offset}, position {reply.log_position}"
        case ReadEventsReply():
            return (
                f"read from offset {reply.from_offset} as of {reply.log_position}: "
                f"{_show_events(reply.events)}"
            )
        case StoreError():
            length = "" if reply.stream_length is None else f" (length {reply.stream_length})"
            return f"error {reply.code.name}{length}: {reply.message}"
        case _:
            assert_never(reply)


def _show_events(events: tuple[bytes, ...]) -> str:
    shown = [
        repr(event) if len(event) <= SHOWN_BYTES_MAX else f"{event[:SHOWN_BYTES_MAX]!r}..."
        for event in events[:4]
    ]
    more = f", ... ({len(events)} events)" if len(events) > 4 else ""
    return "[" + ", ".join(shown) + more + "]"


def _request_kind_of(message: StoreMessage) -> RequestKind:
    match message:
        case CreateStream():
            return RequestKind.CREATE_STREAM
        case AppendEvents():
            return RequestKind.APPEND_EVENTS
        case ReadEvents():
            return RequestKind.READ_EVENTS
        case ReadEventsAsOf():
            return RequestKind.READ_EVENTS_AS_OF
        case _:
            assert_never(message)


def _reply_kind_of(reply: StoreReply) -> ReplyKind:
    match reply:
        case CreateStreamReply():
            return ReplyKind.STREAM_CREATED
        case AppendEventsReply():
            return ReplyKind.EVENTS_APPENDED
        case ReadEventsReply():
            return ReplyKind.EVENTS_READ
        case StoreError():
            return ReplyKind.ERROR
        case _:
            assert_never(reply)


# --- The machine -----------------------------------------------------------------------------


class _Stream:
    """One stream's metadata and events. ``append_ops[i]`` is the op of the i-th append and
    ``append_ends[i]`` the stream's length after it; ``chain`` covers every (op, event)."""

    __slots__ = (
        "append_ends",
        "append_ops",
        "chain",
        "created_op",
        "data_class",
        "events",
        "name",
        "placement",
        "tenant_id",
    )

    def __init__(
        self, tenant_id: int, name: str, data_class: DataClass, placement: Placement, op: int
    ) -> None:
        self.tenant_id = tenant_id
        self.name = name
        self.data_class = data_class
        self.placement = placement
        self.created_op = op
        self.events: list[bytes] = []
        self.append_ops: list[int] = []
        self.append_ends: list[int] = []
        self.chain = _CHAIN_START

    def append(self, op: int, events: Sequence[bytes]) -> None:
        assert op > (self.append_ops[-1] if self.append_ops else self.created_op)
        assert events and len(self.events) + len(events) <= STREAM_EVENTS_MAX
        chain = self.chain
        for event in events:
            chain = hashlib.sha256(chain + _CHAIN_LINK.pack(op, len(event)) + event).digest()
        self.chain = chain
        self.events.extend(events)
        self.append_ops.append(op)
        self.append_ends.append(len(self.events))

    def length_as_of(self, position: int) -> int:
        """How many events the stream held when the log ended at ``position``."""
        index = bisect.bisect_right(self.append_ops, position)
        return self.append_ends[index - 1] if index else 0


class EventStore(SnapshotMachine):
    """Craton's event store: per-tenant streams of events, changed only by committed ops."""

    name = NAME

    def __init__(self) -> None:
        self._streams: dict[tuple[int, str], _Stream] = {}
        self._op_next = 0  # the smallest op ``apply`` accepts
        super().__init__()

    def apply(self, op: int, body: bytes) -> bytes:
        self._op_next = next_op(self._op_next, op)
        self._changed()
        try:
            request = decode_request(body)
        except DecodeError as error:
            return encode_reply(store_error(error.code, error.reason))
        return encode_reply(self._execute(op, request))

    @property
    def op_next(self) -> int:
        """The smallest op ``apply`` accepts: one past the last applied op (0 at first)."""
        return self._op_next

    def stream_length(self, tenant_id: int, name: str) -> int | None:
        """The current length of a stream, None if it does not exist (a local query)."""
        stream = self._streams.get((tenant_id, name))
        return None if stream is None else len(stream.events)

    def invariants(self) -> None:
        assert len(self._streams) <= STREAMS_MAX
        assert 0 <= self._op_next <= OP_MAX + 1
        for key, stream in self._streams.items():
            assert key == (stream.tenant_id, stream.name)
            assert stream.created_op < self._op_next
            assert len(stream.append_ops) == len(stream.append_ends)
            assert len(stream.events) <= STREAM_EVENTS_MAX
            if stream.append_ops:
                assert stream.created_op < stream.append_ops[0]
                assert stream.append_ops[-1] < self._op_next
                assert stream.append_ends[-1] == len(stream.events)
            else:
                assert not stream.events and stream.chain == _CHAIN_START

    # --- Operations --------------------------------------------------------------------------

    def _execute(self, op: int, request: StoreRequest) -> StoreReply:
        message = request.message
        match message:
            case CreateStream():
                return self._create(op, request.tenant_id, message)
            case AppendEvents():
                return self._append(op, request.tenant_id, message)
            case ReadEvents():
                stream = self._streams.get((request.tenant_id, message.stream))
                if stream is None:
                    return _stream_not_found()
                return _read(stream, op, len(stream.events), message)
            case ReadEventsAsOf():
                if message.log_position > op:
                    reason = f"log position {message.log_position} is beyond the log ({op})"
                    return store_error(ErrorCode.INVALID_REQUEST, reason)
                stream = self._streams.get((request.tenant_id, message.stream))
                if stream is None or stream.created_op > message.log_position:
                    return _stream_not_found()
                length = stream.length_as_of(message.log_position)
                return _read(stream, message.log_position, length, message)
            case _:
                assert_never(message)

    def _create(self, op: int, tenant_id: int, message: CreateStream) -> StoreReply:
        key = (tenant_id, message.name)
        if key in self._streams:
            return store_error(ErrorCode.STREAM_ALREADY_EXISTS, "the stream already exists")
        if len(self._streams) >= STREAMS_MAX:
            reason = f"the store holds {STREAMS_MAX} streams, its limit"
            return store_error(ErrorCode.TOO_LARGE, reason)
        self._streams[key] = _Stream(
            tenant_id, message.name, message.data_class, message.placement, op
        )
        return CreateStreamReply(op)

    def _append(self, op: int, tenant_id: int, message: AppendEvents) -> StoreReply:
        stream = self._streams.get((tenant_id, message.stream))
        if stream is None:
            return _stream_not_found()
        length = len(stream.events)
        expected = message.expected_offset
        if expected is not None and expected != length:
            reason = f"expected offset {expected}, the stream holds {length} events"
            return store_error(ErrorCode.UNEXPECTED_OFFSET, reason, length)
        if length + len(message.events) > STREAM_EVENTS_MAX:
            reason = f"a stream holds at most {STREAM_EVENTS_MAX} events"
            return store_error(ErrorCode.TOO_LARGE, reason)
        stream.append(op, message.events)
        return AppendEventsReply(length, op)

    # --- Digest and snapshot -----------------------------------------------------------------

    def _sorted_streams(self) -> list[_Stream]:
        return [self._streams[key] for key in sorted(self._streams)]

    def _compute_digest(self) -> bytes:
        """SHA-256 of: name | u64 op_next | u32 count | each stream sorted by (tenant, name):
        u64 tenant | name | u8 data class | placement | u64 created op | u64 length | chain."""
        out = bytearray(NAME.encode("utf-8") + b"\x00")
        _OP_NEXT.encode(self._op_next, out)
        out += _U32.pack(len(self._streams))
        for stream in self._sorted_streams():
            _encode_stream_header(stream, out)
            U64.encode(len(stream.events), out)
            out += stream.chain
        return hashlib.sha256(out).digest()

    def _encode_state(self) -> bytes:
        """u64 op_next | u32 count | each stream sorted by (tenant, name): its header, then
        u32 append count | each append: u64 op | u32 count + its events."""
        out = bytearray()
        _OP_NEXT.encode(self._op_next, out)
        out += _U32.pack(len(self._streams))
        for stream in self._sorted_streams():
            _encode_stream_header(stream, out)
            out += _U32.pack(len(stream.append_ops))
            start = 0
            for op, end in zip(stream.append_ops, stream.append_ends, strict=True):
                _OP.encode(op, out)
                _APPENDED_EVENTS.encode(tuple(stream.events[start:end]), out)
                start = end
        return bytes(out)

    def _decode_state(self, state: bytes) -> None:
        reader = Reader(state)
        self._op_next = _OP_NEXT.decode(reader)
        count = reader.length("stream count", 0, STREAMS_MAX)
        previous: tuple[int, str] | None = None
        for _ in range(count):
            stream = _decode_stream(reader, self._op_next)
            key = (stream.tenant_id, stream.name)
            if previous is not None and key <= previous:
                raise DecodeError("streams are not in strictly increasing (tenant, name) order")
            self._streams[key] = stream
            previous = key
        reader.finish()


def _stream_not_found() -> StoreError:
    return store_error(ErrorCode.STREAM_NOT_FOUND, "no such stream in this tenant")


def _read(
    stream: _Stream, position: int, length: int, message: ReadEvents | ReadEventsAsOf
) -> ReadEventsReply:
    """Events from ``message.from_offset`` below ``length``: at most ``max_events``, and no
    more than ``max_bytes`` of them unless the first alone is larger."""
    events: list[bytes] = []
    size_bytes = 0
    offset = message.from_offset
    while offset < length and len(events) < message.max_events:
        event = stream.events[offset]
        if events and size_bytes + len(event) > message.max_bytes:
            break
        events.append(event)
        size_bytes += len(event)
        offset += 1
    return ReadEventsReply(message.from_offset, position, tuple(events))


def _encode_stream_header(stream: _Stream, out: bytearray) -> None:
    _TENANT.encode(stream.tenant_id, out)
    STREAM_NAME.encode(stream.name, out)
    _DATA_CLASS.encode(stream.data_class, out)
    _PLACEMENT.encode(stream.placement, out)
    _OP.encode(stream.created_op, out)


def _decode_stream(reader: Reader, op_next: int) -> _Stream:
    tenant_id = _TENANT.decode(reader)
    name = STREAM_NAME.decode(reader)
    data_class = _DATA_CLASS.decode(reader)
    placement = _PLACEMENT.decode(reader)
    created_op = _OP.decode(reader)
    if created_op >= op_next:
        raise DecodeError(f"stream created at op {created_op}, not before op_next {op_next}")
    stream = _Stream(tenant_id, name, data_class, placement, created_op)
    appends = reader.length("append count", 0, STREAM_EVENTS_MAX)
    for _ in range(appends):
        op = _OP.decode(reader)
        events = _APPENDED_EVENTS.decode(reader)
        last = stream.append_ops[-1] if stream.append_ops else created_op
        if not last < op < op_next:
            raise DecodeError(f"append at op {op} is not between ops {last} and {op_next}")
        if len(stream.events) + len(events) > STREAM_EVENTS_MAX:
            raise DecodeError(f"a stream holds more than {STREAM_EVENTS_MAX} events")
        stream.append(op, events)
    return stream
