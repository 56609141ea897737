"""``craton demo``: a seeded end-to-end run of the log, in the simulator and on real files.

In the simulator it appends records from several concurrent writers onto a faulty disk,
crashes the process at seeded moments (losing or tearing unsynced writes), recovers, and
checks that every acknowledged record is still there, byte for byte, and that the directory
passes the offline audit. On real files (``--data-dir``) it does the same without the
crashes, closes with a sealed checkpoint, reopens, and audits the directory.
Each part prints one JSON line; the exit code is 0 when every check held, 1 otherwise.
"""

from __future__ import annotations

import json
from pathlib import Path

from craton.core.audit import audit
from craton.core.log import SEGMENT_FOLDER
from craton.core.prng import Prng
from craton.io.clock import SYSTEM_CLOCK, Clock, monotonic_s
from craton.io.local import LocalLog
from craton.sim.disk import DiskFaults
from craton.sim.log_world import AppendOk, LogWorld

WRITERS = 16
CRASHES = 3


def run_demo(*, seed: int, records: int, data_dir: Path | None) -> int:
    ok = _simulated(seed, records)
    if data_dir is not None:
        ok = _on_files(seed, records, data_dir) and ok
    return 0 if ok else 1


def _simulated(seed: int, records: int) -> bool:
    prng = Prng(seed, "demo")
    faults = DiskFaults.draw(prng.split("faults"), destructive=False)
    world = LogWorld(seed, faults, segment_size_max=256 * 1024, checkpoint_interval=256)
    crash_points = sorted(prng.split("crashes").below(records) for _ in range(CRASHES))
    payloads = prng.split("payloads")
    acked: list[bytes] = []
    problems: list[str] = []
    sent = 0
    while sent < records and not problems:
        batch = [payloads.random_bytes(payloads.between(16, 512)) for _ in range(WRITERS)]
        waiting = [(world.submit_append(body), body) for body in batch]
        sent += len(batch)
        crash = bool(crash_points) and sent >= crash_points[0]
        if not crash:
            for request_id, body in waiting:
                reply = world.wait(request_id)
                if reply is None:  # the log halted on a failed write: restart it
                    break
                if not isinstance(reply, AppendOk) or reply.position != len(acked):
                    problems.append(f"append answered {reply}")
                    break
                acked.append(body)
                waiting = waiting[1:]
            else:
                continue
        else:
            crash_points.pop(0)
        world.crash_and_recover()
        head = world.service.log.head
        if not world.is_open or head < len(acked):
            problems.append(f"recovery lost acknowledged records (head {head})")
        acked = acked + [body for _, body in waiting][: head - len(acked)]
    world.settle()
    for position in range(0, len(acked), max(1, len(acked) // 50)):
        if world.read(position) != acked[position]:
            problems.append(f"read of record {position} returned other bytes")
    names = [p.split("/", 1)[1] for p in world.disk.paths() if p.startswith(SEGMENT_FOLDER)]
    report = audit(names, world.disk.contents, public_key=world.service.log.public_key)
    if not report.ok:
        problems.append(f"audit: {report.problem}")
    injected = {name: count for name, count in world.disk.faults.items() if count}
    print(
        json.dumps(
            {
                "part": "simulated",
                "seed": seed,
                "result": "pass" if not problems else "fail",
                "records_acknowledged": len(acked),
                "records_audited": report.records,
                "checkpoints": report.checkpoints,
                "restarts": world.boots - 1,
                "ticks": world.events.now,
                "faults_injected": injected,
                "problems": problems,
            },
            sort_keys=True,
        )
    )
    return not problems


def _on_files(seed: int, records: int, data_dir: Path, clock: Clock = SYSTEM_CLOCK) -> bool:
    payloads = Prng(seed, "demo-files")
    problems: list[str] = []
    started_s = monotonic_s(clock)
    with LocalLog(data_dir) as log:
        first = log.head
        bodies = [payloads.random_bytes(payloads.between(16, 512)) for _ in range(records)]
        positions: list[int] = []
        for start in range(0, records, WRITERS):
            ids = [log.submit_append(body) for body in bodies[start : start + WRITERS]]
            positions.extend(log.wait_append(request_id) for request_id in ids)
        if positions != list(range(first, first + records)):
            problems.append("positions are not dense and in order")
        for index in range(0, records, max(1, records // 50)):
            if log.read(positions[index]) != bodies[index]:
                problems.append(f"read of record {positions[index]} returned other bytes")
    elapsed_s = monotonic_s(clock) - started_s
    with LocalLog(data_dir) as reopened:
        if reopened.head != first + records:
            problems.append(f"reopened log has {reopened.head} records")
    from craton.cli import verify_directory

    report = verify_directory(data_dir)
    if not report.ok:
        problems.append(f"verify: {report.problem}")
    print(
        json.dumps(
            {
                "part": "files",
                "data_dir": str(data_dir),
                "result": "pass" if not problems else "fail",
                "records_appended": records,
                "records_total": report.records,
                "checkpoints": report.checkpoints,
                "seconds": round(elapsed_s, 3),
                "problems": problems,
            },
            sort_keys=True,
        )
    )
    return not problems
