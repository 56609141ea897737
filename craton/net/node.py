"""The replica host: Craton's VSR ``Replica`` and its ``EventStore`` on real files, under asyncio.

``ReplicaHost`` runs the very objects the simulator runs — ``Replica``, ``Log``,
``EventStore`` and the one ``Driver`` — against the production ``FileDisk`` (completions
posted with ``loop.call_soon_threadsafe``) and, in a cluster, the ``PeerNetwork``
(``craton.net.peers``: ``Send`` effects go to a peer's queue, frames from peers come back
as ``MessageReceived``); it feeds the driver a ``Tick`` every ``TICK_INTERVAL_S``, and turns
client operations into the replica's ``ClientRequest`` inputs and its ``Reply`` effects
back into outcomes for the connections.

States, as clients and probes see them:
- *recovering*: the log is being read back; requests are refused with ``UNAVAILABLE``, a
  handshake waits (it needs the client table).
- *serving*: the replica is the primary of its view in normal status; requests are queued
  for it.
- *backup*: normal status, another replica is the primary; requests are refused with
  ``NOT_PRIMARY`` carrying the primary's address from ``VDB_CLUSTER_PEERS``.
- *view change*: no primary is known; requests are refused with ``UNAVAILABLE``.
``ready`` (for ``/ready``) means recovered and in normal status: the node knows a primary.

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
- When the host stops serving (its replica lost the primary role, or changed view), every
  request it was waiting for is refused at once — ``NOT_PRIMARY`` with the new primary's
  address when known, else ``UNAVAILABLE`` — and its session cache is dropped: a request
  whose outcome is unknown is retried by the client with the same request id, and the
  next primary's client table decides it. Its reply is never invented here.
- A session is looked up in the replica's client table before a registration is
  prepared, and only once the table is final for this view (everything in the log is
  applied), so that a client whose registration committed in an earlier view keeps its
  session — and its retried request is not applied a second time.
- A ``Halt`` from the core is final: every waiting request is refused with ``INTERNAL`` and
  the owner is told (the server then exits non-zero).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import fcntl
import functools
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import attrs

from craton.core.auth import ApiKeyEntry
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
from craton.core.vsr.profile import PRODUCTION, TICK_MS
from craton.core.vsr.replica import (
    NUMBER_MASK,
    SESSION_SHIFT,
    Replica,
    ReplyStatus,
    Status,
)
from craton.core.wire import Command, DecodeError, Frame, decode_frame
from craton.core.wire.errors import ErrorCode
from craton.core.wire.replica import OPERATION_SIZE_MAX, Commit, PrepareOk
from craton.io.clock import SYSTEM_CLOCK, Clock, monotonic_s
from craton.io.driver import Driver
from craton.io.entropy import OsEntropy
from craton.io.file_disk import FileDisk
from craton.io.interfaces import DiskCallback
from craton.io.local import load_or_create_seal_seed
from craton.net.logs import EventLog
from craton.net.metrics import NodeMetrics
from craton.net.peers import ClusterSettings, PeerNetwork

# The replica's sizes and timeouts are the production profile's (``craton.core.vsr.profile``),
# the very profile a share of the simulator's seeds runs.
TICK_INTERVAL_S = TICK_MS / 1000  # one core tick
PIPELINE_OPS_MAX = PRODUCTION.pipeline_max  # uncommitted ops in flight: a group commit's size
SESSIONS_MAX = PRODUCTION.client_table_max  # fixed for a data directory (see above)
QUEUE_REQUESTS_MAX = 65_536  # requests waiting for the pipeline, all connections together
WRITE_REPLIES_KEPT = 64  # most recent write replies kept per client, for retries
SESSION_OPS_MAX = 1 << (64 - SESSION_SHIFT)  # a session (an op) must leave room for numbers
REQUEST_NUMBER_MAX = NUMBER_MASK  # largest wire request id of a write
OPERATION_BYTES_MAX = OPERATION_SIZE_MAX  # bytes of one encoded event-store operation
LOCK_FILE = "node.lock"
_BUSY = bytes([ReplyStatus.BUSY])
# What an operator must see of damage and repair, one line each (file, offset, records):
_WARNING_NOTICES = frozenset(
    {
        "log.damage_cut",  # the damaged record's file, offset and position; the log is cut there
        "log.records_missing",  # a replica's log ends short of its witness: file, offset
        "log.superblock_lost",
        "log.base_state_lost",
        "log.history_lost",
        "log.witness_unreadable",
        "replica.recovering",  # damage, a lost disk or an unfinished recovery
        "replica.repair_abandoned",
        "replica.checkpoint_rejected",
    }
)
_INFO_NOTICES = frozenset(
    {
        "log.formatted",
        "replica.started",
        "log.torn_tail_truncated",
        "replica.view_change",
        "replica.primary",
        "replica.repaired",  # the holes were fetched from the peers by hash
        "replica.recovered",  # the view's log is installed: the replica takes part again
        "replica.state_synced",
    }
)
_U64 = 8


@attrs.frozen
class Applied:
    """The operation committed at ``op``; ``reply`` is the event store's encoded reply."""

    op: int
    reply: bytes


