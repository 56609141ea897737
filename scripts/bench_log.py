#!/usr/bin/env python3
"""Durable appends per second for 128-byte records, against a raw write+fsync loop.

Three figures, measured in the same run on the same file system:

  raw       os.write + os.fsync per record, in a loop (the floor: one sync per record)
  craton/1  the log on real files, one writer: each append waits for its own sync
  craton/64 the log with 64 concurrent writers: appends share syncs (group commit)

and the ratios of the Craton figures to the raw loop. Every figure is durable: a record
counts only once the sync covering it returned.

Usage: scripts/bench_log.py [--records N] [--dir PATH]   (PATH defaults to a temp folder
under the current directory, so it measures the disk the project lives on)
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from craton.io.local import LocalLog

RECORD_SIZE = 128
WRITERS = 64


def raw_loop(folder: Path, records: int) -> float:
    path = folder / "raw.bin"
    payload = b"r" * RECORD_SIZE
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        started = time.perf_counter()
        for _ in range(records):
            os.write(descriptor, payload)
            os.fsync(descriptor)
        elapsed = time.perf_counter() - started
    finally:
        os.close(descriptor)
    return records / elapsed


def craton_single(folder: Path, records: int) -> float:
    payload = b"c" * RECORD_SIZE
    with LocalLog(folder / "single") as log:
        started = time.perf_counter()
        for _ in range(records):
            log.append(payload)
        elapsed = time.perf_counter() - started
    return records / elapsed


def craton_group(folder: Path, records: int) -> tuple[float, int]:
    """64 writers, each with one append outstanding at a time."""
    payload = b"g" * RECORD_SIZE
    with LocalLog(folder / "group") as log:
        syncs_before = log.disk.fsync_count
        started = time.perf_counter()
        submitted = done = 0
        for _ in range(min(WRITERS, records)):
            log.submit_append(payload)
            submitted += 1
        while done < records:
            log.loop.run_until(lambda: bool(log.replies), 60.0)
            for request_id in sorted(log.replies):
                log.wait_append(request_id)
                done += 1
                if submitted < records:  # that writer sends its next append
                    log.submit_append(payload)
                    submitted += 1
        elapsed = time.perf_counter() - started
        syncs = log.disk.fsync_count - syncs_before
    return records / elapsed, syncs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    base = args.dir or Path.cwd()
    folder = Path(tempfile.mkdtemp(prefix="craton-bench-", dir=base))
    try:
        raw = raw_loop(folder, args.records)
        single = craton_single(folder, args.records)
        group, syncs = craton_group(folder, args.records * 4)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"durable appends of {RECORD_SIZE}-byte records on {base}")
    print(f"  raw os.write+os.fsync loop      {raw:12,.0f} /s")
    print(f"  craton, 1 writer (sync each)    {single:12,.0f} /s   ratio {single / raw:5.2f}x raw")
    print(
        f"  craton, {WRITERS} writers (group)     {group:12,.0f} /s   ratio {group / raw:5.2f}x raw"
        f"   ({args.records * 4 / max(syncs, 1):.1f} records per fdatasync)"
    )


if __name__ == "__main__":
    main()
