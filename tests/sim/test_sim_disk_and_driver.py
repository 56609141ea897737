"""The simulated disk injects every fault it names, deterministically; the driver keeps order."""

from __future__ import annotations

import attrs
import pytest

from craton.core.prng import Prng
from craton.core.seam import (
    ClientRequest,
    DiskCompletion,
    DiskRead,
    DiskSync,
    DiskWrite,
    Effect,
    Halt,
    Input,
    Notice,
    Reply,
    SyncDone,
    WriteDone,
)
from craton.io.driver import Driver
from craton.sim.disk import EXPLICIT_FAULTS, FAULT_NAMES, DiskFaults, SimDisk
from craton.sim.events import EventQueue
from craton.sim.log_world import AppendOk, LogWorld

BLOCK = bytes(range(256)) * 8  # 2 KiB, four sectors


def run(disk: SimDisk, events: EventQueue, request: DiskRead | DiskWrite | DiskSync) -> object:
    box: list[DiskCompletion] = []
    disk.submit(request, box.append)
    events.run_until(lambda: bool(box))
    return box[0] if box else None


def workout(seed: int, faults: DiskFaults) -> SimDisk:
    """Writes, syncs, reads and crashes enough for every enabled fault to show up."""
    events = EventQueue()
    disk = SimDisk(Prng(seed, "disk"), events, faults)
    io = 0
    for round_ in range(60):
        for n in range(4):
            io += 1
            run(disk, events, DiskWrite(io, f"f{n}", round_ * len(BLOCK), BLOCK))
        if round_ % 3:
            io += 1
            run(disk, events, DiskSync(io, f"f{round_ % 4}"))
        io += 1
        run(disk, events, DiskWrite(io, f"new{round_}", 0, BLOCK))  # never synced
        io += 1
        run(disk, events, DiskRead(io, "f0", 0, len(BLOCK)))
        if round_ % 10 == 9:
            disk.crash()
    return disk


@pytest.mark.parametrize("fault", [f for f in FAULT_NAMES if f not in EXPLICIT_FAULTS])
def test_every_named_fault_is_injected(fault: str) -> None:
    knobs = {
        "read_error": {"read_error": 0.3},
        "read_corruption": {"read_corruption": 0.3},
        "write_error": {"write_error": 0.3},
        "torn_write": {"torn_write": 0.3},
        "misdirected_write": {"misdirected_write": 0.3},
        "corruption_at_rest": {"corruption_at_rest": 0.3},
        "crash_lost_write": {"crash_lose_unsynced": 0.5},
        "crash_torn_write": {"crash_tear_unsynced": 0.9},
        "crash_lost_file": {"crash_lose_unsynced": 0.9},
    }[fault]
    disk = workout(5, DiskFaults(**knobs))
    assert disk.faults[fault] > 0, f"{fault} was never injected"
    others = {name: count for name, count in disk.faults.items() if count and name != fault}
    allowed = {"crash_lost_write", "crash_lost_file", "crash_torn_write"}
    assert set(others) <= allowed, f"faults injected that were not enabled: {others}"


def test_a_wiped_disk_holds_nothing_and_cancels_requests_in_flight() -> None:
    events = EventQueue()
    disk = SimDisk(Prng(3), events, DiskFaults(latency_ticks_min=5, latency_ticks_max=5))
    run(disk, events, DiskWrite(1, "log/a", 0, b"synced"))
    run(disk, events, DiskSync(2, "log/a"))
    box: list[DiskCompletion] = []
    disk.submit(DiskWrite(3, "b", 0, b"x"), box.append)
    disk.wipe()
    events.run_until_idle()
    assert box == [], f"a request in flight completed after the wipe: {box}"
    assert disk.paths() == [], f"files survived the wipe: {disk.paths()}"
    assert disk.faults["wiped"] == 1 and disk.damage[-1].fault == "wiped"


def test_no_faults_means_none_injected_and_synced_data_survives_crashes() -> None:
    events = EventQueue()
    disk = SimDisk(Prng(3), events, DiskFaults(crash_lose_unsynced=1.0))
    run(disk, events, DiskWrite(1, "a", 0, b"synced"))
    run(disk, events, DiskSync(2, "a"))
    run(disk, events, DiskWrite(3, "a", 6, b"-lost"))
    disk.crash()
    assert disk.contents("a") == b"synced"
    assert disk.faults["crash_lost_write"] == 1 and not disk.damage


def test_requests_in_flight_at_a_crash_never_complete() -> None:
    events = EventQueue()
    disk = SimDisk(Prng(3), events, DiskFaults(latency_ticks_min=5, latency_ticks_max=5))
    box: list[DiskCompletion] = []
    disk.submit(DiskWrite(1, "a", 0, b"x"), box.append)
    disk.crash()
    events.run_until_idle()
    assert box == [] and disk.contents("a") == b""


