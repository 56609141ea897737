"""One client connection speaking Craton's binary protocol (docs/PROTOCOL.md): the asyncio
adapter of the pure ``craton.core.connection.ConnectionProtocol``.

A ``ClientConnection`` feeds the protocol object the bytes its socket receives, the node's
answers and the clock's time, and carries out the effects it returns: frames written,
requests handed to the ``ReplicaHost``, reading paused and resumed, the connection closed.
Every rule of the connection's protocol (the handshake first, framing errors, the order
frames are served in, flow control, the sync barrier, the rate limit, a token's expiry, the
idle time) is the protocol object's and is written down there. This module keeps what
needs the node, the socket or the world:

- Authentication happens once, at the handshake (``craton.core.auth.authenticate`` with
  the clock's wall-clock time and this replica's API-key table), once the host has read its
  log back; a halted node says so instead. The session is the node's (``open_session``): in
  a cluster only the primary takes requests, elsewhere they are refused with
  ``NOT_PRIMARY`` carrying the primary's ``host:port`` (``UNAVAILABLE`` while no primary is
  known), and the handshake reply names this replica and the cluster's size.
- A refused credential (at the handshake, or a token that ran out since) is counted in
  ``vdb_auth_failures_total``, logged and, on the primary, recorded in the audit stream of
  the credential's tenant (tenant 0 when nothing in it was genuine), at most
  ``AUTH_FAILURE_RECORDS_PER_S`` a second node-wide, so that a flood of bad connections
  cannot turn into a flood of log writes (the log line says whether it was audited).
- Each request carries the connection's principal and the wall-clock time it was served
  into the log, where the event store authorizes it (role, tenant, a key revoked or
  expired since): the same decision on every replica. Writes carry the request id to the
  host so that a retry is applied at most once; reads are applied at their own op. The
  node's outcome becomes the reply frame here.
- The socket's send buffer (its size and high-water mark) is read here and given to the
  protocol, which decides when reading stops; after the client's EOF its replies are
  awaited as the protocol says (``ConnectionProtocol.settled``).
- Time comes only from the connection's ``Clock`` (``craton.io.clock``): its monotonic
  time for request durations, the idle time and the rate limit, its wall-clock time for
  tokens, keys and audit stamps.
- An API key is drawn here (``secrets``) when an admin asks for one; only its hash enters
  the log, and the key goes back in the reply once.
- Nothing a client sent is ever logged or echoed: errors name fields, not contents.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
from collections.abc import Callable
from typing import Protocol, assert_never

from craton.core.auth import (
    API_KEY_SECRET_SIZE,
    TENANT_WITHOUT_AUTH,
    AuthMode,
    AuthRefusal,
    JwtPolicy,
    authenticate,
    format_api_key,
    hash_api_key,
)
from craton.core.connection import (
    INFLIGHT_REQUESTS_MAX,
    NS_PER_S,
    REPLY_BYTES_MAX,
    AnswerSync,
    AwaitDrain,
    BadFrame,
    Close,
    Conditions,
    ConnectionProtocol,
    Effect,
    PauseReading,
    RefuseCredential,
    RequestDone,
    ResumeReading,
    Send,
    StartHandshake,
    SubmitRead,
    SubmitWrite,
    make_error_reply,
    method_name,
)
from craton.core.connection import TokenBucket as _CoreTokenBucket
from craton.core.event_store import (
    AuthFailure,
    CreateKey,
    KeyCreated,
    ReplyKind,
    RequestKind,
    StoreRequest,
    decode_reply,
    encode_principal,
    encode_request,
    store_error,
    to_wire_reply,
)
from craton.core.event_store import (
    encode_reply as encode_store_reply,
)
from craton.core.wire import (
    HEADER_SIZE,
    Command,
    DecodeError,
    ErrorCode,
    ErrorReply,
    Frame,
    Handshake,
    SyncReply,
    encode,
)
from craton.core.wire.frame import encode_frame
from craton.core.wire.messages import CreateApiKey, CreateApiKeyReply
from craton.io.clock import SYSTEM_CLOCK, Clock, realtime_ms
from craton.net.logs import EventLog
from craton.net.metrics import NodeMetrics
from craton.net.node import REQUEST_NUMBER_MAX, Applied, Outcome, Refused, ReplicaHost

__all__ = [
    "AUTH_FAILURE_RECORDS_PER_S",
    "INFLIGHT_REQUESTS_MAX",
    "REPLY_BYTES_MAX",
    "ClientConnection",
    "ConnectionOwner",
    "DirectReader",
    "TokenBucket",
    "store_request",
    "wire_reply",
]

AUTH_FAILURE_RECORDS_PER_S = 20.0  # refused handshakes audited per second, node-wide
EOF_POLL_INTERVAL_S = 0.01  # how often replies still awaited after the client's EOF are checked


class ConnectionOwner(Protocol):
    """What a connection needs from the server that accepted it."""

    host: ReplicaHost
    metrics: NodeMetrics
    log: EventLog
    rate_limit_rps: float | None
    auth_mode: AuthMode
    jwt_policy: JwtPolicy | None
    auth_failure_records: TokenBucket  # refused handshakes written to the audit, node-wide

    @property
    def shutting_down(self) -> bool: ...


class TokenBucket:
    """``craton.core.connection.TokenBucket`` on a monotonic clock's seconds, as the server
    keeps its node-wide bucket of audited refusals (``ConnectionOwner.auth_failure_records``)."""

    def __init__(self, rate_per_s: float, now_s: float) -> None:
        self._bucket = _CoreTokenBucket(rate_per_s, _ns(now_s))

    def take(self, now_s: float) -> bool:
        return self._bucket.take(_ns(now_s))


def _ns(seconds: float) -> int:
    return round(seconds * NS_PER_S)


class DirectReader(asyncio.StreamReader):
    """A ``StreamReader`` that, once a consumer is attached, hands it each chunk as it
    arrives: a client connection decodes frames straight from the transport's callback,
    with no task woken per chunk. Until then (while the server tells what the connection
    is, and for HTTP and replica connections) it is an ordinary ``StreamReader``."""

    _sink: Callable[[bytes], None] | None = None
    _end: Callable[[Exception | None], None] | None = None

    async def attach(
        self, sink: Callable[[bytes], None], end: Callable[[Exception | None], None]
    ) -> bytes:
        """From now on ``sink`` gets every chunk and ``end`` the end of the stream (None at
        EOF, else the error); returns the bytes received but not read so far. Called after
        an EOF or an error, ``end`` is called at once."""
        error = self.exception()
        if error is not None:  # the connection broke: what it held cannot be answered
            end(error)
            return b""
        held = b""
        # StreamReader keeps what was received and not read yet in ``_buffer`` (CPython
        # 3.8 and later); a read of that many bytes returns them without waiting.
        unread: bytearray = getattr(self, "_buffer")  # noqa: B009 (not in the type stubs)
        if unread:
            held = await self.read(len(unread))
        self._sink, self._end = sink, end
        if self.at_eof():
            end(None)
        return held

    def feed_data(self, data: bytes) -> None:  # type: ignore[override]
        sink = self._sink
        if sink is None:
            super().feed_data(data)
        elif data:
            sink(data)

    def feed_eof(self) -> None:
        super().feed_eof()
        if self._end is not None:
            self._end(None)

    def set_exception(self, exc: Exception) -> None:
        super().set_exception(exc)
        if self._end is not None:
            self._end(exc)


class ClientConnection:
    def __init__(
        self,
        owner: ConnectionOwner,
        reader: DirectReader,
        writer: asyncio.StreamWriter,
        peer: str,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._owner = owner
        self._clock = clock
        self._host = owner.host
        self._metrics = owner.metrics
        self._reader = reader
        self._writer = writer
        self._transport = writer.transport
        self.peer = peer
        self._protocol = ConnectionProtocol(
            clock.monotonic_ns(),
            request_number_max=REQUEST_NUMBER_MAX,
            rate_limit_rps=owner.rate_limit_rps,
        )
        self._client_id: int | None = None  # the handshake's, once its session is open
        self._tenant_id = TENANT_WITHOUT_AUTH
        self._prefix = b""  # the principal's bytes in every store request (encode_principal)
        self._advancing = False  # ``_advance`` is running (it is not entered twice)
        self._draining: asyncio.Task[None] | None = None  # waits for the send buffer
        self._ended: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    @property
    def inflight(self) -> int:
        return self._protocol.inflight

    @property
    def last_active_s(self) -> float:
        """On the clock's monotonic time: the last whole frame received or reply written."""
        return self._protocol.last_active_ns / NS_PER_S

    def _now_ns(self) -> int:
        """Monotonic nanoseconds: request durations, the idle time and the rate limit."""
        return self._clock.monotonic_ns()

    def _now_ms(self) -> int:
        """Unix time in milliseconds: the time the core is given for tokens, keys and audit."""
        return realtime_ms(self._clock)

    def _duration_s(self, received_ns: int | None) -> float:
        return 0.0 if received_ns is None else (self._now_ns() - received_ns) / NS_PER_S

    # --- the read loop ---------------------------------------------------------------------

    async def run(self, first: bytes) -> None:
        """Serve the connection until it ends; ``first`` is what was read of it already."""
        protocol = self._protocol
        if first:
            self._on_data(first)
        if not protocol.closed:
            held = await self._reader.attach(self._on_data, self._on_end)
            if held and not protocol.closed:
                self._on_data(held)
        eof = await self._ended
        if eof and not protocol.closed:
            protocol.on_eof(self._now_ns())
            while not protocol.settled(self._now_ns()) and not self._writer.is_closing():
                await asyncio.sleep(EOF_POLL_INTERVAL_S)
        self.close()

    def _on_data(self, data: bytes) -> None:
        if self._protocol.closed:
            return
        self._protocol.receive_data(data, self._now_ns())
        self._advance()

    def _on_end(self, error: Exception | None) -> None:
        """The stream ended: at the client's EOF (``error`` None) replies are still
        awaited; after a connection error they cannot be sent."""
        if not self._ended.done():
            self._ended.set_result(error is None)

    def _advance(self) -> None:
        """Serve the waiting frames the protocol lets through, in order; then stop or restart
        reading as it says."""
        if self._advancing:
            return  # called back from inside the loop below, which goes on by itself
        self._advancing = True
        protocol = self._protocol
        try:
            while protocol.frames_waiting:
                effects = protocol.serve_next(self._conditions())
                if effects is None:
                    break
                self._carry_out(effects)
        finally:
            self._advancing = False
        self._throttle()

    def _conditions(self) -> Conditions:
        return Conditions(
            now_ns=self._now_ns(),
            wall_ms=self._now_ms(),
            unsent_bytes=self._transport.get_write_buffer_size(),
            shutting_down=self._owner.shutting_down,
        )

    def _throttle(self) -> None:
        if self._protocol.closed:
            return
        transport = self._transport
        _, high = transport.get_write_buffer_limits()
        self._carry_out(self._protocol.throttle(transport.get_write_buffer_size() > high))

    async def _drain(self) -> None:
        try:
            await self._writer.drain()
        except (ConnectionError, OSError):
            self._on_end(OSError("the connection broke while replies were sent"))
            return
        finally:
            self._draining = None
            self._protocol.on_drained()
        self._advance()

    def close(self) -> None:
        """Close the socket after what was written so far has been sent."""
        self._protocol.on_close()
        if not self._ended.done():
            self._ended.set_result(False)
        if not self._writer.is_closing():
            self._writer.close()

    def refuse(self, why: str) -> None:
        """Turn the connection away before serving it (a connection error)."""
        self._carry_out(self._protocol.refuse(why, self._now_ns()))

    def tick(self, idle_s: float) -> bool:
        """Time passed: the protocol closes the connection if it has been idle ``idle_s``
        (its rule, ``ConnectionProtocol.on_tick``); True if it did."""
        effects = self._protocol.on_tick(self._now_ns(), _ns(idle_s))
        self._carry_out(effects)
        return bool(effects)

    # --- effects ---------------------------------------------------------------------------

    def _carry_out(self, effects: list[Effect]) -> None:
        """Do what the protocol asked, in its order."""
        for effect in effects:
            match effect:
                case Send():
                    self._write(effect.data)
                case Close():
                    if effect.reply is not None:
                        self._write(encode(effect.reply, 0))
                    self.close()
                case BadFrame():
                    self._owner.log.debug(
                        "connection.bad_frame", peer=self.peer, reason=effect.reason
                    )
                case RequestDone():
                    duration_s = self._duration_s(effect.received_ns)
                    self._metrics.observe_request(effect.method, effect.code, duration_s)
                case StartHandshake():
                    # API keys are in the replicated table: wait until the log is read back
                    self._host.when_recovered(
                        functools.partial(self._authenticate, effect.handshake, effect.request_id)
                    )
                case RefuseCredential():
                    self._record_refusal(effect.refusal, effect.received_ns)
                case SubmitWrite():
                    self._submit_write(effect)
                case SubmitRead():
                    self._submit_read(effect)
                case AnswerSync():
                    self._write(encode(SyncReply(self._host.commit), effect.request_id))
                    self._metrics.observe_request(
                        "Sync", None, self._duration_s(effect.received_ns)
                    )
                case PauseReading():
                    self._transport.pause_reading()  # type: ignore[attr-defined]
                case ResumeReading():
                    self._transport.resume_reading()  # type: ignore[attr-defined]
                case AwaitDrain():
                    self._draining = asyncio.create_task(self._drain())
                case _:
                    assert_never(effect)

    def _write(self, data: bytes) -> None:
        if not self._writer.is_closing():
            self._writer.write(data)

    # --- the handshake ---------------------------------------------------------------------

    def _authenticate(self, handshake: Handshake, request_id: int) -> None:
        protocol = self._protocol
        if protocol.closed:
            return
        if self._host.halted is not None:  # its key table may be incomplete: say why instead
            self._carry_out(protocol.on_node_halted(self._now_ns()))
            return
        owner = self._owner
        principal = authenticate(
            owner.auth_mode, handshake.auth_token, self._now_ms(), owner.jwt_policy, self._host
        )
        if isinstance(principal, AuthRefusal):
            self._carry_out(protocol.on_credential_refused(principal, self._now_ns()))
            return
        self._tenant_id = principal.tenant_id
        self._prefix = encode_principal(
            principal.tenant_id, principal.role, principal.key_id, principal.subject
        )
        client_id = handshake.client_id

        def ready(refusal: Refused | None) -> None:
            if refusal is not None:
                effects = protocol.on_session_refused(
                    refusal.code, refusal.message, refusal.primary_address, self._now_ns()
                )
                self._carry_out(effects)
                return
            self._client_id = client_id
            host = self._host
            self._carry_out(
                protocol.on_session_opened(
                    principal, host.replica_id, host.cluster_size, host.view, self._now_ns()
                )
            )
            self._advance()  # the frames that came after the handshake

        self._host.open_session(self._tenant_id, client_id, request_id, ready)

    def _record_refusal(self, refusal: AuthRefusal, received_ns: int) -> None:
        """One failed authentication: count it, log it, audit it (the protocol closes)."""
        reason = refusal.reason.name.lower()
        self._metrics.auth_failures.labels(reason).inc()
        duration_s = self._duration_s(received_ns)
        self._metrics.observe_request("Handshake", ErrorCode.AUTHENTICATION_FAILED, duration_s)
        audited = self._owner.auth_failure_records.take(self._now_ns() / NS_PER_S)
        self._owner.log.warn(
            "connection.auth_failed",
            peer=self.peer,
            reason=reason,
            audited=audited and self._host.serving,
        )
        if audited:
            tenant = TENANT_WITHOUT_AUTH if refusal.tenant_id is None else refusal.tenant_id
            record = AuthFailure(refusal.subject or "", reason)
            subject = f"connection from {self.peer}"[:64]
            self._host.submit_record(
                encode_request(
                    StoreRequest(tenant, record, subject=subject, time_ms=self._now_ms())
                )
            )

    # --- requests --------------------------------------------------------------------------

    def _submit_write(self, effect: SubmitWrite) -> None:
        client_id = self._client_id
        assert client_id is not None
        done = self._done(effect.seq, effect.frame, effect.received_ns)
        if isinstance(effect.message, CreateApiKey):
            body, done = self._create_key(effect.message, done)
        else:
            body = store_request(effect.frame, self._prefix, self._now_ms())
        self._host.submit_write(
            self._tenant_id, client_id, effect.request_id, body, done, fresh=effect.fresh
        )

    def _submit_read(self, effect: SubmitRead) -> None:
        body = store_request(effect.frame, self._prefix, self._now_ms())
        self._host.submit_read(body, self._done(effect.seq, effect.frame, effect.received_ns))

    def _done(self, seq: int, frame: Frame, received_ns: int) -> Callable[[Outcome], None]:
        """The ``done`` the node calls with the outcome of request ``seq``."""
        method = method_name(frame.command)

        def done(outcome: Outcome) -> None:
            reply, code = self._answer(frame.request_id, outcome)
            self._carry_out(self._protocol.on_answered(seq, reply, self._now_ns()))
            self._metrics.observe_request(method, code, self._duration_s(received_ns))
            if self._protocol.stalled:
                self._advance()

        return done

    def _create_key(
        self, message: CreateApiKey, done: Callable[[Outcome], None]
    ) -> tuple[bytes, Callable[[Outcome], None]]:
        """The store request that creates a fresh key, and the ``done`` that hands the key
        to the client: the log and the replies of the replicas only ever see its hash."""
        principal = self._protocol.principal
        assert principal is not None
        key_id = secrets.randbits(64) or 1
        key = format_api_key(key_id, secrets.token_bytes(API_KEY_SECRET_SIZE))
        operation = CreateKey(
            key_id, hash_api_key(key), message.role, message.expires_ms, message.label
        )
        request = StoreRequest(
            principal.tenant_id,
            operation,
            principal.role,
            principal.key_id,
            principal.subject,
            self._now_ms(),
        )

        def created(outcome: Outcome) -> None:
            if isinstance(outcome, Applied) and outcome.reply[:1] == bytes([ReplyKind.KEY_CREATED]):
                reply = decode_reply(outcome.reply)
                assert isinstance(reply, KeyCreated)
                if reply.key_id == key_id:
                    answer = CreateApiKeyReply(key_id, key, reply.log_position)
                    outcome = Applied(outcome.op, _KEY_REPLY_TAG + _encode_body(answer))
                else:  # a retry: the key was made by an earlier try, whose reply was lost
                    lost = store_error(
                        ErrorCode.INVALID_REQUEST,
                        f"an earlier try created key {reply.key_id:016x}, and only that try "
                        "could show it: revoke it and create another",
                    )
                    outcome = Applied(outcome.op, encode_store_reply(lost))
            done(outcome)

        return encode_request(request), created

    def _answer(self, request_id: int, outcome: Outcome) -> tuple[bytes, ErrorCode | None]:
        """The reply frame to ``request_id`` and its error code (None for success)."""
        if isinstance(outcome, Refused):
            error = make_error_reply(outcome.code, outcome.message, outcome.primary_address)
            return encode(error, request_id), outcome.code
        assert isinstance(outcome, Applied)
        spliced = wire_reply(outcome.reply, request_id)
        if spliced is not None:
            return spliced, None
        try:
            reply = to_wire_reply(decode_reply(outcome.reply))
            frame = encode(reply, request_id)
        except (DecodeError, ValueError) as error:
            self._owner.log.error("connection.bad_store_reply", reason=str(error))
            failed = make_error_reply(ErrorCode.INTERNAL, "the node could not encode its reply")
            return encode(failed, request_id), ErrorCode.INTERNAL
        return frame, reply.code if isinstance(reply, ErrorReply) else None


