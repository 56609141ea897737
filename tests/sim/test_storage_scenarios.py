"""Named storage scenarios: broken disks under a running cluster, scripted on the simulator.

Every drawn fault is off (``quiet_options``); each scenario damages disks itself at the
moment that matters — a flipped bit in a record, a wiped disk, a torn unsynced write — and
crashes the replica so that it meets the damage when it recovers. The run then goes on as any
simulator run does: the checkers (one history, hash chain, linearizable client histories,
persist before send) must find nothing and the liveness phase must settle with every
replica holding the same log. Each test also asserts how the damage was survived: which
replica went recovering, what it repaired, and that it never voted or acknowledged while
its log was short of what it once held.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import pytest

from craton.core import superblock
from craton.core.prng import Prng
from craton.core.seam import Effect, Input, Send
from craton.core.state_machine import StateMachine
from craton.core.vsr import codec
from craton.core.vsr.checkpoint import CheckpointState, StateStream, open_checkpoint
from craton.core.vsr.replica import Replica, ReplicaConfig, Status
from craton.core.wire.replica import DoViewChange, PrepareOk
from craton.sim.cluster import CHECKPOINT_INTERVAL_OPS, Cluster
from craton.sim.disk import DiskFaults
from tests.sim.test_vsr_scenarios import Script, assert_clean, assert_converged, quiet_options

SEEDS = (7, 11)
# Seeds whose tear keeps the header and part of the body (the disk's draw: a tear may as well
# keep nothing; each change to what the clients send moves the draws, and the test says when a
# seed no longer tears a part). Of 0..29, these do: 3, 4, 5, 9, 10, 22, 26, 28 and 29.
TORN_SEEDS = (3, 4, 5)


@attrs.define
class Notices:
    """The notices each replica emitted, in order, read from the cluster's trace."""

    lines: list[str] = attrs.field(factory=list)

    def __call__(self, line: str) -> None:
        if " <- " not in line:
            self.lines.append(line)

    def of(self, index: int, event: str) -> list[str]:
        return [line for line in self.lines if f" r{index} {event}" in line]


@attrs.define
class Votes:
    """(replica, message kind) of every vote or acknowledgement sent while the sender was
    recovering: there must be none."""

    while_recovering: list[tuple[int, str]] = attrs.field(factory=list)


def watched(votes: Votes) -> Callable[[ReplicaConfig, StateMachine, Prng], Replica]:
    class Watched(Replica):
        def step(self, event: Input) -> list[Effect]:
            recovering = self.status is Status.RECOVERING
            effects = super().step(event)
            if recovering or self.status is Status.RECOVERING:
                for effect in effects:
                    if isinstance(effect, Send):
                        message = codec.decode_message(effect.payload)
                        if isinstance(message, (DoViewChange, PrepareOk)):
                            kind = type(message).__name__
                            votes.while_recovering.append((self.config.replica_id, kind))
            return effects

    return Watched


def run_scenario(
    seed: int, script_it: Callable[[Cluster, Script], None], *, requests: int = 25
) -> tuple[Cluster, Notices, Votes]:
    notices, votes = Notices(), Votes()
    options = quiet_options(clients=2, requests=requests, fault_ticks=2_000)
    cluster = Cluster(seed, options, trace=notices, replica_factory=watched(votes))
    script = Script(cluster)
    script_it(cluster, script)
    result = cluster.run()
    assert script.done, f"the script did not finish: fired {script.fired}"
    assert_clean(result)
    assert_converged(cluster)
    assert votes.while_recovering == [], (
        f"expected no vote or acknowledgement from a recovering replica: {votes}"
    )
    return cluster, notices, votes


def committed_hashes(cluster: Cluster, index: int) -> dict[int, bytes]:
    """op -> hash of the committed ops replica ``index`` holds in its journal."""
    replica = cluster.nodes[index].replica
    return {op: replica.entry(op).hash for op in range(replica.first_op, replica.commit)}


def assert_kept(cluster: Cluster, before: dict[int, bytes]) -> None:
    """Every op committed before the damage is at its position at the end: in replica 0's
    journal, and in the committed history the checker pieced together from every replica
    (which also covers ops a journal released after a checkpoint)."""
    final = cluster.nodes[0].replica
    held = {op: final.entry(op).hash for op in before if final.first_op <= op < final.head}
    assert held == {op: before[op] for op in held}, (
        "expected every op committed before the damage at its position at the end"
    )
    history = cluster.checker.canonical
    assert all(op < len(history) and history[op] == h for op, h in before.items()), (
        "expected the committed history to hold every op committed before the damage"
    )


