"""``AsyncClient``: Craton's asyncio client for the binary protocol (docs/PROTOCOL.md).

A client is one ``client_id`` (a random u128 drawn when it is created) and at most one
connection at a time, opened lazily, re-opened after it breaks and always started with a
``HANDSHAKE``. Requests number from 1 upwards within the client id.

Rules it keeps:
- Retries reuse the request id, so the node applies a retried write at most once; a
  request is retried after a broken connection, a timeout of one attempt
  (``request_timeout_s``) or a retryable error (``RATE_LIMITED``, ``NOT_PRIMARY``,
  ``UNAVAILABLE``, ``INTERNAL``), with a doubling back-off from ``BACKOFF_FIRST_S`` to
  ``BACKOFF_MAX_S``, until ``retry_deadline_s`` after the call began; then it raises.
  Once an attempt went out and no answer ruled it out (a timeout, a broken connection,
  ``INTERNAL``), later attempts carry ``FLAG_RETRY``, so that a node that has to open the
  client a new session never applies them under it (``SESSION_EXPIRED`` is raised then,
  and not retried: the write may have been applied).
- Until it has reached a node once (a handshake was answered), a client gives up trying to
  connect ``first_connect_deadline_s`` after the call began (default: the retry deadline,
  so a program started beside its database waits for it): a wrong address or a node that is
  not running fails fast where the caller asks for that (the ``craton`` CLI: 2 s). Once it
  has reached a node, a broken connection is retried until the retry deadline, as a
  failover needs.
- Writes (create stream, append) of one client are sent one at a time, in call order:
  the node applies a client's writes in increasing request-id order, so a write that
  overtook an earlier one could make the earlier one's retry unanswerable. Reads and
  syncs are pipelined freely. For parallel writes, use several clients.
- ``NOT_PRIMARY`` with a ``primary_address`` moves the client to that address; without
  one, to the next of the addresses it was given. In a cluster (the node's handshake said
  so, and the client was given several addresses), ``UNAVAILABLE`` moves it to the next
  address too: a replica in a view change may be the one cut off from the others.
- Write request ids stay within ``REQUEST_NUMBER_MAX``; past it the client draws a new
  client id and starts numbering again.
- Deadlines and timeouts are measured on the client's ``Clock`` (``clock``, the system's
  by default); the event loop only does the waiting.
- Every failure is a ``craton.client.errors`` exception; nothing else escapes. Arguments
  the protocol does not allow (a bad address, an empty or oversized token, a bad stream
  name, an oversized event) raise ``InvalidArgument`` before anything is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import typing
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import TypeVar

import attrs

from craton.client.errors import (
    ConnectionFailed,
    CratonError,
    InvalidArgument,
    NotPrimary,
    ProtocolError,
    RequestTimeout,
    RetryableError,
    ServerError,
    Unavailable,
    error_for,
)
from craton.core.auth import Role
from craton.core.wire import (
    FLAG_RETRY,
    PROTOCOL_VERSION,
    AppendEvents,
    AppendEventsReply,
    CreateStream,
    CreateStreamReply,
    DataClass,
    DecodeError,
    ErrorCode,
    ErrorReply,
    FrameDecoder,
    Handshake,
    HandshakeReply,
    MessageTooLarge,
    Placement,
    PlacementKind,
    ReadEvents,
    ReadEventsAsOf,
    ReadEventsReply,
    Sync,
    SyncReply,
    decode_frame,
    encode,
)
from craton.core.wire.codec import AnyMessage
from craton.core.wire.messages import (
    READ_EVENTS_MAX,
    READ_SIZE_MAX,
    ApiKeyInfo,
    CreateApiKey,
    CreateApiKeyReply,
    ListApiKeys,
    ListApiKeysReply,
    RevokeApiKey,
    RevokeApiKeyReply,
)
from craton.io.clock import SYSTEM_CLOCK, Clock, monotonic_s

DEFAULT_ADDRESS = "127.0.0.1:5432"
CONNECT_TIMEOUT_S = 5.0
REQUEST_TIMEOUT_S = 10.0
RETRY_DEADLINE_S = 30.0
BACKOFF_FIRST_S = 0.02
BACKOFF_MAX_S = 1.0
TIMER_SLACK_S = 0.001  # a request due this soon when its link's timer fires times out then
REQUEST_NUMBER_MAX = 2**32 - 1  # the node's limit on a write's request id
READ_MAX_BYTES_DEFAULT = 1024 * 1024

_Reply = TypeVar("_Reply")
_Message = TypeVar("_Message")
_Outcome = TypeVar("_Outcome")


@attrs.frozen
class AppendResult:
    """Where an append landed: its first event's offset in the stream, and its log
    position. Neither ever changes."""

    first_offset: int
    log_position: int


@attrs.frozen
class ReadResult:
    """Events from ``from_offset`` on, as of log position ``log_position``."""

    from_offset: int
    log_position: int
    events: tuple[bytes, ...]

    @property
    def next_offset(self) -> int:
        """The offset to read from next."""
        return self.from_offset + len(self.events)


@attrs.frozen
class ServerInfo:
    """What the node said in its handshake reply."""

    address: str
    protocol_version: int
    server_version: str
    replica_id: int
    cluster_size: int
    view: int


class _LinkBroken(Exception):
    """The connection ended; ``error`` is the node's connection error, when it sent one."""

    def __init__(self, reason: str, error: ServerError | None = None) -> None:
        super().__init__(reason)
        self.error = error


