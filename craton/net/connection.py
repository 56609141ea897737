"""One client connection speaking Craton's binary protocol (docs/PROTOCOL.md).

A ``ClientConnection`` reads frames, answers the handshake, turns each request into an
event-store operation for the ``ReplicaHost`` and writes each reply as soon as it is ready
(pipelining: replies carry their request's id and may come back in any order).

Rules it keeps:
- The first frame must be ``HANDSHAKE``; anything else gets ``INVALID_REQUEST`` with request
  id 0 and the connection is closed. Frames that arrive before the handshake is answered
  wait, and are served after it (reading stops meanwhile).
- A frame the decoder refuses (bad magic, version, checksum, size, command) is a connection
  error: ``ErrorReply`` with request id 0, then close. A sound frame whose body does not
  decode, or a request not valid here (a reply, a replica message, a second handshake, a
  write whose request id is above ``REQUEST_NUMBER_MAX``) gets an ``ErrorReply`` with its
  request id, and the connection goes on.
- In a cluster, only the primary takes requests: elsewhere they are refused with
  ``NOT_PRIMARY`` carrying the primary's ``host:port`` (``UNAVAILABLE`` while no primary is
  known), and the handshake reply names this replica and the cluster's size.
- Writes carry the request id to the host so that a retry is applied at most once; reads
  are applied at their own op; ``SYNC`` is answered once every request received before it
  on this connection has been answered.
- Frames are served in the order received, each once the connection may take it: at most
  ``INFLIGHT_REQUESTS_MAX`` requests are in flight, and the replies in flight (a read
  counts the largest reply it may get) and those written but not yet taken by the client
  stay under ``REPLY_BYTES_MAX`` (one request at least is always taken). While a frame
  waits, or the socket's send buffer is full, the connection stops reading: a client that
  does not take its replies holds a bounded amount of the node's memory.
- With a rate limit, each request after the handshake takes a token from a bucket of
  ``rate`` tokens per second holding at most ``max(1, rate)``; without one it is refused
  with ``RATE_LIMITED``.
- Authentication happens once, at the handshake (``craton.core.auth.authenticate`` with
  the clock's wall-clock time and this replica's API-key table): a refused credential gets
  ``AUTHENTICATION_FAILED`` with request id 0 and the connection is closed — one failed
  attempt per connection, counted in ``vdb_auth_failures_total``, logged and, on the
  primary, recorded in the audit stream of the credential's tenant (tenant 0 when nothing
  in it was genuine) — at most ``AUTH_FAILURE_RECORDS_PER_S`` a second node-wide, so that
  a flood of bad connections cannot turn into a flood of log writes (the log line says
  whether the refusal was audited). Each request then carries the connection's principal
  and the time it was received into the log, where the event store authorizes it (role,
  tenant, a key that was revoked or expired since): the same decision on every replica.
  A token's expiry is judged again at every frame served after the handshake, against
  the wall-clock time read then (no decision is cached): the connection ends at its first
  frame after the token ran out (``Principal.expires_ms``), refused as that token would be
  at a handshake, and a clock stepped back afterwards cannot revive it (it is closed).
- Time comes only from the connection's ``Clock`` (``craton.io.clock``): its monotonic
  time for request durations, the idle time and the rate limit, its wall-clock time for
  tokens, keys and audit stamps.
- An API key is drawn here (``secrets``) when an admin asks for one; only its hash enters
  the log, and the key goes back in the reply once.
- Nothing a client sent is ever logged or echoed: errors name fields, not contents.
"""

from __future__ import annotations

import asyncio
import collections
import re
import secrets
from collections.abc import Callable
from typing import Protocol

import attrs

