"""The error vocabulary of Craton's wire protocol.

``ErrorCode`` is the table of typed errors a node sends back in an ``ErrorReply`` (documented
in docs/PROTOCOL.md, which a test keeps in step with this enum). ``DecodeError`` is the one
exception that decoding raises: whatever bytes arrive, the decoder returns a valid frame or
message or raises ``DecodeError`` carrying a reason and the code to answer with. The other
exceptions here are raised on misuse by local callers, never because of received bytes.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.IntEnum):
    """Why a request failed; sent as a u16 in ``ErrorReply.code``. Values are never reused."""

    INVALID_REQUEST = 1  # malformed frame or body, or a request not valid in this state
    AUTHENTICATION_FAILED = 2  # missing, malformed, expired or unknown credentials
    PERMISSION_DENIED = 3  # authenticated, but the role does not allow the operation
    TENANT_NOT_FOUND = 4  # the credentials name a tenant this cluster does not have
    STREAM_NOT_FOUND = 5  # no such stream (or it belongs to another tenant)
    UNEXPECTED_OFFSET = 6  # an append's expected offset is not the stream's length
    TOO_LARGE = 7  # a frame, a message or one of its fields exceeds a protocol limit
    RATE_LIMITED = 8  # too many requests on this connection; retry later
    NOT_PRIMARY = 9  # this replica is not the primary; ErrorReply carries its address if known
    UNAVAILABLE = 10  # no quorum, view change in progress, or shutting down; retry later
    INTERNAL = 11  # a bug or an I/O failure on the node; the request may not have happened
    UNSUPPORTED_VERSION = 12  # the frame's protocol version is not one this node speaks
    STREAM_ALREADY_EXISTS = 13  # create stream with a name that is already taken
    SESSION_EXPIRED = 14  # the client's session was evicted; an earlier attempt may have applied


class DecodeError(Exception):
    """Received bytes are not a valid frame or message.

    ``reason`` says what is wrong, for logs and for the ``ErrorReply`` message; ``code`` is
    the error code a node answers with (``INVALID_REQUEST``, ``TOO_LARGE`` or
    ``UNSUPPORTED_VERSION``).
    """

    def __init__(self, reason: str, code: ErrorCode = ErrorCode.INVALID_REQUEST) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code

    def __repr__(self) -> str:
        return f"DecodeError({self.reason!r}, {self.code.name})"


class MessageTooLarge(ValueError):
    """A message whose encoding would not fit in one frame (raised by ``encode``)."""


class DecoderNotDrained(RuntimeError):
    """``FrameDecoder.feed`` was called while a complete frame was still waiting in it.

    Draining with ``next_frame`` before feeding more is what keeps the decoder's buffer
    bounded by one frame plus one chunk.
    """
