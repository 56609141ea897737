"""The log's salvage recovery (a replica of a cluster) on the simulated disk.

A single node's log halts on a damaged committed record; a replica's log, whose peers hold
other copies, opens at the last intact record instead, reports what it lost and what it
found past the damage (``Recovered.lost_from``, ``salvaged``), and keeps claiming the lost
records in its superblock until they are written again. These tests damage records on a
``SimDisk`` directly and check what recovery reports, across crashes.
"""

from __future__ import annotations

import attrs
import pytest

from craton.core.log import (
    CHECKPOINTS_PATH,
    BaseInstalled,
    Checkpointed,
    Durable,
    Log,
    LogConfig,
    LogOutput,
    Recovered,
)
from craton.core.prng import Prng
from craton.core.record import GENESIS_HASH, chain_hash, encode
from craton.core.scan import salvage_tail
from craton.core.seam import Effect, Input, IoIds, Notice
from craton.io.driver import Driver
from craton.sim.disk import SimDisk
from craton.sim.events import EventQueue

BODIES = [bytes([n]) * (40 + 37 * n) for n in range(12)]


@attrs.frozen
class _Append:
    body: bytes


@attrs.frozen
class _Checkpoint:
    pass


@attrs.frozen
class _InstallBase:
    position: int
    chain_hash: bytes
    state: bytes
    tail: tuple[bytes, ...] = ()


@attrs.define
class _Host:
    """Runs a bare ``Log`` under the driver, keeping its owner-facing outputs."""

    log: Log
    outputs: list[LogOutput] = attrs.field(factory=list)

    def start(self) -> list[Effect]:
        return self._split(self.log.start())

    def step(self, event: Input | _Append | _InstallBase | _Checkpoint) -> list[Effect]:
        if isinstance(event, _Append):
            return self._split(self.log.append(event.body)[1])
        if isinstance(event, _Checkpoint):
            return self._split(self.log.checkpoint_now())
        if isinstance(event, _InstallBase):
            log = self.log
            return self._split(
                log.install_base(event.position, event.chain_hash, (event.state,), event.tail)
            )
        return self._split(self.log.on_disk(event))  # type: ignore[arg-type]

    def invariants(self) -> None:
        self.log.invariants()

    def _split(self, outputs: list[LogOutput]) -> list[Effect]:
        effects: list[Effect] = []
        for output in outputs:
            if isinstance(output, (Recovered, Durable, BaseInstalled, Checkpointed)):
                self.outputs.append(output)
            else:
                effects.append(output)  # type: ignore[arg-type]
        return effects


