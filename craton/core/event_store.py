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

import enum
import hashlib
import json
import struct
from collections.abc import Iterator, Sequence
from typing import Annotated, Any, assert_never

import attrs

from craton.core.auth import (
    ANONYMOUS_SUBJECT,
    API_KEY_HASH_SIZE,
    Action,
    ApiKeyEntry,
    Refusal,
    Role,
    allowed,
    may_grant,
)
from craton.core.event_stream import AUDIT_STREAM as AUDIT_STREAM  # (public here too)
from craton.core.event_stream import CHAIN_START, Stream, StreamLoader
from craton.core.event_stream import STREAM_EVENTS_MAX as STREAM_EVENTS_MAX
from craton.core.state_machine import OP_MAX, SnapshotMachine, StateLoader, StateSink, next_op
from craton.core.storage import BlobFile, DerivedStorage
from craton.core.wire.errors import DecodeError, ErrorCode
from craton.core.wire.frame import BODY_SIZE_MAX
from craton.core.wire.messages import (
    API_KEY_LABEL,
    API_KEYS_LISTED_MAX,
    APPEND_EVENTS_MAX,
    ERROR_MESSAGE_SIZE_MAX,
    EVENT,
    KEY_ID,
    READ_EVENTS_MAX,
    READ_SIZE_MAX,
    ROLE,
    STREAM_NAME,
    U64,
    ApiKeyInfo,
    AppendEvents,
    AppendEventsReply,
    CreateStream,
    CreateStreamReply,
    DataClass,
    ErrorReply,
    ListApiKeys,
    ListApiKeysReply,
    Placement,
    PlacementKind,
    ReadEvents,
    ReadEventsAsOf,
    ReadEventsReply,
    RevokeApiKey,
    RevokeApiKeyReply,
)
from craton.core.wire.schema import (
    Blob,
    EnumType,
    Fields,
    Option,
    Reader,
    Record,
    Seq,
    Text,
    UInt,
    wire_fields,
)

NAME = "craton.event_store"
STREAMS_MAX = 100_000  # streams held at once, all tenants together
AUDIT_STREAMS_MAX = 100_000  # tenants with an audit stream
API_KEYS_MAX = 100_000  # API keys held, revoked ones included, all tenants together
RESERVED_PREFIX = "craton:"  # stream names clients may not create or append to
AUDIT_TEXT_SIZE_MAX = 128  # bytes of an audit record's actor or reason
TENANT_ID_MAX = 2**64 - 1  # tenant ids are u64
# bytes: tag, tenant, role, key id, subject, time, the largest wire body
REQUEST_SIZE_MAX = 1 + 8 + 1 + 8 + 4 + AUDIT_TEXT_SIZE_MAX + 8 + BODY_SIZE_MAX
SHOWN_BYTES_MAX = 32  # bytes of an event that ``describe_*`` show before cutting

_U32 = struct.Struct("<I")
_OP_COUNT = struct.Struct("<QI")  # an append's op and its event count, in a snapshot


class RequestKind(enum.IntEnum):
    """The first byte of a request body."""

    CREATE_STREAM = 1
    APPEND_EVENTS = 2
    READ_EVENTS = 3
    READ_EVENTS_AS_OF = 4
    CREATE_API_KEY = 5
    REVOKE_API_KEY = 6
    LIST_API_KEYS = 7
    RECORD_AUTH_FAILURE = 8  # only a node makes these: a refused handshake, for the audit


class ReplyKind(enum.IntEnum):
    """The first byte of a reply body."""

    STREAM_CREATED = 1
    EVENTS_APPENDED = 2
    EVENTS_READ = 3
    ERROR = 4
    KEY_CREATED = 5
    KEY_REVOKED = 6
    KEYS_LISTED = 7
    RECORDED = 8


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


@attrs.frozen(field_transformer=wire_fields)
class CreateKey:
    """Store an API key: its id and the SHA-256 of its text (the node made the key)."""

    key_id: Annotated[int, KEY_ID]
    key_hash: Annotated[bytes, Blob(API_KEY_HASH_SIZE)]
    role: Annotated[Role, ROLE]
    expires_ms: Annotated[int | None, Option(U64)]
    label: Annotated[str, API_KEY_LABEL]

    def __attrs_post_init__(self) -> None:
        if len(self.key_hash) != API_KEY_HASH_SIZE:
            raise ValueError(f"key_hash must be {API_KEY_HASH_SIZE} bytes")


