"""The node passes request and reply bodies between the wire and the event store without
re-encoding them: pinned here against the event store's own encoders, so a change on either
side that breaks the identity fails this test rather than corrupting requests."""

from __future__ import annotations

import pytest

from craton.core.auth import Role
from craton.core.event_store import (
    StoreRequest,
    encode_principal,
    encode_reply,
    encode_request,
    store_error,
)
from craton.core.wire import (
    AppendEvents,
    AppendEventsReply,
    CreateStream,
    CreateStreamReply,
    DataClass,
    ErrorCode,
    Placement,
    PlacementKind,
    ReadEvents,
    ReadEventsAsOf,
    ReadEventsReply,
    encode,
    parse_frame,
)
from craton.core.wire.codec import AnyMessage
from craton.net.connection import store_request, wire_reply

REQUESTS: list[AnyMessage] = [
    CreateStream("orders", DataClass.PHI, Placement(PlacementKind.REGION, "eu-west-1")),
    AppendEvents("orders", (b"", b"a" * 300, bytes(range(256))), 41),
    AppendEvents("o.r:d-e_r", (b"x",), None),
    ReadEvents("orders", 7, 8192, 1),
    ReadEventsAsOf("orders", 2**63, 0, 1, 8 * 1024 * 1024),
]
REPLIES = [
    CreateStreamReply(12),
    AppendEventsReply(0, 2**64 - 1),
    ReadEventsReply(3, 99, (b"one", b"", b"three")),
    ReadEventsReply(0, 0, ()),
]


@pytest.mark.parametrize("message", REQUESTS, ids=lambda m: type(m).__name__)
@pytest.mark.parametrize(
    ("tenant_id", "role", "key_id", "subject"),
    [(0, Role.OWNER, 0, "anonymous"), (1, Role.VIEWER, 9, "key:0000000000000009"),
     (2**64 - 1, Role.MEMBER, 0, "")],
)  # fmt: skip
def test_a_request_frame_body_is_the_store_operation(
    message: AnyMessage, tenant_id: int, role: Role, key_id: int, subject: str
) -> None:
    frame = parse_frame(encode(message, 5))
    request = StoreRequest(tenant_id, message, role, key_id, subject, 1234)  # type: ignore[arg-type]
    principal = encode_principal(tenant_id, role, key_id, subject)
    assert store_request(frame, principal, 1234) == encode_request(request)


@pytest.mark.parametrize("reply", REPLIES, ids=lambda r: type(r).__name__)
def test_a_store_reply_is_the_wire_reply(reply: AnyMessage) -> None:
    store_reply = encode_reply(reply)  # type: ignore[arg-type]
    assert wire_reply(store_reply, 77) == encode(reply, 77)


def test_an_error_reply_takes_the_decoding_path() -> None:
    error = store_error(ErrorCode.UNEXPECTED_OFFSET, "expected 1, holds 2", 2)
    assert wire_reply(encode_reply(error), 1) is None
    assert wire_reply(b"", 1) is None and wire_reply(b"\xff", 1) is None
