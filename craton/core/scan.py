"""Scanning a segment's bytes: which records are intact, and what the first damage means.

``scan_segment`` is the one place that reads a segment: recovery uses it on the bytes the
disk returned, and ``craton verify`` on the bytes of a file. It walks records from an offset,
checking header checksums, positions and hash links always, and body checksums and chain
hashes from ``verify_from`` on. The first damaged spot ends the scan with one of two
verdicts:

- ``Torn``: damage that only an interrupted, never-acknowledged write can explain, which
  recovery may cut off: a header or body that runs past the end of the file; a tail of
  zeros; or a bad record in the final segment at or above the certified watermark with no
  later header certifying it. Certified means "known durable": below the superblock's
  ``durable_before``, below the latest checkpoint, or below any later header's
  ``durable_before`` (each record names how far the log was synced when it was written).
- ``Corrupt``: anything else. A damaged record that was certified durable is never cut
  off; its file, offset and position are reported.
"""

from __future__ import annotations

import array
from collections.abc import Mapping

import attrs

from craton.core.record import (
    HEADER_SIZE,
    MAGIC,
    RecordError,
    RecordHeader,
    check_body,
    decode_header,
    intact_header,
)


@attrs.frozen
class Clean:
    """Every byte of the scanned range belongs to an intact record."""


@attrs.frozen
class Torn:
    """An unacknowledged tail starts at ``offset``: cut the file there.

    ``whole``: the damaged record is all there, with an intact header, and only its body
    does not check out. An interrupted append leaves a record short (or zeros), so this is
    more likely a synced record that rotted or was overwritten; it can only be called torn
    because nothing later certifies it. A replica's log, which can ask its peers, treats it
    as damage to repair rather than cut it (it may have been acknowledged)."""

    offset: int
    reason: str
    whole: bool = False


@attrs.frozen
class Corrupt:
    """Damage at ``offset`` (record ``position``, when known) that must not be dropped."""

    offset: int
    position: int
    reason: str


Verdict = Clean | Torn | Corrupt


@attrs.define
class SegmentScan:
    """What a scan of one segment found. ``offsets[i]`` is where record
    ``first_position + i`` starts; ``end`` is where the intact records end."""

    first_position: int
    offsets: array.array[int]
    end: int
    last_hash: bytes
    durable_before_max: int
    verdict: Verdict = Clean()
    hashes: list[bytes] = attrs.field(factory=list)  # of the records from ``verify_from`` on

    @property
    def next_position(self) -> int:
        return self.first_position + len(self.offsets)


def scan_segment(
    data: bytes,
    *,
    base_offset: int,
    first_position: int,
    prev_hash: bytes,
    verify_from: int,
    certified: int,
    may_tear: bool,
    sealed: Mapping[int, bytes] | None = None,
) -> SegmentScan:
    """Scan ``data`` (a segment's bytes from ``base_offset`` to its end of file).

    ``prev_hash`` is the chain hash before ``first_position``; ``verify_from`` is the first
    position whose body is checked; ``may_tear`` is True only for the final segment;
    ``sealed`` maps positions to the chain hashes that checkpoints vouch for."""
    view = memoryview(data)
    scan = SegmentScan(first_position, array.array("Q"), base_offset, prev_hash, 0)
    at = 0
    while at < len(data):
        position = scan.next_position
        if position < verify_from and not (sealed and position in sealed):
            # Below ``verify_from`` only the header is checked: the fast path, for the
            # records that are intact (anything else takes the path below, which says why).
            intact = intact_header(data, at, position, scan.last_hash)
            if intact is not None:
                size, own_hash, durable_before = intact
                scan.offsets.append(base_offset + at)
                scan.last_hash = own_hash
                scan.durable_before_max = max(scan.durable_before_max, durable_before)
                at += size
                scan.end = base_offset + at
                continue
        header, problem = _check_one(view, at, position, scan.last_hash, verify_from)
        if problem is not None:
            verdict = _judge(view, at, position, header, problem, certified, may_tear)
            scan.verdict = attrs.evolve(verdict, offset=base_offset + at)
            return scan
        assert header is not None
        if sealed and sealed.get(position, header.hash) != header.hash:
            reason = "hash differs from the one the checkpoint sealed"
            scan.verdict = Corrupt(base_offset + at, position, reason)
            return scan
        scan.offsets.append(base_offset + at)
        if position >= verify_from:
            scan.hashes.append(header.hash)
        scan.last_hash = header.hash
        scan.durable_before_max = max(scan.durable_before_max, header.durable_before)
        at += header.size
        scan.end = base_offset + at
    return scan


# What _check_one found wrong: (kind, reason). Kinds: "header" (unreadable header), "place"
# (wrong position or broken link: a record that does not belong here), "short" (runs past
# the end of the file), "body" (body checksum or chain hash).
Problem = tuple[str, str]


def _check_one(
    view: memoryview, at: int, position: int, prev_hash: bytes, verify_from: int
) -> tuple[RecordHeader | None, Problem | None]:
    """Check the record at ``at``: (header, None) when intact, else (header or None, why)."""
    try:
        header = decode_header(view[at : at + HEADER_SIZE])
    except RecordError as error:
        return None, ("header", error.reason)
    if header.position != position:
        return header, ("place", f"record claims position {header.position}")
    if header.prev_hash != prev_hash:
        return header, ("place", "broken hash link to the previous record")
    if at + header.size > len(view):
        return header, ("short", "record runs past the end of the file")
    if position >= verify_from:
        try:
            check_body(header, view[at + HEADER_SIZE : at + header.size])
        except RecordError as error:
            return header, ("body", error.reason)
    return header, None