@attrs.frozen(field_transformer=wire_fields)
class KeyCreated:
    """The key ``key_id`` exists from ``log_position`` on."""

    key_id: Annotated[int, KEY_ID]
    log_position: Annotated[int, U64]


@attrs.frozen(field_transformer=wire_fields)
class AuthFailure:
    """A node refused a handshake: the audit records it in the credential's tenant (0 when
    nothing in the credential could be trusted)."""

    subject: Annotated[str, Text(0, AUDIT_TEXT_SIZE_MAX)]
    reason: Annotated[str, Text(1, AUDIT_TEXT_SIZE_MAX)]


@attrs.frozen(field_transformer=wire_fields)
class Recorded:
    """The audit record is in the log at ``log_position``."""

    log_position: Annotated[int, U64]


StoreMessage = (
    CreateStream
    | AppendEvents
    | ReadEvents
    | ReadEventsAsOf
    | CreateKey
    | RevokeApiKey
    | ListApiKeys
    | AuthFailure
)
StoreReply = (
    CreateStreamReply
    | AppendEventsReply
    | ReadEventsReply
    | StoreError
    | KeyCreated
    | RevokeApiKeyReply
    | ListApiKeysReply
    | Recorded
)


@attrs.frozen
class StoreRequest:
    """One operation of tenant ``tenant_id``, by the principal the other fields name (its
    role, its API key or 0, its subject), received at ``time_ms`` (Unix ms, from the node)."""

    tenant_id: int = attrs.field(
        validator=attrs.validators.and_(
            attrs.validators.instance_of(int),
            attrs.validators.ge(0),
            attrs.validators.le(TENANT_ID_MAX),
        )
    )
    message: StoreMessage
    role: Role = Role.OWNER
    key_id: int = 0
    subject: str = ANONYMOUS_SUBJECT
    time_ms: int = 0


_TAG_REQUEST = EnumType(RequestKind, 8)
_TAG_REPLY = EnumType(ReplyKind, 8)
_TENANT = UInt(64, maximum=TENANT_ID_MAX)
_OP_NEXT = UInt(64, maximum=OP_MAX + 1)
_OP = UInt(64, maximum=OP_MAX)
_DATA_CLASS = EnumType(DataClass, 8)
_PLACEMENT = Record(Placement)
_APPENDED_EVENTS = Seq(EVENT, 1, APPEND_EVENTS_MAX)
_ROLE = EnumType(Role, 8)
_KEY_ID = UInt(64)  # 0: the principal did not use an API key
_SUBJECT = Text(0, AUDIT_TEXT_SIZE_MAX)
_TIME_MS = U64
_REQUEST_HEADER = Fields(_TAG_REQUEST, _TENANT, _ROLE, _KEY_ID, _SUBJECT, _TIME_MS)
_REQUESTS: dict[RequestKind, tuple[type, Record[Any]]] = {
    RequestKind.CREATE_STREAM: (CreateStream, Record(CreateStream)),
    RequestKind.APPEND_EVENTS: (AppendEvents, Record(AppendEvents)),
    RequestKind.READ_EVENTS: (ReadEvents, Record(ReadEvents)),
    RequestKind.READ_EVENTS_AS_OF: (ReadEventsAsOf, Record(ReadEventsAsOf)),
    RequestKind.CREATE_API_KEY: (CreateKey, Record(CreateKey)),
    RequestKind.REVOKE_API_KEY: (RevokeApiKey, Record(RevokeApiKey)),
    RequestKind.LIST_API_KEYS: (ListApiKeys, Record(ListApiKeys)),
    RequestKind.RECORD_AUTH_FAILURE: (AuthFailure, Record(AuthFailure)),
}
_REPLIES: dict[ReplyKind, tuple[type, Record[Any]]] = {
    ReplyKind.STREAM_CREATED: (CreateStreamReply, Record(CreateStreamReply)),
    ReplyKind.EVENTS_APPENDED: (AppendEventsReply, Record(AppendEventsReply)),
    ReplyKind.EVENTS_READ: (ReadEventsReply, Record(ReadEventsReply)),
    ReplyKind.ERROR: (StoreError, Record(StoreError)),
    ReplyKind.KEY_CREATED: (KeyCreated, Record(KeyCreated)),
    ReplyKind.KEY_REVOKED: (RevokeApiKeyReply, Record(RevokeApiKeyReply)),
    ReplyKind.KEYS_LISTED: (ListApiKeysReply, Record(ListApiKeysReply)),
    ReplyKind.RECORDED: (Recorded, Record(Recorded)),
}
_KIND_OF_MESSAGE: dict[type, RequestKind] = {cls: kind for kind, (cls, _) in _REQUESTS.items()}
_KIND_OF_REPLY: dict[type, ReplyKind] = {cls: kind for kind, (cls, _) in _REPLIES.items()}
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
    kind = _KIND_OF_MESSAGE[type(request.message)]
    _TAG_REQUEST.encode(kind, out)
    out += encode_principal(request.tenant_id, request.role, request.key_id, request.subject)
    _TIME_MS.encode(request.time_ms, out)
    _REQUESTS[kind][1].encode(request.message, out)
    return bytes(out)