def test_a_crash_between_a_writes_landing_and_its_sync_leaves_it_unsynced() -> None:
    """A write with ``sync`` reaches the page cache after one latency and stable storage
    after another: a crash in between treats it as any unsynced write (here: lost), and the
    timed-crash hook hears of the sync as the write lands."""
    events = EventQueue()
    faults = DiskFaults(latency_ticks_min=5, latency_ticks_max=5, crash_lose_unsynced=1.0)
    disk = SimDisk(Prng(3), events, faults)
    heard: list[int] = []
    disk.on_sync = lambda: heard.append(events.now)
    box: list[DiskCompletion] = []
    disk.submit(DiskWrite(1, "a", 0, b"x", sync=True), box.append)
    events.run_until(lambda: disk.contents("a") == b"x")
    assert heard == [5] and box == [] and disk.stable("a", 0, 1) == b""
    disk.crash()
    events.run_until_idle()
    assert box == [] and disk.contents("a") == b""
    disk.submit(DiskWrite(2, "a", 0, b"y", sync=True), box.append)
    events.run_until_idle()
    assert box == [WriteDone(2)] and disk.stable("a", 0, 1) == b"y"
    disk.crash()
    assert disk.contents("a") == b"y"


def test_the_same_seed_gives_the_same_disk() -> None:
    faults = DiskFaults.draw(Prng(11), destructive=True)
    first, second = workout(9, faults), workout(9, faults)
    assert first.faults == second.faults and first.damage == second.damage
    assert [first.contents(p) for p in first.paths()] == [
        second.contents(p) for p in second.paths()
    ]
    assert workout(10, faults).faults != first.faults or workout(10, faults).damage != first.damage


def test_log_world_runs_are_a_function_of_the_seed() -> None:
    def trace(seed: int) -> tuple[object, ...]:
        world = LogWorld(seed, DiskFaults.draw(Prng(seed), destructive=False))
        replies = [world.append(bytes([n]) * n) for n in range(30)]
        world.crash_and_recover()
        return (tuple(replies), world.events.now, tuple(sorted(world.disk.faults.items())))

    assert trace(4) == trace(4)
    assert trace(4) != trace(5)


# --- the driver ------------------------------------------------------------------------------


@attrs.define
class Scripted:
    """A machine that answers each input with a scripted list of effects."""

    script: dict[type, list[Effect]]
    seen: list[Input] = attrs.field(factory=list)

    def step(self, event: Input) -> list[Effect]:
        self.seen.append(event)
        return list(self.script.get(type(event), []))

    def invariants(self) -> None:
        assert len(self.seen) < 100


def test_driver_executes_effects_in_order_and_feeds_completions_back() -> None:
    events = EventQueue()
    disk = SimDisk(Prng(1), events)
    submitted: list[str] = []
    real_submit = disk.submit

    def spy(request: DiskWrite | DiskSync | DiskRead, complete: object) -> None:
        submitted.append(type(request).__name__)
        real_submit(request, complete)  # type: ignore[arg-type]

    disk.submit = spy  # type: ignore[method-assign]
    replies: list[Reply] = []
    machine = Scripted(
        {
            ClientRequest: [DiskWrite(1, "x", 0, b"abc"), DiskSync(2, "x"), Notice("n")],
            SyncDone: [Reply(1, 1, b"ok")],
        }
    )
    driver = Driver(machine, disk, on_reply=replies.append, check_invariants=True)
    driver.step(ClientRequest(1, 1, b""))
    assert submitted == ["DiskWrite", "DiskSync"]
    events.run_until_idle()
    kinds = [type(event) for event in machine.seen]
    assert kinds[0] is ClientRequest and set(kinds[1:]) == {WriteDone, SyncDone}
    assert replies == [Reply(1, 1, b"ok")]


def test_driver_queues_inputs_that_arrive_while_it_executes() -> None:
    events = EventQueue()
    disk = SimDisk(Prng(1), events)
    machine = Scripted({ClientRequest: [Reply(1, 1, b""), DiskRead(9, "x", 0, 1)]})
    order: list[str] = []
    driver: Driver

    def on_reply(reply: Reply) -> None:
        order.append("reply")
        if len(machine.seen) == 1:
            driver.step(ClientRequest(1, 2, b""))  # re-entrant: must wait its turn
            order.append("queued")

    driver = Driver(machine, disk, on_reply=on_reply)
    real_submit = disk.submit
    disk.submit = lambda r, c: (order.append("read"), real_submit(r, c))  # type: ignore
    driver.step(ClientRequest(1, 1, b""))
    assert order == ["reply", "queued", "read", "reply", "read"]


def test_driver_stops_at_halt() -> None:
    events = EventQueue()
    disk = SimDisk(Prng(1), events)
    halts: list[Halt] = []
    machine = Scripted({ClientRequest: [Halt("broken"), DiskRead(1, "x", 0, 1)]})
    driver = Driver(machine, disk, on_halt=halts.append)
    driver.step(ClientRequest(1, 1, b""))
    driver.step(ClientRequest(1, 2, b""))
    assert halts == [Halt("broken")] and len(machine.seen) == 1 and len(events) == 0


def test_log_world_appends_and_reads() -> None:
    world = LogWorld(2)
    assert world.append(b"one") == AppendOk(0, world.service.log.chain_hash)
    assert world.read(0) == b"one"
