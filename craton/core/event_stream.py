"""One event stream's index, and its events' bytes in the event store's blob.

A ``Stream`` holds what names the stream (tenant, name, data class, placement, the op
that created it), the SHA-256 chain over its (op, event) pairs, and arrays that say where
its events are in the blob (``craton.core.storage``). It reads them back checked against a
CRC-32 per append, writes them into a checkpoint state, and decodes them from one as the
bytes come (``StreamLoader``). ``craton.core.event_store`` owns the streams and decides
what may be appended; this module keeps the bytes and their index consistent.

In a checkpoint state a stream is held in columns, as memory holds it: its arrays as they
are (little-endian), then its events' bytes in one run. A restore copies them, checks that
they are well-formed, and takes the chain and checksums as the state gives them: the
state's digest vouches for every byte, so nothing is hashed again per event.
"""

from __future__ import annotations

import array
import bisect
import hashlib
import itertools
import operator
import struct
import zlib
from collections.abc import Iterator, Sequence

from craton.core.state_machine import StateSink
from craton.core.storage import BlobFile, DerivedDataError
from craton.core.wire.errors import DecodeError
from craton.core.wire.messages import DataClass, Placement

__all__ = ["AUDIT_STREAM", "READ_RUN_BYTES", "STREAM_EVENTS_MAX", "Stream", "StreamLoader"]

AUDIT_STREAM = "craton:audit"  # each tenant's audit trail
STREAM_EVENTS_MAX = 2**31  # events in one stream
READ_RUN_BYTES = 1 << 20  # bytes of consecutive appends read from the blob at once

CHAIN_START = bytes(32)  # the chain of a stream without events
_CHAIN_LINK = struct.Struct("<QI")  # op, event size: prefixed to each event in the chain
# a stream's columns in a snapshot: append count, event count, and the chain after them
_COLUMNS_HEAD = struct.Struct("<IQ32s")
# arrays are stored little-endian; this machine's own order decides whether they are swapped
_BIG_ENDIAN = array.array("H", [1]).tobytes() == b"\x00\x01"