from craton import __version__
from craton.core.auth import (
    API_KEY_SECRET_SIZE,
    TENANT_WITHOUT_AUTH,
    AuthMode,
    AuthRefusal,
    JwtPolicy,
    Principal,
    Refusal,
    authenticate,
    format_api_key,
    hash_api_key,
)
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
    PROTOCOL_VERSION,
    AppendEvents,
    Command,
    CreateStream,
    DecodeError,
    ErrorCode,
    ErrorReply,
    Frame,
    FrameDecoder,
    Handshake,
    HandshakeReply,
    ReadEvents,
    ReadEventsAsOf,
    Sync,
    SyncReply,
    decode_frame,
    encode,
    error_reply,
)
from craton.core.wire.codec import AnyMessage
from craton.core.wire.frame import encode_frame
from craton.core.wire.messages import (
    ADDRESS_SIZE_MAX,
    API_KEYS_LISTED_MAX,
    ERROR_MESSAGE_SIZE_MAX,
    EVENT_SIZE_MAX,
    CreateApiKey,
    CreateApiKeyReply,
    ListApiKeys,
    RevokeApiKey,
)
from craton.io.clock import SYSTEM_CLOCK, Clock, monotonic_s, realtime_ms
from craton.net.logs import EventLog
from craton.net.metrics import NodeMetrics
from craton.net.node import REQUEST_NUMBER_MAX, Applied, Outcome, Refused, ReplicaHost

INFLIGHT_REQUESTS_MAX = 1024  # per connection
REPLY_BYTES_MAX = 16 * 1024 * 1024  # replies of a connection in flight or unsent, at most
AUTH_FAILURE_RECORDS_PER_S = 20.0  # refused handshakes audited per second, node-wide
EOF_DRAIN_TIMEOUT_S = 30.0  # how long replies are still awaited after the client's EOF
_READ_REPLY_FIXED_BYTES = 8 + 8 + 4  # ReadEventsReply: from_offset, log_position, event count
_KEYS_REPLY_BYTES_MAX = HEADER_SIZE + 8 + 4 + API_KEYS_LISTED_MAX * 128  # an ApiKeyInfo < 128
_ADDRESS = re.compile(rf"[!-~]{{1,{ADDRESS_SIZE_MAX}}}")  # what ErrorReply.primary_address holds


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
    """``rate_per_s`` tokens a second, at most ``capacity`` saved up."""

    def __init__(self, rate_per_s: float, now_s: float) -> None:
        assert rate_per_s > 0
        self._rate = rate_per_s
        self._capacity = max(1.0, rate_per_s)
        self._tokens = self._capacity
        self._updated_s = now_s

    def take(self, now_s: float) -> bool:
        elapsed = max(0.0, now_s - self._updated_s)
        self._updated_s = now_s
        self._tokens = min(self._capacity, self._tokens + elapsed * self._rate)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