def encode_principal(tenant_id: int, role: Role, key_id: int, subject: str) -> bytes:
    """The bytes between a request's tag and its time: a node computes them once per
    connection and puts them in every request of that connection."""
    out = bytearray()
    _TENANT.encode(tenant_id, out)
    _ROLE.encode(role, out)
    _KEY_ID.encode(key_id, out)
    _SUBJECT.encode(subject, out)
    return bytes(out)


def decode_request(body: bytes) -> StoreRequest:
    """The request in ``body``, exactly; ``DecodeError`` for anything else."""
    if len(body) > REQUEST_SIZE_MAX:
        raise DecodeError(
            f"body of {len(body)} bytes exceeds the limit {REQUEST_SIZE_MAX}", ErrorCode.TOO_LARGE
        )
    reader = Reader(body)
    kind, tenant_id, role, key_id, subject, time_ms = _REQUEST_HEADER.decode(reader)
    message: StoreMessage = _REQUESTS[kind][1].decode(reader)
    reader.finish()
    return StoreRequest(tenant_id, message, role, key_id, subject, time_ms)


def encode_reply(reply: StoreReply) -> bytes:
    out = bytearray()
    kind = _KIND_OF_REPLY[type(reply)]
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


WireStoreReply = (
    CreateStreamReply
    | AppendEventsReply
    | ReadEventsReply
    | ErrorReply
    | RevokeApiKeyReply
    | ListApiKeysReply
)


def to_wire_reply(reply: StoreReply) -> WireStoreReply:
    """The wire protocol message that answers the client with ``reply`` (a created key's
    reply needs the key, which only the node that made it has: see ``KeyCreated``)."""
    if isinstance(reply, StoreError):
        return reply.to_wire()
    if isinstance(reply, KeyCreated | Recorded):
        raise ValueError(f"{type(reply).__name__} has no wire reply of its own")
    return reply


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
    who = f"tenant {request.tenant_id} ({request.role.name.lower()})"
    match message:
        case CreateStream():
            kinds = f"{message.data_class.name}, {message.placement.kind.name}"
            return f"create {who} stream {message.name!r} ({kinds})"
        case AppendEvents():
            expected = "" if message.expected_offset is None else f" at {message.expected_offset}"
            events = _show_events(message.events)
            return f"append to {who} stream {message.stream!r}{expected}: {events}"
        case ReadEvents():
            return f"read {who} stream {message.stream!r} from {message.from_offset}"
        case ReadEventsAsOf():
            where = f"{who} stream {message.stream!r} from {message.from_offset}"
            return f"read {where} as of {message.log_position}"
        case CreateKey():
            return f"create {who} API key {message.key_id:016x} ({message.role.name.lower()})"
        case RevokeApiKey():
            return f"revoke {who} API key {message.key_id:016x}"
        case ListApiKeys():
            return f"list {who} API keys"
        case AuthFailure():
            return f"record an authentication failure in {who}: {message.reason}"
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
        case KeyCreated():
            return f"key {reply.key_id:016x} created at {reply.log_position}"
        case RevokeApiKeyReply():
            return f"key revoked at {reply.log_position}"
        case ListApiKeysReply():
            return f"{len(reply.keys)} keys as of {reply.log_position}"
        case Recorded():
            return f"recorded at {reply.log_position}"
        case _:
            assert_never(reply)