@attrs.frozen
class Refused:
    """The operation was not (or not knowably) applied; ``code`` says what a client does.
    ``primary_address`` comes with ``NOT_PRIMARY`` when the primary is known."""

    code: ErrorCode
    message: str
    primary_address: str | None = None


Outcome = Applied | Refused
Done = Callable[[Outcome], None]


class HostError(RuntimeError):
    """The host cannot start: the data directory is locked, unreadable or damaged."""


@functools.lru_cache(maxsize=SESSIONS_MAX)
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
    """The replica as the driver's machine: after every step the host looks at it (metrics,
    serving or not) before the step's effects are carried out."""

    def __init__(self, replica: Replica, after_step: Callable[[], None]) -> None:
        self.replica = replica
        self._after_step = after_step

    def step(self, event: Input) -> list[Effect]:
        effects = self.replica.step(event)
        self._after_step()
        return effects

    def invariants(self) -> None:
        self.replica.invariants()


@attrs.define
class _Progress:
    """What this replica heard of the others' progress, for ``vdb_replication_lag_records``:
    each peer's latest acknowledged op (``PrepareOk``, by view) and the primary's latest
    commit number (``Commit`` heartbeats)."""

    acked: dict[int, tuple[int, int]] = attrs.Factory(dict)  # replica -> (view, op)
    primary_commit: tuple[int, int] = (0, 0)  # (view, commit)

    def observe(self, frame: Frame) -> None:
        if frame.command not in (Command.PREPARE_OK, Command.COMMIT):
            return
        try:
            message = decode_frame(frame)
        except DecodeError:
            return  # the replica reports it
        if isinstance(message, PrepareOk):
            known = self.acked.get(message.replica, (-1, -1))
            if (message.view, message.op) > known:
                self.acked[message.replica] = (message.view, message.op)
        elif isinstance(message, Commit) and (message.view, message.commit) > self.primary_commit:
            self.primary_commit = (message.view, message.commit)

    def lag(self, replica: Replica) -> int:
        count = replica.config.replica_count
        if count == 1:
            return 0
        if replica.is_primary:
            others = [r for r in range(count) if r != replica.config.replica_id]
            held = min(self.acked.get(r, (0, -1))[1] + 1 for r in others)
            return max(0, replica.commit - held)
        return max(0, self.primary_commit[1] - replica.commit)


