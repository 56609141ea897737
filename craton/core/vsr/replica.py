"""A Viewstamped Replication replica, as a pure machine over the hash-chained log.

Names and protocol follow "Viewstamped Replication Revisited" (Liskov & Cowling, 2012):
normal operation (§4.1), view changes (§4.2), and state transfer for a replica that fell
behind (§5.2). Craton's differences, and the rules this machine keeps:

- The prepare log *is* the storage log (``craton.core.log``): op ``n`` is log position
  ``n`` and its record links to op ``n - 1`` by hash, so two replicas that agree on one op's
  hash agree on the whole prefix. Entries received from peers are checked against the chain
  before they are believed.
- Persist before send: a backup sends ``PrepareOk`` for an op only after the log reported it
  durable; ``view`` is written to the superblock before the replica sends
  ``StartViewChange`` or ``DoViewChange`` for it, and ``log_view`` only once the replica's
  log *is* that view's log (installed and durable) — before a new primary sends
  ``StartView`` and before a backup acknowledges anything in the view. A restarted replica
  therefore never votes from a view it forgot, and never claims a log it does not hold.
- A restarted primary does not resume its view (it may have lost ops its backups hold): it
  starts a view change instead.
- Commit needs a quorum (``replica_count // 2 + 1``) of durable copies in the current view;
  only committed ops are applied to the state machine, in op order.
- The client table gives exactly-once semantics (see ``_apply``). A client registers with
  request id 0; the registration's op becomes its *session*. Every later request id is
  ``session << 32 | number``: it is applied only if its session is the client's current one
  and its number is above the client's last; a retry of the last gets the cached reply.
  When the table is full, a registration evicts the client whose last request committed
  earliest. A request of an evicted or replaced session is refused with
  ``SESSION_EXPIRED``, and since sessions are ops, never reused, no delayed duplicate of an
  old request can ever be applied again.
- Timeouts are counted in ticks; their jitter comes from the seeded generator handed in.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import struct
import zlib
from collections.abc import Iterator

import attrs

from craton.core.log import (
    BaseInstalled,
    Checkpointed,
    Durable,
    Log,
    LogConfig,
    LogError,
    LogOutput,
    OwnerStateSaved,
    ReadFailed,
    ReadResult,
    Recovered,
    StateRead,
    StateSaved,
    Truncated,
)
from craton.core.prng import Prng
from craton.core.record import GENESIS_HASH, chain_hash
from craton.core.scan import Salvaged
from craton.core.seal import state_message, verify_signature
from craton.core.seam import (
    ClientRequest,
    Effect,
    Halt,
    Input,
    IoIds,
    MessageReceived,
    Notice,
    Reply,
    Send,
    Submit,
    Tick,
)
from craton.core.state_machine import SnapshotError, StateMachine
from craton.core.storage import BlobFile, DerivedDataError, MemoryStorage
from craton.core.vsr import codec
from craton.core.vsr.checkpoint import (
    STATE_SPACING_OPS_MAX,
    CheckpointError,
    CheckpointLoader,
    CheckpointState,
    ClientEntry,
    OpenedCheckpoint,
    StateStream,
    open_checkpoint,
    state_due,
)
from craton.core.wire.errors import DecodeError
from craton.core.wire.replica import (
    PREPARE_BODY,
    STATE_PART_SIZE_MAX,
    SUFFIX_ENTRIES_MAX,
    Commit,
    DoViewChange,
    Entry,
    GetState,
    NewCheckpoint,
    NewState,
    Prepare,
    PrepareBody,
    PrepareOk,
    PrepareReply,
    Recovery,
    RecoveryResponse,
    ReplicaMessage,
    RequestPrepare,
    RequestStartView,
    StartView,
    StartViewChange,
)
from craton.core.wire.schema import Reader

PREPARE_KIND = 1  # the log record kind of a prepare
# magic, view, log_view, flags, the checkpoint state to restart from (op, size, digest), and
# with OWNER_DAMAGE_ONLY the certified mark the log must reach again
OWNER_STATE = struct.Struct("<4sIIIQQ32sQ")
OWNER_MAGIC = b"VSR4"
OWNER_STATE_V3 = struct.Struct("<4sIIIQQ32s")  # magic b"VSR3": no mark
OWNER_STATE_V2 = struct.Struct("<4sIII")  # magic b"VSR2", view, log_view, flags
OWNER_STATE_V1 = struct.Struct("<4sII")  # magic b"VSR1", view, log_view (no flags)
RESTART_STATE_TAG = -(1 << 20)  # the read of the state a restart starts from
RESTART_STATE_READS_MAX = 3  # retries of that read before reloading from the log's base
OWNER_RECOVERING = 1  # flag: the log is not this replica's own until it is repaired
# flag, with OWNER_RECOVERING: what it lacked was only damage to its own records, so a log
# found whole at a restart (every record intact, and reaching the mark it had certified
# durable when the damage was found, kept with the flag) is its own again; without it (a
# lost disk), only a view's log installed through a quorum makes it so
OWNER_DAMAGE_ONLY = 2
# Journal entries held in memory (ops from the journal's first to its head). Checkpoint
# states release the journal below them (they are at most ``STATE_SPACING_OPS_MAX`` ops
# apart), so it fills only when states cannot be saved: a primary whose journal is full
# answers new requests BUSY (backpressure; ``replica.journal_full``) until a state saved
# releases it.
JOURNAL_OPS_MAX = 1 << 20
assert JOURNAL_OPS_MAX > 2 * STATE_SPACING_OPS_MAX + 2 * SUFFIX_ENTRIES_MAX
# decoded prepare bodies kept: an op is decoded when journaled and again when committed, a
# pipeline (64 ops) later; at most 136 MiB of operations
PREPARE_BODY_CACHE_MAX = 136
LOAD_READS_MAX = 8  # reads in flight while a restarted replica reloads its journal, ...
LOAD_RUN_OPS = 1024  # ... each of this many ops at most (and about ``READ_RUN_BYTES``)
SERVE_TAG_BASE = 1 << 62  # log read tags from here on: a released op read for replica tag - base
CHECKPOINT_STATES_MAX = 8  # states kept while the log has not sealed their ops yet
ASSEMBLY_PATIENCE = 4  # parts of other states before a stalled assembly starts over
VIEW_CHANGE_BACKOFF_MAX = 4  # doublings of the view change timeout


class ReplyStatus(enum.IntEnum):
    """The first byte of every reply a replica sends a client."""

    OK = 0  # then: op (u64 LE) and the state machine's reply
    NOT_PRIMARY = 1  # then: view (u32 LE) and the primary's replica id (u8)
    BUSY = 2  # the pipeline is full or the cluster is changing views: retry later
    SESSION_EXPIRED = 3  # register again (request id 0) before sending requests
    STALE = 4  # a request number at or below the client's last one, with no reply kept


SESSION_SHIFT = 32  # request id = session << 32 | number
NUMBER_MASK = (1 << SESSION_SHIFT) - 1


@attrs.frozen
class ReplicaConfig:
    replica_id: int
    replica_count: int
    seal_seed: bytes
    pipeline_max: int = 8  # uncommitted ops the primary has in flight
    heartbeat_ticks: int = 4
    prepare_retry_ticks: int = 8
    view_change_timeout_ticks: int = 40
    view_change_jitter_ticks: int = 30
    view_change_retry_ticks: int = 60
    repair_ticks: int = 10
    client_table_max: int = 64
    checkpoint_interval_ops: int = 256
    segment_size_max: int = 64 * 1024 * 1024
    # This replica was a member of its cluster before this start (its view state had been
    # durable: see ``Replica.member``): a blank disk then means its data was lost (a wiped
    # or replaced disk), never that it is new.
    joined: bool = False
    # Take a canonical state (``craton.core.vsr.checkpoint``) at each multiple of the
    # interval, release the journal below the sealed one, and serve it to replicas whose
    # journal ends below this one's (state sync). A state holds a whole snapshot of the
    # machine, so it is off by default: a replica then keeps its whole journal and serves
    # every lagging replica by journal transfer.
    checkpoint_states: bool = False
    # The replicas' public keys (their data directories' seal keys), in replica order, when
    # known: a state-sync checkpoint is then believed only under its sender's own key.
    peer_public_keys: tuple[bytes, ...] = ()
    # Bytes of checkpoint state in one NewCheckpoint: a larger state goes in parts, each
    # asked for by its receiver, which checks the state once it holds all of it.
    state_part_bytes: int = STATE_PART_SIZE_MAX

    def __attrs_post_init__(self) -> None:
        assert 1 <= self.replica_count <= 16 and 0 <= self.replica_id < self.replica_count
        assert 1 <= self.pipeline_max <= SUFFIX_ENTRIES_MAX
        assert 1 <= self.state_part_bytes <= STATE_PART_SIZE_MAX

    @property
    def quorum(self) -> int:
        return self.replica_count // 2 + 1


class Status(enum.Enum):
    LOADING = "loading"  # recovering the log and journal after a start
    RECOVERING = "recovering"  # lost part of its log or its disk: rejoins via the others
    NORMAL = "normal"
    VIEW_CHANGE = "view_change"


@attrs.define
class _ClientSession:
    session: int  # the op that registered it
    number: int  # the last request number applied
    reply: bytes | None  # the reply to ``number``, once committed
    op: int  # the op that last touched this session (eviction order)


@attrs.frozen
class StateFile:
    """A checkpoint state durable in the log's state file for ``op``."""

    op: int
    chain_hash: bytes
    digest: bytes
    size: int


@attrs.frozen
class NamedState:
    """The checkpoint state file a replica's superblock names: a restart begins there."""

    op: int
    size: int
    digest: bytes


@attrs.frozen
class OwnerState:
    """What a replica keeps in its log's superblock."""

    view: int
    log_view: int
    recovering: bool = False
    damage_only: bool = False  # see OWNER_DAMAGE_ONLY; only with ``recovering``
    state: NamedState | None = None
    damage_mark: int = 0  # with ``damage_only``: the log is whole again once it reaches it


class StateParts:
    """A checkpoint state that came in parts, kept in a blob of the machine's derived
    storage from the moment each part arrives until the state is installed: never whole
    in memory, whatever its size (unless the machine keeps no derived storage of its own,
    when the blob is a memory one). Iterated as often as needed, a part at a time, as the
    parts came, each checked against the CRC-32 taken as it came (``DerivedDataError``
    if the blob does not give back what was put in: the state's digest was checked on
    one reading, and the state file is written from another). Closed once the last part
    is in: a closed blob still reads back, and its bytes go with the last reference to it
    (an offer installed, or turned down)."""

    __slots__ = ("_blob", "_sizes")

    def __init__(self, blob: BlobFile) -> None:
        self._blob = blob
        self._sizes: list[tuple[int, int]] = []  # (bytes, CRC-32) of each part

    def add(self, part: bytes) -> None:
        self._blob.append(part)
        self._sizes.append((len(part), zlib.crc32(part)))

    @property
    def size(self) -> int:
        return self._blob.size

    def __len__(self) -> int:
        return len(self._sizes)

    def __iter__(self) -> Iterator[bytes]:
        offset = 0
        for size, crc in self._sizes:
            part = self._blob.read(offset, size)
            if zlib.crc32(part) != crc:
                raise DerivedDataError(f"incoming state: part at byte {offset} changed")
            yield part
            offset += size

    def close(self) -> None:
        self._blob.close()


@attrs.frozen
class CheckpointOffer:
    """A state-sync offer with its whole state: a ``NewCheckpoint`` that came in one part,
    or the parts of one, in order (never joined into one copy; kept in derived storage,
    ``StateParts``). Nothing of it is believed until it is verified."""

    view: int
    replica: int  # the sender
    op: int
    chain_hash: bytes
    digest: bytes
    public_key: bytes
    signature: bytes
    parts: tuple[bytes, ...] | StateParts

    @property
    def size(self) -> int:
        """Bytes of the state."""
        if isinstance(self.parts, StateParts):
            return self.parts.size
        return sum(len(part) for part in self.parts)

    @classmethod
    def of(cls, offer: NewCheckpoint, parts: tuple[bytes, ...] | StateParts) -> CheckpointOffer:
        return cls(
            offer.view,
            offer.replica,
            offer.op,
            offer.chain_hash,
            offer.digest,
            offer.public_key,
            offer.signature,
            parts,
        )


