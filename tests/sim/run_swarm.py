"""Run many simulator seeds on every core for as long as asked; collect the failing ones.

Usage (through ``scripts/swarm``, which sets up the environment first):

    scripts/swarm --seconds 600                  # fresh seeds from a random start, 10 minutes
    scripts/swarm --seeds 0..9999                # exactly these seeds
    scripts/swarm --seeds 0..99999 --seconds 60  # whichever ends first
    scripts/swarm --seconds 300 --replicas 5 --jobs 2 --out failures.jsonl

Each worker process runs one seed at a time with ``craton.sim.runner.run_seed``, the very
function ``craton sim run`` uses, so a seed's result here is its result there. A failing
seed's JSON line (with its replay command) is appended to ``--out`` as soon as it is known;
a progress line is printed every ``PROGRESS_SECONDS``; a summary ends the run: seeds run,
results by kind, seeds per second. A seed that runs longer than ``--seed-timeout`` seconds
is stopped and reported as ``timeout``; a worker that dies is reported as ``worker-died``.

The swarm stops by itself: it starts no seed after the time budget is spent (or the range
is exhausted) and waits only for the seeds already running. Exit status: 0 when every seed
passed, 1 when any failed, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import secrets
import sys
import time
from collections import Counter
from collections.abc import Iterator
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import TextIO

import attrs

from craton.sim.runner import parse_seeds, replay_command, run_seed

PROGRESS_SECONDS = 10.0
SEED_TIMEOUT_SECONDS_DEFAULT = 300.0
SECONDS_DEFAULT = 60.0  # when neither --seconds nor --seeds is given
START_LIMIT = 1 << 32  # a random start stays short enough to type
WAIT_SECONDS = 0.5  # how long the coordinator blocks waiting for a result


@attrs.define
class Worker:
    process: multiprocessing.process.BaseProcess
    connection: Connection
    seed: int | None = None
    started: float = 0.0


@attrs.define
class Tally:
    started: float
    results: Counter[str] = attrs.field(factory=Counter)
    simulated_seconds: float = 0.0
    committed_ops: int = 0
    first_seed: int | None = None
    last_seed: int | None = None

    @property
    def seeds(self) -> int:
        return sum(self.results.values())

    @property
    def failures(self) -> int:
        return self.seeds - self.results["pass"]


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    seeds = _seed_source(args)
    deadline = None if args.seconds is None else time.monotonic() + args.seconds
    out_path: Path = args.out
    print(_header(args), flush=True)
    tally = Tally(started=time.monotonic())
    workers = [_start_worker(args) for _ in range(args.jobs)]
    try:
        with out_path.open("a", encoding="utf-8") as out:
            _coordinate(args, workers, seeds, deadline, tally, out)
    except KeyboardInterrupt:
        print("swarm: interrupted; stopping the workers", file=sys.stderr, flush=True)
    finally:
        for worker in workers:
            _stop_worker(worker)
    _summary(tally, out_path)
    return 0 if tally.failures == 0 else 1


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/swarm", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=None, help="time budget")
    parser.add_argument("--seeds", metavar="A..B", default=None, help="the seeds to run")
    parser.add_argument("--start", type=int, default=None, help="first seed (--seconds alone)")
    parser.add_argument("--replicas", type=int, choices=range(1, 8), default=None)
    parser.add_argument("--ticks", type=int, default=None, help="length of the fault phase")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes")
    parser.add_argument("--out", type=Path, default=Path("swarm-failures.jsonl"))
    parser.add_argument(
        "--seed-timeout", type=float, default=SEED_TIMEOUT_SECONDS_DEFAULT, metavar="SECONDS"
    )
    args = parser.parse_args(argv)
    if args.seeds is not None:
        try:
            args.seed_range = parse_seeds(args.seeds)
        except ValueError as error:
            parser.error(f"--seeds: {error}")
        if args.start is not None:
            parser.error("--start goes with --seconds alone, not with --seeds")
    elif args.seconds is None:
        args.seconds = SECONDS_DEFAULT
    if args.seconds is not None and args.seconds <= 0:
        parser.error("--seconds must be positive")
    if args.jobs < 1 or args.seed_timeout <= 0 or (args.ticks is not None and args.ticks < 1):
        parser.error("--jobs, --seed-timeout and --ticks must be positive")
    if args.start is not None and args.start < 0:
        parser.error("--start must be non-negative")
    return args


def _seed_source(args: argparse.Namespace) -> Iterator[int]:
    if args.seeds is not None:
        seed_range: range = args.seed_range
        return iter(seed_range)
    if args.start is None:
        args.start = secrets.randbelow(START_LIMIT)  # printed in the header, so reproducible
    return _count_from(args.start)


def _count_from(start: int) -> Iterator[int]:
    seed = start
    while True:
        yield seed
        seed += 1


def _header(args: argparse.Namespace) -> str:
    what = f"seeds {args.seeds}" if args.seeds is not None else f"seeds from {args.start} up"
    budget = "until the range is done" if args.seconds is None else f"for {args.seconds:g} s"
    shape = "swarm-drawn" if args.replicas is None else str(args.replicas)
    return (
        f"swarm: {what} {budget} on {args.jobs} processes, replicas {shape}; "
        f"failures appended to {args.out}"
    )


# --- the coordinator -------------------------------------------------------------------------


def _coordinate(
    args: argparse.Namespace,
    workers: list[Worker],
    seeds: Iterator[int],
    deadline: float | None,
    tally: Tally,
    out: TextIO,
) -> None:
    progress_at = time.monotonic() + PROGRESS_SECONDS
    exhausted = False
    while True:
        now = time.monotonic()
        for index, worker in enumerate(workers):
            if worker.seed is not None and now - worker.started > args.seed_timeout:
                _record(args, tally, {"seed": worker.seed, "result": "timeout"}, out)
                _stop_worker(worker)
                workers[index] = _start_worker(args)
        exhausted = exhausted or (deadline is not None and now >= deadline)
        for worker in workers:
            if exhausted or worker.seed is not None:
                continue
            seed = next(seeds, None)
            if seed is None:
                exhausted = True
                break
            worker.seed, worker.started = seed, now
            worker.connection.send(seed)
        busy = [worker for worker in workers if worker.seed is not None]
        if not busy:
            return
        ready = wait([worker.connection for worker in busy], timeout=WAIT_SECONDS)
        for worker in busy:
            if worker.connection in ready:
                _collect(args, workers, worker, tally, out)
        if time.monotonic() >= progress_at:
            progress_at += PROGRESS_SECONDS
            print(_progress(tally), flush=True)


def _collect(
    args: argparse.Namespace, workers: list[Worker], worker: Worker, tally: Tally, out: TextIO
) -> None:
    seed = worker.seed
    assert seed is not None
    try:
        summary: dict[str, object] = worker.connection.recv()
    except (EOFError, OSError):
        summary = {"seed": seed, "result": "worker-died"}
        workers[workers.index(worker)] = _start_worker(args)
        _stop_worker(worker)
    else:
        worker.seed = None
    _record(args, tally, summary, out)


def _record(
    args: argparse.Namespace, tally: Tally, summary: dict[str, object], out: TextIO
) -> None:
    seed = summary["seed"]
    assert isinstance(seed, int)
    result = str(summary["result"])
    tally.results[result] += 1
    tally.first_seed = seed if tally.first_seed is None else min(tally.first_seed, seed)
    tally.last_seed = seed if tally.last_seed is None else max(tally.last_seed, seed)
    seconds, ops = summary.get("simulated_seconds", 0), summary.get("committed_ops", 0)
    tally.simulated_seconds += float(seconds) if isinstance(seconds, int | float) else 0.0
    tally.committed_ops += ops if isinstance(ops, int) else 0
    if result == "pass":
        return
    summary.setdefault("replay", replay_command(seed, args.replicas, args.ticks))
    line = json.dumps(summary, sort_keys=True)
    print(line, file=out, flush=True)
    print(f"swarm: seed {seed} failed ({result}); replay with: {summary['replay']}", flush=True)


def _progress(tally: Tally) -> str:
    elapsed = time.monotonic() - tally.started
    return (
        f"swarm: {elapsed:.0f} s, {tally.seeds} seeds, {tally.failures} failed, "
        f"{tally.seeds / elapsed:.2f} seeds/s"
    )


def _summary(tally: Tally, out_path: Path) -> None:
    elapsed = time.monotonic() - tally.started
    rate = tally.seeds / elapsed if elapsed > 0 else 0.0
    span = "" if tally.first_seed is None else f" (seeds {tally.first_seed}..{tally.last_seed})"
    print(f"swarm: {tally.seeds} seeds run{span} in {elapsed:.1f} s: {rate:.2f} seeds/s")
    by_result = ", ".join(f"{name} {count}" for name, count in sorted(tally.results.items()))
    print(f"swarm: results: {by_result or 'none'}")
    print(
        f"swarm: {tally.simulated_seconds:.0f} simulated seconds, "
        f"{tally.committed_ops} committed ops"
    )
    if tally.failures:
        print(f"swarm: {tally.failures} failing seeds appended to {out_path}")
    else:
        print("swarm: no failures")


# --- workers ---------------------------------------------------------------------------------


def _start_worker(args: argparse.Namespace) -> Worker:
    parent, child = multiprocessing.Pipe()
    process = multiprocessing.Process(
        target=_work, args=(child, args.replicas, args.ticks), daemon=True
    )
    process.start()
    child.close()
    return Worker(process, parent)


def _stop_worker(worker: Worker) -> None:
    """Stop one worker process this swarm started (by its own handle, never by name)."""
    if worker.process.is_alive():
        with contextlib.suppress(OSError):
            worker.connection.send(None)
        worker.process.join(timeout=1.0 if worker.seed is None else 0.0)
    if worker.process.is_alive():
        worker.process.kill()
        worker.process.join()
    worker.connection.close()
    worker.seed = None


def _work(connection: Connection, replicas: int | None, ticks: int | None) -> None:
    """A worker: run each seed it is sent, answer with its summary; ``None`` ends it."""
    try:
        while True:
            seed = connection.recv()
            if seed is None:
                return
            connection.send(run_seed(seed, replicas=replicas, ticks=ticks))
    except (KeyboardInterrupt, EOFError):
        return


if __name__ == "__main__":
    sys.exit(main())
