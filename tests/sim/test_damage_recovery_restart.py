"""A replica recovering from damage to its own records that crashes part-way through
rejoining (installing its view's log) must not take its log for whole at the restart.

The replica's install cut its log at the damage and began appending the view's log: the cut
lowered the log's own certified mark, so a restart then finds a log with nothing missing by
the log's reckoning, though it lacks ops the replica had acknowledged. The recovering flag
keeps, with the damage-only flag, the mark the replica had certified when it found the
damage; the restart ends the recovery only when the log reaches that mark again, and
otherwise the replica recovers through its peers (before, it resumed, voted with the short
log in a view change, and committed ops were lost).
"""

from __future__ import annotations

import attrs
import pytest

from craton.sim.cluster import Cluster
from tests.sim.test_vsr_scenarios import Script, assert_clean, quiet_options, replica


@pytest.mark.parametrize("seed", [4, 5, 11])
def test_a_partial_rejoin_is_not_taken_for_a_finished_repair(seed: int) -> None:
    cluster = Cluster(seed, quiet_options(clients=3, requests=40, fault_ticks=3_000))
    script = Script(cluster)
    r0 = replica(cluster, 0)
    seen: dict[str, int] = {}

    def crash_r2() -> None:
        seen["lagging_head"] = replica(cluster, 2).head
        cluster.crash(2, down_ticks=100_000)

    def committed_past_r2() -> bool:
        ahead = seen["lagging_head"] + 8
        return r0.commit >= ahead and replica(cluster, 1).log.durable >= ahead

    def damage_r1() -> None:
        # Two damaged headers in a row: the salvage cannot tell how many records follow,
        # so replica 1 cannot repair by hash and rejoins through a quorum.
        k = min(r0.commit, replica(cluster, 1).log.durable) - 3
        seen["k"] = k
        cluster.corrupt_op(1, k, header=True)
        cluster.corrupt_op(1, k + 1, header=True)
        node = cluster.nodes[1]
        node.disk.fault_plan = attrs.evolve(node.disk.fault_plan, crash_lose_unsynced=1.0)
        cluster.crash(1, down_ticks=3)
        # replica 2 comes back, hearing replica 0 late but within its view change timeout
        cluster.network.clog(0, 2, duration_ticks=400, delay_ticks=30)
        cluster.nodes[2].back_at = cluster.events.now + 1

    def partial_install() -> bool:
        r1 = replica(cluster, 1)
        durable = r1.log.durable
        return cluster.nodes[1].up and r1._rejoining and seen["k"] < durable < r1.head

    def crash_both() -> None:
        cluster.crash(1, down_ticks=3)
        cluster.crash(0, down_ticks=100_000)

    script.then("replica 0 commits", lambda: r0.commit >= 6, crash_r2)
    script.then("committed past replica 2", committed_past_r2, damage_r1)
    script.then("replica 1 partly rejoined", partial_install, crash_both)
    result = cluster.run()
    assert "replica 1 partly rejoined" in script.fired, f"the schedule did not form: {script.fired}"
    assert result.repairs.get("repairs_completed_at_restart", 0) == 0, result.repairs
    assert_clean(result)
