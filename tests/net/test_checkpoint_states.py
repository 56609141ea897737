"""Checkpoint states between real processes: three ``craton-server`` replicas on loopback run
the production profile, which takes checkpoint states (every 1,024 committed ops while the
log is short), releases the journal below them, restarts from them and sends them to a
replica that lacks the ops below its peers' journals (state sync over TCP, signed and
verified as in the simulator).

- a replica killed with SIGKILL once a state is durable restarts from that state and
  reloads only the log past it;
- a replica whose disk was lost after its peers released their journals rejoins by
  installing a peer's checkpoint state, then the ops past it; it counts in the quorum
  again, and every acknowledged append is there.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from craton.client import AsyncClient, Client
from craton.core.vsr.profile import PRODUCTION
from tests.net.cluster_support import LocalCluster, commits_converge, read_log
from tests.net.test_lifecycle import verify

WRITERS = 16
# past the first checkpoint state (taken at op 1024) and its journal release, by a margin
PER_WRITER = (PRODUCTION.checkpoint_interval_ops + 300) // WRITERS
EVENT_TIMEOUT_S = 60.0


def _stream(writer: int) -> str:
    return f"kept-{writer}"


async def _fill(address: str) -> None:
    """``PER_WRITER`` one-event appends by each of ``WRITERS`` concurrent clients, each to a
    stream of its own: event ``n`` of writer ``w`` is ``b"w n"``, at offset ``n``."""

    async def writer(number: int) -> None:
        client = AsyncClient(address, retry_deadline_s=20.0)
        try:
            await client.create_stream(_stream(number))
            for n in range(PER_WRITER):
                await client.append(_stream(number), [b"%d %d" % (number, n)])
        finally:
            await client.close()

    await asyncio.gather(*(writer(number) for number in range(WRITERS)))


def _read_all(client: Client, stream: str) -> list[bytes]:
    events: list[bytes] = []
    while batch := client.read(stream, from_offset=len(events), max_events=1000).events:
        events.extend(batch)
    return events


def test_restart_from_a_checkpoint_state_and_state_sync_over_tcp(tmp_path: Path) -> None:
    with LocalCluster(tmp_path) as cluster:
        cluster.start()
        primary = cluster.wait_primary()
        asyncio.run(_fill(cluster.addresses[primary]))
        asyncio.run(commits_converge(cluster.addresses))
        restarted, lost = (primary + 1) % 3, (primary + 2) % 3

        # A backup killed once its checkpoint state is durable restarts from that state.
        node = cluster.nodes[restarted]
        node.wait_for("replica.journal_released", EVENT_TIMEOUT_S)
        node.process.kill()
        node.process.wait()
        node.start(wait_ready=False)
        from_state = node.wait_for("replica.restarted_from_state", EVENT_TIMEOUT_S)
        assert int(str(from_state["op"])) >= PRODUCTION.checkpoint_interval_ops, from_state
        node.wait_for("replica.started", EVENT_TIMEOUT_S)
        asyncio.run(commits_converge(cluster.addresses))

        # A backup whose disk is lost after the others released their journals rejoins by
        # state sync: its peers no longer hold the ops below their checkpoint state.
        node = cluster.nodes[lost]
        assert node.stop() == 0
        shutil.rmtree(node.data_dir)
        node.env["VDB_CLUSTER_FORMED"] = "true"
        node.start(wait_ready=False)
        synced = node.wait_for("replica.state_synced", EVENT_TIMEOUT_S)
        assert int(str(synced["op"])) >= PRODUCTION.checkpoint_interval_ops, synced
        node.wait_for("replica.recovered", EVENT_TIMEOUT_S)
        asyncio.run(commits_converge(cluster.addresses))

        # From now on the primary needs the rejoined replica's acknowledgement.
        assert cluster.nodes[restarted].stop() == 0
        with Client(cluster.addresses[primary], retry_deadline_s=15) as client:
            reply = client.append(_stream(0), [b"after"])
            assert reply.first_offset == PER_WRITER, reply
            for number in range(WRITERS):
                expected = [b"%d %d" % (number, n) for n in range(PER_WRITER)]
                expected += [b"after"] if number == 0 else []
                assert _read_all(client, _stream(number)) == expected, number
        cluster.stop_all()
    # The rejoined replica's log starts at the state it installed: ``read_log`` reads logs
    # that start at op 0, and finds no record there.
    assert read_log(cluster.nodes[lost].data_dir) == [], "expected a log starting at a state"
    assert len(read_log(cluster.nodes[primary].data_dir)) > PRODUCTION.checkpoint_interval_ops
    verify(cluster.nodes[lost].data_dir)
