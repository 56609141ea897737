#!/usr/bin/env python3
"""Data larger than memory: a ``craton-server`` held to a memory limit, holding several times
that much data.

A single node (VDB_REPLICATION_MODE=single-node) runs in a memory cgroup limited to
``--limit-mib`` (swap included, where the kernel accounts for it: nothing is pushed out to
swap to make room). It is filled with ``--data-mib`` of events (``--event-bytes`` each, one
per request, from ``--clients`` concurrent clients), stopped with SIGTERM, started again in
the same cgroup on the same data, and every event is then read back and checked: each event
names its own index and its bytes follow from it, so a lost, duplicated or damaged event is
found. Printed: the data appended and the limit, the fill rate, the node's peak RSS while
appending and during the restart, the time from starting it to its ``/ready``, the events
read back and checked, the cgroup's peak usage, and whether the kernel killed anything in
it (the run fails if it did).

The page cache of the node's files counts toward the cgroup's limit too (its peak usage
reaches the limit), and the kernel reclaims it there; what must stay below the limit is the
node's own memory. A machine
without a writable memory cgroup (cgroup v1 ``memory`` or cgroup v2 with the ``memory``
controller, as root) is reported in one line and the benchmark is skipped.

Usage: scripts/bench_memory [--limit-mib L] [--data-mib D] [--event-bytes B] [--clients C]
                            [--dir PATH] [--keep]
e.g.   scripts/bench_memory --limit-mib 256 --data-mib 1024
(PATH defaults to the current directory, so it measures the disk the project lives on.)
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench_common import status_kib
from bench_restart import BenchFailed, fill, mib, probe_status, wait_ready
from bench_server import START_TIMEOUT_S, Node
from cluster import free_ports  # scripts/cluster.py: ports the node knows beforehand

from craton.client import AsyncClient

LIMIT_MIB_DEFAULT = 256
DATA_TIMES_DEFAULT = 4  # data appended: this many times the limit, unless --data-mib
EVENT_BYTES_DEFAULT = 4096
CLIENTS_DEFAULT = 16
STREAM = "memory"
READ_BYTES = 4 * 1024 * 1024  # event bytes asked for by one read back
CLIENT_RETRY_DEADLINE_S = 30.0
FILL_TIMEOUT_PER_MIB_S = 2.0
READY_TIMEOUT_S = 600.0
BYTES_PER_MIB = 1024 * 1024
CGROUP_V2 = Path("/sys/fs/cgroup")
CGROUP_V1 = Path("/sys/fs/cgroup/memory")


def event(index: int, size: int) -> bytes:
    """Event ``index``: its index, then bytes that follow from it (checked when read back)."""
    head = index.to_bytes(8, "little")
    seed = hashlib.sha256(head).digest()
    return (head + seed * (size // len(seed) + 1))[:size]


class MemoryCgroup:
    """A memory cgroup made for the run (v2, else v1), removed by ``close``."""

    def __init__(self, limit_bytes: int) -> None:
        name = f"craton-bench-memory-{os.getpid()}"
        controllers = CGROUP_V2 / "cgroup.controllers"
        if controllers.exists() and "memory" in controllers.read_text().split():
            self.path, self.version = CGROUP_V2 / name, 2
        elif (CGROUP_V1 / "memory.limit_in_bytes").exists():
            self.path, self.version = CGROUP_V1 / name, 1
        else:
            raise OSError("no cgroup v2 memory controller and no cgroup v1 memory hierarchy")
        self.path.mkdir()
        if self.version == 2:
            (self.path / "memory.max").write_text(str(limit_bytes))
            swap = self.path / "memory.swap.max"
            if swap.exists():
                swap.write_text("0")
        else:
            (self.path / "memory.limit_in_bytes").write_text(str(limit_bytes))
            both = self.path / "memory.memsw.limit_in_bytes"
            if both.exists():
                both.write_text(str(limit_bytes))

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def peak_bytes(self) -> int | None:
        """The cgroup's peak usage (its processes' memory and the page cache charged to
        it), where the kernel reports one."""
        name = "memory.peak" if self.version == 2 else "memory.max_usage_in_bytes"
        try:
            return int((self.path / name).read_text())
        except (OSError, ValueError):
            return None

    def oom_kills(self) -> int:
        if self.version == 2:
            lines = (self.path / "memory.events").read_text().splitlines()
            events = {name: int(value) for name, value in (line.split() for line in lines)}
            return events.get("oom_kill", 0)
        for line in (self.path / "memory.oom_control").read_text().splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
        return 0

    def close(self) -> None:
        for _ in range(50):  # the processes in it are gone once their exit is reaped
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)


async def read_back(address: str, appends: int, size: int) -> int:
    """Read the whole stream back; every index exactly once, every event's bytes as
    written. Returns the events checked."""
    seen = bytearray(appends)
    offset = 0
    async with AsyncClient(address, retry_deadline_s=CLIENT_RETRY_DEADLINE_S) as client:
        while True:
            result = await client.read(STREAM, offset, max_bytes=READ_BYTES)
            if not result.events:
                break
            for found in result.events:
                index = int.from_bytes(found[:8], "little")
                if index >= appends or found != event(index, size):
                    raise BenchFailed(f"event {offset} holds bytes that no append wrote")
                if seen[index]:
                    raise BenchFailed(f"event {index} is in the stream twice")
                seen[index] = 1
                offset += 1
    if offset != appends:
        raise BenchFailed(f"read back {offset} events, {appends} were appended")
    return offset


def run(args: argparse.Namespace, folder: Path, cgroup: MemoryCgroup) -> dict[str, str]:
    limit = args.limit_mib * BYTES_PER_MIB
    data_mib = args.data_mib if args.data_mib is not None else DATA_TIMES_DEFAULT * args.limit_mib
    appends = data_mib * BYTES_PER_MIB // args.event_bytes
    bind_port, metrics_port = free_ports(2)
    address = f"127.0.0.1:{bind_port}"
    ready_url = f"http://127.0.0.1:{metrics_port}/ready"
    settings = {"VDB_BIND_ADDR": address, "VDB_METRICS_ADDR": f"127.0.0.1:{metrics_port}"}
    rows: dict[str, str] = {}
    print(
        f"data under {folder}; a node held to {args.limit_mib} MiB, filled with {data_mib:,} MiB "
        f"({appends:,} events of {args.event_bytes} bytes, {args.clients} clients)",
        flush=True,
    )
    started_s = time.monotonic()
    node = Node("single-node", folder, **settings)
    try:
        cgroup.add(node.process.pid)
        wait_ready(node, ready_url, START_TIMEOUT_S, started_s)
        size = args.event_bytes
        elapsed_s = asyncio.run(
            fill(
                [address],
                appends,
                args.clients,
                "single-node",
                stream=STREAM,
                event=lambda index: event(index, size),
                timeout_s=60 + FILL_TIMEOUT_PER_MIB_S * appends * size / BYTES_PER_MIB,
            )
        )
        rows["data appended (MiB)"] = f"{appends * args.event_bytes / BYTES_PER_MIB:,.0f}"
        rows["memory limit (MiB)"] = f"{args.limit_mib:,}"
        rows["data / limit"] = f"{appends * args.event_bytes / limit:.1f}"
        rows["fill (appends/s)"] = f"{appends / elapsed_s:,.0f}"
        rows["peak RSS while appending (MiB)"] = f"{mib(node.peak_rss_kib()):,.0f}"
        node.stop()
        if node.process.returncode != 0:
            raise BenchFailed(f"the node stopped with status {node.process.returncode}")
        (folder / "server.log").rename(folder / "server-fill.log")
        started_s = time.monotonic()
        node = Node("single-node", folder, **settings)
        cgroup.add(node.process.pid)
        rows["restart-to-ready (s)"] = (
            f"{wait_ready(node, ready_url, READY_TIMEOUT_S, started_s):.2f}"
        )
        rows["RSS when ready (MiB)"] = f"{mib(status_kib(node.process.pid, 'VmRSS')):,.0f}"
        rows["peak RSS during restart (MiB)"] = f"{mib(node.peak_rss_kib()):,.0f}"
        checked = asyncio.run(read_back(address, appends, args.event_bytes))
        rows["events read back and checked"] = f"{checked:,}"
        rows["peak RSS after reading all back (MiB)"] = f"{mib(node.peak_rss_kib()):,.0f}"
        if probe_status(ready_url) != 200:
            raise BenchFailed("the node is not ready after the read back")
    finally:
        node.stop()
    peak = cgroup.peak_bytes()
    rows["cgroup peak usage (MiB)"] = "?" if peak is None else f"{peak / BYTES_PER_MIB:,.0f}"
    kills = cgroup.oom_kills()
    rows["processes killed for memory"] = f"{kills}"
    if kills:
        raise BenchFailed(f"the kernel killed {kills} process(es) of the node's cgroup")
    return rows


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench_memory",
        description="A craton-server held to a memory limit, holding several times as much data.",
    )
    parser.add_argument(
        "--limit-mib",
        type=int,
        default=LIMIT_MIB_DEFAULT,
        metavar="L",
        help=f"the node's memory limit (default: {LIMIT_MIB_DEFAULT})",
    )
    parser.add_argument(
        "--data-mib",
        type=int,
        default=None,
        metavar="D",
        help=f"event bytes appended (default: {DATA_TIMES_DEFAULT} times the limit)",
    )
    parser.add_argument(
        "--event-bytes",
        type=int,
        default=EVENT_BYTES_DEFAULT,
        metavar="B",
        help=f"bytes of each event (default: {EVENT_BYTES_DEFAULT})",
    )
    parser.add_argument(
        "--clients",
        type=int,
        default=CLIENTS_DEFAULT,
        metavar="C",
        help=f"concurrent clients that fill (default: {CLIENTS_DEFAULT})",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        metavar="PATH",
        help="where the temporary folder goes (default: the current directory)",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the temporary folder's data and logs (default: remove them)",
    )
    args = parser.parse_args(argv)  # fmt: skip
    if args.limit_mib < 64 or args.event_bytes < 8 or args.clients < 1:
        parser.error("--limit-mib is 64 at least, --event-bytes 8 at least, --clients 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        cgroup = MemoryCgroup(args.limit_mib * BYTES_PER_MIB)
    except OSError as error:
        print(f"skipped: no memory cgroup to hold the node in ({error}; root is needed)")
        return 0
    base = (args.dir or Path.cwd()).resolve()
    folder = Path(tempfile.mkdtemp(prefix=".bench-memory-", dir=base))
    try:
        rows = run(args, folder, cgroup)
    except BenchFailed as failed:
        print(f"failed: {failed}", file=sys.stderr)
        return 1
    finally:
        cgroup.close()
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    width = max(len(name) for name in rows)
    print()
    for name, value in rows.items():
        print(f"{name:<{width}}  {value:>12}")
    if args.keep:
        print(f"kept {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