# The event store's records are the wire protocol's own (``craton.core.event_store``), so a
# request's frame body becomes an operation, and a successful reply becomes a frame body, by
# adding or removing the event store's tag (and the tenant) — no decoding and re-encoding.
_STORE_KINDS = {
    Command.CREATE_STREAM: RequestKind.CREATE_STREAM,
    Command.APPEND_EVENTS: RequestKind.APPEND_EVENTS,
    Command.READ_EVENTS: RequestKind.READ_EVENTS,
    Command.READ_EVENTS_AS_OF: RequestKind.READ_EVENTS_AS_OF,
    Command.REVOKE_API_KEY: RequestKind.REVOKE_API_KEY,
    Command.LIST_API_KEYS: RequestKind.LIST_API_KEYS,
}
# A created key's reply, as this connection rewrites it: a tag no store reply uses.
_KEY_REPLY_KIND = 0x80
_KEY_REPLY_TAG = bytes([_KEY_REPLY_KIND])
_REPLY_COMMANDS: dict[int, Command] = {
    ReplyKind.STREAM_CREATED: Command.CREATE_STREAM_REPLY,
    ReplyKind.EVENTS_APPENDED: Command.APPEND_EVENTS_REPLY,
    ReplyKind.EVENTS_READ: Command.READ_EVENTS_REPLY,
    ReplyKind.KEY_REVOKED: Command.REVOKE_API_KEY_REPLY,
    ReplyKind.KEYS_LISTED: Command.LIST_API_KEYS_REPLY,
    _KEY_REPLY_KIND: Command.CREATE_API_KEY_REPLY,
}


def store_request(frame: Frame, principal: bytes, time_ms: int) -> bytes:
    """The event-store operation of a checked client request frame, made by the principal
    ``principal`` encodes (``encode_principal``), received at ``time_ms``."""
    kind = _STORE_KINDS[frame.command]
    return bytes([kind]) + principal + time_ms.to_bytes(8, "little") + frame.body


def _encode_body(message: CreateApiKeyReply) -> bytes:
    return encode(message, 0)[HEADER_SIZE:]


def wire_reply(store_reply: bytes, request_id: int) -> bytes | None:
    """The reply frame of a successful event-store reply; None for an error (whose store
    record carries more than the wire's ``ErrorReply``)."""
    command = _REPLY_COMMANDS.get(store_reply[0]) if store_reply else None
    if command is None:
        return None
    return encode_frame(command, request_id, store_reply[1:])
