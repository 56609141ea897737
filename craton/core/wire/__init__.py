"""Craton's wire protocol, pure: frames, messages and the strict codec (docs/PROTOCOL.md).

The simulator and the production server both speak through this package, so it does no I/O:
bytes in, frames and messages out, and back. See ``frame`` for the envelope and the
incremental decoder, ``messages`` for the message classes and limits, ``schema`` for the
machinery that encodes them, ``codec`` for the entry points and ``errors`` for the errors.
"""

from craton.core.wire.codec import command_of, decode_frame, encode, error_reply, message_class
from craton.core.wire.errors import DecodeError, DecoderNotDrained, ErrorCode, MessageTooLarge
from craton.core.wire.frame import (
    BODY_SIZE_MAX,
    FLAG_RETRY,
    FRAME_SIZE_MAX,
    HEADER_SIZE,
    PROTOCOL_VERSION,
    Command,
    Frame,
    FrameDecoder,
    parse_frame,
)
from craton.core.wire.messages import (
    AppendEvents,
    AppendEventsReply,
    CreateStream,
    CreateStreamReply,
    DataClass,
    ErrorReply,
    Handshake,
    HandshakeReply,
    Message,
    Placement,
    PlacementKind,
    ReadEvents,
    ReadEventsAsOf,
    ReadEventsReply,
    Sync,
    SyncReply,
)

__all__ = [
    "BODY_SIZE_MAX",
    "FLAG_RETRY",
    "FRAME_SIZE_MAX",
    "HEADER_SIZE",
    "PROTOCOL_VERSION",
    "AppendEvents",
    "AppendEventsReply",
    "Command",
    "CreateStream",
    "CreateStreamReply",
    "DataClass",
    "DecodeError",
    "DecoderNotDrained",
    "ErrorCode",
    "ErrorReply",
    "Frame",
    "FrameDecoder",
    "Handshake",
    "HandshakeReply",
    "Message",
    "MessageTooLarge",
    "Placement",
    "PlacementKind",
    "ReadEvents",
    "ReadEventsAsOf",
    "ReadEventsReply",
    "Sync",
    "SyncReply",
    "command_of",
    "decode_frame",
    "encode",
    "error_reply",
    "message_class",
    "parse_frame",
]
