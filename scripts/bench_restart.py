#!/usr/bin/env python3
"""How long a ``craton-server`` takes to come back, and how much memory it holds doing so.

Two measurements, each on fresh data under a temporary folder:

  single   one node (VDB_REPLICATION_MODE=single-node) is filled with ``--appends``
           requests of one 128-byte event each, sent by ``--clients`` concurrent clients
           (each client sends its writes one at a time, so the clients are the pipeline);
           then it is stopped with SIGTERM and started again on the same data directory.
           Printed: the fill rate, the node's peak RSS while appending, the time SIGTERM
           took to stop it, the time from starting the process to the first 200 from its
           ``/ready`` (polled on its metrics port every 10 ms), its RSS when it got there and
           its peak RSS on the way (its restart reads its latest checkpoint state and
           replays the log past it).
  cluster  three replicas in cluster mode on loopback are filled with ``--cluster-appends``
           requests the same way; then one backup is stopped and started again on its data
           (restart-to-ready of a replica, which reloads its log), stopped again, its data
           directory removed, and started again with VDB_CLUSTER_FORMED=true, so that it
           rejoins as a replica that lost its disk and catches up from its peers (by state
           sync, once they released their journals below a checkpoint state). Printed:
           the fill rate, the largest replica's peak RSS while appending, both times from
           starting the backup's process to its ``/ready`` answering 200, and the wiped
           backup's RSS then and its peak RSS on the way.

With ``--baseline REF`` the same measurements run again against the code of git ref REF,
checked out into a temporary ``git worktree`` and run with this venv (``PYTHONPATH`` names
the worktree, so nothing is installed), and the table gets a column for it and the ratio
of the two (current / baseline: below 1 means the current code takes less). A baseline that
cannot run is reported in one line and left out.

Every process started is stopped at the end, on errors and on Ctrl-C or SIGTERM too; every
wait is bounded; the temporary folder (data, logs, the worktree) is removed unless
``--keep`` is given (the worktree is always removed).

Usage: scripts/bench_restart [--appends N] [--cluster-appends M] [--clients C] [--dir PATH]
                             [--baseline REF] [--only single|cluster] [--keep]
e.g.   scripts/bench_restart --appends 20000 --baseline a0674c1
(PATH defaults to the current directory, so it measures the disk the project lives on.)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from bench_common import status_kib
from bench_server import CLUSTER_SECRET, EVENT_SIZE, START_TIMEOUT_S, Node
from cluster import free_ports  # scripts/cluster.py: ports the replicas know beforehand

from craton.client import AsyncClient, CratonError

ROOT = Path(__file__).resolve().parent.parent
APPENDS_DEFAULT = 1_000_000
CLIENTS_DEFAULT = 64
CLUSTER_SIZE = 3
STREAM = "restart"
READY_POLL_S = 0.01
PROBE_TIMEOUT_S = 2.0  # one /ready request; a node busy recovering answers late, not never
READY_TIMEOUT_BASE_S = 60.0
READY_TIMEOUT_PER_APPEND_S = 0.001  # a restart or rejoin may take this long per append more
FILL_TIMEOUT_BASE_S = 60.0
FILL_TIMEOUT_PER_APPEND_S = 0.01  # 100 appends/s: far below any node's pace
CLIENT_RETRY_DEADLINE_S = 30.0
PROGRESS_S = 30.0
GIT_TIMEOUT_S = 120.0
KIB_PER_MIB = 1024

# Figure names, in the order the table shows them.
FILL = "single: fill (appends/s)"
FILL_PEAK_RSS = "single: peak RSS while appending (MiB)"
STOP = "single: stop, SIGTERM to exit (s)"
RESTART = "single: restart-to-ready (s)"
RESTART_RSS = "single: RSS when ready after restart (MiB)"
RESTART_PEAK_RSS = "single: peak RSS during restart (MiB)"
CLUSTER_FILL = "cluster: fill (appends/s)"
CLUSTER_PEAK_RSS = "cluster: peak RSS while appending, largest replica (MiB)"
BACKUP_RESTART = "cluster: backup restart-to-ready, data kept (s)"
REJOIN = "cluster: wiped backup rejoin-to-ready (s)"
REJOIN_RSS = "cluster: RSS of the rejoined backup when ready (MiB)"
REJOIN_PEAK_RSS = "cluster: peak RSS of the rejoining backup (MiB)"
FIGURES = (FILL, FILL_PEAK_RSS, STOP, RESTART, RESTART_RSS, RESTART_PEAK_RSS, CLUSTER_FILL,
           CLUSTER_PEAK_RSS, BACKUP_RESTART, REJOIN, REJOIN_RSS, REJOIN_PEAK_RSS)  # fmt: skip


class BenchFailed(Exception):
    """A node did not start, stopped, or did not become ready in time; says which."""


# --- one node's life -------------------------------------------------------------------------


def probe_status(url: str) -> int | None:
    """The HTTP status ``url`` answers with; None while nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT_S) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code
    except (urllib.error.URLError, OSError):
        return None


