#!/usr/bin/env python3
"""Durable appends through a real ``craton-server``, against SQLite, on the same disk.

Workloads: 1 and 64 concurrent clients, 128-byte events, 1 and 100 events per request,
each for ``--seconds``. Systems, measured in the same run:

  craton/none         craton-server with VDB_REPLICATION_MODE=none
  craton/single-node  craton-server with VDB_REPLICATION_MODE=single-node
  craton/cluster-3    three craton-server processes in cluster mode on loopback, each with
                      its own data directory on the same disk; clients talk to the primary
  sqlite              one connection per client, WAL, synchronous=FULL: one transaction
                      per request (1 or 100 rows of 128 bytes), the baseline everybody has

Every figure is durable: Craton answers an append only after its fsync; SQLite's commit
returns after its WAL fsync. Printed: requests/s, events/s, p50 and p99 latency, and the
peak RSS of the process that did the storing (the server, or the SQLite worker). Then the
ratio of craton/single-node with 64 clients, 1 event per request, to the best SQLite figure
with one row per transaction. Every process shares the machine's cores with the benchmark's
clients; the cluster's peak RSS is the largest of its three replicas. PostgreSQL and etcd
are not measured by this build (no PostgreSQL driver or etcd client is bundled): the report
says whether they are installed.

Usage: scripts/bench [--seconds S] [--dir PATH] [--only SYSTEM ...]
(PATH defaults to a temporary folder under the current directory, so it measures the disk
the project lives on; never /tmp, which may be memory)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from craton.client import AsyncClient

EVENT_SIZE = 128
CLIENT_COUNTS = (1, 64)
BATCH_SIZES = (1, 100)
SYSTEMS = ("none", "single-node", "cluster", "sqlite")
START_TIMEOUT_S = 30.0


def percentile(samples: list[float], fraction: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def summary(
    system: str, clients: int, batch: int, latencies: list[float], elapsed: float, rss_kib: int
) -> dict[str, object]:
    return {
        "system": system,
        "clients": clients,
        "batch": batch,
        "requests_per_s": len(latencies) / elapsed,
        "events_per_s": len(latencies) * batch / elapsed,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "peak_rss_mib": rss_kib / 1024,
    }


# --- craton ----------------------------------------------------------------------------------


class Node:
    def __init__(self, mode: str, folder: Path, **settings: str) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.log = folder / "server.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("VDB_")}
        env.update(
            VDB_DATA_DIR=str(folder / "data"),
            VDB_BIND_ADDR="127.0.0.1:0",
            VDB_METRICS_ADDR="127.0.0.1:0",
            VDB_REPLICATION_MODE=mode,
            VDB_LOG_LEVEL="info",
        )
        env.update(settings)
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "craton.net.server_main"], env=env, stderr=log
            )
        self.address = ""

    def wait_ready(self) -> Node:
        self.address = self._wait_listening()
        return self

    def _wait_listening(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            events = [
                json.loads(line)
                for line in self.log.read_text().splitlines()
                if line.startswith("{")
            ]
            if any(e["event"] == "server.ready" for e in events):
                return next(str(e["addr"]) for e in events if e["event"] == "server.listening")
            if self.process.poll() is not None:
                raise SystemExit(f"craton-server exited:\n{self.log.read_text()}")
            time.sleep(0.05)
        raise SystemExit(f"craton-server did not become ready:\n{self.log.read_text()}")

    def peak_rss_kib(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        return 0

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


async def craton_workload(
    address: str, clients: int, batch: int, seconds: float, stream: str
) -> tuple[list[float], float]:
    connections = [AsyncClient(address, retry_deadline_s=30) for _ in range(clients)]
    await asyncio.gather(*(c.connect() for c in connections))
    await connections[0].create_stream(stream)
    events = [b"e" * EVENT_SIZE] * batch
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker(client: AsyncClient) -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            await client.append(stream, events)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in connections))
    elapsed = time.perf_counter() - started
    await asyncio.gather(*(c.close() for c in connections))
    return latencies, elapsed


def bench_craton(mode: str, folder: Path, seconds: float) -> list[dict[str, object]]:
    node = Node(mode, folder).wait_ready()
    try:
        return run_workloads(f"craton/{mode}", node.address, seconds, lambda: [node])
    finally:
        node.stop()


def run_workloads(
    system: str, address: str, seconds: float, nodes: Callable[[], list[Node]]
) -> list[dict[str, object]]:
    results = []
    for clients in CLIENT_COUNTS:
        for batch in BATCH_SIZES:
            stream = f"bench-{clients}-{batch}"
            latencies, elapsed = asyncio.run(
                craton_workload(address, clients, batch, seconds, stream)
            )
            rss_kib = max(node.peak_rss_kib() for node in nodes())
            results.append(summary(system, clients, batch, latencies, elapsed, rss_kib))
    return results


def free_ports(count: int) -> list[int]:
    """Loopback ports that were free a moment ago (the replicas must know each other's
    addresses before any of them starts)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def bench_cluster(folder: Path, seconds: float, size: int = 3) -> list[dict[str, object]]:
    addresses = [f"127.0.0.1:{port}" for port in free_ports(size)]
    nodes: list[Node] = []
    try:
        for index in range(size):  # all start, then each waits for a view with a primary
            nodes.append(
                Node(
                    "cluster",
                    folder / f"replica{index}",
                    VDB_CLUSTER_PEERS=",".join(addresses),
                    VDB_REPLICA_ID=str(index),
                    VDB_BIND_ADDR=addresses[index],
                )
            )
        for node in nodes:
            node.wait_ready()
        # The client follows "not primary" redirects, so any replica is a fine entry point.
        return run_workloads(f"craton/cluster-{size}", addresses[0], seconds, lambda: nodes)
    finally:
        for node in nodes:
            node.stop()


