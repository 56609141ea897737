"""A replica's state at a checkpoint op: the state machine and the client table, canonically.

Every replica takes one when its commit number reaches a multiple of the checkpoint
interval, before it applies the next op, so that replicas that committed the same log hold
byte-identical checkpoint states at the same op (the simulator checks their digests). The
log seals the chain hash at that op; the state is what a replica that lacks the ops below
it would install (state sync), after checking it against its digest and the sealed hash.

Encoding (integers little-endian; clients sorted by id, so no dict order leaks in):

    magic b"CRCK" | u16 CHECKPOINT_FORMAT_VERSION | u64 op | 32-byte chain hash at op
    | u32 client count | per client: u64 client id | u64 session | u32 number | u64 op
      | u8 has reply | u32 reply length + reply
    | u64 length + the state machine's snapshot (``StateMachine.snapshot``)

The digest is the SHA-256 of those bytes.
"""

from __future__ import annotations

import hashlib
import itertools
import struct
from collections.abc import Iterator

import attrs

from craton.core.state_machine import (
    STATE_PART_BYTES,
    SnapshotError,
    SnapshotLoader,
    StateMachine,
    coalesced,
)

CHECKPOINT_MAGIC = b"CRCK"
CHECKPOINT_FORMAT_VERSION = 1
HASH_SIZE = 32
REPLY_SIZE_MAX = 16 * 1024 * 1024  # bytes of one cached reply, as a decoder bound

_HEADER = struct.Struct("<4sHQ")
_VERSION_OP = struct.Struct("<HQ")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_CLIENT = struct.Struct("<QQIQB")


# A checkpoint state is taken about every 1/STATE_SPACING_PARTS of the log's length (see
# ``state_due``): taking one costs a pass over the whole state, so taking one at every
# checkpoint would cost a pass per interval, quadratic in the log's length.
STATE_SPACING_PARTS = 8
# ... but never more than this many ops apart: the journal between two states is held in
# memory (see ``JOURNAL_OPS_MAX`` in ``craton.core.vsr.replica``, which must exceed it)
STATE_SPACING_OPS_MAX = 1 << 18


