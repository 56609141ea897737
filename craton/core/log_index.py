"""Where a log's records are: its segments, and the offset of each record from the index's
start on (``craton.core.log`` keeps one ``LogIndex``).

The index holds 8 bytes a record. It starts at the log's base for a log that salvages (a
replica's), and at the latest sealed checkpoint for one that does not (a single node's):
recovery starts there, and each sealed checkpoint drops the places below it, so memory does
not grow with the log. The segments wholly below the start are known by their sizes only.
Records below the start are found again when read (``Backfill``, driven by the log): from
the latest sealed checkpoint at or below them, whose seal names the segment and offset its
record starts at, up to where the index starts, and put before the index (``prepend``).
"""

from __future__ import annotations

import array
import bisect

import attrs

from craton.core.record import GENESIS_HASH
from craton.core.seal import ENTRY_SIZE, Checkpoint, SealError, decode_entry, verify_seal

SEGMENT_FOLDER = "log"
HISTORY_CHUNK_ENTRIES = 512  # sealed checkpoints read at once, searching the history


def segment_path(segment: int) -> str:
    return f"{SEGMENT_FOLDER}/{segment:010d}.seg"


@attrs.define
class Segment:
    number: int
    first_position: int
    size: int = 0  # bytes submitted for writing (durable or in flight)
    offsets: array.array[int] = attrs.field(factory=lambda: array.array("Q"))

    @property
    def path(self) -> str:
        return segment_path(self.number)


class LogIndex:
    """The segments from the one holding ``start`` on, each with the offsets of its records
    from ``start`` on; ``start_at`` is (segment, offset) of record ``start`` and
    ``start_hash`` the chain hash before it; ``unindexed`` the sizes of the segments below."""

    def __init__(self) -> None:
        self.segments: list[Segment] = []
        self._firsts: list[int] = []
        self.start = 0
        self.start_at = (0, 0)
        self.start_hash = GENESIS_HASH
        self.unindexed: dict[int, int] = {}

    def reset(
        self, start: int, at: tuple[int, int], chain: bytes, unindexed: dict[int, int]
    ) -> None:
        """Empty: the index starts at record ``start``, at (segment, offset) ``at``."""
        self.segments, self._firsts = [], []
        self.start, self.start_at, self.start_hash = start, at, chain
        self.unindexed = unindexed

    def add(self, segment: Segment) -> None:
        assert not self.segments or self.segments[-1].number + 1 == segment.number
        self.segments.append(segment)
        self._firsts.append(segment.first_position)

    def find(self, position: int) -> tuple[Segment, int]:
        """The segment whose records include ``position`` (at or past the start), and its
        slot there."""
        segment = self.segments[max(0, bisect.bisect_right(self._firsts, position) - 1)]
        return segment, position - segment.first_position

    def location(self, position: int) -> tuple[str, int, int] | None:
        """(file, offset, size) of record ``position``: None below the start, or while it
        waits for a batch."""
        if position < self.start:
            return None
        segment, slot = self.find(position)
        offsets = segment.offsets
        if slot >= len(offsets):
            return None
        end = offsets[slot + 1] if slot + 1 < len(offsets) else segment.size
        return segment.path, offsets[slot], end - offsets[slot]

    def run(self, position: int, count_max: int, bytes_max: int) -> tuple[Segment, int, int, int]:
        """The records from ``position`` that lie one after another in its segment, up to
        ``count_max`` and ``bytes_max`` (one at least): (segment, offset, size, count)."""
        segment, slot = self.find(position)
        offsets = segment.offsets
        offset = offsets[slot]
        taken = 1
        end = offsets[slot + 1] if slot + 1 < len(offsets) else segment.size
        while taken < count_max and slot + taken < len(offsets):
            after = slot + taken + 1
            further = offsets[after] if after < len(offsets) else segment.size
            if further - offset > bytes_max:
                break
            taken, end = taken + 1, further
        return segment, offset, end - offset, taken

    def drop_after(self, position: int) -> None:
        """Forget the segments that start past ``position`` (a truncation emptied them)."""
        while len(self.segments) > 1 and self.segments[-1].first_position > position:
            self.segments.pop()
            self._firsts.pop()

    def forget_before(self, checkpoint: Checkpoint) -> None:
        """Start at ``checkpoint``'s record: the places below it leave memory."""
        position, number = checkpoint.position, checkpoint.segment
        if position <= self.start or not self.segments:
            return
        if not self.segments[0].number <= number <= self.segments[-1].number:
            return
        at = number - self.segments[0].number
        segment = self.segments[at]
        if not 0 <= position - segment.first_position <= len(segment.offsets):
            return
        for dropped in self.segments[:at]:
            self.unindexed[dropped.number] = dropped.size
        del self.segments[:at], self._firsts[:at]
        del segment.offsets[: position - segment.first_position]
        segment.first_position = self._firsts[0] = position
        self.start, self.start_at = position, (number, checkpoint.offset)
        self.start_hash = checkpoint.chain_hash

    def end_below(self, segment: int) -> int:
        """Where the records below the start end in ``segment``."""
        number, offset = self.start_at
        return offset if segment == number else self.unindexed[segment]

    def prepend(self, found: Backfill) -> None:
        """Put the places ``found`` before the index's: it now starts where they do."""
        *below, joining = found.pieces
        first = self.segments[0]
        assert first.number == joining.number and first.first_position == self.start
        joining.offsets.extend(first.offsets)
        first.offsets, first.first_position = joining.offsets, joining.first_position
        self.segments[:0] = below
        self._firsts = [segment.first_position for segment in self.segments]
        for segment in found.pieces:
            self.unindexed.pop(segment.number, None)
        self.start, self.start_at, self.start_hash = found.start, found.start_at, found.start_hash

    def check(self, base: int) -> int:
        """Assert what the index keeps; returns the position past its last record."""
        assert base <= self.start
        assert all(number < self.start_at[0] for number in self.unindexed)
        first = self.start
        for segment in self.segments:
            assert segment.first_position == first
            first += len(segment.offsets)
        return first


