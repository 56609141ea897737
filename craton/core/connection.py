"""A client connection's protocol as a pure object: the node's side of one connection
speaking Craton's binary protocol (docs/PROTOCOL.md), with no sockets, tasks or clocks.

``ConnectionProtocol`` is a sans-I/O machine in the manner of h11. Its adapter
(``craton.net.connection.ClientConnection``) hands it the bytes received
(``receive_data``), asks it for the next frame's effects (``serve_next``, pulled one frame
at a time, h11's ``next_event``), reports what the node made of a request (``on_answered``,
``on_session_opened`` and the other handshake answers), and carries out the effects it
returns, in list order. Time is always passed in: ``now_ns`` on a monotonic clock,
``wall_ms`` in Unix milliseconds (tokens). What it leaves to the node: authentication
itself, sessions, the store requests and their replies, the metrics, logs and audit.

Rules it keeps:
- Framing: received bytes become a queue of frames (``craton.core.wire.FrameDecoder``),
  served in the order received. A frame the decoder refuses (bad magic, version, checksum,
  size, command) ends the stream: nothing after it is read, and when its turn comes it is
  answered by ``ErrorReply`` with request id 0 and the connection is closed. The queue
  holds what was received since reading stopped (``PauseReading``), a chunk or two of
  the socket's: the adapter's pause, not a count here, is what bounds it.
- Handshake first: the first frame must be a ``HANDSHAKE`` whose body decodes, or it is
  answered with request id 0 and the connection closed. While the node authenticates it and
  opens the session (``StartHandshake``) nothing else is served; the frames that come
  meanwhile wait. A second handshake is refused with its request id.
- After the handshake each frame is judged, in this order: the token's expiry
  (``Principal.expires_ms`` against ``wall_ms`` when it is served, and against a deadline
  on the monotonic clock taken when the connection opened, so that a wall clock stepped
  back does not extend it: past either, the connection ends as a handshake with that
  token would), a second handshake, the node shutting down,
  the rate limit, the body's decoding, then the kind of request. A refusal answers with the
  frame's request id and the connection goes on.
- Admission (flow control): a frame is served only while fewer than
  ``inflight_requests_max`` requests (syncs included) are in flight and the reply bytes
  reserved for the reads in flight (the largest reply each may get) plus those written and
  not yet taken by the client (``Conditions.unsent_bytes``) are under ``reply_bytes_max``:
  one request at least is always taken, so the reserved bytes stay under
  ``reply_bytes_max + RESERVATION_BYTES_MAX``. Reading stops (``PauseReading``) while a frame
  waits or the send buffer is full, and a full buffer is waited for (``AwaitDrain``).
- Sync barrier: a ``SYNC`` is answered (``AnswerSync``) once every request received before
  it on this connection has been answered, and at once if none is open; other replies go
  out as soon as the node answers them (pipelining: any order).
- Writes carry a request id in ``1..request_number_max`` (the node's session table), or they
  are refused with ``INVALID_REQUEST``. A write is a first attempt (``SubmitWrite.fresh``)
  unless its frame has ``FLAG_RETRY`` or the connection forwarded that id, or a higher one,
  before (``craton.core.gateway.RequestFreshness``).
- Rate limit: with ``rate_limit_rps``, each request after the handshake takes a token from
  a ``TokenBucket`` at the time it was received; without one it gets ``RATE_LIMITED``.
- Idle: with nothing in flight, a connection whose last whole frame received or last reply
  written is ``idle_timeout_ns`` old is closed with ``UNAVAILABLE`` (``idle_deadline_ns``,
  ``on_tick``). After the client's EOF its replies are awaited ``EOF_DRAIN_TIMEOUT_NS`` at
  most (``settled``).
- Once closed (by a ``Close`` it returned, or ``on_close``), it emits nothing more: answers
  that still come free their slot and are dropped.
"""

from __future__ import annotations

import collections
import enum
import re

import attrs