# --- sqlite ----------------------------------------------------------------------------------


def sqlite_worker(path: str, clients: int, batch: int, seconds: float) -> None:
    """Runs in its own process (so its peak RSS is its own); prints one JSON line."""
    setup = sqlite3.connect(path)
    setup.execute("PRAGMA journal_mode=WAL")
    setup.execute("CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, body BLOB)")
    setup.commit()
    setup.close()
    latencies: list[float] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds
    rows = [(b"e" * EVENT_SIZE,)] * batch

    def worker() -> None:
        connection = sqlite3.connect(path, timeout=60, isolation_level=None)
        connection.execute("PRAGMA synchronous=FULL")
        mine = []
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            connection.execute("BEGIN IMMEDIATE")
            connection.executemany("INSERT INTO events (body) VALUES (?)", rows)
            connection.execute("COMMIT")
            mine.append(time.perf_counter() - started)
        connection.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    import resource

    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(summary("sqlite", clients, batch, latencies, elapsed, rss_kib)))


def bench_sqlite(folder: Path, seconds: float) -> list[dict[str, object]]:
    results = []
    for clients in CLIENT_COUNTS:
        for batch in BATCH_SIZES:
            path = folder / f"sqlite-{clients}-{batch}.db"
            output = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--sqlite-worker",
                    str(path),
                    str(clients),
                    str(batch),
                    str(seconds),
                ],
                capture_output=True,
                text=True,
                timeout=seconds * 10 + 60,
                check=True,
            ).stdout
            results.append(json.loads(output.strip().splitlines()[-1]))
    return results


# --- report ----------------------------------------------------------------------------------


def report(results: list[dict[str, object]]) -> None:
    header = (
        f"{'system':<20} {'clients':>7} {'batch':>5} {'req/s':>10} {'events/s':>11} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'peak RSS MiB':>13}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r['system']:<20} {r['clients']:>7} {r['batch']:>5} "
            f"{r['requests_per_s']:>10.0f} {r['events_per_s']:>11.0f} "
            f"{r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['peak_rss_mib']:>13.1f}"
        )
    print()
    for r in results:
        if not str(r["system"]).startswith("craton/") or r["clients"] != 64:
            continue
        sqlite = [
            float(str(q["requests_per_s"]))
            for q in results
            if q["system"] == "sqlite" and q["batch"] == r["batch"]
        ]
        if not sqlite:
            continue
        ratio = float(str(r["requests_per_s"])) / max(sqlite)
        target = "; target 3x" if r["system"] == "craton/single-node" and r["batch"] == 1 else ""
        print(
            f"{r['system']}, 64 clients, {r['batch']} event(s) per request: {ratio:.2f}x the "
            f"best SQLite figure with {r['batch']} row(s) per transaction "
            f"({max(sqlite):.0f}/s){target}"
        )
    for name in ("postgres", "etcd"):
        found = shutil.which(name)
        note = "installed, not driven by this build" if found else "not installed"
        print(f"{name}: {note}")


def main() -> int:
    if len(sys.argv) == 6 and sys.argv[1] == "--sqlite-worker":
        sqlite_worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per workload")
    parser.add_argument("--dir", type=Path, default=None, help="where the data goes")
    parser.add_argument(
        "--only", nargs="+", choices=SYSTEMS, default=list(SYSTEMS), help="systems to measure"
    )
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix=".bench-", dir=args.dir or Path.cwd()))
    try:
        results = []
        for mode in ("none", "single-node"):
            if mode in args.only:
                results.extend(bench_craton(mode, folder / mode, args.seconds))
        if "cluster" in args.only:
            results.extend(bench_cluster(folder / "cluster", args.seconds))
        if "sqlite" in args.only:
            results.extend(bench_sqlite(folder, args.seconds))
        report(results)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
