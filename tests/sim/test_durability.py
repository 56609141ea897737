"""The durability checkers (``craton.sim.durability``), each fed a hand-made violation.

A quiet three-replica cluster runs until ops are committed; then the tests change what the
simulated disks hold on stable storage behind the replicas' backs — without recording a
fault (a write that was never synced, a log that lost what it synced) or with one (what the
fault model allows) — and call the checker as the cluster would.
"""

from __future__ import annotations

import attrs
import pytest

from craton.core.prng import Prng
from craton.core.seam import Notice
from craton.core.superblock import state_path
from craton.core.vsr.replica import Replica
from craton.sim.cluster import Cluster, FaultAtlas, draw_options
from craton.sim.disk import SimDisk
from craton.sim.durability import DurabilityChecker, _intact, _stable_records
from tests.sim.test_vsr_scenarios import quiet_options

COMMITTED_OPS = 12


@pytest.fixture(name="cluster")
def committed_cluster() -> Cluster:
    cluster = Cluster(5, quiet_options(clients=2, requests=20, fault_ticks=400))
    result = cluster.run()
    assert result.result == "pass", result.violations
    assert len(cluster.checker.canonical) >= COMMITTED_OPS, len(cluster.checker.canonical)
    return cluster


def holders(cluster: Cluster) -> list[tuple[int, Replica, SimDisk]]:
    return [(node.index, node.replica, node.disk) for node in cluster.nodes]


def unsync(cluster: Cluster, index: int, op: int) -> None:
    """Zero op ``op``'s record in replica ``index``'s stable bytes, recording no fault: as
    if its write had never been synced (or the log had lost it)."""
    node = cluster.nodes[index]
    place = node.replica.log.location(op)
    assert place is not None
    path, offset, size = place
    stable = node.disk._files[path].durable
    stable[offset : offset + size] = bytes(size)


def checker() -> tuple[DurabilityChecker, list[str]]:
    failures: list[str] = []
    return DurabilityChecker(2, failures.append), failures


def test_a_commit_resting_on_unsynced_copies_is_a_violation(cluster: Cluster) -> None:
    op = COMMITTED_OPS - 2
    op_hash = cluster.checker.canonical[op]
    durability, failures = checker()
    durability.committed(op, op_hash, holders(cluster))
    assert failures == [], "every replica holds the op: expected no violation"
    unsync(cluster, 0, op)
    durability.committed(op, op_hash, holders(cluster))
    assert failures == [], "two copies of three are a quorum: expected no violation"
    unsync(cluster, 1, op)
    durability.committed(op, op_hash, holders(cluster))
    assert len(failures) == 1 and f"op {op} committed while only replicas [2]" in failures[0]


def test_a_copy_an_injected_fault_destroyed_is_excused(cluster: Cluster) -> None:
    op = COMMITTED_OPS - 2
    durability, failures = checker()
    unsync(cluster, 0, op)
    place = cluster.nodes[1].replica.log.location(op)
    assert place is not None
    cluster.nodes[1].disk.corrupt(place[0], place[1] + 200, fault="corruption_at_rest")
    durability.committed(op, cluster.checker.canonical[op], holders(cluster))
    assert failures == [], f"rot after the commit is the fault model's, not a bug: {failures}"


def test_a_committed_op_no_disk_can_supply_is_a_violation(cluster: Cluster) -> None:
    history = cluster.checker.canonical
    durability, failures = checker()
    durability.crashed(0, history, holders(cluster))
    assert failures == [], f"every op is on every disk: expected no violation, {failures}"
    op = COMMITTED_OPS - 3
    for index in range(3):
        unsync(cluster, index, op)
        state = cluster.nodes[index].replica.durable_state
        if state is not None:  # its checkpoint state would supply the op: spoil it too
            cluster.nodes[index].disk._files[state_path(state.op)].durable[10] ^= 1
    durability.crashed(1, history, holders(cluster))
    assert failures == [
        f"after replica 1 crashed, committed op {op} is on no replica's stable storage "
        "(no intact record, no checkpoint state covering it)"
    ]


@pytest.mark.parametrize("restarted", [False, True], ids=["serving", "recovering"])
def test_a_checkpoint_state_supplies_the_ops_it_covers(cluster: Cluster, restarted: bool) -> None:
    """With checkpoint states on, ops below a replica's durable state are supplied by the
    state file, as long as its bytes match its digest; also while the replica recovers
    after a restart (a new replica object that has named no state yet: the state it served
    before is remembered, and its file is on its disk all the same)."""
    covered = [node for node in cluster.nodes if node.replica.durable_state is not None]
    if not covered:
        pytest.skip("no replica saved a checkpoint state in this run")
    node = covered[0]
    state = node.replica.durable_state
    assert state is not None
    op = state.op - 1
    for index in range(3):
        unsync(cluster, index, op)
    durability, failures = checker()
    history = cluster.checker.canonical[: op + 1]
    durability.crashed(node.index, history, [(node.index, node.replica, node.disk)])
    assert failures == [], f"the state covers op {op}: {failures}"
    replica = node.replica
    if restarted:
        replica = Replica(node.replica.config, node.replica.machine, Prng(1, "restart"))
        assert replica.durable_state is None
        durability.crashed(node.index, history, [(node.index, replica, node.disk)])
        assert failures == [], f"the remembered state covers op {op}: {failures}"
    node.disk._files[state_path(state.op)].durable[10] ^= 1
    durability.crashed(node.index, history, [(node.index, replica, node.disk)])
    assert len(failures) == 1 and f"committed op {op} is on no replica" in failures[0]