def wait_ready(node: Node, url: str, timeout_s: float, started_s: float) -> float:
    """Poll ``url`` (a ``/ready``) until it answers 200; the seconds since ``started_s``."""
    deadline_s = started_s + timeout_s
    while probe_status(url) != 200:
        if node.process.poll() is not None:
            raise BenchFailed(
                f"craton-server ({node.folder.name}) exited with status "
                f"{node.process.returncode} before it was ready:\n{log_tail(node)}"
            )
        if time.monotonic() >= deadline_s:
            raise BenchFailed(
                f"craton-server ({node.folder.name}) was not ready within {timeout_s:.0f} s:\n"
                f"{log_tail(node)}"
            )
        time.sleep(READY_POLL_S)
    return time.monotonic() - started_s


def log_tail(node: Node, lines: int = 8) -> str:
    text = node.log.read_text(encoding="utf-8", errors="replace")
    return "\n".join("    " + line for line in text.splitlines()[-lines:])


def keep_log(node: Node, name: str) -> None:
    """Keep the log of a stopped node: a node started in the same folder truncates it."""
    if node.log.exists():
        node.log.rename(node.folder / name)


def mib(kib: int) -> float:
    return kib / KIB_PER_MIB


def ready_timeout_s(appends: int) -> float:
    return READY_TIMEOUT_BASE_S + READY_TIMEOUT_PER_APPEND_S * appends


# --- the workload ----------------------------------------------------------------------------


async def fill(
    addresses: list[str],
    appends: int,
    clients: int,
    label: str,
    *,
    stream: str = STREAM,
    event: Callable[[int], bytes] | None = None,
    timeout_s: float | None = None,
) -> float:
    """Append ``appends`` one-event requests from ``clients`` clients to ``stream`` (event
    ``i`` is ``event(i)``; by default every event is ``EVENT_SIZE`` bytes of ``e``); the
    seconds it took."""
    connections = [
        AsyncClient(addresses, retry_deadline_s=CLIENT_RETRY_DEADLINE_S)
        for _ in range(max(1, min(clients, appends)))
    ]
    try:
        await asyncio.gather(*(c.connect() for c in connections))
        await connections[0].create_stream(stream)
        same = (b"e" * EVENT_SIZE,)
        sent = 0

        async def worker(client: AsyncClient) -> None:
            nonlocal sent
            while sent < appends:
                index, sent = sent, sent + 1
                await client.append(stream, same if event is None else (event(index),))

        started_s = time.perf_counter()
        left = lambda: appends - sent  # noqa: E731
        progress = asyncio.create_task(report_progress(label, appends, left, started_s))
        if timeout_s is None:
            timeout_s = FILL_TIMEOUT_BASE_S + FILL_TIMEOUT_PER_APPEND_S * appends
        try:  # a task group: one worker's failure, a timeout or Ctrl-C cancels every worker
            async with asyncio.timeout(timeout_s), asyncio.TaskGroup() as group:
                for connection in connections:
                    group.create_task(worker(connection))
        except TimeoutError:
            raise BenchFailed(f"{label}: {appends} appends took over {timeout_s:.0f} s") from None
        except ExceptionGroup as failed:
            raise failed.exceptions[0] from None
        finally:
            progress.cancel()
        return time.perf_counter() - started_s
    finally:
        await asyncio.gather(*(c.close() for c in connections), return_exceptions=True)