from craton import __version__
from craton.core.auth import AuthRefusal, Principal, Refusal
from craton.core.gateway import RequestFreshness
from craton.core.wire import (
    FLAG_RETRY,
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
    decode_frame,
    encode,
    error_reply,
)
from craton.core.wire.codec import AnyMessage
from craton.core.wire.messages import (
    ADDRESS_SIZE_MAX,
    API_KEYS_LISTED_MAX,
    ERROR_MESSAGE_SIZE_MAX,
    EVENT_SIZE_MAX,
    READ_EVENTS_MAX,
    READ_SIZE_MAX,
    CreateApiKey,
    ListApiKeys,
    RevokeApiKey,
)

NS_PER_S = 1_000_000_000
NS_PER_MS = 1_000_000
INFLIGHT_REQUESTS_MAX = 1024  # per connection
REPLY_BYTES_MAX = 16 * 1024 * 1024  # replies of a connection in flight or unsent, at most
EOF_DRAIN_TIMEOUT_NS = 30 * NS_PER_S  # how long replies are still awaited after the EOF
_READ_REPLY_FIXED_BYTES = 8 + 8 + 4  # ReadEventsReply: from_offset, log_position, event count
_KEYS_REPLY_BYTES_MAX = HEADER_SIZE + 8 + 4 + API_KEYS_LISTED_MAX * 128  # an ApiKeyInfo < 128
# the largest reservation one read may make (``reply_bytes_max``)
RESERVATION_BYTES_MAX = max(
    _KEYS_REPLY_BYTES_MAX,
    HEADER_SIZE
    + _READ_REPLY_FIXED_BYTES
    + max(READ_SIZE_MAX, EVENT_SIZE_MAX)
    + 4 * READ_EVENTS_MAX,
)
_ADDRESS = re.compile(rf"[!-~]{{1,{ADDRESS_SIZE_MAX}}}")  # what ErrorReply.primary_address holds

WriteRequest = CreateStream | AppendEvents | RevokeApiKey | CreateApiKey
ReadRequest = ReadEvents | ReadEventsAsOf | ListApiKeys


class ConnectionState(enum.Enum):
    AWAITING_HANDSHAKE = "awaiting_handshake"  # no frame served yet
    HANDSHAKING = "handshaking"  # the node authenticates and opens the session
    OPEN = "open"  # requests are served
    CLOSED = "closed"  # nothing more is emitted


class ConnectionMisuse(Exception):
    """The adapter called the protocol in a way its contract rules out (a bug there)."""


# --- inputs --------------------------------------------------------------------------------


@attrs.frozen
class Conditions:
    """What serving a frame depends on besides the protocol's own state, at this moment."""

    now_ns: int  # monotonic
    wall_ms: int  # Unix milliseconds: a token's expiry is judged by it
    unsent_bytes: int  # written to the socket and not yet taken by the client
    shutting_down: bool = False


# --- effects -------------------------------------------------------------------------------


@attrs.frozen
class Send:
    """Write this frame."""

    data: bytes


@attrs.frozen
class Close:
    """Write ``reply`` with request id 0 (when there is one), then close the connection."""

    reply: ErrorReply | None


@attrs.frozen
class BadFrame:
    """The decoder refused the stream here (``Close`` follows); ``reason`` names no content."""

    code: ErrorCode
    reason: str


@attrs.frozen
class RequestDone:
    """A request the protocol answered itself, for the metrics: ``code`` None for success;
    its duration runs from ``received_ns`` (None: a connection error, counted as 0 s)."""

    method: str
    code: ErrorCode | None
    received_ns: int | None


@attrs.frozen
class StartHandshake:
    """Authenticate ``handshake`` and open its session; answer with ``on_session_opened``,
    ``on_session_refused``, ``on_credential_refused`` or ``on_node_halted``. ``request_id``
    is the handshake frame's."""

    handshake: Handshake
    request_id: int


@attrs.frozen
class RefuseCredential:
    """A credential was refused (at the handshake, or a token ran out since): count, log and
    audit it. ``Close`` follows."""

    refusal: AuthRefusal
    received_ns: int


