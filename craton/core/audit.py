"""The offline audit of a data directory: every checksum, the whole chain, every seal.

``audit`` is pure: it is handed the directory's listing and a way to read a file's bytes
(``craton verify`` reads real files; tests hand it the simulated disk). Unlike recovery it
checks every record body from position 0 and every entry of the checkpoint history, and it
changes nothing. A torn, never-acknowledged tail is reported as a warning, not a failure:
it is exactly what recovery would cut off.

A replica's directory is judged by the rules its node recovers by: its witness file
(``durable``, see ``craton.core.log``) certifies how far the log was durable, so a log that
ends short of the mark, or is torn inside records below it, is damage (data the node
acknowledged is missing and must be repaired from the peers), never a harmless torn tail;
and a whole record whose body does not check out is damage too, as the node judges it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import attrs

from craton.core import superblock
from craton.core.log import (
    CHECKPOINTS_PATH,
    SEGMENT_NAME,
    WITNESS_PATH,
    segment_path,
    witness_mark,
)
from craton.core.record import GENESIS_HASH
from craton.core.scan import Corrupt, Torn, scan_segment, torn_or_damaged
from craton.core.seal import ENTRY_SIZE, Checkpoint, SealError, decode_entry, verify_seal


@attrs.define
class AuditReport:
    records: int = 0  # the position past the last record (records counted from ``base``)
    base: int = 0  # the log's first record (see ``craton.core.superblock``)
    segments: int = 0
    checkpoints: int = 0
    head_hash: bytes = GENESIS_HASH
    public_key: bytes = b""
    problem: str | None = None  # the first broken thing, with its location
    warnings: list[str] = attrs.field(factory=list)

    @property
    def ok(self) -> bool:
        return self.problem is None


def audit(
    segment_names: list[str],
    read: Callable[[str], bytes],
    *,
    public_key: bytes | None = None,
) -> AuditReport:
    """Audit a data directory whose ``log/`` folder lists ``segment_names``."""
    report = AuditReport()
    chosen = superblock.choose(read(superblock.PATH))
    if chosen is None:
        report.problem = f"file '{superblock.PATH}': no valid copy among {superblock.COPIES}"
        return report
    report.public_key = chosen.public_key
    if public_key is not None and public_key != chosen.public_key:
        report.problem = f"file '{superblock.PATH}': sealed by a different key than the pinned one"
        return report
    history, problem = _read_history(read(CHECKPOINTS_PATH), chosen.checkpoint_count)
    if problem is None and history and history[-1] != chosen.checkpoint:
        problem = f"file '{CHECKPOINTS_PATH}': last entry differs from the superblock's checkpoint"
    for index, entry in enumerate(history):
        if problem is None and not verify_seal(chosen.public_key, entry):
            problem = f"file '{CHECKPOINTS_PATH}': entry {index} (position {entry.position})"
            problem += " has an invalid signature"
    if problem is not None:
        report.problem = problem
        return report
    report.checkpoints = len(history)
    numbers = sorted(int(m.group(1)) for m in map(SEGMENT_NAME.match, segment_names) if m)
    if numbers != list(range(len(numbers))):
        report.problem = f"folder 'log': segments are not numbered 0..n-1: {numbers}"
        return report
    problem = _audit_base(report, chosen, len(numbers), read)
    if problem is not None:
        report.problem = problem
        return report
    sealed = {entry.position - 1: entry.chain_hash for entry in history if entry.position}
    witness = witness_mark(read(WITNESS_PATH))
    certified = max(chosen.durable_before, max((e.position for e in history), default=0))
    by = "the superblock and checkpoints"
    if witness is not None and witness > certified:
        certified, by = witness, f"the witness file '{WITNESS_PATH}'"
    end = _audit_segments(
        report, numbers[chosen.base_segment :], read, sealed, certified, witness is not None
    )
    if report.ok and report.records < certified:
        report.problem = (
            f"{end}: the log ends at record {report.records}, but records below {certified} "
            f"were certified durable (by {by}): acknowledged records are missing"
        )
    return report


def _audit_base(
    report: AuditReport, chosen: superblock.Superblock, segments: int, read: Callable[[str], bytes]
) -> str | None:
    """Start the report at the log's base, once its state file matches its digest."""
    if chosen.base_segment > segments:
        return f"folder 'log': the base is segment {chosen.base_segment} of {segments}"
    if not chosen.base_position:
        return None
    path = superblock.state_path(chosen.base_position)
    data = read(path)
    if len(data) != chosen.base_size or hashlib.sha256(data).digest() != chosen.base_digest:
        return f"file '{path}': the base state does not match the superblock's digest"
    report.base = report.records = chosen.base_position
    report.head_hash = chosen.base_hash
    return None


def _read_history(data: bytes, count: int) -> tuple[list[Checkpoint], str | None]:
    if len(data) < count * ENTRY_SIZE:
        return [], f"file '{CHECKPOINTS_PATH}': {len(data)} bytes hold fewer than {count} entries"
    history = []
    for index in range(count):
        try:
            history.append(decode_entry(data[index * ENTRY_SIZE : (index + 1) * ENTRY_SIZE]))
        except SealError as error:
            offset = index * ENTRY_SIZE
            return [], f"file '{CHECKPOINTS_PATH}' offset {offset}: entry {index}: {error.reason}"
    return history, None


def _audit_segments(
    report: AuditReport,
    numbers: list[int],
    read: Callable[[str], bytes],
    sealed: dict[int, bytes],
    certified: int,
    replica: bool,
) -> str:
    """Scan the segments in order; the location where the log ends (``file '…' offset N``).
    ``replica``: the directory has a witness, so a whole record that does not check out is
    damage, as the node judges it, not a torn write."""
    end = "folder 'log'"
    for number in numbers:
        path = segment_path(number)
        data = read(path)
        scan = scan_segment(
            data,
            base_offset=0,
            first_position=report.records,
            prev_hash=report.head_hash,
            verify_from=0,
            certified=certified,
            may_tear=number == numbers[-1],
            sealed=sealed,
        )
        report.segments += 1
        report.records = scan.next_position
        report.head_hash = scan.last_hash
        verdict = scan.verdict
        end = f"file '{path}' offset {len(data)}"
        if isinstance(verdict, Torn):  # as recovery judges it: intact records after it?
            verdict = torn_or_damaged(data, verdict, scan.next_position)
        if isinstance(verdict, Torn) and verdict.whole and replica:
            reason = f"{verdict.reason} in a whole record: damage, not a torn write"
            verdict = Corrupt(verdict.offset, scan.next_position, reason)
        if isinstance(verdict, Corrupt):
            report.problem = (
                f"file '{path}' offset {verdict.offset}: record {verdict.position} is damaged: "
                f"{verdict.reason}"
            )
            return end
        if isinstance(verdict, Torn):
            end = f"file '{path}' offset {verdict.offset}"
            report.warnings.append(
                f"file '{path}' offset {verdict.offset}: torn tail of {len(data) - verdict.offset}"
                f" bytes ({verdict.reason}); never acknowledged, recovery cuts it off"
            )
    return end
