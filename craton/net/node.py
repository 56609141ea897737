"""The replica host: Craton's VSR ``Replica`` and its ``EventStore`` on real files, under asyncio.

``ReplicaHost`` runs the very objects the simulator runs — ``Replica``, ``Log``,
``EventStore`` and the one ``Driver`` — against the production ``FileDisk`` (completions
posted with ``loop.call_soon_threadsafe``), feeds the driver a ``Tick`` every
``TICK_INTERVAL_S``, and turns client operations into the replica's ``ClientRequest``
inputs and its ``Reply`` effects back into outcomes for the connections.

Client sessions (the replica's client table gives exactly-once semantics):
- A wire client (``Handshake.client_id``, u128, in a tenant) maps to one replica client id,
  a stable 64-bit hash of both, so a client that reconnects — to this process or to one
  restarted on the same data directory — finds its session again (the replica rebuilds its
  client table from the log). A new client registers first (request number 0; the op it
  commits at is its session).
- A write (create stream, append) with wire request id ``r`` is the replica request
  ``session << 32 | r``: a retry with the same ``r`` is answered from the replica's cached
  reply (or this host's ``WRITE_REPLIES_KEPT`` most recent replies) and never applied twice.
  Request ids of writes are therefore limited to ``1..REQUEST_NUMBER_MAX``.
- Reads go through the log as well (so they are linearizable: each read is applied at its
  own op), in one session this host owns, numbered by the host: a retried read is simply
  executed again.

Rules it keeps:
- Requests enter the replica in arrival order, one ``Driver.step`` at a time, and only
  while the replica has room in its pipeline (``PIPELINE_OPS_MAX`` uncommitted ops), so a
  client's requests are prepared in the order it sent them. A ``BUSY`` answer puts the
  request back at the front of the queue until the next tick.
- The driver is never stepped from inside one of its own callbacks: replies schedule the
  next admission with ``call_soon``.
- ``SESSIONS_MAX`` is the replica's client-table size. It decides, when the log is
  replayed, which requests of evicted sessions are refused, so it is part of what a data
  directory means and never changes for an existing one.
- Sessions this host tracks are pruned to those in the replica's client table once there
  are more than ``SESSIONS_MAX``. Sessions are ops, and request numbers must fit 64 bits,
  so a session registered at op ``SESSION_OPS_MAX`` (2**32) or later cannot be used:
  such requests are refused with ``INTERNAL`` rather than overflowing.
- A ``Halt`` from the core is final: every waiting request is refused with ``INTERNAL`` and
  the owner is told (the server then exits non-zero).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import fcntl
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import attrs

from craton.core.event_store import EventStore
from craton.core.prng import Prng
from craton.core.seam import (
    ClientRequest,
    DiskCompletion,
    DiskRequest,
    DiskWrite,
    Effect,
    Halt,
    Input,
    Notice,
    Reply,
    Tick,
    WriteDone,
)
from craton.core.vsr.replica import (
    NUMBER_MASK,
    SESSION_SHIFT,
    Replica,
    ReplicaConfig,
    ReplyStatus,
    Status,
)
from craton.core.wire.errors import ErrorCode
from craton.core.wire.replica import OPERATION_SIZE_MAX, SUFFIX_ENTRIES_MAX
from craton.io.driver import Driver
from craton.io.entropy import OsEntropy
from craton.io.file_disk import FileDisk
from craton.io.interfaces import DiskCallback
from craton.io.local import load_or_create_seal_seed
from craton.net.logs import EventLog
from craton.net.metrics import NodeMetrics

TICK_INTERVAL_S = 0.010  # one core tick
PIPELINE_OPS_MAX = SUFFIX_ENTRIES_MAX  # uncommitted ops in flight: a group commit's size
SESSIONS_MAX = 4096  # the replica's client table; fixed for a data directory (see above)
CHECKPOINT_INTERVAL_OPS = 1024  # committed ops between sealed checkpoints
QUEUE_REQUESTS_MAX = 65_536  # requests waiting for the pipeline, all connections together
WRITE_REPLIES_KEPT = 64  # most recent write replies kept per client, for retries
SESSION_OPS_MAX = 1 << (64 - SESSION_SHIFT)  # a session (an op) must leave room for numbers
REQUEST_NUMBER_MAX = NUMBER_MASK  # largest wire request id of a write
OPERATION_BYTES_MAX = OPERATION_SIZE_MAX  # bytes of one encoded event-store operation
LOCK_FILE = "node.lock"
_U64 = 8


@attrs.frozen
class Applied:
    """The operation committed at ``op``; ``reply`` is the event store's encoded reply."""

    op: int
    reply: bytes