class _Link(asyncio.Protocol):
    """One connection: frames out, replies matched to their request ids as they arrive."""

    def __init__(self, address: str, clock: Clock) -> None:
        self.address = address
        self._clock = clock
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._decoder = FrameDecoder()
        self._pending: dict[int, asyncio.Future[AnyMessage]] = {}
        self._broken: _LinkBroken | None = None
        self._paused = False  # the transport's send buffer is full
        self._drained: list[asyncio.Future[None]] = []
        self._lost: asyncio.Future[None] = self._loop.create_future()
        # One timer for the link, set for the earliest deadline of the requests waiting
        # (a timer per request costs more than the request's own work).
        self._deadlines: dict[int, float] = {}  # request id -> when it times out (``_clock``)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at_s = 0.0  # the deadline the timer is set for, while there is one

    @property
    def broken(self) -> bool:
        return self._broken is not None

    async def request(
        self, message: AnyMessage, request_id: int, timeout_s: float, flags: int = 0
    ) -> AnyMessage:
        """The reply to ``message``; ``TimeoutError`` if none came within ``timeout_s``."""
        if self._broken is not None:
            raise self._broken
        transport = self._transport
        assert transport is not None
        future: asyncio.Future[AnyMessage] = self._loop.create_future()
        self._pending[request_id] = future
        deadline_s = monotonic_s(self._clock) + timeout_s
        self._deadlines[request_id] = deadline_s
        if self._timer is None or deadline_s < self._timer_at_s:
            self._set_timer(deadline_s)
        try:
            transport.write(encode(message, request_id, flags))
            if self._paused:
                await self._drain()
            return await future
        finally:
            if self._pending.get(request_id) is future:
                del self._pending[request_id]
            self._deadlines.pop(request_id, None)

    def _set_timer(self, at_s: float) -> None:
        """Call ``_expire`` once the clock reaches ``at_s`` (the loop only waits the time)."""
        if self._timer is not None:
            self._timer.cancel()
        delay_s = max(0.0, at_s - monotonic_s(self._clock))
        self._timer = self._loop.call_later(delay_s, self._expire)
        self._timer_at_s = at_s

    def _expire(self) -> None:
        """Fail the requests whose deadline has come; set the timer for the next one."""
        self._timer = None
        due_s = monotonic_s(self._clock) + TIMER_SLACK_S
        for request_id, deadline_s in list(self._deadlines.items()):
            if deadline_s <= due_s:
                del self._deadlines[request_id]
                future = self._pending.pop(request_id, None)
                if future is not None and not future.done():
                    future.set_exception(TimeoutError())
        if self._deadlines:
            self._set_timer(min(self._deadlines.values()))

    async def close(self) -> None:
        self._break(_LinkBroken("closed by the client"))
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(self._lost), 1.0)

    async def _drain(self) -> None:
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._drained.append(waiter)
        await waiter
        if self._broken is not None:
            raise self._broken

    # --- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream connection's transport (uvloop's is not an asyncio.Transport subclass)
        self._transport = typing.cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._decoder.feed(data)
            while (frame := self._decoder.next_frame()) is not None:
                self._deliver(frame.request_id, decode_frame(frame))
        except DecodeError as error:
            self._break(_LinkBroken(f"undecodable reply from {self.address}: {error.reason}"))

    def eof_received(self) -> bool:
        self._break(_LinkBroken(f"{self.address} closed the connection"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is None:
            self._break(_LinkBroken(f"{self.address} closed the connection"))
        else:
            self._break(_LinkBroken(f"connection to {self.address} lost: {exc}"))
        self._wake_writers()
        if not self._lost.done():
            self._lost.set_result(None)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake_writers()

    def _wake_writers(self) -> None:
        drained, self._drained = self._drained, []
        for waiter in drained:
            if not waiter.done():
                waiter.set_result(None)

    def _deliver(self, request_id: int, message: AnyMessage) -> None:
        if request_id == 0 and isinstance(message, ErrorReply):
            error = error_for(message.code, message.message, message.primary_address)
            self._break(_LinkBroken(f"{self.address} closed the connection: {error}", error))
            return
        future = self._pending.pop(request_id, None)
        if future is not None and not future.done():
            future.set_result(message)

    def _break(self, broken: _LinkBroken) -> None:
        if self._broken is None:
            self._broken = broken
        pending, self._pending = self._pending, {}
        self._deadlines.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for future in pending.values():
            if not future.done():
                future.set_exception(self._broken)
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.close()
        elif transport is None and not self._lost.done():
            self._lost.set_result(None)


class AsyncClient:
    """A Craton client for asyncio programs; use ``async with AsyncClient(...) as c``."""

    def __init__(
        self,
        address: str | Sequence[str] = DEFAULT_ADDRESS,
        *,
        client_id: int | None = None,
        auth_token: str | None = None,
        tls: ssl.SSLContext | bool | None = None,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
        retry_deadline_s: float = RETRY_DEADLINE_S,
        first_connect_deadline_s: float | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        addresses = [address] if isinstance(address, str) else list(address)
        if not addresses:
            raise InvalidArgument("address: at least one address is needed")
        for each in addresses:
            _split_address(each)
        if client_id is not None and not 1 <= client_id < 2**128:
            raise InvalidArgument("client_id must be in 1..2**128-1")
        if first_connect_deadline_s is None:
            first_connect_deadline_s = retry_deadline_s
        timeouts_s = (connect_timeout_s, request_timeout_s, retry_deadline_s)
        if min(*timeouts_s, first_connect_deadline_s) <= 0:
            raise InvalidArgument("timeouts and deadlines must be positive")
        _valid(Handshake, PROTOCOL_VERSION, 1, auth_token)  # the token, before any connection
        self._addresses = addresses
        self._address = addresses[0]
        self.client_id = client_id if client_id is not None else _new_client_id()
        self._auth_token = auth_token
        self._tls = ssl.create_default_context() if tls is True else (tls or None)
        self._connect_timeout_s = connect_timeout_s
        self._request_timeout_s = request_timeout_s
        self._retry_deadline_s = retry_deadline_s
        self._first_connect_deadline_s = first_connect_deadline_s
        self._clock = clock  # deadlines and timeouts are measured on it
        self._next_request_id = 1
        self._link: _Link | None = None
        self._link_lock = asyncio.Lock()
        self._write_lock = asyncio.Lock()
        self.info: ServerInfo | None = None
        self._closed = False

    async def __aenter__(self) -> AsyncClient:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    # --- the API ---------------------------------------------------------------------------

    async def connect(self) -> ServerInfo:
        """Connect and handshake now (requests do it themselves when needed)."""
        deadline_s, reach_by_s = self._deadlines()

        async def attempt() -> ServerInfo | CratonError:
            try:
                await self._ensure_link(self._connect_by(deadline_s, reach_by_s))
            except CratonError as error:
                return error
            assert self.info is not None
            return self.info

        return await _retrying(attempt, self._give_up_at(deadline_s, reach_by_s), self._clock)

    async def close(self) -> None:
        self._closed = True
        link, self._link = self._link, None
        if link is not None:
            await link.close()

    async def create_stream(
        self,
        name: str,
        data_class: DataClass = DataClass.INTERNAL,
        *,
        region: str | None = None,
    ) -> int:
        """Create a stream; returns the log position of its creation."""
        placement = (
            Placement(PlacementKind.GLOBAL, "")
            if region is None
            else _valid(Placement, PlacementKind.REGION, region)
        )
        message = _valid(CreateStream, name, data_class, placement)
        reply = await self._write(message, CreateStreamReply)
        return reply.log_position

    async def append(
        self, stream: str, events: Sequence[bytes], *, expected_offset: int | None = None
    ) -> AppendResult:
        """Append ``events`` (all or none), durably; with ``expected_offset``, only if the
        stream holds exactly that many events (else ``UnexpectedOffset``)."""
        message = _valid(AppendEvents, stream, tuple(events), expected_offset)
        reply = await self._write(message, AppendEventsReply)
        return AppendResult(reply.first_offset, reply.log_position)

    async def read(
        self,
        stream: str,
        from_offset: int = 0,
        *,
        max_events: int = READ_EVENTS_MAX,
        max_bytes: int = READ_MAX_BYTES_DEFAULT,
    ) -> ReadResult:
        """Committed events of ``stream`` from ``from_offset`` on (the first one always, if
        it exists; then up to ``max_events`` and ``max_bytes``)."""
        message = _valid(ReadEvents, stream, from_offset, max_events, min(max_bytes, READ_SIZE_MAX))
        reply = await self._request(message, ReadEventsReply)
        return ReadResult(reply.from_offset, reply.log_position, reply.events)

    async def read_as_of(
        self,
        stream: str,
        log_position: int,
        from_offset: int = 0,
        *,
        max_events: int = READ_EVENTS_MAX,
        max_bytes: int = READ_MAX_BYTES_DEFAULT,
    ) -> ReadResult:
        """The stream as it was when the log ended at ``log_position``."""
        message = _valid(
            ReadEventsAsOf,
            stream,
            log_position,
            from_offset,
            max_events,
            min(max_bytes, READ_SIZE_MAX),
        )
        reply = await self._request(message, ReadEventsReply)
        return ReadResult(reply.from_offset, reply.log_position, reply.events)

    async def sync(self) -> int:
        """Wait until everything this client sent before is durable; returns the number of
        committed log positions (every position below it is committed)."""
        reply = await self._request(Sync(), SyncReply)
        return reply.log_position

    async def create_api_key(
        self, role: Role, *, expires_ms: int | None = None, label: str = ""
    ) -> CreateApiKeyReply:
        """A new API key of this client's tenant (needs the admin role; owner to make an
        owner key). ``reply.api_key`` is shown this once: store it now."""
        message = _valid(CreateApiKey, role, expires_ms, label)
        return await self._write(message, CreateApiKeyReply)

    async def revoke_api_key(self, key_id: int) -> int:
        """Revoke a key of this client's tenant; returns the log position from which every
        replica that has applied it refuses the key."""
        reply = await self._write(_valid(RevokeApiKey, key_id), RevokeApiKeyReply)
        return reply.log_position

    async def list_api_keys(self) -> tuple[ApiKeyInfo, ...]:
        """The keys of this client's tenant (never the keys themselves), revoked included."""
        reply = await self._request(ListApiKeys(), ListApiKeysReply)
        return reply.keys

    # --- requests --------------------------------------------------------------------------

    async def _write(self, message: AnyMessage, expected: type[_Reply]) -> _Reply:
        async with self._write_lock:
            if self._next_request_id > REQUEST_NUMBER_MAX:
                self.client_id = _new_client_id()
                self._next_request_id = 1
                link, self._link = self._link, None
                if link is not None:
                    await link.close()
            return await self._request(message, expected)

    async def _request(self, message: AnyMessage, expected: type[_Reply]) -> _Reply:
        if self._closed:
            raise ConnectionFailed("the client is closed")
        deadline_s, reach_by_s = self._deadlines()
        tries = _Tries(self._take_request_id())

        async def attempt() -> AnyMessage | CratonError:
            return await self._attempt(message, tries, deadline_s, reach_by_s)

        reply = await attempt()  # the first try, outside the retry loop's own coroutine
        if isinstance(reply, CratonError):
            give_up_at = self._give_up_at(deadline_s, reach_by_s)
            reply = await _retrying(attempt, give_up_at, self._clock, reply)
        if not isinstance(reply, expected):
            raise ProtocolError(f"the node answered with {type(reply).__name__}")
        return reply

    async def _attempt(
        self, message: AnyMessage, tries: _Tries, deadline_s: float, reach_by_s: float
    ) -> AnyMessage | CratonError:
        """One try: the reply, or the error that decides whether to try again.

        Once a try went out and no answer ruled it out (no answer in time, a broken
        connection, ``INTERNAL``), every later try is marked ``FLAG_RETRY``: the node then
        never opens a session for it (docs/PROTOCOL.md, "Connections")."""
        try:
            link = await self._ensure_link(self._connect_by(deadline_s, reach_by_s))
        except CratonError as error:
            return error
        request_id = tries.request_id
        flags = FLAG_RETRY if tries.maybe_applied else 0
        timeout_s = max(0.001, min(self._request_timeout_s, self._left_s(deadline_s)))
        try:
            reply = await link.request(message, request_id, timeout_s, flags)
        except MessageTooLarge as error:  # nothing was sent: the link is still good
            return InvalidArgument(f"the request does not fit in one frame: {error}")
        except TimeoutError:
            tries.maybe_applied = True
            await self._drop(link)
            return RequestTimeout(f"no answer from {link.address} within {timeout_s:.1f} s")
        except _LinkBroken as broken:
            tries.maybe_applied = True
            await self._drop(link)
            return broken.error or ConnectionFailed(str(broken))
        if isinstance(reply, ErrorReply):
            refused = error_for(reply.code, reply.message, reply.primary_address)
            if reply.code == ErrorCode.INTERNAL:
                tries.maybe_applied = True
            if isinstance(refused, NotPrimary):
                await self._redirect(refused.primary_address)
            elif isinstance(refused, Unavailable) and self._in_cluster():
                await self._redirect(None)  # this replica may be cut off: try another
            return refused
        return reply

    # --- connections -----------------------------------------------------------------------

    async def _ensure_link(self, deadline_s: float) -> _Link:
        link = self._link
        if link is not None and not link.broken:
            return link  # what the locked path below returns too, without taking the lock
        async with self._link_lock:
            link = self._link
            if link is not None and not link.broken:
                return link
            self._link = None
            link = await self._open_link(deadline_s)
            self._link = link
            return link

    async def _open_link(self, deadline_s: float) -> _Link:
        address = self._address
        host, port = _split_address(address)
        timeout_s = max(0.001, min(self._connect_timeout_s, self._left_s(deadline_s)))
        link = _Link(address, self._clock)
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(
                loop.create_connection(lambda: link, host, port, ssl=self._tls), timeout_s
            )
        except (TimeoutError, OSError) as error:
            self._next_address()
            raise ConnectionFailed(f"cannot connect to {address}: {_why(error)}") from None
        handshake = Handshake(PROTOCOL_VERSION, self.client_id, self._auth_token)
        try:
            reply = await link.request(handshake, self._take_request_id(), timeout_s)
        except TimeoutError:
            await link.close()
            raise ConnectionFailed(f"no handshake reply from {address}") from None
        except _LinkBroken as broken:
            await link.close()
            raise broken.error or ConnectionFailed(str(broken)) from None
        if isinstance(reply, ErrorReply):
            await link.close()
            raise error_for(reply.code, reply.message, reply.primary_address)
        if not isinstance(reply, HandshakeReply):
            await link.close()
            raise ProtocolError(f"{address} answered the handshake with {type(reply).__name__}")
        self.info = ServerInfo(
            address,
            reply.protocol_version,
            reply.server_version,
            reply.replica_id,
            reply.cluster_size,
            reply.view,
        )
        return link

    async def _drop(self, link: _Link) -> None:
        if self._link is link:
            self._link = None
        await link.close()

    async def _redirect(self, primary_address: str | None) -> None:
        if primary_address is not None:
            try:
                _split_address(primary_address)
            except ValueError:
                primary_address = None
        if primary_address is not None:
            self._address = primary_address
        else:
            self._next_address()
        link, self._link = self._link, None
        if link is not None:
            await link.close()

    def _in_cluster(self) -> bool:
        """Whether there are other replicas to try: several addresses, and the node said it
        is one of several."""
        info = self.info
        return len(self._addresses) > 1 and info is not None and info.cluster_size > 1

    def _next_address(self) -> None:
        if self._address in self._addresses:
            index = self._addresses.index(self._address)
            self._address = self._addresses[(index + 1) % len(self._addresses)]
        else:
            self._address = self._addresses[0]

    def _deadlines(self) -> tuple[float, float]:
        """A call's retry deadline, and when it stops trying to reach a first node."""
        now_s = monotonic_s(self._clock)
        return now_s + self._retry_deadline_s, now_s + self._first_connect_deadline_s

    def _connect_by(self, deadline_s: float, reach_by_s: float) -> float:
        """When a connection attempt must be done: a client that has never reached a node
        keeps to its first-connect deadline."""
        return deadline_s if self.info is not None else min(deadline_s, reach_by_s)

    def _give_up_at(self, deadline_s: float, reach_by_s: float) -> Callable[[CratonError], float]:
        """When to stop retrying after an error: a failure to connect before any node was
        reached stops at the first-connect deadline, everything else at the retry deadline."""

        def give_up_at(error: CratonError) -> float:
            if isinstance(error, ConnectionFailed):
                return self._connect_by(deadline_s, reach_by_s)
            return deadline_s

        return give_up_at

    def _left_s(self, deadline_s: float) -> float:
        """Seconds from now (on the client's clock) until ``deadline_s``."""
        return deadline_s - monotonic_s(self._clock)

    def _take_request_id(self) -> int:
        request_id = self._next_request_id
        self._next_request_id += 1
        return request_id


# --- helpers ---------------------------------------------------------------------------------


async def _retrying(
    attempt: Callable[[], Awaitable[_Outcome | CratonError]],
    give_up_at: Callable[[CratonError], float],
    clock: Clock,
    first: _Outcome | CratonError | None = None,
) -> _Outcome:
    """Run ``attempt`` until it succeeds, fails for good, or the deadline ``give_up_at``
    gives for its last error (on ``clock``) passes; ``first`` is the outcome of a first try
    already made, if any.

    When the deadline passes, the error raised is the last one a node answered with, if
    any: a try cut short by the deadline itself says less than the node's own refusal."""
    backoff_s = BACKOFF_FIRST_S
    last: CratonError | None = None
    while True:
        outcome = first if first is not None else await attempt()
        first = None
        if not isinstance(outcome, CratonError):
            return outcome
        if not _retryable(outcome):
            raise outcome
        if isinstance(outcome, ServerError) or last is None or not isinstance(last, ServerError):
            last = outcome
        wait_s = min(backoff_s, give_up_at(outcome) - monotonic_s(clock))
        if wait_s <= 0:
            raise last
        await asyncio.sleep(wait_s)
        backoff_s = min(BACKOFF_MAX_S, backoff_s * 2)


@attrs.define
class _Tries:
    """One request's tries: its id, and whether a try may have been applied already."""

    request_id: int
    maybe_applied: bool = False


def _retryable(error: CratonError) -> bool:
    if isinstance(error, ServerError):
        return isinstance(error, RetryableError)
    return isinstance(error, ConnectionFailed | RequestTimeout)


def _new_client_id() -> int:
    while True:
        client_id = int.from_bytes(os.urandom(16), "little")
        if client_id:
            return client_id


def _valid(build: Callable[..., _Message], *fields: object) -> _Message:
    """The message (or record) ``build(*fields)``; ``InvalidArgument`` naming the field when
    the protocol does not allow a value."""
    try:
        return build(*fields)
    except ValueError as error:
        raise InvalidArgument(str(error)) from None


def _split_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``) → (host, port); ``InvalidArgument`` when malformed."""
    host, sep, port = address.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65_535:
        raise InvalidArgument(f"address: expected host:port, got {address!r}")
    return host, int(port)


def _why(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, OSError) and error.errno:
        return os.strerror(error.errno)
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__
