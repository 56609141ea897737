"""One event stream's index, and its events' bytes in the event store's blob.

A ``Stream`` holds what names the stream (tenant, name, data class, placement, the op
that created it), the SHA-256 chain over its (op, event) pairs, and arrays that say where
its events are in the blob (``craton.core.storage``). It reads them back checked against a
CRC-32 per append, writes them into a checkpoint state a run of appends at a time, and
decodes them from one as the bytes come. ``craton.core.event_store`` owns the streams and
decides what may be appended; this module keeps the bytes and their index consistent.
"""

from __future__ import annotations

import array
import bisect
import hashlib
import struct
import zlib
from collections.abc import Iterator, Sequence

from craton.core.state_machine import StateSink
from craton.core.storage import BlobFile, DerivedDataError
from craton.core.wire.errors import DecodeError
from craton.core.wire.messages import APPEND_EVENTS_MAX, EVENT_SIZE_MAX, DataClass, Placement
from craton.core.wire.schema import Reader

__all__ = ["AUDIT_STREAM", "READ_RUN_BYTES", "STREAM_EVENTS_MAX", "Stream"]

AUDIT_STREAM = "craton:audit"  # each tenant's audit trail
STREAM_EVENTS_MAX = 2**31  # events in one stream
READ_RUN_BYTES = 1 << 20  # bytes of consecutive appends read from the blob at once

CHAIN_START = bytes(32)  # the chain of a stream without events
_CHAIN_LINK = struct.Struct("<QI")  # op, event size: prefixed to each event in the chain
_U32 = struct.Struct("<I")
_OP_COUNT = struct.Struct("<QI")  # an append's op and its event count, in a snapshot


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

    def encode_appends(self, sink: StateSink, appends: int) -> Iterator[bytes]:
        """The first ``appends`` appends as a snapshot holds them: u32 append count | each
        append: u64 op | its events as ``_APPENDED_EVENTS`` encodes them (a u32 count, then
        each event as a u32 length and its bytes), written into ``sink`` from the blob a
        run of appends at a time; each part the sink fills is yielded."""
        ends, append_ends = self._ends, self.append_ends
        out = sink.buffer
        out += _U32.pack(appends)
        for index, data, first in self._appends(0, appends, READ_RUN_BYTES):
            if (part := sink.cut()) is not None:
                yield part
                out = sink.buffer
            end = append_ends[index]
            out += _OP_COUNT.pack(self.append_ops[index], end - first)
            at = 0
            base = ends[first - 1] if first else 0
            for offset in range(first, end):
                stop = ends[offset] - base
                out += _U32.pack(stop - at)
                out += data[at:stop]
                at = stop

    def encoded_size(self, appends: int) -> int:
        """Bytes ``encode_appends`` writes for the first ``appends`` appends."""
        events = self.append_ends[appends - 1] if appends else 0
        data_bytes = self._ends[events - 1] if events else 0
        return _U32.size + appends * _OP_COUNT.size + events * _U32.size + data_bytes

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

    def load_appends(self, reader: Reader, op_next: int) -> None:
        """Decode what ``encode_appends`` wrote into this (empty) stream."""
        appends = reader.length("append count", 0, STREAM_EVENTS_MAX)
        at, left = self.load_some(reader.data, reader.offset, appends, op_next)
        if left:
            raise DecodeError("the snapshot ends inside an append")
        reader.offset = at

    def load_some(
        self, data: bytes | memoryview, at: int, appends: int, op_next: int
    ) -> tuple[int, int]:
        """Decode at most ``appends`` appends of what ``encode_appends`` wrote, from ``at``
        in ``data``: as many as ``data`` holds whole. Each append's events go to the blob in
        one piece, chained as they go (the chain is recomputed, never taken from the
        snapshot). Returns where the next append begins, and how many are left."""
        ends = self._ends
        chain = self.chain
        size_total = ends[-1] if ends else 0
        last = self.append_ops[-1] if self.append_ops else self.created_op
        first = not self.append_ops
        # (bound once: this loop runs once per append of a restored state)
        sha256, link_of, crc32 = hashlib.sha256, _CHAIN_LINK.pack, zlib.crc32
        unpack_u32, unpack_op_count = _U32.unpack_from, _OP_COUNT.unpack_from
        add_end, add_at, add_crc = ends.append, self.append_at.append, self.append_crcs.append
        add_op, add_append_end, blob_append = (
            self.append_ops.append,
            self.append_ends.append,
            self._blob.append,
        )
        audit = self.name == AUDIT_STREAM
        size_max, length = EVENT_SIZE_MAX, len(data)
        with memoryview(data) as view:
            while appends:
                start = at
                if at + _OP_COUNT.size > length:
                    break
                op, count = unpack_op_count(data, at)
                at += _OP_COUNT.size
                # an audit stream's first record is appended by the op that created the stream
                if not (last < op or (first and audit and op == last)) or op >= op_next:
                    raise DecodeError(f"append at op {op} is not between ops {last} and {op_next}")
                if not 1 <= count <= APPEND_EVENTS_MAX:
                    raise DecodeError(f"an append of {count} events")
                if len(ends) + count > STREAM_EVENTS_MAX:
                    raise DecodeError(f"a stream holds more than {STREAM_EVENTS_MAX} events")
                pieces: list[memoryview] = []
                for _ in range(count):
                    if at + 4 > length:
                        break
                    (size,) = unpack_u32(data, at)
                    if size > size_max:
                        raise DecodeError(f"an event of {size} bytes")
                    if at + 4 + size > length:
                        break
                    at += 4
                    pieces.append(view[at : at + size])
                    at += size
                if len(pieces) < count:  # the append goes on past ``data``
                    at = start
                    break
                for event in pieces:
                    link = sha256(chain + link_of(op, len(event)))
                    link.update(event)
                    chain = link.digest()
                    size_total += len(event)
                    add_end(size_total)
                joined = pieces[0] if count == 1 else b"".join(pieces)
                add_at(blob_append(joined))
                add_crc(crc32(joined))
                add_op(op)
                add_append_end(len(ends))
                last = op
                first = False
                appends -= 1
        self.chain = chain
        return at, appends

    def invariants(self) -> None:
        assert len(self._ends) <= STREAM_EVENTS_MAX
        appends = len(self.append_ops)
        assert appends == len(self.append_ends) == len(self.append_at) == len(self.append_crcs)

    def length_as_of(self, position: int) -> int:
        """How many events the stream held when the log ended at ``position``."""
        index = bisect.bisect_right(self.append_ops, position)
        return self.append_ends[index - 1] if index else 0