async def report_progress(
    label: str, appends: int, left: Callable[[], int], started_s: float
) -> None:
    while True:
        await asyncio.sleep(PROGRESS_S)
        done = appends - left()
        rate = done / (time.perf_counter() - started_s)
        print(f"  {label}: {done:,} of {appends:,} appends sent ({rate:,.0f}/s)", flush=True)


async def committed_positions(address: str) -> int:
    async with AsyncClient(address, retry_deadline_s=CLIENT_RETRY_DEADLINE_S) as client:
        return await client.sync()


async def primary_index(address: str) -> int:
    """The primary of the view the replica at ``address`` is in (VSR: view mod size)."""
    async with AsyncClient(address, retry_deadline_s=CLIENT_RETRY_DEADLINE_S) as client:
        info = await client.connect()
        return info.view % info.cluster_size


# --- the measurements ------------------------------------------------------------------------


def measure_single(
    code: dict[str, str], folder: Path, appends: int, clients: int, figures: dict[str, float]
) -> None:
    """Fill one node, stop it, start it again on its data: adds the single-node figures."""
    bind_port, metrics_port = free_ports(2)
    address = f"127.0.0.1:{bind_port}"
    ready_url = f"http://127.0.0.1:{metrics_port}/ready"
    settings = {**code, "VDB_BIND_ADDR": address, "VDB_METRICS_ADDR": f"127.0.0.1:{metrics_port}"}
    started_s = time.monotonic()
    node = Node("single-node", folder, **settings)
    try:
        wait_ready(node, ready_url, START_TIMEOUT_S, started_s)
        elapsed_s = asyncio.run(fill([address], appends, clients, "single-node"))
        figures[FILL] = appends / elapsed_s
        figures[FILL_PEAK_RSS] = mib(node.peak_rss_kib())
        stopping_s = time.monotonic()
        node.stop()
        figures[STOP] = time.monotonic() - stopping_s
        if node.process.returncode != 0:
            print(f"  note: the node stopped with status {node.process.returncode}")
        keep_log(node, "server-fill.log")
        started_s = time.monotonic()
        node = Node("single-node", folder, **settings)
        figures[RESTART] = wait_ready(node, ready_url, ready_timeout_s(appends), started_s)
        figures[RESTART_RSS] = mib(status_kib(node.process.pid, "VmRSS"))
        figures[RESTART_PEAK_RSS] = mib(node.peak_rss_kib())
        committed = asyncio.run(committed_positions(address))
        if committed <= appends:  # the stream's creation and every append are positions
            raise BenchFailed(f"after the restart only {committed} positions are committed")
    finally:
        node.stop()