@attrs.define
class _Sync:
    seq: int
    request_id: int
    received_s: float


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
        self._decoder = FrameDecoder()
        self._client_id: int | None = None
        self._principal: Principal | None = None
        self._tenant_id = TENANT_WITHOUT_AUTH
        self._prefix = b""  # the principal's bytes in every store request (encode_principal)
        self._handshaking = False
        # frames received and not served yet, in order; a DecodeError ends the stream
        self._frames: collections.deque[tuple[Frame | DecodeError, float]] = collections.deque()
        self._advancing = False  # ``_advance`` is running (it is not entered twice)
        self._reserved_bytes = 0  # the largest replies the requests in flight may get
        self._closing = False
        now_s = monotonic_s(clock)
        self.last_active_s = now_s  # on the clock's monotonic time, as ``received_s`` is
        rate = owner.rate_limit_rps
        self._bucket = TokenBucket(rate, now_s) if rate is not None else None
        self._seq = 0
        self._open: dict[int, None] = {}  # seqs of requests in flight, oldest first
        self._syncs: collections.deque[_Sync] = collections.deque()
        # reading stops while frames wait or replies are not taken
        self._reading_paused = False
        self._draining: asyncio.Task[None] | None = None  # waits for the send buffer
        self._ended: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    @property
    def inflight(self) -> int:
        return len(self._open) + len(self._syncs)

    def _now_s(self) -> float:
        """Monotonic seconds: request durations, the idle time and the rate limit."""
        return monotonic_s(self._clock)

    def _now_ms(self) -> int:
        """Unix time in milliseconds: the time the core is given for tokens, keys and audit."""
        return realtime_ms(self._clock)

    # --- the read loop ---------------------------------------------------------------------

    async def run(self, first: bytes) -> None:
        """Serve the connection until it ends; ``first`` is what was read of it already."""
        if first:
            self._on_data(first)
        if not self._closing:
            held = await self._reader.attach(self._on_data, self._on_end)
            if held and not self._closing:
                self._on_data(held)
        eof = await self._ended
        if eof and not self._closing:
            await self._await_replies(EOF_DRAIN_TIMEOUT_S)
        self.close()

    def _on_data(self, data: bytes) -> None:
        if self._closing:
            return
        received_s = self._now_s()
        if self._receive(data, received_s):
            self.last_active_s = received_s  # a frame trickled in part by part is no activity
        self._advance()

    def _on_end(self, error: Exception | None) -> None:
        """The stream ended: at the client's EOF (``error`` None) replies are still
        awaited; after a connection error they cannot be sent."""
        if not self._ended.done():
            self._ended.set_result(error is None)

    def _receive(self, data: bytes, received_s: float) -> bool:
        """Decode the frames ``data`` completes into the queue of frames to serve; whether
        it completed one (or ended the stream with an error)."""
        frames = self._frames
        if frames and isinstance(frames[-1][0], DecodeError):
            return False  # the stream is out of step: nothing after the error is read
        queued = len(frames)
        try:
            self._decoder.feed(data)
            while (frame := self._decoder.next_frame()) is not None:
                frames.append((frame, received_s))
        except DecodeError as error:
            frames.append((error, received_s))
        return len(frames) > queued

    def _advance(self) -> None:
        """Serve the waiting frames, in order, while the connection may take requests; then
        stop or restart reading."""
        if self._advancing:
            return  # called back from inside the loop below, which goes on by itself
        self._advancing = True
        try:
            frames = self._frames
            while frames and not self._closing and self._admits():
                item, received_s = frames.popleft()
                if isinstance(item, DecodeError):
                    self._bad_frame(item)
                else:
                    self._on_frame(item, received_s)
        finally:
            self._advancing = False
        self._throttle()

    def _admits(self) -> bool:
        """Whether the next frame may be served now (see the module's rules)."""
        if self._handshaking or len(self._open) + len(self._syncs) >= INFLIGHT_REQUESTS_MAX:
            return False
        unsent = self._transport.get_write_buffer_size()
        return self._reserved_bytes + unsent < REPLY_BYTES_MAX

    def _throttle(self) -> None:
        """Read while no frame waits and the socket's send buffer is not full (the client
        takes its replies); a full buffer is waited for (``_drain``)."""
        if self._closing:
            return
        transport = self._transport
        _, high = transport.get_write_buffer_limits()
        full = transport.get_write_buffer_size() > high
        if full and self._draining is None:
            self._draining = asyncio.create_task(self._drain())
        pause = full or bool(self._frames)
        if pause == self._reading_paused:
            return
        self._reading_paused = pause
        if pause:
            transport.pause_reading()  # type: ignore[attr-defined]
        else:
            transport.resume_reading()  # type: ignore[attr-defined]

    async def _drain(self) -> None:
        try:
            await self._writer.drain()
        except (ConnectionError, OSError):
            self._on_end(OSError("the connection broke while replies were sent"))
            return
        finally:
            self._draining = None
        self._advance()

    def _bad_frame(self, error: DecodeError) -> None:
        self._metrics.observe_request("Frame", error.code, 0.0)
        self._owner.log.debug("connection.bad_frame", peer=self.peer, reason=error.reason)
        self._fail(error_reply(error))

    def close(self) -> None:
        """Close the socket after what was written so far has been sent."""
        self._closing = True
        if not self._ended.done():
            self._ended.set_result(False)
        if not self._writer.is_closing():
            self._writer.close()

    def refuse(self, why: str) -> None:
        """Turn the connection away before serving it (a connection error)."""
        self._fail(ErrorReply(ErrorCode.UNAVAILABLE, why, None))

    def close_idle(self, idle_s: float) -> None:
        message = f"closed after {idle_s:.0f} s without requests"
        self._fail(ErrorReply(ErrorCode.UNAVAILABLE, message, None))

    def _fail(self, reply: ErrorReply) -> None:
        """A connection error: answer with request id 0, then close."""
        self._write(encode(reply, 0))
        self.close()

    async def _await_replies(self, timeout_s: float) -> None:
        deadline_s = self._now_s() + timeout_s
        while (
            (self.inflight or self._frames)
            and self._now_s() < deadline_s
            and not self._writer.is_closing()
        ):
            await asyncio.sleep(0.01)

    # --- frames ----------------------------------------------------------------------------

    def _on_frame(self, frame: Frame, received_s: float) -> None:
        if self._client_id is None:
            self._on_handshake(frame, received_s)
            return
        if self._credential_expired(received_s):
            return
        method = _method(frame.command)
        if frame.command == Command.HANDSHAKE:
            self._refuse(
                frame,
                method,
                received_s,
                ErrorCode.INVALID_REQUEST,
                "the connection's handshake was done already",
            )
            return
        if self._owner.shutting_down:
            self._refuse(
                frame, method, received_s, ErrorCode.UNAVAILABLE, "the node is shutting down"
            )
            return
        if self._bucket is not None and not self._bucket.take(received_s):
            self._refuse(
                frame,
                method,
                received_s,
                ErrorCode.RATE_LIMITED,
                "too many requests on this connection; retry later",
            )
            return
        try:
            message = decode_frame(frame)
        except DecodeError as error:
            self._refuse(frame, method, received_s, error.code, error.reason)
            return
        self._on_request(frame, message, method, received_s)

    def _on_request(
        self, frame: Frame, message: AnyMessage, method: str, received_s: float
    ) -> None:
        client_id = self._client_id
        assert client_id is not None
        request_id = frame.request_id
        match message:
            case CreateStream() | AppendEvents() | RevokeApiKey() | CreateApiKey():
                if not 1 <= request_id <= REQUEST_NUMBER_MAX:
                    self._refuse(
                        frame,
                        method,
                        received_s,
                        ErrorCode.INVALID_REQUEST,
                        f"a write's request id must be in 1..{REQUEST_NUMBER_MAX}",
                    )
                    return
                done = self._tracked(request_id, method, received_s)
                if isinstance(message, CreateApiKey):
                    body, done = self._create_key(message, done)
                else:
                    body = store_request(frame, self._prefix, self._now_ms())
                self._host.submit_write(self._tenant_id, client_id, request_id, body, done)
            case ReadEvents() | ReadEventsAsOf() | ListApiKeys():
                body = store_request(frame, self._prefix, self._now_ms())
                reserved = _reply_bytes_max(message)
                done = self._tracked(request_id, method, received_s, reserved)
                self._host.submit_read(body, done)
            case Sync():
                self._syncs.append(_Sync(self._seq, request_id, received_s))
                self._seq += 1
                self._release_syncs()
            case _:
                self._refuse(
                    frame,
                    method,
                    received_s,
                    ErrorCode.INVALID_REQUEST,
                    f"{frame.command.name} is not a request a client may send",
                )

    def _create_key(
        self, message: CreateApiKey, done: Callable[[Outcome], None]
    ) -> tuple[bytes, Callable[[Outcome], None]]:
        """The store request that creates a fresh key, and the ``done`` that hands the key
        to the client: the log and the replies of the replicas only ever see its hash."""
        principal = self._principal
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

    def _on_handshake(self, frame: Frame, received_s: float) -> None:
        if frame.command != Command.HANDSHAKE:
            self._metrics.observe_request(_method(frame.command), ErrorCode.INVALID_REQUEST, 0.0)
            self._fail(_error(ErrorCode.INVALID_REQUEST, "the first request must be HANDSHAKE"))
            return
        try:
            handshake = decode_frame(frame)
        except DecodeError as error:
            self._metrics.observe_request("Handshake", error.code, 0.0)
            self._fail(error_reply(error))
            return
        assert isinstance(handshake, Handshake)
        self._handshaking = True
        # API keys are looked up in the replicated table: wait until the log is read back
        self._host.when_recovered(lambda: self._authenticate(handshake, frame, received_s))

    def _authenticate(self, handshake: Handshake, frame: Frame, received_s: float) -> None:
        if self._closing:
            return
        if self._host.halted is not None:  # its key table may be incomplete: say why instead
            self._metrics.observe_request("Handshake", ErrorCode.UNAVAILABLE, 0.0)
            self._fail(_error(ErrorCode.UNAVAILABLE, "the node stopped after a fault"))
            return
        owner = self._owner
        principal = authenticate(
            owner.auth_mode, handshake.auth_token, self._now_ms(), owner.jwt_policy, self._host
        )
        if isinstance(principal, AuthRefusal):
            self._refuse_credential(principal, received_s)
            return
        self._principal = principal
        self._tenant_id = principal.tenant_id
        self._prefix = encode_principal(
            principal.tenant_id, principal.role, principal.key_id, principal.subject
        )
        client_id = handshake.client_id

        def ready(refusal: Refused | None) -> None:
            duration_s = self._now_s() - received_s
            if refusal is not None:
                self._metrics.observe_request("Handshake", refusal.code, duration_s)
                self._fail(_error(refusal.code, refusal.message, refusal.primary_address))
                return
            self._client_id = client_id
            self._handshaking = False
            reply = HandshakeReply(
                protocol_version=min(handshake.protocol_version, PROTOCOL_VERSION),
                server_version=__version__,
                replica_id=self._host.replica_id,
                cluster_size=self._host.cluster_size,
                view=self._host.view,
            )
            self._write(encode(reply, frame.request_id))
            self._metrics.observe_request("Handshake", None, duration_s)
            self._advance()  # the frames that came after the handshake

        self._host.open_session(self._tenant_id, client_id, ready)

    def _credential_expired(self, received_s: float) -> bool:
        """Whether the token this connection authenticated with has run out since; if so the
        connection ends as a handshake with that token would (``Principal.expires_ms``)."""
        principal = self._principal
        if principal is None or principal.expires_ms is None:
            return False
        if self._now_ms() <= principal.expires_ms:
            return False
        expired = AuthRefusal(Refusal.EXPIRED, principal.tenant_id, principal.subject)
        self._refuse_credential(expired, received_s)
        return True

    def _refuse_credential(self, refusal: AuthRefusal, received_s: float) -> None:
        """One failed authentication: count it, log it, audit it, close the connection."""
        self._metrics.auth_failures.labels(refusal.reason.name.lower()).inc()
        duration_s = self._now_s() - received_s
        self._metrics.observe_request("Handshake", ErrorCode.AUTHENTICATION_FAILED, duration_s)
        audited = self._owner.auth_failure_records.take(self._now_s())
        self._owner.log.warn(
            "connection.auth_failed",
            peer=self.peer,
            reason=refusal.reason.name.lower(),
            audited=audited and self._host.serving,
        )
        if audited:
            tenant = TENANT_WITHOUT_AUTH if refusal.tenant_id is None else refusal.tenant_id
            record = AuthFailure(refusal.subject or "", refusal.reason.name.lower())
            subject = f"connection from {self.peer}"[:64]
            self._host.submit_record(
                encode_request(
                    StoreRequest(tenant, record, subject=subject, time_ms=self._now_ms())
                )
            )
        self._fail(_error(ErrorCode.AUTHENTICATION_FAILED, refusal.message))

    # --- replies ---------------------------------------------------------------------------

    def _tracked(
        self, request_id: int, method: str, received_s: float, reserved_bytes: int = 0
    ) -> Callable[[Outcome], None]:
        """The ``done`` of a request in flight, whose reply may be up to ``reserved_bytes``
        long (counted against ``REPLY_BYTES_MAX`` until it is written)."""
        seq = self._seq
        self._seq += 1
        self._open[seq] = None
        self._reserved_bytes += reserved_bytes

        def done(outcome: Outcome) -> None:
            if seq in self._open:
                del self._open[seq]
                self._reserved_bytes -= reserved_bytes
            code = self._answer(request_id, outcome)
            self._metrics.observe_request(method, code, self._now_s() - received_s)
            self._release_syncs()
            if self._frames or self._reading_paused:
                self._advance()

        return done

    def _answer(self, request_id: int, outcome: Outcome) -> ErrorCode | None:
        """Write the reply to ``request_id``; returns its error code (None for success)."""
        if isinstance(outcome, Refused):
            error = _error(outcome.code, outcome.message, outcome.primary_address)
            self._write(encode(error, request_id))
            return outcome.code
        assert isinstance(outcome, Applied)
        spliced = wire_reply(outcome.reply, request_id)
        if spliced is not None:
            self._write(spliced)
            return None
        try:
            reply = to_wire_reply(decode_reply(outcome.reply))
            frame = encode(reply, request_id)
        except (DecodeError, ValueError) as error:
            self._owner.log.error("connection.bad_store_reply", reason=str(error))
            self._write(
                encode(
                    _error(ErrorCode.INTERNAL, "the node could not encode its reply"), request_id
                )
            )
            return ErrorCode.INTERNAL
        self._write(frame)
        return reply.code if isinstance(reply, ErrorReply) else None

    def _release_syncs(self) -> None:
        if not self._syncs:
            return
        oldest_open = next(iter(self._open), None)
        while self._syncs and (oldest_open is None or self._syncs[0].seq < oldest_open):
            sync = self._syncs.popleft()
            self._write(encode(SyncReply(self._host.commit), sync.request_id))
            self._metrics.observe_request("Sync", None, self._now_s() - sync.received_s)

    def _refuse(
        self, frame: Frame, method: str, received_s: float, code: ErrorCode, message: str
    ) -> None:
        self._write(encode(_error(code, message), frame.request_id))
        self._metrics.observe_request(method, code, self._now_s() - received_s)

    def _write(self, data: bytes) -> None:
        self.last_active_s = self._now_s()
        if not self._writer.is_closing():
            self._writer.write(data)


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


