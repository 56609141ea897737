"""Encoding replica messages: the wire protocol's frames, with commands from the replica range.

A replica message travels exactly like a client message: one checksummed frame whose
command says which message it is (``craton.core.wire``). ``decode_message`` returns a
replica message or raises ``DecodeError``; a client message arriving on a replica path is
refused the same way.
"""

from __future__ import annotations

from typing import Any

from craton.core.wire import codec as wire_codec
from craton.core.wire.errors import DecodeError
from craton.core.wire.frame import COMMAND_REPLICA_RANGE, parse_frame
from craton.core.wire.replica import ReplicaMessage
from craton.core.wire.schema import Record

REPLICA_REQUEST_ID = 0  # replica messages are not requests: their request id is always 0


def encode_message(message: ReplicaMessage) -> bytes:
    return wire_codec.encode(message, REPLICA_REQUEST_ID)


def decode_message(payload: bytes) -> ReplicaMessage:
    frame = parse_frame(payload)
    if frame.command not in COMMAND_REPLICA_RANGE:
        raise DecodeError(f"command 0x{frame.command:04x} is not a replica message")
    message = wire_codec.decode_frame(frame)
    assert isinstance(message, ReplicaMessage)
    return message


def encode_body(schema: Record[Any], value: object) -> bytes:
    """Encode a record (e.g. a prepare body) without a frame: the log checksums it."""
    out = bytearray()
    schema.encode(value, out)
    return bytes(out)
