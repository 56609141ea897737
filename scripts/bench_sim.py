#!/usr/bin/env python3
"""How fast the cluster simulator runs: a 3-replica cluster under load, with moderate faults.

For each seed, one ``craton.sim.cluster.Cluster`` runs the fixed options below (more clients
and requests than the swarm draws; a little loss, duplication, reordering, partitions,
clogs, clock drift and skew, disk errors and the odd crash and pause) and the script prints

  sim s / wall s   simulated seconds per wall-clock second (one tick is ``TICK_MS``)
  ops / wall s     committed ops per wall-clock second (ops the cluster committed, which
                   include client registrations)

and the same two figures over all seeds. The run's result (``pass`` expected) is printed
too: a benchmark of a broken run is not a figure.

The swarm's shrunk profile keeps the client table small so that sessions are evicted and
clients must register again; a benchmark measures throughput instead, so its replicas run
the production profile (``craton.core.vsr.profile.PRODUCTION``: the sizes and timeouts a
node runs, a client table far larger than the client count). Clients are given more
requests than they get through in the fault phase, so the cluster is under load for all of
it; the liveness phase that follows sends nothing new and ends once the cluster settles.

Usage: scripts/bench_sim.py [--seeds A..B] [--clients N] [--requests N] [--ticks T]
"""

from __future__ import annotations

import argparse
import time

from craton.core.vsr.profile import PRODUCTION, TICK_MS
from craton.sim.clock import ClockFaults
from craton.sim.cluster import Cluster, ProcessFaults, SwarmOptions
from craton.sim.disk import DiskFaults
from craton.sim.network import NetworkFaults
from craton.sim.runner import parse_seeds

REPLICAS = 3
CLIENTS_DEFAULT = 12
REQUESTS_PER_CLIENT_DEFAULT = 500  # more than a client gets through in the fault phase
FAULT_TICKS_DEFAULT = 6_000
LIVENESS_TICKS = 3_000

NETWORK = NetworkFaults(
    latency_ticks_min=1,
    latency_ticks_max=3,
    latency_jitter_ticks=1,
    loss=0.01,
    duplication=0.01,
    reorder=0.02,
    reorder_ticks_max=5,
    partition=0.0005,
    partition_ticks_min=20,
    partition_ticks_max=100,
    clog=0.001,
    clog_ticks_min=10,
    clog_ticks_max=50,
    clog_delay_ticks=20,
)
DISK = DiskFaults(latency_ticks_min=1, latency_ticks_max=3, read_error=0.001, write_error=0.001)
CLOCKS = ClockFaults(drift_ppm_max=2_000, skew_ms_max=1_000)
PROCESSES = ProcessFaults(crash=0.0002, pause=0.0002, down_ticks_min=20, down_ticks_max=100)


def options(clients: int, requests: int, fault_ticks: int) -> SwarmOptions:
    return SwarmOptions(
        replica_count=REPLICAS,
        client_count=clients,
        requests_per_client=requests,
        fault_ticks=fault_ticks,
        liveness_ticks=LIVENESS_TICKS,
        machine="kv",
        network=NETWORK,
        disk=DISK,
        clocks=CLOCKS,
        processes=PROCESSES,
        sizes=PRODUCTION.name,
    )


def run(seed: int, plan: SwarmOptions) -> tuple[float, float, int, str]:
    """One run: (wall seconds, simulated seconds, committed ops, result)."""
    started = time.perf_counter()
    result = Cluster(seed, plan).run()
    wall_seconds = time.perf_counter() - started
    return wall_seconds, result.ticks * TICK_MS / 1000, result.committed_ops, result.result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="1..3", metavar="A..B")
    parser.add_argument("--clients", type=int, default=CLIENTS_DEFAULT)
    parser.add_argument("--requests", type=int, default=REQUESTS_PER_CLIENT_DEFAULT)
    parser.add_argument("--ticks", type=int, default=FAULT_TICKS_DEFAULT, help="fault phase")
    args = parser.parse_args()
    try:
        seeds = parse_seeds(args.seeds)
    except ValueError as error:
        parser.error(f"--seeds: {error}")
    if args.clients < 1 or args.requests < 1 or args.ticks < 1:
        parser.error("--clients, --requests and --ticks must be positive")
    plan = options(args.clients, args.requests, args.ticks)
    print(
        f"{REPLICAS} replicas, {args.clients} clients x {args.requests} requests, "
        f"fault phase {args.ticks} ticks of {TICK_MS} ms, moderate faults"
    )
    print(
        f"{'seed':>6} {'result':>11} {'wall s':>8} {'sim s':>8} {'ops':>6} "
        f"{'sim s / wall s':>15} {'ops / wall s':>13}"
    )
    total_wall = total_sim = 0.0
    total_ops = 0
    failed = 0
    for seed in seeds:
        wall, simulated, ops, result = run(seed, plan)
        total_wall, total_sim, total_ops = total_wall + wall, total_sim + simulated, total_ops + ops
        failed += result != "pass"
        print(
            f"{seed:>6} {result:>11} {wall:>8.2f} {simulated:>8.1f} {ops:>6} "
            f"{simulated / wall:>15.1f} {ops / wall:>13.1f}"
        )
    print(
        f"{'all':>6} {'':>11} {total_wall:>8.2f} {total_sim:>8.1f} {total_ops:>6} "
        f"{total_sim / total_wall:>15.1f} {total_ops / total_wall:>13.1f}"
    )
    if failed:
        print(f"warning: {failed} runs did not pass; their figures measure a broken run")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
