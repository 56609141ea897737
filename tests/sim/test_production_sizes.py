"""The production profile's checkpoint states, in the simulator: a cluster with exactly the
sizes a node runs (1,024 ops per checkpoint, 8 MiB state parts) commits past its first
checkpoint states; a replica that crashes restarts from its state, and a replica whose disk
is wiped once the others released their journals rejoins by state sync. The swarm's
production-sized seeds are too short to seal a checkpoint (a few hundred ops), so this
scripted run is where those paths meet the production sizes in simulation.
"""

from __future__ import annotations

import attrs

from craton.core.vsr.profile import PRODUCTION
from craton.sim.cluster import Cluster
from tests.sim.test_vsr_scenarios import Script, assert_clean, quiet_options

OPS = PRODUCTION.checkpoint_interval_ops + 200
CLIENTS = 8


def test_production_sizes_restart_from_a_state_and_sync_one() -> None:
    options = attrs.evolve(
        quiet_options(clients=CLIENTS, requests=OPS // CLIENTS + 40, fault_ticks=60_000),
        sizes="production",
    )
    lines: list[str] = []
    cluster = Cluster(1, options, trace=lines.append)
    script = Script(cluster)
    primary = cluster.nodes[0].replica

    def released() -> bool:
        """Every journal released below a state that its superblock names."""
        return all(
            node.replica.first_op > 0 and node.replica._named_state is not None
            for node in cluster.nodes
        )

    script.then("journals released", released, lambda: cluster.crash(1, down_ticks=20))
    script.then(
        "replica 1 restarted",
        lambda: cluster.nodes[1].up and cluster.nodes[1].replica.settled,
        lambda: cluster.wipe(2, down_ticks=20),
    )
    script.then(
        "replica 2 rejoined",
        lambda: cluster.nodes[2].up and cluster.nodes[2].replica.settled,
        lambda: None,
    )
    result = cluster.run()
    assert_clean(result)
    assert list(script.fired) == ["journals released", "replica 1 restarted", "replica 2 rejoined"]
    assert primary.commit >= OPS, primary.commit
    restarts = [line for line in lines if " r1 replica.restarted_from_state" in line]
    assert restarts, "replica 1 did not restart from its checkpoint state"
    syncs = [line for line in lines if " r2 replica.state_synced" in line]
    assert syncs, "replica 2 did not rejoin by state sync"
    assert result.repairs.get("state_syncs", 0) >= 1, result.repairs
