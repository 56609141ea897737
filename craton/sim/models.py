"""Reference models: what each state machine should answer, written apart from it.

The linearizability checker replays the committed log through a fresh copy of the very
state machine the replicas run, so a mistake in the machine's own semantics agrees with
itself and passes. A model is a second, independent statement of those semantics — plain
dicts and lists, no code of the machine's — run over the same committed log: every reply the
machine gives (in the replay, and so to every client) must be the one the model predicts.

Only the wire encodings are shared (decoding a request body, a reply): they are the
protocol, tested on their own; what an operation *does* is written here again. Outcomes are
judged, not wording (error messages).

- ``KvModel`` (``craton.core.kv_machine``): registers; a put sets one, a get returns the
  last value put, or none. Every reply is judged.
- ``EventStoreModel`` (``craton.core.event_store``): streams of events per tenant. It judges
  the data: creating a stream (or finding it taken), appends (the offset they land at, the
  expected-offset check, the stream's length when it fails), reads and reads as of a log
  position (exactly which events, from where, as of which position; a position ahead of the
  read's own op refused), streams not found, and the reserved ``craton:`` names refused for
  writes. It does not judge authorization (roles, API keys, their expiry and revocation:
  ``tests/core/test_auth.py`` holds the auth rules to a model of their own), key-table
  operations, or the audit streams' contents: where the machine refuses a request for
  authorization, the model takes that decision and judges the rest.
"""

from __future__ import annotations

from typing import Protocol

from craton.core import event_store, kv_machine
from craton.core.auth import Role
from craton.core.event_store import StoreError
from craton.core.wire.errors import DecodeError, ErrorCode
from craton.core.wire.messages import (
    AppendEvents,
    AppendEventsReply,
    CreateStream,
    CreateStreamReply,
    ReadEvents,
    ReadEventsAsOf,
    ReadEventsReply,
)

RESERVED = "craton:"  # stream names only the store itself writes (its audit streams)
AUTHORIZATION_ERRORS = (ErrorCode.AUTHENTICATION_FAILED, ErrorCode.PERMISSION_DENIED)


class Model(Protocol):
    judged: int  # replies the model judged

    def check(self, op: int, body: bytes, reply: bytes) -> str | None:
        """Apply ``body`` (committed at ``op``) to the model; None when the machine's
        ``reply`` is the one the model predicts, else what differs, in words."""
        ...


class KvModel:
    """Registers: a dict from key to the last value put."""

    def __init__(self) -> None:
        self._registers: dict[bytes, bytes] = {}
        self.judged = 0

    def check(self, op: int, body: bytes, reply: bytes) -> str | None:
        del op
        decoded = kv_machine.decode_reply(reply)
        seen = ("error", decoded.error) if decoded.error is not None else ("value", decoded.value)
        try:
            request = kv_machine.decode_request(body)
        except DecodeError as error:
            return _compare(self, ("error", error.code), seen)
        if isinstance(request, kv_machine.Put):
            self._registers[request.key] = request.value
            return _compare(self, ("value", None), seen)  # a put answers ok, with no value
        return _compare(self, ("value", self._registers.get(request.key)), seen)


class _Stream:
    def __init__(self, created_op: int) -> None:
        self.created_op = created_op
        self.events: list[bytes] = []
        self.appended: list[tuple[int, int]] = []  # (op, length after it), in op order

    def length_at(self, position: int) -> int:
        length = 0
        for op, after in self.appended:
            if op > position:
                break
            length = after
        return length


