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
    | 32-byte SHA-256 of the state's bytes

The digest says what the state means; the SHA-256 of its bytes catches damage to bytes the
digest does not cover (where a machine keeps its data, checksums it takes as given), and is
checked before a restored machine is handed out.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Iterator
from typing import Protocol, Self

from craton.core.storage import DerivedStorage, MemoryStorage
from craton.core.wire.errors import DecodeError

OP_MAX = 2**64 - 2  # largest op a machine applies, so that the next op still fits a u64
DIGEST_SIZE = 32  # bytes: SHA-256
SNAPSHOT_MAGIC = b"CRSM"
TRAILER_SIZE = 2 * DIGEST_SIZE  # the state's digest, then the SHA-256 of its bytes
SNAPSHOT_FORMAT_VERSION = 2  # 2: the event store holds its streams in columns
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

    @classmethod
    def snapshot_loader(cls, storage: DerivedStorage | None = None) -> SnapshotLoader:
        """What restores a machine from a snapshot handed over a part at a time, so that a
        large one is never held whole (``WholeSnapshotLoader`` gathers the parts and calls
        ``restore``, for a machine whose state is small)."""
        ...

    @property
    def storage(self) -> DerivedStorage | None:
        """Where the machine keeps its derived data (None: it keeps none)."""
        ...

    def close(self) -> None:
        """Drop what the machine keeps in its storage: no op is applied to it again. Parts
        of a snapshot it already handed out (``snapshot_parts``) must stay readable until
        they are taken: a state may still be being written from them."""
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
            hashlib.sha256(state).digest(),
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
    if offset + state_size + TRAILER_SIZE != len(snapshot):
        raise SnapshotError(
            f"snapshot is {len(snapshot)} bytes, its header says "
            f"{offset + state_size + TRAILER_SIZE}"
        )
    state = memoryview(snapshot)[offset : offset + state_size]
    trailer = bytes(snapshot[offset + state_size :])
    if hashlib.sha256(state).digest() != trailer[DIGEST_SIZE:]:
        raise SnapshotError("snapshot's state bytes do not match their SHA-256")
    return state, trailer[:DIGEST_SIZE]


class SnapshotLoader(Protocol):
    """Restores a machine from its snapshot's bytes, fed in order, a part at a time."""

    def feed(self, data: bytes | memoryview) -> None:
        """The next bytes of the snapshot; ``SnapshotError`` if they cannot be its."""
        ...

    def finish(self) -> StateMachine:
        """The machine, once every byte was fed; ``SnapshotError`` if it does not check
        out (the loader has then dropped what it built)."""
        ...

    def abandon(self) -> None:
        """Drop what was built: the rest of the snapshot will not come."""
        ...


class WholeSnapshotLoader:
    """Gathers a snapshot's parts, and restores it once whole with ``restore``."""

    def __init__(self, restore: Callable[[bytes], StateMachine]) -> None:
        self._restore = restore
        self._data = bytearray()

    def feed(self, data: bytes | memoryview) -> None:
        self._data += data

    def finish(self) -> StateMachine:
        data, self._data = bytes(self._data), bytearray()
        return self._restore(data)

    def abandon(self) -> None:
        self._data = bytearray()


class StateLoader(Protocol):
    """Decodes a machine's state (the envelope's inner bytes) into a machine, fed in order;
    raises ``DecodeError`` for bytes that are not a state."""

    def feed(self, data: memoryview) -> None: ...

    def finish(self) -> None: ...


class _WholeStateLoader:
    """Gathers the state's bytes and decodes them once whole (``_decode_state``)."""

    def __init__(self, decode: Callable[[memoryview], None]) -> None:
        self._decode = decode
        self._data = bytearray()

    def feed(self, data: memoryview) -> None:
        self._data += data

    def finish(self) -> None:
        self._decode(memoryview(bytes(self._data)))


