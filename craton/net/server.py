"""The node's listeners: the main port (binary protocol and HTTP probes) and the metrics port.

``Server`` accepts connections on ``VDB_BIND_ADDR`` (TLS when ``VDB_TLS_CERT`` and
``VDB_TLS_KEY`` are set) and tells the two protocols apart by their first bytes: an HTTP
method followed by a space is handed to ``MainPortHttp``; anything else is Craton's binary
protocol (whose frames start with the magic ``CRTN``; a stranger is refused by the frame
decoder). ``VDB_METRICS_ADDR`` serves the same probes through aiohttp. A binary connection
whose first frame is a replica's hello (``craton.net.peers``) is handed to the node's
``PeerNetwork``; a node that is not in a cluster refuses it.

Rules it keeps:
- Both ports accept through a ``craton.net.listener.Listener``: an accept that fails (out
  of descriptors) backs off instead of retrying at once, and is logged at a bounded rate.
- At most ``VDB_MAX_CONNECTIONS`` client connections are open (replica connections are
  not counted: there is at most one from each peer; the start-up may have clamped the
  variable to what the open-files limit holds, ``craton.net.descriptors``); one more gets an
  ``UNAVAILABLE`` error frame (request id 0) and is closed, logged as ``connection.refused``
  at most once per ``REFUSAL_LOG_INTERVAL_S`` with a count. Probe requests do not count
  against that limit (a busy node still answers its orchestrator) but have their own,
  ``HTTP_CONNECTIONS_MAX``.
- A binary connection with nothing in flight and no whole frame received (and no reply
  sent) for ``VDB_IDLE_TIMEOUT_SECS`` is closed (with an ``UNAVAILABLE`` frame saying why):
  bytes that trickle in without ever completing a frame do not keep it open.
- A connection has ``FIRST_BYTES_TIMEOUT_S`` (or the idle timeout, if shorter) to say what
  it is (an HTTP request line, or its first frame), and at most ``VDB_MAX_CONNECTIONS`` may
  be in that state at once: one more is closed at once, before a byte is read (its protocol
  is not known yet, so no error can be written in it). With TLS, the TLS handshake comes
  first and has the same time (asyncio closes a connection that does not finish it; these
  are not counted). Silent sockets cannot hold the node's descriptors for longer than that.
- A connection being closed has ``CLOSE_TIMEOUT_S`` to take the replies still queued for
  it; a client that takes none is reset (``connection.reset``), so that its socket and
  those bytes do not outlive the connection (and the ``VDB_MAX_CONNECTIONS`` count).
- Time (the idle sweep, the shutdown's deadline, the audit of refused handshakes, and
  through them every connection's) comes from the server's ``Clock``, never the system's.
- ``shutdown`` stops accepting, refuses new requests with ``UNAVAILABLE``, waits (bounded)
  for the requests in flight to be answered and for the replica to commit everything it
  was given, closes the connections, then the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct

import attrs
from aiohttp import web

from craton.core.auth import AuthMode
from craton.core.wire import (
    HEADER_SIZE,
    Command,
    DecodeError,
    ErrorCode,
    ErrorReply,
    Frame,
    FrameDecoder,
    Handshake,
    decode_frame,
    encode,
)
from craton.core.wire.frame import MAGIC
from craton.io.clock import SYSTEM_CLOCK, Clock, monotonic_s
from craton.net.config import Address, ReplicationMode, ServerConfig
from craton.net.connection import (
    AUTH_FAILURE_RECORDS_PER_S,
    ClientConnection,
    DirectReader,
    TokenBucket,
)
from craton.net.listener import Listener, RateLimitedLog, bind
from craton.net.logs import EventLog
from craton.net.metrics import NodeMetrics
from craton.net.node import ReplicaHost
from craton.net.peers import HELLO_BODY_SIZE_MAX, PeerHello, parse_hello
from craton.net.probes import (
    HTTP_READ_TIMEOUT_S,
    METRICS_PORT_LOGGER,
    MainPortHttp,
    Probes,
    metrics_app,
)

HTTP_METHODS = (b"GET ", b"HEAD ", b"POST ", b"PUT ", b"DELETE ", b"OPTIONS ", b"PATCH ")
HTTP_CONNECTIONS_MAX = 64  # probe connections on the main port at once
SNIFF_BYTES_MAX = max(len(method) for method in HTTP_METHODS)
IDLE_SWEEP_INTERVAL_S = 1.0
FIRST_BYTES_TIMEOUT_S = 10.0  # a new connection's time to send its request line or frame
CLOSE_TIMEOUT_S = 2.0  # waiting for a closed connection's buffered replies to go out
REFUSAL_LOG_INTERVAL_S = 1.0  # at most one connection.refused line this often (with a count)
SHUTDOWN_CLOSE_MARGIN_S = 1.0  # at shutdown, beyond CLOSE_TIMEOUT_S, for the resets to happen
_COMMAND_AT = slice(6, 8)  # the command field of a frame header (docs/PROTOCOL.md)
_BODY_SIZE_AT = slice(12, 16)  # the body_size field
_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a reset


class ListenError(Exception):
    """An address could not be bound or TLS could not be set up; names the variable."""


class Server:
    def __init__(
        self,
        config: ServerConfig,
        host: ReplicaHost,
        metrics: NodeMetrics,
        log: EventLog,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.config = config
        self.clock = clock
        self.host = host
        self.log = log
        self.metrics = metrics
        self.rate_limit_rps = config.rate_limit_rps
        self.auth_mode = config.auth_mode
        # only jwt and both read tokens: the configuration checks VDB_JWT_SECRET for those
        uses_jwt = config.auth_mode in (AuthMode.JWT, AuthMode.BOTH)
        self.jwt_policy = config.jwt.policy() if uses_jwt else None
        self.auth_failure_records = TokenBucket(AUTH_FAILURE_RECORDS_PER_S, monotonic_s(clock))
        self._shutting_down = False
        self._connections: dict[ClientConnection, asyncio.Task[None]] = {}
        self._peer_tasks: set[asyncio.Task[None]] = set()  # replica connections served
        self._http_connections = 0
        self._unidentified = 0  # accepted connections that have not said what they are yet
        self._listener: Listener | None = None
        self._metrics_listener: Listener | None = None
        self._metrics_runner: web.AppRunner | None = None
        self._refusals = RateLimitedLog(log, "connection.refused", REFUSAL_LOG_INTERVAL_S, clock)
        self._sweeper: asyncio.Task[None] | None = None
        self.probes = Probes(
            host,
            self.metrics,
            max_connections=config.max_connections,
            connections=lambda: len(self._connections),
            clock=clock,
        )
        self._http = MainPortHttp(self.probes)
        self.main_address: Address | None = None
        self.metrics_address: Address | None = None

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    @property
    def _first_bytes_timeout_s(self) -> float:
        """A newcomer's time to say what it is (its TLS handshake included)."""
        return min(FIRST_BYTES_TIMEOUT_S, float(self.config.idle_timeout_secs))

    async def start(self) -> None:
        """Listen on both ports; raises ``ListenError`` when an address cannot be bound."""
        config = self.config
        tls = _tls_context(config) if config.tls else None
        loop = asyncio.get_running_loop()
        try:
            main_sockets = bind(config.bind_addr)
        except OSError as error:
            raise ListenError(_cannot_listen("VDB_BIND_ADDR", config.bind_addr, error)) from None
        try:
            metrics_sockets = bind(config.metrics_addr)
        except OSError as error:
            for sock in main_sockets:
                sock.close()
            raise ListenError(
                _cannot_listen("VDB_METRICS_ADDR", config.metrics_addr, error)
            ) from None
        self._listener = Listener(
            main_sockets,
            lambda: asyncio.StreamReaderProtocol(DirectReader(loop=loop), self._accept),
            self.log,
            self.clock,
            variable="VDB_BIND_ADDR",
            tls=tls,
            # a TLS handshake is a newcomer's first bytes: it gets no longer than they do
            tls_handshake_timeout_s=self._first_bytes_timeout_s if tls is not None else None,
        )
        self.main_address = Address(config.bind_addr.host, self._listener.port)
        runner = web.AppRunner(
            metrics_app(self.probes),
            access_log=None,
            handle_signals=False,
            logger=METRICS_PORT_LOGGER,
            # a request must arrive within this of the connection or of the last answer
            keepalive_timeout=HTTP_READ_TIMEOUT_S,
        )
        await runner.setup()
        self._metrics_runner = runner
        assert runner.server is not None, "set up above"
        self._metrics_listener = Listener(
            metrics_sockets, runner.server, self.log, self.clock, variable="VDB_METRICS_ADDR"
        )
        self.metrics_address = Address(config.metrics_addr.host, self._metrics_listener.port)
        self._listener.start()
        self._metrics_listener.start()
        self._sweeper = asyncio.create_task(self._sweep_idle())
        self.log.info(
            "server.listening",
            addr=str(self.main_address),
            metrics_addr=str(self.metrics_address),
            tls=tls is not None,
        )

    async def shutdown(self, grace_s: float) -> bool:
        """Stop serving; True if every request in flight was answered within ``grace_s``."""
        self._shutting_down = True
        deadline_s = monotonic_s(self.clock) + grace_s
        if self._listener is not None:
            self._listener.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        answered = True
        while any(conn.inflight for conn in self._connections):
            if monotonic_s(self.clock) >= deadline_s or self.host.halted is not None:
                answered = False
                break
            await asyncio.sleep(0.01)
        committed = await self.host.drain(max(0.0, deadline_s - monotonic_s(self.clock)))
        for connection in list(self._connections):
            connection.close()
        tasks = list(self._connections.values())
        if tasks:  # each closes, or is reset after CLOSE_TIMEOUT_S (``_close``)
            await asyncio.wait(tasks, timeout=CLOSE_TIMEOUT_S + SHUTDOWN_CLOSE_MARGIN_S)
        if self._metrics_listener is not None:  # probes answer until the connections close
            self._metrics_listener.close()
        if self._metrics_runner is not None:
            await self._metrics_runner.cleanup()
        self.host.close()  # closes the replica connections too
        if self._peer_tasks:
            await asyncio.wait(list(self._peer_tasks), timeout=CLOSE_TIMEOUT_S)
        return answered and committed

    # --- accepting -------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one accepted connection. When the node stops with the connection still open
        (a newcomer not identified yet, an HTTP request not finished), its task is cancelled:
        the connection is dropped and the task ends quietly, since asyncio (3.11) would
        report a cancelled connection task as an unhandled error."""
        try:
            await self._serve(reader, writer)
        except asyncio.CancelledError:
            writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = _peer(writer)
        if self._unidentified >= self.config.max_connections:
            writer.close()  # too many silent newcomers: this one is not even read
            return
        self._unidentified += 1
        try:
            identified = await asyncio.wait_for(self._identify(reader), self._first_bytes_timeout_s)
        except (TimeoutError, ConnectionError, OSError):
            identified = None
        finally:
            self._unidentified -= 1
        if identified is None:
            writer.close()
            return
        first, hello = identified
        if first.startswith(HTTP_METHODS):
            await self._serve_http(reader, writer, first)
            return
        if hello is not None:
            await self._serve_peer(reader, writer, hello, peer)
            return
        await self._serve_binary(reader, writer, first, peer)

    async def _identify(self, reader: asyncio.StreamReader) -> tuple[bytes, _Hello | None] | None:
        """The connection's first bytes: an HTTP request's start, or its first whole frame
        (and the replica hello in it, if it is one); None when it closed first."""
        first = await _sniff(reader)
        if not first:
            return None
        if first.startswith(HTTP_METHODS):
            return first, None
        return await _first_frame(reader, first)

    async def _serve_peer(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, hello: _Hello, peer: str
    ) -> None:
        peers = self.host.peers
        task = asyncio.current_task()
        assert task is not None
        self._peer_tasks.add(task)
        try:
            if peers is None:
                self.log.warn("peer.refused", peer=peer, reason="not in cluster mode")
                refusal = ErrorReply(
                    ErrorCode.INVALID_REQUEST,
                    "this node is not in cluster mode: it accepts no replica connections",
                    None,
                )
                writer.write(encode(refusal, 0))
            else:
                await peers.serve_inbound(
                    reader, writer, hello.decoder, hello.hello, hello.request_id, peer
                )
        finally:
            await _close(writer)

    async def _serve_http(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first: bytes
    ) -> None:
        if self._http_connections >= HTTP_CONNECTIONS_MAX:
            writer.close()
            return
        self._http_connections += 1
        try:
            await self._http.serve(reader, writer, first)
        finally:
            self._http_connections -= 1
            await _close(writer)

    async def _serve_binary(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        first: bytes,
        peer: str,
    ) -> None:
        assert isinstance(reader, DirectReader)  # every connection's reader (``start``)
        connection = ClientConnection(self, reader, writer, peer, self.clock)
        if self._shutting_down or len(self._connections) >= self.config.max_connections:
            why = (
                "the node is shutting down"
                if self._shutting_down
                else f"the node serves at most {self.config.max_connections} connections"
            )
            self._refusals.record(peer=peer, reason=why)
            connection.refuse(why)
            await _close(writer)
            return
        task = asyncio.current_task()
        assert task is not None
        self._connections[connection] = task
        self.metrics.connections.inc()
        self.metrics.connections_active.set(len(self._connections))
        self.log.debug("connection.opened", peer=peer)
        try:
            await connection.run(first)
        finally:
            del self._connections[connection]
            self.metrics.connections_active.set(len(self._connections))
            if not await _close(writer):
                self.log.info(
                    "connection.reset",
                    peer=peer,
                    reason=f"the client took no replies for {CLOSE_TIMEOUT_S:.0f} s after close",
                )
            self.log.debug("connection.closed", peer=peer)

    async def _sweep_idle(self) -> None:
        timeout_s = self.config.idle_timeout_secs
        while True:
            await asyncio.sleep(IDLE_SWEEP_INTERVAL_S)
            self._refusals.flush()  # the count of a burst of refusals that has ended
            for connection in list(self._connections):
                if connection.tick(timeout_s):  # the protocol decides what idle is
                    self.log.debug("connection.idle_closed", peer=connection.peer)


@attrs.frozen
class _Hello:
    """A replica's hello, the first frame of a connection; ``decoder`` holds what followed."""

    hello: PeerHello
    request_id: int
    decoder: FrameDecoder


