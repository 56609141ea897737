"""Replica-to-replica connections of a cluster node: the production ``Network`` of the driver.

Every replica listens on one port (``VDB_BIND_ADDR``) for clients and peers alike. A
replica reaches replica ``r`` by opening a TCP connection (TLS when the node has TLS) to
``VDB_CLUSTER_PEERS[r]`` and sending a *peer hello* as its first frame: a ``HANDSHAKE``
whose ``client_id`` is in the replica range (``hello_client_id``: the marker ``CRTNPEER``
in the high 64 bits, the cluster size and the sender's replica id in the low ones; see
docs/PROTOCOL.md, "Replica connections"). The receiver answers with a ``HANDSHAKE_REPLY``
naming itself, and from then on the connection carries replica messages (commands
``0x0100``..``0x01FF``, request id 0) in one direction only: from the replica that opened it.
So each pair of replicas has two connections, one per direction, and a message's sender is
the replica whose hello opened the connection it came on.

Rules it keeps:
- ``send`` never blocks and never fails: each peer has a queue of at most
  ``PEER_QUEUE_FRAMES_MAX`` frames and ``PEER_QUEUE_BYTES_MAX`` bytes; when a new frame
  does not fit, the oldest are dropped and counted (``vdb_replication_messages_dropped``).
  Viewstamped Replication tolerates lost messages: it retries what matters.
- An outbound connection is retried forever while the node runs, after a back-off that
  doubles from ``PEER_BACKOFF_FIRST_S`` to ``PEER_BACKOFF_MAX_S`` (with jitter); a connect,
  a hello and a blocked write each have a bound (``PEER_CONNECT_TIMEOUT_S``,
  ``PEER_HELLO_TIMEOUT_S``, ``PEER_WRITE_TIMEOUT_S``). A hello answered by the wrong
  replica, or by a node of another cluster size, is a misconfiguration: logged, retried.
- Every inbound frame is checked by the codec's ``FrameDecoder`` (magic, version,
  checksums, size, known command); a frame outside the replica range, or bytes that do not
  decode, end the connection with an ``ERROR_REPLY`` (request id 0). The replica decodes
  the message itself (``MessageReceived``) and ignores what it cannot use.
- A hello is refused (``INVALID_REQUEST``, request id 0, connection closed) when it claims
  this node's own id, an id outside the cluster, a different cluster size, or sets the
  reserved bytes; a node that is not in cluster mode refuses every hello. A second hello
  from the same replica replaces the first connection, so at most one inbound connection
  per peer is open.
- Peers prove membership before anything else: a hello's ``auth_token`` carries a proof
  made with ``VDB_CLUSTER_SECRET`` (``craton.core.peer_auth``: an HMAC over the hello's
  client id, the receiving replica's id, the time (the wall-clock time of the network's
  ``Clock``) and a nonce, good once and for ``PROOF_AGE_MS_MAX``). A hello without a good
  proof is refused with ``AUTHENTICATION_FAILED`` (request id 0), the connection is
  closed, and the refusal is counted in ``vdb_peer_auth_failures_total``; no frame after
  it is read. With TLS configured, replica connections are mutual TLS as well: the opener
  checks the receiver's certificate against ``VDB_TLS_CERT``'s chain and presents its own,
  and the receiver refuses (the same way) a hello on a connection without a verified one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import secrets
import socket
import ssl
from collections.abc import Callable

import attrs

from craton import __version__
from craton.core.peer_auth import NONCE_SIZE, ProofChecker, make_proof
from craton.core.wire import (
    PROTOCOL_VERSION,
    DecodeError,
    ErrorCode,
    ErrorReply,
    Frame,
    FrameDecoder,
    Handshake,
    HandshakeReply,
    decode_frame,
    encode,
    error_reply,
)
from craton.core.wire.frame import COMMAND_REPLICA_RANGE, FRAME_SIZE_MAX, encode_frame
from craton.core.wire.messages import AUTH_TOKEN_SIZE_MAX
from craton.io.clock import SYSTEM_CLOCK, Clock, realtime_ms
from craton.io.interfaces import ReceiveCallback
from craton.net.config import Address
from craton.net.logs import EventLog
from craton.net.metrics import NodeMetrics

PEER_MARKER = int.from_bytes(b"CRTNPEER", "little")  # high 64 bits of a hello's client id
PEER_QUEUE_FRAMES_MAX = 4096  # frames waiting for one peer
PEER_QUEUE_BYTES_MAX = 64 * 1024 * 1024  # bytes waiting for one peer
PEER_CONNECT_TIMEOUT_S = 2.0
PEER_HELLO_TIMEOUT_S = 5.0
PEER_WRITE_TIMEOUT_S = 10.0  # a peer that takes no bytes for this long is reconnected
PEER_BACKOFF_FIRST_S = 0.05
PEER_BACKOFF_MAX_S = 1.0
PEER_BACKOFF_JITTER = 0.5  # each wait is drawn in [1 - jitter, 1] times the back-off
READ_CHUNK_BYTES = 256 * 1024
# The largest body a hello can have: version, client id, presence byte, token length, token.
HELLO_BODY_SIZE_MAX = 2 + 16 + 1 + 4 + AUTH_TOKEN_SIZE_MAX
_LOW_BITS = (1 << 64) - 1
assert PEER_QUEUE_BYTES_MAX >= FRAME_SIZE_MAX


@attrs.frozen
class ClusterSettings:
    """This node's place in the cluster: its replica id and every replica's address."""

    replica_id: int
    addresses: tuple[Address, ...]  # in replica-id order, this node's own included
    secret: bytes = attrs.field(repr=False)  # VDB_CLUSTER_SECRET; never logged
    tls: ssl.SSLContext | None = None  # for outbound peer connections, when TLS is on
    # VDB_CLUSTER_SECRET_SECONDARY: also accepted in proofs, never used to make them
    secondary: bytes | None = attrs.field(default=None, repr=False)
    # VDB_CLUSTER_FORMED: a blank data directory means this replica lost its disk
    formed: bool = False

    def __attrs_post_init__(self) -> None:
        assert 0 <= self.replica_id < len(self.addresses) <= 16

    @property
    def size(self) -> int:
        return len(self.addresses)


@attrs.frozen
class PeerHello:
    """What a hello's client id says: the sender's replica id and its cluster size."""

    replica_id: int
    cluster_size: int
    reserved: int  # bytes 2..7 of the client id: zero in a valid hello
    client_id: int = 0  # the whole client id, which the proof covers
    proof: str | None = attrs.field(default=None, repr=False)  # the hello's auth_token


def hello_client_id(replica_id: int, cluster_size: int) -> int:
    """The ``Handshake.client_id`` with which replica ``replica_id`` opens a connection."""
    assert 0 <= replica_id < cluster_size <= 16
    return PEER_MARKER << 64 | cluster_size << 8 | replica_id


def parse_hello(client_id: int, proof: str | None = None) -> PeerHello | None:
    """The hello a handshake's client id carries; None for an ordinary client's id."""
    if client_id >> 64 != PEER_MARKER:
        return None
    low = client_id & _LOW_BITS
    return PeerHello(low & 0xFF, low >> 8 & 0xFF, low >> 16, client_id, proof)


class PeerRefused(Exception):
    """A hello this node does not accept; the message says why."""


class PeerNetwork:
    """The node's ``Network``: queues to every peer out, hellos and replica frames in."""

    def __init__(
        self,
        settings: ClusterSettings,
        metrics: NodeMetrics,
        log: EventLog,
        *,
        view: Callable[[], int],
        observe: Callable[[int, Frame], None] | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.metrics = metrics
        self.log = log
        self._view = view
        self._observe = observe
        self._receive: ReceiveCallback | None = None
        self._links = {
            replica: _PeerLink(self, replica, address)
            for replica, address in enumerate(settings.addresses)
            if replica != settings.replica_id
        }
        self._inbound: dict[int, asyncio.StreamWriter] = {}
        accepted = (settings.secret,) if settings.secondary is None else (
            settings.secret, settings.secondary
        )  # fmt: skip
        started_ms = realtime_ms(clock)  # before the node listens: see ProofChecker
        self._proofs = ProofChecker(accepted, settings.replica_id, started_ms)
        self._closed = False
        metrics.start_peers(self._links)  # every peer's series exists from the start, at 0

    # --- the driver's side -------------------------------------------------------------------

    def set_receiver(self, receive: ReceiveCallback) -> None:
        self._receive = receive

    def send(self, dst: int, payload: bytes) -> None:
        link = self._links.get(dst)
        assert link is not None, f"no peer {dst}"
        if not self._closed:
            link.enqueue(payload)

    # --- life cycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Start connecting to every peer (needs the running event loop)."""
        for link in self._links.values():
            link.start()

    def close(self) -> None:
        """Stop every connection, in and out; later sends are dropped."""
        self._closed = True
        for link in self._links.values():
            link.close()
        for writer in self._inbound.values():
            writer.close()
        self._inbound.clear()

    def connected(self, replica: int) -> bool:
        """Whether the outbound connection to ``replica`` has been accepted and is open."""
        link = self._links.get(replica)
        return link is not None and link.connected

    # --- inbound -----------------------------------------------------------------------------

    def check_hello(self, hello: PeerHello) -> None:
        """Raise ``PeerRefused`` unless ``hello`` may open a replica connection here."""
        size, own = self.settings.size, self.settings.replica_id
        if hello.reserved:
            raise PeerRefused("a replica hello must have zero reserved bytes")
        if hello.cluster_size != size:
            raise PeerRefused(
                f"the hello says the cluster has {hello.cluster_size} replicas; "
                f"this node's VDB_CLUSTER_PEERS lists {size}"
            )
        if not 0 <= hello.replica_id < size:
            raise PeerRefused(f"replica id {hello.replica_id} is not in 0..{size - 1}")
        if hello.replica_id == own:
            raise PeerRefused(f"replica id {hello.replica_id} is this node's own")

    async def serve_inbound(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        decoder: FrameDecoder,
        hello: PeerHello,
        request_id: int,
        peer: str,
    ) -> None:
        """Serve a connection whose first frame was ``hello``: replica frames until it ends.

        ``decoder`` holds whatever followed the hello."""
        unproven = self._proofs.check(hello.proof, hello.client_id, realtime_ms(self.clock))
        if unproven is None and self.settings.tls is not None and not _peer_certified(writer):
            unproven = "a replica must present a certificate of the cluster's chain (mTLS)"
        if unproven is not None:
            self.metrics.peer_auth_failures.inc()
            self.log.warn("peer.auth_failed", peer=peer, reason=unproven)
            refusal = ErrorReply(ErrorCode.AUTHENTICATION_FAILED, unproven, None)
            _write(writer, encode(refusal, 0))
            return
        try:
            self.check_hello(hello)
        except PeerRefused as refused:
            self.log.warn("peer.refused", peer=peer, reason=str(refused))
            _write(writer, encode(ErrorReply(ErrorCode.INVALID_REQUEST, str(refused), None), 0))
            return
        if self._closed:
            return
        src = hello.replica_id
        previous = self._inbound.pop(src, None)
        if previous is not None:
            previous.close()  # the peer reconnected: its old connection is stale
        self._inbound[src] = writer
        _keepalive(writer)
        reply = HandshakeReply(
            protocol_version=PROTOCOL_VERSION,
            server_version=__version__,
            replica_id=self.settings.replica_id,
            cluster_size=self.settings.size,
            view=self._view(),
        )
        _write(writer, encode(reply, request_id))
        self.log.info("peer.accepted", replica=src, peer=peer)
        try:
            await self._read_frames(src, reader, writer, decoder)
        finally:
            if self._inbound.get(src) is writer:
                del self._inbound[src]
            self.log.info("peer.disconnected", replica=src, direction="in")

    async def _read_frames(
        self,
        src: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        decoder: FrameDecoder,
    ) -> None:
        try:
            while not self._closed and not writer.is_closing():
                while (frame := decoder.next_frame()) is not None:
                    if frame.command not in COMMAND_REPLICA_RANGE:
                        raise DecodeError(
                            f"{frame.command.name} is not a replica message; a replica "
                            "connection carries only those"
                        )
                    self._deliver(src, frame)
                data = await reader.read(READ_CHUNK_BYTES)
                if not data:
                    return
                decoder.feed(data)
        except DecodeError as error:
            self.log.warn("peer.bad_frame", replica=src, reason=error.reason)
            _write(writer, encode(error_reply(error), 0))
        except (ConnectionError, OSError):
            return

    def _deliver(self, src: int, frame: Frame) -> None:
        self.metrics.peer_received.labels(str(src)).inc()
        if self._observe is not None:
            self._observe(src, frame)
        if self._receive is not None and not self._closed:
            self._receive(src, encode_frame(frame.command, frame.request_id, frame.body))

    # --- helpers for links -------------------------------------------------------------------

    def hello(self, receiver: int) -> bytes:
        """This replica's hello frame to replica ``receiver``, with a fresh proof."""
        now_ms = realtime_ms(self.clock)
        return hello_frame(self.settings, receiver, now_ms, secrets.token_bytes(NONCE_SIZE))


def hello_frame(settings: ClusterSettings, receiver: int, now_ms: int, nonce: bytes) -> bytes:
    """The hello replica ``settings.replica_id`` sends ``receiver`` at ``now_ms``."""
    client_id = hello_client_id(settings.replica_id, settings.size)
    proof = make_proof(settings.secret, client_id, receiver, now_ms, nonce)
    return encode(Handshake(PROTOCOL_VERSION, client_id, proof), 1)


class _PeerLink:
    """The outbound connection to one peer, its queue, and the task that keeps it open."""

    def __init__(self, network: PeerNetwork, replica: int, address: Address) -> None:
        self._network = network
        self.replica = replica
        self.address = address
        self._label = str(replica)
        self._queue: collections.deque[bytes] = collections.deque()
        self._queued_bytes = 0
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.connected = False

    def enqueue(self, payload: bytes) -> None:
        metrics = self._network.metrics
        assert len(payload) <= PEER_QUEUE_BYTES_MAX
        while self._queue and (
            len(self._queue) >= PEER_QUEUE_FRAMES_MAX
            or self._queued_bytes + len(payload) > PEER_QUEUE_BYTES_MAX
        ):
            self._queued_bytes -= len(self._queue.popleft())
            metrics.peer_dropped.labels(self._label).inc()
        self._queue.append(payload)
        self._queued_bytes += len(payload)
        self._wakeup.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        backoff_s = PEER_BACKOFF_FIRST_S
        log = self._network.log
        quiet = False  # the current outage was logged already: retries log at debug only
        while not self._closed:
            writer: asyncio.StreamWriter | None = None
            try:
                reader, writer = await self._connect()
                backoff_s, quiet = PEER_BACKOFF_FIRST_S, False
                self._set_connected(True)
                log.info("peer.connected", replica=self.replica, addr=str(self.address))
                last_word = await self._pump(reader, writer)
                if isinstance(last_word, ErrorReply):
                    log.warn("peer.closed", replica=self.replica, reason=last_word.message)
            except PeerRefused as refused:
                log.error("peer.misconfigured", replica=self.replica, reason=str(refused))
            except (OSError, TimeoutError, DecodeError) as error:
                emit = log.debug if quiet else log.info
                emit("peer.unreachable", replica=self.replica, reason=_why(error))
                quiet = True
            except Exception as error:  # a link must outlive any one connection's failure
                log.error("peer.link_failed", replica=self.replica, reason=_why(error))
            finally:
                if self.connected:
                    log.info("peer.disconnected", replica=self.replica, direction="out")
                self._set_connected(False)
                if writer is not None:
                    writer.close()
            wait_s = backoff_s * (1.0 - PEER_BACKOFF_JITTER * random.random())
            await asyncio.sleep(wait_s)
            backoff_s = min(PEER_BACKOFF_MAX_S, backoff_s * 2)

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Open the connection and exchange hellos; raises on anything but success."""
        network = self._network
        tls = network.settings.tls
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                self.address.host,
                self.address.port,
                ssl=tls,
                server_hostname=self.address.host if tls is not None else None,
                limit=READ_CHUNK_BYTES,
            ),
            PEER_CONNECT_TIMEOUT_S,
        )
        try:
            _keepalive(writer)
            writer.write(network.hello(self.replica))
            reply = await asyncio.wait_for(_one_frame(reader), PEER_HELLO_TIMEOUT_S)
            self._check_reply(reply)
        except BaseException:
            writer.close()
            raise
        return reader, writer

    def _check_reply(self, reply: object) -> None:
        settings = self._network.settings
        if isinstance(reply, ErrorReply):
            raise PeerRefused(f"{self.address} refused the hello: {reply.message}")
        if not isinstance(reply, HandshakeReply):
            raise PeerRefused(f"{self.address} answered the hello with {type(reply).__name__}")
        if reply.replica_id != self.replica or reply.cluster_size != settings.size:
            raise PeerRefused(
                f"{self.address} is replica {reply.replica_id} of {reply.cluster_size}, "
                f"but VDB_CLUSTER_PEERS lists it as replica {self.replica} of {settings.size}"
            )

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> object:
        """Write queued frames until the connection fails or the peer closes it; returns the
        peer's last message, if it sent one before closing."""
        closed_by_peer = asyncio.ensure_future(_one_frame(reader))
        try:
            while not self._closed:
                if closed_by_peer.done():
                    return closed_by_peer.result()  # raises why the connection ended
                if self._queue:
                    # everything queued since the last turn in one write (one send call)
                    frames = list(self._queue)
                    self._queue.clear()
                    self._queued_bytes = 0
                    writer.write(b"".join(frames))
                    self._network.metrics.peer_sent.labels(self._label).inc(len(frames))
                await asyncio.wait_for(writer.drain(), PEER_WRITE_TIMEOUT_S)
                if not self._queue:
                    self._wakeup.clear()
                    wakeup = asyncio.ensure_future(self._wakeup.wait())
                    await asyncio.wait(
                        [wakeup, closed_by_peer], return_when=asyncio.FIRST_COMPLETED
                    )
                    wakeup.cancel()
            return None
        finally:
            if not closed_by_peer.done():
                closed_by_peer.cancel()
            elif not closed_by_peer.cancelled():
                closed_by_peer.exception()  # seen: how the connection ended is handled above

    def _set_connected(self, connected: bool) -> None:
        self.connected = connected
        self._network.metrics.peer_connected.labels(self._label).set(1 if connected else 0)


async def _one_frame(reader: asyncio.StreamReader) -> object:
    """The next message on ``reader``; ``ConnectionError`` if it ends first."""
    decoder = FrameDecoder()
    while True:
        frame = decoder.next_frame()
        if frame is not None:
            return decode_frame(frame)
        data = await reader.read(READ_CHUNK_BYTES)
        if not data:
            raise ConnectionError("the peer closed the connection")
        decoder.feed(data)


def _write(writer: asyncio.StreamWriter, data: bytes) -> None:
    if not writer.is_closing():
        writer.write(data)


def _peer_certified(writer: asyncio.StreamWriter) -> bool:
    """Whether the connection is TLS and the peer presented a certificate that verified
    (the listener asks for one, optionally, in a cluster with TLS)."""
    tls = writer.get_extra_info("ssl_object")
    return isinstance(tls, ssl.SSLObject) and bool(tls.getpeercert())


def _keepalive(writer: asyncio.StreamWriter) -> None:
    """Let the kernel notice a peer that vanished without closing (power loss, cable)."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)


def _why(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    if isinstance(error, DecodeError):
        return error.reason
    return str(error) or type(error).__name__
