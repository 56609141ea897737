#!/usr/bin/env python3
"""Durable appends through a real ``craton-server``, against SQLite, on the same disk.

Workloads: 1 and 64 concurrent clients, 128-byte events, 1 and 100 events per request,
each for ``--seconds``. Systems, measured in the same run:

  craton/none         craton-server with VDB_REPLICATION_MODE=none
  craton/single-node  craton-server with VDB_REPLICATION_MODE=single-node
  sqlite              one connection per client, WAL, synchronous=FULL: one transaction
                      per request (1 or 100 rows of 128 bytes), the baseline everybody has

Every figure is durable: Craton answers an append only after its fsync; SQLite's commit
returns after its WAL fsync. Printed: requests/s, events/s, p50 and p99 latency, and the
peak RSS of the process that did the storing (the server, or the SQLite worker). Then the
ratio of craton/single-node with 64 clients, 1 event per request, to the best SQLite figure
with one row per transaction. A 3-node cluster, PostgreSQL and etcd are not measured by
this build (cluster mode is not available yet; no PostgreSQL driver or etcd is bundled).

Usage: scripts/bench [--seconds S] [--dir PATH]   (PATH defaults to a temporary folder
under the current directory, so it measures the disk the project lives on; never /tmp,
which may be memory)

       scripts/bench --auth none,jwt,apikey [--seconds S]   the cost of authentication:
craton/single-node in each auth mode (every client authenticated with a JWT, or with an
API key made for the run), the same workloads, no SQLite. A node authenticates a
connection once, at its handshake; each request then carries its principal into the log,
where the event store checks its role (and its key) when it is applied.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from craton.client import AsyncClient

EVENT_SIZE = 128
CLIENT_COUNTS = (1, 64)
BATCH_SIZES = (1, 100)
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


JWT_SECRET = "the benchmark's JWT secret, 32 bytes or more"
AUTH_MODES = ("none", "jwt", "apikey")


def bench_token(role: str = "member") -> str:
    import jwt

    now = int(time.time())
    claims = {"sub": "bench", "tenant_id": 1, "role": role, "iss": "craton", "aud": "craton",
              "iat": now, "exp": now + 3600}  # fmt: skip
    return jwt.encode(claims, JWT_SECRET, algorithm="HS256")


class Node:
    def __init__(self, mode: str, folder: Path, auth: str = "none") -> None:
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
            VDB_AUTH_MODE=auth,
            VDB_JWT_SECRET=JWT_SECRET,
        )
        self._log_start = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "craton.net.server_main"], env=env, stderr=log
            )
        self.address = self._wait_listening()

    def _wait_listening(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            text = self.log.read_bytes()[self._log_start :].decode(errors="replace")
            events = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
            if any(e["event"] == "server.ready" for e in events):
                return next(str(e["addr"]) for e in events if e["event"] == "server.listening")
            if self.process.poll() is not None:
                raise SystemExit(f"craton-server exited:\n{self.log.read_text()}")
            time.sleep(0.05)
        raise SystemExit("craton-server did not become ready")

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
    token = None
    if auth == "apikey":  # the first key is made with a JWT (mode both), then apikey only
        token = asyncio.run(make_api_key(Node(mode, folder, "both")))
    elif auth == "jwt":
        token = bench_token()
    node = Node(mode, folder, auth)
    system = f"craton/{mode}" if auth == "none" else f"craton/{mode}+{auth}"
    results = []
    try:
        for clients in CLIENT_COUNTS:
            for batch in BATCH_SIZES:
                stream = f"bench-{clients}-{batch}"
                latencies, elapsed = asyncio.run(
                    craton_workload(node.address, clients, batch, seconds, stream, token)
                )
                rss_kib = node.peak_rss_kib()
                results.append(summary(system, clients, batch, latencies, elapsed, rss_kib))
    finally:
        node.stop()
    return results


async def make_api_key(node: Node) -> str:
    from craton.client import Role

    try:
        async with AsyncClient(node.address, auth_token=bench_token("admin")) as admin:
            return (await admin.create_api_key(Role.MEMBER, label="bench")).api_key
    finally:
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
    report_rows(results)
    report_ratio(results)


def report_rows(results: list[dict[str, object]]) -> None:
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


def report_ratio(results: list[dict[str, object]]) -> None:
    craton = next(
        r
        for r in results
        if r["system"] == "craton/single-node" and r["clients"] == 64 and r["batch"] == 1
    )
    sqlite_best = max(
        float(str(r["requests_per_s"]))
        for r in results
        if r["system"] == "sqlite" and r["batch"] == 1
    )
    ratio = float(str(craton["requests_per_s"])) / sqlite_best
    print(
        f"\ncraton/single-node, 64 clients, 1 event per request: {ratio:.2f}x the best SQLite "
        f"one-row-per-transaction figure ({sqlite_best:.0f}/s); target 3x"
    )
    for name in ("postgres", "etcd"):
        found = shutil.which(name)
        note = "installed, not driven by this build" if found else "not installed"
        print(f"{name}: {note}")
    print("a 3-node craton cluster: not measured by this script yet")


def report_auth(results: list[dict[str, object]]) -> None:
    report_rows(results)
    base = {(r["clients"], r["batch"]): float(str(r["events_per_s"])) for r in results
            if r["system"] == "craton/single-node"}  # fmt: skip
    print()
    for r in results:
        if r["system"] != "craton/single-node":
            ratio = float(str(r["events_per_s"])) / base[(r["clients"], r["batch"])]
            print(f"{r['system']}, {r['clients']} clients, batch {r['batch']}: "
                  f"{ratio:.2f}x the appends/s without auth")  # fmt: skip


def main() -> int:
    if len(sys.argv) == 6 and sys.argv[1] == "--sqlite-worker":
        sqlite_worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per workload")
    parser.add_argument("--dir", type=Path, default=None, help="where the data goes")
    parser.add_argument("--auth", default=None, help="compare auth modes: none,jwt,apikey")
    args = parser.parse_args()
    auths = [] if args.auth is None else [a.strip() for a in args.auth.split(",")]
    if any(auth not in AUTH_MODES for auth in auths) or (auths and "none" not in auths):
        parser.error(f"--auth takes modes among {', '.join(AUTH_MODES)}, none included")
    folder = Path(tempfile.mkdtemp(prefix=".bench-", dir=args.dir or Path.cwd()))
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
            results.extend(bench_craton(mode, folder / mode, args.seconds))
        results.extend(bench_sqlite(folder, args.seconds))
        report(results)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
