"""A log that starts at a base: what a replica that caught up from a checkpoint state holds.

``Log.install_base`` writes the owner's state at a position to a file, then switches the
superblock to a log that starts there, in a segment past every old one, and empties the old
files. These tests install bases on a ``SimDisk``, crash, damage the state file, and check
what recovery and the offline audit make of it.
"""

from __future__ import annotations

import pytest

from craton.core import superblock
from craton.core.audit import audit
from craton.core.log import BaseInstalled, LogError, segment_path
from craton.core.record import chain_hash
from tests.sim.test_log_salvage import BODIES, World, _Append, _InstallBase

BASE = 40
BASE_HASH = bytes(range(100, 132))
STATE = b"the owner's state at op 40 " * 30


def _install(world: World) -> None:
    world.driver.step(_InstallBase(BASE, BASE_HASH, STATE))  # type: ignore[arg-type]
    world.events.run_until(
        lambda: any(isinstance(o, BaseInstalled) for o in world.host.outputs) or bool(world.halts)
    )
    assert not world.halts, world.halts


def _chain(bodies: list[bytes], first: int, prev: bytes) -> bytes:
    for position, body in enumerate(bodies, start=first):
        prev = chain_hash(prev, position, body)
    return prev


def _audit(world: World) -> object:
    names = [path.split("/")[1] for path in world.disk.paths() if path.startswith("log/")]
    return audit(names, world.disk.contents)


@pytest.mark.parametrize("salvage", [False, True], ids=["single", "replica"])
def test_a_log_restarts_from_its_installed_base(salvage: bool) -> None:
    world = World(salvage=salvage)
    world.append_all(BODIES)
    _install(world)
    log = world.host.log
    assert (log.base, log.head, log.durable, log.chain_hash) == (BASE, BASE, BASE, BASE_HASH)
    world.append_all(BODIES[:3])
    assert log.head == BASE + 3
    recovered = world.restart()
    assert recovered is not None and not world.halts, world.halts
    assert (recovered.base, recovered.base_state) == (BASE, STATE)
    assert recovered.head == BASE + 3 and recovered.lost_from is None, recovered
    assert recovered.chain_hash == _chain(BODIES[:3], BASE, BASE_HASH)
    assert world.disk.contents(segment_path(0)) == b"", "the old segment was not emptied"
    report = _audit(world)
    assert report.ok and (report.base, report.records) == (BASE, BASE + 3), report  # type: ignore[attr-defined]


def test_install_refuses_a_base_at_or_below_the_head() -> None:
    world = World(salvage=True)
    world.append_all(BODIES)
    with pytest.raises(LogError):
        world.host.log.install_base(len(BODIES), BASE_HASH, (STATE,))


def test_a_damaged_base_state_halts_a_single_node_and_is_lost_by_a_replica() -> None:
    for salvage in (False, True):
        world = World(salvage=salvage)
        world.append_all(BODIES)
        _install(world)
        world.disk.corrupt(superblock.state_path(BASE), 10, 2)
        recovered = world.restart()
        if not salvage:
            assert recovered is None and "the log's base state is lost" in world.halts[0]
            continue
        assert recovered is not None and not world.halts, world.halts
        assert (recovered.base, recovered.base_state, recovered.head) == (0, None, 0)
        assert recovered.lost_from == 0, "expected everything reported lost"
        assert any("log.base_state_lost" in notice for notice in world.notices)
        world.driver.step(_Append(BODIES[0]))  # type: ignore[arg-type]
        again = world.restart()  # the empty log it started over with is the one it finds
        assert again is not None and again.base == 0 and again.head in (0, 1), again


def test_a_crash_before_the_switch_leaves_the_old_log() -> None:
    """The state file is durable but the superblock does not name it yet: the old log."""
    world = World(salvage=True)
    world.append_all(BODIES)
    world.driver.step(_InstallBase(BASE, BASE_HASH, STATE))  # type: ignore[arg-type]
    path = superblock.state_path(BASE)
    world.events.run_until(lambda: world.disk.durable_size(path) == len(STATE))
    recovered = world.restart()
    assert recovered is not None and not world.halts, world.halts
    assert (recovered.base, recovered.head, recovered.lost_from) == (0, len(BODIES), None)


def test_a_crash_right_after_the_switch_keeps_the_base_and_empties_the_old_files() -> None:
    """The superblock names the base, the old segment is not emptied yet: recovery opens
    the log at the base and empties the old segment itself."""
    world = World(salvage=True)
    world.append_all(BODIES)
    _install(world)  # stops as soon as BaseInstalled is out: the emptying is still queued
    assert world.disk.durable_size(segment_path(0)) > 0, "expected the old segment unemptied"
    recovered = world.restart()
    assert recovered is not None and not world.halts, world.halts
    assert (recovered.base, recovered.head, recovered.base_state) == (BASE, BASE, STATE)
    world.events.run_until(lambda: world.disk.durable_size(segment_path(0)) == 0)
    assert world.disk.durable_size(segment_path(0)) == 0, "recovery left the old segment"


def test_records_kept_past_a_base_are_in_the_new_log_when_it_is_named() -> None:
    """A repairing replica's intact records past the base go into the new log's first
    segment before the superblock names the base: a crash right after the switch finds
    them there, durable, never only in the owner's memory."""
    world = World(salvage=True)
    world.append_all(BODIES)
    tail = tuple(BODIES[:4])
    world.driver.step(_InstallBase(BASE, BASE_HASH, STATE, tail))  # type: ignore[arg-type]
    world.events.run_until(
        lambda: any(isinstance(o, BaseInstalled) for o in world.host.outputs) or bool(world.halts)
    )
    assert not world.halts, world.halts
    log = world.host.log
    end_hash = _chain(list(tail), BASE, BASE_HASH)
    assert (log.base, log.head, log.durable, log.chain_hash) == (BASE, BASE + 4, BASE + 4, end_hash)
    world.append_all(BODIES[4:6])
    assert log.head == BASE + 6
    recovered = world.restart()
    assert recovered is not None and not world.halts, world.halts
    assert (recovered.base, recovered.head, recovered.lost_from) == (BASE, BASE + 6, None)
    assert recovered.chain_hash == _chain(BODIES[:6], BASE, BASE_HASH)


def test_a_crash_before_the_switch_leaves_the_old_log_with_a_tail_written() -> None:
    """The state and the tail's segment are durable, the superblock still names the old
    log: recovery opens the old log whole and takes the unnamed segment for stale bytes."""
    world = World(salvage=True)
    world.append_all(BODIES)
    world.driver.step(_InstallBase(BASE, BASE_HASH, STATE, tuple(BODIES[:3])))  # type: ignore[arg-type]
    new_segment = segment_path(1)
    world.events.run_until(lambda: world.disk.durable_size(new_segment) > 0)
    recovered = world.restart()
    assert recovered is not None and not world.halts, world.halts
    assert (recovered.base, recovered.head) == (0, len(BODIES)), recovered
