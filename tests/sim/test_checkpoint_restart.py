"""A replica restarts from the latest checkpoint state its superblock names, and reloads only
the log past it; a state that does not check out is never used.

A quiet three-replica cluster commits past two checkpoints; replica 2 is crashed and comes
back. Its restart reads the state file the superblock names, checks it against the digest
named with it, restores the machine and client table from it, and reloads the journal from
the state's op on (``replica.restarted_from_state``): the run then passes every checker,
the state agreement and the replay of the committed history among them. With the state
file damaged while the replica is down, the restart refuses it
(``replica.restart_state_unusable``) and reloads the whole log from its base instead.
"""

from __future__ import annotations

import attrs

from craton.core.superblock import state_path
from craton.sim.cluster import Cluster
from tests.sim.test_vsr_scenarios import Script, assert_clean, quiet_options

INTERVAL = 32  # the shrunk profile's checkpoint interval
DOWN_TICKS = 40


def _restart_after_two_checkpoints(
    *, damage_state: bool, machine: str = "kv"
) -> tuple[Cluster, dict[str, int]]:
    options = quiet_options(clients=3, requests=40, fault_ticks=1_500)
    cluster = Cluster(11, attrs.evolve(options, machine=machine))
    script = Script(cluster)
    named: list[int] = []
    sizes: list[int] = []  # of the states the crashes left named

    def saved_a_state() -> bool:
        replica = cluster.nodes[2].replica
        state, persisted = replica.durable_state, replica._named_state
        return (
            state is not None
            and state.op >= 2 * INTERVAL
            and persisted is not None
            and persisted.op == state.op  # the superblock names it
        )

    def crash() -> None:
        state = cluster.nodes[2].replica.durable_state
        assert state is not None
        named.append(state.op)
        sizes.append(state.size)
        cluster.crash(2, down_ticks=DOWN_TICKS)
        if damage_state:
            cluster.nodes[2].disk.corrupt(state_path(state.op), state.size // 2, 1)

    script.then("state saved", saved_a_state, crash)
    result = cluster.run()
    assert_clean(result)
    assert named, "replica 2 never saved a checkpoint state"
    return cluster, {**result.repairs, "state_size": sizes[0]}


def test_a_restart_begins_at_the_named_checkpoint_state() -> None:
    _, repairs = _restart_after_two_checkpoints(damage_state=False)
    assert repairs.get("checkpoint_restarts", 0) >= 1, repairs
    assert repairs.get("checkpoint_restarts_refused", 0) == 0, repairs


def test_a_state_written_in_parts_restarts_the_replica_and_rebuilds_its_derived_data() -> None:
    """The event store's states outgrow a part (``state_part_bytes``): the state file is
    written a part at a time, the restart reads it whole, and the new machine rebuilds its
    events' blob from it (a crash empties derived storage)."""
    cluster, repairs = _restart_after_two_checkpoints(damage_state=False, machine="event_store")
    assert repairs.get("checkpoint_restarts", 0) >= 1, repairs
    part_bytes = cluster.nodes[2].replica.config.state_part_bytes
    assert repairs["state_size"] > part_bytes, (
        f"expected the restart's state to span two {part_bytes}-byte parts or more: {repairs}"
    )


def test_a_damaged_state_is_refused_and_the_log_is_reloaded_from_its_base() -> None:
    _, repairs = _restart_after_two_checkpoints(damage_state=True)
    assert repairs.get("checkpoint_restarts_refused", 0) >= 1, repairs


def test_a_state_being_written_is_kept_when_later_checkpoints_are_sealed() -> None:
    """On a slow disk (or with a large state) the log seals later checkpoints while a
    state's file is still being written. The state in flight must be kept: dropped, its
    write would end as "superseded" and the replica would name, and restart from, an older
    state (states are further apart than checkpoints), replaying and retaking the ones in
    between. Without the rule, ``_release_checkpoints`` drops it."""
    cluster = Cluster(2, quiet_options(clients=3, requests=40, fault_ticks=2_500))
    assert_clean(cluster.run())
    replica = cluster.nodes[0].replica
    sealed = replica.log.checkpoint
    assert sealed is not None and sealed.position in replica.checkpoints
    being_written = sealed.position - replica.config.checkpoint_interval_ops
    held = replica.checkpoints[sealed.position]
    replica.checkpoints[being_written] = held  # as if its write were still in flight
    replica._saving_state = being_written
    replica._release_checkpoints()
    assert being_written in replica.checkpoints, "the state being written was dropped"
    replica._saving_state = None
    replica._release_checkpoints()
    assert being_written not in replica.checkpoints, "a state below the seal is released"
