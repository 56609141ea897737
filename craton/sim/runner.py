"""``craton sim run`` / ``craton sim replay``: seeds in, one JSON line per seed out.

Exit codes (documented in docs/SIMULATION.md):

    0    every seed passed
    127  a correctness violation (a checker failed)
    128  a liveness failure (the healed cluster did not finish its work in the tick budget)
    129  the simulator or a replica crashed (an exception: a broken assertion is a bug)

With several seeds, the code is the first failing seed's. Every failure prints the exact
command that replays it.
"""

from __future__ import annotations

import functools
import json
import shlex
import sys
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TextIO

from craton.core.vsr.profile import TICK_MS
from craton.sim.cluster import Cluster, SwarmOptions, draw_options

# Runs a seed's function over seeds elsewhere (a process pool's map), in seed order.
Mapper = Callable[[Callable[[int], dict[str, object]], range], Iterable[dict[str, object]]]

EXIT_PASS = 0
EXIT_CORRECTNESS = 127
EXIT_LIVENESS = 128
EXIT_CRASH = 129
EXIT_CODES = {
    "pass": EXIT_PASS,
    "correctness": EXIT_CORRECTNESS,
    "liveness": EXIT_LIVENESS,
    "crash": EXIT_CRASH,
}


def replay_command(
    seed: int,
    replicas: int | None,
    ticks: int | None,
    profile: str = "atlas",
    sizes: str | None = None,
    scenario: str | None = None,
) -> str:
    command = f"craton sim replay --seed {seed}"
    if replicas is not None:
        command += f" --replicas {replicas}"
    if ticks is not None:
        command += f" --ticks {ticks}"
    if profile != "atlas":
        command += f" --disk-profile {profile}"
    if sizes is not None:
        command += f" --sizes {sizes}"
    if scenario is not None:
        command += f" --scenario {scenario}"
    return command


def run_header(
    seed: int,
    *,
    replicas: int | None,
    ticks: int | None,
    profile: str = "atlas",
    sizes: str | None = None,
    scenario: str | None = None,
) -> str:
    """The swarm options a seed draws, as one line (the trace's first line; ``replay``
    prints it on stderr)."""
    options = draw_options(
        seed, replicas=replicas, ticks=ticks, profile=profile, sizes=sizes, scenario=scenario
    )
    return options_header(seed, options)


def options_header(seed: int, options: SwarmOptions) -> str:
    return f"seed {seed}: swarm options {json.dumps(options.summary(), sort_keys=True)}"


def run_seed(
    seed: int,
    *,
    replicas: int | None = None,
    ticks: int | None = None,
    trace: Callable[[str], None] | None = None,
    profile: str = "atlas",
    sizes: str | None = None,
    scenario: str | None = None,
) -> dict[str, object]:
    """Run one seed; returns its summary (the JSON line's fields)."""
    options = draw_options(
        seed, replicas=replicas, ticks=ticks, profile=profile, sizes=sizes, scenario=scenario
    )
    replay = replay_command(seed, replicas, ticks, profile, sizes, scenario)
    return run_options(seed, options, replay=replay, trace=trace)


def run_options(
    seed: int,
    options: SwarmOptions,
    *,
    replay: str,
    trace: Callable[[str], None] | None = None,
    on_cluster: Callable[[Cluster], None] | None = None,
) -> dict[str, object]:
    """Run seed ``seed`` under exactly ``options``; returns its summary (the JSON line's
    fields), whose ``replay`` is the command that runs it again. ``on_cluster`` is handed
    the cluster before it runs (a timeline's recorder watches it)."""
    if trace is not None:
        trace(f"# {options_header(seed, options)}")
    summary: dict[str, object] = {
        "seed": seed,
        "replicas": options.replica_count,
        "clients": options.client_count,
        "sizes": options.sizes,
        "scenario": options.scenario.name,
        # every line carries the command that runs this very seed again, whatever it gave
        "replay": replay,
    }
    try:
        cluster = Cluster(seed, options, trace=trace)
        if on_cluster is not None:
            on_cluster(cluster)
        result = cluster.run()
    except Exception as error:  # a crash is a finding: report it like any other
        frames = traceback.extract_tb(error.__traceback__)
        where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
        summary.update(result="crash", error=f"{type(error).__name__}: {error} at {where}")
        return summary
    summary.update(
        result=result.result,
        trace_digest=result.trace_digest,
        ticks=result.ticks,
        simulated_seconds=result.ticks * TICK_MS / 1000,
        committed_ops=result.committed_ops,
        faults={name: count for name, count in sorted(result.faults.items()) if count},
        fault_kinds=sum(1 for count in result.faults.values() if count),
        repairs=result.repairs,
        gateway=result.gateway,
        liveness=result.liveness,
    )
    if result.violations:
        summary["violations"] = list(result.violations)
    return summary


def run_seeds(
    seeds: range,
    *,
    replicas: int | None,
    ticks: int | None,
    trace_file: TextIO | None,
    out: TextIO | None = None,
    progress: TextIO | None = None,
    profile: str = "atlas",
    sizes: str | None = None,
    scenario: str | None = None,
    mapper: Mapper | None = None,
) -> int:
    """Run ``seeds`` in order: a JSON line each on ``out`` (default: stdout), failures and
    progress on ``progress`` (default: stderr); returns the exit code. ``mapper`` (e.g. a
    process pool's ``map``) runs the seeds elsewhere and yields their summaries in seed
    order; it cannot be combined with a trace file."""
    out = sys.stdout if out is None else out
    progress = sys.stderr if progress is None else progress
    exit_code = EXIT_PASS
    failures = 0
    run = functools.partial(
        run_seed, replicas=replicas, ticks=ticks, profile=profile, sizes=sizes, scenario=scenario
    )
    if trace_file is not None:
        assert mapper is None, "a trace is written by this process: run its seeds here"
        run = functools.partial(run, trace=lambda line: print(line, file=trace_file))
    summaries = map(run, seeds) if mapper is None else mapper(run, seeds)
    for count, (seed, summary) in enumerate(zip(seeds, summaries, strict=True), start=1):
        assert summary["seed"] == seed, "summaries come in seed order"
        code = report(summary, out=out, progress=progress)
        if code != EXIT_PASS:
            failures += 1
            if exit_code == EXIT_PASS:
                exit_code = code
        if len(seeds) > 1 and (count % 10 == 0 or count == len(seeds)):
            print(f"[{count}/{len(seeds)}] seeds run, {failures} failed", file=progress, flush=True)
    return exit_code


def report(summary: dict[str, object], *, out: TextIO, progress: TextIO) -> int:
    """Print a seed's JSON line on ``out`` (and, when it failed, its replay command on
    ``progress``); returns its exit code."""
    print(json.dumps(summary, sort_keys=True), file=out, flush=True)
    code = EXIT_CODES[str(summary["result"])]
    if code != EXIT_PASS:
        print(
            f"seed {summary['seed']} failed ({summary['result']}); "
            f"replay with: {summary['replay']}",
            file=progress,
            flush=True,
        )
    return code


def schedule_replay_command(path: Path) -> str:
    """The command that runs the schedule file at ``path`` (``craton.sim.shrink``)."""
    return f"craton sim replay --schedule {shlex.quote(str(path))}"


def parse_seeds(text: str) -> range:
    """``A..B`` (both inclusive) or a single seed."""
    if ".." in text:
        low, high = text.split("..", 1)
        first, last = int(low), int(high)
    else:
        first = last = int(text)
    if first < 0 or last < first:
        raise ValueError(f"seeds must be N or A..B with 0 <= A <= B, got {text!r}")
    return range(first, last + 1)