def measure_cluster(
    code: dict[str, str], folder: Path, appends: int, clients: int, figures: dict[str, float]
) -> None:
    """Fill a 3-replica cluster, restart one backup on its data, then wipe it and let it
    rejoin: adds the cluster figures."""
    ports = free_ports(2 * CLUSTER_SIZE)
    addresses = [f"127.0.0.1:{port}" for port in ports[:CLUSTER_SIZE]]
    metrics = [f"127.0.0.1:{port}" for port in ports[CLUSTER_SIZE:]]

    def start(index: int, formed: bool) -> Node:
        return Node(
            "cluster",
            folder / f"replica{index}",
            **code,
            VDB_CLUSTER_PEERS=",".join(addresses),
            VDB_CLUSTER_SECRET=CLUSTER_SECRET,
            VDB_REPLICA_ID=str(index),
            VDB_BIND_ADDR=addresses[index],
            VDB_METRICS_ADDR=metrics[index],
            VDB_CLUSTER_FORMED="true" if formed else "false",
        )

    nodes: list[Node] = []
    try:
        started_s = time.monotonic()
        for index in range(CLUSTER_SIZE):  # all start, then each waits for a primary
            nodes.append(start(index, formed=False))
        for index, node in enumerate(nodes):
            wait_ready(node, f"http://{metrics[index]}/ready", START_TIMEOUT_S, started_s)
        elapsed_s = asyncio.run(fill(addresses, appends, clients, "cluster"))
        figures[CLUSTER_FILL] = appends / elapsed_s
        figures[CLUSTER_PEAK_RSS] = mib(max(node.peak_rss_kib() for node in nodes))
        backup = (asyncio.run(primary_index(addresses[0])) + 1) % CLUSTER_SIZE
        url = f"http://{metrics[backup]}/ready"
        nodes[backup].stop()
        keep_log(nodes[backup], "server-fill.log")
        started_s = time.monotonic()
        nodes[backup] = start(backup, formed=True)  # on its data: it reloads its log
        figures[BACKUP_RESTART] = wait_ready(
            nodes[backup], url, ready_timeout_s(appends), started_s
        )
        nodes[backup].stop()
        keep_log(nodes[backup], "server-restart.log")
        shutil.rmtree(nodes[backup].folder / "data")
        started_s = time.monotonic()
        nodes[backup] = start(backup, formed=True)
        figures[REJOIN] = wait_ready(nodes[backup], url, ready_timeout_s(appends), started_s)
        figures[REJOIN_RSS] = mib(status_kib(nodes[backup].process.pid, "VmRSS"))
        figures[REJOIN_PEAK_RSS] = mib(nodes[backup].peak_rss_kib())
    finally:
        for node in nodes:
            node.stop()


def measure(
    code: dict[str, str],
    folder: Path,
    args: argparse.Namespace,
    label: str,
    figures: dict[str, float],
) -> None:
    """Add the figures of the code ``code`` names to ``figures``, as they are measured."""
    if args.only in (None, "single"):
        print(f"{label}: single node, {args.appends:,} appends ...", flush=True)
        measure_single(code, folder / "single", args.appends, args.clients, figures)
    if args.only in (None, "cluster"):
        appends = args.appends if args.cluster_appends is None else args.cluster_appends
        print(f"{label}: {CLUSTER_SIZE}-replica cluster, {appends:,} appends ...", flush=True)
        measure_cluster(code, folder / "cluster", appends, args.clients, figures)


def code_settings(source: Path) -> dict[str, str]:
    """Run the craton package in ``source``: ahead of the venv's own (an editable install's
    finder comes after ``PYTHONPATH``), and not the current directory's (``-m`` would put
    it first without ``PYTHONSAFEPATH``)."""
    return {"PYTHONPATH": str(source), "PYTHONSAFEPATH": "1"}


def measure_baseline(
    ref: str, folder: Path, args: argparse.Namespace
) -> tuple[dict[str, float], str | None]:
    """The figures of ``ref``'s code, and why they are missing or short (None: complete)."""
    worktree = folder / "baseline-source"
    added = git("worktree", "add", "--detach", str(worktree), ref)
    if added.returncode != 0:
        return {}, f"git worktree add failed: {added.stderr.strip().splitlines()[-1:]}"
    figures: dict[str, float] = {}
    try:
        measure(code_settings(worktree), folder / "baseline", args, f"baseline {ref}", figures)
        return figures, None
    except (BenchFailed, CratonError, OSError, subprocess.SubprocessError) as error:
        return figures, f"{type(error).__name__}: {str(error).splitlines()[0]}"
    finally:
        git("worktree", "remove", "--force", str(worktree))  # its own entry, no other


