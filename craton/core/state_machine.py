"""The replicated application: the ``StateMachine`` protocol every Craton application keeps.

A replica hands each committed operation, in log order, to its state machine:
``apply(op, body)`` where ``op`` is the log position (the VSR op number) the operation
committed at and ``body`` is the client's encoded operation; the returned bytes are the
encoded reply the client receives. Every replica applies the same committed log, so every
replica holds the same state and sends the same replies. Craton ships two machines
(``craton.core.event_store.EventStore`` and ``craton.core.kv_machine.KvMachine``); users plug
their own by implementing this protocol.

Rules every state machine keeps:
- Deterministic: the reply and the new state are a function of the state, ``op`` and
  ``body`` only. No clocks, randomness, I/O, set iteration or hash order.
- Bad bytes from outside are a reply, never an exception: a malformed, oversized or
  semantically invalid body yields an encoded error reply and leaves the application state
  as it was (only the applied op advances).
- Ops are applied in strictly increasing order (gaps allowed: the log may hold entries
  that are not client operations). An op at or below the last applied one is a bug in the
  caller and raises ``OpOrderError``.
- ``digest()`` is the SHA-256 of a canonical encoding of the whole state, the applied op
  included: equal states give equal digests on any machine, under any ``PYTHONHASHSEED``.
- ``snapshot()`` is canonical too (equal states give byte-identical snapshots), and
  ``restore(snapshot, storage)`` rebuilds an equal machine, whose digest it verifies: a
  damaged or foreign snapshot raises ``SnapshotError`` and is never installed.
  ``snapshot_parts(part_bytes)`` gives the same bytes in parts that may be taken later,
  while later ops are applied, so that a large state is never held whole.
- A machine may keep the bulk of its state in derived storage (``craton.core.storage``),
  never in files of its own: it is rebuilt from a snapshot and the log at every restart,
  so it need not be durable; ``close()`` drops it when the machine is replaced.

Snapshot envelope (integers little-endian), shared by the built-in machines:

    magic b"CRSM" | u16 SNAPSHOT_FORMAT_VERSION | u32 length + machine name (UTF-8)
    | u64 length + state (machine-specific) | 32-byte digest of the restored state
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Iterator
from typing import Protocol, Self

from craton.core.storage import DerivedStorage, MemoryStorage
from craton.core.wire.errors import DecodeError

OP_MAX = 2**64 - 2  # largest op a machine applies, so that the next op still fits a u64
DIGEST_SIZE = 32  # bytes: SHA-256
SNAPSHOT_MAGIC = b"CRSM"
SNAPSHOT_FORMAT_VERSION = 1
MACHINE_NAME_SIZE_MAX = 64  # bytes of UTF-8 in a state machine's name

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


STATE_PART_BYTES = 4 << 20  # a state is encoded in parts of about this size, never whole


class StateSink:
    """A buffer that hands a state's encoding over in parts of about ``part_bytes``: an
    encoder appends to ``buffer`` and calls ``cut`` where a part may end, which returns the
    part once it is full (``buffer`` is then a new, empty bytearray)."""

    __slots__ = ("buffer", "part_bytes")

    def __init__(self, part_bytes: int = STATE_PART_BYTES) -> None:
        assert part_bytes > 0
        self.part_bytes = part_bytes
        self.buffer = bytearray()

    def cut(self) -> bytes | None:
        """The part ending here if it has reached ``part_bytes``, else None."""
        if len(self.buffer) < self.part_bytes:
            return None
        part = bytes(self.buffer)
        self.buffer = bytearray()
        return part

    def rest(self) -> bytes:
        """What is left in the buffer, the last part."""
        part = bytes(self.buffer)
        self.buffer = bytearray()
        return part


def coalesced(parts: Iterator[bytes], part_bytes: int) -> Iterator[bytes]:
    """``parts`` regrouped so that every part but the last holds ``part_bytes`` at least:
    small ones are joined; a large one passes through as it is when nothing waits."""
    waiting = bytearray()
    for part in parts:
        if not waiting and len(part) >= part_bytes:
            yield part
            continue
        waiting += part
        if len(waiting) >= part_bytes:
            yield bytes(waiting)
            waiting = bytearray()
    if waiting:
        yield bytes(waiting)


class OpOrderError(ValueError):
    """``apply`` was called with an op not above the last applied one (or out of range)."""


class SnapshotError(ValueError):
    """Snapshot bytes are damaged, truncated, of another machine or of another format."""


class StateMachine(Protocol):
    """A deterministic application replicated by applying the committed log in order."""

    @property
    def name(self) -> str:
        """What application this is; snapshots carry it and ``restore`` checks it."""
        ...

    def apply(self, op: int, body: bytes) -> bytes:
        """Apply the operation committed at ``op``; return its encoded reply. Never raises
        because of ``body``; raises ``OpOrderError`` when ``op`` is not above the last op."""
        ...

    def digest(self) -> bytes:
        """SHA-256 (32 bytes) of a canonical encoding of the whole state."""
        ...

    def snapshot(self) -> bytes:
        """The whole state, canonically encoded; ``restore`` turns it back into a machine."""
        ...

    def snapshot_parts(self, part_bytes: int) -> tuple[int, Iterator[bytes]]:
        """The bytes ``snapshot()`` would return now: their size, and the bytes themselves
        in parts of about ``part_bytes``, which the caller may take later, while the machine
        applies later ops (a checkpoint state is written to its file a part at a time, so a
        large state is never held whole)."""
        ...

    @classmethod
    def restore(cls, snapshot: bytes | memoryview, storage: DerivedStorage | None = None) -> Self:
        """A machine equal to the one that took ``snapshot`` (bytes, or a view into a
        checkpoint state's bytes, which may be large), keeping its derived data in
        ``storage`` (``craton.core.storage``; in memory when None); ``SnapshotError`` if
        damaged, and then it holds nothing in ``storage``."""
        ...

    @property
    def storage(self) -> DerivedStorage | None:
        """Where the machine keeps its derived data (None: it keeps none)."""
        ...

    def close(self) -> None:
        """Drop what the machine keeps in its storage: it is not used again."""
        ...

    def invariants(self) -> None:
        """Assert the machine's internal invariants (the simulator calls this)."""
        ...


def next_op(op_next: int, op: int) -> int:
    """The op a machine may apply after ``op``, checked against its current ``op_next``.

    ``op_next`` is the smallest op the machine accepts (0 before the first apply)."""
    if type(op) is not int or not 0 <= op <= OP_MAX:
        raise OpOrderError(f"op must be an int in 0..{OP_MAX}, got {op!r}")
    if op < op_next:
        raise OpOrderError(f"op {op} is not above the last applied op {op_next - 1}")
    return op + 1


def seal_snapshot(name: str, state: bytes, digest: bytes) -> bytes:
    """Wrap a machine's canonical ``state`` encoding and its ``digest`` in the envelope."""
    encoded_name = name.encode("utf-8")
    assert 1 <= len(encoded_name) <= MACHINE_NAME_SIZE_MAX
    assert len(digest) == DIGEST_SIZE
    return b"".join(
        (
            SNAPSHOT_MAGIC,
            _U16.pack(SNAPSHOT_FORMAT_VERSION),
            _U32.pack(len(encoded_name)),
            encoded_name,
            _U64.pack(len(state)),
            state,
            digest,
        )
    )


def open_snapshot(name: str, snapshot: bytes | memoryview) -> tuple[memoryview, bytes]:
    """The (state, digest) inside a snapshot of machine ``name``; ``SnapshotError`` if the
    envelope is damaged or belongs to another machine or format. The state is a view into
    ``snapshot``, not a copy of it."""
    header_size = len(SNAPSHOT_MAGIC) + _U16.size + _U32.size
    if len(snapshot) < header_size or snapshot[:4] != SNAPSHOT_MAGIC:
        raise SnapshotError("not a Craton state machine snapshot (bad magic)")
    (version,) = _U16.unpack_from(snapshot, 4)
    if version != SNAPSHOT_FORMAT_VERSION:
        raise SnapshotError(f"snapshot format {version}, expected {SNAPSHOT_FORMAT_VERSION}")
    (name_size,) = _U32.unpack_from(snapshot, 6)
    offset = header_size
    if name_size > MACHINE_NAME_SIZE_MAX or offset + name_size + _U64.size > len(snapshot):
        raise SnapshotError("snapshot machine name is truncated or too long")
    found = snapshot[offset : offset + name_size]
    if found != name.encode("utf-8"):
        raise SnapshotError(f"snapshot is of another machine, expected {name!r}")
    offset += name_size
    (state_size,) = _U64.unpack_from(snapshot, offset)
    offset += _U64.size
    if offset + state_size + DIGEST_SIZE != len(snapshot):
        raise SnapshotError(
            f"snapshot is {len(snapshot)} bytes, its header says "
            f"{offset + state_size + DIGEST_SIZE}"
        )
    state = memoryview(snapshot)[offset : offset + state_size]
    return state, bytes(snapshot[offset + state_size :])


class SnapshotMachine:
    """What the built-in machines share: a digest cached until the next ``apply`` (which
    calls ``_changed``), and snapshots in the envelope above, restored only when their
    state decodes and matches their digest. A subclass sets ``name`` and implements
    ``_encode_state`` (or ``_state_parts``), ``_decode_state`` and ``_compute_digest``."""

    name = ""

    def __init__(self, storage: DerivedStorage | None = None) -> None:
        self._digest: bytes | None = None
        self._storage = MemoryStorage() if storage is None else storage

    @property
    def storage(self) -> DerivedStorage:
        return self._storage

    def close(self) -> None:
        """Nothing to drop unless a subclass keeps data in its storage."""

    def _changed(self) -> None:
        self._digest = None

    def digest(self) -> bytes:
        if self._digest is None:
            self._digest = self._compute_digest()
        return self._digest

    def snapshot(self) -> bytes:
        return b"".join(self.snapshot_parts(STATE_PART_BYTES)[1])

    def snapshot_parts(self, part_bytes: int) -> tuple[int, Iterator[bytes]]:
        encoded_name = self.name.encode("utf-8")
        assert 1 <= len(encoded_name) <= MACHINE_NAME_SIZE_MAX
        state_size, state_parts = self._state_parts(part_bytes)
        head = b"".join(
            (
                SNAPSHOT_MAGIC,
                _U16.pack(SNAPSHOT_FORMAT_VERSION),
                _U32.pack(len(encoded_name)),
                encoded_name,
                _U64.pack(state_size),
            )
        )
        digest = self.digest()  # of the state now, which the parts hold
        size = len(head) + state_size + len(digest)
        return size, itertools.chain((head,), state_parts, (digest,))

    @classmethod
    def restore(cls, snapshot: bytes | memoryview, storage: DerivedStorage | None = None) -> Self:
        state, digest = open_snapshot(cls.name, snapshot)
        machine = cls(storage)
        try:
            machine._decode_state(state)
        except DecodeError as error:
            machine.close()
            raise SnapshotError(f"{cls.name} snapshot: {error.reason}") from None
        if machine.digest() != digest:
            machine.close()
            raise SnapshotError(f"{cls.name} snapshot does not match its digest")
        return machine

    def _encode_state(self) -> bytes:
        raise NotImplementedError

    def _state_parts(self, part_bytes: int) -> tuple[int, Iterator[bytes]]:
        """The state's canonical encoding as it is now: its size, and its bytes in parts
        that may be taken later (a machine whose state can be large encodes it a part at a
        time, as it is taken; by default it is encoded whole, at once)."""
        del part_bytes
        state = self._encode_state()
        return len(state), iter((state,))

    def _decode_state(self, state: memoryview) -> None:
        raise NotImplementedError

    def _compute_digest(self) -> bytes:
        raise NotImplementedError