class EventStoreModel:
    """Streams: a dict from (tenant, name) to the events appended, with their ops."""

    def __init__(self) -> None:
        self._streams: dict[tuple[int, str], _Stream] = {}
        self.judged = 0

    def check(self, op: int, body: bytes, reply: bytes) -> str | None:
        seen = event_store.decode_reply(reply)
        try:
            request = event_store.decode_request(body)
        except DecodeError as error:
            return _compare(self, _error(error.code), _shape(seen))
        message = request.message
        if not isinstance(message, CreateStream | AppendEvents | ReadEvents | ReadEventsAsOf):
            return None  # key-table operations and audit records: not modelled
        owner = request.role is Role.OWNER and not request.key_id
        if not owner and isinstance(seen, StoreError) and seen.code in AUTHORIZATION_ERRORS:
            return None  # who may do what is the auth rules' to judge, not this model's
        key = (request.tenant_id, _name(message))
        if isinstance(message, ReadEvents | ReadEventsAsOf) and key[1].startswith(RESERVED):
            return None  # an audit stream: written by the store itself
        return _compare(self, self._predict(op, key, message), _shape(seen))

    def _predict(
        self,
        op: int,
        key: tuple[int, str],
        message: CreateStream | AppendEvents | ReadEvents | ReadEventsAsOf,
    ) -> tuple[object, ...]:
        stream = self._streams.get(key)
        match message:
            case CreateStream():
                if key[1].startswith(RESERVED):
                    return _error(ErrorCode.PERMISSION_DENIED)
                if stream is not None:
                    return _error(ErrorCode.STREAM_ALREADY_EXISTS)
                self._streams[key] = _Stream(op)
                return ("created", op)
            case AppendEvents():
                if key[1].startswith(RESERVED):
                    return _error(ErrorCode.PERMISSION_DENIED)
                if stream is None:
                    return _error(ErrorCode.STREAM_NOT_FOUND)
                length = len(stream.events)
                expected = message.expected_offset
                if expected is not None and expected != length:
                    return ("error", ErrorCode.UNEXPECTED_OFFSET, length)
                stream.events.extend(message.events)
                stream.appended.append((op, len(stream.events)))
                return ("appended", length, op)
            case ReadEvents():
                if stream is None:
                    return _error(ErrorCode.STREAM_NOT_FOUND)
                return _page(stream, message, len(stream.events), op)
            case ReadEventsAsOf():
                position = message.log_position
                if position > op:
                    return _error(ErrorCode.INVALID_REQUEST)
                if stream is None or stream.created_op > position:
                    return _error(ErrorCode.STREAM_NOT_FOUND)
                return _page(stream, message, stream.length_at(position), position)


def _page(
    stream: _Stream, message: ReadEvents | ReadEventsAsOf, length: int, position: int
) -> tuple[object, ...]:
    """At most ``max_events`` events from ``from_offset`` below ``length``, and no more
    than ``max_bytes`` of them, except that the first is always given."""
    taken: list[bytes] = []
    for event in stream.events[message.from_offset : length]:
        if len(taken) == message.max_events:
            break
        if taken and sum(map(len, taken)) + len(event) > message.max_bytes:
            break
        taken.append(event)
    return ("read", message.from_offset, position, tuple(taken))


def _shape(reply: object) -> tuple[object, ...]:
    """The machine's decoded reply in the model's form."""
    match reply:
        case StoreError():
            if reply.code == ErrorCode.UNEXPECTED_OFFSET:
                return ("error", reply.code, reply.stream_length)
            return _error(reply.code)
        case CreateStreamReply():
            return ("created", reply.log_position)
        case AppendEventsReply():
            return ("appended", reply.first_offset, reply.log_position)
        case ReadEventsReply():
            return ("read", reply.from_offset, reply.log_position, tuple(reply.events))
    return ("other", type(reply).__name__)


def _error(code: ErrorCode) -> tuple[object, ...]:
    return ("error", code)


def _name(message: CreateStream | AppendEvents | ReadEvents | ReadEventsAsOf) -> str:
    return message.name if isinstance(message, CreateStream) else message.stream


def _compare(model: KvModel | EventStoreModel, predicted: object, seen: object) -> str | None:
    model.judged += 1
    if predicted == seen:
        return None
    return f"answered {seen}, its model predicts {predicted}"