class Stream:
    """One stream's metadata and where its events are. ``append_ops[i]`` is the op of the
    i-th append and ``append_ends[i]`` the stream's length after it; ``chain`` covers every
    (op, event).

    The events' bytes live in the machine's blob (``craton.core.storage``), each append's
    events one after another from ``append_at[i]``, checked on every read by the CRC-32
    ``append_crcs[i]``. Memory holds arrays only: where each event ends among the stream's
    bytes (u64), and per append its op, end, offset in the blob and checksum, some 36 bytes
    for a one-event append whatever its size."""

    __slots__ = (
        "_blob",
        "_ends",
        "append_at",
        "append_crcs",
        "append_ends",
        "append_ops",
        "chain",
        "created_op",
        "data_class",
        "name",
        "placement",
        "tenant_id",
    )

    def __init__(
        self,
        blob: BlobFile,
        tenant_id: int,
        name: str,
        data_class: DataClass,
        placement: Placement,
        op: int,
    ) -> None:
        self.tenant_id = tenant_id
        self.name = name
        self.data_class = data_class
        self.placement = placement
        self.created_op = op
        self._blob = blob
        self._ends = array.array("Q")  # where event i ends among the stream's bytes
        self.append_ops = array.array("Q")
        self.append_ends = array.array("Q")
        self.append_at = array.array("Q")  # where append i's events start in the blob
        self.append_crcs = array.array("I")  # CRC-32 of append i's events' bytes
        self.chain = CHAIN_START

    @property
    def length(self) -> int:
        """How many events the stream holds."""
        return len(self._ends)

    def events(self, offset: int, stop: int, count_max: int, size_max: int) -> list[bytes]:
        """Events from ``offset`` below ``stop`` (at most ``length``): at most
        ``count_max``, and no more than ``size_max`` bytes of them unless the first alone is
        larger. The appends they come from are read from the blob and checked."""
        events: list[bytes] = []
        size_bytes = 0
        ends, append_ends = self._ends, self.append_ends
        if offset >= stop:
            return events
        index = bisect.bisect_right(append_ends, offset)
        after = bisect.bisect_right(append_ends, stop - 1) + 1  # past the append holding stop - 1
        # read about as many bytes as the reply may hold: the first ``count_max`` events,
        # no more than ``size_max`` of them (an append is always read whole)
        wanted = ends[min(offset + count_max, stop) - 1] - (ends[offset - 1] if offset else 0)
        for at, data, first in self._appends(index, after, max(1, min(size_max, wanted))):
            base = ends[first - 1] if first else 0
            while offset < min(append_ends[at], stop):
                start = ends[offset - 1] if offset else 0
                if len(events) == count_max or (
                    events and size_bytes + ends[offset] - start > size_max
                ):
                    return events
                events.append(data[start - base : ends[offset] - base].tobytes())
                size_bytes += ends[offset] - start
                offset += 1
        return events

    def _appends(
        self, index: int, stop: int, run_bytes: int
    ) -> Iterator[tuple[int, memoryview, int]]:
        """Appends ``index`` up to ``stop``, each as (its index, its events' bytes, its first
        event), checked against their CRC-32s. Appends that lie one after another in the
        blob are read together, about ``run_bytes`` at a time."""
        ends, append_ends, append_at = self._ends, self.append_ends, self.append_at
        while index < stop:
            first = append_ends[index - 1] if index else 0
            run_at = append_at[index]
            run_base = ends[first - 1] if first else 0
            last = index
            run_size = ends[append_ends[last] - 1] - run_base
            while (
                last + 1 < stop
                and run_size < run_bytes
                and append_at[last + 1] == run_at + run_size
            ):
                last += 1
                run_size = ends[append_ends[last] - 1] - run_base
            with memoryview(self._blob.read(run_at, run_size)) as run:
                for at in range(index, last + 1):
                    begin = append_ends[at - 1] if at else 0
                    start = (ends[begin - 1] if begin else 0) - run_base
                    piece = run[start : ends[append_ends[at] - 1] - run_base]
                    if zlib.crc32(piece) != self.append_crcs[at]:
                        raise DerivedDataError(
                            f"stream {self.name!r} of tenant {self.tenant_id}: the events of "
                            f"the append at op {self.append_ops[at]} do not match their checksum"
                        )
                    yield at, piece, begin
            index = last + 1

    def encode_appends(self, sink: StateSink, appends: int, chain: bytes) -> Iterator[bytes]:
        """The first ``appends`` appends (``chain`` after them) as a snapshot holds them:
        u32 append count | u64 event count | 32-byte chain | u64 op of each append | u64
        the stream's length after each | u32 CRC-32 of each one's events | u64 where each
        event ends among the stream's bytes | the events' bytes, one after another. Written
        into ``sink`` (the events read from the blob a run at a time, checked); each part
        the sink fills is yielded."""
        events = self.append_ends[appends - 1] if appends else 0
        sink.buffer += _COLUMNS_HEAD.pack(appends, events, chain)
        for column, count in (
            (self.append_ops, appends),
            (self.append_ends, appends),
            (self.append_crcs, appends),
            (self._ends, events),
        ):
            # a slice at a time, up to where the part ends: the arrays grow meanwhile, so
            # no view of them is kept
            at = 0
            while at < count:
                room = max(1, (sink.part_bytes - len(sink.buffer)) // column.itemsize)
                piece = column[at : min(count, at + room)]
                if _BIG_ENDIAN:
                    piece.byteswap()
                sink.buffer += piece.tobytes()
                at += len(piece)
                if (part := sink.cut()) is not None:
                    yield part
        for _, data, _ in self._appends(0, appends, READ_RUN_BYTES):
            sink.buffer += data
            if (part := sink.cut()) is not None:
                yield part

    def encoded_size(self, appends: int) -> int:
        """Bytes ``encode_appends`` writes for the first ``appends`` appends."""
        events = self.append_ends[appends - 1] if appends else 0
        data_bytes = self._ends[events - 1] if events else 0
        return _COLUMNS_HEAD.size + appends * 20 + events * 8 + data_bytes

    def append(self, op: int, events: Sequence[bytes]) -> None:
        # an audit stream is created by the op of its first record, so that op may append
        assert op > self.append_ops[-1] if self.append_ops else op >= self.created_op
        assert events and self.length + len(events) <= STREAM_EVENTS_MAX
        chain = self.chain
        ends = self._ends
        size = ends[-1] if ends else 0
        for event in events:
            chain = hashlib.sha256(chain + _CHAIN_LINK.pack(op, len(event)) + event).digest()
            size += len(event)
            ends.append(size)
        self.chain = chain
        data = b"".join(events)
        self.append_at.append(self._blob.append(data))
        self.append_crcs.append(zlib.crc32(data))
        self.append_ops.append(op)
        self.append_ends.append(len(ends))

    def invariants(self) -> None:
        assert len(self._ends) <= STREAM_EVENTS_MAX
        appends = len(self.append_ops)
        assert appends == len(self.append_ends) == len(self.append_at) == len(self.append_crcs)

    def length_as_of(self, position: int) -> int:
        """How many events the stream held when the log ended at ``position``."""
        index = bisect.bisect_right(self.append_ops, position)
        return self.append_ends[index - 1] if index else 0


class StreamLoader:
    """A stream's columns (``Stream.encode_appends``) decoded into an empty stream as the
    bytes come: ``take`` decodes what it is given, whole array items at a time, and the
    events' bytes go to the blob as they arrive, so that no more than a part is held."""

    __slots__ = ("_columns", "_data_at", "_data_left", "_op_next", "_stream", "done")

    def __init__(self, stream: Stream, op_next: int) -> None:
        assert not stream.append_ops, "a stream is loaded once, empty"
        self._stream = stream
        self._op_next = op_next
        self._columns: list[tuple[array.array[int], int]] | None = None  # once the head is in
        self._data_left = 0
        self._data_at = -1  # where the events' bytes start in the blob
        self.done = False

    @property
    def stream(self) -> Stream:
        return self._stream

    def take(self, data: bytes | memoryview, at: int) -> int:
        """Decode from ``at`` as much of ``data`` as is whole; return where it stopped.
        ``DecodeError`` if what it holds cannot be this stream's."""
        stream = self._stream
        if self._columns is None:
            if len(data) - at < _COLUMNS_HEAD.size:
                return at
            appends, events, chain = _COLUMNS_HEAD.unpack_from(data, at)
            at += _COLUMNS_HEAD.size
            if not appends <= events <= STREAM_EVENTS_MAX or (events and not appends):
                raise DecodeError(f"a stream of {appends} appends and {events} events")
            stream.chain = chain
            self._columns = [
                (stream.append_ops, appends),
                (stream.append_ends, appends),
                (stream.append_crcs, appends),
                (stream._ends, events),
            ]
        while self._columns:
            column, count = self._columns[0]
            items = min(count - len(column), (len(data) - at) // column.itemsize)
            if items:
                end = at + items * column.itemsize
                column.frombytes(data[at:end])
                at = end
            if len(column) < count:
                return at
            if _BIG_ENDIAN:
                column.byteswap()
            del self._columns[0]
            if not self._columns:
                self._check_columns()
                self._data_left = stream._ends[-1] if stream._ends else 0
        taken = min(self._data_left, len(data) - at)
        if taken or self._data_at < 0:
            offset = stream._blob.append(data[at : at + taken])
            self._data_at = offset if self._data_at < 0 else self._data_at
            at += taken
            self._data_left -= taken
        if not self._data_left:
            self._place_appends()
            self.done = True
        return at

    def _check_columns(self) -> None:
        """Ops increasing from the stream's creation to below ``op_next``, every append
        holding an event or more, events' ends never decreasing: what finding and reading
        events relies on. (One pass over each array: a restore checks millions of items.
        The limits on sizes were enforced when the events were appended, and the state's
        bytes are checked against their SHA-256 before the machine is used.)"""
        stream = self._stream
        ops, append_ends, ends = stream.append_ops, stream.append_ends, stream._ends
        if not ops:
            return
        first = ops[0]
        # an audit stream's first record is appended by the op that created the stream
        audit = stream.name == AUDIT_STREAM
        if not (first > stream.created_op or (audit and first == stream.created_op)):
            raise DecodeError(f"an append at op {first}, before the stream was created")
        if ops[-1] >= self._op_next:
            raise DecodeError(f"an append at op {ops[-1]}, not before {self._op_next}")
        if not all(map(operator.lt, ops, itertools.islice(ops, 1, None))):
            raise DecodeError("the appends' ops are not increasing")
        if not (
            append_ends[0] >= 1
            and append_ends[-1] == len(ends)
            and all(map(operator.lt, append_ends, itertools.islice(append_ends, 1, None)))
        ):
            raise DecodeError("an append of no events, or appends out of order")
        if not all(map(operator.le, ends, itertools.islice(ends, 1, None))):
            raise DecodeError("the events' ends are out of order")

    def _place_appends(self) -> None:
        """Where each append's events start in the blob: the stream's bytes lie there one
        after another from where the first was put."""
        stream = self._stream
        base, ends, append_ends = self._data_at, stream._ends, stream.append_ends
        if not append_ends:
            return
        # append i > 0 starts where the last event of append i - 1 ends
        lasts = map(
            operator.sub, itertools.islice(append_ends, len(append_ends) - 1), itertools.repeat(1)
        )
        starts = map(operator.add, map(ends.__getitem__, lasts), itertools.repeat(base))
        stream.append_at = array.array("Q", itertools.chain((base,), starts))