@attrs.frozen
class Refused:
    """The operation was not (or not knowably) applied; ``code`` says what a client does."""

    code: ErrorCode
    message: str


Outcome = Applied | Refused
Done = Callable[[Outcome], None]


class HostError(RuntimeError):
    """The host cannot start: the data directory is locked, unreadable or damaged."""


def replica_client_id(tenant_id: int, client_id: int) -> int:
    """The replica's 64-bit id for wire client ``client_id`` of tenant ``tenant_id``."""
    digest = hashlib.blake2b(
        tenant_id.to_bytes(8, "little") + client_id.to_bytes(16, "little"),
        digest_size=8,
        person=b"craton.client",
    ).digest()
    return int.from_bytes(digest, "little")


READ_CLIENT_ID = int.from_bytes(
    hashlib.blake2b(b"reads", digest_size=8, person=b"craton.host").digest(), "little"
)


class _State(enum.Enum):
    NEW = "new"
    REGISTERING = "registering"
    ACTIVE = "active"


@attrs.define
class _Session:
    client: int  # replica client id
    state: _State = _State.NEW
    session: int = 0  # the op that registered it, once ACTIVE
    waiting: list[tuple[int, bytes, Done]] = attrs.Factory(list)  # until registered
    replies: collections.OrderedDict[int, bytes] = attrs.Factory(collections.OrderedDict)
    ready: list[Callable[[Refused | None], None]] = attrs.Factory(list)


@attrs.define
class _Pending:
    client: int
    number: int
    body: bytes


class _CountingDisk:
    """The data directory's ``Disk``, counting the bytes of completed writes."""

    def __init__(self, disk: FileDisk, metrics: NodeMetrics) -> None:
        self._disk = disk
        self._metrics = metrics

    def submit(self, request: DiskRequest, complete: DiskCallback) -> None:
        if not isinstance(request, DiskWrite):
            self._disk.submit(request, complete)
            return
        size = len(request.data)

        def counted(completion: DiskCompletion) -> None:
            if isinstance(completion, WriteDone):
                self._metrics.bytes_written.inc(size)
            complete(completion)

        self._disk.submit(request, counted)


class _Observed:
    """The replica as the driver's machine, with its progress reported to the metrics."""

    def __init__(self, replica: Replica, metrics: NodeMetrics) -> None:
        self.replica = replica
        self._metrics = metrics
        self._durable = 0
        self._counting = False

    def step(self, event: Input) -> list[Effect]:
        effects = self.replica.step(event)
        durable = self.replica.log.durable
        if not self._counting and self.replica.status is not Status.LOADING:
            self._counting, self._durable = True, durable  # recovered records are not new
        elif self._counting and durable > self._durable:
            self._metrics.records.inc(durable - self._durable)
        self._durable = durable
        self._metrics.view.set(self.replica.view)
        return effects

    def invariants(self) -> None:
        self.replica.invariants()


