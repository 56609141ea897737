"""The durable, hash-chained log: Craton's storage, as a pure machine.

Files on the ``Disk`` (layouts in docs/STORAGE.md):

- ``superblock``: the root of trust in redundant copies (``craton.core.superblock``);
- ``log/NNNNNNNNNN.seg``: segments of records (``craton.core.record``), appended in order;
- ``checkpoints``: the history of sealed checkpoints (``craton.core.seal``);
- ``state/NNNNNNNNNNNNNNNNNNNN.state``: the owner's state at the log's base, when a base
  was installed (``install_base``): the log then starts at that position, not at 0.

The owner calls ``start`` once, then ``append`` / ``read`` / ``checkpoint_now`` and hands
every disk completion to ``on_disk``. Each call returns outputs: effects for the driver
plus the owner-facing events ``Recovered``, ``Durable``, ``ReadResult`` and ``ReadFailed``.

Rules it keeps:
- One write batch is in flight at a time: appends that arrive meanwhile wait and go out
  together in the next batch (group commit inside the log). A batch is written and synced
  in one request (``DiskWrite`` with ``sync``); only after it completes does ``Durable``
  move (a replica's log also writes and syncs its witness first, in one request too). So a
  torn record can only be in
  the last batch of the last segment, and every earlier segment is sealed and synced.
- Every record names how far the log was durable when it was written (``durable_before``),
  so recovery knows which records were certainly acknowledged and never cuts those off.
- Recovery reads the log from the latest checkpoint on (a replica's log, which salvages,
  from its base: see ``Log``), checking header checksums and hash links throughout and
  body checksums and chain hashes from the checkpoint on; a torn tail is truncated (and the
  truncation synced) before the log opens; any other damage halts with the file, offset
  and position.
- Memory holds where each record is (8 bytes a record) from the index's start on: the
  latest checkpoint, for a log that does not salvage. A read below it finds the records
  again from the nearest sealed checkpoint below (``_Backfill``), each checkpoint naming
  the segment and offset where its record starts.
- A failed write or sync halts the log: after a failed fsync the file's state is unknown.
- Checkpoints are taken every ``checkpoint_interval`` durable records: the sealed entry is
  appended to the history and synced, then the superblock (which counts sealed entries)
  is rewritten and synced.
"""

from __future__ import annotations

import bisect
import enum
import hashlib
import re
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import attrs

from craton.core import record, superblock
from craton.core.checksum import checksum
from craton.core.log_index import SEGMENT_FOLDER as SEGMENT_FOLDER  # (public here too)
from craton.core.log_index import Backfill, LogIndex, Segment
from craton.core.log_index import segment_path as segment_path
from craton.core.record import GENESIS_HASH, HEADER_SIZE, RecordError
from craton.core.scan import (
    Clean,
    Corrupt,
    Salvaged,
    SegmentScan,
    Torn,
    salvage_tail,
    scan_segment,
    torn_or_damaged,
)
from craton.core.seal import ENTRY_SIZE, Checkpoint, Sealer, encode_entry, verify_seal
from craton.core.seam import (
    DiskCompletion,
    DiskList,
    DiskRead,
    DiskSync,
    DiskTruncate,
    DiskWrite,
    Effect,
    FileInfo,
    Halt,
    IoFailed,
    IoIds,
    ListDone,
    Notice,
    ReadDone,
)
from craton.core.superblock import Superblock

CHECKPOINTS_PATH = "checkpoints"
# A replica's log: how far the log was durable, written after each batch's sync, before the
# batch counts as durable (see ``_on_batch_synced``). Two slots of WITNESS_SLOT bytes, the
# newer sequence winning: checksum (16) | b"CRWT" | u64 sequence | u64 durable | u32 slot.
WITNESS_PATH = "durable"
WITNESS_SLOT = 64
_WITNESS = struct.Struct("<4sQQI")
WITNESS_MAGIC = b"CRWT"
SEGMENT_NAME = re.compile(r"^(\d{10})\.seg$")
STATE_NAME = re.compile(r"^(\d{20})\.state$")  # a state file: superblock.state_path
SEGMENT_SIZE_MAX_DEFAULT = 64 * 1024 * 1024
BATCH_SIZE_MAX_DEFAULT = 4 * 1024 * 1024
CHECKPOINT_INTERVAL_DEFAULT = 4096
PENDING_RECORDS_MAX_DEFAULT = 65536
SUPERBLOCK_READS = 3  # reads of the superblock merged before a damaged copy is believed
READ_RETRIES_MAX = 8  # reads fail or flip bits in transit: retry before believing damage
READ_RUN_BYTES = 1 << 20  # records read together, when they lie one after another

R = TypeVar("R", DiskRead, DiskWrite, DiskSync, DiskTruncate, DiskList)


def _decode_witness(data: bytes, slot: int) -> tuple[int, int] | None:
    """(sequence, durable) of a witness slot, or None when it is damaged or misplaced."""
    size = 16 + _WITNESS.size
    if len(data) < size or checksum(data[16:size]) != data[:16]:
        return None
    magic, sequence, durable, found = _WITNESS.unpack_from(data, 16)
    if magic != WITNESS_MAGIC or found != slot:
        return None
    return sequence, durable


def encode_witness(sequence: int, durable: int) -> bytes:
    """The bytes of the witness slot that ``sequence`` writes (slot ``sequence % 2``, at
    offset ``slot * WITNESS_SLOT``): the log was durable up to ``durable``."""
    body = _WITNESS.pack(WITNESS_MAGIC, sequence, durable, sequence % 2)
    return checksum(body) + body


def witness_mark(data: bytes) -> int | None:
    """How far the witness file's bytes say the log was durable: the newer valid slot's
    mark, or None when neither slot checks out (no witness, or both copies damaged)."""
    slots = [_decode_witness(data[slot * WITNESS_SLOT :], slot) for slot in range(2)]
    found = [slot for slot in slots if slot is not None]
    return max(found)[1] if found else None


def _describe(verdict: Torn | Corrupt) -> str:
    if isinstance(verdict, Torn):
        return f"offset {verdict.offset}: torn tail ({verdict.reason})"
    return f"offset {verdict.offset}: record {verdict.position} is damaged: {verdict.reason}"


@attrs.frozen
class LogConfig:
    seal_seed: bytes  # 32-byte Ed25519 seed of the data directory's signing key
    segment_size_max: int = SEGMENT_SIZE_MAX_DEFAULT
    batch_size_max: int = BATCH_SIZE_MAX_DEFAULT
    checkpoint_interval: int = CHECKPOINT_INTERVAL_DEFAULT  # durable records; 0: owner decides
    pending_records_max: int = PENDING_RECORDS_MAX_DEFAULT


# --- Owner-facing outputs ------------------------------------------------------------------


@attrs.frozen
class Recovered:
    """The log is open: ``head`` records, the last hashing to ``chain_hash``."""

    head: int
    chain_hash: bytes
    owner_state: bytes = b""
    formatted: bool = False  # the directory was blank and has just been formatted
    # salvage only: records from here on were damaged (or certified but missing) and cut;
    # some of them may have been durable and acknowledged, so the owner must get them back
    lost_from: int | None = None
    # salvage only: what was found past the damage (holes have no body), whether it reaches
    # the end of what was written, and how far the log was certified durable
    salvaged: tuple[Salvaged, ...] = ()
    salvage_complete: bool = False
    certified: int = 0
    # the log starts at ``base`` (records below it are not on this disk) with the owner's
    # state at that position, checked against its digest; None when it was lost (salvage
    # only: the log then starts over at 0 and ``lost_from`` is 0)
    base: int = 0
    base_state: bytes | None = None
    # the other state files on disk, (position, size) each, in position order: the owner's
    # checkpoint states, which it may restart from; it empties the ones it has no use for
    state_files: tuple[tuple[int, int], ...] = ()


@attrs.frozen
class Durable:
    """Every record below ``position`` is on stable storage."""

    position: int


@attrs.frozen
class Checkpointed:
    """A checkpoint covering the first ``position`` records is sealed and durable."""

    position: int


@attrs.frozen
class Truncated:
    """Every record at or after ``position`` is gone, durably."""

    position: int


@attrs.frozen
class BaseInstalled:
    """The log now starts at ``position``; the state installed with it is durable."""

    position: int


@attrs.frozen
class StateSaved:
    """The owner's state at ``position`` is durable in its state file (``save_state``)."""

    position: int


@attrs.frozen
class StateRead:
    """The bytes of the state file at ``position``, as read: nothing checks them here
    (whoever installs them checks them against their digest)."""

    tag: int
    position: int
    data: bytes


@attrs.frozen
class OwnerStateSaved:
    """The owner's state ``state`` is durable in the superblock."""

    state: bytes


@attrs.frozen
class ReadResult:
    tag: int
    position: int
    body: bytes
    hash: bytes = b""  # the record's chain hash, as its (checksummed) header states it


@attrs.frozen
class ReadFailed:
    tag: int
    position: int
    reason: str


LogOutput = (
    Effect
    | Recovered
    | Durable
    | Checkpointed
    | Truncated
    | OwnerStateSaved
    | BaseInstalled
    | StateSaved
    | StateRead
    | ReadResult
    | ReadFailed
)


class LogError(Exception):
    """The log cannot take this call now (not open, halted, or its queue is full)."""


