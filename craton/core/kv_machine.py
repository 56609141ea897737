"""A key-value register store: the small state machine the simulator's workload drives.

Two operations: ``put(key, value)`` sets a register, ``get(key)`` returns its value or
``None`` when it was never set. It exists so that linearizability is easy to judge (a read
must see the last write the log order implies), and as the smallest example of a
``craton.core.state_machine.StateMachine``.

Encodings (integers little-endian, built from ``craton.core.wire.schema`` types, so they
are strict and canonical: one encoding per value, nothing accepted after the last field):

    request := u8 KvRequestKind | that kind's record (Put or Get)
    Put     := u32 length + 0..KEY_SIZE_MAX bytes key | u32 length + 0..VALUE_SIZE_MAX value
    Get     := u32 length + 0..KEY_SIZE_MAX bytes key
    reply   := KvReply: presence-prefixed value | presence-prefixed u16 ErrorCode | message

Rules: every size has a named limit below; a body that does not decode, or breaks a limit,
gets an error reply (``INVALID_REQUEST`` or ``TOO_LARGE``) and changes nothing; a put of a
new key when ``KEYS_MAX`` keys are held is refused with ``TOO_LARGE``. The digest and the
snapshot encode the registers sorted by key.

This module deliberately does not use ``from __future__ import annotations``: the wire
schema of the records is read from their annotations when each class is created.
"""

import enum
import hashlib
import struct
from typing import Annotated, assert_never

import attrs

from craton.core.state_machine import OP_MAX, SnapshotMachine, next_op
from craton.core.storage import DerivedStorage
from craton.core.wire.errors import DecodeError, ErrorCode
from craton.core.wire.schema import Blob, EnumType, Option, Reader, Record, Text, UInt, wire_fields

NAME = "craton.kv"
KEY_SIZE_MAX = 64  # bytes
VALUE_SIZE_MAX = 4096  # bytes
KEYS_MAX = 1_000_000  # registers held at once
ERROR_MESSAGE_SIZE_MAX = 256  # bytes of UTF-8 in an error reply's message
BODY_SIZE_MAX = 1 + 4 + KEY_SIZE_MAX + 4 + VALUE_SIZE_MAX  # bytes: the largest put
SHOWN_BYTES_MAX = 32  # bytes of a key or value that ``describe_*`` show before cutting

_U32 = struct.Struct("<I")


class KvRequestKind(enum.IntEnum):
    """The first byte of a request body: which operation follows."""

    PUT = 1
    GET = 2


@attrs.frozen(field_transformer=wire_fields)
class Put:
    """Set register ``key`` to ``value``; the reply is ok without a value."""

    key: Annotated[bytes, Blob(KEY_SIZE_MAX)]
    value: Annotated[bytes, Blob(VALUE_SIZE_MAX)]


@attrs.frozen(field_transformer=wire_fields)
class Get:
    """Read register ``key``; the reply carries its value, or none if it was never set."""

    key: Annotated[bytes, Blob(KEY_SIZE_MAX)]


@attrs.frozen(field_transformer=wire_fields)
class KvReply:
    """The outcome of one operation: ``error`` is None when it succeeded; ``value`` is the
    register read by a get (None when unset, and always None for a put or an error)."""

    value: Annotated[bytes | None, Option(Blob(VALUE_SIZE_MAX))]
    error: Annotated[ErrorCode | None, Option(EnumType(ErrorCode, 16))]
    message: Annotated[str, Text(0, ERROR_MESSAGE_SIZE_MAX)]

    def __attrs_post_init__(self) -> None:
        if self.error is not None and self.value is not None:
            raise ValueError("an error reply carries no value")
        if self.error is None and self.message:
            raise ValueError("only an error reply carries a message")

    @property
    def ok(self) -> bool:
        return self.error is None


KvRequest = Put | Get

_KIND = EnumType(KvRequestKind, 8)
_PUT = Record(Put)
_GET = Record(Get)
_REPLY = Record(KvReply)
_OP_NEXT = UInt(64, maximum=OP_MAX + 1)
_KEY = Blob(KEY_SIZE_MAX)
_VALUE = Blob(VALUE_SIZE_MAX)


# --- Encoding --------------------------------------------------------------------------------


def encode_put(key: bytes, value: bytes) -> bytes:
    """The body of ``put(key, value)``; ``ValueError`` if a limit is broken."""
    return encode_request(Put(key, value))


def encode_get(key: bytes) -> bytes:
    """The body of ``get(key)``; ``ValueError`` if the key is too long."""
    return encode_request(Get(key))


def encode_request(request: KvRequest) -> bytes:
    out = bytearray()
    match request:
        case Put():
            _KIND.encode(KvRequestKind.PUT, out)
            _PUT.encode(request, out)
        case Get():
            _KIND.encode(KvRequestKind.GET, out)
            _GET.encode(request, out)
        case _:
            assert_never(request)
    return bytes(out)


