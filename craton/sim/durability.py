"""Durability, judged by the simulated disks' stable bytes — never by the replicas' belief.

The other checkers read a replica's journal and commit number: they see what a replica
thinks it holds. These read what a crash would leave (``SimDisk.stable``) and decode it as
recovery would, so a replica that acknowledges or commits what it never synced, or a log that
loses what it synced, is caught when it happens, not only if a later crash exposes it.

- ``committed``: when an op is first seen committed, a quorum of replicas hold its record
  intact in stable storage, at the position and with the chain hash of the one committed
  history. A replica whose copy an injected fault destroyed (a torn or misdirected write,
  rot, a wipe: ``SimDisk.destroyed``) is excused: the quorum was there before the fault.
- ``crashed``: after every crash (and wipe), every committed op can still be supplied by
  some replica's stable storage: its record intact (where its log places it, or anywhere in
  its segments, past damage too: a recovery's cut leaves the records past the damage on
  disk, and its salvage finds them again), or a durable checkpoint state that covers it
  (its state file matching its digest). The state a replica last served is remembered
  across its restarts: a replica that is still recovering has not named one yet, but the
  file is on its disk all the same.
- ``damage_found``: a replica whose disk the simulator never damaged must never find damage
  in, or be missing, records it had certified durable (its witness or superblock): that is
  data lost that the disk kept. A torn or lost *unsynced* tail is not damage: it lies at or
  above the certified mark.

A violation names the op and the replicas, and is a correctness failure.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

from craton.core.log import SEGMENT_FOLDER
from craton.core.record import HEADER_SIZE, RecordError, decode, decode_header
from craton.core.superblock import state_path
from craton.core.vsr.replica import Replica, StateFile
from craton.sim.disk import SimDisk

# What a node says when recovery finds a replica's certified records damaged or missing.
DAMAGE_NOTICES = ("log.damage_cut", "log.records_missing")

Holder = tuple[int, Replica, SimDisk]  # (replica index, its replica object, its disk)


class DurabilityChecker:
    def __init__(self, quorum: int, fail: Callable[[str], None]) -> None:
        self._quorum = quorum
        self._fail = fail
        self._states: dict[int, StateFile] = {}  # the state each replica last served

    def committed(self, op: int, op_hash: bytes, nodes: Sequence[Holder]) -> None:
        """Op ``op`` (chain hash ``op_hash``) has just been seen committed."""
        copies = [index for index, replica, disk in nodes if _holds(replica, disk, op, op_hash)]
        if len(copies) >= self._quorum:
            return
        excused = [
            index
            for index, replica, disk in nodes
            if index not in copies and _destroyed(replica, disk, op)
        ]
        if len(copies) + len(excused) < self._quorum:
            self._fail(
                f"op {op} committed while only replicas {copies} held it in stable storage "
                f"(a quorum is {self._quorum}): a commit rests on writes never synced"
            )

    def crashed(self, index: int, history: Sequence[bytes], nodes: Sequence[Holder]) -> None:
        """Replica ``index`` just crashed: every op of the committed ``history`` (its chain
        hashes, in op order) is still on some replica's stable storage."""
        indexes = [_stable_index(disk) for _, _, disk in nodes]
        for number, replica, _ in nodes:
            if replica.durable_state is not None:
                self._states[number] = replica.durable_state
        states = [self._states.get(number) for number, _, _ in nodes]
        for op, op_hash in enumerate(history):
            if not any(
                _supplies(replica, disk, op, op_hash, index, state)
                for (_, replica, disk), index, state in zip(nodes, indexes, states, strict=True)
            ):
                self._fail(
                    f"after replica {index} crashed, committed op {op} is on no replica's "
                    "stable storage (no intact record, no checkpoint state covering it)"
                )
                return

    def damage_found(
        self, index: int, event: str, fields: dict[str, str | int], disk: SimDisk
    ) -> None:
        """Replica ``index``'s recovery reported ``event`` (one of ``DAMAGE_NOTICES``)."""
        if disk.damage:
            return  # the simulator damaged this disk: finding damage is the point
        first = fields["record"] if event == "log.damage_cut" else fields["from_record"]
        certified = fields["certified"]
        assert isinstance(first, int) and isinstance(certified, int)
        if first < certified:
            self._fail(
                f"replica {index}: recovery found record {first} {_what(event)}, below the "
                f"{certified} it had certified durable, on a disk no fault touched "
                f"({fields.get('file')} offset {fields.get('offset')})"
            )


def _what(event: str) -> str:
    return "damaged" if event == "log.damage_cut" else "missing"


def _holds(replica: Replica, disk: SimDisk, op: int, op_hash: bytes) -> bool:
    """Whether ``disk``'s stable bytes hold op ``op``'s record intact: where the replica's
    log placed it, or, when the log cannot say (recovering, halted, cut), anywhere in its
    segments (a walk of the stable bytes, as recovery's)."""
    place = _place(replica, op)
    if place is not None and _intact(disk.stable(*place), op, op_hash):
        return True
    return any(_intact(record, op, op_hash) for record in _stable_records(disk, op))


def _place(replica: Replica, op: int) -> tuple[str, int, int] | None:
    log = replica.log
    if not log.base <= op < log.head:
        return None
    return log.location(op)


def _intact(data: bytes, op: int, op_hash: bytes) -> bool:
    try:
        header, _ = decode(data)
    except RecordError:
        return False
    return header.position == op and header.hash == op_hash


def _stable_records(disk: SimDisk, op: int) -> list[bytes]:
    """The stable bytes of every record that claims position ``op`` in ``disk``'s segments."""
    return _stable_index(disk).get(op, [])


def _stable_index(disk: SimDisk) -> dict[int, list[bytes]]:
    """Every record in ``disk``'s segments, by the position it claims: each segment walked
    record by record from its start, and past a record whose header does not decode by
    looking for the next one that does (as a recovery's salvage finds the records past
    damage, which stay on disk until the log is cut or appended over there)."""
    found: dict[int, list[bytes]] = {}
    for path in disk.paths():
        if not path.startswith(SEGMENT_FOLDER + "/"):
            continue
        data = disk.stable(path, 0, disk.durable_size(path))
        at = 0
        while at + HEADER_SIZE <= len(data):
            try:
                header = decode_header(data[at : at + HEADER_SIZE])
            except RecordError:
                at += 1  # damage: the next record starts somewhere past it
                continue
            found.setdefault(header.position, []).append(data[at : at + header.size])
            at += header.size
    return found


def _destroyed(replica: Replica, disk: SimDisk, op: int) -> bool:
    place = _place(replica, op)
    if place is not None:
        return disk.destroyed(*place)
    # no place for it any more (a cut or a wipe): excused if a fault struck its segments
    return any(d.fault == "wiped" or d.path.startswith(SEGMENT_FOLDER + "/") for d in disk.damage)


def _supplies(
    replica: Replica,
    disk: SimDisk,
    op: int,
    op_hash: bytes,
    index: dict[int, list[bytes]],
    state: StateFile | None,
) -> bool:
    place = _place(replica, op)
    if place is not None and _intact(disk.stable(*place), op, op_hash):
        return True
    if any(_intact(record, op, op_hash) for record in index.get(op, [])):
        return True
    if state is None or op >= state.op:
        return False
    data = disk.stable(state_path(state.op), 0, state.size)
    return len(data) == state.size and hashlib.sha256(data).digest() == state.digest