@attrs.frozen
class SubmitWrite:
    """Hand the write in ``frame`` to the node; answer with ``on_answered(seq, ...)``."""

    seq: int
    request_id: int
    message: WriteRequest
    frame: Frame
    received_ns: int
    fresh: bool = False  # sent for the first time (``craton.core.gateway.RequestFreshness``)


@attrs.frozen
class SubmitRead:
    """Hand the read in ``frame`` to the node; answer with ``on_answered(seq, ...)``."""

    seq: int
    request_id: int
    frame: Frame
    received_ns: int


@attrs.frozen
class AnswerSync:
    """Answer the ``SYNC`` with ``request_id``: every request before it has been answered."""

    request_id: int
    received_ns: int


@attrs.frozen
class PauseReading:
    """Stop reading from the socket."""


@attrs.frozen
class ResumeReading:
    """Read from the socket again."""


@attrs.frozen
class AwaitDrain:
    """Wait for the send buffer to drain; then ``on_drained`` and serve again."""


Effect = (
    Send
    | Close
    | BadFrame
    | RequestDone
    | StartHandshake
    | RefuseCredential
    | SubmitWrite
    | SubmitRead
    | AnswerSync
    | PauseReading
    | ResumeReading
    | AwaitDrain
)


# --- the token bucket ----------------------------------------------------------------------


class TokenBucket:
    """``rate_per_s`` tokens a second, at most ``max(1, rate_per_s)`` saved up. Time is given
    (monotonic ``now_ns``); time that goes backwards adds no tokens."""

    def __init__(self, rate_per_s: float, now_ns: int) -> None:
        assert rate_per_s > 0
        self._rate_per_s = rate_per_s
        self._capacity = max(1.0, rate_per_s)
        self._tokens = self._capacity
        self._updated_ns = now_ns

    def take(self, now_ns: int) -> bool:
        elapsed_ns = max(0, now_ns - self._updated_ns)
        self._updated_ns = now_ns
        self._tokens = min(self._capacity, self._tokens + elapsed_ns * self._rate_per_s / NS_PER_S)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


# --- the protocol --------------------------------------------------------------------------


@attrs.frozen
class _Refused:
    """Where the decoder refused the stream, in the queue of frames."""

    reply: ErrorReply
    reason: str


@attrs.frozen
class _Sync:
    seq: int
    request_id: int
    received_ns: int


@attrs.frozen
class _PendingHandshake:
    handshake: Handshake
    request_id: int
    received_ns: int
    served_ns: int  # the monotonic and wall clocks when it was served, read together
    served_wall_ms: int