# --- a wiped disk ----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_wiped_replica_rejoins_through_a_quorum(seed: int) -> None:
    """A backup's disk is wiped while it is down. It restarts on a blank disk but knows it
    was a member, so it does not start as a fresh replica of view 0: it recovers through a
    quorum of the others and installs the primary's log. It crashes once more before it has
    rejoined — and must come back recovering again, not as a replica with an empty log."""
    seen: dict[str, dict[int, bytes]] = {}

    def script_it(cluster: Cluster, script: Script) -> None:
        backup = lambda: cluster.nodes[1].replica  # noqa: E731

        def wipe() -> None:
            seen["committed"] = committed_hashes(cluster, 0)
            cluster.wipe(1, down_ticks=50)

        def recovering() -> bool:
            node = cluster.nodes[1]
            return node.up and backup().status is Status.RECOVERING

        script.then("clients at work", lambda: backup().commit >= 10, wipe)
        script.then("recovering", recovering, lambda: cluster.crash(1, down_ticks=40))
        script.then("recovering again", recovering, lambda: None)

    cluster, notices, _ = run_scenario(seed, script_it)
    assert len(notices.of(1, "replica.recovering reason=wiped")) >= 2, (
        f"expected replica 1 to recover as wiped twice: {notices.of(1, 'replica.recovering')}"
    )
    assert notices.of(1, "replica.recovered"), "expected replica 1 to rejoin a view"
    assert_kept(cluster, seen["committed"])


# --- a corrupt entry at the head of the next primary -----------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_corrupt_entry_at_the_next_primary_head_during_a_view_change(seed: int) -> None:
    """Replica 1, the primary of the next view, is down with a flipped bit in an op at the
    head of its log (among the last ones a later record certifies durable: the very last,
    uncertified record would be cut as a torn tail) when the primary of view 0 crashes. It
    restarts into the view change with a damaged head: it must not vote with its short
    log. It fetches the damaged op from replica 2 by the hash its own record header still
    vouches for, rebuilds the log it had, and only then takes part; the view change
    completes with every committed op kept."""
    seen: dict[str, dict[int, bytes]] = {}

    def script_it(cluster: Cluster, script: Script) -> None:
        nxt = lambda: cluster.nodes[1].replica  # noqa: E731

        def damage_next_primary() -> None:
            seen["committed"] = committed_hashes(cluster, 0)
            head = nxt().log.durable
            cluster.crash(1, down_ticks=80)
            cluster.corrupt_op(1, head - 3)

        script.then("clients at work", lambda: nxt().commit >= 10, damage_next_primary)
        script.then("primary crashed", lambda: True, lambda: cluster.crash(0, down_ticks=400))

    cluster, notices, _ = run_scenario(seed, script_it)
    assert notices.of(1, "log.damage_cut"), "expected replica 1 to find its head damaged"
    assert notices.of(1, "replica.recovering reason=damaged"), "expected it to recover"
    repaired = notices.of(1, "replica.repaired") or notices.of(1, "replica.recovered")
    assert repaired, "expected replica 1 to rebuild its log or rejoin through a quorum"
    assert_kept(cluster, seen["committed"])


# --- a torn prepare at the head after a crash ------------------------------------------------