async def _first_frame(reader: asyncio.StreamReader, first: bytes) -> tuple[bytes, _Hello | None]:
    """The bytes read so far and, when the connection starts with a replica's hello, that.

    Only a ``HANDSHAKE`` frame small enough to be a hello is waited for whole; anything
    else (a client's frames, bytes that do not decode) is left to the client connection,
    which answers exactly as it would have from the first byte."""
    data = bytearray(first)
    while len(data) < HEADER_SIZE:
        if not MAGIC.startswith(bytes(data[: len(MAGIC)])):
            return bytes(data), None
        chunk = await reader.read(HEADER_SIZE)
        if not chunk:
            return bytes(data), None
        data += chunk
    command = int.from_bytes(data[_COMMAND_AT], "little")
    body_size = int.from_bytes(data[_BODY_SIZE_AT], "little")
    if command != Command.HANDSHAKE or body_size > HELLO_BODY_SIZE_MAX:
        return bytes(data), None
    while len(data) < HEADER_SIZE + body_size:
        chunk = await reader.read(HEADER_SIZE + body_size - len(data))
        if not chunk:
            return bytes(data), None
        data += chunk
    decoder = FrameDecoder()
    try:
        decoder.feed(data)
        frame: Frame | None = decoder.next_frame()
        message = None if frame is None else decode_frame(frame)
    except DecodeError:
        return bytes(data), None
    if frame is None or not isinstance(message, Handshake):
        return bytes(data), None
    hello = parse_hello(message.client_id, message.auth_token)
    if hello is None:
        return bytes(data), None
    return bytes(data), _Hello(hello, frame.request_id, decoder)