def _reply_bytes_max(message: ReadEvents | ReadEventsAsOf | ListApiKeys) -> int:
    """The longest reply frame ``message`` may get: a read's events (at most ``max_bytes``
    of them, unless the first alone is larger) with their length fields, or a whole key list."""
    if isinstance(message, ListApiKeys):
        return _KEYS_REPLY_BYTES_MAX
    events_bytes = max(message.max_bytes, EVENT_SIZE_MAX) + 4 * message.max_events
    return HEADER_SIZE + _READ_REPLY_FIXED_BYTES + events_bytes


def _error(code: ErrorCode, message: str, primary_address: str | None = None) -> ErrorReply:
    """An error reply; ``primary_address`` is kept only with ``NOT_PRIMARY`` and only when
    the wire can carry it."""
    cut = message.encode("utf-8")[:ERROR_MESSAGE_SIZE_MAX].decode("utf-8", errors="ignore")
    address = primary_address if code is ErrorCode.NOT_PRIMARY else None
    if address is not None and not _ADDRESS.fullmatch(address):
        address = None
    return ErrorReply(code, cut, address)


_METHODS = {
    Command.HANDSHAKE: "Handshake",
    Command.CREATE_STREAM: "CreateStream",
    Command.APPEND_EVENTS: "AppendEvents",
    Command.READ_EVENTS: "ReadEvents",
    Command.READ_EVENTS_AS_OF: "ReadEventsAsOf",
    Command.SYNC: "Sync",
    Command.CREATE_API_KEY: "CreateApiKey",
    Command.REVOKE_API_KEY: "RevokeApiKey",
    Command.LIST_API_KEYS: "ListApiKeys",
}


def _method(command: Command) -> str:
    """The ``method`` label of a command: its message name, ``Other`` for non-requests."""
    return _METHODS.get(command, "Other")
