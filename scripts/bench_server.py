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
  postgres            when installed: a throwaway cluster driven by pgbench, one transaction
                      per request, durable defaults (scripts/bench_postgres.py)
  etcd                when installed: a throwaway one-member etcd, one put (or one
                      transaction of 100 puts) per request through its v3 JSON gateway,
                      fsynced before it is answered (scripts/bench_etcd.py)
  echo                the ceiling, not a database: a bare asyncio server process that sends
                      each request straight back (no parsing, no storage), driven the same
                      way, one request of an append's size in flight per client

Every figure is durable: Craton answers an append only after its fsync; SQLite's and
PostgreSQL's commits return after their WAL flush. Printed: requests/s, events/s, p50 and
p99 latency, and the peak RSS of the process that did the storing (the server, the largest
replica of the cluster, the SQLite worker, the largest PostgreSQL process). Then the ratio
of each Craton system with 64 clients to the best baseline figure with as many rows per
transaction, and what share of the echo ceiling the 3x target is. Every process shares the
machine's cores with the benchmark's clients. A baseline that is not installed is skipped
with a line saying so.

Usage: scripts/bench [--seconds S] [--dir PATH] [--only SYSTEM ...]
(PATH defaults to a temporary folder under the current directory, so it measures the disk
the project lives on; never /tmp, which may be memory)

       scripts/bench --auth none,jwt,apikey [--seconds S]   the cost of authentication:
craton/single-node in each auth mode (every client authenticated with a JWT, or with an
API key made for the run), the same workloads, nothing else. A node authenticates a
connection once, at its handshake; each request then carries its principal into the log,
where the event store checks its role (and its key) when it is applied.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import bench_etcd as bench_etcd_module
import bench_postgres as bench_postgres_module
from bench_common import peak_rss_kib, stop_process
from cluster import free_ports  # scripts/cluster.py: ports the replicas know beforehand

from craton.client import AsyncClient

EVENT_SIZE = 128
CLIENT_COUNTS = (1, 64)
BATCH_SIZES = (1, 100)
SYSTEMS = ("none", "single-node", "cluster", "sqlite", "postgres", "etcd", "echo")
ECHO_REQUEST_SIZE = 200  # about an AppendEvents frame of one 128-byte event
START_TIMEOUT_S = 30.0
AUTH_MODES = ("none", "jwt", "apikey")
JWT_SECRET = "the benchmark's JWT secret, 32 bytes or more"
CLUSTER_SECRET = "the benchmark's cluster secret, 32 bytes or more"


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
        return peak_rss_kib(self.process.pid)

    def stop(self) -> None:
        stop_process(self.process)


async def craton_workload(
    address: str, clients: int, batch: int, seconds: float, stream: str, token: str | None = None
) -> tuple[list[float], float]:
    connections = [
        AsyncClient(address, auth_token=token, retry_deadline_s=30) for _ in range(clients)
    ]
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


def bench_craton(
    mode: str, folder: Path, seconds: float, auth: str = "none"
) -> list[dict[str, object]]:
    settings = {"VDB_AUTH_MODE": auth, "VDB_JWT_SECRET": JWT_SECRET}
    token = None
    if auth == "apikey":  # the first key is made with a JWT (mode both), then apikey only
        token = make_api_key(Node(mode, folder, **{**settings, "VDB_AUTH_MODE": "both"}))
    elif auth == "jwt":
        token = bench_token()
    node = Node(mode, folder, **settings).wait_ready()
    system = f"craton/{mode}" if auth == "none" else f"craton/{mode}+{auth}"
    try:
        return run_workloads(system, node.address, seconds, lambda: [node], token)
    finally:
        node.stop()


def bench_token(role: str = "member") -> str:
    import jwt

    now = int(time.time())
    claims = {"sub": "bench", "tenant_id": 1, "role": role, "iss": "craton", "aud": "craton",
              "iat": now, "exp": now + 3600}  # fmt: skip
    return jwt.encode(claims, JWT_SECRET, algorithm="HS256")


def make_api_key(node: Node) -> str:
    from craton.client import Role

    async def create() -> str:
        async with AsyncClient(node.address, auth_token=bench_token("admin")) as admin:
            return (await admin.create_api_key(Role.MEMBER, label="bench")).api_key

    try:
        node.wait_ready()
        return asyncio.run(create())
    finally:
        node.stop()