def _show_events(events: tuple[bytes, ...]) -> str:
    shown = [
        repr(event) if len(event) <= SHOWN_BYTES_MAX else f"{event[:SHOWN_BYTES_MAX]!r}..."
        for event in events[:4]
    ]
    more = f", ... ({len(events)} events)" if len(events) > 4 else ""
    return "[" + ", ".join(shown) + more + "]"


# --- The machine -----------------------------------------------------------------------------


class EventStore(SnapshotMachine):
    """Craton's event store: per-tenant streams of events, API keys and audit trails,
    changed only by committed ops."""

    name = NAME

    def __init__(self, storage: DerivedStorage | None = None) -> None:
        super().__init__(storage)
        self._events = self.storage.open_blob("events")  # every stream's events' bytes
        self._streams: dict[tuple[int, str], Stream] = {}
        self._keys: dict[int, ApiKeyEntry] = {}
        self._audit_streams = 0  # how many of the streams are audit streams
        self._op_next = 0  # the smallest op ``apply`` accepts

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

    def close(self) -> None:
        self._events.close()

    def stream_length(self, tenant_id: int, name: str) -> int | None:
        """The current length of a stream, None if it does not exist (a local query)."""
        stream = self._streams.get((tenant_id, name))
        return None if stream is None else stream.length

    def api_key(self, key_id: int) -> ApiKeyEntry | None:
        """The key ``key_id`` as last applied here (a local query, for authentication)."""
        return self._keys.get(key_id)

    def invariants(self) -> None:
        assert len(self._streams) <= STREAMS_MAX + AUDIT_STREAMS_MAX
        assert self._audit_streams <= AUDIT_STREAMS_MAX
        assert len(self._keys) <= API_KEYS_MAX
        assert 0 <= self._op_next <= OP_MAX + 1
        for key, stream in self._streams.items():
            assert key == (stream.tenant_id, stream.name)
            assert stream.created_op < self._op_next
            assert len(stream.append_ops) == len(stream.append_ends)
            stream.invariants()
            if stream.append_ops:
                assert stream.created_op <= stream.append_ops[0]
                assert stream.append_ops[-1] < self._op_next
                assert stream.append_ends[-1] == stream.length
            else:
                assert not stream.length and stream.chain == CHAIN_START
        for key_id, entry in self._keys.items():
            assert key_id == entry.key_id and entry.created_op < self._op_next
            assert entry.revoked_op is None or entry.created_op < entry.revoked_op

    # --- Authorization -----------------------------------------------------------------------

    def _execute(self, op: int, request: StoreRequest) -> StoreReply:
        message = request.message
        if isinstance(message, AuthFailure):
            return self._record_auth_failure(op, request, message)
        role = request.role
        if request.key_id:
            entry = self._keys.get(request.key_id)
            refusal = (
                Refusal.UNKNOWN_KEY
                if entry is None or entry.tenant_id != request.tenant_id
                else entry.usable_at(request.time_ms)
            )
            if refusal is not None or entry is None:
                self._audit(op, request, _action_of(message).value, f"refused: {refusal}")
                return store_error(ErrorCode.AUTHENTICATION_FAILED, _refused(refusal))
            role = entry.role  # the table decides, not what the node remembered
        action = _action_of(message)
        if not allowed(role, action):
            self._audit(op, request, action.value, "denied")
            reason = f"the {role.name.lower()} role may not {action.value.replace('_', ' ')}"
            return store_error(ErrorCode.PERMISSION_DENIED, reason)
        if _writes_reserved(message):
            self._audit(op, request, action.value, "denied")
            reason = f"stream names beginning {RESERVED_PREFIX!r} are reserved"
            return store_error(ErrorCode.PERMISSION_DENIED, reason)
        return self._perform(op, request, role)

    def _perform(self, op: int, request: StoreRequest, role: Role) -> StoreReply:
        message, tenant_id = request.message, request.tenant_id
        match message:
            case CreateStream():
                return self._create(op, tenant_id, message)
            case AppendEvents():
                return self._append(op, tenant_id, message)
            case ReadEvents():
                stream = self._streams.get((tenant_id, message.stream))
                if stream is None:
                    return _stream_not_found()
                return _read(stream, op, stream.length, message)
            case ReadEventsAsOf():
                if message.log_position > op:
                    reason = f"log position {message.log_position} is beyond the log ({op})"
                    return store_error(ErrorCode.INVALID_REQUEST, reason)
                stream = self._streams.get((tenant_id, message.stream))
                if stream is None or stream.created_op > message.log_position:
                    return _stream_not_found()
                length = stream.length_as_of(message.log_position)
                return _read(stream, message.log_position, length, message)
            case CreateKey():
                return self._create_key(op, request, message, role)
            case RevokeApiKey():
                return self._revoke_key(op, request, message, role)
            case ListApiKeys():
                return self._list_keys(op, tenant_id)
            case AuthFailure():
                raise AssertionError("recorded before authorization")
            case _:
                assert_never(message)

    # --- Streams -----------------------------------------------------------------------------

    def _create(self, op: int, tenant_id: int, message: CreateStream) -> StoreReply:
        key = (tenant_id, message.name)
        if key in self._streams:
            return store_error(ErrorCode.STREAM_ALREADY_EXISTS, "the stream already exists")
        if len(self._streams) - self._audit_streams >= STREAMS_MAX:
            reason = f"the store holds {STREAMS_MAX} streams, its limit"
            return store_error(ErrorCode.TOO_LARGE, reason)
        self._streams[key] = Stream(
            self._events, tenant_id, message.name, message.data_class, message.placement, op
        )
        return CreateStreamReply(op)

    def _append(self, op: int, tenant_id: int, message: AppendEvents) -> StoreReply:
        stream = self._streams.get((tenant_id, message.stream))
        if stream is None:
            return _stream_not_found()
        length = stream.length
        expected = message.expected_offset
        if expected is not None and expected != length:
            reason = f"expected offset {expected}, the stream holds {length} events"
            return store_error(ErrorCode.UNEXPECTED_OFFSET, reason, length)
        if length + len(message.events) > STREAM_EVENTS_MAX:
            reason = f"a stream holds at most {STREAM_EVENTS_MAX} events"
            return store_error(ErrorCode.TOO_LARGE, reason)
        stream.append(op, message.events)
        return AppendEventsReply(length, op)

    # --- API keys ----------------------------------------------------------------------------

    def _create_key(
        self, op: int, request: StoreRequest, message: CreateKey, role: Role
    ) -> StoreReply:
        action = Action.CREATE_KEY.value
        if not may_grant(role, message.role):
            self._audit(op, request, action, "denied")
            reason = f"the {role.name.lower()} role may not grant {message.role.name.lower()}"
            return store_error(ErrorCode.PERMISSION_DENIED, reason)
        if message.key_id in self._keys:
            return store_error(ErrorCode.INVALID_REQUEST, "that key id is taken; make another")
        if len(self._keys) >= API_KEYS_MAX or not self._audit_room(request.tenant_id):
            return store_error(ErrorCode.TOO_LARGE, f"the store holds {API_KEYS_MAX} API keys")
        self._keys[message.key_id] = ApiKeyEntry(
            key_id=message.key_id,
            tenant_id=request.tenant_id,
            role=message.role,
            key_hash=message.key_hash,
            expires_ms=message.expires_ms,
            created_op=op,
            revoked_op=None,
            label=message.label,
        )
        self._audit(op, request, action, f"ok: key {message.key_id:016x}")
        return KeyCreated(message.key_id, op)

    def _revoke_key(
        self, op: int, request: StoreRequest, message: RevokeApiKey, role: Role
    ) -> StoreReply:
        action = Action.REVOKE_KEY.value
        entry = self._keys.get(message.key_id)
        if entry is None or entry.tenant_id != request.tenant_id:
            self._audit(op, request, action, f"not found: key {message.key_id:016x}")
            return store_error(ErrorCode.INVALID_REQUEST, "no such API key in this tenant")
        if not may_grant(role, entry.role):
            self._audit(op, request, action, "denied")
            return store_error(ErrorCode.PERMISSION_DENIED, "only an owner revokes an owner key")
        if entry.revoked_op is None:
            self._keys[message.key_id] = attrs.evolve(entry, revoked_op=op)
        self._audit(op, request, action, f"ok: key {message.key_id:016x}")
        return RevokeApiKeyReply(op)

    def _list_keys(self, op: int, tenant_id: int) -> StoreReply:
        keys = [
            ApiKeyInfo(e.key_id, e.role, e.expires_ms, e.created_op, e.revoked_op, e.label)
            for key_id, e in sorted(self._keys.items())
            if e.tenant_id == tenant_id
        ]
        if len(keys) > API_KEYS_LISTED_MAX:
            reason = f"the tenant has more than {API_KEYS_LISTED_MAX} keys"
            return store_error(ErrorCode.TOO_LARGE, reason)
        return ListApiKeysReply(op, tuple(keys))

    # --- Audit -------------------------------------------------------------------------------

    def _record_auth_failure(
        self, op: int, request: StoreRequest, message: AuthFailure
    ) -> StoreReply:
        if request.role is not Role.OWNER or request.key_id:
            return store_error(ErrorCode.PERMISSION_DENIED, "only a node records these")
        if not self._audit_room(request.tenant_id):
            return store_error(ErrorCode.TOO_LARGE, f"{AUDIT_STREAMS_MAX} audit streams exist")
        actor = attrs.evolve(request, subject=message.subject or request.subject)
        self._audit(op, actor, "authenticate", f"refused: {message.reason}")
        return Recorded(op)

    def _audit_room(self, tenant_id: int) -> bool:
        exists = (tenant_id, AUDIT_STREAM) in self._streams
        return exists or self._audit_streams < AUDIT_STREAMS_MAX

    def _audit(self, op: int, request: StoreRequest, action: str, outcome: str) -> None:
        """Append one record to the tenant's audit stream (made by its first record). With
        no room for another audit stream the record is not written; the operations that
        must be audited check ``_audit_room`` first."""
        key = (request.tenant_id, AUDIT_STREAM)
        stream = self._streams.get(key)
        if stream is None:
            if self._audit_streams >= AUDIT_STREAMS_MAX:
                return
            stream = Stream(
                self._events, request.tenant_id, AUDIT_STREAM, DataClass.CONFIDENTIAL, _GLOBAL, op
            )
            self._streams[key] = stream
            self._audit_streams += 1
        if stream.append_ops and stream.append_ops[-1] == op:
            return  # one record per op: the first reason given is the one that decided
        if stream.length >= STREAM_EVENTS_MAX:
            return
        record = {
            "action": action,
            "actor": request.subject,
            "key_id": f"{request.key_id:016x}" if request.key_id else None,
            "op": op,
            "outcome": outcome,
            "time_ms": request.time_ms,
        }
        stream.append(op, [json.dumps(record, sort_keys=True, separators=(",", ":")).encode()])

    # --- Digest and snapshot -----------------------------------------------------------------

    def _sorted_streams(self) -> list[Stream]:
        return [self._streams[key] for key in sorted(self._streams)]

    def _compute_digest(self) -> bytes:
        """SHA-256 of: name | u64 op_next | u32 count | each stream sorted by (tenant, name):
        u64 tenant | name | u8 data class | placement | u64 created op | u64 length | chain
        | u32 key count | each key sorted by id (as in the snapshot)."""
        out = bytearray(NAME.encode("utf-8") + b"\x00")
        _OP_NEXT.encode(self._op_next, out)
        out += _U32.pack(len(self._streams))
        for stream in self._sorted_streams():
            _encode_stream_header(stream, out)
            U64.encode(stream.length, out)
            out += stream.chain
        self._encode_keys(out)
        return hashlib.sha256(out).digest()

    def _state_parts(self, part_bytes: int) -> tuple[int, Iterator[bytes]]:
        """u64 op_next | u32 count | each stream sorted by (tenant, name): its header, then
        its appends in columns (``Stream.encode_appends``); then u32 key count | each key
        sorted by id: its StoredKey record.

        What the state is now is taken at once and is small: each stream's header and how
        many appends it holds, and the keys (which later ops may change). The events are
        read from the blob as the parts are taken: appends are never changed, and later
        ones are left out, so the parts are the state as it was here however many ops are
        applied meanwhile."""
        head = bytearray()
        _OP_NEXT.encode(self._op_next, head)
        head += _U32.pack(len(self._streams))
        streams: list[tuple[Stream, bytes, int, bytes]] = []
        size = len(head)
        for stream in self._sorted_streams():
            header = bytearray()
            _encode_stream_header(stream, header)
            appends = len(stream.append_ops)
            streams.append((stream, bytes(header), appends, stream.chain))
            size += len(header) + stream.encoded_size(appends)
        keys = bytearray()
        self._encode_keys(keys)
        size += len(keys)

        def parts() -> Iterator[bytes]:
            sink = StateSink(part_bytes)
            sink.buffer += head
            for stream, header, appends, chain in streams:
                sink.buffer += header
                yield from stream.encode_appends(sink, appends, chain)
            sink.buffer += keys
            yield sink.rest()

        return size, parts()

    def _encode_keys(self, out: bytearray) -> None:
        out += _U32.pack(len(self._keys))
        for key_id in sorted(self._keys):
            e = self._keys[key_id]
            stored = StoredKey(
                e.key_id, e.tenant_id, e.role, e.key_hash, e.expires_ms, e.created_op,
                e.revoked_op, e.label,
            )  # fmt: skip
            _STORED_KEY.encode(stored, out)

    def _decode_state(self, state: memoryview) -> None:
        reader = Reader(state)
        self._op_next = _OP_NEXT.decode(reader)
        count = reader.length("stream count", 0, STREAMS_MAX + AUDIT_STREAMS_MAX)
        previous: tuple[int, str] | None = None
        for _ in range(count):
            stream = _decode_stream(self._events, reader, self._op_next)
            previous = self._add_stream(stream, previous)
        self._decode_keys(reader)
        reader.finish()

    def _state_loader(self) -> StateLoader:
        return _StateLoader(self)

    def _add_stream(self, stream: Stream, previous: tuple[int, str] | None) -> tuple[int, str]:
        """Take a decoded stream (in increasing (tenant, name) order) into the store."""
        key = (stream.tenant_id, stream.name)
        if previous is not None and key <= previous:
            raise DecodeError("streams are not in strictly increasing (tenant, name) order")
        self._streams[key] = stream
        self._audit_streams += stream.name == AUDIT_STREAM
        if self._audit_streams > AUDIT_STREAMS_MAX:
            raise DecodeError(f"more than {AUDIT_STREAMS_MAX} audit streams")
        if len(self._streams) - self._audit_streams > STREAMS_MAX:
            raise DecodeError(f"more than {STREAMS_MAX} streams")
        return key

    def _decode_keys(self, reader: Reader) -> None:
        previous = 0
        for _ in range(reader.length("key count", 0, API_KEYS_MAX)):
            k: StoredKey = _STORED_KEY.decode(reader)
            if k.key_id <= previous or k.created_op >= self._op_next:
                raise DecodeError("keys are not in increasing id order, or created too late")
            if k.revoked_op is not None and not k.created_op < k.revoked_op < self._op_next:
                raise DecodeError(f"key revoked at op {k.revoked_op}, out of order")
            self._keys[k.key_id] = ApiKeyEntry(
                k.key_id, k.tenant_id, k.role, k.key_hash, k.expires_ms, k.created_op,
                k.revoked_op, k.label,
            )  # fmt: skip
            previous = k.key_id


