"""A replica catching up by state transfer asks once per answer that brought news: answers
slower than its quiet window, or duplicated, never breed more asks (before, each slow answer
led to two asks for the same entries, and a wiped replica's rejoin slowed down much faster
than the log grew: over 260 s for 200,000 ops on a real cluster)."""

from __future__ import annotations

import attrs

from craton.core.wire.replica import SUFFIX_ENTRIES_MAX
from craton.sim.cluster import Cluster
from craton.sim.network import NetworkFaults
from tests.sim.test_vsr_scenarios import Script, assert_clean, quiet_options

OPS = 12 * SUFFIX_ENTRIES_MAX


def test_a_wiped_replica_asks_about_once_per_batch_it_needs() -> None:
    # Answers take 8..10 ticks each way: longer than the quiet window (5 ticks).
    network = attrs.evolve(NetworkFaults.none(), latency_ticks_min=8, latency_ticks_max=10)
    # The production profile: no checkpoint is sealed before op 1024, so the whole log comes
    # by transfer.
    options = attrs.evolve(
        quiet_options(clients=4, requests=OPS // 4 + 8, fault_ticks=20_000),
        network=network,
        sizes="production",
    )
    lines: list[str] = []
    cluster = Cluster(3, options, trace=lines.append)
    script = Script(cluster)
    marks: dict[str, int] = {}

    def wipe() -> None:
        marks["wiped_at"] = len(lines)
        marks["head"] = cluster.nodes[0].replica.head
        cluster.wipe(2, down_ticks=5)

    def rejoined() -> bool:
        replica = cluster.nodes[2].replica
        return cluster.nodes[2].up and replica.head >= marks["head"] and not replica.recovering

    script.then("ops committed", lambda: cluster.nodes[0].replica.commit >= OPS, wipe)
    script.then("replica 2 rejoined", rejoined, lambda: marks.setdefault("done", len(lines)))
    result = cluster.run()
    assert_clean(result)
    assert "replica 2 rejoined" in script.fired, script.fired
    window = lines[marks["wiped_at"] : marks["done"]]
    asks = sum(1 for line in window if ": GetState" in line and " <- 2: " in line)
    batches = marks["head"] // SUFFIX_ENTRIES_MAX + 1
    # An answer takes 16..20 ticks to come back and the quiet window is 5: the replica asks
    # again up to 4 times while it waits. What must not happen is asks multiplying (241
    # for these 13 batches when every slow answer led to two more).
    assert asks <= 5 * batches, f"{asks} asks for the {batches} batches of {marks['head']} ops"