@pytest.mark.parametrize("seed", TORN_SEEDS)
def test_torn_prepare_at_the_head_after_a_crash(seed: int) -> None:
    """A backup crashes while a prepare is written but not yet synced, and its disk tears
    every unsynced write. The torn record is past everything the log ever certified durable:
    it was never acknowledged, recovery cuts it as a torn tail (not as damage), and the
    backup catches up from the primary."""

    def script_it(cluster: Cluster, script: Script) -> None:
        node = lambda: cluster.nodes[2]  # noqa: E731
        node().disk.fault_plan = DiskFaults(crash_tear_unsynced=1.0)

        def unsynced_prepare() -> bool:
            # the newest record is written, not synced, and crosses a sector boundary after
            # its header: a tear can keep the header and lose part of the body
            log = node().replica.log
            if node().replica.commit < 8 or log.head <= log.durable:
                return False
            place = log.location(log.head - 1)
            if place is None:
                return False
            path, offset, size = place
            disk = node().disk
            written = len(disk.contents(path)) >= offset + size  # in the page cache only
            synced = disk.durable_size(path) >= offset + size
            if written and not synced and (offset + 128) // 512 < (offset + size - 1) // 512:
                record.append(place)
                return True
            return False

        def crash() -> None:
            cluster.crash(2, down_ticks=30)
            path, offset, _ = record[0]
            kept.append(len(cluster.nodes[2].disk.contents(path)) - offset)

        script.then("prepare in flight", unsynced_prepare, crash)

    record: list[tuple[str, int, int]] = []  # (file, offset, size) of the torn record
    kept: list[int] = []  # how many of its bytes the tear kept
    cluster, notices, _ = run_scenario(seed, script_it)
    assert cluster.nodes[2].disk.faults["crash_torn_write"] > 0, "expected a torn write"
    _, _, size = record[0]
    assert 128 < kept[0] < size, (
        f"expected the tear to keep the record's header and part of its body: kept "
        f"{kept[0]} of {size} bytes (this seed's tear no longer does; pick another)"
    )
    assert notices.of(2, "log.torn_tail_truncated"), "expected the torn tail to be cut"
    assert not notices.of(2, "replica.recovering"), "a torn unsynced tail is not damage"


# --- every replica corrupt at a different op -------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_every_replica_corrupt_at_a_different_op(seed: int) -> None:
    """Every replica has one committed op damaged — a different one on each, once in a
    record header (hiding the record's length) and twice in a body — and all three crash at
    once. No replica can rejoin through a quorum of healthy ones (there is none): each
    fetches its hole from the others by hash, rebuilds the log it had, and the cluster goes
    on with every committed op kept."""
    seen: dict[str, dict[int, bytes]] = {}

    def script_it(cluster: Cluster, script: Script) -> None:
        def damage_all() -> None:
            seen["committed"] = committed_hashes(cluster, 0)
            commit = min(node.replica.commit for node in cluster.nodes)
            for index in range(3):
                cluster.crash(index, down_ticks=60 + 10 * index)
                cluster.corrupt_op(index, commit - 1 - 3 * index, header=index == 1)

        script.then(
            "clients at work",
            lambda: min(node.replica.commit for node in cluster.nodes) >= 12,
            damage_all,
        )

    cluster, notices, _ = run_scenario(seed, script_it)
    for index in range(3):
        assert notices.of(index, "replica.prepare_repaired"), (
            f"expected replica {index} to fetch its damaged op from the others"
        )
        assert notices.of(index, "replica.repaired"), f"expected replica {index} repaired"
    assert_kept(cluster, seen["committed"])


# --- a lagging replica needing state sync while the primary fails ----------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_lagging_replica_catches_up_while_the_primary_fails(seed: int) -> None:
    """Replica 2 is cut off while the others commit so many ops that their journals no
    longer hold the ops it lacks (they released them after durable checkpoints). It comes
    back needing state sync, and the primary crashes at that moment. The remaining two
    change views; replica 2 installs a checkpoint state from the new primary (checked
    against its digest and its sender's signature), fetches the journal from there, and the
    cluster converges with one history."""

    def script_it(cluster: Cluster, script: Script) -> None:
        lagging = lambda: cluster.nodes[2].replica  # noqa: E731
        primary = lambda: cluster.nodes[0].replica  # noqa: E731

        def needs_state_sync() -> bool:
            return cluster.nodes[2].up and lagging().head < primary().first_op

        script.then(
            "cut off", lambda: primary().commit >= 4, lambda: cluster.crash(2, down_ticks=900)
        )
        script.then("needs state sync", needs_state_sync, lambda: cluster.crash(0, down_ticks=300))

    cluster, notices, _ = run_scenario(seed, script_it, requests=80)
    synced = notices.of(2, "replica.state_synced")
    assert synced, f"expected replica 2 to catch up by state sync: {notices.of(2, 'replica.')}"
    assert cluster.nodes[2].replica.log.base > 0, "expected replica 2's log to start at a base"
    assert cluster.checker.checkpoint_states_checked > 0


# --- checkpoints at agreed ops ---------------------------------------------------------------