class _EnvelopeLoader:
    """A ``SnapshotMachine``'s snapshot, fed a part at a time: the envelope's head, then the
    state's bytes straight to the machine's own ``StateLoader``, then the digest."""

    _HEAD_FIXED = len(SNAPSHOT_MAGIC) + _U16.size + _U32.size

    def __init__(self, machine: SnapshotMachine) -> None:
        self._machine: SnapshotMachine | None = machine
        self._state = machine._state_loader()
        self._head = bytearray()  # until the head is whole
        self._state_left = -1  # state bytes still to come, once the head is read
        self._state_hash = hashlib.sha256()
        self._digest = bytearray()  # the trailer

    def feed(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        try:
            if self._state_left < 0:
                view = self._feed_head(view)
            if self._state_left > 0 and view:
                taken = min(len(view), self._state_left)
                self._state_hash.update(view[:taken])
                self._state.feed(view[:taken])
                self._state_left -= taken
                view = view[taken:]
        except DecodeError as error:
            self.abandon()
            raise SnapshotError(f"snapshot: {error.reason}") from None
        if view:
            self._digest += view
            if len(self._digest) > TRAILER_SIZE:
                self.abandon()
                raise SnapshotError("bytes after the snapshot's digest")

    def _head_size(self) -> int:
        """Bytes of the envelope's head, as far as the bytes held tell."""
        if len(self._head) < self._HEAD_FIXED:
            return self._HEAD_FIXED
        (name_size,) = _U32.unpack_from(self._head, 6)
        return self._HEAD_FIXED + min(int(name_size), MACHINE_NAME_SIZE_MAX + 1) + _U64.size

    def _feed_head(self, view: memoryview) -> memoryview:
        """Take bytes into the head until it is whole (then check it); return the rest."""
        while len(self._head) < self._head_size():
            if not view:
                return view
            taken = min(len(view), self._head_size() - len(self._head))
            self._head += view[:taken]
            view = view[taken:]
        machine = self._machine
        assert machine is not None
        head = self._head
        if head[:4] != SNAPSHOT_MAGIC:
            raise DecodeError("not a Craton state machine snapshot (bad magic)")
        (version,) = _U16.unpack_from(head, 4)
        if version != SNAPSHOT_FORMAT_VERSION:
            raise DecodeError(f"snapshot format {version}, expected {SNAPSHOT_FORMAT_VERSION}")
        name = bytes(head[self._HEAD_FIXED : len(head) - _U64.size])
        if name != machine.name.encode("utf-8"):
            raise DecodeError(f"snapshot is of another machine, expected {machine.name!r}")
        (self._state_left,) = _U64.unpack_from(head, len(head) - _U64.size)
        return view

    def finish(self) -> StateMachine:
        machine = self._machine
        if machine is None:
            raise SnapshotError("the snapshot was abandoned")
        if self._state_left != 0 or len(self._digest) != TRAILER_SIZE:
            self.abandon()
            raise SnapshotError("the snapshot is truncated")
        if self._state_hash.digest() != self._digest[DIGEST_SIZE:]:
            self.abandon()
            raise SnapshotError("snapshot's state bytes do not match their SHA-256")
        try:
            self._state.finish()
        except DecodeError as error:
            self.abandon()
            raise SnapshotError(f"{machine.name} snapshot: {error.reason}") from None
        if machine.digest() != bytes(self._digest[:DIGEST_SIZE]):
            self.abandon()
            raise SnapshotError(f"{machine.name} snapshot does not match its digest")
        self._machine = None
        return machine

    def abandon(self) -> None:
        if self._machine is not None:
            self._machine.close()
            self._machine = None


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

    def apply(self, op: int, body: bytes) -> bytes:
        raise NotImplementedError

    def invariants(self) -> None:
        raise NotImplementedError

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
        size = len(head) + state_size + TRAILER_SIZE

        def parts() -> Iterator[bytes]:
            yield head
            hashed = hashlib.sha256()
            for part in state_parts:
                hashed.update(part)
                yield part
            yield digest + hashed.digest()

        return size, parts()

    @classmethod
    def restore(cls, snapshot: bytes | memoryview, storage: DerivedStorage | None = None) -> Self:
        state, digest = open_snapshot(cls.name, snapshot)
        machine = cls(storage)
        try:
            machine._decode_state(state)
            if machine.digest() != digest:
                raise SnapshotError(f"{cls.name} snapshot does not match its digest")
        except DecodeError as error:
            machine.close()
            raise SnapshotError(f"{cls.name} snapshot: {error.reason}") from None
        except BaseException:
            machine.close()  # (its derived storage failed, or the digest differs)
            raise
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

    @classmethod
    def snapshot_loader(cls, storage: DerivedStorage | None = None) -> SnapshotLoader:
        return _EnvelopeLoader(cls(storage))

    def _state_loader(self) -> StateLoader:
        """What decodes the state fed a part at a time (by default: once whole, with
        ``_decode_state``; a machine whose state can be large decodes it as it comes)."""
        return _WholeStateLoader(self._decode_state)

    def _compute_digest(self) -> bytes:
        raise NotImplementedError