def git(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "-C", str(ROOT), *arguments],
        capture_output=True,
        text=True,
        timeout=GIT_TIMEOUT_S,
    )


# --- report ----------------------------------------------------------------------------------


def report(current: dict[str, float], baseline: dict[str, float] | None, ref: str) -> None:
    width = max(len(name) for name in FIGURES)
    header = f"{'figure':<{width}} {'current':>12}"
    if baseline is not None:
        header += f" {'baseline ' + ref:>18} {'current/base':>12}"
    print()
    print(header)
    print("-" * len(header))
    for name in FIGURES:
        if name not in current and (baseline is None or name not in baseline):
            continue
        line = f"{name:<{width}} {cell(current.get(name)):>12}"
        if baseline is not None:
            base = baseline.get(name)
            ratio = current[name] / base if name in current and base else None
            line += f" {cell(base):>18} {cell(ratio, 2) + ('x' if ratio else ''):>12}"
        print(line)


def cell(value: float | None, decimals: int | None = None) -> str:
    if value is None:
        return "-"
    if decimals is None:
        decimals = 0 if value >= 100 else 2
    return f"{value:,.{decimals}f}"


# --- entry point -----------------------------------------------------------------------------


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench_restart",
        description=__doc__.splitlines()[0],
        epilog="The module docstring of scripts/bench_restart.py says what each figure is.",
    )
    parser.add_argument("--appends", type=int, default=APPENDS_DEFAULT, metavar="N",
                        help="one-event requests that fill the single node, and the cluster "
                             "unless --cluster-appends (default: %(default)s)")  # fmt: skip
    parser.add_argument("--cluster-appends", type=int, default=None, metavar="M",
                        help="one-event requests that fill the cluster (default: N)")  # fmt: skip
    parser.add_argument("--clients", type=int, default=CLIENTS_DEFAULT, metavar="C",
                        help="concurrent clients that fill (default: %(default)s)")  # fmt: skip
    parser.add_argument("--dir", type=Path, default=None, metavar="PATH",
                        help="where the temporary folder goes (default: the current "
                             "directory, never /tmp, which may be memory)")  # fmt: skip
    parser.add_argument("--baseline", default=None, metavar="REF",
                        help="also measure the code of this git ref, side by side "
                             "(default: none)")  # fmt: skip
    parser.add_argument("--only", choices=("single", "cluster"), default=None,
                        help="measure only the single node or only the cluster "
                             "(default: both)")  # fmt: skip
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary folder's data and logs (default: remove "
                             "them; the baseline's worktree is removed either way)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.appends < 1 or (args.cluster_appends is not None and args.cluster_appends < 1):
        parser.error("--appends and --cluster-appends must be at least 1")
    if args.clients < 1:
        parser.error("--clients must be at least 1")
    return args


def interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds through every finally: all stop


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    signal.signal(signal.SIGTERM, interrupt)
    parent = (args.dir or Path.cwd()).resolve()
    parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=".bench-restart-", dir=parent))
    print(f"data under {folder}; {args.clients} clients, {EVENT_SIZE}-byte events, "
          f"{os.cpu_count()} cores", flush=True)  # fmt: skip
    current: dict[str, float] = {}
    try:
        measure(code_settings(ROOT), folder / "current", args, "current", current)
        baseline, note = None, None
        if args.baseline is not None:
            baseline, note = measure_baseline(args.baseline, folder, args)
        report(current, baseline, args.baseline or "")
        if note is not None:
            print(f"baseline {args.baseline} could not run ({note}); shown as far as it got")
    except BenchFailed as error:
        report(current, None, "")
        print(f"stopped: {error}")
        return 1
    except KeyboardInterrupt:
        print("interrupted: every process it started is stopped", flush=True)
        return 130
    finally:
        if args.keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