@attrs.define
class Backfill:
    """Records below the index being found again, for the reads that wait on them: from a
    sealed checkpoint at or below ``wanted`` (or the log's base), segment by segment up to
    where the index starts, each piece scanned as recovery scans and required to lead to the
    chain hash the index starts after."""

    wanted: int  # the lowest position asked for
    history_end: int = 0  # bytes of the history still to search (backwards)
    position: int = 0  # the next record to place ...
    segment: int = 0  # ... in this segment ...
    offset: int = 0  # ... at this offset ...
    hash: bytes = GENESIS_HASH  # ... after this chain hash
    start: int = 0  # where the found records begin: this record, its segment and offset,
    start_at: tuple[int, int] = (0, 0)
    start_hash: bytes = GENESIS_HASH  # and the chain hash before it
    pieces: list[Segment] = attrs.field(factory=list)
    attempts: int = 0
    seen_damage: bytes | None = None

    def begin(self, position: int, segment: int, offset: int, chain: bytes) -> None:
        self.start = self.position = position
        self.start_at, self.start_hash = (segment, offset), chain
        self.segment, self.offset, self.hash = segment, offset, chain

    def history_chunk(self) -> tuple[int, int]:
        """(offset, size) of the next chunk of the history to search, backwards."""
        start = max(0, self.history_end - HISTORY_CHUNK_ENTRIES * ENTRY_SIZE)
        return start, self.history_end - start

    def search(
        self, chunk: bytes, index: LogIndex, base: int, base_segment: int, public_key: bytes
    ) -> Checkpoint | None:
        """The latest sealed checkpoint in ``chunk`` (the history's bytes from
        ``history_chunk``) to start from: past the base, at or below ``wanted``, in the
        segments below the index, with a valid seal. Damaged entries are passed over. None:
        not in this chunk (``history_end`` then names what is left to search)."""
        start, _ = self.history_chunk()
        for at in range(len(chunk) - ENTRY_SIZE, -1, -ENTRY_SIZE):
            try:
                found = decode_entry(chunk[at : at + ENTRY_SIZE])
            except SealError:
                continue
            if (
                base < found.position <= self.wanted
                and base_segment <= found.segment <= index.start_at[0]
                and found.offset <= index.end_below(found.segment)
                and verify_seal(public_key, found)
            ):
                return found
            if found.position <= base:
                start = 0  # nothing earlier is past the base
                break
        self.history_end = start
        return None
