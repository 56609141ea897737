"""Craton's Python client: ``Client`` (blocking) and ``AsyncClient`` (asyncio).

    from craton.client import Client

    with Client("127.0.0.1:5432") as client:
        client.create_stream("orders")
        appended = client.append("orders", [b"order 1 placed"])
        events = client.read("orders", 0).events
        then = client.read_as_of("orders", appended.log_position)

Both speak the binary protocol of docs/PROTOCOL.md, retry with the same request id (so a
retried write is applied once), follow "not primary" redirects, bound every wait, and raise
only the exceptions of ``craton.client.errors`` (``InvalidArgument`` for a call the protocol
does not allow, before anything is sent).
"""

from craton.client.aio import AppendResult, AsyncClient, ReadResult, ServerInfo
from craton.client.blocking import Client
from craton.client.errors import (
    AccessDenied,
    AuthenticationFailed,
    ConnectionFailed,
    CratonError,
    InternalError,
    InvalidArgument,
    InvalidRequest,
    NotPrimary,
    PermissionDenied,
    ProtocolError,
    RateLimited,
    RequestRejected,
    RequestTimeout,
    RetryableError,
    ServerError,
    SessionExpired,
    StreamAlreadyExists,
    StreamError,
    StreamNotFound,
    TenantNotFound,
    TooLarge,
    Unavailable,
    UnexpectedOffset,
    UnsupportedVersion,
)
from craton.core.auth import Role
from craton.core.wire.messages import DataClass

__all__ = [
    "AccessDenied",
    "AppendResult",
    "AsyncClient",
    "AuthenticationFailed",
    "Client",
    "ConnectionFailed",
    "CratonError",
    "DataClass",
    "InternalError",
    "InvalidArgument",
    "InvalidRequest",
    "NotPrimary",
    "PermissionDenied",
    "ProtocolError",
    "RateLimited",
    "ReadResult",
    "RequestRejected",
    "RequestTimeout",
    "RetryableError",
    "Role",
    "ServerError",
    "ServerInfo",
    "SessionExpired",
    "StreamAlreadyExists",
    "StreamError",
    "StreamNotFound",
    "TenantNotFound",
    "TooLarge",
    "Unavailable",
    "UnexpectedOffset",
    "UnsupportedVersion",
]
