"""The journal a replica holds in memory is a limit with a defined behaviour, not an
assertion: a primary whose journal reached ``JOURNAL_OPS_MAX`` entries answers new requests
BUSY (``replica.journal_full``, said once per journal that filled) and prepares nothing
more until a saved checkpoint state releases the journal below it.

In the profiles the limit lies well past the spacing of checkpoint states, so it is reached
only when states cannot be saved; here the limit is lowered below the first state's op, so
the journal fills and stays full: the cluster stays safe, and the clients are answered BUSY
(their requests are never prepared).
"""

from __future__ import annotations

import pytest

from craton.core.vsr import replica as replica_module
from craton.sim.cluster import Cluster
from tests.sim.test_vsr_scenarios import quiet_options

LIMIT = 12  # below the shrunk profile's first checkpoint (op 32)


def test_a_full_journal_answers_busy_and_prepares_nothing_more(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(replica_module, "JOURNAL_OPS_MAX", LIMIT)
    lines: list[str] = []
    cluster = Cluster(3, quiet_options(clients=2, requests=30, fault_ticks=600), trace=lines.append)
    result = cluster.run()
    assert not result.violations, result.violations
    assert result.liveness == "fail", "the clients' requests past the limit cannot finish"
    full = [line for line in lines if "replica.journal_full" in line]
    assert len(full) == 1, full  # said once: the journal stays full
    for node in cluster.nodes:
        held = node.replica.head - node.replica.first_op
        assert held <= LIMIT + cluster.nodes[0].replica.config.pipeline_max, held
    assert result.gateway["busy"] > 0, result.gateway