class _StateLoader:
    """An event store's state decoded as it comes, a part at a time (``_state_parts``'s
    encoding): whole appends go to the blob as soon as their bytes are in, so no more than a
    part and an append are ever held. A stream's header is waited for until it is whole
    (it is short: ``HEADER_WAIT_BYTES`` held without one decoding is damage); the keys,
    last and small, are decoded once every byte is in."""

    HEADER_WAIT_BYTES = 1 << 16

    def __init__(self, store: EventStore) -> None:
        self._store = store
        self._rest = b""  # bytes fed and not yet decoded
        self._streams_left = -1  # until the state's head is decoded
        self._stream: StreamLoader | None = None  # the stream whose appends are coming
        self._previous: tuple[int, str] | None = None

    def feed(self, data: memoryview) -> None:
        # (what is left over is a few bytes of an array item or a header, if anything)
        self._decode(self._rest + data if self._rest else data, final=False)

    def finish(self) -> None:
        self._decode(self._rest, final=True)

    def _decode(self, data: bytes | memoryview, *, final: bool) -> None:
        store, at = self._store, 0
        while True:
            if self._stream is not None:
                at = self._stream.take(data, at)
                if not self._stream.done:
                    break  # the rest of its bytes are still to come
                self._previous = store._add_stream(self._stream.stream, self._previous)
                self._stream = None
            if self._streams_left == 0:
                if final:
                    reader = Reader(data)
                    reader.offset = at
                    store._decode_keys(reader)
                    reader.finish()
                    at = len(data)
                break
            decoded = self._next_header(data, at, final=final)
            if decoded is None:
                break
            at = decoded
        self._rest = bytes(data[at:])
        if final and (self._rest or self._streams_left or self._stream is not None):
            raise DecodeError("the snapshot ends inside a stream")

    def _next_header(self, data: bytes | memoryview, at: int, *, final: bool) -> int | None:
        """Decode the state's head, or the next stream's header and append count, from
        ``at``: where the bytes after it begin, or None until they are all in."""
        store = self._store
        reader = Reader(data)
        reader.offset = at
        try:
            if self._streams_left < 0:
                store._op_next = _OP_NEXT.decode(reader)
                limit = STREAMS_MAX + AUDIT_STREAMS_MAX
                self._streams_left = reader.length("stream count", 0, limit)
                return reader.offset
            stream = _decode_stream_header(store._events, reader, store.op_next)
        except DecodeError:
            if final or len(data) - at >= self.HEADER_WAIT_BYTES:
                raise
            return None  # the rest of it is still to come
        self._stream = StreamLoader(stream, store.op_next)
        self._streams_left -= 1
        return reader.offset