class ReplicaHost:
    def __init__(
        self,
        data_dir: Path,
        log: EventLog,
        metrics: NodeMetrics,
        *,
        on_halt: Callable[[str], None] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self._log = log
        self._metrics = metrics
        self._on_halt_callback = on_halt
        self.halted: str | None = None
        self._queue: collections.deque[_Pending] = collections.deque()
        self._waiters: dict[tuple[int, int], list[Callable[[bytes], None]]] = {}
        self._sessions: dict[int, _Session] = {}
        self._reads = _Session(READ_CLIENT_ID)
        self._read_number = 0
        self._pump_scheduled = False
        self._busy = False  # the request just stepped was answered BUSY
        self._ticker: asyncio.TimerHandle | None = None
        self._ready = asyncio.Event()
        self._after_ready: list[Callable[[], None]] = []
        self._lock_fd: int | None = None
        self._closed = False
        self._disk: FileDisk | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.replica: Replica | None = None
        self._driver: Driver | None = None

    # --- life cycle ------------------------------------------------------------------------

    def open(self) -> None:
        """Lock the data directory and start recovering it (``wait_ready`` follows)."""
        self._loop = asyncio.get_running_loop()
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._lock_fd = _lock(self.data_dir / LOCK_FILE)
            seed = load_or_create_seal_seed(self.data_dir)
        except (OSError, ValueError) as error:
            raise HostError(f"data directory {self.data_dir}: {_reason(error)}") from None
        self._disk = FileDisk(self.data_dir, self._post)
        config = ReplicaConfig(
            replica_id=0,
            replica_count=1,
            seal_seed=seed,
            pipeline_max=PIPELINE_OPS_MAX,
            client_table_max=SESSIONS_MAX,
            checkpoint_interval_ops=CHECKPOINT_INTERVAL_OPS,
        )
        jitter_seed = int.from_bytes(OsEntropy().random_bytes(8), "little")
        self.replica = Replica(config, EventStore(), Prng(jitter_seed, "replica"))
        self._driver = Driver(
            _Observed(self.replica, self._metrics),
            _CountingDisk(self._disk, self._metrics),
            on_reply=self._on_reply,
            on_notice=self._on_notice,
            on_halt=self._on_halt,
        )
        self._driver.launch(self.replica.start())
        self._ticker = self._loop.call_later(TICK_INTERVAL_S, self._tick)

    def _post(self, callback: Callable[[], None]) -> None:
        """Run a disk completion on the loop (called from the disk's worker threads)."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._run_unless_closed, callback)

    def _run_unless_closed(self, callback: Callable[[], None]) -> None:
        if not self._closed:  # after close the replica is gone: late completions are moot
            callback()

    async def wait_ready(self) -> None:
        """Return once the log is recovered and the replica serves (or it halted)."""
        await self._ready.wait()

    @property
    def ready(self) -> bool:
        replica = self.replica
        return (
            self.halted is None
            and replica is not None
            and replica.status is Status.NORMAL
            and replica.is_primary
        )

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing prepared but uncommitted."""
        replica = self.replica
        pipeline_empty = replica is None or replica.head == replica.commit
        return not self._queue and pipeline_empty

    @property
    def commit(self) -> int:
        return 0 if self.replica is None else self.replica.commit

    @property
    def view(self) -> int:
        return 0 if self.replica is None else self.replica.view

    async def drain(self, timeout_s: float) -> bool:
        """Wait until every queued request is committed; False if ``timeout_s`` ran out."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not self.idle and self.halted is None:
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(TICK_INTERVAL_S)
        return self.halted is None

    def close(self) -> None:
        """Stop ticking, let the disk finish what it was given, and unlock the directory."""
        self._closed = True
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        if self._disk is not None:
            self._disk.close()
            self._disk = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # --- sessions --------------------------------------------------------------------------

    def open_session(
        self, tenant_id: int, client_id: int, done: Callable[[Refused | None], None]
    ) -> None:
        """Make sure the client has a session; ``done(None)`` once it has.

        Before the log is recovered the client table is not known yet, so the session is
        looked up only once the replica serves."""
        if not self.ready and self.halted is None:
            self._after_ready.append(lambda: self.open_session(tenant_id, client_id, done))
            return
        if self.halted is not None:
            done(Refused(ErrorCode.UNAVAILABLE, "the node stopped after a fault"))
            return
        session = self._session(replica_client_id(tenant_id, client_id))
        if session.state is _State.ACTIVE:
            done(None)
            return
        session.ready.append(done)
        self._register(session)

    def submit_write(
        self, tenant_id: int, client_id: int, request_id: int, body: bytes, done: Done
    ) -> None:
        """Apply a create-stream or append once, whatever the retries of ``request_id``."""
        assert 1 <= request_id <= REQUEST_NUMBER_MAX, request_id
        refusal = self._check(body)
        if refusal is not None:
            done(refusal)
            return
        session = self._session(replica_client_id(tenant_id, client_id))
        if session.state is not _State.ACTIVE:
            session.waiting.append((request_id, body, done))
            self._register(session)
            return
        self._send_write(session, request_id, body, done)

    def submit_read(self, body: bytes, done: Done) -> None:
        """Apply a read at its own op (linearizable); a retry is a new read."""
        refusal = self._check(body)
        if refusal is not None:
            done(refusal)
            return
        session = self._reads
        if session.state is not _State.ACTIVE or self._read_number >= REQUEST_NUMBER_MAX:
            session.waiting.append((0, body, done))
            if session.state is _State.ACTIVE:
                session.state = _State.NEW  # numbers ran out: a new session starts over
            self._register(session)
            return
        self._send_read(body, done)

    def _check(self, body: bytes) -> Refused | None:
        if self.halted is not None:
            return Refused(ErrorCode.UNAVAILABLE, "the node stopped after a fault")
        if not self.ready:
            return Refused(ErrorCode.UNAVAILABLE, "the node is recovering its log")
        if len(body) > OPERATION_BYTES_MAX:
            return Refused(
                ErrorCode.TOO_LARGE,
                f"the operation is {len(body)} bytes; at most {OPERATION_BYTES_MAX} fit one op",
            )
        if len(self._queue) >= QUEUE_REQUESTS_MAX:
            return Refused(ErrorCode.UNAVAILABLE, "the node's request queue is full")
        return None

    def _session(self, client: int) -> _Session:
        session = self._sessions.get(client)
        if session is None:
            session = _Session(client)
            known = None if self.replica is None else self.replica.clients.get(client)
            if known is not None:  # restarted: the log holds this client's session
                session.state, session.session = _State.ACTIVE, known.session
            self._sessions[client] = session
        return session

    def _register(self, session: _Session) -> None:
        if session.state is not _State.NEW:
            return
        session.state = _State.REGISTERING
        self._enqueue(session.client, 0, b"", lambda body: self._registered(session, body))

    def _registered(self, session: _Session, body: bytes) -> None:
        if body[0] != ReplyStatus.OK:
            session.state = _State.NEW
            refusal = _refusal(body, "registering the client session")
            waiting, session.waiting = session.waiting, []
            ready, session.ready = session.ready, []
            for _, _, done in waiting:
                done(refusal)
            for callback in ready:
                callback(refusal)
            return
        session.state = _State.ACTIVE
        session.session = int.from_bytes(body[1 : 1 + _U64], "little")
        session.replies.clear()
        if len(self._sessions) > SESSIONS_MAX:
            self._prune_sessions()
        waiting, session.waiting = session.waiting, []
        ready, session.ready = session.ready, []
        if session is self._reads:
            self._read_number = 0
            for _, request_body, done in waiting:
                self._send_read(request_body, done)
        else:
            for request_id, request_body, done in waiting:
                self._send_write(session, request_id, request_body, done)
        for callback in ready:
            callback(None)

    def _prune_sessions(self) -> None:
        """Forget the sessions the replica evicted from its client table (and that wait for
        nothing), so that this host holds about as many as the replica does."""
        assert self.replica is not None
        known = self.replica.clients
        for client in [c for c, s in self._sessions.items() if c not in known]:
            session = self._sessions[client]
            if session.state is _State.ACTIVE and not session.waiting and not session.ready:
                del self._sessions[client]

    def _send_write(self, session: _Session, request_id: int, body: bytes, done: Done) -> None:
        if session.session >= SESSION_OPS_MAX:
            done(_exhausted())
            return
        number = session.session << SESSION_SHIFT | request_id

        def replied(reply: bytes) -> None:
            status = reply[0]
            if status == ReplyStatus.OK:
                session.replies[request_id] = reply
                while len(session.replies) > WRITE_REPLIES_KEPT:
                    session.replies.popitem(last=False)
                done(_applied(reply))
            elif status == ReplyStatus.STALE and request_id in session.replies:
                done(_applied(session.replies[request_id]))
            elif status == ReplyStatus.STALE:
                done(
                    Refused(
                        ErrorCode.INVALID_REQUEST,
                        f"request {request_id} of this client was applied before and its "
                        f"reply is no longer kept (only the last {WRITE_REPLIES_KEPT} are)",
                    )
                )
            elif status == ReplyStatus.SESSION_EXPIRED:
                if session.state is _State.ACTIVE and session.session == number >> SESSION_SHIFT:
                    session.state = _State.NEW
                done(
                    Refused(
                        ErrorCode.INTERNAL,
                        f"the client's session expired (over {SESSIONS_MAX} newer clients): "
                        "this attempt was not applied; an earlier attempt may have been",
                    )
                )
            else:
                done(_refusal(reply, "write"))

        self._enqueue(session.client, number, body, replied)

    def _send_read(self, body: bytes, done: Done) -> None:
        session = self._reads
        if session.session >= SESSION_OPS_MAX:
            done(_exhausted())
            return
        self._read_number += 1
        number = session.session << SESSION_SHIFT | self._read_number

        def replied(reply: bytes) -> None:
            if reply[0] == ReplyStatus.OK:
                done(_applied(reply))
            elif reply[0] == ReplyStatus.SESSION_EXPIRED:
                if session.state is _State.ACTIVE and session.session == number >> SESSION_SHIFT:
                    session.state = _State.NEW
                self.submit_read(body, done)  # reads change nothing: run it again
            else:
                done(_refusal(reply, "read"))

        self._enqueue(session.client, number, body, replied)

    # --- admission -------------------------------------------------------------------------

    def _enqueue(
        self, client: int, number: int, body: bytes, replied: Callable[[bytes], None]
    ) -> None:
        self._waiters.setdefault((client, number), []).append(replied)
        self._queue.append(_Pending(client, number, body))
        self._schedule_pump()

    def _schedule_pump(self) -> None:
        if not self._pump_scheduled and self._loop is not None:
            self._pump_scheduled = True
            self._loop.call_soon(self._pump)

    def _pump(self) -> None:
        """Step queued requests into the replica while its pipeline has room."""
        self._pump_scheduled = False
        replica, driver = self.replica, self._driver
        assert replica is not None and driver is not None
        while self._queue and self.ready:
            if replica.head - replica.commit >= PIPELINE_OPS_MAX:
                return  # a commit's replies schedule the next round
            pending = self._queue.popleft()
            self._busy = False
            driver.step(ClientRequest(pending.client, pending.number, pending.body))
            if self._busy:
                self._queue.appendleft(pending)
                return  # the next tick tries again

    # --- driver callbacks ------------------------------------------------------------------

    def _tick(self) -> None:
        assert self._loop is not None and self._driver is not None
        self._ticker = self._loop.call_later(TICK_INTERVAL_S, self._tick)
        if self.halted is None:
            self._driver.step(Tick())
            if not self._ready.is_set() and self.ready:
                self._log.info("replica.ready", view=self.view, commit=self.commit)
                self._ready.set()
                after, self._after_ready = self._after_ready, []
                for callback in after:
                    callback()
            if self._queue:
                self._pump()

    def _on_reply(self, reply: Reply) -> None:
        if reply.body[:1] == bytes([ReplyStatus.BUSY]):
            self._busy = True
            return
        for replied in self._waiters.pop((reply.client_id, reply.request_id), []):
            replied(reply.body)
        if self._queue:
            self._schedule_pump()

    def _on_notice(self, notice: Notice) -> None:
        fields = {name: value for name, value in notice.fields}
        if notice.event == "replica.checkpoint":
            self._metrics.checkpoints.inc()
            self._log.debug(notice.event, **fields)
        elif notice.event in ("log.formatted", "replica.started", "log.torn_tail_truncated"):
            self._log.info(notice.event, **fields)
        else:
            self._log.debug(notice.event, **fields)

    def _on_halt(self, halt: Halt) -> None:
        self.halted = halt.reason
        self._log.error("replica.halted", reason=halt.reason)
        refusal = Refused(ErrorCode.INTERNAL, "the node stopped after a fault")
        waiters, self._waiters = self._waiters, {}
        self._queue.clear()
        for callbacks in waiters.values():
            for replied in callbacks:
                with contextlib.suppress(Exception):
                    replied(bytes([ReplyStatus.BUSY]))
        for session in [*self._sessions.values(), self._reads]:
            waiting, session.waiting = session.waiting, []
            for _, _, done in waiting:
                done(refusal)
        after, self._after_ready = self._after_ready, []
        for callback in after:
            callback()
        self._ready.set()
        if self._on_halt_callback is not None:
            self._on_halt_callback(halt.reason)


# --- helpers ---------------------------------------------------------------------------------


def _applied(reply: bytes) -> Applied:
    return Applied(int.from_bytes(reply[1 : 1 + _U64], "little"), reply[1 + _U64 :])


def _exhausted() -> Refused:
    # Request numbers are ``session << 32 | number`` in 64 bits: a session registered at an
    # op of 2**32 or more cannot number its requests.
    return Refused(
        ErrorCode.INTERNAL,
        f"the log has passed op {SESSION_OPS_MAX}, beyond which client sessions cannot be "
        "numbered in this version",
    )


def _refusal(reply: bytes, what: str) -> Refused:
    status = reply[0] if reply else -1
    if status == ReplyStatus.NOT_PRIMARY:
        return Refused(ErrorCode.NOT_PRIMARY, "this replica is not the primary")
    if status == ReplyStatus.BUSY:
        return Refused(ErrorCode.INTERNAL, f"the node stopped during a {what}")
    return Refused(ErrorCode.INTERNAL, f"unexpected replica answer {status} to a {what}")


def _lock(path: Path) -> int:
    """An exclusive lock on ``path`` for the life of the process (the kernel drops it when
    the process dies, kill -9 included)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise OSError(f"{path.name} is locked: another craton-server uses it") from None
    return fd


def _reason(error: Exception) -> str:
    if isinstance(error, OSError) and error.strerror:
        return f"{error.strerror}" + (f": {error.filename}" if error.filename else "")
    return str(error)
