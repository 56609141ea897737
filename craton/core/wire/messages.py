"""The messages of Craton's client protocol: frozen attrs classes with their wire schema.

Every field is annotated ``Annotated[python_type, <WireType>]`` (``craton.core.wire.schema``):
the annotation is at once the constructor's validation and the wire encoding, so a message
that can be built can be sent, and a message that was received obeys the same rules.
Fields are encoded in the order they are declared; docs/PROTOCOL.md lists them, and a test
keeps that document in step with these classes.

This module deliberately does not use ``from __future__ import annotations``: the schema is
read from the annotations when each class is created.

Rules: every size and count has a named limit below (units in the name); every enum is
closed; rules that tie two fields together are checked in ``__attrs_post_init__`` and raise
``ValueError``. Replica-to-replica (VSR) messages will be declared the same way, with
``Command`` values from ``COMMAND_REPLICA_RANGE``.
"""

import enum
from typing import Annotated

import attrs

from craton.core.auth import Role
from craton.core.wire.errors import ErrorCode
from craton.core.wire.schema import Blob, EnumType, Option, Record, Seq, Text, UInt, wire_fields

# --- Limits ----------------------------------------------------------------------------------

STREAM_NAME_SIZE_MAX = 128  # bytes
REGION_NAME_SIZE_MAX = 64  # bytes
AUTH_TOKEN_SIZE_MAX = 8 * 1024  # bytes; a JWT or an API key
SERVER_VERSION_SIZE_MAX = 64  # bytes
ADDRESS_SIZE_MAX = 255  # bytes; "host:port"
ERROR_MESSAGE_SIZE_MAX = 1024  # bytes of UTF-8
EVENT_SIZE_MAX = 1024 * 1024  # bytes in one event
APPEND_EVENTS_MAX = 8192  # events in one append
READ_EVENTS_MAX = 8192  # events asked for, or returned, by one read
READ_SIZE_MAX = 8 * 1024 * 1024  # event bytes one read may ask for; the reply fits a frame
CLUSTER_SIZE_MAX = 16  # replicas
API_KEY_LABEL_SIZE_MAX = 64  # bytes
API_KEY_SIZE_MAX = 256  # bytes of a key's text
API_KEYS_LISTED_MAX = 4096  # keys in one ListApiKeysReply

STREAM_NAME_PATTERN = "[A-Za-z0-9][A-Za-z0-9._:-]*"
REGION_NAME_PATTERN = "[a-z0-9][a-z0-9-]*"
PRINTABLE_ASCII_PATTERN = "[!-~]+"  # 0x21..0x7E: no spaces, no control characters
LABEL_PATTERN = "[ -~]*"  # printable ASCII and spaces

# --- Enums -----------------------------------------------------------------------------------


class DataClass(enum.IntEnum):
    """How sensitive a stream's events are; fixed when the stream is created."""

    PUBLIC = 1
    INTERNAL = 2
    CONFIDENTIAL = 3
    PII = 4  # personally identifiable information
    PHI = 5  # protected health information


class PlacementKind(enum.IntEnum):
    """Where a stream's data may live."""

    GLOBAL = 1  # any replica of the cluster, wherever it is
    REGION = 2  # only replicas in the named region


# --- Field types -----------------------------------------------------------------------------

U16 = UInt(16)
U64 = UInt(64)
PROTOCOL_VERSION_FIELD = UInt(16, minimum=1)
STREAM_NAME = Text(1, STREAM_NAME_SIZE_MAX, STREAM_NAME_PATTERN)
EVENT = Blob(EVENT_SIZE_MAX)
ROLE = EnumType(Role, 8)
KEY_ID = UInt(64, minimum=1)
API_KEY_LABEL = Text(0, API_KEY_LABEL_SIZE_MAX, LABEL_PATTERN)

# --- Records ---------------------------------------------------------------------------------