class ConnectionProtocol:
    """One client connection's protocol state (see the module's rules)."""

    def __init__(
        self,
        now_ns: int,
        *,
        request_number_max: int,
        rate_limit_rps: float | None = None,
        inflight_requests_max: int = INFLIGHT_REQUESTS_MAX,
        reply_bytes_max: int = REPLY_BYTES_MAX,
    ) -> None:
        assert request_number_max >= 1 and inflight_requests_max >= 1 and reply_bytes_max >= 1
        self._request_number_max = request_number_max
        self._inflight_requests_max = inflight_requests_max
        self._reply_bytes_max = reply_bytes_max
        self._bucket = TokenBucket(rate_limit_rps, now_ns) if rate_limit_rps is not None else None
        self.state = ConnectionState.AWAITING_HANDSHAKE
        self.principal: Principal | None = None
        self._handshake: _PendingHandshake | None = None
        self._freshness = RequestFreshness()
        self._expires_at_ns: int | None = None  # the token's expiry on the monotonic clock
        self._decoder = FrameDecoder()
        # frames received and not served yet, in order, with the time each was received; a
        # refusal of the decoder ends the stream
        self._frames: collections.deque[tuple[Frame | _Refused, int]] = collections.deque()
        self._seq = 0
        self._open: dict[int, int] = {}  # seq of a request in flight -> its reserved bytes
        self._syncs: collections.deque[_Sync] = collections.deque()
        self.reserved_bytes = 0  # the largest replies the requests in flight may get
        self.last_active_ns = now_ns  # the last whole frame received or reply written
        self.reading_paused = False
        self._awaiting_drain = False
        self._eof_deadline_ns: int | None = None

    # --- what the adapter may ask -------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self.state is ConnectionState.CLOSED

    @property
    def inflight(self) -> int:
        """Requests handed to the node or waiting at the sync barrier, not answered yet."""
        return len(self._open) + len(self._syncs)

    @property
    def frames_waiting(self) -> int:
        return len(self._frames)

    @property
    def stalled(self) -> bool:
        """Whether frames wait or reading is paused: an answer may let them go on."""
        return bool(self._frames) or self.reading_paused

    def idle_deadline_ns(self, idle_timeout_ns: int) -> int | None:
        """When the connection counts as idle, unless something happens first; None while
        requests are in flight (or once it is closed)."""
        if self.closed or self.inflight:
            return None
        return self.last_active_ns + idle_timeout_ns

    def settled(self, now_ns: int) -> bool:
        """After the client's EOF (``on_eof``): whether nothing is awaited any more, because
        everything received was answered or ``EOF_DRAIN_TIMEOUT_NS`` passed."""
        assert self._eof_deadline_ns is not None, "settled is asked after on_eof"
        if self.closed or not (self.inflight or self._frames):
            return True
        return now_ns >= self._eof_deadline_ns

    def invariants(self) -> None:
        assert self.inflight <= self._inflight_requests_max, self.inflight
        assert 0 <= self.reserved_bytes == sum(self._open.values()), self.reserved_bytes
        assert self.reserved_bytes < self._reply_bytes_max + RESERVATION_BYTES_MAX
        assert list(self._open) == sorted(self._open), "requests in flight, oldest first"
        assert all(a.seq < b.seq for a, b in zip(self._syncs, list(self._syncs)[1:], strict=False))
        if self.state is not ConnectionState.OPEN:
            assert (not self._open and not self._syncs) or self.closed
        refusals = [i for i, (item, _) in enumerate(self._frames) if isinstance(item, _Refused)]
        assert refusals in ([], [len(self._frames) - 1]), "nothing is queued after a refusal"

    # --- inputs -----------------------------------------------------------------------------

    def receive_data(self, data: bytes, now_ns: int) -> None:
        """Bytes received. They only queue frames (``serve_next`` serves them); a frame they
        complete, or a refusal, makes the connection active at ``now_ns``."""
        if self.closed:
            return
        frames = self._frames
        if frames and isinstance(frames[-1][0], _Refused):
            return  # the stream is out of step: nothing after the refusal is read
        queued = len(frames)
        try:
            self._decoder.feed(data)
            while (frame := self._decoder.next_frame()) is not None:
                frames.append((frame, now_ns))
        except DecodeError as error:
            frames.append((_Refused(error_reply(error), error.reason), now_ns))
        if len(frames) > queued:
            self.last_active_ns = now_ns  # a frame trickled in part by part is no activity

    def serve_next(self, now: Conditions) -> list[Effect] | None:
        """The effects of serving the next frame waiting, if the connection may take it now;
        None when no frame waits or it may not (the adapter stops asking until something
        changes: data, an answer, a drained buffer)."""
        if not self._frames or not self._admits(now.unsent_bytes):
            return None
        item, received_ns = self._frames.popleft()
        if isinstance(item, _Refused):
            reply = item.reply
            return [
                RequestDone("Frame", reply.code, None),
                BadFrame(reply.code, item.reason),
                *self._close(reply, now.now_ns),
            ]
        if self.state is ConnectionState.AWAITING_HANDSHAKE:
            return self._on_first_frame(item, received_ns, now)
        return self._on_frame(item, received_ns, now)

    def throttle(self, send_buffer_full: bool) -> list[Effect]:
        """After serving: read while no frame waits and the send buffer is not full; wait for
        a full one to drain."""
        if self.closed:
            return []
        effects: list[Effect] = []
        if send_buffer_full and not self._awaiting_drain:
            self._awaiting_drain = True
            effects.append(AwaitDrain())
        pause = send_buffer_full or bool(self._frames)
        if pause != self.reading_paused:
            self.reading_paused = pause
            effects.append(PauseReading() if pause else ResumeReading())
        return effects

    def on_drained(self) -> None:
        """The wait of ``AwaitDrain`` ended (the buffer drained, or the connection broke)."""
        self._awaiting_drain = False

    def on_session_opened(
        self, principal: Principal, replica_id: int, cluster_size: int, view: int, now_ns: int
    ) -> list[Effect]:
        """The node authenticated the handshake as ``principal`` and opened its session."""
        pending = self._pending_handshake()
        if pending is None:
            return []
        self.state = ConnectionState.OPEN
        self.principal = principal
        if principal.expires_ms is not None:
            # The token's expiry as a monotonic deadline too: a wall clock stepped back
            # later cannot lend it time it did not have when the connection opened.
            left_ms = max(0, principal.expires_ms - pending.served_wall_ms)
            self._expires_at_ns = pending.served_ns + left_ms * NS_PER_MS
        reply = HandshakeReply(
            protocol_version=min(pending.handshake.protocol_version, PROTOCOL_VERSION),
            server_version=__version__,
            replica_id=replica_id,
            cluster_size=cluster_size,
            view=view,
        )
        return [
            self._send(encode(reply, pending.request_id), now_ns),
            RequestDone("Handshake", None, pending.received_ns),
        ]

    def on_session_refused(
        self, code: ErrorCode, message: str, primary_address: str | None, now_ns: int
    ) -> list[Effect]:
        """The node would not open the session (not the primary, unavailable, ...)."""
        pending = self._pending_handshake()
        if pending is None:
            return []
        reply = make_error_reply(code, message, primary_address)
        return [RequestDone("Handshake", code, pending.received_ns), *self._close(reply, now_ns)]

    def on_node_halted(self, now_ns: int) -> list[Effect]:
        """The node stopped after a fault: its key table may be incomplete, so say why
        rather than judge the credential."""
        if self._pending_handshake() is None:
            return []
        reply = make_error_reply(ErrorCode.UNAVAILABLE, "the node stopped after a fault")
        return [RequestDone("Handshake", ErrorCode.UNAVAILABLE, None), *self._close(reply, now_ns)]

    def on_credential_refused(self, refusal: AuthRefusal, now_ns: int) -> list[Effect]:
        """The handshake's credential was refused."""
        pending = self._pending_handshake()
        if pending is None:
            return []
        return self._refuse_credential(refusal, pending.received_ns, now_ns)

    def on_answered(self, seq: int, reply: bytes, now_ns: int) -> list[Effect]:
        """The node answered the request ``seq`` (of ``SubmitWrite`` or ``SubmitRead``) with
        the frame ``reply``; the syncs it was holding back follow it."""
        if seq not in self._open:
            raise ConnectionMisuse(f"request {seq} is not in flight (answered twice?)")
        self.reserved_bytes -= self._open.pop(seq)
        if self.closed:
            return []
        return [self._send(reply, now_ns), *self._release_syncs(now_ns)]

    def on_eof(self, now_ns: int) -> None:
        """The client sent its EOF: what it sent is still answered, for a while (``settled``)."""
        self._eof_deadline_ns = now_ns + EOF_DRAIN_TIMEOUT_NS

    def on_tick(self, now_ns: int, idle_timeout_ns: int) -> list[Effect]:
        """Time passed: an idle connection is closed (``idle_deadline_ns``)."""
        deadline_ns = self.idle_deadline_ns(idle_timeout_ns)
        if deadline_ns is None or now_ns < deadline_ns:
            return []
        return self.close_idle(idle_timeout_ns, now_ns)

    def close_idle(self, idle_timeout_ns: int, now_ns: int) -> list[Effect]:
        """Close the connection for having been idle ``idle_timeout_ns``."""
        message = f"closed after {idle_timeout_ns / NS_PER_S:.0f} s without requests"
        return self._close(ErrorReply(ErrorCode.UNAVAILABLE, message, None), now_ns)

    def refuse(self, why: str, now_ns: int) -> list[Effect]:
        """Turn the connection away before serving it (a connection error)."""
        return self._close(ErrorReply(ErrorCode.UNAVAILABLE, why, None), now_ns)

    def on_close(self) -> None:
        """The adapter closed the connection: nothing more is emitted."""
        self.state = ConnectionState.CLOSED

    # --- frames -------------------------------------------------------------------------

    def _admits(self, unsent_bytes: int) -> bool:
        """Whether the next frame may be served now (see the module's rules)."""
        if self.state in (ConnectionState.HANDSHAKING, ConnectionState.CLOSED):
            return False
        if self.inflight >= self._inflight_requests_max:
            return False
        return self.reserved_bytes + unsent_bytes < self._reply_bytes_max

    def _on_first_frame(self, frame: Frame, received_ns: int, now: Conditions) -> list[Effect]:
        now_ns = now.now_ns
        if frame.command != Command.HANDSHAKE:
            reply = make_error_reply(
                ErrorCode.INVALID_REQUEST, "the first request must be HANDSHAKE"
            )
            method = method_name(frame.command)
            return [RequestDone(method, reply.code, None), *self._close(reply, now_ns)]
        try:
            handshake = decode_frame(frame)
        except DecodeError as error:
            return [
                RequestDone("Handshake", error.code, None),
                *self._close(error_reply(error), now_ns),
            ]
        assert isinstance(handshake, Handshake)
        self.state = ConnectionState.HANDSHAKING
        self._handshake = _PendingHandshake(
            handshake, frame.request_id, received_ns, now_ns, now.wall_ms
        )
        self._freshness = RequestFreshness()
        return [StartHandshake(handshake, frame.request_id)]

    def _on_frame(self, frame: Frame, received_ns: int, now: Conditions) -> list[Effect]:
        expired = self._expired(now)
        if expired is not None:
            return self._refuse_credential(expired, received_ns, now.now_ns)
        if frame.command == Command.HANDSHAKE:
            why = "the connection's handshake was done already"
            return self._refuse(frame, received_ns, ErrorCode.INVALID_REQUEST, why, now.now_ns)
        if now.shutting_down:
            why = "the node is shutting down"
            return self._refuse(frame, received_ns, ErrorCode.UNAVAILABLE, why, now.now_ns)
        if self._bucket is not None and not self._bucket.take(received_ns):
            why = "too many requests on this connection; retry later"
            return self._refuse(frame, received_ns, ErrorCode.RATE_LIMITED, why, now.now_ns)
        try:
            message = decode_frame(frame)
        except DecodeError as error:
            return self._refuse(frame, received_ns, error.code, error.reason, now.now_ns)
        return self._on_request(frame, message, received_ns, now.now_ns)

    def _on_request(
        self, frame: Frame, message: AnyMessage, received_ns: int, now_ns: int
    ) -> list[Effect]:
        request_id = frame.request_id
        match message:
            case CreateStream() | AppendEvents() | RevokeApiKey() | CreateApiKey():
                if not 1 <= request_id <= self._request_number_max:
                    why = f"a write's request id must be in 1..{self._request_number_max}"
                    return self._refuse(frame, received_ns, ErrorCode.INVALID_REQUEST, why, now_ns)
                fresh = self._freshness.fresh(request_id, retry=bool(frame.flags & FLAG_RETRY))
                seq = self._track(0)
                return [SubmitWrite(seq, request_id, message, frame, received_ns, fresh)]
            case ReadEvents() | ReadEventsAsOf() | ListApiKeys():
                seq = self._track(reply_bytes_max(message))
                return [SubmitRead(seq, request_id, frame, received_ns)]
            case Sync():
                self._syncs.append(_Sync(self._seq, request_id, received_ns))
                self._seq += 1
                return self._release_syncs(now_ns)
            case _:
                why = f"{frame.command.name} is not a request a client may send"
                return self._refuse(frame, received_ns, ErrorCode.INVALID_REQUEST, why, now_ns)

    def _expired(self, now: Conditions) -> AuthRefusal | None:
        """The refusal of the token this connection authenticated with, if it has run out
        since: by the wall clock now, or by the monotonic deadline taken when the connection
        opened (so a wall clock stepped back never extends a token); judged afresh at every
        frame."""
        principal = self.principal
        if principal is None or principal.expires_ms is None:
            return None
        by_wall = now.wall_ms > principal.expires_ms
        by_deadline = self._expires_at_ns is not None and now.now_ns > self._expires_at_ns
        if not (by_wall or by_deadline):
            return None
        return AuthRefusal(Refusal.EXPIRED, principal.tenant_id, principal.subject)

    # --- helpers ------------------------------------------------------------------------

    def _pending_handshake(self) -> _PendingHandshake | None:
        """The handshake the node is answering; None once the connection is closed."""
        if self.closed:
            return None
        if self.state is not ConnectionState.HANDSHAKING or self._handshake is None:
            raise ConnectionMisuse("no handshake is being answered")
        return self._handshake

    def _track(self, reserved_bytes: int) -> int:
        """A new request in flight, whose reply may be up to ``reserved_bytes`` long."""
        seq = self._seq
        self._seq += 1
        self._open[seq] = reserved_bytes
        self.reserved_bytes += reserved_bytes
        assert self.inflight <= self._inflight_requests_max
        return seq

    def _release_syncs(self, now_ns: int) -> list[Effect]:
        oldest_open = next(iter(self._open), None)
        effects: list[Effect] = []
        while self._syncs and (oldest_open is None or self._syncs[0].seq < oldest_open):
            sync = self._syncs.popleft()
            effects.append(AnswerSync(sync.request_id, sync.received_ns))
        if effects:
            self.last_active_ns = now_ns
        return effects

    def _refuse(
        self, frame: Frame, received_ns: int, code: ErrorCode, message: str, now_ns: int
    ) -> list[Effect]:
        """Answer one frame with an error; the connection goes on."""
        data = encode(make_error_reply(code, message), frame.request_id)
        return [
            self._send(data, now_ns),
            RequestDone(method_name(frame.command), code, received_ns),
        ]

    def _refuse_credential(
        self, refusal: AuthRefusal, received_ns: int, now_ns: int
    ) -> list[Effect]:
        reply = make_error_reply(ErrorCode.AUTHENTICATION_FAILED, refusal.message)
        return [RefuseCredential(refusal, received_ns), *self._close(reply, now_ns)]

    def _send(self, data: bytes, now_ns: int) -> Send:
        self.last_active_ns = now_ns
        return Send(data)

    def _close(self, reply: ErrorReply | None, now_ns: int) -> list[Effect]:
        """A connection error: answer with request id 0, then close."""
        if self.closed:
            return []
        self.state = ConnectionState.CLOSED
        if reply is not None:
            self.last_active_ns = now_ns
        return [Close(reply)]


# --- pure pieces the adapter shares --------------------------------------------------------


def reply_bytes_max(message: ReadRequest) -> int:
    """The longest reply frame ``message`` may get: a read's events (at most ``max_bytes``
    of them, unless the first alone is larger) with their length fields, or a whole key list."""
    if isinstance(message, ListApiKeys):
        return _KEYS_REPLY_BYTES_MAX
    events_bytes = max(message.max_bytes, EVENT_SIZE_MAX) + 4 * message.max_events
    return HEADER_SIZE + _READ_REPLY_FIXED_BYTES + events_bytes


def make_error_reply(
    code: ErrorCode, message: str, primary_address: str | None = None
) -> ErrorReply:
    """An error reply; ``message`` is cut to what the wire carries, and ``primary_address``
    is kept only with ``NOT_PRIMARY`` and only when the wire can carry it."""
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


def method_name(command: Command) -> str:
    """The ``method`` label of a command: its message name, ``Other`` for non-requests."""
    return _METHODS.get(command, "Other")
