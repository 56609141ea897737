"""Where records are: a single node's log indexes them from its latest checkpoint on.

Recovery of a log that does not salvage reads the segments from the latest checkpoint's
record on (the checkpoint names its segment and offset), and a sealed checkpoint drops the
places of the records below it from memory. A read below the index finds them again: from
the nearest sealed checkpoint at or below it in the history (or from the base), scanned as
recovery scans and required to lead to the chain hash where the index starts. These tests
run a bare ``Log`` on a ``SimDisk`` and read below its index across restarts, segment rolls,
a damaged history entry and a damaged record.
"""

from __future__ import annotations

import attrs

from craton.core.log import (
    CHECKPOINTS_PATH,
    Checkpointed,
    LogOutput,
    ReadFailed,
    ReadResult,
)
from craton.core.seal import ENTRY_SIZE
from craton.core.seam import Effect, Input
from tests.sim.test_log_salvage import BODIES, World, _Checkpoint, _Host, hashes

# small segments: the records of BODIES (about 300 bytes each) roll over every few
SEGMENT_BYTES = 1100


@attrs.frozen
class _Read:
    position: int


@attrs.define
class _ReadingHost(_Host):
    """A host that also reads, keeping what the reads return."""

    reads: list[ReadResult | ReadFailed] = attrs.field(factory=list)

    def step(self, event: Input | _Read | object) -> list[Effect]:
        if isinstance(event, _Read):
            return self._split(self.log.read(event.position, event.position))
        return super().step(event)  # type: ignore[arg-type]

    def _split(self, outputs: list[LogOutput]) -> list[Effect]:
        kept = [o for o in outputs if isinstance(o, (ReadResult, ReadFailed))]
        self.reads.extend(kept)
        return super()._split([o for o in outputs if o not in kept])


class IndexWorld(World):
    host_type = _ReadingHost

    def __init__(self, *, salvage: bool = False, segment_bytes: int = 1 << 20) -> None:
        self._segment_bytes = segment_bytes
        super().__init__(salvage=salvage)

    def boot(self) -> _Host:
        self.config = attrs.evolve(self.config, segment_size_max=self._segment_bytes)
        return super().boot()

    def seal(self) -> int:
        log = self.host.log
        self.driver.step(_Checkpoint())  # type: ignore[arg-type]
        self.events.run_until(lambda: any(isinstance(o, Checkpointed) for o in self.host.outputs))
        self.host.outputs.clear()
        assert log.checkpoint is not None
        return log.checkpoint.position

    def read(self, position: int) -> ReadResult | ReadFailed:
        host = self.host
        assert isinstance(host, _ReadingHost)
        host.reads.clear()
        self.driver.step(_Read(position))  # type: ignore[arg-type]
        self.events.run_until(lambda: bool(host.reads) or bool(self.halts))
        assert not self.halts, self.halts
        return host.reads[-1]


def _placed(world: World, position: int) -> bool:
    return world.host.log.location(position) is not None


def _body(world: IndexWorld, position: int) -> bytes:
    result = world.read(position)
    assert isinstance(result, ReadResult), result
    assert result.hash == hashes(BODIES)[position]
    return result.body


def test_a_single_node_restarts_from_its_checkpoint_and_reads_below_it() -> None:
    world = IndexWorld(segment_bytes=SEGMENT_BYTES)
    world.append_all(BODIES[:7])
    assert world.seal() == 7
    world.append_all(BODIES[7:])
    recovered = world.restart()
    assert recovered is not None and recovered.head == len(BODIES), recovered
    assert not _placed(world, 6) and _placed(world, 7), "expected the index to start at 7"
    assert _body(world, 2) == BODIES[2]
    assert "log.places_found from=0 to=7" in world.notices, world.notices
    assert all(_placed(world, p) for p in range(len(BODIES)))
    assert [_body(world, p) for p in range(len(BODIES))] == BODIES


def test_a_read_finds_records_from_the_nearest_checkpoint_below_it() -> None:
    world = IndexWorld(segment_bytes=SEGMENT_BYTES)
    for end in (3, 6, 9):
        log = world.host.log
        world.append_all(BODIES[log.head : end])
        assert world.seal() == end
    world.append_all(BODIES[9:])
    assert not _placed(world, 8), "expected a sealed checkpoint to drop places below it"
    world.restart()
    assert _body(world, 7) == BODIES[7]
    assert "log.places_found from=6 to=9" in world.notices, world.notices
    assert _body(world, 4) == BODIES[4]
    assert "log.places_found from=3 to=6" in world.notices, world.notices
    assert not _placed(world, 2)


def test_a_damaged_history_entry_is_passed_over_for_an_earlier_start() -> None:
    world = IndexWorld()
    for end in (3, 6, 9):
        log = world.host.log
        world.append_all(BODIES[log.head : end])
        world.seal()
    world.append_all(BODIES[9:])
    world.disk.corrupt(CHECKPOINTS_PATH, 1 * ENTRY_SIZE + 20, 3)  # the entry sealing 6
    world.restart()
    assert _body(world, 7) == BODIES[7]
    assert "log.places_found from=3 to=9" in world.notices, world.notices


def test_damage_below_the_index_fails_the_read_and_the_log_serves_on() -> None:
    world = IndexWorld()
    world.append_all(BODIES[:8])
    world.flip(2, header=True)  # the records are still placed: nothing is sealed yet
    world.seal()
    world.append_all(BODIES[8:])
    recovered = world.restart()
    assert recovered is not None and not world.halts, "damage below the index is not read"
    # a damaged header breaks the walk that finds the records' places: reads below fail
    failed = world.read(3)
    assert isinstance(failed, ReadFailed) and "record 2" in failed.reason, failed
    assert any(n.startswith("log.read_damaged") for n in world.notices), world.notices
    assert _body(world, 9) == BODIES[9], "expected records above the index served still"
    assert world.host.log.is_open


def test_a_damaged_body_below_the_index_fails_only_its_own_read() -> None:
    world = IndexWorld()
    world.append_all(BODIES[:8])
    world.flip(5)
    world.seal()
    world.append_all(BODIES[8:])
    world.restart()
    assert _body(world, 4) == BODIES[4] and _body(world, 6) == BODIES[6]
    failed = world.read(5)
    assert isinstance(failed, ReadFailed) and "record 5" in failed.reason, failed


def test_a_replica_log_indexes_every_record() -> None:
    world = IndexWorld(salvage=True, segment_bytes=SEGMENT_BYTES)
    world.append_all(BODIES[:7])
    world.seal()
    world.append_all(BODIES[7:])
    world.restart()
    assert all(_placed(world, p) for p in range(len(BODIES)))
    assert [_body(world, p) for p in range(len(BODIES))] == BODIES
