"""The exceptions of Craton's Python client: one class per wire error code, in families.

Every error a node sends (``ErrorReply.code``, docs/PROTOCOL.md) becomes an instance of
``error_for(code)``: its family says what a program can do about it —

- ``RequestRejected``: the request itself is wrong (``INVALID_REQUEST``, ``TOO_LARGE``,
  ``UNSUPPORTED_VERSION``); sending it again cannot help.
- ``AccessDenied``: the credentials (``AUTHENTICATION_FAILED``, ``PERMISSION_DENIED``,
  ``TENANT_NOT_FOUND``).
- ``StreamError``: the stream's state (``STREAM_NOT_FOUND``, ``STREAM_ALREADY_EXISTS``,
  ``UNEXPECTED_OFFSET``); nothing was written.
- ``SessionExpired`` (``SESSION_EXPIRED``): the client's session was evicted while a
  write was outstanding; an earlier attempt of it may have been applied, so the client does
  not retry it (a retry could apply it twice): the program decides.
- ``RetryableError``: the node cannot serve it now (``RATE_LIMITED``, ``NOT_PRIMARY``,
  ``UNAVAILABLE``, ``INTERNAL``). The client retries these itself, with the same request
  id, until its retry deadline; it raises one only when the deadline has passed.

Misuse, caught before anything is sent: ``InvalidArgument`` (also a ``ValueError``) for an
argument the protocol does not allow — an address that is not ``host:port``, an empty or
oversized token, a stream or region name outside its pattern, an event or an append too
large, a count or offset out of range, a timeout that is not positive. Nothing was sent;
the call must change. (An argument of the wrong Python type is a ``TypeError``.)

Failures that are not a node's answer: ``ConnectionFailed`` (no connection or handshake
could be made, or it kept breaking, until the deadline) and ``RequestTimeout`` (no answer
in time; a write may or may not have been applied — retrying it with the same client is
safe). ``ProtocolError``: the node sent bytes this client cannot decode.
"""

from __future__ import annotations

from typing import assert_never

from craton.core.wire.errors import ErrorCode


class CratonError(Exception):
    """Every error the client raises."""


class InvalidArgument(CratonError, ValueError):
    """An argument breaks a rule of the protocol or the client; nothing was sent."""


class ConnectionFailed(CratonError):
    """No working connection to the node could be made before the deadline."""


class RequestTimeout(CratonError, TimeoutError):
    """No answer before the deadline; a write may or may not have been applied."""


class ProtocolError(CratonError):
    """The node sent something this client cannot decode."""


class ServerError(CratonError):
    """The node answered with an ``ErrorReply``."""

    code: ErrorCode = ErrorCode.INTERNAL
    retryable = False

    def __init__(self, message: str, primary_address: str | None = None) -> None:
        super().__init__(f"{self.code.name}: {message}" if message else self.code.name)
        self.message = message
        self.primary_address = primary_address


class RequestRejected(ServerError):
    """The request is malformed or exceeds a limit; it will never succeed as it is."""


class InvalidRequest(RequestRejected):
    code = ErrorCode.INVALID_REQUEST


class TooLarge(RequestRejected):
    code = ErrorCode.TOO_LARGE


class UnsupportedVersion(RequestRejected):
    code = ErrorCode.UNSUPPORTED_VERSION


class AccessDenied(ServerError):
    """The credentials do not allow this."""


class AuthenticationFailed(AccessDenied):
    code = ErrorCode.AUTHENTICATION_FAILED


class PermissionDenied(AccessDenied):
    code = ErrorCode.PERMISSION_DENIED


class TenantNotFound(AccessDenied):
    code = ErrorCode.TENANT_NOT_FOUND


class StreamError(ServerError):
    """The stream's state does not allow the request; nothing was written."""


class StreamNotFound(StreamError):
    code = ErrorCode.STREAM_NOT_FOUND


class StreamAlreadyExists(StreamError):
    code = ErrorCode.STREAM_ALREADY_EXISTS


class UnexpectedOffset(StreamError):
    code = ErrorCode.UNEXPECTED_OFFSET


class SessionExpired(ServerError):
    """The client's session was evicted from the node's session table while this write was
    outstanding: this attempt was not applied, an earlier one may have been. Not retried."""

    code = ErrorCode.SESSION_EXPIRED


class RetryableError(ServerError):
    """The node could not serve the request now; the same request may succeed later."""

    retryable = True


class RateLimited(RetryableError):
    code = ErrorCode.RATE_LIMITED


class NotPrimary(RetryableError):
    code = ErrorCode.NOT_PRIMARY


class Unavailable(RetryableError):
    code = ErrorCode.UNAVAILABLE


class InternalError(RetryableError):
    code = ErrorCode.INTERNAL


def error_class(code: ErrorCode) -> type[ServerError]:
    """The exception class of an error code."""
    match code:
        case ErrorCode.INVALID_REQUEST:
            return InvalidRequest
        case ErrorCode.AUTHENTICATION_FAILED:
            return AuthenticationFailed
        case ErrorCode.PERMISSION_DENIED:
            return PermissionDenied
        case ErrorCode.TENANT_NOT_FOUND:
            return TenantNotFound
        case ErrorCode.STREAM_NOT_FOUND:
            return StreamNotFound
        case ErrorCode.UNEXPECTED_OFFSET:
            return UnexpectedOffset
        case ErrorCode.TOO_LARGE:
            return TooLarge
        case ErrorCode.RATE_LIMITED:
            return RateLimited
        case ErrorCode.NOT_PRIMARY:
            return NotPrimary
        case ErrorCode.UNAVAILABLE:
            return Unavailable
        case ErrorCode.INTERNAL:
            return InternalError
        case ErrorCode.UNSUPPORTED_VERSION:
            return UnsupportedVersion
        case ErrorCode.STREAM_ALREADY_EXISTS:
            return StreamAlreadyExists
        case ErrorCode.SESSION_EXPIRED:
            return SessionExpired
        case _:
            assert_never(code)


def error_for(code: ErrorCode, message: str, primary_address: str | None = None) -> ServerError:
    return error_class(code)(message, primary_address)