def run_workloads(
    system: str,
    address: str,
    seconds: float,
    nodes: Callable[[], list[Node]],
    token: str | None = None,
) -> list[dict[str, object]]:
    results = []
    for clients in CLIENT_COUNTS:
        for batch in BATCH_SIZES:
            stream = f"bench-{clients}-{batch}"
            latencies, elapsed = asyncio.run(
                craton_workload(address, clients, batch, seconds, stream, token)
            )
            rss_kib = max(node.peak_rss_kib() for node in nodes())
            results.append(summary(system, clients, batch, latencies, elapsed, rss_kib))
    return results


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
                    VDB_CLUSTER_SECRET=CLUSTER_SECRET,
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


# --- echo: the ceiling of an asyncio server on this machine ---------------------------------


class _Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


def echo_server() -> None:
    """Runs in its own process: prints its port, echoes until its stdin closes."""

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_Echo, "127.0.0.1", 0)
        print(server.sockets[0].getsockname()[1], flush=True)
        await loop.run_in_executor(None, sys.stdin.read)
        server.close()

    asyncio.run(serve())


async def echo_workload(port: int, clients: int, seconds: float) -> tuple[list[float], float]:
    streams = [await asyncio.open_connection("127.0.0.1", port) for _ in range(clients)]
    request = b"e" * ECHO_REQUEST_SIZE
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            writer.write(request)
            await reader.readexactly(ECHO_REQUEST_SIZE)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker(reader, writer) for reader, writer in streams))
    elapsed = time.perf_counter() - started
    for _, writer in streams:
        writer.close()
    return latencies, elapsed