@attrs.frozen(field_transformer=wire_fields)
class StoredKey:
    """An API key in a snapshot (and the digest): the table entry, field by field."""

    key_id: Annotated[int, KEY_ID]
    tenant_id: Annotated[int, UInt(64)]
    role: Annotated[Role, ROLE]
    key_hash: Annotated[bytes, Blob(API_KEY_HASH_SIZE)]
    expires_ms: Annotated[int | None, Option(U64)]
    created_op: Annotated[int, U64]
    revoked_op: Annotated[int | None, Option(U64)]
    label: Annotated[str, API_KEY_LABEL]


_STORED_KEY = Record(StoredKey)
_GLOBAL = Placement(PlacementKind.GLOBAL, "")


def _action_of(message: StoreMessage) -> Action:
    match message:
        case CreateStream():
            return Action.CREATE_STREAM
        case AppendEvents():
            return Action.APPEND
        case ReadEvents() | ReadEventsAsOf():
            return Action.READ_AUDIT if message.stream == AUDIT_STREAM else Action.READ
        case CreateKey():
            return Action.CREATE_KEY
        case RevokeApiKey():
            return Action.REVOKE_KEY
        case ListApiKeys():
            return Action.LIST_KEYS
        case AuthFailure():
            raise AssertionError("an authentication failure is not authorized by role")
        case _:
            assert_never(message)