def decode_request(body: bytes) -> KvRequest:
    """The request in ``body``, exactly; ``DecodeError`` for anything else."""
    if len(body) > BODY_SIZE_MAX:
        raise DecodeError(
            f"body of {len(body)} bytes exceeds the limit {BODY_SIZE_MAX}", ErrorCode.TOO_LARGE
        )
    reader = Reader(body)
    request: KvRequest
    kind = _KIND.decode(reader)
    match kind:
        case KvRequestKind.PUT:
            request = _PUT.decode(reader)
        case KvRequestKind.GET:
            request = _GET.decode(reader)
        case _:
            assert_never(kind)
    reader.finish()
    return request


def encode_reply(reply: KvReply) -> bytes:
    out = bytearray()
    _REPLY.encode(reply, out)
    return bytes(out)


def decode_reply(body: bytes) -> KvReply:
    """The reply in ``body``, exactly; ``DecodeError`` for anything else."""
    reader = Reader(body)
    reply: KvReply = _REPLY.decode(reader)
    reader.finish()
    return reply


def error_reply(code: ErrorCode, reason: str) -> KvReply:
    """An error reply, its message cut to ``ERROR_MESSAGE_SIZE_MAX`` bytes of UTF-8."""
    message = reason.encode("utf-8")[:ERROR_MESSAGE_SIZE_MAX].decode("utf-8", errors="ignore")
    return KvReply(None, code, message)


def describe_body(body: bytes) -> str:
    """A request body in words, for checker reports and traces."""
    try:
        request = decode_request(body)
    except DecodeError as error:
        return f"malformed request ({error.reason})"
    match request:
        case Put():
            return f"put({_show(request.key)}, {_show(request.value)})"
        case Get():
            return f"get({_show(request.key)})"
        case _:
            assert_never(request)


def describe_reply(body: bytes) -> str:
    """A reply body in words, for checker reports and traces."""
    try:
        reply = decode_reply(body)
    except DecodeError as error:
        return f"malformed reply ({error.reason})"
    if reply.error is not None:
        return f"error {reply.error.name}: {reply.message}"
    return "ok" if reply.value is None else f"ok {_show(reply.value)}"


def _show(data: bytes) -> str:
    if len(data) <= SHOWN_BYTES_MAX:
        return repr(data)
    return f"{data[:SHOWN_BYTES_MAX]!r}... ({len(data)} bytes)"


_OK = encode_reply(KvReply(None, None, ""))


# --- The machine -----------------------------------------------------------------------------


class KvMachine(SnapshotMachine):
    """Registers from keys to values, changed only by committed puts."""

    name = NAME

    def __init__(self, storage: DerivedStorage | None = None) -> None:
        super().__init__(storage)  # its values are few and small: memory holds them
        self._values: dict[bytes, bytes] = {}
        self._op_next = 0  # the smallest op ``apply`` accepts

    def apply(self, op: int, body: bytes) -> bytes:
        self._op_next = next_op(self._op_next, op)
        self._changed()
        try:
            request = decode_request(body)
        except DecodeError as error:
            return encode_reply(error_reply(error.code, error.reason))
        match request:
            case Put():
                if request.key not in self._values and len(self._values) >= KEYS_MAX:
                    reason = f"the store holds {KEYS_MAX} keys, its limit"
                    return encode_reply(error_reply(ErrorCode.TOO_LARGE, reason))
                self._values[request.key] = request.value
                return _OK
            case Get():
                return encode_reply(KvReply(self._values.get(request.key), None, ""))
            case _:
                assert_never(request)

    def get(self, key: bytes) -> bytes | None:
        """The current value of ``key`` (a local query, not an operation of the log)."""
        return self._values.get(key)

    @property
    def op_next(self) -> int:
        """The smallest op ``apply`` accepts: one past the last applied op (0 at first)."""
        return self._op_next

    def _compute_digest(self) -> bytes:
        return _digest_of(self._encode_state())

    def invariants(self) -> None:
        assert len(self._values) <= KEYS_MAX
        assert 0 <= self._op_next <= OP_MAX + 1
        for key, value in self._values.items():
            assert len(key) <= KEY_SIZE_MAX and len(value) <= VALUE_SIZE_MAX

    def _encode_state(self) -> bytes:
        """u64 op_next | u32 count | each register sorted by key: key blob, value blob."""
        out = bytearray()
        _OP_NEXT.encode(self._op_next, out)
        out += _U32.pack(len(self._values))
        for key in sorted(self._values):
            _KEY.encode(key, out)
            _VALUE.encode(self._values[key], out)
        return bytes(out)

    def _decode_state(self, state: memoryview) -> None:
        reader = Reader(state)
        self._op_next = _OP_NEXT.decode(reader)
        count = reader.length("key count", 0, KEYS_MAX)
        previous: bytes | None = None
        for _ in range(count):
            key = _KEY.decode(reader)
            if previous is not None and key <= previous:
                raise DecodeError("keys are not in strictly increasing order")
            self._values[key] = _VALUE.decode(reader)
            previous = key
        reader.finish()


def _digest_of(state: bytes) -> bytes:
    return hashlib.sha256(NAME.encode("utf-8") + b"\x00" + state).digest()
