"""A replica of a real 3-node cluster whose log was damaged while it was down, inside records
its witness certified durable (records it had acknowledged to the primary).

The backup is killed with SIGKILL, so no clean close certifies its tail: only its witness
file (``durable``) says how far its log was durable. Its segment is then cut, either at a
record boundary or inside a record, ten records before the end. Then:

- ``craton verify`` judges the directory by the node's own rules: DAMAGED, naming the
  segment file and the offset where the certified records go missing;
- restarted, the replica says what was damaged (one warning line with file, offset and
  record), rejoins through the cluster, and says so (``replica.recovered``);
- ``/ready`` answers 503 until then: the first 200 comes only after the rejoin is logged,
  so a rolling restart that waits for ``/ready`` cannot stop a second replica too early;
- nothing acknowledged is lost: the rejoined replica's log equals the primary's, and
  verifies clean.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from craton.client import Client
from tests.io.test_verify_and_recovery_on_files import record_offsets, run_verify
from tests.net.cluster_support import LocalCluster, commits_converge, read_log
from tests.net.support import http_get
from tests.net.test_lifecycle import verify

APPENDS = 40
CUT_RECORDS = 10  # records cut off the end of the damaged replica's segment
READY_TIMEOUT_S = 30.0
POLL_S = 0.01
SEGMENT = "log/0000000000.seg"


def ready_statuses(address: str, until: float) -> list[tuple[int, dict[str, object]]]:
    """Poll ``/ready`` until it answers 200: every answer seen, in order."""
    seen: list[tuple[int, dict[str, object]]] = []
    while time.monotonic() < until:
        try:
            status, _, body = http_get(address, "/ready")
        except OSError:  # not listening yet
            time.sleep(POLL_S)
            continue
        seen.append((status, json.loads(body)))
        if status == 200:
            return seen
        time.sleep(POLL_S)
    raise AssertionError(f"/ready did not answer 200 within {READY_TIMEOUT_S} s: {seen[-3:]}")


@pytest.mark.parametrize("cut", ["at-a-record", "inside-a-record"])
def test_a_replica_damaged_inside_certified_records_is_named_repaired_and_not_ready_before(
    tmp_path: Path, cut: str
) -> None:
    with LocalCluster(tmp_path) as cluster:
        cluster.start()
        primary = cluster.wait_primary()
        damaged = (primary + 1) % 3
        with Client(cluster.addresses[primary], retry_deadline_s=10) as client:
            client.create_stream("kept")
            for number in range(APPENDS):
                client.append("kept", [b"event %d" % number])
        asyncio.run(commits_converge(cluster.addresses))
        node = cluster.nodes[damaged]
        node.kill9()
        segment = node.data_dir / SEGMENT
        data = segment.read_bytes()
        offsets = record_offsets(data)
        first_cut = len(offsets) - CUT_RECORDS
        offset = offsets[first_cut]
        with segment.open("r+b") as file:
            file.truncate(offset if cut == "at-a-record" else offset + 9)

        result = run_verify(node.data_dir)
        assert result.returncode == 1, result.stdout + result.stderr
        assert result.stdout.startswith("DAMAGED "), result.stdout
        assert f"file '{SEGMENT}' offset {offset}: " in result.stdout, result.stdout
        assert "certified durable" in result.stdout, result.stdout

        node.start(wait_ready=False)
        seen = ready_statuses(cluster.addresses[damaged], time.monotonic() + READY_TIMEOUT_S)
        events = node._own_events()  # read at the first 200: what the node had said by then
        names = [e["event"] for e in events]
        assert "replica.recovered" in names, f"/ready said 200 before the rejoin: {names}"
        assert all(status == 503 for status, _ in seen[:-1]), seen
        damage = [e for e in events if e["event"] in ("log.damage_cut", "log.records_missing")]
        assert len(damage) == 1, damage
        assert damage[0]["level"] == "warn" and damage[0]["file"] == SEGMENT, damage
        if cut == "at-a-record":
            assert damage[0]["event"] == "log.records_missing", damage
            assert (damage[0]["offset"], damage[0]["from_record"]) == (offset, first_cut)
        else:
            assert damage[0]["event"] == "log.damage_cut", damage
            assert (damage[0]["offset"], damage[0]["record"]) == (offset, first_cut)
        recovering = [e for e in events if e["event"] == "replica.recovering"]
        assert recovering and recovering[0]["reason"] == "damaged", recovering
        assert recovering[0]["lost_from"] == first_cut and recovering[0]["level"] == "warn"
        recovered = next(e for e in events if e["event"] == "replica.recovered")
        assert recovered["level"] == "info" and int(str(recovered["head"])) >= len(offsets)

        asyncio.run(commits_converge(cluster.addresses))
        commits = cluster.stop_all()
    commit = commits[primary]
    logs = {index: read_log(cluster.nodes[index].data_dir) for index in (primary, damaged)}
    assert logs[damaged][:commit] == logs[primary][:commit], "the repaired log differs"
    verify(cluster.nodes[damaged].data_dir)