@attrs.frozen(field_transformer=wire_fields)
class Placement:
    """Where a stream lives: ``region`` is empty for GLOBAL and required for REGION."""

    kind: Annotated[PlacementKind, EnumType(PlacementKind, 8)]
    region: Annotated[str, Text(0, REGION_NAME_SIZE_MAX, f"({REGION_NAME_PATTERN})?")]

    def __attrs_post_init__(self) -> None:
        if (self.kind == PlacementKind.REGION) != bool(self.region):
            raise ValueError("region must be given for REGION placement and only for it")


# --- Messages --------------------------------------------------------------------------------


@attrs.frozen(field_transformer=wire_fields)
class Handshake:
    """The first request on every connection: who the client is and what it speaks.

    ``client_id`` is chosen at random by the client, once per client session; with a frame's
    request id it names a request, so that a retried request is applied at most once.
    """

    protocol_version: Annotated[int, PROTOCOL_VERSION_FIELD]
    client_id: Annotated[int, UInt(128, minimum=1)]
    auth_token: Annotated[str | None, Option(Text(1, AUTH_TOKEN_SIZE_MAX, PRINTABLE_ASCII_PATTERN))]


@attrs.frozen(field_transformer=wire_fields)
class HandshakeReply:
    """The node accepts the connection: its versions and its place in the cluster."""

    protocol_version: Annotated[int, PROTOCOL_VERSION_FIELD]
    server_version: Annotated[str, Text(1, SERVER_VERSION_SIZE_MAX, PRINTABLE_ASCII_PATTERN)]
    replica_id: Annotated[int, UInt(8, maximum=CLUSTER_SIZE_MAX - 1)]
    cluster_size: Annotated[int, UInt(8, minimum=1, maximum=CLUSTER_SIZE_MAX)]
    view: Annotated[int, U64]

    def __attrs_post_init__(self) -> None:
        if self.replica_id >= self.cluster_size:
            raise ValueError(f"replica_id {self.replica_id} >= cluster_size {self.cluster_size}")


@attrs.frozen(field_transformer=wire_fields)
class CreateStream:
    """Create a stream of the caller's tenant."""

    name: Annotated[str, STREAM_NAME]
    data_class: Annotated[DataClass, EnumType(DataClass, 8)]
    placement: Annotated[Placement, Record(Placement)]


@attrs.frozen(field_transformer=wire_fields)
class CreateStreamReply:
    """The stream exists from ``log_position`` on."""

    log_position: Annotated[int, U64]


@attrs.frozen(field_transformer=wire_fields)
class AppendEvents:
    """Append events to a stream, all or none.

    With ``expected_offset`` set, the append happens only if the stream holds exactly that
    many events (optimistic concurrency); otherwise the reply is UNEXPECTED_OFFSET.
    """

    stream: Annotated[str, STREAM_NAME]
    events: Annotated[tuple[bytes, ...], Seq(EVENT, 1, APPEND_EVENTS_MAX)]
    expected_offset: Annotated[int | None, Option(U64)]


@attrs.frozen(field_transformer=wire_fields)
class AppendEventsReply:
    """The events are durable: the first is at ``first_offset`` in its stream, the rest
    follow it, and the append is at ``log_position`` in the log."""

    first_offset: Annotated[int, U64]
    log_position: Annotated[int, U64]


@attrs.frozen(field_transformer=wire_fields)
class ReadEvents:
    """Read up to ``max_events`` events and ``max_bytes`` event bytes from ``from_offset``."""

    stream: Annotated[str, STREAM_NAME]
    from_offset: Annotated[int, U64]
    max_events: Annotated[int, UInt(32, minimum=1, maximum=READ_EVENTS_MAX)]
    max_bytes: Annotated[int, UInt(32, minimum=1, maximum=READ_SIZE_MAX)]


@attrs.frozen(field_transformer=wire_fields)
class ReadEventsAsOf:
    """Like ReadEvents, but see the stream as it was when the log ended at ``log_position``."""

    stream: Annotated[str, STREAM_NAME]
    log_position: Annotated[int, U64]
    from_offset: Annotated[int, U64]
    max_events: Annotated[int, UInt(32, minimum=1, maximum=READ_EVENTS_MAX)]
    max_bytes: Annotated[int, UInt(32, minimum=1, maximum=READ_SIZE_MAX)]


