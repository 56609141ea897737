"""The replica host: Craton's client gateway, VSR ``Replica`` and ``EventStore`` on real
files, under asyncio.

``ReplicaHost`` runs the very objects the simulator runs — ``Gateway``, ``Replica``, ``Log``,
``EventStore`` and the one ``Driver`` — against the production ``FileDisk`` (completions
posted with ``loop.call_soon_threadsafe``) and, in a cluster, the ``PeerNetwork``
(``craton.net.peers``: ``Send`` effects go to a peer's queue, frames from peers come back
as ``MessageReceived``); it feeds the driver a ``Tick`` every ``TICK_INTERVAL_S``, and turns
a connection's calls into the gateway's ``Submit`` inputs and its ``Answer`` effects back
into outcomes for the connections.

States, as clients and probes see them:
- *recovering*: the log is being read back; requests are refused with ``UNAVAILABLE``, a
  handshake waits (it needs the client table).
- *serving*: the replica is the primary of its view in normal status; requests are queued
  for it.
- *backup*: normal status, another replica is the primary; requests are refused with
  ``NOT_PRIMARY`` carrying the primary's address from ``VDB_CLUSTER_PEERS``.
- *view change*: no primary is known; requests are refused with ``UNAVAILABLE``.
``ready`` (for ``/ready``) means recovered and in normal status: the node knows a primary.

Client sessions, admission, the reply cache, redirects and the rules of a replica that stops
serving are the core's ``Gateway`` (``craton.core.gateway``), the machine the driver runs
here exactly as in the simulator: this host only turns a connection's calls into the
gateway's ``Submit`` inputs, each with a token, and its ``Answer`` effects back into the
``Outcome`` the connection waits for (a ``NOT_PRIMARY`` answer's replica index becomes that
replica's address from ``VDB_CLUSTER_PEERS``).

Rules it keeps:
- The driver is never stepped from inside one of its own callbacks: answers are handed to
  the connections with ``call_soon``.
- ``SESSIONS_MAX`` is the replica's client-table size. It decides, when the log is
  replayed, which requests of evicted sessions are refused, so it is part of what a data
  directory means and never changes for an existing one.
- A ``Halt`` from the core is final: every request still open is refused with ``INTERNAL``
  or ``UNAVAILABLE`` and the owner is told (the server then exits non-zero).
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from collections.abc import Callable
from pathlib import Path

import attrs

from craton.core.auth import ApiKeyEntry
from craton.core.event_store import EventStore
from craton.core.gateway import REQUEST_NUMBER_MAX, Gateway
from craton.core.prng import Prng
from craton.core.seam import (
    Answer,
    DiskCompletion,
    DiskRequest,
    DiskWrite,
    Effect,
    Halt,
    Input,
    Notice,
    Submit,
    SubmitKind,
    Tick,
    WriteDone,
)
from craton.core.vsr.profile import PRODUCTION, TICK_MS
from craton.core.vsr.replica import Replica, Status
from craton.core.wire import Command, DecodeError, Frame, decode_frame
from craton.core.wire.errors import ErrorCode
from craton.core.wire.replica import Commit, PrepareOk
from craton.io.clock import SYSTEM_CLOCK, Clock, monotonic_s
from craton.io.derived import FileStorage
from craton.io.driver import Driver
from craton.io.entropy import OsEntropy
from craton.io.file_disk import FileDisk
from craton.io.interfaces import DiskCallback
from craton.io.local import load_or_create_seal_seed
from craton.net.logs import EventLog
from craton.net.metrics import NodeMetrics
from craton.net.peers import ClusterSettings, PeerNetwork

__all__ = ["REQUEST_NUMBER_MAX", "Applied", "HostError", "Outcome", "Refused", "ReplicaHost"]

# The replica's sizes and timeouts are the production profile's (``craton.core.vsr.profile``),
# the very profile a share of the simulator's seeds runs.
TICK_INTERVAL_S = TICK_MS / 1000  # one core tick
SESSIONS_MAX = PRODUCTION.client_table_max  # fixed for a data directory (see above)
LOCK_FILE = "node.lock"
# the state machine's derived data (craton.io.derived): emptied at every start, never backed up
DERIVED_FOLDER = "derived"
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
        "replica.restart_state_unusable",  # reloaded from the log's base instead
        "log.read_damaged",  # a record read back from disk (or the walk to it) is damaged
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
        "replica.repair_completed",  # a restart found a repair done before it stopped
        "replica.restarted_from_state",  # the journal reloaded from a checkpoint state on
        "replica.repair_by_state",  # a hole below every peer's log: their state became the base
        "replica.recovered",  # the view's log is installed: the replica takes part again
        "replica.state_synced",
        "log.places_found",  # records below the log's index found again, to be read
    }
)


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
    """The gateway as the driver's machine: after every step the host looks at the replica
    (metrics, readiness) before the step's effects are carried out."""

    def __init__(self, gateway: Gateway, after_step: Callable[[], None]) -> None:
        self.gateway = gateway
        self._after_step = after_step

    def step(self, event: Input) -> list[Effect]:
        effects = self.gateway.step(event)
        self._after_step()
        return effects

    def invariants(self) -> None:
        self.gateway.invariants()


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
        self._open: dict[int, Done] = {}  # token -> what waits for its answer
        self._sessions_open: dict[int, Callable[[Refused | None], None]] = {}
        self._next_token = 1
        self._ticker: asyncio.TimerHandle | None = None
        self._ready = asyncio.Event()
        self._after_recovery: list[Callable[[], None]] = []
        self._recovered_seen = False
        self._serving = False  # as the last step left it, for the log line on a change
        self._durable = 0
        self._counting = False
        self._progress = _Progress()
        self._gauges: tuple[int, int] | None = None  # (view, lag) as the metrics last showed
        self._lock_fd: int | None = None
        self._closed = False
        self._disk: FileDisk | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.replica: Replica | None = None
        self.gateway: Gateway | None = None
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
            machine = EventStore(FileStorage(self.data_dir / DERIVED_FOLDER))
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
        self.replica = Replica(config, machine, Prng(jitter_seed, "replica"))
        self.gateway = Gateway(self.replica)
        self._driver = Driver(
            _Observed(self.gateway, self._after_step),
            _CountingDisk(self._disk, self._metrics),
            network=self.peers,
            on_answer=self._on_answer,
            on_notice=self._on_notice,
            on_halt=self._on_halt,
        )
        self._driver.launch(self.gateway.start())
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
    def became_ready(self) -> bool:
        """Whether it was settled once since it started (``replica.ready`` was logged): it
        may not be at this moment (a state sync may have begun right after)."""
        return self._ready.is_set() and self.halted is None

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
        gateway = self.gateway
        return self.halted is None and gateway is not None and gateway.serving

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
        return self.gateway is None or self.gateway.idle

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
        """Stop ticking and talking to peers, let the disk finish what it was given, drop
        the machine's derived data (rebuilt at the next start), and unlock the directory."""
        self._closed = True
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        if self.peers is not None:
            self.peers.close()
        if self._disk is not None:
            self._disk.close()
            self._disk = None
        if self.replica is not None:
            self.replica.machine.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # --- requests --------------------------------------------------------------------------

    def open_session(
        self,
        tenant_id: int,
        client_id: int,
        handshake_request_id: int,
        done: Callable[[Refused | None], None],
    ) -> None:
        """Make sure the client has a session on the primary (the gateway's ``SESSION``);
        ``done(None)`` once it has, or once this node, not serving, has sent it elsewhere.
        ``handshake_request_id`` is the handshake frame's (a new session's floor)."""
        if self._refused_here(lambda refused: done(refused)):
            return
        token = self._token()
        self._sessions_open[token] = done
        kind = SubmitKind.SESSION
        self._step(Submit(token, kind, tenant_id, client_id, handshake_request_id))

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
            self._step(Submit(self._token(), SubmitKind.RECORD, body=body))

    def submit_write(
        self,
        tenant_id: int,
        client_id: int,
        request_id: int,
        body: bytes,
        done: Done,
        *,
        fresh: bool,
    ) -> None:
        """Apply a create-stream or append once, whatever the retries of ``request_id``;
        ``fresh``: the connection sees it for the first time (``RequestFreshness``)."""
        assert 1 <= request_id <= REQUEST_NUMBER_MAX, request_id
        if self._refused_here(done):
            return
        token = self._token()
        self._open[token] = done
        kind = SubmitKind.WRITE
        self._step(Submit(token, kind, tenant_id, client_id, request_id, body, fresh))

    def submit_read(self, body: bytes, done: Done) -> None:
        """Apply a read at its own op (linearizable); a retry is a new read."""
        if self._refused_here(done):
            return
        token = self._token()
        self._open[token] = done
        self._step(Submit(token, SubmitKind.READ, body=body))

    def _refused_here(self, done: Callable[[Refused], None]) -> bool:
        """A node that halted, or has not opened its data yet, feeds its gateway nothing."""
        if self.halted is not None or self._driver is None:
            done(Refused(ErrorCode.UNAVAILABLE, "the node stopped after a fault"))
            return True
        return False

    def _token(self) -> int:
        token = self._next_token
        self._next_token += 1
        return token

    def _step(self, submit: Submit) -> None:
        assert self._driver is not None
        self._driver.step(submit)

    def _on_answer(self, answer: Answer) -> None:
        """The gateway answered a token: the connection hears of it soon, outside the
        driver."""
        assert self._loop is not None
        address = None
        if answer.primary is not None and self._cluster is not None:
            address = str(self._cluster.addresses[answer.primary])
        refused = None
        if answer.code is not None:
            refused = Refused(answer.code, answer.message, address)
        opened = self._sessions_open.pop(answer.token, None)
        if opened is not None:
            self._loop.call_soon(opened, refused)
            return
        done = self._open.pop(answer.token, None)
        if done is None:
            return
        outcome: Outcome = refused if refused is not None else Applied(answer.op, answer.reply)
        self._loop.call_soon(done, outcome)

    # --- watching the replica --------------------------------------------------------------

    def _after_step(self) -> None:
        """Called inside the driver after every gateway step, before its effects run: the
        host's view of the replica (metrics, readiness, log lines) is brought up to date."""
        replica, loop = self.replica, self._loop
        assert replica is not None and loop is not None
        self._count_records(replica)
        gauges = (replica.view, self._progress.lag(replica))
        if gauges != self._gauges:  # a gauge's update takes a lock: only on a change
            self._gauges = gauges
            self._metrics.view.set(gauges[0])
            self._metrics.replication_lag.set(gauges[1])
        serving = self.serving
        if serving != self._serving and self.in_cluster:
            event = "replica.serving" if serving else "replica.not_serving"
            self._log.info(event, view=replica.view, commit=replica.commit, now=self.status)
        self._serving = serving
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
        """The gateway answered every open request before the ``Halt``; whatever the driver
        still held for it is refused here."""
        assert self._loop is not None
        self.halted = halt.reason
        self._log.error("replica.halted", reason=halt.reason)
        refusal = Refused(ErrorCode.UNAVAILABLE, "the node stopped after a fault")
        opened, self._sessions_open = self._sessions_open, {}
        waiting, self._open = self._open, {}
        for callback in [*opened.values(), *waiting.values()]:
            self._loop.call_soon(callback, refusal)
        self._run_after_recovery()
        self._ready.set()
        if self._on_halt_callback is not None:
            self._on_halt_callback(halt.reason)


# --- helpers ---------------------------------------------------------------------------------


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