def _writes_reserved(message: StoreMessage) -> bool:
    name = message.name if isinstance(message, CreateStream) else None
    if isinstance(message, AppendEvents):
        name = message.stream
    return name is not None and name.startswith(RESERVED_PREFIX)


def _refused(refusal: Refusal | None) -> str:
    return f"authentication failed: {(refusal or Refusal.UNKNOWN_KEY).value}"


def _stream_not_found() -> StoreError:
    return store_error(ErrorCode.STREAM_NOT_FOUND, "no such stream in this tenant")


def _read(
    stream: Stream, position: int, length: int, message: ReadEvents | ReadEventsAsOf
) -> ReadEventsReply:
    """Events from ``message.from_offset`` below ``length``: at most ``max_events``, and no
    more than ``max_bytes`` of them unless the first alone is larger."""
    offset = message.from_offset
    events = stream.events(offset, length, message.max_events, message.max_bytes)
    return ReadEventsReply(offset, position, tuple(events))


def _encode_stream_header(stream: Stream, out: bytearray) -> None:
    _TENANT.encode(stream.tenant_id, out)
    STREAM_NAME.encode(stream.name, out)
    _DATA_CLASS.encode(stream.data_class, out)
    _PLACEMENT.encode(stream.placement, out)
    _OP.encode(stream.created_op, out)


def _decode_stream(blob: BlobFile, reader: Reader, op_next: int) -> Stream:
    stream = _decode_stream_header(blob, reader, op_next)
    loader = StreamLoader(stream, op_next)
    reader.offset = loader.take(reader.data, reader.offset)
    if not loader.done:
        raise DecodeError("the snapshot ends inside a stream")
    return stream


def _decode_stream_header(blob: BlobFile, reader: Reader, op_next: int) -> Stream:
    tenant_id = _TENANT.decode(reader)
    name = STREAM_NAME.decode(reader)
    data_class = _DATA_CLASS.decode(reader)
    placement = _PLACEMENT.decode(reader)
    created_op = _OP.decode(reader)
    if created_op >= op_next:
        raise DecodeError(f"stream created at op {created_op}, not before op_next {op_next}")
    return Stream(blob, tenant_id, name, data_class, placement, created_op)