def bench_echo(seconds: float) -> list[dict[str, object]]:
    server = subprocess.Popen(
        [sys.executable, __file__, "--echo-server"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdin is not None and server.stdout is not None
    try:
        port = int(server.stdout.readline())
        results = []
        for clients in CLIENT_COUNTS:
            latencies, elapsed = asyncio.run(echo_workload(port, clients, seconds))
            rss_kib = peak_rss_kib(server.pid)
            results.append(summary("echo (no storage)", clients, 1, latencies, elapsed, rss_kib))
        return results
    finally:
        server.stdin.close()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


# --- report ----------------------------------------------------------------------------------


def measure_each(
    results: list[dict[str, object]],
    system: str,
    workload: Callable[[int, int, float], tuple[list[float], float]],
    peak_rss: Callable[[], int],
    seconds: float,
) -> None:
    """Run ``workload(clients, batch, seconds)`` for every workload shape, adding a row to
    ``results`` after each (so the rows measured before a failure are kept)."""
    for clients in CLIENT_COUNTS:
        for batch in BATCH_SIZES:
            latencies, elapsed = workload(clients, batch, seconds)
            results.append(summary(system, clients, batch, latencies, elapsed, peak_rss()))


def bench_postgres(folder: Path, seconds: float) -> tuple[list[dict[str, object]], str | None]:
    """The PostgreSQL rows (scripts/bench_postgres.py), or none and the reason why."""
    reason = bench_postgres_module.unavailable_reason()
    bin_dir = bench_postgres_module.find_bin()
    if reason is not None or bin_dir is None:
        return [], reason
    results: list[dict[str, object]] = []
    try:
        server = bench_postgres_module.Postgres(folder, bin_dir)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as error:
        return [], f"could not start a throwaway cluster: {error}"
    try:
        measure_each(results, "postgres", server.pgbench, server.peak_rss_kib, seconds)
    except (RuntimeError, subprocess.TimeoutExpired) as error:
        return results, f"pgbench failed: {error}"
    finally:
        server.stop()
    return results, None


def bench_etcd(folder: Path, seconds: float) -> tuple[list[dict[str, object]], str | None]:
    """The etcd rows (scripts/bench_etcd.py), or none and the reason why."""
    program = bench_etcd_module.find_bin()
    if program is None:
        return [], "not installed"
    try:
        server = bench_etcd_module.Etcd(folder, program)
    except (RuntimeError, OSError) as error:
        return [], f"could not start a throwaway member: {error}"
    results: list[dict[str, object]] = []
    try:
        measure_each(results, "etcd", server.workload, server.peak_rss_kib, seconds)
    except (RuntimeError, OSError, asyncio.IncompleteReadError) as error:
        return results, f"the workload failed: {error}"
    finally:
        server.stop()
    return results, None


def report(
    results: list[dict[str, object]],
    notes: dict[str, str] | None = None,
    baselines: bool = True,
) -> None:
    header = (
        f"{'system':<26} {'clients':>7} {'batch':>5} {'req/s':>10} {'events/s':>11} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'peak RSS MiB':>13}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r['system']:<26} {r['clients']:>7} {r['batch']:>5} "
            f"{r['requests_per_s']:>10.0f} {r['events_per_s']:>11.0f} "
            f"{r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['peak_rss_mib']:>13.1f}"
        )
    print()
    if not baselines:
        return
    for r in results:
        if not str(r["system"]).startswith("craton/") or r["clients"] != 64:
            continue
        for baseline in ("sqlite", "postgres", "etcd"):
            figures = [
                float(str(q["requests_per_s"]))
                for q in results
                if q["system"] == baseline and q["batch"] == r["batch"]
            ]
            if not figures:
                continue
            ratio = float(str(r["requests_per_s"])) / max(figures)
            target = (
                "; target 3x"
                if (r["system"], r["batch"], baseline) == ("craton/single-node", 1, "sqlite")
                else ""
            )
            print(
                f"{r['system']}, 64 clients, {r['batch']} event(s) per request: {ratio:.2f}x "
                f"the best {baseline} figure with {r['batch']} row(s) per transaction "
                f"({max(figures):.0f}/s){target}"
            )
    report_ceiling(results)
    for system, note in (notes or {}).items():
        print(f"{system}: {note}")


def report_ceiling(results: list[dict[str, object]]) -> None:
    """What the 3x target asks of this machine, against the echo ceiling at 64 clients."""
    sqlite = [float(str(r["requests_per_s"])) for r in results
              if r["system"] == "sqlite" and r["batch"] == 1]  # fmt: skip
    echo = [float(str(r["requests_per_s"])) for r in results
            if r["system"] == "echo (no storage)" and r["clients"] == 64]  # fmt: skip
    if not sqlite or not echo:
        return
    needed = 3 * max(sqlite)
    print(
        f"echo ceiling, 64 clients: {echo[0]:.0f}/s; the 3x target ({needed:.0f}/s) is "
        f"{100 * needed / echo[0]:.0f}% of it"
    )


def report_auth(results: list[dict[str, object]]) -> None:
    report(results, baselines=False)
    base = {(r["clients"], r["batch"]): float(str(r["events_per_s"])) for r in results
            if r["system"] == "craton/single-node"}  # fmt: skip
    for r in results:
        if r["system"] != "craton/single-node":
            ratio = float(str(r["events_per_s"])) / base[(r["clients"], r["batch"])]
            print(f"{r['system']}, {r['clients']} clients, batch {r['batch']}: "
                  f"{ratio:.2f}x the appends/s without auth")  # fmt: skip


def main() -> int:
    if sys.argv[1:] == ["--echo-server"]:
        echo_server()
        return 0
    if len(sys.argv) == 6 and sys.argv[1] == "--sqlite-worker":
        sqlite_worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per workload")
    parser.add_argument("--dir", type=Path, default=None, help="where the data goes")
    parser.add_argument(
        "--only", nargs="+", choices=SYSTEMS, default=list(SYSTEMS), help="systems to measure"
    )
    parser.add_argument("--auth", default=None, help="compare auth modes: none,jwt,apikey")
    args = parser.parse_args()
    auths = [] if args.auth is None else [a.strip() for a in args.auth.split(",")]
    if any(auth not in AUTH_MODES for auth in auths) or (auths and "none" not in auths):
        parser.error(f"--auth takes modes among {', '.join(AUTH_MODES)}, none included")
    folder = Path(tempfile.mkdtemp(prefix=".bench-", dir=args.dir or Path.cwd()))
    folder.chmod(0o755)  # PostgreSQL's own account must reach its cluster inside
    if auths:
        try:
            results = []
            for auth in auths:
                results.extend(bench_craton("single-node", folder / auth, args.seconds, auth))
            report_auth(results)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return 0
    try:
        results = []
        for mode in ("none", "single-node"):
            if mode in args.only:
                results.extend(bench_craton(mode, folder / mode, args.seconds))
        if "cluster" in args.only:
            results.extend(bench_cluster(folder / "cluster", args.seconds))
        if "sqlite" in args.only:
            results.extend(bench_sqlite(folder, args.seconds))
        notes: dict[str, str] = {}
        if "postgres" in args.only:
            results_pg, note = bench_postgres(folder / "postgres", args.seconds)
            results.extend(results_pg)
            if note is not None:
                notes["postgres"] = note
        if "etcd" in args.only:
            results_etcd, note = bench_etcd(folder / "etcd", args.seconds)
            results.extend(results_etcd)
            if note is not None:
                notes["etcd"] = note
        if "echo" in args.only:
            results.extend(bench_echo(args.seconds))
        report(results, notes)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