class World:
    host_type: type[_Host] = _Host

    def __init__(self, *, salvage: bool) -> None:
        self.events = EventQueue()
        self.disk = SimDisk(Prng(5, "disk"), self.events)
        self.config = LogConfig(seal_seed=bytes(range(32)), checkpoint_interval=0)
        self.salvage = salvage
        self.halts: list[str] = []
        self.notices: list[str] = []
        self.host = self.boot()

    def boot(self) -> _Host:
        host = self.host_type(Log(self.config, IoIds(), salvage=self.salvage))
        driver = Driver(
            host,
            self.disk,
            on_notice=lambda notice: self.notices.append(_words(notice)),
            on_halt=lambda halt: self.halts.append(halt.reason),
            check_invariants=True,
        )
        driver.launch(host.start())
        self.events.run_until(lambda: host.log.is_open or bool(self.halts))
        self.host, self.driver = host, driver
        return host

    def append_all(self, bodies: list[bytes]) -> None:
        log = self.host.log
        for body in bodies:
            self.driver.step(_Append(body))  # type: ignore[arg-type]
        self.events.run_until(lambda: log.durable == log.head)

    def restart(self) -> Recovered | None:
        self.disk.crash()
        self.halts.clear()
        host = self.boot()
        found = [o for o in host.outputs if isinstance(o, Recovered)]
        return found[-1] if found else None

    def flip(self, position: int, *, header: bool = False) -> None:
        place = self.host.log.location(position)
        assert place is not None
        path, offset, size = place
        self.disk.corrupt(path, offset + (40 if header else 128 + (size - 128) // 2), 2)


def _words(notice: Notice) -> str:
    return " ".join([notice.event, *(f"{k}={v}" for k, v in notice.fields)])


def hashes(bodies: list[bytes]) -> list[bytes]:
    out, prev = [], GENESIS_HASH
    for position, body in enumerate(bodies):
        prev = chain_hash(prev, position, body)
        out.append(prev)
    return out


def test_a_single_node_log_halts_on_a_damaged_record() -> None:
    world = World(salvage=False)
    world.append_all(BODIES)
    world.flip(4)
    assert world.restart() is None
    assert world.halts and "record 4 is damaged" in world.halts[0], world.halts


@pytest.mark.parametrize("header", [False, True], ids=["body", "header"])
def test_salvage_opens_at_the_damage_and_reports_what_follows(header: bool) -> None:
    world = World(salvage=True)
    world.append_all(BODIES)
    world.flip(4, header=header)
    recovered = world.restart()
    assert recovered is not None and not world.halts, world.halts
    assert (recovered.head, recovered.lost_from) == (4, 4), recovered
    assert recovered.salvage_complete, "expected every record past the damage found"
    expected = hashes(BODIES)
    found = [(item.position, item.hash, item.body) for item in recovered.salvaged]
    assert found[0] == (4, expected[4], None), "expected a hole at 4 with its vouched hash"
    assert found[1:] == [(p, expected[p], BODIES[p]) for p in range(5, len(BODIES))]
    assert recovered.certified > 4, "expected the superblock to claim the lost records"


def test_the_claim_survives_a_crash_until_the_records_are_written_again() -> None:
    world = World(salvage=True)
    world.append_all(BODIES)
    world.flip(7)
    first = world.restart()
    assert first is not None and first.lost_from == 7
    again = world.restart()  # nothing written in between: the same damage is found again
    assert again is not None and again.lost_from == 7 and again.salvaged, again
    world.append_all(BODIES[7:])  # the owner repairs: the same records again
    healed = world.restart()
    assert healed is not None and healed.lost_from is None, healed
    assert healed.head == len(BODIES) and healed.chain_hash == hashes(BODIES)[-1]


def test_salvage_tail_finds_the_next_record_past_a_damaged_header() -> None:
    records = []
    prev = GENESIS_HASH
    for position, body in enumerate(BODIES[:4]):
        data, prev = encode(position=position, prev_hash=prev, body=body, durable_before=0)
        records.append(data)
    damaged = bytearray(records[1])
    damaged[5] ^= 0xFF  # the header checksum: the record's length is lost
    data = records[0] + bytes(damaged) + records[2] + records[3]
    tail = salvage_tail(data, at=len(records[0]), position=1)
    assert tail.complete
    assert [(item.position, item.body) for item in tail.records] == [
        (1, None),
        (2, BODIES[2]),
        (3, BODIES[3]),
    ]
    assert tail.records[0].hash == hashes(BODIES)[1], "the hole's hash from the next link"


def test_salvage_tail_of_unreadable_bytes_is_incomplete() -> None:
    tail = salvage_tail(b"\x01" * 300, at=0, position=0)
    assert tail.records == () and not tail.complete


@pytest.mark.parametrize("salvage", [False, True], ids=["single", "replica"])
def test_a_lost_checkpoint_history_halts_a_single_node_and_restarts_a_replicas(
    salvage: bool,
) -> None:
    """The disk acknowledged the history entry and lost it (a write torn to nothing): the
    superblock counts a sealed entry the file does not hold. A single node refuses to start;
    a replica starts a new history and keeps its records certified."""
    world = World(salvage=salvage)
    world.append_all(BODIES)
    world.driver.step(_Checkpoint())  # type: ignore[arg-type]
    log = world.host.log
    world.events.run_until(lambda: log.checkpoint is not None)
    world.disk.empty(CHECKPOINTS_PATH)
    recovered = world.restart()
    if not salvage:
        assert recovered is None and "sealed entries need" in world.halts[0], world.halts
        return
    assert recovered is not None and not world.halts, world.halts
    assert recovered.head == len(BODIES) and recovered.lost_from is None, recovered
    assert recovered.certified >= len(BODIES), "expected the records to stay certified"
    assert any("log.history_lost" in notice for notice in world.notices), world.notices
    assert world.host.log.checkpoint is None


def test_a_write_landing_over_later_records_is_damage_not_a_torn_tail() -> None:
    """A misdirected write covers the end of record 2 and all of records 3 and 4 with the
    bytes of record 8: the scan cannot walk past it record by record, yet the intact
    records after it certify record 2 durable, so it must not be cut as a torn tail."""
    from craton.core.scan import Corrupt, scan_segment

    records, prev = [], GENESIS_HASH
    for position, body in enumerate(BODIES):
        data, prev = encode(position=position, prev_hash=prev, body=body, durable_before=position)
        records.append(data)
    starts = [sum(len(r) for r in records[:n]) for n in range(len(records))]
    segment = bytearray(b"".join(records))
    landing = starts[2] + 140
    batch = records[8] + records[9]  # a batch of two records, written two records early
    segment[landing : landing + len(batch)] = batch
    assert landing + len(batch) >= starts[5], "expected the write to cover records 3-4"
    scan = scan_segment(
        bytes(segment),
        base_offset=0,
        first_position=0,
        prev_hash=GENESIS_HASH,
        verify_from=0,
        certified=0,
        may_tear=True,
    )
    assert isinstance(scan.verdict, Corrupt) and scan.verdict.position == 2, scan.verdict


def test_a_synced_append_the_disk_lost_is_reported_lost_by_the_witness() -> None:
    """The disk acknowledged and synced the last batch, then lost it: the segment ends one
    record early and nothing in it says more was ever there. A replica's log writes its
    durable mark to the witness file after each batch's sync, before the batch counts as
    durable, so recovery reports the record lost (the owner must get it back) instead of
    opening a shorter log as if it were whole."""
    world = World(salvage=True)
    world.append_all(BODIES[:-1])
    world.append_all(BODIES[-1:])  # its own batch: the one the disk loses
    place = world.host.log.location(len(BODIES) - 1)
    assert place is not None
    path, offset, _ = place
    world.disk.shorten(path, offset)
    recovered = world.restart()
    assert recovered is not None and not world.halts, world.halts
    assert recovered.head == len(BODIES) - 1, recovered
    assert recovered.lost_from == len(BODIES) - 1, "expected the lost record reported lost"
    assert recovered.certified >= len(BODIES)
