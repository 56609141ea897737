"""The codec: messages to frames and frames to messages.

``encode(message, request_id)`` gives the bytes of one frame; ``decode_frame(frame)`` turns a
frame from ``FrameDecoder`` (or ``parse_frame``) into its message. The command of a frame
selects the message class through one exhaustive ``match``; each class's ``Record`` schema
does the rest. Decoding returns a valid message or raises ``DecodeError``, and it accepts
only the canonical encoding: ``encode(decode_frame(f), f.request_id)`` is the frame's bytes.

A ``DecodeError`` from ``decode_frame`` concerns one frame only: the stream is still in step,
so a node answers that request with an ``ErrorReply`` and carries on. A ``DecodeError`` from
``FrameDecoder`` means the stream itself cannot be trusted: answer (request id 0), then
close. ``error_reply(error)`` is that answer.
"""

from __future__ import annotations

from typing import Any, assert_never

from craton.core.wire import replica as vsr
from craton.core.wire.errors import DecodeError
from craton.core.wire.frame import Command, Frame, encode_frame
from craton.core.wire.messages import (
    ERROR_MESSAGE_SIZE_MAX,
    AppendEvents,
    AppendEventsReply,
    CreateApiKey,
    CreateApiKeyReply,
    CreateStream,
    CreateStreamReply,
    ErrorReply,
    Handshake,
    HandshakeReply,
    ListApiKeys,
    ListApiKeysReply,
    Message,
    ReadEvents,
    ReadEventsAsOf,
    ReadEventsReply,
    RevokeApiKey,
    RevokeApiKeyReply,
    Sync,
    SyncReply,
)
from craton.core.wire.schema import Reader, Record

AnyMessage = Message | vsr.ReplicaMessage


def message_class(command: Command) -> type[AnyMessage]:
    """The message class a command tags."""
    match command:
        case Command.HANDSHAKE:
            return Handshake
        case Command.HANDSHAKE_REPLY:
            return HandshakeReply
        case Command.CREATE_STREAM:
            return CreateStream
        case Command.CREATE_STREAM_REPLY:
            return CreateStreamReply
        case Command.APPEND_EVENTS:
            return AppendEvents
        case Command.APPEND_EVENTS_REPLY:
            return AppendEventsReply
        case Command.READ_EVENTS:
            return ReadEvents
        case Command.READ_EVENTS_REPLY:
            return ReadEventsReply
        case Command.READ_EVENTS_AS_OF:
            return ReadEventsAsOf
        case Command.SYNC:
            return Sync
        case Command.SYNC_REPLY:
            return SyncReply
        case Command.ERROR_REPLY:
            return ErrorReply
        case Command.CREATE_API_KEY:
            return CreateApiKey
        case Command.CREATE_API_KEY_REPLY:
            return CreateApiKeyReply
        case Command.REVOKE_API_KEY:
            return RevokeApiKey
        case Command.REVOKE_API_KEY_REPLY:
            return RevokeApiKeyReply
        case Command.LIST_API_KEYS:
            return ListApiKeys
        case Command.LIST_API_KEYS_REPLY:
            return ListApiKeysReply
        case Command.PREPARE:
            return vsr.Prepare
        case Command.PREPARE_OK:
            return vsr.PrepareOk
        case Command.COMMIT:
            return vsr.Commit
        case Command.START_VIEW_CHANGE:
            return vsr.StartViewChange
        case Command.DO_VIEW_CHANGE:
            return vsr.DoViewChange
        case Command.START_VIEW:
            return vsr.StartView
        case Command.REQUEST_START_VIEW:
            return vsr.RequestStartView
        case Command.GET_STATE:
            return vsr.GetState
        case Command.NEW_STATE:
            return vsr.NewState
        case Command.RECOVERY:
            return vsr.Recovery
        case Command.RECOVERY_RESPONSE:
            return vsr.RecoveryResponse
        case Command.REQUEST_PREPARE:
            return vsr.RequestPrepare
        case Command.PREPARE_REPLY:
            return vsr.PrepareReply
        case Command.NEW_CHECKPOINT:
            return vsr.NewCheckpoint
        case _:
            assert_never(command)


_SCHEMAS: dict[Command, Record[Any]] = {
    command: Record(message_class(command)) for command in Command
}
_COMMANDS: dict[type, Command] = {message_class(command): command for command in Command}
assert len(_COMMANDS) == len(Command), "each message class has exactly one command"


def command_of(message: AnyMessage) -> Command:
    """The command that tags ``message`` on the wire."""
    command = _COMMANDS.get(type(message))
    if command is None:
        raise TypeError(f"{type(message).__name__} is not a wire message")
    return command


def encode(message: AnyMessage, request_id: int, flags: int = 0) -> bytes:
    """One frame carrying ``message``; raises ``MessageTooLarge`` if it cannot fit a frame."""
    command = command_of(message)
    body = bytearray()
    _SCHEMAS[command].encode(message, body)
    return encode_frame(command, request_id, bytes(body), flags)


def error_reply(error: DecodeError) -> ErrorReply:
    """The ``ErrorReply`` that answers ``error``: its code, and its reason cut to fit."""
    message = error.reason.encode("utf-8")[:ERROR_MESSAGE_SIZE_MAX]
    return ErrorReply(error.code, message.decode("utf-8", errors="ignore"), None)


def decode_frame(frame: Frame) -> AnyMessage:
    """The message in ``frame``, or ``DecodeError`` if its body is not one, exactly."""
    reader = Reader(frame.body)
    message: AnyMessage = _SCHEMAS[frame.command].decode(reader)
    reader.finish()
    return message