def test_damage_below_the_certified_mark_on_an_untouched_disk_is_a_violation() -> None:
    durability, failures = checker()
    clean = SimDisk.__new__(SimDisk)
    clean.damage = []
    cut = {"file": "log/0000000000.seg", "offset": 640, "record": 5, "certified": 9}
    durability.damage_found(2, "log.damage_cut", cut, clean)
    assert len(failures) == 1 and "record 5 damaged, below the 9" in failures[0], failures
    missing = {"file": "log/0000000000.seg", "offset": 900, "from_record": 7, "certified": 8}
    durability.damage_found(2, "log.records_missing", missing, clean)
    assert len(failures) == 2 and "record 7 missing" in failures[1], failures
    torn_tail = dict(cut, record=9)  # at the mark: an unsynced tail, not damage
    durability.damage_found(2, "log.damage_cut", torn_tail, clean)
    assert len(failures) == 2, failures


def test_damage_on_a_disk_the_simulator_damaged_is_not_a_violation(cluster: Cluster) -> None:
    disk = cluster.nodes[0].disk
    disk.corrupt("log/0000000000.seg", 300, fault="corruption_at_rest")
    durability, failures = checker()
    cut = {"file": "log/0000000000.seg", "offset": 256, "record": 2, "certified": 9}
    durability.damage_found(0, "log.damage_cut", cut, disk)
    assert failures == [], failures


@pytest.mark.parametrize("seed", [4, 126])
def test_disjoint_seeds_keep_every_committed_op_on_some_disk(seed: int) -> None:
    """Seeds of the disjoint profile where, at a crash, some committed op was intact only
    past a damaged record (a recovery's cut leaves those records on disk): the supply check
    finds them there, and the cluster passes."""
    result = Cluster(seed, draw_options(seed, profile="disjoint")).run()
    assert result.result == "pass", result.violations


def test_records_past_a_damaged_header_still_count_as_held(cluster: Cluster) -> None:
    """A damaged header hides its record's length: the walk of a disk's stable bytes finds
    the records past it by looking for the next header, as a recovery's salvage does."""
    node = cluster.nodes[1]
    state = node.replica.durable_state  # the ops below it are supplied by the state too
    first = 0 if state is None else state.op + 1
    later = first + 3
    assert later < len(cluster.checker.canonical), "the run committed too little"
    place = node.replica.log.location(first)
    assert place is not None
    path, offset, _ = place
    node.disk.corrupt(path, offset + 8, 2, fault="corruption_at_rest")  # inside the header
    assert not _stable_records(node.disk, first), "the damaged record no longer decodes"
    later_hash = cluster.checker.canonical[later]
    assert any(_intact(record, later, later_hash) for record in _stable_records(node.disk, later))
    durability, failures = checker()
    wiped_elsewhere = [(i, r, d) for i, r, d in holders(cluster) if i == 1]
    durability.crashed(0, cluster.checker.canonical[: later + 1], wiped_elsewhere)
    assert failures == [
        f"after replica 0 crashed, committed op {first} is on no replica's "
        "stable storage (no intact record, no checkpoint state covering it)"
    ]


def test_every_superblock_copy_lost_is_a_wipe_on_a_faulty_disk_and_a_violation_elsewhere() -> None:
    """A log that lost every superblock copy starts over blank: on a disk the atlas lets
    destructive faults reach, that is a wiped disk (its persisted view may go back); on a
    disk it spares, some code lost what the disk kept."""
    spared = Cluster(5, quiet_options(clients=1, requests=2, fault_ticks=50))
    spared._notice(1)(Notice("log.superblock_lost"))
    assert spared.checker.violations == [
        "replica 1: lost every superblock copy, though no destructive disk fault may land on "
        "its disk"
    ]
    options = quiet_options(clients=1, requests=2, fault_ticks=50)
    faulty = Cluster(5, attrs.evolve(options, atlas=FaultAtlas("atlas", (1,), 0.0, 0.0)))
    faulty.checker._persisted_max[1] = 4
    faulty._notice(1)(Notice("log.superblock_lost"))
    assert faulty.checker.violations == []
    assert faulty.checker._persisted_max[1] == 0, "its persisted view is gone, as if wiped"
