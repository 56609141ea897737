"""Accepting connections on a listening address, without hot-looping when accept fails.

``Listener`` owns the listening sockets of one address and runs one accept loop per socket:
each accepted socket is handed to a protocol (``loop.connect_accepted_socket``, with the
TLS handshake when a context is given). asyncio's own accept loop (``loop.create_server``)
answers an out-of-descriptors ``accept`` (EMFILE, ENFILE, ENOBUFS, ENOMEM) by pausing for a
second, but it keeps trying the rest of its batch and schedules one resume per failure, so
the failures and their log lines multiply. This loop instead backs off itself.

Rules it keeps:
- After a failed ``accept`` the loop sleeps ``ACCEPT_BACKOFF_MIN_S``, doubling with each
  failure in a row up to ``ACCEPT_BACKOFF_MAX_S``; one accepted connection resets it.
  Connections wait in the kernel's backlog meanwhile; nothing is dropped by the node.
- Failures are logged at a bounded rate: at most one ``server.accept_failed`` line per
  ``ACCEPT_FAILURE_LOG_INTERVAL_S`` and listener, carrying the count of failures it covers
  (``RateLimitedLog``).
- Time (the rate of log lines) comes from the ``Clock``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import ssl
from collections.abc import Callable

from craton.io.clock import Clock, monotonic_s
from craton.net.config import Address
from craton.net.logs import EventLog, FieldValue

ACCEPT_BACKLOG = 100  # connections the kernel queues for a listening socket
ACCEPT_BACKOFF_MIN_S = 0.05  # the pause after the first failed accept
ACCEPT_BACKOFF_MAX_S = 1.0  # the longest pause between accepts that keep failing
ACCEPT_FAILURE_LOG_INTERVAL_S = 5.0  # at most one accept_failed line per listener this often

ProtocolFactory = Callable[[], asyncio.BaseProtocol]


class RateLimitedLog:
    """One warning line per ``interval_s`` at most, for an event that may repeat quickly:
    each line carries ``count``, the occurrences since the previous line (this one
    included). An occurrence within the interval is counted, not logged; ``flush``, called
    now and then, logs the ones still counted once the interval has passed."""

    def __init__(self, log: EventLog, event: str, interval_s: float, clock: Clock) -> None:
        assert interval_s > 0
        self._log = log
        self._event = event
        self._interval_s = interval_s
        self._clock = clock
        self._count = 0
        self._logged_s: float | None = None
        self._fields: dict[str, FieldValue] = {}  # those of the latest occurrence

    def record(self, **fields: FieldValue) -> None:
        self._count += 1
        self._fields = fields
        self.flush()

    def flush(self) -> None:
        now_s = monotonic_s(self._clock)
        if self._count == 0:
            return
        if self._logged_s is not None and now_s - self._logged_s < self._interval_s:
            return
        self._log.warn(self._event, count=self._count, interval_s=self._interval_s, **self._fields)
        self._count = 0
        self._logged_s = now_s


class Listener:
    """The listening sockets of one address and their accept loops."""

    def __init__(
        self,
        sockets: list[socket.socket],
        protocol_factory: ProtocolFactory,
        log: EventLog,
        clock: Clock,
        *,
        variable: str,
        tls: ssl.SSLContext | None = None,
        tls_handshake_timeout_s: float | None = None,
    ) -> None:
        assert sockets, "a listener has at least one socket"
        self._sockets = sockets
        self._factory = protocol_factory
        self._variable = variable
        self._tls = tls
        self._tls_handshake_timeout_s = tls_handshake_timeout_s
        self._failures = RateLimitedLog(
            log, "server.accept_failed", ACCEPT_FAILURE_LOG_INTERVAL_S, clock
        )
        self._loops: list[asyncio.Task[None]] = []
        self._handovers: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        """The port actually bound (the one the OS chose when asked for port 0)."""
        return int(self._sockets[0].getsockname()[1])

    def start(self) -> None:
        for sock in self._sockets:
            task = asyncio.create_task(self._accept_loop(sock))
            # Closed once its loop has stopped waiting on it: a descriptor closed while the
            # selector still watches it could be reused by a connection and unwatched.
            task.add_done_callback(functools.partial(_close_socket, sock))
            self._loops.append(task)

    def close(self) -> None:
        """Stop accepting and close the listening sockets (accepted connections stay)."""
        if not self._loops:
            for sock in self._sockets:
                sock.close()
        for task in self._loops:
            task.cancel()

    async def _accept_loop(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        backoff_s = ACCEPT_BACKOFF_MIN_S
        while True:
            try:
                conn, _address = await loop.sock_accept(sock)
            except ConnectionAbortedError:
                continue  # the client gave up while queued: nothing to serve, nothing wrong
            except OSError as error:
                self._failures.record(
                    variable=self._variable,
                    error=error.strerror or str(error),
                    backoff_s=backoff_s,
                )
                await asyncio.sleep(backoff_s)
                backoff_s = min(2 * backoff_s, ACCEPT_BACKOFF_MAX_S)
                continue
            backoff_s = ACCEPT_BACKOFF_MIN_S
            self._failures.flush()  # the last failures before this success, once due
            conn.setblocking(False)
            task = asyncio.create_task(self._hand_over(conn))
            self._handovers.add(task)
            task.add_done_callback(self._handovers.discard)

    async def _hand_over(self, conn: socket.socket) -> None:
        """Give the accepted socket to its protocol; a failed TLS handshake closes it."""
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(
                self._factory,
                conn,
                ssl=self._tls,
                ssl_handshake_timeout=self._tls_handshake_timeout_s,
            )
        except (OSError, ssl.SSLError, TimeoutError):
            conn.close()  # asyncio closes its transport; the socket may not have had one


def _close_socket(sock: socket.socket, _loop_done: asyncio.Task[None]) -> None:
    sock.close()


def bind(address: Address) -> list[socket.socket]:
    """Listening, non-blocking sockets for every address ``address.host`` resolves to;
    raises ``OSError`` (after closing what it opened) when one cannot be bound."""
    host = address.host or None
    infos = socket.getaddrinfo(host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    seen: list[object] = []
    try:
        for family, kind, proto, _name, sockaddr in infos:
            if sockaddr in seen:
                continue
            seen.append(sockaddr)
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(sockaddr)
            sock.listen(ACCEPT_BACKLOG)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.close()
        raise
    return sockets