@attrs.define
class _Assembly:
    """A checkpoint state arriving in parts: the parts so far. A state is the same bytes
    on every replica that took it (its digest says so), so parts of it are taken from
    any of them; ``sender`` sent the latest, and is asked for the next."""

    sender: int
    op: int
    digest: bytes
    size: int
    parts: StateParts
    received: int  # bytes so far: the offset of the next part
    others: int = 0  # parts of other states that came meanwhile


@attrs.define
class _Install:
    """Bringing this replica's log in line with ``view``'s log (from a StartView or DVCs)."""

    view: int
    head: int  # the view's log reaches this op count
    commit: int
    entries: tuple[Entry, ...]  # the suffix still to append, in op order
    source: int  # the replica that holds the view's log: asked for what is missing


class Replica:
    def __init__(self, config: ReplicaConfig, machine: StateMachine, prng: Prng) -> None:
        self.config = config
        self.machine = machine
        self._prng = prng
        self.log = Log(
            LogConfig(
                seal_seed=config.seal_seed,
                checkpoint_interval=0,
                segment_size_max=config.segment_size_max,
            ),
            IoIds(),
            salvage=config.replica_count > 1,
        )
        self.status = Status.LOADING
        self.view = 0
        self.log_view = 0
        self.commit = 0
        self.entries: list[Entry] = []  # the journal: entries[op - first_op]
        self._base = 0  # first_op
        self._base_hash = GENESIS_HASH  # the chain hash of op first_op - 1
        self._syncing: tuple[CheckpointOffer, OpenedCheckpoint, StateMachine] | None = None
        self._sync_tail: tuple[Entry, ...] = ()  # records kept past a base being installed
        self._other_replicas = tuple(
            r for r in range(config.replica_count) if r != config.replica_id
        )
        self._state_signatures: dict[int, bytes] = {}  # op -> this replica's signature
        self._durable_state: StateFile | None = None  # the latest state on disk
        self._saving_state: int | None = None  # the op of the state being written
        # asker -> (op, offset) of the part of a checkpoint state being read for it
        self._state_readers: dict[int, tuple[int, int]] = {}
        self._assembly: _Assembly | None = None  # a checkpoint state arriving in parts
        self._avoid_source: int | None = None  # sent a state that did not check out
        # (client, request id) -> op, for the journal's uncommitted entries
        self._uncommitted: dict[tuple[int, int], int] = {}
        self.clients: dict[int, _ClientSession] = {}
        self._persisted_view = 0
        self._persisted_log_view = 0
        self._saving: OwnerState | None = None
        self._named_state: NamedState | None = None  # the one the superblock names
        self._superseded_states: list[int] = []  # state files to empty once not named
        self._restart_state: NamedState | None = None  # being read, to restart from
        self._restart_loader: CheckpointLoader | None = None  # decoding it as it comes
        self._restart_reads = 0  # reads of it that were retried
        self._recovering = False  # wanted in the superblock: see OWNER_RECOVERING
        self._persisted_recovering = False
        self._damage_only = False  # wanted in the superblock: see OWNER_DAMAGE_ONLY
        self._persisted_damage_only = False
        self._damage_mark = 0  # with it: the certified mark when the damage was found
        self._persisted_damage_mark = 0
        self._acked: dict[int, int] = {}  # replica -> highest op it holds durably, this view
        self._ticks = 0
        self._primary_heard_tick = 0
        # (view, the commit number its primary announced when first heard in it): a backup
        # has caught up with its view once it committed that far (see ``settled``)
        self._catch_up: tuple[int, int] | None = None
        self._view_change_deadline = 0
        self._view_changes_unsettled = 0  # view changes since this replica was last normal
        self._heartbeat_due = 0
        self._svc_from: dict[int, set[int]] = {}
        self._dvc_from: dict[int, dict[int, DoViewChange]] = {}
        self._install: _Install | None = None
        self._journal_full_at: int | None = None  # the journal's first op when it filled
        # While installing: the journal from this op on is being compared with the view's
        # log before anything of it is cut (see ``_begin_install``).
        self._verify_from: int | None = None
        self._loading: dict[int, bytes] = {}  # reloaded bodies waiting for their turn
        self._load_runs: dict[int, int] = {}  # reads in flight: ops each still owes, by first op
        self._formatted = False  # started on a blank directory (nothing to have lost)
        self._load_next = 0
        self._load_head = 0
        self._truncating = False
        self._get_state_quiet_until = 0
        self._lost_from: int | None = None  # the log lost records from here at recovery
        self._recovery_nonce = 0
        self._recovery_views: dict[int, int] = {}  # replica -> view it answered with
        self._rejoining = False  # installing a view's log after recovering
        self._recovered: Recovered | None = None
        self._member = False  # its superblock holds its view state (see ``member``)
        self._repair: dict[int, Salvaged] = {}  # records past the damage, holes to fetch
        self._repairing = False  # filling holes by hash: done, it resumes as after a restart
        self._repair_holes = 0  # records of the repair that only the peers could supply
        # op -> the state when the commit number reached that multiple of the interval, from
        # the sealed checkpoint's op on (see ``craton.core.vsr.checkpoint``)
        self.checkpoints: dict[int, CheckpointState] = {}
        self.halted: str | None = None

    # --- entry points ------------------------------------------------------------------------

    @property
    def head(self) -> int:
        return self._base + len(self.entries)

    @property
    def first_op(self) -> int:
        """The first op whose entry the journal holds: the ops below it were released after
        a checkpoint state covered them, or were never here (a state sync)."""
        return self._base

    @property
    def durable_state(self) -> StateFile | None:
        """The latest checkpoint state in a state file: what this replica serves."""
        return self._durable_state

    def entry(self, op: int) -> Entry:
        assert self._base <= op < self.head, f"op {op} is not in the journal"
        return self.entries[op - self._base]

    def _hash_before(self, op: int) -> bytes:
        """The chain hash of op ``op - 1`` (from the journal's first op on)."""
        if op == self._base:
            return self._base_hash
        return self.entry(op - 1).hash

    @property
    def persisted_view(self) -> int:
        """The view this replica's superblock holds: it never acts in a later one."""
        return self._persisted_view

    @property
    def installing(self) -> bool:
        """True while this replica brings its log in line with its view's log."""
        return self._install is not None

    @property
    def settled(self) -> bool:
        """Recovered and taking part: normal status, the view's whole log installed and
        durable (no install, state sync or rejoin in progress), and, for a backup, caught up
        with the commit number its primary announced when this replica first heard it in
        this view. What an operator's readiness probe asks before stopping another replica."""
        if self.halted is not None or not self._ready_to_ack() or self._syncing is not None:
            return False
        if self._recovering or self._rejoining:
            return False
        if self.is_primary:
            return True
        heard = self._catch_up
        return heard is not None and heard[0] == self.view and self.commit >= heard[1]

    @property
    def recovering(self) -> bool:
        """Its log may lack ops it once held (damage, a lost disk, an unfinished recovery):
        until it has the view's log again it takes part in no quorum."""
        return self._recovering

    def _heard_primary(self, commit: int) -> None:
        """The primary of this view announced ``commit`` (a prepare or a heartbeat)."""
        self._primary_heard_tick = self._ticks
        if self._catch_up is None or self._catch_up[0] != self.view:
            self._catch_up = (self.view, commit)

    @property
    def member(self) -> bool:
        """True once this replica's view state is durable in its superblock: from then on
        it may have voted or acknowledged, and a blank disk means it lost them."""
        return self._member

    @property
    def persisted_log_view(self) -> int:
        return self._persisted_log_view

    @property
    def primary(self) -> int:
        return self.view % self.config.replica_count

    @property
    def is_primary(self) -> bool:
        return self.primary == self.config.replica_id

    def start(self) -> list[Effect]:
        return self._route(self.log.start())

    def step(self, event: Input) -> list[Effect]:
        if self.halted is not None:
            return []
        try:
            return self._step(event)
        except DerivedDataError as error:
            # The machine's derived data is not what it wrote (craton.core.storage): it
            # cannot answer, and a restart rebuilds the data from the state and the log.
            return self._halt(f"the state machine's derived data: {error}")

    def _step(self, event: Input) -> list[Effect]:
        match event:
            case Tick():
                return self._on_tick()
            case MessageReceived():
                return self._on_message(event)
            case ClientRequest():
                return self._on_request(event)
            case Submit():
                raise AssertionError("a Submit is the gateway's input (craton.core.gateway)")
            case _:
                return self._route(self.log.on_disk(event))

    def invariants(self) -> None:
        self.log.invariants()
        assert self.commit <= self.head
        if self.is_primary and self.status is Status.NORMAL and self._install is None:
            # it prepares nothing past a full journal (a view's install may bring more)
            assert self.head - self._base <= JOURNAL_OPS_MAX + self.config.pipeline_max
        assert self.log_view <= self.view
        assert self._persisted_view <= self.view
        assert len(self.clients) <= self.config.client_table_max
        assert all(self.commit <= op < self.head for op in self._uncommitted.values())
        assert self._base <= self.commit
        assert len(self.checkpoints) <= CHECKPOINT_STATES_MAX
        interval = self.config.checkpoint_interval_ops
        assert all(op % interval == 0 and op <= self.commit for op in self.checkpoints)
        if not self._truncating and self.status is not Status.LOADING:
            assert self.log.head == self.head, (self.log.head, self.head)

    # --- log outputs -------------------------------------------------------------------------

    def _route(self, outputs: list[LogOutput]) -> list[Effect]:
        """Act on the log's owner-facing outputs; pass effects through."""
        effects: list[Effect] = []
        for output in outputs:
            match output:
                case Recovered():
                    effects.extend(self._on_recovered(output))
                case Durable():
                    effects.extend(self._on_durable())
                case ReadResult() if output.tag >= SERVE_TAG_BASE:
                    entry = Entry(output.position, output.hash, output.body)
                    reply = PrepareReply(self.log_view, entry)
                    effects.append(Send(output.tag - SERVE_TAG_BASE, self._encode(reply)))
                case ReadResult():
                    effects.extend(self._on_loaded(output.tag, output.position, output.body))
                case ReadFailed() if output.tag == RESTART_STATE_TAG:
                    effects.extend(self._on_restart_state(None, output.reason))
                case ReadFailed() if output.tag >= SERVE_TAG_BASE:
                    pass  # the asker asks again
                case ReadFailed() if output.tag < 0:
                    self._state_readers.pop(-output.tag - 1, None)  # it asks again
                case ReadFailed():
                    effects.extend(self._halt(f"reloading the journal: {output.reason}"))
                case StateSaved():
                    effects.extend(self._on_state_saved(output.position))
                case StateRead() if output.tag == RESTART_STATE_TAG:
                    effects.extend(self._on_restart_state(output.data))
                case StateRead():
                    effects.extend(self._on_state_read(output))
                case OwnerStateSaved():
                    effects.extend(self._on_saved(output.state))
                case Truncated():
                    self._truncating = False
                    effects.extend(self._continue_install())
                case Checkpointed():
                    self._release_checkpoints()
                    effects.append(Notice("replica.checkpoint", (("op", output.position),)))
                    effects.extend(self._persist_state())
                case BaseInstalled():
                    effects.extend(self._on_base_installed(output.position))
                case Halt():
                    self.halted = output.reason
                    effects.append(output)
                case _:
                    effects.append(output)
        return effects

    def _halt(self, reason: str) -> list[Effect]:
        self.halted = reason
        return [Halt(reason)]

    # --- start-up: recovery and reloading the journal ----------------------------------------

    def _on_recovered(self, recovered: Recovered) -> list[Effect]:
        named = None
        if recovered.owner_state:
            owner = decode_owner_state(recovered.owner_state)
            self.view = self._persisted_view = owner.view
            self.log_view = self._persisted_log_view = owner.log_view
            self._recovering = self._persisted_recovering = owner.recovering
            self._damage_only = self._persisted_damage_only = owner.damage_only
            self._damage_mark = self._persisted_damage_mark = owner.damage_mark
            self._named_state = named = owner.state
        self._load_head = recovered.head
        self._formatted = recovered.formatted
        self._lost_from = recovered.lost_from
        self._recovered = recovered
        self._member = bool(recovered.owner_state)
        if recovered.base:
            if recovered.base_state is None:
                return self._halt("the log has a base but no state for it")
            problem = self._start_from_base(recovered.base, recovered.base_state)
            if problem is not None:
                return self._halt(f"the log's base state: {problem}")
        whole = recovered.lost_from is None and not self._persisted_recovering
        if (
            named is not None
            and self.config.checkpoint_states
            and whole
            and self._base < named.op <= recovered.head
            and (named.op, named.size) in recovered.state_files
        ):
            # The latest checkpoint state it saved: restart from there and reload only the
            # log past it, not every op from the log's base.
            self._restart_state = named
            return self._read_restart_part()
        return self._load_more()

    def _read_restart_part(self) -> list[Effect]:
        """Read the next part of the state a restart begins from: it is decoded as it comes
        (``CheckpointLoader``), so that it is never held whole."""
        named = self._restart_state
        assert named is not None
        loader = self._restart_loader
        if loader is None:
            machine = type(self.machine).snapshot_loader(self.machine.storage)
            loader = self._restart_loader = CheckpointLoader(named.digest, named.size, machine)
        size = min(named.size - loader.taken, self.config.state_part_bytes)
        return self._route(self.log.read_state(named.op, size, RESTART_STATE_TAG, loader.taken))

    def _on_restart_state(self, data: bytes | None, reason: str = "") -> list[Effect]:
        """A part of the state a restart begins from (None: the read failed). The whole is
        checked against the digest the superblock names; if it does not check out, the
        journal is reloaded from the log's base instead (the log keeps every record)."""
        named, loader = self._restart_state, self._restart_loader
        assert named is not None and loader is not None and self.status is Status.LOADING
        opened = self._load_restart_part(named, loader, data) if data is not None else reason
        if opened is None:
            return self._read_restart_part()
        self._restart_loader = None
        if isinstance(opened, str) and self._restart_reads < RESTART_STATE_READS_MAX:
            # A read can fail or flip bits on the way: only what persists is believed.
            loader.abandon()
            self._restart_reads += 1
            return self._read_restart_part()
        self._restart_state = None
        if isinstance(opened, str):
            loader.abandon()
            fields = (("op", named.op), ("why", opened))
            return [Notice("replica.restart_state_unusable", fields), *self._load_more()]
        checked, machine = opened
        self._adopt_state(checked, machine, named.digest, named.size)
        self._load_next = named.op
        noted = (("op", named.op), ("replayed", self._load_head - named.op))
        return [Notice("replica.restarted_from_state", noted), *self._load_more()]

    def _load_restart_part(
        self, named: NamedState, loader: CheckpointLoader, data: bytes
    ) -> tuple[OpenedCheckpoint, StateMachine] | str | None:
        """Feed ``data`` to the loader: the state and its machine once the last part is in,
        None while parts are to come, or why the state cannot be used."""
        if len(data) != min(named.size - loader.taken, self.config.state_part_bytes):
            return f"a read at {loader.taken} came back with {len(data)} bytes"
        try:
            loader.feed(data)
            if loader.taken < named.size:
                return None
            opened, machine = loader.finish()
        except (CheckpointError, SnapshotError) as error:
            return str(error)
        if opened.op != named.op:
            machine.close()
            return f"it is the state at op {opened.op}, not at {named.op}"
        return opened, machine

    def _restore(self, snapshot: memoryview) -> StateMachine:
        """A machine restored from ``snapshot``, keeping its derived data where this
        replica's machine keeps it; ``SnapshotError`` if the snapshot is damaged."""
        return type(self.machine).restore(snapshot, self.machine.storage)

    def _start_from_base(self, base: int, data: bytes) -> str | None:
        """Take the checkpoint state at the log's base as this replica's state there."""
        digest = hashlib.sha256(data).digest()
        try:
            opened = open_checkpoint(data, digest)
            if opened.op != base:
                return f"it is the state at op {opened.op}, not at {base}"
            machine = self._restore(opened.machine_snapshot)
        except (CheckpointError, SnapshotError) as error:
            return str(error)
        self._adopt_state(opened, machine, digest, len(data))
        self._load_next = base
        return None

    def _adopt_state(
        self, opened: OpenedCheckpoint, machine: StateMachine, digest: bytes, size: int
    ) -> None:
        """Make this replica's journal start at the state's op, with its machine and client
        table: what a replica that committed every op below it would hold."""
        self.entries = []
        self._uncommitted = {}
        self._base = self.commit = opened.op
        self._base_hash = opened.chain_hash
        if machine is not self.machine:
            self.machine.close()  # its derived data gives way to the state's
        self.machine = machine
        self.clients = {
            entry.client: _ClientSession(entry.session, entry.number, entry.reply, entry.op)
            for entry in opened.clients
        }
        # The log's base state file holds the state, durably: memory keeps what names it.
        self._durable_state = StateFile(opened.op, opened.chain_hash, digest, size)
        held = CheckpointState(opened.op, opened.chain_hash, None, digest)
        self.checkpoints = {opened.op: held} if self.config.checkpoint_states else {}

    def _release_unused_states(self) -> list[Effect]:
        """Empty the state files found at the start that this replica does not hold."""
        recovered = self._recovered
        kept = self._durable_state
        effects: list[Effect] = []
        for op, _ in () if recovered is None else recovered.state_files:
            if kept is None or op != kept.op:
                effects.extend(self._route(self.log.release_state(op)))
        return effects

    def _load_more(self) -> list[Effect]:
        """Read the journal's ops from the log, runs of them at a time (each run's ops come
        in order, tagged with its first op; ``_load_runs`` counts what each still owes)."""
        effects: list[Effect] = []
        while self._load_next < self._load_head and len(self._load_runs) < LOAD_READS_MAX:
            first = self._load_next
            count_max = min(LOAD_RUN_OPS, self._load_head - first)
            taken, outputs = self.log.read_run(first, first, count_max)
            self._load_runs[first] = taken
            self._load_next += taken
            effects.extend(self._route(outputs))
        if not self._load_runs and self.status is Status.LOADING:
            return [*effects, *self._loaded()]
        return effects

    def _on_loaded(self, run: int, op: int, body: bytes) -> list[Effect]:
        left = self._load_runs[run] - 1
        if left:
            self._load_runs[run] = left
        else:
            del self._load_runs[run]
        self._loading[op] = body
        while self.head in self._loading:
            op_body = self._loading.pop(self.head)
            prev = self._last_hash()
            self._journal(Entry(self.head, chain_hash(prev, self.head, op_body), op_body))
        return self._load_more()

    def _loaded(self) -> list[Effect]:
        assert self.head == self._load_head and self.head == self.log.head
        if self._last_hash() != self.log.chain_hash:
            return self._halt(
                f"the journal reloaded from op {self._base} does not chain onto the log"
            )
        effects = self._release_unused_states()
        checkpoint = self.log.checkpoint
        effects.extend(self._commit_to(0 if checkpoint is None else checkpoint.position))
        self._release_checkpoints()
        effects.extend(self._persist_state())
        self._primary_heard_tick = self._ticks
        self._arm_view_change_timer()
        if self._must_recover():
            effects.extend(self._begin_recovery())
            return [*effects, *self._begin_repair()]
        if self._persisted_recovering:
            # A repair of damage that was complete when it stopped (every record it had
            # certified is intact): its log is its own again, once the superblock says so.
            self._recovering = self._damage_only = False
            notice = Notice("replica.repair_completed", (("head", self.head),))
            return [*effects, notice, *self._save_state()]
        if self._recovered is not None and not self._recovered.owner_state:
            # A new member: its view state is written before it takes part, so that from
            # now on a superblock without it means a lost disk (see ``_must_recover``).
            return [*effects, *self._save_state()]
        return [*effects, *self._resume()]

    def _resume(self) -> list[Effect]:
        """Take part again with the log this replica holds (after loading it, or after
        filling the holes damage left in it)."""
        restarted_primary = (
            self.is_primary and self.config.replica_count > 1 and not self._formatted
        )
        if self.log_view < self.view or restarted_primary:
            # Mid view change, or a restarted primary that may have lost ops its backups
            # hold: move to a new view rather than resume this one.
            return self._start_view_change(self.view + 1)
        self.status = Status.NORMAL
        notice = Notice("replica.started", (("view", self.view), ("head", self.head)))
        if self.is_primary:  # a cluster of one: its own durable log is the view's log
            return [notice, *self._advance_commit()]
        return [notice]

    # --- repair: filling the holes damage left, by hash --------------------------------------

    def _begin_repair(self) -> list[Effect]:
        """When the damage left holes whose hashes the log still vouches for, and the
        records found past them reach as far as the log was ever certified durable, this
        replica can rebuild exactly the log it had: it fetches each hole from any replica,
        checks it against the vouched hash and the link to the op before, re-appends what
        follows, and once all of it is durable resumes as after any restart."""
        recovered = self._recovered
        if recovered is None or self._formatted or not recovered.salvage_complete:
            return []
        if not self._damage_only:
            # A recovery of another kind is under way (an install a crash interrupted, a
            # lost disk): the log on this disk was not whole before the damage either, so
            # rebuilding it proves nothing; only a view's log makes it whole again.
            return []
        tail = recovered.salvaged
        if not tail or tail[0].position != self.head:
            return []
        if any(item.hash is None for item in tail[:-1]):
            return []
        # Records the log certified are missing even past the damage; or, after an earlier
        # damage this repair continues, the log no longer reaches the mark certified then
        # (a rejoin's cut lowers the log's own mark, never that one).
        if max(tail[-1].position + 1, self.head) < max(recovered.certified, self._damage_mark):
            return []
        self._repair = {item.position: item for item in tail}
        self._repair_holes = sum(item.body is None for item in tail)
        self._repairing = True
        self._recovered = attrs.evolve(recovered, salvaged=())  # held in _repair from now
        return self._repair_next()

    def _repair_next(self) -> list[Effect]:
        effects: list[Effect] = []
        if not self._persisted_recovering or self._syncing is not None:
            return []  # the log changes only once the superblock says it is recovering
        while self.head in self._repair:
            item = self._repair[self.head]
            if item.body is None:
                ask = RequestPrepare(self.config.replica_id, self.head)
                return [*effects, *self._broadcast(ask)]
            if chain_hash(self._last_hash(), self.head, item.body) != item.hash:
                self._repair = {}  # what was found past the damage does not chain: give up
                self._repairing = False
                return [*effects, Notice("replica.repair_abandoned", (("op", self.head),))]
            del self._repair[self.head]
            assert item.hash is not None
            effects.extend(self._append(Entry(self.head, item.hash, item.body)))
        return [*effects, *self._repaired()]

    def _repaired(self) -> list[Effect]:
        if not self._repairing or self._repair or self.log.durable < self.head:
            return []
        self._repairing = False
        self._lost_from = None
        self._recovering = self._damage_only = False
        fields = (("head", self.head), ("fetched_from_peers", self._repair_holes))
        notice = Notice("replica.repaired", fields)
        return [notice, *self._save_state(), *self._resume()]

    def _on_request_prepare(self, ask: RequestPrepare) -> list[Effect]:
        if ask.replica == self.config.replica_id or ask.replica >= self._count:
            return []
        if self._install is not None or self._truncating or self._rejoining or self._syncing:
            return []  # the journal is between two views' logs, or about to be replaced
        if ask.op < self._base:  # released from memory: the log on disk still holds it
            if ask.op < self.log.base:
                # Only the checkpoint state at the log's base holds it now: offer that (a
                # repairing replica installs it as its base and repairs on from there).
                return self._offer_checkpoint(ask.replica)
            if not ask.op < self.log.durable:
                return []
            return self._route(self.log.read(ask.op, SERVE_TAG_BASE + ask.replica))
        if ask.op < self.head:
            entry = self.entry(ask.op)
        else:
            item = self._repair.get(ask.op)
            if item is None or item.body is None or item.hash is None:
                return []
            entry = Entry(ask.op, item.hash, item.body)
        return [Send(ask.replica, self._encode(PrepareReply(self.log_view, entry)))]

    def _on_prepare_reply(self, reply: PrepareReply) -> list[Effect]:
        if self._syncing is not None:
            return []  # a checkpoint is becoming this log's base: the holes are asked again
        entry = reply.entry
        item = self._repair.get(entry.op)
        if self.status is Status.RECOVERING and entry.op > self.head and item is not None:
            return self._fill_tail_hole(entry)
        if self.status is not Status.RECOVERING or entry.op != self.head or item is None:
            return []
        if item.body is not None or entry.hash != (item.hash or entry.hash):
            return []
        if item.hash is None and reply.log_view != self.log_view:
            return []  # nothing vouches for this op: only a log of this view agrees on it
        if chain_hash(self._last_hash(), entry.op, entry.body) != entry.hash:
            return []
        self._repair[entry.op] = Salvaged(entry.op, entry.hash, entry.body)
        notice = Notice("replica.prepare_repaired", (("op", entry.op),))
        return [notice, *self._repair_next()]

    def _fill_tail_hole(self, entry: Entry) -> list[Effect]:
        """A hole past the log's head, asked for before a state is installed below it
        (``_repair_from_checkpoint``): taken only when it links the hashes vouched for on
        both sides of it."""
        if not self._fetchable_hole(entry.op):
            return []
        before = self._repair[entry.op - 1]
        assert before.hash is not None
        if entry.hash != self._repair[entry.op].hash:
            return []
        if chain_hash(before.hash, entry.op, entry.body) != entry.hash:
            return []
        self._repair[entry.op] = Salvaged(entry.op, entry.hash, entry.body)
        return [Notice("replica.prepare_repaired", (("op", entry.op),))]

    # --- recovery: a damaged log or a wiped disk ----------------------------------------------

    def _must_recover(self) -> bool:
        """Whether this replica may have lost ops it acknowledged (its log was cut at
        damage), or its whole disk while it was a member: then it neither votes nor
        acknowledges until it holds a view's log again."""
        if self.config.replica_count == 1:
            return False
        lost_state = self._recovered is not None and not self._recovered.owner_state
        if self._persisted_recovering and self._persisted_damage_only:
            # It was repairing damage when it stopped: done if nothing is missing now and
            # its log reaches again what it had certified when the damage was found (a cut,
            # as a rejoin's install makes, lowers the log's own mark, never this one).
            return self._lost_from is not None or self.head < self._persisted_damage_mark
        if self._persisted_recovering:
            return True  # it was recovering when it stopped: its log is still not its own
        return self._lost_from is not None or (lost_state and self.config.joined)

    def _begin_recovery(self) -> list[Effect]:
        """Ask the others which view the cluster is in (the answers carry a fresh nonce, so
        none predates this start); a quorum of answers names a view at least as recent as
        any this replica can have voted in, even one its wiped disk forgot."""
        self.status = Status.RECOVERING
        self._recovery_nonce = self._prng.next_u64()
        self._recovery_views = {}
        reason = "damaged" if self._lost_from is not None else "wiped"
        if self._persisted_recovering and self._lost_from is None:
            reason = "unfinished"
        fields: tuple[tuple[str, str | int], ...] = (
            ("reason", reason),
            ("head", self.head),
            ("view", self.view),
        )
        if self._lost_from is not None:
            fields = (*fields, ("lost_from", self._lost_from))
        # Before its log changes in any way, the superblock says it is recovering: a crash
        # in the middle of a repair or an install must not leave a log that looks whole.
        # Damage alone (no lost disk, and no recovery of another kind under way) is said
        # so: a restart that finds every certified record intact ends it.
        other_kind = self._persisted_recovering and not self._persisted_damage_only
        lost_state = self._recovered is not None and not self._recovered.owner_state
        self._damage_only = reason == "damaged" and not other_kind and not lost_state
        if self._damage_only:
            certified = 0 if self._recovered is None else self._recovered.certified
            earlier = self._persisted_damage_mark if self._persisted_damage_only else 0
            self._damage_mark = max(earlier, certified, self.head)
        self._recovering = True
        saving = self._save_state()
        return [Notice("replica.recovering", fields), *saving, *self._recovery_messages()]

    def _recovery_messages(self) -> list[Effect]:
        effects = self._broadcast(Recovery(self.config.replica_id, self._recovery_nonce))
        target = self._recovery_target()
        if target is None:
            return effects
        if target > max(self._recovery_views.values()):
            # This replica promised a later view than the others are in: it cannot join
            # theirs, so it moves them to its own (a view change vote names no log).
            if self._persisted_view == self.view:
                effects.extend(self._broadcast(StartViewChange(self.view, self.config.replica_id)))
        elif target % self._count != self.config.replica_id:
            ask = RequestStartView(target, self.config.replica_id)
            effects.append(Send(target % self._count, self._encode(ask)))
        return effects

    def _recovery_target(self) -> int | None:
        """The view to rejoin, once a quorum of other replicas answered."""
        if len(self._recovery_views) < self.config.quorum:
            return None
        return max(self.view, *self._recovery_views.values())

    def _on_recovery(self, ask: Recovery) -> list[Effect]:
        settled = self._install is None and self.log_view == self.view
        if self.status is not Status.NORMAL or not settled or ask.replica >= self._count:
            return []
        answer = RecoveryResponse(self.view, self.config.replica_id, ask.nonce)
        return [Send(ask.replica, self._encode(answer))]

    def _on_recovery_response(self, answer: RecoveryResponse) -> list[Effect]:
        if self.status is not Status.RECOVERING or answer.nonce != self._recovery_nonce:
            return []
        if answer.replica == self.config.replica_id or answer.replica >= self._count:
            return []
        had = self._recovery_target()
        seen = self._recovery_views.get(answer.replica, 0)
        self._recovery_views[answer.replica] = max(seen, answer.view)
        if self._recovery_target() != had:
            return self._recovery_messages()
        return []

    @property
    def _count(self) -> int:
        return self.config.replica_count

    # --- client requests ---------------------------------------------------------------------

    def _on_request(self, request: ClientRequest) -> list[Effect]:
        client, number = request.client_id, request.request_id
        if self.status is not Status.NORMAL or not self.is_primary or self._install is not None:
            if self.status is Status.NORMAL and not self.is_primary:
                redirect = struct.pack("<IB", self.view, self.primary)
                return [self._reply(client, number, ReplyStatus.NOT_PRIMARY, redirect)]
            return [self._reply(client, number, ReplyStatus.BUSY, b"")]
        session = self.clients.get(client)
        if number > 0 and session is not None and number >> SESSION_SHIFT == session.session:
            refusal = self._check_session(client, number)
            if refusal is not None:
                return [refusal]
        # A session this replica does not know may be registered by an op it has not applied
        # yet: the request is prepared, and applying it decides (the same on every replica).
        if self._in_pipeline(client, number):
            return []  # already being prepared: the reply follows its commit
        if self.head - self.commit >= self.config.pipeline_max:
            return [self._reply(client, number, ReplyStatus.BUSY, b"")]
        if self.head - self._base >= JOURNAL_OPS_MAX:
            busy = self._reply(client, number, ReplyStatus.BUSY, b"")
            if self._journal_full_at == self._base:
                return [busy]
            self._journal_full_at = self._base  # said once per journal that filled up
            fields = (("first", self._base), ("head", self.head))
            return [Notice("replica.journal_full", fields), busy]
        body = PrepareBody(self.view, client, number, request.body)
        return self._prepare(codec.encode_body(PREPARE_BODY, body), (client, number))

    def _check_session(self, client: int, request_id: int) -> Reply | None:
        """The reply that settles ``request_id`` without preparing it, if any."""
        session = self.clients.get(client)
        if session is None or request_id >> SESSION_SHIFT != session.session:
            return self._reply(client, request_id, ReplyStatus.SESSION_EXPIRED, b"")
        number = request_id & NUMBER_MASK
        if number == session.number and session.reply is not None:
            return Reply(client, request_id, session.reply)
        if number <= session.number:
            return self._reply(client, request_id, ReplyStatus.STALE, b"")
        return None

    def _in_pipeline(self, client: int, number: int) -> bool:
        return (client, number) in self._uncommitted

    def _journal(self, entry: Entry, request: tuple[int, int] | None = None) -> None:
        """Add ``entry`` to the journal, and its request (client, number: from its body
        unless the caller that encoded the body says) to the uncommitted index."""
        if request is None:
            body = decode_prepare_body(entry.body)
            request = (body.client_id, body.request_number)
        self._uncommitted[request] = entry.op
        self.entries.append(entry)

    def _forget_request(self, entry: Entry) -> None:
        body = decode_prepare_body(entry.body)
        key = (body.client_id, body.request_number)
        if self._uncommitted.get(key) == entry.op:
            del self._uncommitted[key]

    def _reply(self, client: int, number: int, status: ReplyStatus, rest: bytes) -> Reply:
        return Reply(client, number, bytes([status]) + rest)

    def _prepare(self, body: bytes, request: tuple[int, int]) -> list[Effect]:
        op = self.head
        entry = Entry(op, chain_hash(self._last_hash(), op, body), body)
        effects = self._append(entry, request)
        message = Prepare(self.view, self.commit, entry)
        return [*effects, *self._broadcast(message)]

    def _append(self, entry: Entry, request: tuple[int, int] | None = None) -> list[Effect]:
        """Append a verified entry at the head of the journal and the log. (The log chains
        the body onto the journal's last hash itself: its chain hash after the append is
        the entry's, or the entry was not the next link.)"""
        assert entry.op == self.head and self.log.chain_hash == self._last_hash()
        self._journal(entry, request)
        position, outputs = self.log.append(entry.body, PREPARE_KIND)
        assert position == entry.op and self.log.chain_hash == entry.hash
        return self._route(outputs)

    def _last_hash(self) -> bytes:
        return self.entries[-1].hash if self.entries else self._base_hash

    # --- messages ----------------------------------------------------------------------------

    def _on_message(self, received: MessageReceived) -> list[Effect]:
        try:
            message = codec.decode_message(received.payload)
        except DecodeError as error:
            return [Notice("replica.bad_message", (("from", received.src), ("why", error.reason)))]
        if self.status is Status.LOADING:
            return []
        if self.status is Status.RECOVERING and not isinstance(
            message,
            (StartView, RecoveryResponse, Recovery, RequestPrepare, PrepareReply, NewCheckpoint),
        ):
            return []
        match message:
            case Prepare():
                return self._on_prepare(message)
            case PrepareOk():
                return self._on_prepare_ok(message)
            case Commit():
                return self._on_commit(message)
            case StartViewChange():
                return self._on_start_view_change(message)
            case DoViewChange():
                return self._on_do_view_change(message)
            case StartView():
                return self._on_start_view(message)
            case RequestStartView():
                return self._on_request_start_view(message)
            case GetState():
                return self._on_get_state(message, received.src)
            case NewState():
                return self._on_new_state(message, received.src)
            case NewCheckpoint():
                whole = self._assemble(message)
                if isinstance(whole, list):
                    return whole
                return self._on_new_checkpoint(whole)
            case Recovery():
                return self._on_recovery(message)
            case RecoveryResponse():
                return self._on_recovery_response(message)
            case RequestPrepare():
                return self._on_request_prepare(message)
            case PrepareReply():
                return self._on_prepare_reply(message)
        raise AssertionError(f"unhandled message {message!r}")

    def _behind(self, view: int) -> list[Effect]:
        """A message from a later view: join it (the view change messages of this replica
        ask that view's primary for its StartView)."""
        return self._start_view_change(view)

    def _on_prepare(self, prepare: Prepare) -> list[Effect]:
        if prepare.view < self.view:
            return []
        if prepare.view > self.view:
            return self._behind(prepare.view)
        if self.status is not Status.NORMAL or self.is_primary:
            return []
        self._heard_primary(prepare.commit)
        entry = prepare.entry
        effects: list[Effect] = []
        if entry.op == self.head and not self._truncating and self._syncing is None:
            if self._verify_from is not None:
                return []  # appended once the journal is compared with the view's log
            if entry.hash != chain_hash(self._last_hash(), entry.op, entry.body):
                return [Notice("replica.prepare_rejected", (("op", entry.op),))]
            effects.extend(self._append(entry))
        elif entry.op > self.head:
            effects.extend(self._get_state())
        elif entry.op < self.log.durable and self._ready_to_ack():
            effects.append(self._prepare_ok())
        effects.extend(self._commit_to(min(prepare.commit, self.head)))
        return effects

    def _ready_to_ack(self) -> bool:
        return (
            self.status is Status.NORMAL
            and self._install is None
            and self._persisted_log_view == self.view
            and self.log_view == self.view
        )

    def _prepare_ok(self) -> Send:
        ok = PrepareOk(self.view, self.log.durable - 1, self.config.replica_id)
        return Send(self.primary, self._encode(ok))

    def _on_durable(self) -> list[Effect]:
        if self.status is Status.RECOVERING:
            return self._repaired()
        if self.status is not Status.NORMAL:
            return []
        if self._install is not None:
            return self._continue_install()
        if self.is_primary:
            return self._advance_commit()
        if self._ready_to_ack() and self.log.durable > 0:
            return [self._prepare_ok()]
        return []

    def _on_prepare_ok(self, ok: PrepareOk) -> list[Effect]:
        if ok.view != self.view or not self.is_primary or self.status is not Status.NORMAL:
            return []
        self._acked[ok.replica] = max(self._acked.get(ok.replica, -1), ok.op)
        return self._advance_commit()

    def _advance_commit(self) -> list[Effect]:
        if self._install is not None or self._persisted_log_view != self.view:
            return []
        holders = sorted(
            [self.log.durable - 1]
            + [
                op
                for replica, op in sorted(self._acked.items())
                if replica != self.config.replica_id
            ],
            reverse=True,
        )
        if len(holders) < self.config.quorum:
            return []
        candidate = min(holders[self.config.quorum - 1] + 1, self.head)
        return self._commit_to(candidate)

    def _on_commit(self, commit: Commit) -> list[Effect]:
        if commit.view < self.view:
            return []
        if commit.view > self.view:
            return self._behind(commit.view)
        if self.is_primary:
            return []
        self._primary_heard_tick = self._ticks  # only this view's primary sends its heartbeat
        if self.status is Status.NORMAL:
            self._heard_primary(commit.commit)
        if self.status is not Status.NORMAL:
            # The new primary is alive (installing its log): wait for its StartView rather
            # than give up on the view; ask for it in case it was lost.
            ask = RequestStartView(self.view, self.config.replica_id)
            return [Send(self.primary, self._encode(ask))]
        effects = self._commit_to(min(commit.commit, self.head))
        if commit.commit > self.head and not self._truncating:
            effects.extend(self._get_state())
        return effects

    def _get_state(self, source: int | None = None) -> list[Effect]:
        """Ask ``source`` (the primary by default) for the entries from this head on (from
        the first op not yet compared, while an install compares the journal)."""
        source = self.primary if source is None else source
        if source == self.config.replica_id or self._ticks < self._get_state_quiet_until:
            return []
        avoided = self._avoid_source
        if source == avoided and self._count > 2:
            # Its checkpoint state did not check out (a state file rotting on its disk fails
            # every time): a backup asks the next replica instead, until it has caught up or
            # the view changes; only replicas settled in the view answer it (see
            # ``_on_get_state``), so what it gets is still the view's log. An installing
            # primary asks the next replica too, for that checkpoint state only: a state at
            # a checkpoint is committed, the same on every replica and checked against its
            # digest and signature; entries it takes from its chosen source alone (see
            # ``_on_new_state``), which serves them once the state is installed.
            source = min(
                (r for r in self._others() if r != avoided),
                key=lambda r: (r - avoided) % self._count,
            )
        self._get_state_quiet_until = self._ticks + self.config.repair_ticks // 2
        op_from = self.head if self._verify_from is None else self._verify_from
        ask = GetState(self.view, op_from, self.config.replica_id)
        assembly = self._assembly
        if assembly is not None and assembly.sender == source:
            # the next part of the state at ``assembly.op``
            ask = GetState(self.view, assembly.op, self.config.replica_id, assembly.received)
        return [Send(source, self._encode(ask))]

    def _on_get_state(self, ask: GetState, src: int) -> list[Effect]:
        """Serve entries only from a journal known to be the view's log: a replica in normal
        status that installed the view, or, to the view's new primary only, one frozen in
        its view change (the new primary fetches from the replica whose log it chose)."""
        del src
        if ask.state_offset > 0:
            # The next part of the checkpoint state at ``op_from``: committed history,
            # signed, the same whatever view the asker is in (a repairing replica asks as
            # well). A later state replaced it here: its first part goes instead.
            durable = self._durable_state
            same = durable is not None and durable.op == ask.op_from
            return self._offer_checkpoint(ask.replica, ask.state_offset if same else 0)
        if ask.view != self.view or self._truncating or self._syncing is not None:
            return []
        settled = self._install is None and self.log_view == self.view
        chosen = self.status is Status.VIEW_CHANGE and ask.replica == self.primary
        if not (chosen or (self.status is Status.NORMAL and settled)):
            return []
        if ask.op_from > self.head:
            return []
        if ask.op_from < self._base:
            return self._offer_checkpoint(ask.replica)
        index = ask.op_from - self._base
        entries = tuple(self.entries[index : index + SUFFIX_ENTRIES_MAX])
        answer = NewState(self.view, self.commit, self.head, ask.op_from, entries)
        return [Send(ask.replica, self._encode(answer))]

    def _on_new_state(self, state: NewState, src: int) -> list[Effect]:
        if state.view != self.view or self._truncating or self.status is not Status.NORMAL:
            return []
        if self._syncing is not None:
            return []  # its journal is about to start at a checkpoint: asked again then
        if self.is_primary and self._install is None:
            return []  # a primary fetches only while installing its view's log
        if self.is_primary and self._install is not None and src != self._install.source:
            return []  # only the replica whose log it chose holds the view's log
        self._primary_heard_tick = self._ticks
        if self._verify_from is not None and self._install is not None:
            return self._on_verify(state)
        had = self.head
        effects = self._extend(state.entries)
        advanced = self.head > had
        if advanced:
            fields = (("from", had), ("to", self.head))
            effects.append(Notice("replica.state_transfer", fields))
            if len(state.entries) == SUFFIX_ENTRIES_MAX:
                self._get_state_quiet_until = 0  # a full batch of news: the next at once
        # One ask per answer that brought news, never two: an installing replica's install
        # asks for the rest itself. An answer that brought nothing (a duplicate, or one
        # overtaken by another) asks for nothing: the quiet window paces the next ask, so
        # duplicate answers cannot breed asks that breed more answers.
        installing = self._install is not None
        if installing:
            effects.extend(self._continue_install())
        effects.extend(self._commit_to(min(state.commit, self.head)))
        if not installing and advanced and self.head < state.head:
            effects.extend(self._get_state())
        return effects

    # --- state sync: catching up from a checkpoint state -------------------------------------

    def _persist_state(self) -> list[Effect]:
        """Write the state at the sealed checkpoint to its state file, once per checkpoint:
        from then on the journal below it may be released, and it is what this replica
        serves to a replica that needs the ops below its journal."""
        checkpoint = self.log.checkpoint
        if not self.config.checkpoint_states or checkpoint is None:
            return []
        if self._saving_state is not None:
            return []
        op = checkpoint.position
        state = self.checkpoints.get(op)
        durable = self._durable_state
        if state is None or state.stream is None or op == self.log.base:
            return []
        if durable is not None and durable.op >= op:
            return []
        self._saving_state = op
        # the stream produces each part as the log writes it (``CheckpointState``)
        return self._route(self.log.save_state(op, iter(state.stream.next_part, None)))

    def _on_state_saved(self, op: int) -> list[Effect]:
        state = self.checkpoints.get(op)
        self._saving_state = None
        durable = self._durable_state
        if state is None or (durable is not None and durable.op >= op):
            # superseded while it was written (a later state, or a state-sync base)
            return [*self._route(self.log.release_state(op)), *self._persist_state()]
        old = self._durable_state
        stream = state.stream
        assert stream is not None and stream.digest is not None
        self._durable_state = StateFile(op, state.chain_hash, stream.digest, stream.size)
        # The bytes are on disk now: memory keeps what identifies them.
        self.checkpoints = {
            at: kept if at > op else attrs.evolve(kept, stream=None)
            for at, kept in self.checkpoints.items()
        }
        self.checkpoints[op] = CheckpointState(op, state.chain_hash, None, stream.digest)
        if old is not None and old.op != op:
            self._superseded_states.append(old.op)  # emptied once the superblock names op
        effects = self._save_state()
        effects.extend(self._release_journal())
        return [*effects, *self._persist_state()]

    def _offer_checkpoint(self, asker: int, offset: int = 0) -> list[Effect]:
        """Send the latest durable checkpoint state to a replica whose journal ends below
        this one's first op (the ops there are only in that state), from ``offset`` on, as
        much as one part holds. It is read from its file and sent as read: the receiver
        checks it against the digest and signature once it holds all of it."""
        durable = self._durable_state
        if durable is None or asker >= self._count or asker == self.config.replica_id:
            return []
        if asker in self._state_readers or offset >= max(durable.size, 1):
            return []
        self._state_readers[asker] = (durable.op, offset)
        size = min(durable.size - offset, self.config.state_part_bytes)
        return self._route(self.log.read_state(durable.op, size, -asker - 1, offset))

    def _on_state_read(self, read: StateRead) -> list[Effect]:
        asker, op = -read.tag - 1, read.position
        reading = self._state_readers.pop(asker, None)
        current = self._durable_state
        if reading is None or reading[0] != op or current is None or current.op != op:
            return []  # superseded by a later state: the asker asks again
        offset = reading[1]
        signature = self._state_signatures.get(op)
        if signature is None:
            signature = self.log.sign(state_message(op, current.chain_hash, current.digest))
            self._state_signatures = {op: signature}
        offer = NewCheckpoint(
            self.view,
            self.commit,
            self.head,
            self.config.replica_id,
            op,
            current.chain_hash,
            current.digest,
            self.log.public_key,
            signature,
            current.size,
            offset,
            read.data,
        )
        return [Send(asker, self._encode(offer))]

    def _assemble(self, part: NewCheckpoint) -> CheckpointOffer | list[Effect]:
        """The whole offer once every part of its state is here; until then, the ask for
        the next part. Parts of the state being put together are taken from any sender; a
        first part of another state starts over only when that state is later, or when
        the one in progress has stalled (``ASSEMBLY_PATIENCE`` parts of others came
        meanwhile: its senders no longer answer); other parts are dropped."""
        if part.offset == 0 and len(part.state) == part.state_size:
            self._drop_assembly()
            return CheckpointOffer.of(part, (part.state,))
        assembly = self._assembly
        if assembly is not None and (assembly.op, assembly.digest, assembly.size) != (
            part.op,
            part.digest,
            part.state_size,
        ):
            assembly.others += 1
            stalled = assembly.others >= ASSEMBLY_PATIENCE
            if part.offset != 0 or not (part.op > assembly.op or stalled):
                return []
            self._drop_assembly()
            assembly = None
        if assembly is None:
            if part.offset != 0:
                return []
            storage = self.machine.storage or MemoryStorage()
            parts = StateParts(storage.open_blob("incoming-state"))
            assembly = _Assembly(part.replica, part.op, part.digest, part.state_size, parts, 0)
            self._assembly = assembly
        assembly.sender = part.replica  # it answers: the next part is asked of it
        if part.offset > assembly.received:
            return []  # overtook the part it asked for: asked again when a repeat comes
        if part.offset < assembly.received:
            # A repeat (a repairing replica is answered the first part at each of its asks):
            # the part it asked for, or the answer, was lost; it asks again, paced.
            if self._ticks < self._get_state_quiet_until:
                return []
            return self._ask_part(assembly)
        if not part.state:
            # The sender's state file ends before the size it named: damaged there. As for
            # a state that does not check out, the next ask goes to another replica.
            self._drop_assembly()
            self._avoid_source = part.replica
            why = f"its state file ends at byte {part.offset} of {part.state_size}"
            rejected = (("op", part.op), ("from", part.replica), ("why", why))
            return [Notice("replica.checkpoint_rejected", rejected)]
        assembly.parts.add(part.state)
        assembly.received += len(part.state)
        if assembly.received < assembly.size:
            fields = (("op", part.op), ("received", assembly.received), ("of", assembly.size))
            return [Notice("replica.state_part", fields), *self._ask_part(assembly)]
        self._assembly = None
        assembly.parts.close()
        return CheckpointOffer.of(part, assembly.parts)

    def _drop_assembly(self) -> None:
        if self._assembly is not None:
            self._assembly.parts.close()
            self._assembly = None

    def _ask_part(self, assembly: _Assembly) -> list[Effect]:
        """Ask the sender of a state being put together for its next part."""
        self._get_state_quiet_until = self._ticks + self.config.repair_ticks // 2
        ask = GetState(self.view, assembly.op, self.config.replica_id, assembly.received)
        return [Send(assembly.sender, self._encode(ask))]

    def _on_new_checkpoint(self, offer: CheckpointOffer) -> list[Effect]:
        if self.status is Status.RECOVERING:
            return self._repair_from_checkpoint(offer)
        if offer.view != self.view or self._truncating or self.status is not Status.NORMAL:
            return []
        if (self.is_primary and self._install is None) or self._syncing is not None:
            return []
        if self._verify_from is not None and self._install is not None and offer.op <= self.head:
            return self._verify_by_checkpoint(offer)
        if offer.op <= self.head:
            return []  # it holds every op below the state: journal transfer serves it
        self._primary_heard_tick = self._ticks
        if not self.log.can_install_base:
            return []  # writes in flight: the next GetState brings it again
        checked = self._verify_checkpoint(offer)  # (restores the machine: checked last)
        if isinstance(checked, str):
            fields = (("op", offer.op), ("from", offer.replica), ("why", checked))
            self._avoid_source = offer.replica
            return [Notice("replica.checkpoint_rejected", fields)]
        self._syncing = (offer, *checked)
        for entry in self.entries:
            self._forget_request(entry)
        return self._route(self.log.install_base(offer.op, offer.chain_hash, offer.parts))

    def _repair_from_checkpoint(self, offer: CheckpointOffer) -> list[Effect]:
        """A repairing replica whose hole lies below every peer's log (their logs start at
        a checkpoint state) takes a peer's state at an op past the hole as its log's base:
        the state is committed history, checked against its digest and its sender's
        signature, and, where this replica's own records vouch for the op before it, against
        that hash too. The holes past the state are repaired by hash as before."""
        if not self._repairing or not self._persisted_recovering or self._truncating:
            return []
        if self._syncing is not None or offer.op <= self.head:
            return []
        if not self.log.can_install_base:
            return []  # writes in flight: the hole is asked for again
        # The records this replica holds past the state go into the new log with it: they
        # were on this disk, and must never be only in memory (a crash would lose them).
        tail: list[Entry] = []
        prev = offer.chain_hash
        while (item := self._repair.get(offer.op + len(tail))) is not None:
            if item.body is None or item.hash is None:
                break
            if chain_hash(prev, item.position, item.body) != item.hash:
                break
            prev = item.hash
            tail.append(Entry(item.position, item.hash, item.body))
        hole = offer.op + len(tail)
        if self._fetchable_hole(hole):
            # Records past that hole would be left out of the new log, and the old one's
            # files are emptied once the base is installed: this disk would hold them no
            # more until the repair re-appends them, and they may be the last intact copies
            # of committed ops. The hole is fetched first. Waiting costs no liveness: past
            # the state, the repair would need the hole all the same (or a later state,
            # which leaves the hole below it and is taken at once).
            asked = (("hole", hole), ("op", offer.op))
            ask = RequestPrepare(self.config.replica_id, hole)
            return [Notice("replica.tail_hole_asked", asked), *self._broadcast(ask)]
        vouched = self._repair.get(offer.op - 1)
        if vouched is not None and vouched.hash not in (None, offer.chain_hash):
            checked: tuple[OpenedCheckpoint, StateMachine] | str = (
                "its chain hash is not this log's"
            )
        else:
            checked = self._verify_checkpoint(offer)  # (restores the machine: checked last)
        if isinstance(checked, str):
            fields = (("op", offer.op), ("from", offer.replica), ("why", checked))
            return [Notice("replica.checkpoint_rejected", fields)]
        self._syncing = (offer, *checked)
        for entry in self.entries:
            self._forget_request(entry)
        self._sync_tail = tuple(tail)
        noted = (("hole", self.head), ("op", offer.op), ("kept", len(tail)))
        bodies = [entry.body for entry in tail]
        return [
            Notice("replica.repair_by_state", noted),
            *self._route(self.log.install_base(offer.op, offer.chain_hash, offer.parts, bodies)),
        ]

    def _fetchable_hole(self, op: int) -> bool:
        """Whether ``op`` is a hole of this repair that a peer's entry can fill above the
        log's head (its hash and the one before it are vouched for), with intact records
        past it."""
        item = self._repair.get(op)
        before = self._repair.get(op - 1)
        if item is None or item.body is not None or item.hash is None:
            return False
        if before is None or before.hash is None:
            return False
        return any(later > op and found.body is not None for later, found in self._repair.items())

    def _verify_checkpoint(
        self, offer: CheckpointOffer
    ) -> tuple[OpenedCheckpoint, StateMachine] | str:
        """The state, once its digest, its sender's signature (under the sender's known key,
        when keys are configured) and its contents check out; else why not."""
        keys = self.config.peer_public_keys
        if keys and (offer.replica >= len(keys) or keys[offer.replica] != offer.public_key):
            return "signed by a key that is not the sender's"
        message = state_message(offer.op, offer.chain_hash, offer.digest)
        if not verify_signature(offer.public_key, message, offer.signature):
            return "the signature does not verify"
        digest = hashlib.sha256()
        for part in offer.parts:
            digest.update(part)
        if digest.digest() != offer.digest:
            return "checkpoint state does not match its digest"
        # decoded part by part, never joined: the machine is built as the parts go
        machine_loader = type(self.machine).snapshot_loader(self.machine.storage)
        loader = CheckpointLoader(offer.digest, offer.size, machine_loader)
        try:
            for part in offer.parts:
                loader.feed(part)
            opened, machine = loader.finish()
        except (CheckpointError, SnapshotError) as error:
            return str(error)
        if (opened.op, opened.chain_hash) != (offer.op, offer.chain_hash):
            machine.close()
            return "the state is not the one the signature names"
        return opened, machine

    def _on_base_installed(self, position: int) -> list[Effect]:
        syncing = self._syncing
        assert syncing is not None and syncing[0].op == position
        offer, opened, machine = syncing
        self._syncing = None
        self._avoid_source = None
        self._verify_from = None  # the journal it was comparing gave way to the state
        old = self._durable_state
        self._adopt_state(opened, machine, offer.digest, offer.size)
        tail, self._sync_tail = self._sync_tail, ()
        for entry in tail:  # already in the new log, past its base
            self._journal(entry)
            self._repair.pop(entry.op, None)
        assert self.head == self.log.head, (self.head, self.log.head)
        effects: list[Effect] = [Notice("replica.state_synced", (("op", position),))]
        if old is not None:  # superseded by the base's own state file
            effects.extend(self._route(self.log.release_state(old.op)))
        self._get_state_quiet_until = 0
        install = self._install
        if install is not None:
            # The records kept past the base may differ from the view's log being installed
            # (an old view's uncommitted ops): cut them where they do, as the install would,
            # comparing first when the suffix cannot tell (they may be committed ops whose
            # other copies faults destroyed: cut blind, they would leave this disk before
            # the view's log replaced them).
            first = install.entries[0].op if install.entries else install.head
            verdict = self._journal_verdict(install.head, first, install.entries)
            if isinstance(verdict, list):
                return [*effects, *verdict]
            # Never below the base or a sealed checkpoint: what lies below them is committed
            # (an install older than the state may name a shorter log; it changes nothing).
            sealed = self.log.checkpoint
            floor = max(self.log.base, 0 if sealed is None else sealed.position)
            return [*effects, *self._cut_then_install(max(verdict, min(floor, self.head)))]
        if self._repairing:  # the state covers the holes below it: repair on from there
            self._repair = {op: item for op, item in self._repair.items() if op >= position}
            return [*effects, *self._repair_next()]
        if self.status is not Status.NORMAL:
            return effects
        return [*effects, *self._get_state()]

    def _release_journal(self) -> list[Effect]:
        """Drop the entries the durable checkpoint state covers, but for a pipeline's worth
        below it (view changes send that much suffix): a replica that needs them gets the
        state instead. The log on disk keeps every record."""
        if not self.config.checkpoint_states or self.status is not Status.NORMAL:
            return []
        if self._install is not None or self._truncating or self._syncing is not None:
            return []
        durable = self._durable_state
        target = (0 if durable is None else durable.op) - self.config.pipeline_max
        if target <= self._base:
            return []
        self._base_hash = self.entry(target - 1).hash
        del self.entries[: target - self._base]
        self._base = target
        return [Notice("replica.journal_released", (("below", target),))]

    def _extend(self, entries: tuple[Entry, ...]) -> list[Effect]:
        """Append the entries that continue this journal; check the ones it already has."""
        effects: list[Effect] = []
        for entry in entries:
            if entry.op < self._base:
                continue  # committed, below what this journal holds
            if entry.op < self.head:
                if self.entry(entry.op).hash != entry.hash:
                    return [*effects, Notice("replica.diverged", (("op", entry.op),))]
                continue
            if entry.op > self.head:
                break
            if entry.hash != chain_hash(self._last_hash(), entry.op, entry.body):
                return [*effects, Notice("replica.entry_rejected", (("op", entry.op),))]
            effects.extend(self._append(entry))
        return effects

    # --- committing and applying -------------------------------------------------------------

    def _commit_to(self, commit: int) -> list[Effect]:
        if self._verify_from is not None:
            # past it the journal may not be the view's log (see ``_begin_install``)
            commit = min(commit, self._verify_from)
        effects: list[Effect] = []
        while self.commit < min(commit, self.head):
            entry = self.entry(self.commit)
            self._forget_request(entry)
            effects.extend(self._apply(entry))
            self.commit += 1
            if self.config.checkpoint_states and state_due(
                self.commit, self.config.checkpoint_interval_ops
            ):
                state = self._checkpoint_state()
                self.checkpoints[state.op] = state
                if len(self.checkpoints) > CHECKPOINT_STATES_MAX:
                    del self.checkpoints[min(self.checkpoints)]
        if effects or commit:
            effects.extend(self._maybe_checkpoint())
        return effects

    def _apply(self, entry: Entry) -> list[Effect]:
        body = decode_prepare_body(entry.body)
        client, number = body.client_id, body.request_number
        if number == 0:
            session = self.clients.get(client)
            if session is None and len(self.clients) >= self.config.client_table_max:
                evicted = min(self.clients, key=lambda c: (self.clients[c].op, c))
                del self.clients[evicted]
            reply = bytes([ReplyStatus.OK]) + entry.op.to_bytes(8, "little")
            # The session's floor: numbers below it are refused as already seen (STALE).
            floor = int.from_bytes(body.operation[:8], "little") if body.operation else 1
            last = max(0, floor - 1) & NUMBER_MASK
            self.clients[client] = _ClientSession(entry.op, last, None, entry.op)
        else:
            refusal = self._check_session(client, number)
            not_applied = (ReplyStatus.SESSION_EXPIRED, ReplyStatus.STALE)
            if refusal is not None and refusal.body[0] in not_applied:
                # Expired, or overtaken in the pipeline by a higher number of its client:
                # not applied, and its waiter is told so.
                reply = refusal.body
            elif refusal is not None:
                return []  # a duplicate prepared twice: applied once already
            else:
                result = self.machine.apply(entry.op, body.operation)
                reply = bytes([ReplyStatus.OK]) + entry.op.to_bytes(8, "little") + result
                session = self.clients[client]
                session.number, session.reply, session.op = number & NUMBER_MASK, reply, entry.op
        if self.is_primary and self.status is Status.NORMAL:
            return [Reply(client, number, reply)]
        return []

    def _checkpoint_state(self) -> CheckpointState:
        """The state at this commit number, canonically encoded (the same bytes on every
        replica that committed the same log). What it holds is fixed now; its bytes are
        produced a part at a time as its file is written (``StateStream``), while this
        replica goes on applying later ops."""
        clients = [
            ClientEntry(client, s.session, s.number, s.op, s.reply)
            for client, s in self.clients.items()
        ]
        chain = self._hash_before(self.commit)
        part_bytes = self.config.state_part_bytes
        machine = self.machine.snapshot_parts(part_bytes)
        stream = StateStream(self.commit, chain, clients, machine, part_bytes)
        return CheckpointState(self.commit, chain, stream, None)

    def _release_checkpoints(self) -> None:
        """Keep the states from the sealed checkpoint's op on: the ones below it are
        superseded by a state the log vouches for."""
        checkpoint = self.log.checkpoint
        sealed = 0 if checkpoint is None else checkpoint.position
        for op in [op for op in self.checkpoints if op < sealed and op != self._saving_state]:
            del self.checkpoints[op]  # (the one being written is named once it is durable)

    @property
    def checkpoint_state(self) -> CheckpointState | None:
        """The state at the op of the log's latest sealed checkpoint, if it was taken."""
        checkpoint = self.log.checkpoint
        return None if checkpoint is None else self.checkpoints.get(checkpoint.position)

    def _maybe_checkpoint(self) -> list[Effect]:
        """Seal at the multiples of the interval, the same ops on every replica, so that
        their checkpoints vouch for the same chain hashes."""
        checkpoint = self.log.checkpoint
        sealed = 0 if checkpoint is None else checkpoint.position
        interval = self.config.checkpoint_interval_ops
        target = min(self.commit, self.log.durable) // interval * interval
        # A state taken and not yet sealed is sealed first, so that it is the one the log
        # vouches for and goes to its file (states are further apart than checkpoints).
        waiting = [op for op in self.checkpoints if sealed < op <= target]
        if waiting:
            target = min(waiting)
        if target <= sealed or self._truncating:
            return []
        try:
            return self._route(self.log.checkpoint_now(target))
        except LogError:
            return []

    # --- ticks and timeouts ------------------------------------------------------------------

    def _on_tick(self) -> list[Effect]:
        self._ticks += 1
        if self.status is Status.LOADING:
            return []
        if self.status is Status.RECOVERING:
            if self._ticks % self.config.repair_ticks == 0:
                return [*self._recovery_messages(), *self._repair_next()]
            return []
        if self.status is Status.NORMAL and self.is_primary:
            return self._primary_tick()
        if self.status is Status.NORMAL:
            silent = self._ticks - self._primary_heard_tick
            if silent >= self._view_change_deadline:
                return self._start_view_change(self.view + 1)
            if self._install is not None and self._ticks % self.config.repair_ticks == 0:
                self._get_state_quiet_until = 0
                return self._get_state(self._install.source)
            return []
        if self._ticks - self._primary_heard_tick >= self._view_change_deadline:
            return self._start_view_change(self.view + 1)
        if self._ticks % self.config.heartbeat_ticks == 0:
            return self._view_change_messages()
        return []

    def _primary_tick(self) -> list[Effect]:
        if self.config.replica_count == 1:
            return []
        effects: list[Effect] = []
        if self._ticks >= self._heartbeat_due:
            self._heartbeat_due = self._ticks + self.config.heartbeat_ticks
            effects.extend(self._broadcast(Commit(self.view, self.commit)))
        if self._ticks % self.config.prepare_retry_ticks == 0 and self._install is None:
            for replica in self._others():
                have = self._acked.get(replica, -1) + 1
                for op in range(max(have, self.commit), self.head):
                    prepare = Prepare(self.view, self.commit, self.entry(op))
                    effects.append(Send(replica, self._encode(prepare)))
        install = self._install
        if install is not None and self._ticks % self.config.repair_ticks == 0:
            self._get_state_quiet_until = 0
            effects.extend(self._get_state(install.source))
        return effects

    def _arm_view_change_timer(self) -> None:
        """Time out after the base timeout plus jitter; each view change that follows another
        without the cluster settling waits twice as long (up to 16 times), so that slow
        disks or a slow new primary do not make views churn forever."""
        jitter = self._prng.below(self.config.view_change_jitter_ticks + 1)
        backoff = 1 << min(self._view_changes_unsettled, VIEW_CHANGE_BACKOFF_MAX)
        self._view_change_deadline = self.config.view_change_timeout_ticks * backoff + jitter

    # --- view change -------------------------------------------------------------------------

    def _start_view_change(self, view: int) -> list[Effect]:
        if self._rejoining:
            # Still installing after a recovery: its log may lack ops it acknowledged once,
            # so it must not vote with it. It asks the cluster again instead.
            self._install = None
            self._verify_from = None
            self._rejoining = False
            return self._begin_recovery()
        assert view > self.view or self.status is Status.LOADING or view == self.view
        if self.status is Status.VIEW_CHANGE:
            self._view_changes_unsettled += 1
        self.view = max(self.view, view)
        self.status = Status.VIEW_CHANGE
        self._install = None
        self._verify_from = None
        self._avoid_source = None
        self._acked = {}
        self._primary_heard_tick = self._ticks
        self._arm_view_change_timer()
        self._svc_from.setdefault(self.view, set()).add(self.config.replica_id)
        notice = Notice("replica.view_change", (("view", self.view),))
        return [notice, *self._persist_then(self._view_change_messages())]

    def _persist_then(self, effects: list[Effect]) -> list[Effect]:
        """Send ``effects`` only once ``view`` (and ``log_view``) are durable."""
        if self._persisted_view == self.view and self._persisted_log_view == self.log_view:
            return effects
        return self._save_state()

    def _wanted_owner_state(self) -> OwnerState:
        durable = self._durable_state
        named = None
        if durable is not None and durable.op > self.log.base:
            named = NamedState(durable.op, durable.size, durable.digest)
        recovering = self._recovering
        damage_only = recovering and self._damage_only
        mark = self._damage_mark if damage_only else 0
        return OwnerState(self.view, self.log_view, recovering, damage_only, named, mark)

    def _save_state(self) -> list[Effect]:
        wanted = self._wanted_owner_state()
        if self._saving == wanted:
            return []
        self._saving = wanted
        return self._route(self.log.save_owner_state(encode_owner_state(wanted)))

    def _release_superseded_states(self) -> list[Effect]:
        """Empty the state files a later one superseded, once the superblock names it."""
        named = self._named_state
        effects: list[Effect] = []
        for op in self._superseded_states:
            if named is None or op != named.op:
                effects.extend(self._route(self.log.release_state(op)))
        self._superseded_states = [op for op in self._superseded_states if named and op == named.op]
        return effects

    def _on_saved(self, state: bytes) -> list[Effect]:
        self._member = True
        saved = decode_owner_state(state)
        self._persisted_recovering = saved.recovering
        self._persisted_damage_only = saved.damage_only
        self._persisted_damage_mark = saved.damage_mark
        self._persisted_view, self._persisted_log_view = saved.view, saved.log_view
        self._named_state = saved.state
        released = self._release_superseded_states()
        if saved == self._saving:
            self._saving = None
        if saved != self._wanted_owner_state():
            return [*released, *self._save_state()]
        if released:
            return [*released, *self._on_saved_go_on()]
        return self._on_saved_go_on()

    def _on_saved_go_on(self) -> list[Effect]:
        match self.status:
            case Status.VIEW_CHANGE:
                return self._view_change_messages()
            case Status.NORMAL:
                return self._continue_install()
            case Status.LOADING:
                return self._resume()  # the first view state of a new member is durable
            case Status.RECOVERING:
                return self._repair_next()

    def _view_change_messages(self) -> list[Effect]:
        """SVC to everyone; DVC to the new primary once a quorum started this view change."""
        if self._persisted_view != self.view or self.status is not Status.VIEW_CHANGE:
            return []
        svc = StartViewChange(self.view, self.config.replica_id)
        effects = self._broadcast(svc)
        if not self.is_primary:  # the view may already be running without this replica
            ask = RequestStartView(self.view, self.config.replica_id)
            effects.append(Send(self.primary, self._encode(ask)))
        voters = self._svc_from.get(self.view, set())
        if len(voters) >= self.config.quorum:
            effects.extend(self._send_do_view_change())
        return effects

    def _on_start_view_change(self, svc: StartViewChange) -> list[Effect]:
        if svc.view < self.view or (svc.view == self.view and self.status is Status.NORMAL):
            return []
        effects: list[Effect] = []
        if svc.view > self.view:
            effects.extend(self._start_view_change(svc.view))
        voters = self._svc_from.setdefault(self.view, set())
        if svc.replica in voters:
            return effects
        voters.add(svc.replica)
        if len(voters) == self.config.quorum:
            effects.extend(self._view_change_messages())
        return effects

    def _send_do_view_change(self) -> list[Effect]:
        # Ops more than a pipeline below the head were committed by the view that
        # prepared them: only the entries above can be uncommitted.
        start = max(self._base, self.head - self.config.pipeline_max)
        dvc = DoViewChange(
            self.view,
            self.log_view,
            self.head,
            self.commit,
            self.config.replica_id,
            start,
            tuple(self.entries[start - self._base :]),
        )
        if self.is_primary:
            return self._on_do_view_change(dvc)
        return [Send(self.primary, self._encode(dvc))]

    def _on_do_view_change(self, dvc: DoViewChange) -> list[Effect]:
        if dvc.view < self.view or dvc.view % self.config.replica_count != self.config.replica_id:
            return []
        effects: list[Effect] = []
        if dvc.view > self.view:
            effects.extend(self._start_view_change(dvc.view))
        if self.status is not Status.VIEW_CHANGE or self._install is not None:
            return effects
        self._svc_from.setdefault(self.view, set()).add(dvc.replica)
        received = self._dvc_from.setdefault(self.view, {})
        received[dvc.replica] = dvc
        if len(received) < self.config.quorum or self.config.replica_id not in received:
            return effects
        return [*effects, *self._become_primary(received)]

    def _become_primary(self, received: dict[int, DoViewChange]) -> list[Effect]:
        best = max(received.values(), key=lambda d: (d.log_view, d.head, -d.replica))
        commit = max(d.commit for d in received.values())
        self.status = Status.NORMAL
        self._acked = {}
        self._heartbeat_due = self._ticks
        notice = Notice("replica.primary", (("view", self.view), ("head", best.head)))
        install = self._begin_install(
            best.head, commit, best.suffix_start, best.entries, best.replica
        )
        return [notice, *install]

    def _on_start_view(self, start: StartView) -> list[Effect]:
        if self.status is Status.RECOVERING:
            target = self._recovery_target()
            if target is None or start.view < target or self._truncating:
                return []
            if not self._persisted_recovering:
                return []  # asked again on the next tick
            self._rejoining = True
            self._repair = {}
            self._repairing = False
        if start.view < self.view or (self.is_primary and start.view == self.view):
            return []
        if start.view == self.view and self.status is Status.NORMAL:
            self._primary_heard_tick = self._ticks  # already in (or installing) this view
            return [] if self._install is not None else self._ack_current()
        self.view = start.view
        self.status = Status.NORMAL
        self._primary_heard_tick = self._ticks
        self._arm_view_change_timer()
        return self._begin_install(
            start.head, start.commit, start.suffix_start, start.entries, self.primary
        )

    def _ack_current(self) -> list[Effect]:
        return [self._prepare_ok()] if self._ready_to_ack() and self.log.durable else []

    def _on_request_start_view(self, ask: RequestStartView) -> list[Effect]:
        # An ask for an earlier view gets this later one: a recovering replica names the
        # latest view it learnt of, and a StartView of a later view is news to anyone.
        if ask.view > self.view or not self.is_primary or self.status is not Status.NORMAL:
            return []
        if self._install is not None:
            return []
        return [Send(ask.replica, self._encode(self._start_view_message()))]

    def _start_view_message(self) -> StartView:
        start = max(self._base, self.head - self.config.pipeline_max)
        entries = tuple(self.entries[start - self._base :])
        return StartView(self.view, self.head, self.commit, start, entries)

    # --- installing a view's log -------------------------------------------------------------

    def _begin_install(
        self, head: int, commit: int, suffix_start: int, entries: tuple[Entry, ...], source: int
    ) -> list[Effect]:
        """Make this journal the view's log: keep the agreeing prefix, cut what diverges,
        append the suffix; what is missing before the suffix is fetched by state transfer.

        When the suffix tells nothing of the journal below it (it starts past this head, or
        does not chain onto it), nothing is cut yet: the ops past what this replica knows is
        committed may be ops it acknowledged and a quorum committed, and until this install
        ends its votes still speak for its old log view, with whatever log it holds then. A
        vote with those ops cut could let a view change leave a committed op behind. So the
        journal is first compared with the view's log, fetched from ``source`` (see
        ``_on_verify``), and cut only where it differs: what differs from the view's log
        was never committed. A rejoining replica compares too, though it votes in no view
        change until it has installed one: the ops past its commit number may be committed
        ops whose other copies a fault destroyed, and a cut at its commit number would
        remove this copy before the view's log replaces it on disk.

        Bytes the log keeps past its end after a damaged record (``Log.has_stale``) are not
        cut with the journal unless the journal itself is cut (what chains onto a journal
        that differs from the view's log was never committed): they may hold the records
        that follow the damage, and the install's appends overwrite them in place. What is
        left of them is cut once the installed log is durable, before the new log view is
        saved (``_continue_install``). (A state installed as the log's base meanwhile
        replaces the old log's files, stale bytes included.)"""
        assert all(e.op == suffix_start + i for i, e in enumerate(entries))
        self._install = _Install(self.view, head, commit, entries, source)
        self._verify_from = None
        if self._syncing is not None:
            # A checkpoint is being installed as this log's base: what the journal holds
            # past it is judged once it is installed (``_on_base_installed``).
            return []
        verdict = self._journal_verdict(head, suffix_start, entries)
        if isinstance(verdict, list):
            return verdict
        assert verdict >= self.commit, "a committed op differs from the view's log"
        return self._cut_then_install(verdict)

    def _journal_verdict(
        self, head: int, suffix_start: int, entries: tuple[Entry, ...]
    ) -> int | list[Effect]:
        """Where this journal stops being the view's log, when the suffix tells; else the
        asks that compare it with the view's log from what is known committed on (or, with
        nothing past that to compare, the commit number)."""
        known = self._divergence(head, suffix_start, entries)
        if known is not None:
            return known
        floor = self._committed_floor()
        if self.head > floor and self._count > 1:
            fields = (("view", self.view), ("from", floor), ("head", self.head))
            return [Notice("replica.install_compares", fields), *self._compare_from(floor)]
        return self.commit

    def _cut_then_install(self, cut: int) -> list[Effect]:
        if cut < self.head:
            return self._truncate(cut)
        return self._continue_install()

    def _compare_from(self, op: int) -> list[Effect]:
        """Ask the install's source for the view's log from ``op`` on, to compare."""
        assert self._install is not None
        self._verify_from = op
        self._get_state_quiet_until = 0
        return self._get_state(self._install.source)

    def _committed_floor(self) -> int:
        """An op below which this journal is known committed history: its commit number, its
        base and its sealed checkpoint (a checkpoint is sealed only once committed)."""
        sealed = self.log.checkpoint
        floor = max(self.commit, self._base, 0 if sealed is None else sealed.position)
        return min(floor, self.head)

    def _on_verify(self, state: NewState) -> list[Effect]:
        """Compare the journal from ``_verify_from`` on with the view's log in ``state``;
        once the first op that differs is found, or the journal is found to agree up to
        its head (or up to the end of the view's log), cut there and install on."""
        install = self._install
        verify_from = self._verify_from
        assert install is not None and verify_from is not None
        if state.op_from != verify_from:
            return []  # the answer to an earlier ask
        verified = verify_from
        cut: int | None = None
        for entry in state.entries:
            if entry.op >= self.head:
                break
            if self.entry(entry.op).hash != entry.hash:
                cut = entry.op
                break
            verified = entry.op + 1
        if cut is None:
            if verified >= self.head:
                cut = self.head  # the whole journal is the view's log
            elif verified >= state.head:
                cut = verified  # the view's log ends here; past it nothing was committed
            else:
                return self._compare_from(verified)
        return self._verified(cut)

    def _verify_by_checkpoint(self, offer: CheckpointOffer) -> list[Effect]:
        """The install's source answered the comparison with its checkpoint state, at an op
        this journal holds (the source keeps no entries that far down): the state's chain
        hash is the view's log's hash before that op, so where this journal has the same
        hash there, everything below agrees, and the comparison goes on from the state."""
        install = self._install
        verify_from = self._verify_from
        assert install is not None and verify_from is not None
        if offer.op <= verify_from or offer.op - 1 < self._base:
            return []
        if self.entry(offer.op - 1).hash == offer.chain_hash:
            return self._compare_from(offer.op)
        # The journal differs somewhere below the state and the source keeps no entries
        # there to tell where: only what is known committed is kept.
        fields = (("op", offer.op), ("from", verify_from))
        return [Notice("replica.install_compare_blind", fields), *self._verified(verify_from)]

    def _verified(self, cut: int) -> list[Effect]:
        self._verify_from = None
        fields = (("view", self.view), ("cut", cut), ("head", self.head))
        return [Notice("replica.install_compared", fields), *self._cut_then_install(cut)]

    def _divergence(self, head: int, suffix_start: int, entries: tuple[Entry, ...]) -> int | None:
        """The first op of this journal that is not the view's log, or None when the suffix
        cannot tell: the first suffix entry's hash commits to the hash before it, so when it
        chains onto this journal, everything below ``suffix_start`` agrees; when it does not
        (or there is a gap, or no suffix), nothing past the committed prefix is known."""
        if not entries:
            return None
        if suffix_start > self.head:
            return None
        if suffix_start < self._base:  # the ops below this journal are committed: they agree
            entries = tuple(entry for entry in entries if entry.op >= self._base)
            suffix_start = self._base
            if not entries:
                return min(self.head, head)
        before = self._hash_before(suffix_start)
        if chain_hash(before, suffix_start, entries[0].body) != entries[0].hash:
            return None
        for entry in entries:
            if entry.op >= self.head:
                return self.head
            if self.entry(entry.op).hash != entry.hash:
                return entry.op
        return min(self.head, head)

    def _truncate(self, cut: int) -> list[Effect]:
        self._truncating = True
        for entry in self.entries[cut - self._base :]:
            self._forget_request(entry)
        del self.entries[cut - self._base :]
        return self._route(self.log.truncate(cut))

    def _continue_install(self) -> list[Effect]:
        install = self._install
        if install is None or self._truncating or self._syncing is not None:
            return []  # continued once the log's truncation or base install is durable
        if self._verify_from is not None:
            return []  # continued once the journal is compared with the view's log
        effects = self._extend(install.entries)
        if self.head < install.head:
            return [*effects, *self._get_state(install.source)]
        if self.log.durable < install.head:
            return effects  # wait for the installed log to be durable
        effects.extend(self._commit_to(min(install.commit, self.head)))
        if self._rejoining:
            # saved with the log view: the log is the view's now
            self._recovering = self._damage_only = False
        if self.log.has_stale and self._persisted_log_view != install.view:
            # Bytes past the installed log that recovery would read as records of the
            # view's log, were they to chain onto it: cut before the log view says so.
            return [*effects, *self._truncate(self.head)]
        if self.log_view != install.view or self._persisted_recovering != self._recovering:
            self.log_view = install.view
            return [*effects, *self._save_state()]
        if self._persisted_log_view != install.view:
            return effects
        self._install = None
        self._view_changes_unsettled = 0
        self._arm_view_change_timer()
        if self._rejoining:
            self._rejoining = False
            fields = (("view", self.view), ("head", self.head), ("commit", self.commit))
            effects.append(Notice("replica.recovered", fields))
        if self.is_primary:
            effects.extend(self._broadcast(self._start_view_message()))
            effects.extend(self._advance_commit())
            return effects
        return [*effects, *self._ack_current()]

    # --- helpers -----------------------------------------------------------------------------

    def _others(self) -> tuple[int, ...]:
        return self._other_replicas

    def _broadcast(self, message: ReplicaMessage) -> list[Effect]:
        others = self._others()
        if not others:
            return []  # a cluster of one: nothing to encode
        payload = self._encode(message)
        return [Send(replica, payload) for replica in others]

    def _encode(self, message: ReplicaMessage) -> bytes:
        return codec.encode_message(message)


