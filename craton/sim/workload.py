"""Simulated clients: they speak to the gateway as the real client does, and record what
they saw.

Each client is a wire client (a random u128 id in tenant ``TENANT_ID``) of the real
``Gateway`` (``craton.core.gateway``) that every simulated replica runs, as a node does. Like
``craton.client``, it opens a session on the replica it talks to (the handshake, a
``SESSION`` submit) before its first request there; numbers its requests and handshakes
``1, 2, …`` from one counter (wire request ids); sends one at a time and, without an
answer in ``timeout_ticks``, retries the *same* request id at the next replica, marked a
retry (``FLAG_RETRY``) once an attempt went out and got no answer that rules it out (a
timeout, or ``INTERNAL``); follows
``NOT_PRIMARY`` to the primary it names (or the next replica); moves on after ``UNAVAILABLE`` and
backs off after ``INTERNAL``, both
with the same request id. A replica that restarted since the handshake has lost the
connection: it answers a request with a ``SESSION`` answer ``INVALID_REQUEST`` and the
client connects again (a new handshake, a new id). ``SESSION_EXPIRED``, or any answer a
client does not retry,
leaves the request's outcome *unknown*, as does every request still outstanding when the
run ends. An unknown operation is never recorded as failed: it may or may not have
happened, and the checkers accept either.

Payloads on the simulated network (the connection's framing is not simulated; its protocol
has tests of its own): client to replica, ``SUBMIT_HEADER`` (kind, tenant, client id,
request id) + body; replica to client, ``ANSWER_HEADER`` (kind, code or 0 when applied,
request id, op, primary or ``NO_PRIMARY``) + the state machine's reply.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import attrs

from craton.core import event_store, kv_machine
from craton.core.auth import API_KEY_HASH_SIZE, Role
from craton.core.event_store import AUDIT_STREAM
from craton.core.gateway import replica_client_id
from craton.core.prng import Prng
from craton.core.seam import Answer, Submit, SubmitKind
from craton.core.wire.errors import DecodeError, ErrorCode
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

CLIENT_ID_BASE = 1000  # network endpoints of clients: replicas are 0..R-1
TENANT_ID = 1  # the tenant every simulated wire client connects in
SUBMIT_HEADER = struct.Struct("<BBQ16sQ")  # kind, retry, tenant, client id (u128), request id
ANSWER_HEADER = struct.Struct("<BBQQB")  # kind, code (0: applied), request id, op, primary
NO_PRIMARY = 0xFF
KINDS = tuple(SubmitKind)
KEYS = tuple(f"k{index}".encode() for index in range(4))  # few keys: many conflicts
GLOBAL = Placement(PlacementKind.GLOBAL, "")
BACKOFF_TICKS_MIN, BACKOFF_TICKS_MAX = 5, 20


def encode_submit(submit: Submit, *, retry: bool = False) -> bytes:
    """A client's ``Submit`` as it travels the simulated network (the token is the
    receiving node's to choose; ``retry`` is the frame's ``FLAG_RETRY``)."""
    header = SUBMIT_HEADER.pack(
        KINDS.index(submit.kind),
        int(retry),
        submit.tenant_id,
        submit.client_id.to_bytes(16, "little"),
        submit.request_id,
    )
    return header + submit.body


def decode_submit(token: int, payload: bytes) -> tuple[Submit, bool]:
    """The ``Submit`` and whether its client marked it a retry."""
    assert len(payload) >= SUBMIT_HEADER.size, "a simulated submit has its header"
    kind, retry, tenant, client, request_id = SUBMIT_HEADER.unpack_from(payload)
    body = payload[SUBMIT_HEADER.size :]
    client_id = int.from_bytes(client, "little")
    return Submit(token, KINDS[kind], tenant, client_id, request_id, body), bool(retry)


def encode_answer(kind: SubmitKind, request_id: int, answer: Answer) -> bytes:
    code = 0 if answer.code is None else int(answer.code)
    primary = NO_PRIMARY if answer.primary is None else answer.primary
    header = ANSWER_HEADER.pack(KINDS.index(kind), code, request_id, answer.op, primary)
    return header + answer.reply


@attrs.frozen
class WireAnswer:
    kind: SubmitKind
    code: ErrorCode | None
    request_id: int
    op: int
    primary: int | None
    reply: bytes


def decode_answer(payload: bytes) -> WireAnswer:
    assert len(payload) >= ANSWER_HEADER.size, "a simulated answer has its header"
    kind, code, request_id, op, primary = ANSWER_HEADER.unpack_from(payload)
    return WireAnswer(
        KINDS[kind],
        None if code == 0 else ErrorCode(code),
        request_id,
        op,
        None if primary == NO_PRIMARY else primary,
        payload[ANSWER_HEADER.size :],
    )


STREAMS = ("orders", "payments", "audit")
TENANTS = (1, 2)  # two tenants: each sees only its own streams
KEY_IDS = tuple(range(1, 9))  # few key ids, shared by both tenants: creations collide, revocations
# hit keys of the other tenant, requests name keys that are revoked, expired or not yet made
READ_OFFSET_MAX = 96  # reads start anywhere in the first events of a stream
TIME_MS_MAX = 1000  # the workload's clock: key expiries and request times fall in it


def event_store_operation(prng: Prng, known_position: int) -> bytes:
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
        message = ReadEvents(stream, _read_offset(prng), 8, READ_SIZE_MAX)
    elif pick < 12:
        stream = AUDIT_STREAM if prng.chance(0.2) else stream
        # As of a position the client was told (as a reader of its own writes does), or any.
        recent = known_position >= 0 and prng.chance(0.5)
        position = max(0, known_position - prng.below(4)) if recent else prng.below(200)
        message = ReadEventsAsOf(stream, position, _read_offset(prng), 8, READ_SIZE_MAX)
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


def _read_offset(prng: Prng) -> int:
    """Where a read starts in its stream: mostly at the head, often further in (streams grow
    past one read's count within a run, and a read must see their later events too)."""
    return prng.below(4) if prng.chance(0.5) else prng.below(READ_OFFSET_MAX)


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


def kv_operation(prng: Prng, known_position: int) -> bytes:
    del known_position
    key = prng.choice(KEYS)
    if prng.chance(0.5):
        return kv_machine.encode_get(key)
    return kv_machine.encode_put(key, prng.random_bytes(prng.between(0, 16)))


def event_store_is_read(body: bytes) -> bool:
    """Whether the node sends this event-store request down the read path (as
    ``craton.core.connection`` does: reads and key listings)."""
    try:
        request = event_store.decode_request(body)
    except DecodeError:
        return False
    return isinstance(request.message, ReadEvents | ReadEventsAsOf | ListApiKeys)


def kv_is_read(body: bytes) -> bool:
    try:
        return isinstance(kv_machine.decode_request(body), kv_machine.Get)
    except DecodeError:
        return False


_RETRY_ELSEWHERE = frozenset({ErrorCode.NOT_PRIMARY, ErrorCode.UNAVAILABLE})
_RETRY_HERE = frozenset({ErrorCode.INTERNAL, ErrorCode.RATE_LIMITED})


@attrs.define
class _Waiting:
    request_id: int
    body: bytes
    read: bool
    invoked_tick: int
    sent_tick: int = 0
    target: int = 0
    handshaking: bool = False
    resend_at: int | None = None  # backing off: send again at this tick
    maybe_applied: bool = False  # an attempt went out and no answer ruled it out: a retry


class SimClient:
    def __init__(
        self,
        endpoint_id: int,
        endpoint: SimEndpoint,
        prng: Prng,
        *,
        replica_count: int,
        requests: int,
        make_operation: Callable[[Prng, int], bytes],
        is_read: Callable[[bytes], bool],
        timeout_ticks: int = 60,
        now: Callable[[], int],
    ) -> None:
        self.endpoint_id = endpoint_id
        self.wire_client_id = int.from_bytes(prng.random_bytes(16), "little")
        self.client_id = replica_client_id(TENANT_ID, self.wire_client_id)  # the replica's
        self._endpoint = endpoint
        self._prng = prng
        self._replica_count = replica_count
        self._requests_left = requests
        self._make_operation = make_operation
        self._is_read = is_read
        self._timeout_ticks = timeout_ticks
        self._now = now
        self._target = 0
        self._connected: int | None = None  # the replica whose handshake was answered
        self._next_request_id = 1
        self._known_position = -1  # the latest log position an answer told this client
        self._waiting: _Waiting | None = None
        self.history: list[Operation] = []  # acknowledged and unknown operations
        self.read_bodies: set[bytes] = set()  # every read sent (a read may run more than once)
        self.sent: dict[int, bytes] = {}  # request id -> body, of every request, in order
        self.accepting_new = True
        endpoint.set_receiver(self._on_receive)

    @property
    def done(self) -> bool:
        return self._waiting is None and (self._requests_left == 0 or not self.accepting_new)

    def tick(self) -> None:
        now = self._now()
        waiting = self._waiting
        if waiting is not None:
            if waiting.resend_at is not None:
                if now >= waiting.resend_at:
                    self._send(waiting, now)
            elif now - waiting.sent_tick >= self._timeout_ticks:
                if not waiting.handshaking:
                    waiting.maybe_applied = True  # it went out and no answer came back
                self._move((waiting.target + 1) % self._replica_count)
                self._send(waiting, now)
            return
        if self._requests_left > 0 and self.accepting_new:
            self._requests_left -= 1
            body = self._make_operation(self._prng, self._known_position)
            read = self._is_read(body)
            if read:
                self.read_bodies.add(body)
            waiting = _Waiting(self._take_request_id(), body, read, now)
            self.sent[waiting.request_id] = body
            self._waiting = waiting
            self._send(waiting, now)

    def _take_request_id(self) -> int:
        request_id = self._next_request_id
        self._next_request_id += 1
        return request_id

    def give_up(self) -> None:
        """The run is over: whatever is outstanding is unknown."""
        if self._waiting is not None:
            self._record(self._waiting, None)
        self._waiting = None

    def _move(self, target: int) -> None:
        if target != self._target:
            self._target, self._connected = target, None

    def _send(self, waiting: _Waiting, now: int) -> None:
        waiting.sent_tick, waiting.target, waiting.resend_at = now, self._target, None
        waiting.handshaking = self._connected != self._target
        if waiting.handshaking:  # a handshake's id comes from the requests' own counter
            handshake_id = self._take_request_id()
            submit = Submit(0, SubmitKind.SESSION, TENANT_ID, self.wire_client_id, handshake_id)
        else:
            kind = SubmitKind.READ if waiting.read else SubmitKind.WRITE
            submit = Submit(
                0, kind, TENANT_ID, self.wire_client_id, waiting.request_id, waiting.body
            )
        retry = waiting.maybe_applied and not waiting.handshaking
        self._endpoint.send(self._target, encode_submit(submit, retry=retry))

    def _on_receive(self, src: int, payload: bytes) -> None:
        answer = decode_answer(payload)
        waiting = self._waiting
        if waiting is None or src != waiting.target or src != self._target:
            return  # from a connection the real client would have closed by now
        if answer.request_id != waiting.request_id and not waiting.handshaking:
            return  # a late answer to an earlier request
        if (answer.kind is SubmitKind.SESSION) != waiting.handshaking:
            if answer.kind is SubmitKind.SESSION and answer.code is ErrorCode.INVALID_REQUEST:
                self._connected = None  # the replica restarted: the connection is gone
                self._send(waiting, self._now())
            return  # or a late answer to an earlier attempt
        now = self._now()
        if answer.code is None:
            if waiting.handshaking:
                self._connected = src
                self._send(waiting, now)
            else:
                self._record(waiting, (now, answer.reply, answer.op))
                self._known_position = max(self._known_position, answer.op)
                self._waiting = None
        elif answer.code in _RETRY_ELSEWHERE:
            redirect = answer.code is ErrorCode.NOT_PRIMARY and answer.primary is not None
            if redirect and answer.primary != src:
                assert answer.primary is not None
                self._move(answer.primary % self._replica_count)
                self._send(waiting, now)
                return
            self._move((src + 1) % self._replica_count)
            waiting.resend_at = now + self._prng.between(BACKOFF_TICKS_MIN, BACKOFF_TICKS_MAX)
        elif answer.code in _RETRY_HERE:
            if answer.code is ErrorCode.INTERNAL and not waiting.handshaking:
                waiting.maybe_applied = True  # the outcome is open
            waiting.resend_at = now + self._prng.between(BACKOFF_TICKS_MIN, BACKOFF_TICKS_MAX)
        else:  # not retried (SESSION_EXPIRED among them): the outcome is unknown
            self._record(waiting, None)
            self._waiting = None

    def _record(self, waiting: _Waiting, outcome: tuple[int, bytes, int] | None) -> None:
        completed, reply, op = outcome if outcome is not None else (None, None, None)
        self.history.append(
            Operation(
                client_id=self.client_id,
                request_number=waiting.request_id,
                body=waiting.body,
                invoked_tick=waiting.invoked_tick,
                completed_tick=completed,
                reply=reply,
                position=op,
            )
        )