def test_checkpoints_are_sealed_at_agreed_ops_with_the_committed_hash() -> None:
    """Every replica seals its checkpoints at the multiples of the interval, so that at any
    op two replicas have both sealed, they vouch for the same chain hash — the one the
    committed history has there (the checker compares every checkpoint it sees)."""
    options = quiet_options(clients=3, requests=60, fault_ticks=2_500)
    cluster = Cluster(7, options)
    result = cluster.run()
    assert_clean(result)
    checkpoints = [node.replica.log.checkpoint for node in cluster.nodes]
    assert all(c is not None for c in checkpoints), f"expected checkpoints: {checkpoints}"
    sealed = {(c.position, c.chain_hash) for c in checkpoints if c is not None}
    assert len(sealed) == 1, f"expected one checkpoint op and hash on every replica: {sealed}"
    position, chain = next(iter(sealed))
    assert position % CHECKPOINT_INTERVAL_OPS == 0 and position > 0, position
    assert chain == cluster.checker.canonical[position - 1]
    assert cluster.checker.checkpoints_checked > 0, "expected the checker to compare them"


def test_checkpoint_states_are_byte_identical_across_replicas() -> None:
    """At the sealed checkpoint op every replica holds the same state bytes (state machine
    snapshot and client table), and they restore a machine equal to the one that took them."""
    options = quiet_options(clients=3, requests=60, fault_ticks=2_500)
    cluster = Cluster(7, options)
    result = cluster.run()
    assert_clean(result)
    states = [node.replica.checkpoint_state for node in cluster.nodes]
    assert all(s is not None for s in states), f"expected a state at every seal: {states}"
    # Once durable, a state's bytes are in its state file (memory keeps its digest).
    found = {
        (s.op, s.digest, node.disk.contents(superblock.state_path(s.op)))
        for s, node in zip(states, cluster.nodes, strict=True)
        if s is not None
    }
    assert len(found) == 1, f"expected one byte-identical state, got ops {[s[0] for s in found]}"
    op, digest, data = next(iter(found))
    opened = open_checkpoint(data, digest)
    assert opened.op == op and opened.chain_hash == cluster.checker.canonical[op - 1]
    machine = cluster.nodes[0].replica.machine
    restored = type(machine).restore(opened.machine_snapshot)
    assert restored.snapshot() == opened.machine_snapshot
    assert opened.clients, "expected registered clients in the checkpoint's client table"
    assert cluster.checker.checkpoint_states_checked >= len(cluster.nodes)


class LeakyCheckpoints(Replica):
    """A replica whose checkpoint state carries its own id: not the same on every replica."""

    def _checkpoint_state(self) -> CheckpointState:
        state = super()._checkpoint_state()
        assert state.stream is not None
        parts = [*iter(state.stream.next_part, None), bytes([self.config.replica_id])]
        leaked = StateStream(state.op, state.chain_hash, [], (sum(map(len, parts)), iter(parts)))
        return CheckpointState(state.op, state.chain_hash, leaked, None)


def test_checker_catches_checkpoint_states_that_differ_between_replicas() -> None:
    options = quiet_options(clients=3, requests=60, fault_ticks=2_500)
    result = Cluster(7, options, replica_factory=LeakyCheckpoints).run()
    assert any("checkpoint state at op" in v for v in result.violations), (
        f"expected the checker to flag differing checkpoint states, got {result.violations}"
    )


def test_a_wiped_replica_rebuilds_the_same_checkpoint_state() -> None:
    """A backup wiped after the first checkpoint op rejoins by journal transfer from op 0,
    applies the log again, and takes a checkpoint state byte-identical to the others' (the
    checker compares the states it takes after the wipe with the ones taken before)."""

    def script_it(cluster: Cluster, script: Script) -> None:
        backup = lambda: cluster.nodes[1].replica  # noqa: E731
        past_checkpoint = lambda: backup().commit > CHECKPOINT_INTERVAL_OPS  # noqa: E731
        script.then("past a checkpoint", past_checkpoint, lambda: cluster.wipe(1, down_ticks=50))

    cluster, notices, _ = run_scenario(7, script_it, requests=60)
    assert notices.of(1, "replica.recovered"), "expected replica 1 to rejoin a view"
    held = [node.replica.checkpoint_state for node in cluster.nodes]
    states = {None if s is None else (s.op, s.chain_hash, s.digest) for s in held}
    assert len(states) == 1 and None not in states and None not in next(iter(states)), (
        f"expected one state at the sealed checkpoint op on every replica: {states}"
    )
    assert cluster.checker.checkpoint_states_checked > len(cluster.nodes)
