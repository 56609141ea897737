"""Simulated clients: they behave like the real client, and record what they saw.

A client registers (request id 0; the op it commits at becomes its session), then sends one
operation at a time with request id ``session << 32 | number``. It waits a timeout, then
retries the *same* request id at the next replica; it follows ``NOT_PRIMARY`` redirects; it
backs off on ``BUSY``. When its session expired it registers again, and the operation it
was waiting for becomes *unknown* — as does every operation still outstanding when the run
ends. An unknown operation is never recorded as failed: it may or
may not have happened, and the checkers accept either.

Payloads on the simulated network: client to replica, request id (u64 LE) + body; replica
to client, request id (u64 LE) + the replica's reply.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import attrs

from craton.core import event_store, kv_machine
from craton.core.auth import API_KEY_HASH_SIZE, Role
from craton.core.event_store import AUDIT_STREAM
from craton.core.prng import Prng
from craton.core.vsr.replica import SESSION_SHIFT, ReplyStatus
from craton.core.wire.messages import (
    READ_SIZE_MAX,
    AppendEvents,
    CreateStream,
    DataClass,
    ListApiKeys,
    Placement,
    PlacementKind,
    ReadEvents,
    ReadEventsAsOf,
    RevokeApiKey,
)
from craton.sim.linearizability import Operation
from craton.sim.network import SimEndpoint

CLIENT_ID_BASE = 1000
REQUEST_NUMBER = struct.Struct("<Q")
KEYS = tuple(f"k{index}".encode() for index in range(4))  # few keys: many conflicts
GLOBAL = Placement(PlacementKind.GLOBAL, "")


def encode_client_payload(number: int, body: bytes) -> bytes:
    return REQUEST_NUMBER.pack(number) + body


def decode_client_payload(payload: bytes) -> tuple[int, bytes]:
    assert len(payload) >= REQUEST_NUMBER.size, "a simulated payload is at least 8 bytes"
    return REQUEST_NUMBER.unpack_from(payload)[0], payload[REQUEST_NUMBER.size :]


STREAMS = ("orders", "payments", "audit")
TENANTS = (1, 2)  # two tenants: each sees only its own streams
KEY_IDS = tuple(range(1, 9))  # few key ids, shared by both tenants: creations collide, revocations
# hit keys of the other tenant, requests name keys that are revoked, expired or not yet made
TIME_MS_MAX = 1000  # the workload's clock: key expiries and request times fall in it


def event_store_operation(prng: Prng) -> bytes:
    """Create, append (with and without an expected offset), read, and read as of a past
    log position, over a few streams of two tenants (reads also of their audit streams);
    create, list and revoke API keys; make some requests as a lesser role or with a key: many
    conflicts and refusals, all deterministic."""
    tenant, stream = prng.choice(TENANTS), prng.choice(STREAMS)
    pick = prng.below(16)
    message: event_store.StoreMessage
    if pick == 0:
        message = CreateStream(stream, prng.choice(list(DataClass)), GLOBAL)
    elif pick < 8:
        events = [prng.random_bytes(prng.between(1, 24)) for _ in range(prng.between(1, 3))]
        expected = prng.below(6) if prng.chance(0.4) else None
        message = AppendEvents(stream, tuple(events), expected)
    elif pick < 10:
        stream = AUDIT_STREAM if prng.chance(0.2) else stream
        message = ReadEvents(stream, prng.below(4), 8, READ_SIZE_MAX)
    elif pick < 12:
        stream = AUDIT_STREAM if prng.chance(0.2) else stream
        message = ReadEventsAsOf(stream, prng.below(200), 0, 8, READ_SIZE_MAX)
    elif pick < 15:
        return _key_operation(prng, tenant)
    else:
        message = ListApiKeys()
    role, key_id = Role.OWNER, 0
    if prng.chance(0.1):
        role, key_id = prng.choice(list(Role)), prng.choice((0, *KEY_IDS))
    request = event_store.StoreRequest(
        tenant, message, role, key_id, "sim", prng.below(TIME_MS_MAX)
    )
    return event_store.encode_request(request)


def _key_operation(prng: Prng, tenant: int) -> bytes:
    """Create or revoke a key, as a role that may or may not do it."""
    key_id = prng.choice(KEY_IDS)
    role = prng.choice(list(Role))
    message: event_store.StoreMessage
    if prng.chance(0.6):
        expires = prng.below(TIME_MS_MAX) if prng.chance(0.5) else None
        key_hash = prng.random_bytes(API_KEY_HASH_SIZE)
        message = event_store.CreateKey(key_id, key_hash, prng.choice(list(Role)), expires, "")
    else:
        message = RevokeApiKey(key_id)
    request = event_store.StoreRequest(tenant, message, role, 0, "sim", prng.below(TIME_MS_MAX))
    return event_store.encode_request(request)


def kv_operation(prng: Prng) -> bytes:
    key = prng.choice(KEYS)
    if prng.chance(0.5):
        return kv_machine.encode_get(key)
    return kv_machine.encode_put(key, prng.random_bytes(prng.between(0, 16)))


@attrs.define
class _Waiting:
    number: int
    body: bytes
    invoked_tick: int
    sent_tick: int
    target: int


class SimClient:
    def __init__(
        self,
        client_id: int,
        endpoint: SimEndpoint,
        prng: Prng,
        *,
        replica_count: int,
        requests: int,
        make_operation: Callable[[Prng], bytes],
        timeout_ticks: int = 60,
        now: Callable[[], int],
    ) -> None:
        self.client_id = client_id
        self._endpoint = endpoint
        self._prng = prng
        self._replica_count = replica_count
        self._requests_left = requests
        self._make_operation = make_operation
        self._timeout_ticks = timeout_ticks
        self._now = now
        self._primary = 0
        self._number = 0  # highest request number used in the current session
        self._session: int | None = None
        self._waiting: _Waiting | None = None
        self._idle_until = 0
        self.history: list[Operation] = []  # acknowledged and unknown operations
        self.sessions: list[int] = []  # the sessions this client learned, in order
        self.sent: dict[int, bytes] = {}  # every request id sent -> body
        self.accepting_new = True
        endpoint.set_receiver(self._on_receive)

    @property
    def done(self) -> bool:
        return self._waiting is None and (self._requests_left == 0 or not self.accepting_new)

    def tick(self) -> None:
        now = self._now()
        waiting = self._waiting
        if waiting is not None:
            if now - waiting.sent_tick >= self._timeout_ticks:
                self._primary = (waiting.target + 1) % self._replica_count
                self._send(waiting, now)
            return
        if now < self._idle_until:
            return
        if self._session is None:
            self._start(0, b"", now)
            return
        if self._requests_left > 0 and self.accepting_new:
            self._number += 1
            self._requests_left -= 1
            request_id = self._session << SESSION_SHIFT | self._number
            self._start(request_id, self._make_operation(self._prng), now)

    def give_up(self) -> None:
        """The run is over: whatever is outstanding is unknown."""
        waiting = self._waiting
        if waiting is not None and waiting.number > 0:
            self._record(waiting, None, None, None)
        self._waiting = None

    def _start(self, number: int, body: bytes, now: int) -> None:
        waiting = _Waiting(number, body, now, now, self._primary)
        self._waiting = waiting
        if number > 0:
            self.sent[number] = body
        self._send(waiting, now)

    def _send(self, waiting: _Waiting, now: int) -> None:
        waiting.sent_tick = now
        waiting.target = self._primary
        payload = encode_client_payload(waiting.number, waiting.body)
        self._endpoint.send(self._primary, payload)

    def _on_receive(self, src: int, payload: bytes) -> None:
        number, reply = decode_client_payload(payload)
        waiting = self._waiting
        if waiting is None or number != waiting.number or not reply:
            return  # a late or duplicated reply to something already settled
        now = self._now()
        match reply[0]:
            case ReplyStatus.OK:
                op = int.from_bytes(reply[1:9], "little")
                self._primary = src
                if number == 0:
                    if self.sessions and op <= self.sessions[-1]:
                        return  # a late reply to an earlier registration
                    self._session, self._number = op, 0
                    self.sessions.append(op)
                else:
                    self._record(waiting, now, reply[9:], op)
                self._waiting = None
            case ReplyStatus.NOT_PRIMARY:
                self._primary = reply[5] % self._replica_count
                self._send(waiting, now)
            case ReplyStatus.BUSY:
                self._primary = src
                waiting.sent_tick = now - self._timeout_ticks + self._prng.between(5, 20)
            case ReplyStatus.SESSION_EXPIRED | ReplyStatus.STALE:
                if number > 0:
                    self._record(waiting, None, None, None)
                self._session = None
                self._waiting = None
            case _:
                raise AssertionError(f"client {self.client_id}: unknown reply status {reply[0]}")

    def _record(
        self, waiting: _Waiting, completed: int | None, reply: bytes | None, op: int | None
    ) -> None:
        self.history.append(
            Operation(
                client_id=self.client_id,
                request_number=waiting.number,
                body=waiting.body,
                invoked_tick=waiting.invoked_tick,
                completed_tick=completed,
                reply=reply,
                position=op,
            )
        )