def encode_owner_state(owner: OwnerState) -> bytes:
    damage_only = owner.recovering and owner.damage_only
    flags = (OWNER_RECOVERING if owner.recovering else 0) | (
        OWNER_DAMAGE_ONLY if damage_only else 0
    )
    named = owner.state
    op, size, digest = (0, 0, bytes(32)) if named is None else (named.op, named.size, named.digest)
    mark = owner.damage_mark if damage_only else 0
    return OWNER_STATE.pack(OWNER_MAGIC, owner.view, owner.log_view, flags, op, size, digest, mark)


def decode_owner_state(data: bytes) -> OwnerState:
    """What the superblock's owner state says (any of its versions)."""
    if len(data) == OWNER_STATE_V1.size:
        magic, view, log_view = OWNER_STATE_V1.unpack(data)
        assert magic == b"VSR1", "superblock holds another owner's state"
        return OwnerState(view, log_view)
    named, mark = None, 0
    if len(data) == OWNER_STATE_V2.size:
        magic, view, log_view, flags = OWNER_STATE_V2.unpack(data)
        assert magic == b"VSR2", "superblock holds another owner's state"
    elif len(data) == OWNER_STATE_V3.size:
        magic, view, log_view, flags, op, size, digest = OWNER_STATE_V3.unpack(data)
        assert magic == b"VSR3", "superblock holds another owner's state"
        named = NamedState(op, size, digest) if op else None
        flags &= ~OWNER_DAMAGE_ONLY  # no mark to judge a restart by: recover as before
    else:
        magic, view, log_view, flags, op, size, digest, mark = OWNER_STATE.unpack(data)
        assert magic == OWNER_MAGIC, "superblock holds another owner's state"
        named = NamedState(op, size, digest) if op else None
    recovering = bool(flags & OWNER_RECOVERING)
    damage_only = recovering and bool(flags & OWNER_DAMAGE_ONLY)
    return OwnerState(view, log_view, recovering, damage_only, named, mark if damage_only else 0)


@functools.lru_cache(maxsize=PREPARE_BODY_CACHE_MAX)
def decode_prepare_body(data: bytes) -> PrepareBody:
    """The prepare body in ``data``; an op's body is decoded when it is journaled, committed
    and applied, so recent ones are kept (a pure function of the bytes, so caching it
    changes nothing but the time it takes)."""
    reader = Reader(data)
    body: PrepareBody = PREPARE_BODY.decode(reader)
    reader.finish()
    return body
