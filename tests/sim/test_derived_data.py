"""A replica whose derived data reads back damaged halts, and its restart rebuilds the data.

The event store keeps its events' bytes in derived storage (``craton.core.storage``) and
checks every append it reads back against a checksum held in memory. Here replica 0's
first machine keeps them in a blob that flips a bit in whatever it returns once some
events were written. The first read or checkpoint state that meets it halts the replica
with that reason (it never answers from the bytes); the simulator restarts it, the new
machine is rebuilt from the checkpoint state and the log, and the run passes every checker.
"""

from __future__ import annotations

import attrs
import pytest

from craton.core.event_store import EventStore
from craton.core.state_machine import StateMachine
from craton.core.storage import MemoryBlob
from craton.sim import cluster as sim_cluster
from craton.sim.cluster import Cluster
from craton.sim.workload import event_store_is_read, event_store_operation
from tests.sim.test_vsr_scenarios import assert_clean, quiet_options

FLIP_AFTER_BYTES = 200  # the blob turns bad once this much was appended


class FlippingBlob(MemoryBlob):
    """Returns its bytes with one bit flipped once it holds ``FLIP_AFTER_BYTES``."""

    def read(self, offset: int, size: int) -> bytes:
        data = super().read(offset, size)
        if self.size < FLIP_AFTER_BYTES or not data:
            return data
        return bytes([data[0] ^ 0x01]) + data[1:]


class FlippingStorage:
    def open_blob(self, name: str) -> MemoryBlob:
        del name
        return FlippingBlob()


def test_damaged_derived_data_halts_the_replica_and_a_restart_rebuilds_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made: list[StateMachine] = []

    def make() -> StateMachine:
        # replica 0 is made first; every later machine (restarts included) is sound
        machine = EventStore(FlippingStorage() if not made else None)
        made.append(machine)
        return machine

    kind = sim_cluster.MachineKind(make, event_store_operation, event_store_is_read)
    monkeypatch.setitem(sim_cluster.MACHINES, "flipping", kind)
    options = quiet_options(clients=3, requests=30, fault_ticks=1_500)
    lines: list[str] = []
    cluster = Cluster(5, attrs.evolve(options, machine="flipping"), trace=lines.append)
    result = cluster.run()
    assert_clean(result)
    halts = [line for line in lines if "r0 halted" in line]
    assert halts, "replica 0 never met its damaged bytes"
    assert "derived data" in halts[0] and "do not match their checksum" in halts[0], halts[0]
    assert not any("halted" in line for line in lines if "r0 halted" not in line)
    assert len(made) > 3, "replica 0 was never restarted with a new machine"
    assert cluster.nodes[0].replica.machine is not made[0], "replica 0 kept the damaged data"