def _judge(
    view: memoryview,
    at: int,
    position: int,
    header: RecordHeader | None,
    problem: Problem,
    certified: int,
    may_tear: bool,
) -> Torn | Corrupt:
    """Torn or Corrupt, for the damage found at ``at`` (see the module docstring)."""
    kind, reason = problem
    if not may_tear or position < certified:
        return Corrupt(at, position, f"{reason} (record was certified durable)")
    if kind == "header":
        if len(view) - at < HEADER_SIZE:
            return Torn(at, "header runs past the end of the file")
        if not any(view[at:]):
            return Torn(at, "zero-filled tail")
        return Corrupt(at, position, reason)
    if kind == "place":
        return Corrupt(at, position, reason)
    if kind == "short":
        return Torn(at, reason)
    assert kind == "body" and header is not None
    if _later_certification(view, at + header.size) > position:
        return Corrupt(at, position, f"{reason} (a later record certifies it durable)")
    return Torn(at, reason, whole=True)


def _later_certification(view: memoryview, at: int) -> int:
    """The highest ``durable_before`` among the readable headers from ``at`` on. Past an
    unreadable spot (a write that landed elsewhere can cover several records) the walk
    goes on from the next valid header found by its magic: a header is checksummed, so
    only a real record's header counts."""
    data = bytes(view)  # (only damage is judged here: the copy is rare)
    highest = 0
    while at + HEADER_SIZE <= len(view):
        try:
            header = decode_header(view[at : at + HEADER_SIZE])
        except RecordError:
            found = _next_header(data, at + 1)
            if found is None:
                break
            at, header = found
        highest = max(highest, header.durable_before)
        at += header.size
    return highest


def _next_header(data: bytes, start: int) -> tuple[int, RecordHeader] | None:
    """The first offset from ``start`` holding a valid header (of any position)."""
    view = memoryview(data)
    found = data.find(MAGIC, start + 32)
    while found >= 0:
        try:
            return found - 32, decode_header(view[found - 32 : found - 32 + HEADER_SIZE])
        except RecordError:
            found = data.find(MAGIC, found + 1)
    return None


# --- salvage: what survives past the first damaged record -----------------------------------


@attrs.frozen
class Salvaged:
    """A record found past damage. ``body`` is None for a damaged record (a hole); ``hash``
    is its chain hash, vouched for by its own intact header or by the next record's link,
    or None when nothing vouches for it."""

    position: int
    hash: bytes | None
    body: bytes | None


@attrs.frozen
class SalvagedTail:
    records: tuple[Salvaged, ...]
    complete: bool  # the records reach the end of the scanned bytes (or a torn end)


def salvage_tail(data: bytes, *, at: int, position: int) -> SalvagedTail:
    """The records from ``at`` (where record ``position`` is damaged) to the end of
    ``data``: each intact one with its body, each damaged one as a hole. A damaged header
    hides the record's length, so the next record is found by searching for a valid header
    that claims the next position. Links between the records are not checked here: whoever
    fills a hole checks that everything chains."""
    view = memoryview(data)
    records: list[Salvaged] = []
    while at < len(view):
        if len(view) - at < HEADER_SIZE or not any(view[at:]):
            return SalvagedTail(tuple(records), True)  # a torn or zero-filled end
        header = _header_claiming(view, at, position)
        if header is not None and at + header.size <= len(view):
            try:
                body: bytes | None = check_body(header, view[at + HEADER_SIZE : at + header.size])
            except RecordError:
                body = None
            records.append(Salvaged(position, header.hash, body))
            at += header.size
            position += 1
            continue
        found = _find_header(data, at + 1, position + 1)
        if found is None and len(view) - at < 2 * HEADER_SIZE:
            # Too few bytes left for two records: this was the last record, its hash is
            # unknown (a replica accepts it only from a log of the same view).
            records.append(Salvaged(position, None, None))
            return SalvagedTail(tuple(records), True)
        if found is None:
            return SalvagedTail(tuple(records), False)  # how many records were here is unknown
        at, following = found
        records.append(Salvaged(position, following.prev_hash, None))
        position += 1
    return SalvagedTail(tuple(records), True)


def _header_claiming(view: memoryview, at: int, position: int) -> RecordHeader | None:
    try:
        header = decode_header(view[at : at + HEADER_SIZE])
    except RecordError:
        return None
    return header if header.position == position else None


def _find_header(data: bytes, start: int, position: int) -> tuple[int, RecordHeader] | None:
    """The first offset from ``start`` holding a valid header that claims ``position``
    (the magic sits 32 bytes into a header)."""
    view = memoryview(data)
    found = data.find(MAGIC, start + 32)
    while found >= 0:
        header = _header_claiming(view, found - 32, position)
        if header is not None:
            return found - 32, header
        found = data.find(MAGIC, found + 1)
    return None


def torn_or_damaged(data: bytes, torn: Torn, position: int) -> Torn | Corrupt:
    """An interrupted write leaves nothing intact after the point where it tore: when
    intact records follow the damage, it is damage (a write that landed elsewhere, a torn
    write the disk reported as done), and the records it hides may have been acknowledged."""
    tail = salvage_tail(data, at=torn.offset, position=position)
    if any(item.body is not None for item in tail.records):
        reason = f"{torn.reason}, yet intact records follow: damage, not a torn write"
        return Corrupt(torn.offset, position, reason)
    return torn