class _Phase(enum.Enum):
    NEW = "new"
    RECOVERING = "recovering"
    OPEN = "open"
    HALTED = "halted"


class _Io(enum.Enum):
    """What an outstanding disk request is for."""

    SUPERBLOCK_READ = 1
    LIST_SEGMENTS = 2
    LIST_ROOT = 3
    LIST_STATES = 26
    WITNESS_READ = 27
    WITNESS_WRITE = 28  # written and synced in one request
    SEGMENT_READ = 4
    RECOVERY_TRUNCATE = 5
    RECOVERY_SYNC = 6
    BATCH_WRITE = 7  # written and synced in one request
    HISTORY_WRITE = 9
    HISTORY_SYNC = 10
    SUPERBLOCK_WRITE = 11
    SUPERBLOCK_SYNC = 12
    RECORD_READ = 13
    TRUNCATE_CUT = 14
    TRUNCATE_SYNC = 15
    BASE_STATE_READ = 16
    RELEASE = 20  # emptying a file no longer needed (old segments, superseded states)
    RELEASE_SYNC = 21
    STATE_WRITE = 22
    STATE_TRUNCATE = 23
    STATE_SYNC = 24
    STATE_READ = 25
    BASE_TAIL_WRITE = 30  # the records past a base, written before the base is named
    BASE_TAIL_SYNC = 31
    HISTORY_READ = 32  # sealed checkpoints, read to find where records below the index are
    BACKFILL_READ = 33  # records below the index, read to find their places again


@attrs.define
class _Batch:
    segment: Segment
    offset: int
    data: bytes
    end_position: int
    end_hash: bytes


@attrs.define
class _Recovery:
    """Bookkeeping while the log recovers."""

    copies: list[Superblock | None] = attrs.field(factory=lambda: [None] * superblock.COPIES)
    superblock_reads: int = 0
    superblock_blank: bool = True  # every read of the superblock file came back all zeros
    superblock_done: bool = False
    repairing: bool = False
    segment_files: tuple[FileInfo, ...] | None = None
    root_files: tuple[FileInfo, ...] | None = None
    state_files: tuple[FileInfo, ...] | None = None
    kept_states: tuple[tuple[int, int], ...] = ()
    witness_done: bool = False
    witness_reads: int = 0
    witness_failures: int = 0  # its own count: it is read while the superblock is
    witness_slots: list[tuple[int, int] | None] = attrs.field(factory=lambda: [None, None])
    superblock: Superblock | None = None
    numbers: list[int] = attrs.field(factory=list)
    sizes: dict[int, int] = attrs.field(factory=dict)
    index: int = 0  # which segment is being read
    start_offset: int = 0  # where the first segment read is read from (a checkpoint's record)
    attempts: int = 0
    seen_damage: bytes | None = None  # checksum of the last damaged read of this segment
    last_scan: SegmentScan | None = None
    pending_syncs: int = 0
    cut: int | None = None  # salvage: the first damaged position, where the log was cut
    salvaging: bool = False  # salvage: the superblock is rewritten before the cut
    salvaged: tuple[Salvaged, ...] = ()
    salvage_complete: bool = False
    base_state: bytes | None = None  # read and checked against the superblock's digest
    base_seen: bytes | None = None  # checksum of the last read of it that did not check


@attrs.define
class _StateWriting:
    """A state file being written: where its parts come from (each is taken once the one
    before it is written), how many bytes are written, and whether a base install follows."""

    position: int
    parts: Iterator[bytes]
    then_base: bool
    written: int = 0
    hash: Any = attrs.field(factory=hashlib.sha256)  # of the bytes written


@attrs.frozen
class _BaseInstall:
    position: int
    chain_hash: bytes
    segment: int  # the first segment of the log from the base on
    # the records that continue the log from the base: (record bytes, chain hash) each
    tail: tuple[tuple[bytes, bytes], ...] = ()
    # the base's state file as written: its SHA-256 and size, once it is
    state_digest: bytes = b""
    state_size: int = 0


@attrs.define
class _PendingRead:
    """A read of ``count`` records that lie one after another in one segment."""

    tag: int
    position: int
    path: str
    offset: int
    size: int
    count: int = 1
    attempts: int = 0