@attrs.frozen(field_transformer=wire_fields)
class ReadEventsReply:
    """Events from ``from_offset`` on (possibly none), read as of ``log_position``."""

    from_offset: Annotated[int, U64]
    log_position: Annotated[int, U64]
    events: Annotated[tuple[bytes, ...], Seq(EVENT, 0, READ_EVENTS_MAX)]


@attrs.frozen(field_transformer=wire_fields)
class Sync:
    """A barrier: answered once every request sent before it on this connection is durable."""


@attrs.frozen(field_transformer=wire_fields)
class SyncReply:
    """The log is committed up to ``log_position`` (at least) when this reply is sent."""

    log_position: Annotated[int, U64]


@attrs.frozen(field_transformer=wire_fields)
class ErrorReply:
    """A request failed. ``primary_address`` ("host:port") only with NOT_PRIMARY."""

    code: Annotated[ErrorCode, EnumType(ErrorCode, 16)]
    message: Annotated[str, Text(0, ERROR_MESSAGE_SIZE_MAX)]
    primary_address: Annotated[
        str | None, Option(Text(1, ADDRESS_SIZE_MAX, PRINTABLE_ASCII_PATTERN))
    ]

    def __attrs_post_init__(self) -> None:
        if self.primary_address is not None and self.code != ErrorCode.NOT_PRIMARY:
            raise ValueError("primary_address is only sent with NOT_PRIMARY")


@attrs.frozen(field_transformer=wire_fields)
class CreateApiKey:
    """Create an API key of the caller's tenant (admin; owner to grant owner). The node
    makes the key; only its hash is stored. ``expires_ms``: Unix time in ms, or never."""

    role: Annotated[Role, ROLE]
    expires_ms: Annotated[int | None, Option(U64)]
    label: Annotated[str, API_KEY_LABEL]


@attrs.frozen(field_transformer=wire_fields)
class CreateApiKeyReply:
    """The key, shown this once: it cannot be read back. It exists from ``log_position``."""

    key_id: Annotated[int, KEY_ID]
    api_key: Annotated[str, Text(1, API_KEY_SIZE_MAX, PRINTABLE_ASCII_PATTERN)]
    log_position: Annotated[int, U64]


@attrs.frozen(field_transformer=wire_fields)
class RevokeApiKey:
    """Revoke a key of the caller's tenant (admin; owner for an owner key)."""

    key_id: Annotated[int, KEY_ID]


@attrs.frozen(field_transformer=wire_fields)
class RevokeApiKeyReply:
    """The key stops working on every replica that has applied ``log_position``."""

    log_position: Annotated[int, U64]


@attrs.frozen(field_transformer=wire_fields)
class ListApiKeys:
    """The keys of the caller's tenant, revoked ones included (admin)."""


@attrs.frozen(field_transformer=wire_fields)
class ApiKeyInfo:
    """What is known of a key, without the key or its hash."""

    key_id: Annotated[int, KEY_ID]
    role: Annotated[Role, ROLE]
    expires_ms: Annotated[int | None, Option(U64)]
    created_op: Annotated[int, U64]
    revoked_op: Annotated[int | None, Option(U64)]
    label: Annotated[str, API_KEY_LABEL]


@attrs.frozen(field_transformer=wire_fields)
class ListApiKeysReply:
    """The tenant's keys by key id, as of ``log_position``."""

    log_position: Annotated[int, U64]
    keys: Annotated[tuple[ApiKeyInfo, ...], Seq(Record(ApiKeyInfo), 0, API_KEYS_LISTED_MAX)]


Message = (
    Handshake
    | HandshakeReply
    | CreateStream
    | CreateStreamReply
    | AppendEvents
    | AppendEventsReply
    | ReadEvents
    | ReadEventsAsOf
    | ReadEventsReply
    | Sync
    | SyncReply
    | ErrorReply
    | CreateApiKey
    | CreateApiKeyReply
    | RevokeApiKey
    | RevokeApiKeyReply
    | ListApiKeys
    | ListApiKeysReply
)