class ReplicaHost:
    def __init__(
        self,
        data_dir: Path,
        log: EventLog,
        metrics: NodeMetrics,
        *,
        cluster: ClusterSettings | None = None,
        on_halt: Callable[[str], None] | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.data_dir = data_dir
        self.clock = clock
        self._log = log
        self._metrics = metrics
        self._cluster = cluster
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
        self._after_recovery: list[Callable[[], None]] = []
        self._recovered_seen = False
        self._serving_view: int | None = None  # the view this host serves as primary in
        self._table_final = False  # the client table holds every op of the serving view's log
        self._durable = 0
        self._counting = False
        self._progress = _Progress()
        self._gauges: tuple[int, int] | None = None  # (view, lag) as the metrics last showed
        self._lock_fd: int | None = None
        self._closed = False
        self._disk: FileDisk | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.replica: Replica | None = None
        self._driver: Driver | None = None
        self.peers: PeerNetwork | None = None
        if cluster is not None:
            self.peers = PeerNetwork(
                cluster,
                metrics,
                log,
                view=lambda: self.view,
                observe=lambda _src, frame: self._progress.observe(frame),
                clock=clock,
            )

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
        config = PRODUCTION.config(
            replica_id=self.replica_id,
            replica_count=self.cluster_size,
            seal_seed=seed,
            # Once the cluster has formed, a blank disk is a lost one (``Replica.member``).
            joined=self._cluster is not None and self._cluster.formed,
        )
        jitter_seed = int.from_bytes(OsEntropy().random_bytes(8), "little")
        self.replica = Replica(config, EventStore(), Prng(jitter_seed, "replica"))
        self._driver = Driver(
            _Observed(self.replica, self._after_step),
            _CountingDisk(self._disk, self._metrics),
            network=self.peers,
            on_reply=self._on_reply,
            on_notice=self._on_notice,
            on_halt=self._on_halt,
        )
        self._driver.launch(self.replica.start())
        if self.peers is not None:
            self.peers.start()
        self._ticker = self._loop.call_later(TICK_INTERVAL_S, self._tick)

    def _post(self, callback: Callable[[], None]) -> None:
        """Run a disk completion on the loop (called from the disk's worker threads)."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._run_unless_closed, callback)

    def _run_unless_closed(self, callback: Callable[[], None]) -> None:
        if not self._closed:  # after close the replica is gone: late completions are moot
            callback()

    async def wait_ready(self) -> None:
        """Return once the log is recovered and a primary is known (or the node halted)."""
        await self._ready.wait()

    @property
    def replica_id(self) -> int:
        return 0 if self._cluster is None else self._cluster.replica_id

    @property
    def cluster_size(self) -> int:
        return 1 if self._cluster is None else self._cluster.size

    @property
    def in_cluster(self) -> bool:
        return self._cluster is not None

    @property
    def recovered(self) -> bool:
        """The log is read back and the replica runs (whatever its status)."""
        replica = self.replica
        return replica is not None and replica.status is not Status.LOADING

    @property
    def serving(self) -> bool:
        """The replica is the primary of its view, in normal status: it takes requests."""
        replica = self.replica
        return (
            self.halted is None
            and replica is not None
            and replica.status is Status.NORMAL
            and replica.is_primary
        )

    @property
    def ready(self) -> bool:
        """Recovered, not halted, and in normal status: this node knows the primary."""
        replica = self.replica
        return self.halted is None and replica is not None and replica.status is Status.NORMAL

    @property
    def settled(self) -> bool:
        """Ready, and recovered and taking part (``Replica.settled``): the view's whole log
        installed and, for a backup, caught up with its primary. What ``/ready`` reports."""
        replica = self.replica
        return self.ready and replica is not None and replica.settled

    @property
    def primary_address(self) -> str | None:
        """``host:port`` of the primary, when this node knows one (normal status)."""
        replica = self.replica
        if not self.ready or replica is None:
            return None
        if self._cluster is None:
            return None
        return str(self._cluster.addresses[replica.primary])

    @property
    def status(self) -> str:
        """What this node is doing, in words, for probes and logs."""
        replica = self.replica
        if self.halted is not None:
            return "stopped after a fault"
        if replica is None or replica.status is Status.LOADING:
            return "recovering the log"
        if replica.status is Status.VIEW_CHANGE:
            return f"no primary known: view change to view {replica.view} in progress"
        if replica.status is Status.RECOVERING:
            return "repairing its log from the other replicas (damaged or lost disk)"
        if replica.installing:
            return f"installing the log of view {replica.view} (damaged, lost or behind)"
        if replica.is_primary:
            return f"primary of view {replica.view}"
        backup = f"backup in view {replica.view}, primary is replica {replica.primary}"
        if not replica.settled:
            return f"{backup}; catching up with it"
        return backup

    @property
    def idle(self) -> bool:
        """Nothing queued, and as primary, nothing prepared but uncommitted."""
        replica = self.replica
        pipeline_empty = replica is None or replica.head == replica.commit or not self.serving
        return not self._queue and pipeline_empty

    @property
    def commit(self) -> int:
        return 0 if self.replica is None else self.replica.commit

    @property
    def view(self) -> int:
        return 0 if self.replica is None else self.replica.view

    async def drain(self, timeout_s: float) -> bool:
        """Wait until every queued request is committed; False if ``timeout_s`` ran out
        (measured on the host's clock)."""
        clock = self.clock
        deadline_s = monotonic_s(clock) + timeout_s
        while not self.idle and self.halted is None:
            if monotonic_s(clock) >= deadline_s:
                return False
            await asyncio.sleep(TICK_INTERVAL_S)
        return self.halted is None

    def close(self) -> None:
        """Stop ticking and talking to peers, let the disk finish what it was given, and
        unlock the directory."""
        self._closed = True
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        if self.peers is not None:
            self.peers.close()
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
        """Make sure the client has a session on the primary; ``done(None)`` once it has.

        Before the log is recovered the client table is not known yet, so the answer waits
        for recovery. A node that is not serving answers at once: the client's requests
        will be redirected (or refused until a primary is known), and the primary opens
        the session when the first of them reaches it."""
        if not self.recovered and self.halted is None:
            self._after_recovery.append(lambda: self.open_session(tenant_id, client_id, done))
            return
        if self.halted is not None:
            done(Refused(ErrorCode.UNAVAILABLE, "the node stopped after a fault"))
            return
        if not self.serving:
            done(None)
            return
        session = self._session(replica_client_id(tenant_id, client_id))
        if session.state is _State.ACTIVE:
            done(None)
            return
        session.ready.append(done)
        self._register(session)

    def when_recovered(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the log is read back (or the node halted): now, if so."""
        if self.recovered or self.halted is not None:
            callback()
        else:
            self._after_recovery.append(callback)

    def api_key(self, key_id: int) -> ApiKeyEntry | None:
        """The API key as this replica last applied it (``craton.core.auth.KeyTable``)."""
        machine = None if self.replica is None else self.replica.machine
        return machine.api_key(key_id) if isinstance(machine, EventStore) else None

    def submit_record(self, body: bytes) -> None:
        """Put a record of the node's own in the log (an audit record of a refused
        handshake) when this node is the primary; elsewhere the refusal is only logged."""
        if self.serving:
            self.submit_read(body, lambda _outcome: None)

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
        if not self.serving:
            return self._not_serving()
        if len(body) > OPERATION_BYTES_MAX:
            return Refused(
                ErrorCode.TOO_LARGE,
                f"the operation is {len(body)} bytes; at most {OPERATION_BYTES_MAX} fit one op",
            )
        if len(self._queue) >= QUEUE_REQUESTS_MAX:
            return Refused(ErrorCode.UNAVAILABLE, "the node's request queue is full")
        return None

    def _not_serving(self) -> Refused:
        """The refusal for a request this node cannot take now, by what it is doing."""
        replica = self.replica
        if self.halted is not None:
            return Refused(ErrorCode.UNAVAILABLE, "the node stopped after a fault")
        if replica is None or replica.status is Status.LOADING:
            return Refused(ErrorCode.UNAVAILABLE, "the node is recovering its log")
        address = self.primary_address
        if address is not None and not replica.is_primary:
            return Refused(
                ErrorCode.NOT_PRIMARY,
                f"this replica is not the primary; replica {replica.primary} is",
                address,
            )
        return Refused(ErrorCode.UNAVAILABLE, f"{self.status}; retry later")

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
            refusal = self._refusal(body, "registering the client session")
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
                done(self._refusal(reply, "write"))

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
                done(self._refusal(reply, "read"))

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
        while self._queue and self.serving:
            if replica.head - replica.commit >= PIPELINE_OPS_MAX:
                return  # a commit's replies schedule the next round
            pending = self._queue[0]
            if pending.number == 0 and pending.client != READ_CLIENT_ID:
                if not self._table_final:
                    return  # the next tick tries again
                known = replica.clients.get(pending.client)
                if known is not None:  # registered in an earlier view: keep that session
                    self._queue.popleft()
                    reply = bytes([ReplyStatus.OK]) + known.session.to_bytes(_U64, "little")
                    for replied in self._waiters.pop((pending.client, 0), []):
                        replied(reply)
                    continue
            self._queue.popleft()
            self._busy = False
            driver.step(ClientRequest(pending.client, pending.number, pending.body))
            if self._busy:
                self._queue.appendleft(pending)
                return  # the next tick tries again

    # --- watching the replica --------------------------------------------------------------

    def _after_step(self) -> None:
        """Called inside the driver after every replica step, before its effects run: the
        host's view of the replica is brought up to date; callbacks that answer clients
        are scheduled, never run here."""
        replica, loop = self.replica, self._loop
        assert replica is not None and loop is not None
        self._count_records(replica)
        gauges = (replica.view, self._progress.lag(replica))
        if gauges != self._gauges:  # a gauge's update takes a lock: only on a change
            self._gauges = gauges
            self._metrics.view.set(gauges[0])
            self._metrics.replication_lag.set(gauges[1])
        serving = self.serving
        if self._serving_view is not None and (not serving or replica.view != self._serving_view):
            self._stop_serving()
        if serving and self._serving_view is None:
            self._serving_view = replica.view
            self._table_final = False
            if self.in_cluster:
                self._log.info("replica.serving", view=replica.view, commit=replica.commit)
        if serving and not self._table_final and _table_is_final(replica):
            self._table_final = True
            if self._queue:
                self._schedule_pump()
        if not self._recovered_seen and replica.status is not Status.LOADING:
            self._recovered_seen = True
            loop.call_soon(self._run_after_recovery)
        if not self._ready.is_set() and self.settled:
            self._log.info(
                "replica.ready", view=replica.view, commit=self.commit, status=self.status
            )
            self._ready.set()

    def _count_records(self, replica: Replica) -> None:
        durable = replica.log.durable
        if not self._counting and replica.status is not Status.LOADING:
            self._counting, self._durable = True, durable  # recovered records are not new
        elif self._counting and durable > self._durable:
            self._metrics.records.inc(durable - self._durable)
        self._durable = durable

    def _stop_serving(self) -> None:
        """The replica is no longer the primary of the view this host served in: every
        request waiting for it is refused (soon, outside the driver) and the session cache
        is dropped; the next primary's client table is the truth."""
        assert self._loop is not None
        self._log.info(
            "replica.not_serving",
            view=self._serving_view,
            now=self.status,
            waiting=sum(len(callbacks) for callbacks in self._waiters.values()),
        )
        self._serving_view = None
        waiters, self._waiters = self._waiters, {}
        self._queue.clear()
        self._sessions = {}
        self._reads = _Session(READ_CLIENT_ID)
        self._read_number = 0
        lost = bytes([ReplyStatus.NOT_PRIMARY])
        self._loop.call_soon(_answer_all, waiters, lost)

    def _run_after_recovery(self) -> None:
        after, self._after_recovery = self._after_recovery, []
        for callback in after:
            callback()

    # --- driver callbacks ------------------------------------------------------------------

    def _tick(self) -> None:
        assert self._loop is not None and self._driver is not None
        self._ticker = self._loop.call_later(TICK_INTERVAL_S, self._tick)
        if self.halted is None:
            self._driver.step(Tick())
            if self._queue:
                self._pump()

    def _on_reply(self, reply: Reply) -> None:
        if reply.body[:1] == _BUSY:
            self._busy = True
            return
        for replied in self._waiters.pop((reply.client_id, reply.request_id), []):
            replied(reply.body)
        if self._queue:
            self._schedule_pump()

    def _refusal(self, reply: bytes, what: str) -> Refused:
        status = reply[0] if reply else -1
        if status == ReplyStatus.NOT_PRIMARY:
            refused = self._not_serving()
            message = (
                f"the primary changed before the {what} was answered (it may or may not have "
                f"been applied; a retry with the same request id is safe): {refused.message}"
            )
            return attrs.evolve(refused, message=message)
        if status == ReplyStatus.BUSY:
            return Refused(ErrorCode.INTERNAL, f"the node stopped during a {what}")
        return Refused(ErrorCode.INTERNAL, f"unexpected replica answer {status} to a {what}")

    def _on_notice(self, notice: Notice) -> None:
        fields = {name: value for name, value in notice.fields}
        if notice.event == "replica.checkpoint":
            self._metrics.checkpoints.inc()
            self._log.debug(notice.event, **fields)
        elif notice.event in _WARNING_NOTICES:
            self._log.warn(notice.event, **fields)
        elif notice.event in _INFO_NOTICES:
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
        self._run_after_recovery()
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


def _table_is_final(replica: Replica) -> bool:
    """Whether the replica's client table reflects every op of its view's log: the log is
    installed (``log_view`` is the view, set only once the view's whole log is held) and
    every op in it is applied."""
    return replica.log_view == replica.view and replica.commit == replica.head


def _answer_all(waiters: dict[tuple[int, int], list[Callable[[bytes], None]]], body: bytes) -> None:
    for callbacks in waiters.values():
        for replied in callbacks:
            replied(body)


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