class Log:
    def __init__(self, config: LogConfig, io_ids: IoIds, *, salvage: bool = False) -> None:
        """``salvage``: for a replica of a cluster. Damage found by recovery cuts the log at
        the first damaged record (reported as ``Recovered.lost_from``) instead of halting,
        since the peers hold other copies; bodies are then verified from the first record
        on, not only from the latest checkpoint."""
        assert config.segment_size_max > HEADER_SIZE
        assert config.batch_size_max > 0 and config.checkpoint_interval >= 0
        self.config = config
        self._io_ids = io_ids
        self._sealer = Sealer(config.seal_seed)
        self._phase = _Phase.NEW
        self._waiting: dict[int, tuple[_Io, object]] = {}
        self._recovery = _Recovery()
        self._index = LogIndex()  # where the records are (``craton.core.log_index``)
        self.head = 0
        self.chain_hash = GENESIS_HASH
        self.durable = 0
        self._pending: list[tuple[int, bytes, bytes]] = []  # (position, bytes, hash)
        self._batch: _Batch | None = None
        self._superblock: Superblock | None = None
        self._superblock_writes = 0
        self._superblock_inflight: Superblock | None = None
        self._superblock_half = 0  # which half of the copies is being written
        self._checkpointing: Checkpoint | None = None  # sealed, history entry being written
        self._history_synced: Checkpoint | None = None  # history entry durable, superblock next
        self._wanted_owner_state: bytes | None = None
        self._truncating: int | None = None
        self._cuts: list[tuple[Segment, int]] = []
        # chain hashes of records from the latest checkpoint on (hash of record base + i)
        self._hashes: list[bytes] = []
        self._hashes_base = 0
        self._base_hash = GENESIS_HASH
        self.halt_reason: str | None = None
        self._formatted = False
        self.salvage = salvage
        self._stale: list[int] = []  # segments whose files hold bytes past the end of the log
        self.base = 0  # the first record of the log (see ``install_base``)
        self._base_segment = 0
        self._installing: _BaseInstall | None = None
        self._base_written = False  # the installing base's state file is durable
        # salvage only: the durable mark in the witness file (``WITNESS_PATH``), and the one
        # recovery found there (records below it were durable, and may have been acked)
        self._witnessed = 0
        self._witness_sequence = 0
        self._witness_claim = 0
        self._start_hash = GENESIS_HASH  # the chain hash before the base
        self._backfill: Backfill | None = None
        self._backfill_reads: list[tuple[int, int]] = []  # (tag, position) waiting for it

    # --- entry points ------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._phase is _Phase.OPEN

    @property
    def public_key(self) -> bytes:
        return self._sealer.public_key

    def sign(self, message: bytes) -> bytes:
        """Sign ``message`` with this data directory's key (see ``public_key``)."""
        return self._sealer.sign(message)

    @property
    def checkpoint(self) -> Checkpoint | None:
        return None if self._superblock is None else self._superblock.checkpoint

    def owns(self, io_id: int) -> bool:
        return io_id in self._waiting

    def start(self) -> list[LogOutput]:
        """Begin recovery: read the superblock and list the files."""
        assert self._phase is _Phase.NEW, "start is called once"
        self._phase = _Phase.RECOVERING
        return [
            self._read_superblock(),
            self._track(_Io.LIST_SEGMENTS, None, lambda io: DiskList(io, SEGMENT_FOLDER)),
            self._track(_Io.LIST_ROOT, None, lambda io: DiskList(io, "")),
            self._track(_Io.LIST_STATES, None, lambda io: DiskList(io, superblock.STATE_FOLDER)),
            self._read_witness(),
        ]

    def append(self, body: bytes, kind: int = 0) -> tuple[int, list[LogOutput]]:
        """Append ``body``; returns its position. ``Durable`` follows once it is synced."""
        if self._phase is not _Phase.OPEN:
            raise LogError(f"log is {self._phase.value}, not open")
        if len(self._pending) >= self.config.pending_records_max:
            raise LogError("log append queue is full")
        if self._installing is not None:
            raise LogError("log is installing a base")
        position = self.head
        data, own_hash = record.encode(
            position=position,
            prev_hash=self.chain_hash,
            body=body,
            durable_before=self.durable,
            kind=kind,
        )
        self._pending.append((position, data, own_hash))
        self._hashes.append(own_hash)
        self.head += 1
        self.chain_hash = own_hash
        return position, self._pump()

    def read(self, position: int, tag: int) -> list[LogOutput]:
        """Read the durable record at ``position``: a ``ReadResult`` or ``ReadFailed`` follows."""
        return self.read_run(position, tag, 1)[1]

    def read_run(self, position: int, tag: int, count_max: int) -> tuple[int, list[LogOutput]]:
        """Read durable records from ``position`` on, as many as lie one after another in
        its segment, up to ``count_max`` and about ``READ_RUN_BYTES`` (one at least; one
        below the index): returns how many, and the outputs. A ``ReadResult`` follows for
        each, in order, or a ``ReadFailed`` in place of the first that cannot be read (and
        none for the ones after it)."""
        assert count_max >= 1
        if self._phase is not _Phase.OPEN:
            return 1, [ReadFailed(tag, position, f"log is {self._phase.value}")]
        if not self.base <= position < self.durable:
            return 1, [ReadFailed(tag, position, f"position {position} is not durable here")]
        if position < self._index.start:
            return 1, self._read_below_index(tag, position)
        count_max = min(count_max, self.durable - position)
        segment, offset, size, taken = self._index.run(position, count_max, READ_RUN_BYTES)
        pending = _PendingRead(tag, position, segment.path, offset, size, taken)
        return taken, [self._read_record(pending)]

    @property
    def can_install_base(self) -> bool:
        """Whether ``install_base`` may be called now: open, and nothing being written."""
        return (
            self._phase is _Phase.OPEN
            and self._truncating is None
            and self._batch is None
            and not self._pending
            and self._checkpointing is None
            and self._history_synced is None
            and self._superblock_inflight is None
            and self._wanted_owner_state is None
            and self._installing is None
            and self._backfill is None
        )

    def install_base(
        self,
        position: int,
        chain_hash: bytes,
        state: Iterable[bytes],
        tail: Sequence[bytes] = (),
    ) -> list[LogOutput]:
        """Make the log start at ``position``, past its head: ``state`` is the owner's state
        there (its bytes in parts, written one after another) and ``chain_hash`` the hash
        of the record before it (the owner has checked both against another copy of the
        history). ``tail`` holds the bodies of records the
        owner already has from ``position`` on (a repairing replica's intact records past a
        hole): the new log starts with them. ``BaseInstalled`` follows once durable.

        The state file is written and synced first, then the tail's records into the new
        log's first segment, then the superblock names the state with its digest; a crash
        before that leaves the old log, a crash after it the new one, tail included (so
        records this disk held past the base are never only in memory). The new log starts
        in a segment past every existing one, and the old segments and state file are
        emptied after the switch (and again by recovery if a crash stopped that), so the
        switch itself is the single superblock update."""
        if not self.can_install_base:
            raise LogError("log is not open, or it has writes in flight")
        if position <= self.head:
            raise LogError(f"cannot install a base at {position}: the log reaches {self.head}")
        index = self._index
        known = [segment.number for segment in index.segments] + self._stale + [*index.unindexed]
        segment = max([*known, self._base_segment - 1]) + 1
        records: list[tuple[bytes, bytes]] = []
        prev = chain_hash
        for at, body in enumerate(tail, start=position):
            # they claim nothing durable past the base: the superblock says what was
            data, prev = record.encode(
                position=at, prev_hash=prev, body=body, durable_before=position
            )
            records.append((data, prev))
        self._installing = _BaseInstall(position, chain_hash, segment, tuple(records))
        return [self._write_state(position, iter(state), then_base=True)]

    def _finish_base(self, fresh: Superblock) -> list[LogOutput]:
        install = self._installing
        assert install is not None and fresh.base_position == install.position
        self._installing = None
        self._base_written = False
        released = [segment_path(s.number) for s in self._index.segments if s.size]
        released += [segment_path(number) for number in self._stale]
        if self.base:
            released.append(superblock.state_path(self.base))
        released += [segment_path(number) for number in self._index.unindexed]
        self._stale = []
        self.base = install.position
        self.chain_hash = self._base_hash = self._start_hash = install.chain_hash
        self._index.reset(install.position, (install.segment, 0), install.chain_hash, {})
        self._hashes = []
        self._hashes_base = install.position
        self._base_segment = install.segment
        if install.tail:
            segment = Segment(install.segment, install.position)
            for data, own_hash in install.tail:
                segment.offsets.append(segment.size)
                segment.size += len(data)
                self._hashes.append(own_hash)
            self._index.add(segment)
            self.chain_hash = install.tail[-1][1]
        self.head = self.durable = install.position + len(install.tail)
        fields = (("position", install.position), ("records", len(install.tail)))
        notice = Notice("log.base_installed", fields)
        releases = [self._release(_Io.RELEASE, path) for path in sorted(set(released))]
        return [notice, BaseInstalled(install.position), *releases]

    # --- state files: the owner's checkpoint states ------------------------------------------

    def save_state(self, position: int, state: Iterator[bytes]) -> list[LogOutput]:
        """Write the owner's state at ``position`` to its state file and sync it;
        ``StateSaved`` follows. The state's bytes come in parts, each taken from ``state``
        once the one before it is written, so that the owner may produce them as they go.
        The base's own state file is never rewritten."""
        if self._phase is not _Phase.OPEN:
            raise LogError(f"log is {self._phase.value}, not open")
        if position == self.base or (self._installing and self._installing.position == position):
            raise LogError(f"the state at {position} is the log's base")
        return [self._write_state(position, state, then_base=False)]

    def _write_state(self, position: int, parts: Iterator[bytes], *, then_base: bool) -> DiskWrite:
        """Write a state file, its parts one after another, then trim it (a longer one may
        be left from an interrupted write) and sync it; then the base install goes on, or
        ``StateSaved`` follows."""
        writing = _StateWriting(position, parts, then_base)
        return self._write_state_part(writing, next(parts, b""))

    def _write_state_part(self, writing: _StateWriting, data: bytes) -> DiskWrite:
        path = superblock.state_path(writing.position)
        offset = writing.written
        writing.written += len(data)
        writing.hash.update(data)
        return self._track(_Io.STATE_WRITE, writing, lambda io: DiskWrite(io, path, offset, data))

    def _on_state_step(self, purpose: _Io, writing: _StateWriting) -> list[LogOutput]:
        position, size, then_base = writing.position, writing.written, writing.then_base
        path = superblock.state_path(position)
        if purpose is _Io.STATE_WRITE:
            part = next(writing.parts, None)
            if part is not None:
                return [self._write_state_part(writing, part)]
            cut = self._track(_Io.STATE_TRUNCATE, writing, lambda io: DiskTruncate(io, path, size))
            return [cut]
        if purpose is _Io.STATE_TRUNCATE:
            return [self._track(_Io.STATE_SYNC, writing, lambda io: DiskSync(io, path))]
        if not then_base:
            return [StateSaved(position)]
        install = self._installing
        if install is not None:
            digest = writing.hash.digest()
            install = self._installing = attrs.evolve(
                install, state_digest=digest, state_size=writing.written
            )
        if install is not None and install.tail:
            payload = b"".join(data for data, _ in install.tail)
            path = segment_path(install.segment)
            write = self._track(
                _Io.BASE_TAIL_WRITE, path, lambda io: DiskWrite(io, path, 0, payload)
            )
            return [write]
        self._base_written = True
        return self._write_superblock()

    def read_state(self, position: int, size: int, tag: int, offset: int = 0) -> list[LogOutput]:
        """Read ``size`` bytes from ``offset`` of the state file at ``position``: ``StateRead``
        (unchecked) or ``ReadFailed`` follows."""
        if self._phase is not _Phase.OPEN:
            return [ReadFailed(tag, position, f"log is {self._phase.value}")]
        path = superblock.state_path(position)
        context = (tag, position)
        read = lambda io: DiskRead(io, path, offset, size)  # noqa: E731
        return [self._track(_Io.STATE_READ, context, read)]

    def release_state(self, position: int) -> list[LogOutput]:
        """Empty the state file at ``position`` (a later state superseded it)."""
        if self._phase is not _Phase.OPEN or position == self.base:
            return []
        if self._installing is not None and self._installing.position == position:
            return []
        return [self._release(_Io.RELEASE, superblock.state_path(position))]

    def _release(self, purpose: _Io, path: str) -> DiskTruncate:
        return self._track(purpose, path, lambda io: DiskTruncate(io, path, 0))

    def checkpoint_now(self, position: int | None = None) -> list[LogOutput]:
        """Seal a checkpoint covering the first ``position`` records (default: all durable
        ones), e.g. at a replica's commit number or before a clean shutdown.

        ``Checkpointed`` follows; at once when the latest checkpoint is already there, and
        after the one in flight when one is being sealed (it then covers what it covers)."""
        if self._phase is not _Phase.OPEN or self._truncating is not None or self._installing:
            raise LogError(f"log is {self._phase.value}, or a truncation is under way")
        target = self.durable if position is None else position
        current = self.checkpoint
        floor = 0 if current is None else current.position
        if not floor <= target <= self.durable:
            raise LogError(f"cannot seal {target}: sealed {floor}, durable {self.durable}")
        if self._checkpointing is not None:
            return []
        if current is not None and current.position == target:
            return [Checkpointed(current.position)]
        return self._begin_checkpoint(target)

    def on_disk(self, completion: DiskCompletion) -> list[LogOutput]:
        """Hand over the completion of a request this log made."""
        purpose, context = self._waiting.pop(completion.io_id)
        if self._phase is _Phase.HALTED:
            return []
        if isinstance(completion, IoFailed) and purpose not in (
            _Io.SEGMENT_READ,
            _Io.RECORD_READ,
            _Io.SUPERBLOCK_READ,
            _Io.BASE_STATE_READ,
            _Io.STATE_READ,
            _Io.WITNESS_READ,
            _Io.HISTORY_READ,
            _Io.BACKFILL_READ,
        ):
            return self._halt(f"disk {purpose.name.lower()} failed: {completion.detail}")
        match purpose:
            case (
                _Io.SUPERBLOCK_READ
                | _Io.LIST_SEGMENTS
                | _Io.LIST_ROOT
                | _Io.LIST_STATES
                | _Io.WITNESS_READ
            ):
                return self._on_recovery_listing(purpose, completion)
            case _Io.SEGMENT_READ:
                return self._on_segment_read(completion)
            case _Io.RECOVERY_TRUNCATE | _Io.RECOVERY_SYNC:
                return self._on_recovery_step(purpose, context)
            case _Io.BATCH_WRITE:
                assert self._batch is not None
                return self._on_batch_synced()
            case _Io.WITNESS_WRITE:
                assert isinstance(context, tuple)
                return self._on_witness_synced(*context)
            case _Io.HISTORY_WRITE:
                return [
                    self._track(_Io.HISTORY_SYNC, None, lambda io: DiskSync(io, CHECKPOINTS_PATH))
                ]
            case _Io.HISTORY_SYNC:
                self._history_synced = self._checkpointing
                return self._write_superblock()
            case _Io.TRUNCATE_CUT | _Io.TRUNCATE_SYNC:
                return self._on_truncate_cut(purpose)
            case _Io.SUPERBLOCK_WRITE:
                return self._on_superblock_written(context)
            case _Io.SUPERBLOCK_SYNC:
                return self._on_superblock_synced(context)
            case _Io.RECORD_READ:
                assert isinstance(context, _PendingRead)
                return self._on_record_read(context, completion)
            case _Io.BASE_STATE_READ:
                return self._on_base_state_read(completion)
            case _Io.RELEASE:
                assert isinstance(context, str)
                return [self._track(_Io.RELEASE_SYNC, None, lambda io: DiskSync(io, context))]
            case _Io.RELEASE_SYNC:
                return []
            case _Io.STATE_WRITE | _Io.STATE_TRUNCATE | _Io.STATE_SYNC:
                assert isinstance(context, _StateWriting)
                return self._on_state_step(purpose, context)
            case _Io.BASE_TAIL_WRITE:
                assert isinstance(context, str)
                return [self._track(_Io.BASE_TAIL_SYNC, None, lambda io: DiskSync(io, context))]
            case _Io.BASE_TAIL_SYNC:
                self._base_written = True
                return self._write_superblock()
            case _Io.STATE_READ:
                assert isinstance(context, tuple)
                tag, position = context
                if isinstance(completion, ReadDone):
                    return [StateRead(tag, position, completion.data)]
                assert isinstance(completion, IoFailed)
                return [ReadFailed(tag, position, completion.detail)]
            case _Io.HISTORY_READ:
                return self._on_history_read(completion)
            case _Io.BACKFILL_READ:
                return self._on_backfill_read(completion)
        raise AssertionError(f"unhandled purpose {purpose}")

    def invariants(self) -> None:
        assert 0 <= self.durable <= self.head
        assert self._phase is _Phase.OPEN or not self._pending or self._phase is _Phase.HALTED
        cutting = self._truncating is not None
        if self._batch is not None:
            assert self.durable < self._batch.end_position and (
                cutting or self._batch.end_position <= self.head
            )
        positions = [position for position, _, _ in self._pending]
        assert positions == list(range(self.head - len(positions), self.head))
        assert len(self._pending) <= self.config.pending_records_max
        assert self._hashes_base >= self.base
        assert self._phase is not _Phase.OPEN or self.base <= self.durable
        assert self._index.start == self.base or not self.salvage
        first = self._index.check(self.base)
        if self._phase is _Phase.OPEN and not cutting:
            assert first + len(self._pending) == self.head
            assert self._hashes_base + len(self._hashes) == self.head
        checkpoint = self.checkpoint
        if checkpoint is not None:
            assert checkpoint.position <= self.durable or self._phase is not _Phase.OPEN

    # --- recovery ----------------------------------------------------------------------------

    def _on_recovery_listing(self, purpose: _Io, completion: DiskCompletion) -> list[LogOutput]:
        state = self._recovery
        match purpose:
            case _Io.SUPERBLOCK_READ:
                if isinstance(completion, IoFailed):
                    return self._retry_superblock(completion.detail)
                assert isinstance(completion, ReadDone)
                more = self._merge_superblock(completion.data)
                if more:
                    return more
            case _Io.LIST_SEGMENTS:
                assert isinstance(completion, ListDone)
                state.segment_files = completion.files
            case _Io.LIST_ROOT:
                assert isinstance(completion, ListDone)
                state.root_files = completion.files
            case _Io.LIST_STATES:
                assert isinstance(completion, ListDone)
                state.state_files = completion.files
            case _Io.WITNESS_READ:
                more = self._on_witness_read(completion)
                if more:
                    return more
            case _:
                raise AssertionError(purpose)
        if not state.superblock_done or state.segment_files is None:
            return []
        if state.root_files is None or state.state_files is None or not state.witness_done:
            return []
        return self._plan_recovery()

    # --- the witness: a replica's durable mark, kept apart from the segments ---------------

    def _read_witness(self) -> DiskRead:
        size = 2 * WITNESS_SLOT
        return self._track(_Io.WITNESS_READ, None, lambda io: DiskRead(io, WITNESS_PATH, 0, size))

    def _on_witness_read(self, completion: DiskCompletion) -> list[LogOutput]:
        """The newest valid slot's mark. A read that keeps failing, or two damaged slots,
        leave no mark: recovery then knows only what the superblock and records say."""
        state = self._recovery
        if isinstance(completion, IoFailed):
            state.witness_failures += 1
            if state.witness_failures <= READ_RETRIES_MAX:
                return [self._read_witness()]
            state.witness_done = True
            return [Notice("log.witness_unreadable", (("detail", completion.detail),))]
        assert isinstance(completion, ReadDone)
        state.witness_reads += 1
        for slot in range(2):  # a slot that checks out on any read is kept (as the superblock)
            found = _decode_witness(completion.data[slot * WITNESS_SLOT :], slot)
            if state.witness_slots[slot] is None:
                state.witness_slots[slot] = found
        missing = None in state.witness_slots and any(completion.data)
        if missing and state.witness_reads < SUPERBLOCK_READS:
            return [self._read_witness()]
        state.witness_done = True
        best = max((found for found in state.witness_slots if found is not None), default=(0, 0))
        self._witness_sequence, self._witness_claim = best
        self._witnessed = self._witness_claim
        return []

    def _write_witness(self, durable: int, then: str) -> DiskWrite:
        self._witness_sequence += 1
        slot = self._witness_sequence % 2
        data = encode_witness(self._witness_sequence, durable)
        context = (durable, then)
        offset = slot * WITNESS_SLOT
        return self._track(
            _Io.WITNESS_WRITE,
            context,
            lambda io: DiskWrite(io, WITNESS_PATH, offset, data, sync=True),
        )

    def _on_witness_synced(self, durable: int, then: str) -> list[LogOutput]:
        self._witnessed = durable
        if then == "batch":
            return self._batch_landed()
        return self._truncate_next()

    def _read_superblock(self) -> DiskRead:
        size = superblock.COPIES * superblock.COPY_SIZE
        return self._track(
            _Io.SUPERBLOCK_READ, None, lambda io: DiskRead(io, superblock.PATH, 0, size)
        )

    def _retry_superblock(self, detail: str) -> list[LogOutput]:
        state = self._recovery
        state.attempts += 1
        if state.attempts > READ_RETRIES_MAX:
            return self._halt(f"cannot read file '{superblock.PATH}': {detail}")
        return [self._read_superblock()]

    def _merge_superblock(self, data: bytes) -> list[LogOutput]:
        """Keep every copy that checks out on any read (a flip in transit cannot make a copy
        valid, only invalid); read again while some slot has not checked out yet."""
        state = self._recovery
        state.superblock_reads += 1
        state.superblock_blank = state.superblock_blank and not any(data)
        for slot, copy in enumerate(superblock.decode_all(data)):
            if state.copies[slot] is None:
                state.copies[slot] = copy
        missing = any(copy is None for copy in state.copies)
        if missing and not state.superblock_blank and state.superblock_reads < SUPERBLOCK_READS:
            return [self._read_superblock()]
        state.attempts = 0
        state.superblock_done = True
        return []

    def _plan_recovery(self) -> list[LogOutput]:
        state = self._recovery
        assert state.segment_files is not None
        for info in state.segment_files:
            matched = SEGMENT_NAME.match(info.name)
            if matched:
                state.numbers.append(int(matched.group(1)))
                state.sizes[int(matched.group(1))] = info.size
        state.numbers.sort()
        chosen = superblock.newest(state.copies)
        if chosen is None:
            history = self._recovery_sizes().get(CHECKPOINTS_PATH, 0)
            if (history or any(state.sizes.values())) and self.salvage:
                # Every copy is damaged: nothing on this disk can be trusted. Start over as
                # a blank directory (stale records are cut by the next recovery's scan).
                state.cut = 0
                return [Notice("log.superblock_lost"), *self._format()]
            if history or any(state.sizes.values()):
                return self._halt(
                    "file 'superblock': no valid copy among "
                    f"{superblock.COPIES}, but the directory holds data"
                )
            # Blank, or a format that a crash interrupted before its first sync completed
            # (nothing else is ever written before that): format it (again).
            return self._format()
        problem = self._check_superblock(chosen, state.numbers)
        if problem is not None:
            return self._halt(problem)
        state.superblock = chosen
        self._superblock = chosen
        self._adopt_base(chosen)
        if any(copy != chosen for copy in state.copies):
            # A torn update or a damaged copy: rewrite every copy before anything else acts
            # on the chosen state, so no later read can see an older or newer disagreeing one.
            state.repairing = True
            repaired = attrs.evolve(chosen, sequence=chosen.sequence + 1)
            notice = Notice("log.superblock_repaired", (("sequence", repaired.sequence),))
            return [notice, *self._write_superblock(repaired)]
        return self._read_segments()

    def _adopt_base(self, chosen: Superblock) -> None:
        """Recovery starts at the base (record 0 unless one was installed), or, for a log
        that does not salvage, at the latest checkpoint past it: hashes are kept and bodies
        verified from there (a salvaging log reads and checks headers from its base on, so
        that damage anywhere is found and repaired from its peers)."""
        state = self._recovery
        self.base = chosen.base_position
        self._base_segment = chosen.base_segment
        base_hash = chosen.base_hash if self.base else GENESIS_HASH
        self.head = self._hashes_base = self.base
        self.chain_hash = self._base_hash = self._start_hash = base_hash
        self._index.reset(self.base, (self._base_segment, 0), base_hash, {})
        state.index, state.start_offset = self._base_segment, 0
        checkpoint = chosen.checkpoint
        if checkpoint is None or self.salvage or checkpoint.position <= self.base:
            return
        self._hashes_base = checkpoint.position
        self._base_hash = checkpoint.chain_hash
        number, offset = checkpoint.segment, checkpoint.offset
        if not (number in state.sizes and offset <= state.sizes[number]):
            return  # the scan from the base finds what is missing, and says so
        self.head, self.chain_hash = checkpoint.position, checkpoint.chain_hash
        below = {n: state.sizes[n] for n in range(self._base_segment, number)}
        self._index.reset(checkpoint.position, (number, offset), checkpoint.chain_hash, below)
        state.index, state.start_offset = number, offset

    def _read_segments(self) -> list[LogOutput]:
        state = self._recovery
        if self.base and state.base_state is None:
            return [self._read_base_state()]
        if state.index >= len(state.numbers):
            return self._finish_recovery()
        return [self._read_segment()]

    def _read_base_state(self) -> DiskRead:
        chosen = self._recovery.superblock
        assert chosen is not None
        path = superblock.state_path(self.base)
        size = chosen.base_size
        return self._track(_Io.BASE_STATE_READ, None, lambda io: DiskRead(io, path, 0, size))

    def _on_base_state_read(self, completion: DiskCompletion) -> list[LogOutput]:
        state = self._recovery
        chosen = state.superblock
        assert chosen is not None
        path = superblock.state_path(self.base)
        if isinstance(completion, IoFailed):
            problem, fingerprint = f"read failed: {completion.detail}", None
        else:
            assert isinstance(completion, ReadDone)
            data = completion.data
            if (
                len(data) == chosen.base_size
                and hashlib.sha256(data).digest() == chosen.base_digest
            ):
                state.base_state = data
                state.attempts = 0
                return self._read_segments()
            problem = f"{len(data)} bytes that do not match the superblock's digest"
            fingerprint = checksum(data)
        believed = fingerprint is not None and fingerprint == state.base_seen
        state.base_seen = fingerprint
        state.attempts += 1
        if state.attempts <= READ_RETRIES_MAX and not believed:
            notice = Notice("log.recovery_reread", (("problem", f"file '{path}': {problem}"),))
            return [notice, self._read_base_state()]
        if not self.salvage or not believed:
            # A single node has no other copy; and a file that cannot be read at all may
            # read again later: its intact records are not given up for that.
            return self._halt(f"file '{path}': the log's base state is lost: {problem}")
        return self._lose_base(f"file '{path}': {problem}")

    def _lose_base(self, problem: str) -> list[LogOutput]:
        """The state the log starts from is damaged: nothing on this disk can rebuild the
        owner's state, so the log starts over, empty, past every segment it had, and
        reports everything as lost (the peers hold it)."""
        state = self._recovery
        chosen = state.superblock
        assert chosen is not None
        fresh = attrs.evolve(
            chosen,
            sequence=chosen.sequence + 1,
            durable_before=max(chosen.durable_before, chosen.base_position),
            base_position=0,
            base_hash=superblock.NO_HASH,
            base_segment=len(state.numbers),
            base_digest=superblock.NO_HASH,
            base_size=0,
        )
        self._adopt_base(fresh)
        state.superblock = fresh
        state.cut = 0
        state.repairing = True
        notice = Notice("log.base_state_lost", (("problem", problem),))
        return [notice, *self._write_superblock(fresh)]

    def _recovery_sizes(self) -> dict[str, int]:
        files = self._recovery.root_files or ()
        return {info.name: info.size for info in files}

    def _check_superblock(self, chosen: Superblock, numbers: list[int]) -> str | None:
        if chosen.public_key != self._sealer.public_key:
            return "file 'superblock': sealed by a different signing key than the one configured"
        checkpoint = chosen.checkpoint
        if checkpoint is not None and not verify_seal(chosen.public_key, checkpoint):
            return "file 'superblock': the latest checkpoint's signature does not verify"
        if numbers != list(range(len(numbers))):
            return f"folder '{SEGMENT_FOLDER}': segments are not numbered 0..n-1: {numbers}"
        if chosen.base_segment > len(numbers):
            return (
                f"folder '{SEGMENT_FOLDER}': the log's base is segment {chosen.base_segment}, "
                f"but only {len(numbers)} segments exist"
            )
        return None

    def _format(self) -> list[LogOutput]:
        """A new, empty data directory: write the first superblock, then open."""
        fresh = Superblock(1, self._sealer.public_key, 0, 0, None)
        self._formatted = True
        return [Notice("log.formatted"), *self._write_superblock(fresh)]

    def _read_segment(self) -> DiskRead:
        state = self._recovery
        number = state.numbers[state.index]
        offset = state.start_offset
        size = state.sizes[number] - offset
        return self._track(
            _Io.SEGMENT_READ, number, lambda io: DiskRead(io, segment_path(number), offset, size)
        )

    def _on_segment_read(self, completion: DiskCompletion) -> list[LogOutput]:
        state = self._recovery
        assert state.superblock is not None
        number = state.numbers[state.index]
        path = segment_path(number)
        if isinstance(completion, IoFailed):
            return self._retry_segment(f"file '{path}': read failed: {completion.detail}")
        assert isinstance(completion, ReadDone)
        if len(completion.data) != state.sizes[number] - state.start_offset:
            return self._retry_segment(f"file '{path}': short read during recovery")
        checkpoint = state.superblock.checkpoint
        first = self.head
        scan = scan_segment(
            completion.data,
            base_offset=state.start_offset,
            first_position=first,
            prev_hash=self.chain_hash,
            verify_from=self._hashes_base,
            certified=self._certified(state.superblock),
            may_tear=state.index == len(state.numbers) - 1,
            sealed=None if checkpoint is None else {checkpoint.position - 1: checkpoint.chain_hash},
        )
        verdict = scan.verdict
        if (
            not isinstance(verdict, Clean)
            and (fingerprint := checksum(completion.data)) != state.seen_damage
        ):
            # Damage is believed only when two reads in a row return the very same bytes: a
            # bit flipped in transit must neither halt the log nor cut acknowledged records.
            state.seen_damage = fingerprint
            return self._retry_segment(f"file '{path}': {_describe(verdict)}")
        if isinstance(verdict, Torn):
            verdict = scan.verdict = torn_or_damaged(completion.data, verdict, scan.next_position)
        if isinstance(verdict, Torn) and verdict.whole and self.salvage:
            # It may have been synced and acknowledged: repaired from the peers, not cut.
            reason = f"{verdict.reason} in a whole record: damage, not a torn write"
            verdict = scan.verdict = Corrupt(verdict.offset, scan.next_position, reason)
        if isinstance(verdict, Corrupt) and not self.salvage:
            return self._halt(f"file '{path}' {_describe(verdict)}")
        state.seen_damage = None
        state.attempts = 0
        state.start_offset = 0
        segment = Segment(number, first, scan.end, scan.offsets)
        self._index.add(segment)
        self._hashes.extend(scan.hashes)
        self.head = scan.next_position
        self.chain_hash = scan.last_hash
        state.last_scan = scan
        state.index += 1
        if isinstance(verdict, Corrupt):
            state.cut = verdict.position
            tail = salvage_tail(completion.data, at=verdict.offset, position=verdict.position)
            later = any(state.sizes[n] for n in state.numbers[state.index :])
            state.salvaged = tail.records
            state.salvage_complete = tail.complete and not later
            fields = (
                ("file", path),
                ("offset", verdict.offset),
                ("record", verdict.position),
                ("certified", self._certified(state.superblock)),
                ("where", _describe(verdict)),
            )
            notice = Notice("log.damage_cut", fields)
            return [notice, *self._finish_recovery()]
        if state.index < len(state.numbers):
            return [self._read_segment()]
        return self._finish_recovery()

    def _records_missing(self, certified: int) -> Notice:
        """Where a replica's log ends short of what it certified durable: the records from
        there on were acknowledged and are gone (a cut or lost write), to be repaired."""
        if self._index.segments:
            last = self._index.segments[-1]
            where = (("file", last.path), ("offset", last.size))
        else:
            where = (("file", SEGMENT_FOLDER), ("offset", 0))
        fields = (*where, ("from_record", self.head), ("certified", certified))
        return Notice("log.records_missing", fields)

    def _certified(self, chosen: Superblock) -> int:
        checkpoint = 0 if chosen.checkpoint is None else chosen.checkpoint.position
        return max(chosen.durable_before, checkpoint, self._witness_claim)

    def _retry_segment(self, problem: str) -> list[LogOutput]:
        """Reads can fail or flip bits in transit: only damage that persists is real."""
        state = self._recovery
        state.attempts += 1
        if state.attempts > READ_RETRIES_MAX:
            return self._halt(problem)
        return [Notice("log.recovery_reread", (("problem", problem),)), self._read_segment()]

    def _finish_recovery(self) -> list[LogOutput]:
        """Cut a torn tail and unsealed history, sync what was recovered, then open."""
        state = self._recovery
        chosen = state.superblock
        assert chosen is not None and state.root_files is not None
        certified = self._certified(chosen)
        outputs: list[LogOutput] = []
        if self.head < certified and self.salvage:
            if state.cut is None or state.cut > self.head:  # said once, not on re-entry
                outputs.append(self._records_missing(certified))
            state.cut = self.head if state.cut is None else min(state.cut, self.head)
        elif self.head < certified:
            return self._halt(
                f"folder '{SEGMENT_FOLDER}': the log ends at record {self.head} but records "
                f"below {certified} were certified durable"
            )
        if state.cut is not None and not self._formatted:
            fresh = self._salvage_superblock(chosen, state.cut)
            if fresh is not None:
                state.salvaging = True
                return [*outputs, *self._write_superblock(fresh)]
        scan = state.last_scan
        if scan is not None and isinstance(scan.verdict, Corrupt):
            outputs.extend(self._salvage_cuts(state, scan))
        elif scan is not None and isinstance(scan.verdict, Torn):
            segment = self._index.segments[-1]
            torn = scan.verdict
            cut = state.sizes[segment.number] - torn.offset
            outputs.append(
                Notice(
                    "log.torn_tail_truncated",
                    (
                        ("file", segment.path),
                        ("offset", torn.offset),
                        ("bytes", cut),
                        ("reason", torn.reason),
                    ),
                )
            )
            outputs.append(
                self._track(
                    _Io.RECOVERY_TRUNCATE,
                    segment.path,
                    lambda io: DiskTruncate(io, segment.path, torn.offset),
                )
            )
        else:
            assert scan is None or isinstance(scan.verdict, Clean)
            if self._index.segments:
                outputs.append(self._sync_for_recovery(self._index.segments[-1].path))
        for number in state.numbers[: self._base_segment]:
            if state.sizes[number]:  # left behind by a base install a crash interrupted
                outputs.append(self._release(_Io.RECOVERY_TRUNCATE, segment_path(number)))
        base_state = superblock.state_path(self.base) if self.base else None
        kept: list[tuple[int, int]] = []
        for info in state.state_files or ():
            path = f"{superblock.STATE_FOLDER}/{info.name}"
            matched = STATE_NAME.match(info.name)
            if not info.size or path == base_state:
                continue
            if matched is None or int(matched.group(1)) <= self.base:
                outputs.append(self._release(_Io.RECOVERY_TRUNCATE, path))  # of no use
            else:  # the owner's to judge (``Recovered.state_files``)
                kept.append((int(matched.group(1)), info.size))
        state.kept_states = tuple(sorted(kept))
        sizes = {info.name: info.size for info in state.root_files}
        history_size = chosen.checkpoint_count * ENTRY_SIZE
        found = sizes.get(CHECKPOINTS_PATH, 0)
        if found < history_size and self.salvage:
            # A write of the history that the disk acknowledged but lost: this replica's
            # history of seals is gone (its peers keep theirs). It starts a new one; the
            # records the checkpoint certified stay certified (``durable_before``).
            fresh = attrs.evolve(
                chosen, sequence=chosen.sequence + 1, checkpoint_count=0, checkpoint=None
            )
            state.superblock = fresh
            state.salvaging = True
            notice = Notice("log.history_lost", (("found", found), ("expected", history_size)))
            return [notice, *self._write_superblock(fresh)]
        if found < history_size:
            return self._halt(
                f"file '{CHECKPOINTS_PATH}': holds {found} bytes, but "
                f"{chosen.checkpoint_count} sealed entries need {history_size}"
            )
        if found > history_size:
            outputs.append(
                self._track(
                    _Io.RECOVERY_TRUNCATE,
                    CHECKPOINTS_PATH,
                    lambda io: DiskTruncate(io, CHECKPOINTS_PATH, history_size),
                )
            )
        if not any(isinstance(output, (DiskTruncate, DiskSync)) for output in outputs):
            return [*outputs, *self._open()]
        state.pending_syncs = sum(isinstance(o, (DiskTruncate, DiskSync)) for o in outputs)
        return outputs

    def _sync_for_recovery(self, path: str) -> DiskSync:
        return self._track(_Io.RECOVERY_SYNC, path, lambda io: DiskSync(io, path))

    def _on_recovery_step(self, purpose: _Io, context: object) -> list[LogOutput]:
        state = self._recovery
        if purpose is _Io.RECOVERY_TRUNCATE:
            assert isinstance(context, str)
            return [self._sync_for_recovery(context)]
        state.pending_syncs -= 1
        if state.pending_syncs > 0:
            return []
        return self._open()

    def _salvage_superblock(self, chosen: Superblock, cut: int) -> Superblock | None:
        """The superblock to write before a salvage cut: it keeps claiming the lost records
        as durable (``durable_before`` past the cut), so that every recovery until they are
        appended again reports them lost, even after a crash in the middle of the cut."""
        checkpoint = chosen.checkpoint
        claimed = max(chosen.durable_before, cut + 1)
        if checkpoint is not None:
            claimed = max(claimed, checkpoint.position)
            if checkpoint.position > self.head:
                checkpoint = None
        if claimed == chosen.durable_before and checkpoint == chosen.checkpoint:
            return None
        return attrs.evolve(
            chosen, sequence=chosen.sequence + 1, durable_before=claimed, checkpoint=checkpoint
        )

    def _salvage_cuts(self, state: _Recovery, scan: SegmentScan) -> list[LogOutput]:
        """The log ends where its intact records end, but the bytes past that point stay
        on disk (stale) until the next truncation: appends overwrite them in place, and a
        repair re-appends the very records that were there, so a crash in the middle of a
        repair finds what it had not rewritten yet still on disk."""
        damaged = state.numbers[state.index - 1]
        self._stale = state.numbers[state.index - 1 :]
        del scan  # the damaged segment is cut where its intact records end (its size)
        return [self._sync_for_recovery(segment_path(damaged))]

    @property
    def has_stale(self) -> bool:
        """Bytes past the end of the log are still on disk (see ``_salvage_cuts``)."""
        return bool(self._stale)

    def _open(self) -> list[LogOutput]:
        self._phase = _Phase.OPEN
        self.durable = self.head
        state = self._recovery
        self._recovery = _Recovery()
        assert self._hashes_base + len(self._hashes) == self.head
        chosen = self._superblock
        certified = 0 if chosen is None else self._certified(chosen)
        recovered = Recovered(
            self.head,
            self.chain_hash,
            self.owner_state,
            self._formatted,
            state.cut,
            state.salvaged,
            state.salvage_complete,
            certified,
            self.base,
            state.base_state,
            state.kept_states,
        )
        return [recovered]

    # --- appending ---------------------------------------------------------------------------

    def _pump(self) -> list[LogOutput]:
        """Write the next batch of pending records, when none is in flight."""
        if self._batch is not None or not self._pending or self._phase is not _Phase.OPEN:
            return []
        first_position, first_data, _ = self._pending[0]
        segment = self._current_segment(first_position, len(first_data))
        chunks: list[bytes] = []
        size = 0
        taken = 0
        for position, data, _ in self._pending:
            fits_segment = segment.size + size + len(data) <= self.config.segment_size_max
            fits_batch = size + len(data) <= self.config.batch_size_max
            if taken and not (fits_segment and fits_batch):
                break
            segment.offsets.append(segment.size + size)
            assert position == segment.first_position + len(segment.offsets) - 1
            chunks.append(data)
            size += len(data)
            taken += 1
        end_position, _, end_hash = self._pending[taken - 1]
        del self._pending[:taken]
        offset = segment.size
        segment.size += size
        payload = b"".join(chunks)
        self._batch = _Batch(segment, offset, payload, end_position + 1, end_hash)
        return [
            self._track(
                _Io.BATCH_WRITE,
                None,
                lambda io: self._batch_write(io, segment.path, offset, payload),
            )
        ]

    def _batch_write(self, io_id: int, path: str, offset: int, payload: bytes) -> DiskWrite:
        """A batch's write, synced in the same request: durable once it completes."""
        return DiskWrite(io_id, path, offset, payload, sync=True)

    def _current_segment(self, next_position: int, next_size: int) -> Segment:
        """The segment the next batch goes to, rolling to a new one when it is full."""
        if self._index.segments:
            current = self._index.segments[-1]
            if current.size == 0 or current.size + next_size <= self.config.segment_size_max:
                return current
            number = current.number + 1
        else:
            number = self._base_segment
        segment = Segment(number, next_position)
        self._index.add(segment)
        return segment

    def _on_batch_synced(self) -> list[LogOutput]:
        """A replica's log writes its witness before the batch counts as durable (and may be
        acknowledged): a write the disk reported done and lost leaves the mark behind, so
        recovery knows records are missing instead of taking a shorter log as whole."""
        batch = self._batch
        assert batch is not None
        if self.salvage and self._truncating is None and batch.end_position > self._witnessed:
            return [self._write_witness(batch.end_position, "batch")]
        return self._batch_landed()

    def _batch_landed(self) -> list[LogOutput]:
        batch = self._batch
        assert batch is not None
        self._batch = None
        outputs: list[LogOutput] = []
        if self._truncating is not None:  # records at or past the cut no longer count
            self.durable = min(batch.end_position, self._truncating)
            return [Durable(self.durable), *self._truncate_begin()]
        self.durable = batch.end_position
        outputs.append(Durable(self.durable))
        interval = self.config.checkpoint_interval
        checkpoint = self.checkpoint
        since = self.durable - (0 if checkpoint is None else checkpoint.position)
        if interval and since >= interval and self._checkpointing is None:
            outputs.extend(self._begin_checkpoint(self.durable))
        outputs.extend(self._pump())
        return outputs

    # --- truncation (for the owner: a replica replacing an uncommitted suffix) ---------------

    def truncate(self, position: int) -> list[LogOutput]:
        """Remove every record at or after ``position``; ``Truncated`` follows once durable.

        Records covered by a checkpoint cannot be removed. Appends made after this call get
        positions from ``position`` on and are written once the truncation is durable. The
        files are cut from the last segment backwards, each cut synced before the next, so
        a crash leaves a shorter valid log, never a gap."""
        if self._phase is not _Phase.OPEN or self._truncating is not None or self._installing:
            raise LogError("log is not open, or a truncation or base install is under way")
        sealed = max(self.base, 0 if self.checkpoint is None else self.checkpoint.position)
        if self._checkpointing is not None:
            sealed = max(sealed, self._checkpointing.position)
        if not sealed <= position <= self.head:
            raise LogError(
                f"cannot truncate to {position}: sealed up to {sealed}, head {self.head}"
            )
        self._truncating = position
        self._pending = [entry for entry in self._pending if entry[0] < position]
        self.chain_hash = self.hash_before(position)
        self.head = position
        del self._hashes[max(0, position - self._hashes_base) :]
        self.durable = min(self.durable, position)
        cuts = []
        for segment in reversed(self._index.segments):
            written = len(segment.offsets)
            if segment.first_position + written <= position:
                break
            keep = max(0, position - segment.first_position)
            cuts.append((segment, segment.offsets[keep] if keep < written else segment.size))
        cuts = self._stale_cuts(cuts)
        self._cuts = cuts
        if self._batch is not None:
            return []  # the cut starts once the batch in flight has landed
        return self._truncate_begin()

    def _truncate_begin(self) -> list[LogOutput]:
        """A replica's witness is lowered to the cut first: a crash in the middle of the cut
        must not find a mark claiming records the owner chose to remove."""
        position = self._truncating
        assert position is not None
        # (at the mark too: a slot recovery could not read may hold a higher one)
        if self.salvage and self._witnessed >= position:
            return [self._write_witness(position, "truncate")]
        return self._truncate_next()

    def _stale_cuts(self, cuts: list[tuple[Segment, int]]) -> list[tuple[Segment, int]]:
        """Add to ``cuts`` (last segment first) what removes the stale bytes: a live segment
        is cut at its size, a file past the live ones is emptied."""
        if not self._stale:
            return cuts
        live = {segment.number: segment for segment in self._index.segments}
        cut_numbers = {segment.number for segment, _ in cuts}
        extra: list[tuple[Segment, int]] = []
        for number in self._stale:
            segment = live.get(number)
            if segment is None:
                extra.append((Segment(number, self.head), 0))
            elif number not in cut_numbers:
                extra.append((segment, segment.size))
        self._stale = []
        return sorted([*extra, *cuts], key=lambda cut: -cut[0].number)

    def _truncate_next(self) -> list[LogOutput]:
        if not self._cuts:
            return self._truncate_done()
        segment, length = self._cuts[0]
        return [
            self._track(_Io.TRUNCATE_CUT, None, lambda io: DiskTruncate(io, segment.path, length))
        ]

    def _on_truncate_cut(self, purpose: _Io) -> list[LogOutput]:
        segment, length = self._cuts[0]
        if purpose is _Io.TRUNCATE_CUT:
            return [self._track(_Io.TRUNCATE_SYNC, None, lambda io: DiskSync(io, segment.path))]
        self._cuts.pop(0)
        keep = bisect.bisect_left(segment.offsets, length)
        del segment.offsets[keep:]
        segment.size = length
        return self._truncate_next()

    def _truncate_done(self) -> list[LogOutput]:
        position = self._truncating
        assert position is not None
        self._index.drop_after(position)
        self._truncating = None
        return [Truncated(position), *self._pump()]

    def location(self, position: int) -> tuple[str, int, int] | None:
        """(file, offset, size) of the record at ``position``; None while it waits for a
        batch (a write is under way for it once it has a place), or when it lies below the
        index."""
        assert self.base <= position < self.head
        return self._index.location(position)

    def hash_before(self, position: int) -> bytes:
        """Chain hash of record ``position - 1`` (for positions from the latest checkpoint)."""
        if position == 0:
            return GENESIS_HASH
        if position == self._hashes_base:
            return self._base_hash
        index = position - 1 - self._hashes_base
        assert 0 <= index < len(self._hashes), f"hash of {position - 1} is not kept"
        return self._hashes[index]

    # --- checkpoints and the superblock ------------------------------------------------------

    def _begin_checkpoint(self, position: int) -> list[LogOutput]:
        assert self._superblock is not None and position <= self.durable
        number, offset = self._locate(position)
        checkpoint = self._sealer.seal(position, number, offset, self.hash_before(position))
        self._checkpointing = checkpoint
        at = self._superblock.checkpoint_count * ENTRY_SIZE
        entry = encode_entry(checkpoint)
        return [
            self._track(
                _Io.HISTORY_WRITE, None, lambda io: DiskWrite(io, CHECKPOINTS_PATH, at, entry)
            )
        ]

    def _locate(self, position: int) -> tuple[int, int]:
        """(segment, offset) where record ``position`` starts (or would start)."""
        if not self._index.segments:
            return self._base_segment, 0
        segment, slot = self._index.find(position)
        if slot < len(segment.offsets):
            return segment.number, segment.offsets[slot]
        return segment.number, segment.size if self._batch is None else self._batch.offset

    def save_owner_state(self, state: bytes) -> list[LogOutput]:
        """Persist ``state`` in the superblock; ``OwnerStateSaved`` follows once synced."""
        if self._phase is not _Phase.OPEN:
            raise LogError(f"log is {self._phase.value}, not open")
        assert len(state) <= superblock.OWNER_STATE_SIZE_MAX
        self._wanted_owner_state = state
        return self._write_superblock()

    @property
    def owner_state(self) -> bytes:
        return b"" if self._superblock is None else self._superblock.owner_state

    def _write_superblock(self, fresh: Superblock | None = None) -> list[LogOutput]:
        """Write every copy of the next superblock (one update in flight at a time); a sync
        follows once all copies are written.

        Without ``fresh``, the next superblock carries what is wanted: the checkpoint whose
        history entry is synced, and the latest owner state asked for."""
        if self._superblock_inflight is not None:
            return []  # the next update starts when this one is synced
        if fresh is None:
            current = self._superblock
            assert current is not None
            checkpoint = self._history_synced
            owner = self._wanted_owner_state
            base = self._installing if self._base_written else None
            if checkpoint is None and owner is None and base is None:
                return []
            fresh = attrs.evolve(current, sequence=current.sequence + 1)
            if base is not None:
                fresh = attrs.evolve(
                    fresh,
                    durable_before=max(current.durable_before, base.position),
                    base_position=base.position,
                    base_hash=base.chain_hash,
                    base_segment=base.segment,
                    base_digest=base.state_digest,
                    base_size=base.state_size,
                )
            if checkpoint is not None:
                fresh = attrs.evolve(
                    fresh,
                    # never below a mark a salvage cut left (records still to be repaired)
                    durable_before=max(checkpoint.position, current.durable_before),
                    checkpoint_count=current.checkpoint_count + 1,
                    checkpoint=checkpoint,
                )
            if owner is not None:
                fresh = attrs.evolve(fresh, owner_state=owner)
        self._superblock_inflight = fresh
        return self._write_superblock_half(fresh, 0)

    def _write_superblock_half(self, fresh: Superblock, half: int) -> list[LogOutput]:
        """Copies are written in two halves, each synced before the next starts, so a crash
        tears at most one half: the other holds either the old or the new superblock."""
        self._superblock_half = half
        count = superblock.COPIES // 2
        copies = range(half * count, (half + 1) * count)
        self._superblock_writes = len(copies)
        return [self._write_superblock_copy(fresh, copy) for copy in copies]

    def _write_superblock_copy(self, fresh: Superblock, copy: int) -> DiskWrite:
        data = superblock.encode_copy(fresh, copy)
        offset = copy * superblock.COPY_SIZE
        return self._track(
            _Io.SUPERBLOCK_WRITE, fresh, lambda io: DiskWrite(io, superblock.PATH, offset, data)
        )

    def _on_superblock_written(self, fresh: object) -> list[LogOutput]:
        self._superblock_writes -= 1
        if self._superblock_writes > 0:
            return []
        return [self._track(_Io.SUPERBLOCK_SYNC, fresh, lambda io: DiskSync(io, superblock.PATH))]

    def _on_superblock_synced(self, fresh: object) -> list[LogOutput]:
        assert isinstance(fresh, Superblock) and fresh is self._superblock_inflight
        if self._superblock_half == 0:
            return self._write_superblock_half(fresh, 1)
        self._superblock = fresh
        self._superblock_inflight = None
        if self._phase is _Phase.RECOVERING and self._recovery.salvaging:
            self._recovery.salvaging = False
            self._recovery.superblock = fresh
            return self._finish_recovery()
        if self._phase is _Phase.RECOVERING and self._recovery.repairing:
            self._recovery.superblock = fresh
            return self._read_segments()
        if self._phase is _Phase.RECOVERING:  # the first superblock of a new directory
            return self._open()
        outputs: list[LogOutput] = []
        install = self._installing
        if install is not None and self._base_written and fresh.base_position == install.position:
            outputs.extend(self._finish_base(fresh))
        if fresh.checkpoint is not None and fresh.checkpoint == self._history_synced:
            self._history_synced = None
            self._checkpointing = None
            self._forget_hashes_before(fresh.checkpoint)
            self._forget_places_before(fresh.checkpoint)
            outputs.append(Checkpointed(fresh.checkpoint.position))
        if fresh.owner_state == self._wanted_owner_state:
            self._wanted_owner_state = None
            outputs.append(OwnerStateSaved(fresh.owner_state))
        return [*outputs, *self._write_superblock()]

    def _forget_hashes_before(self, checkpoint: Checkpoint) -> None:
        """Hashes below a durable checkpoint are never needed again in memory."""
        drop = checkpoint.position - self._hashes_base
        if drop > 0:
            del self._hashes[:drop]
            self._hashes_base = checkpoint.position
            self._base_hash = checkpoint.chain_hash

    def _forget_places_before(self, checkpoint: Checkpoint) -> None:
        """A log that does not salvage serves no peer: the places of records below a durable
        checkpoint leave memory (a read below it finds them again, see ``read``)."""
        if not (self.salvage or self._backfill is not None or self._truncating is not None):
            self._index.forget_before(checkpoint)

    # --- finding the places of records below the index ---------------------------------------

    def _read_below_index(self, tag: int, position: int) -> list[LogOutput]:
        """Queue a read of a record below the index, and find the records from the nearest
        sealed checkpoint at or below it (or from the base) again."""
        self._backfill_reads.append((tag, position))
        if self._backfill is not None:
            return []
        assert self._superblock is not None
        end = self._superblock.checkpoint_count * ENTRY_SIZE
        self._backfill = Backfill(position, history_end=end)
        return self._search_history()

    def _search_history(self) -> list[LogOutput]:
        """Read the history backwards, a chunk at a time, for the latest sealed checkpoint
        at or below the position wanted; without one, start from the base."""
        backfill = self._backfill
        assert backfill is not None
        if backfill.history_end <= 0:
            backfill.begin(self.base, self._base_segment, 0, self._start_hash)
            return [self._read_backfill()]
        start, size = backfill.history_chunk()
        read = lambda io: DiskRead(io, CHECKPOINTS_PATH, start, size)  # noqa: E731
        return [self._track(_Io.HISTORY_READ, None, read)]

    def _on_history_read(self, completion: DiskCompletion) -> list[LogOutput]:
        backfill = self._backfill
        assert backfill is not None
        _, size = backfill.history_chunk()
        if isinstance(completion, ReadDone) and len(completion.data) == size:
            public_key = self._sealer.public_key
            found = backfill.search(
                completion.data, self._index, self.base, self._base_segment, public_key
            )
            if found is not None:
                backfill.begin(found.position, found.segment, found.offset, found.chain_hash)
                return [self._read_backfill()]
        else:
            backfill.history_end = 0  # unreadable: the records are found from the base
        return self._search_history()

    def _read_backfill(self) -> DiskRead:
        backfill = self._backfill
        assert backfill is not None
        path = segment_path(backfill.segment)
        offset = backfill.offset
        size = self._index.end_below(backfill.segment) - offset
        return self._track(_Io.BACKFILL_READ, None, lambda io: DiskRead(io, path, offset, size))

    def _on_backfill_read(self, completion: DiskCompletion) -> list[LogOutput]:
        backfill, index = self._backfill, self._index
        assert backfill is not None
        number, offset = backfill.segment, backfill.offset
        end = index.end_below(number)
        where = f"file '{segment_path(number)}' offset {offset}"
        if isinstance(completion, IoFailed):
            return self._retry_backfill(f"{where}: read failed: {completion.detail}", None)
        assert isinstance(completion, ReadDone)
        data = completion.data
        if len(data) != end - offset:
            return self._retry_backfill(f"{where}: {len(data)} bytes read", None)
        scan = scan_segment(
            data,
            base_offset=offset,
            first_position=backfill.position,
            prev_hash=backfill.hash,
            verify_from=index.start,
            certified=index.start,
            may_tear=False,
        )
        verdict = scan.verdict
        if not isinstance(verdict, Clean):
            return self._retry_backfill(f"{where}: {_describe(verdict)}", checksum(data))
        last = number == index.start_at[0]
        if last and (scan.next_position, scan.last_hash) != (index.start, index.start_hash):
            problem = (
                f"{where}: the records end at {scan.next_position}, not where the index "
                f"starts ({index.start}), or do not chain to it"
            )
            return self._retry_backfill(problem, checksum(data))
        backfill.attempts, backfill.seen_damage = 0, None
        backfill.pieces.append(Segment(number, backfill.position, end, scan.offsets))
        backfill.position, backfill.hash = scan.next_position, scan.last_hash
        if not last:
            backfill.segment, backfill.offset = number + 1, 0
            return [self._read_backfill()]
        return self._finish_backfill()

    def _retry_backfill(self, problem: str, fingerprint: bytes | None) -> list[LogOutput]:
        """Reads can fail or flip bits in transit: damage is believed when two reads in a
        row return the same bytes (or reads keep failing); the reads waiting fail then."""
        backfill = self._backfill
        assert backfill is not None
        believed = fingerprint is not None and fingerprint == backfill.seen_damage
        backfill.seen_damage = fingerprint
        backfill.attempts += 1
        if backfill.attempts <= READ_RETRIES_MAX and not believed:
            return [self._read_backfill()]
        self._backfill = None
        waiting, self._backfill_reads = self._backfill_reads, []
        fields = (("where", f"records {backfill.position} and on"), ("problem", problem))
        return [
            Notice("log.read_damaged", fields),
            *(ReadFailed(tag, position, problem) for tag, position in waiting),
        ]

    def _finish_backfill(self) -> list[LogOutput]:
        """Put the places found before the index's, then serve the reads that waited."""
        backfill = self._backfill
        assert backfill is not None
        self._backfill = None
        fields = (("from", backfill.start), ("to", self._index.start))
        self._index.prepend(backfill)
        outputs: list[LogOutput] = [Notice("log.places_found", fields)]
        waiting, self._backfill_reads = self._backfill_reads, []
        for tag, position in waiting:
            outputs.extend(self.read(position, tag))
        return outputs

    # --- reads -------------------------------------------------------------------------------

    def _read_record(self, pending: _PendingRead) -> DiskRead:
        return self._track(
            _Io.RECORD_READ,
            pending,
            lambda io: DiskRead(io, pending.path, pending.offset, pending.size),
        )

    def _on_record_read(self, pending: _PendingRead, completion: DiskCompletion) -> list[LogOutput]:
        results: list[LogOutput] = []
        problem = None
        position = pending.position
        if isinstance(completion, IoFailed):
            problem = f"read failed: {completion.detail}"
        else:
            assert isinstance(completion, ReadDone)
            data, at = memoryview(completion.data), 0
            try:
                while position < pending.position + pending.count:
                    size = HEADER_SIZE + record.decode_header(data[at : at + HEADER_SIZE]).body_size
                    header, body = record.decode(data[at : at + size])
                    if header.position != position:
                        problem = f"record claims position {header.position}"
                        break
                    results.append(ReadResult(pending.tag, position, body, header.hash))
                    position += 1
                    at += size
            except RecordError as error:
                problem = error.reason
        if problem is None:
            return results
        pending.attempts += 1
        if pending.attempts <= READ_RETRIES_MAX:
            return [self._read_record(pending)]
        offset = pending.offset + at if isinstance(completion, ReadDone) else pending.offset
        where = f"file '{pending.path}' offset {offset} record {position}"
        return [
            *results,
            Notice("log.read_damaged", (("where", where), ("problem", problem))),
            ReadFailed(pending.tag, position, f"{where}: {problem}"),
        ]

    # --- helpers -----------------------------------------------------------------------------

    def _track(self, purpose: _Io, context: object, make: Callable[[int], R]) -> R:
        """Allocate an io_id, remember what it is for, and build the request with it."""
        io_id = self._io_ids.next()
        self._waiting[io_id] = (purpose, context)
        return make(io_id)

    def _halt(self, reason: str) -> list[LogOutput]:
        self._phase = _Phase.HALTED
        self.halt_reason = reason
        self._pending.clear()
        self._batch = None
        return [Halt(reason)]