async def _sniff(reader: asyncio.StreamReader) -> bytes:
    """The first bytes of a connection: enough to tell an HTTP method from anything else."""
    buffer = b""
    while True:
        chunk = await reader.read(64 * 1024)
        if not chunk:
            return buffer
        buffer += chunk
        if buffer.startswith(HTTP_METHODS) or len(buffer) >= SNIFF_BYTES_MAX:
            return buffer
        if not any(method.startswith(buffer) for method in HTTP_METHODS):
            return buffer


async def _close(writer: asyncio.StreamWriter) -> bool:
    """Close the connection once what was written has gone out; a peer that does not take
    it within ``CLOSE_TIMEOUT_S`` has the connection reset, so that neither its socket nor
    the bytes waiting for it outlive the connection. True if it closed in time."""
    if not writer.is_closing():
        writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), CLOSE_TIMEOUT_S)
    except TimeoutError:
        _reset(writer)
        return False
    except Exception:  # the connection broke while closing: it is closed
        return True
    return True


def _reset(writer: asyncio.StreamWriter) -> None:
    """Drop the connection with a TCP reset: the bytes still queued for the peer, in the
    process and in the kernel, are discarded rather than sent."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    writer.transport.abort()


def _tls_context(config: ServerConfig) -> ssl.SSLContext:
    """The main port's TLS. In a cluster it also asks for a client certificate, optional
    (clients have none) but checked against ``VDB_TLS_CERT``'s chain when given: a replica
    must present one (``craton.net.peers``), which is mutual TLS between replicas."""
    assert config.tls_cert is not None and config.tls_key is not None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        if config.replication_mode is ReplicationMode.CLUSTER:
            context.verify_mode = ssl.CERT_OPTIONAL
            context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
            context.load_verify_locations(cafile=str(config.tls_cert))
        context.load_cert_chain(config.tls_cert, config.tls_key)
    except (OSError, ssl.SSLError) as error:
        reason = getattr(error, "reason", None) or getattr(error, "strerror", None) or "invalid"
        raise ListenError(
            f"VDB_TLS_CERT/VDB_TLS_KEY: cannot load the certificate and key: {reason}"
        ) from None
    return context


def _cannot_listen(variable: str, address: Address, error: OSError) -> str:
    return f"{variable}: cannot listen on {address}: {error.strerror or error}"


def _peer(writer: asyncio.StreamWriter) -> str:
    name = writer.get_extra_info("peername")
    if isinstance(name, tuple) and len(name) >= 2:
        return f"{name[0]}:{name[1]}"
    return "unknown"