def state_due(op: int, interval: int) -> bool:
    """Whether replicas take a checkpoint state when their commit number reaches ``op``.

    At every multiple of the interval while the log is short (the first
    ``2 * STATE_SPACING_PARTS`` of them), then at every second, fourth, ... multiple, the
    stride doubling each time the log doubles: past that, consecutive states lie between
    1/16 and 1/8 of the log's length apart (``STATE_SPACING_PARTS`` states per doubling),
    so all the passes over the state add up to about a dozen times its final size, and the
    journal kept in memory between two states stays within an eighth of the log, and within
    ``STATE_SPACING_OPS_MAX`` ops however long the log grows. A function of ``op`` alone, so
    every replica takes its states at the same ops."""
    if op <= 0 or op % interval:
        return False
    multiple = op // interval
    stride = 1
    stride_max = max(1, STATE_SPACING_OPS_MAX // interval)
    while multiple >= 2 * STATE_SPACING_PARTS * stride and stride * 2 <= stride_max:
        stride *= 2
    return multiple % stride == 0


class CheckpointError(ValueError):
    """Checkpoint state bytes are damaged, truncated, of another format or another op."""


@attrs.frozen
class ClientEntry:
    """One client's row of the client table, as a checkpoint carries it."""

    client: int
    session: int  # the op that registered it
    number: int  # the last request number applied
    op: int  # the op that last touched the session (eviction order)
    reply: bytes | None  # the reply to ``number``, once committed


class StateStream:
    """A checkpoint state produced a part at a time, as its file is written: the header
    and client table at once (small), then the machine's snapshot as the machine hands it
    over (``StateMachine.snapshot_parts``: the state as it was when the stream was made,
    whatever the machine applied since). The digest is hashed as the parts go, and known
    once the last one is taken."""

    def __init__(
        self,
        op: int,
        chain_hash: bytes,
        clients: list[ClientEntry],
        machine: tuple[int, Iterator[bytes]],
        part_bytes: int = STATE_PART_BYTES,
    ) -> None:
        assert len(chain_hash) == HASH_SIZE and op >= 0
        self.op = op
        self.chain_hash = chain_hash
        head = bytearray(_HEADER.pack(CHECKPOINT_MAGIC, CHECKPOINT_FORMAT_VERSION, op))
        head += chain_hash + _U32.pack(len(clients))
        for entry in sorted(clients, key=lambda e: e.client):
            has_reply = entry.reply is not None
            head += _CLIENT.pack(entry.client, entry.session, entry.number, entry.op, has_reply)
            reply = entry.reply or b""
            head += _U32.pack(len(reply)) + reply
        machine_size, machine_parts = machine
        head += _U64.pack(machine_size)
        self.size = len(head) + machine_size  # bytes of the whole state
        self._parts = coalesced(itertools.chain((bytes(head),), machine_parts), part_bytes)
        self._hash = hashlib.sha256()
        self.taken = 0  # bytes handed over so far
        self.digest: bytes | None = None  # once every part was taken

    def next_part(self) -> bytes | None:
        """The next part of the state, or None once every part was taken."""
        part = next(self._parts, None)
        if part is None:
            assert self.taken == self.size, (self.taken, self.size)
            if self.digest is None:
                self.digest = self._hash.digest()
            return None
        self._hash.update(part)
        self.taken += len(part)
        return part


@attrs.frozen
class CheckpointState:
    """The state at ``op`` (all ops below it applied): while it is being written, the
    stream that produces it; once on disk, its digest."""

    op: int
    chain_hash: bytes  # the hash of op ``op - 1``: what the log's seal vouches for
    stream: StateStream | None  # None once the state is on disk (or was superseded)
    digest: bytes | None  # None until every part was produced


def encode_checkpoint(
    op: int, chain_hash: bytes, clients: list[ClientEntry], machine_snapshot: bytes
) -> tuple[bytes, bytes]:
    """The checkpoint state's bytes, whole, and their digest (for tools and tests: a
    replica writes it a part at a time, through ``StateStream``)."""
    machine = (len(machine_snapshot), iter((machine_snapshot,)))
    stream = StateStream(op, chain_hash, clients, machine)
    data = b"".join(iter(stream.next_part, None))
    assert stream.digest is not None
    return data, stream.digest


@attrs.frozen
class OpenedCheckpoint:
    op: int
    chain_hash: bytes
    clients: tuple[ClientEntry, ...]
    machine_snapshot: memoryview  # a view into the checkpoint's bytes, not a copy


class _Truncated(CheckpointError):
    """The bytes end before the part of the state being read."""


def open_checkpoint(data: bytes, digest: bytes) -> OpenedCheckpoint:
    """The contents of checkpoint ``data`` once it matches ``digest``; ``CheckpointError``
    if it does not, or if the bytes do not decode to exactly one checkpoint."""
    if hashlib.sha256(data).digest() != digest:
        raise CheckpointError("checkpoint state does not match its digest")
    reader = _Reader(data)
    op, chain_hash, clients, machine_size = _read_head(reader)
    machine_snapshot = reader.view(machine_size)
    if reader.offset != len(data):
        raise CheckpointError(f"{len(data) - reader.offset} bytes after the checkpoint state")
    return OpenedCheckpoint(op, chain_hash, clients, machine_snapshot)


def _read_head(reader: _Reader) -> tuple[int, bytes, tuple[ClientEntry, ...], int]:
    """The state's op, chain hash, client table and the size of the machine's snapshot,
    which follows them; ``_Truncated`` if the bytes end first."""
    if reader.take(len(CHECKPOINT_MAGIC)) != CHECKPOINT_MAGIC:
        raise CheckpointError("not a Craton checkpoint state (bad magic)")
    version, op = reader.unpack(_VERSION_OP)
    if version != CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(f"checkpoint format {version}, expected {CHECKPOINT_FORMAT_VERSION}")
    chain_hash = reader.take(HASH_SIZE)
    (count,) = reader.unpack(_U32)
    clients: list[ClientEntry] = []
    for _ in range(count):
        client, session, number, last_op, has_reply = reader.unpack(_CLIENT)
        (size,) = reader.unpack(_U32)
        if size > REPLY_SIZE_MAX or has_reply > 1 or (not has_reply and size):
            raise CheckpointError(f"client {client}: malformed cached reply")
        reply = reader.take(size) if has_reply else None
        if clients and clients[-1].client >= client:
            raise CheckpointError("checkpoint clients are not sorted by id")
        clients.append(ClientEntry(client, session, number, last_op, reply))
    (machine_size,) = reader.unpack(_U64)
    return op, chain_hash, tuple(clients), machine_size


class CheckpointLoader:
    """A checkpoint state read back a part at a time (a restart reads its state file so):
    hashed as it comes; its header and client table read once they are in; the machine's
    snapshot handed to the machine's ``SnapshotLoader`` as it comes, so that the state is
    never held whole. Nothing is believed before ``finish`` has checked the digest."""

    def __init__(self, digest: bytes, size: int, machine: SnapshotLoader) -> None:
        self._digest = digest
        self._size = size
        self._hash = hashlib.sha256()
        self.taken = 0  # bytes fed so far
        self._held = b""  # bytes fed before the head could be read
        self._head: tuple[int, bytes, tuple[ClientEntry, ...]] | None = None
        self._machine_left = 0
        self._machine = machine

    def feed(self, data: bytes) -> None:
        """The next bytes of the state; ``CheckpointError`` or ``SnapshotError`` when they
        cannot be its (the loader is then abandoned)."""
        try:
            self._feed(data)
        except (CheckpointError, SnapshotError):
            self.abandon()
            raise

    def _feed(self, data: bytes) -> None:
        self._hash.update(data)
        self.taken += len(data)
        if self.taken > self._size:
            raise CheckpointError(f"the state is longer than the {self._size} bytes named")
        if self._head is None:
            self._held += data
            reader = _Reader(self._held)
            try:
                op, chain_hash, clients, self._machine_left = _read_head(reader)
            except _Truncated:
                return  # the rest of the head is still to come
            self._head = (op, chain_hash, clients)
            data, self._held = self._held[reader.offset :], b""
        if len(data) > self._machine_left:
            raise CheckpointError("bytes after the checkpoint state")
        self._machine_left -= len(data)
        if data:
            self._machine.feed(data)

    def finish(self) -> tuple[OpenedCheckpoint, StateMachine]:
        """The state's head (its ``machine_snapshot`` empty: the machine was fed it) and the
        restored machine, once every byte was fed and the digest checks out."""
        try:
            if self.taken != self._size or self._hash.digest() != self._digest:
                raise CheckpointError("checkpoint state does not match its digest")
            if self._head is None or self._machine_left:
                raise CheckpointError("checkpoint state is truncated")
            machine = self._machine.finish()
        except (CheckpointError, SnapshotError):
            self.abandon()
            raise
        op, chain_hash, clients = self._head
        return OpenedCheckpoint(op, chain_hash, clients, memoryview(b"")), machine

    def abandon(self) -> None:
        self._machine.abandon()


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self._view = memoryview(data)
        self.offset = 0

    def view(self, size: int) -> memoryview:
        """The next ``size`` bytes as a view (the machine's snapshot: too large to copy)."""
        if self.offset + size > len(self.data):
            raise _Truncated("checkpoint state is truncated")
        self.offset += size
        return self._view[self.offset - size : self.offset]

    def take(self, size: int) -> bytes:
        if self.offset + size > len(self.data):
            raise _Truncated("checkpoint state is truncated")
        chunk = self.data[self.offset : self.offset + size]
        self.offset += size
        return chunk

    def unpack(self, layout: struct.Struct) -> tuple[int, ...]:
        values: tuple[int, ...] = layout.unpack(self.take(layout.size))
        return values
