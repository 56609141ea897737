"""The ``craton`` command: ``verify``, ``sim run|replay|shrink``, ``demo`` and ``version``,
and the client commands ``stream create``, ``append``, ``read`` and ``status`` that talk to
a running node (``craton.client.commands``).

Exit codes: 0 success; 1 the data directory is damaged (verify) or the demonstration found
a broken promise; 2 bad usage or a path that is not a data directory; for ``sim``: 127 a
correctness violation, 128 a liveness failure, 129 a crash (see docs/SIMULATION.md), and for
``sim shrink`` 1 when the seed does not fail; for the client commands: 1 the node refused
the request, 3 the node could not be reached. Every failure prints one readable line on
stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from craton import __version__
from craton.console import OneLineParser
from craton.core.audit import AuditReport, audit
from craton.core.log import SEGMENT_FOLDER
from craton.core.superblock import PATH as SUPERBLOCK_PATH

if TYPE_CHECKING:
    from craton.sim.cluster import SwarmOptions

EXIT_OK = 0
EXIT_DAMAGED = 1
EXIT_USAGE = 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        result: int = args.run(args)
    except KeyboardInterrupt:
        return 130
    return result


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="craton", description="Craton command-line tools")
    parser.add_argument(
        "--version", action="version", version=f"craton {__version__}", help="print the version"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    verify = commands.add_parser("verify", help="check a data directory offline")
    verify.add_argument("data_dir", metavar="DATA_DIR", type=Path, help="the data directory")
    verify.add_argument(
        "--public-key",
        metavar="HEX",
        help="the signing key to pin, 64 hex digits (default: none pinned)",
    )
    verify.add_argument(
        "--json", action="store_true", help="print the summary as JSON (default: one line)"
    )
    verify.set_defaults(run=_run_verify)

    demo = commands.add_parser("demo", help="a seeded end-to-end run of the log")
    demo.add_argument("--seed", type=int, default=0, help="the seed of the run (default: 0)")
    demo.add_argument("--records", type=int, default=2000, help="records to append (default: 2000)")
    demo.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="also run on real files here (default: simulated disk only)",
    )
    demo.set_defaults(run=_run_demo)

    sim = commands.add_parser("sim", help="run the deterministic cluster simulator")
    sim_commands = sim.add_subparsers(dest="sim_command", metavar="SIM_COMMAND", required=True)
    for name, help_text in (("run", "run seeds"), ("replay", "replay one seed, with a trace")):
        sub = sim_commands.add_parser(name, help=help_text)
        if name == "run":
            chosen = sub.add_mutually_exclusive_group(required=True)
            chosen.add_argument("--seed", type=int, help="one seed (this or --seeds is required)")
            chosen.add_argument(
                "--seeds", metavar="A..B", help="seeds A to B, both included (or --seed: required)"
            )
            sub.add_argument(
                "--jobs",
                type=int,
                default=1,
                metavar="N",
                help="run the seeds in N processes; the JSON lines still come in seed order "
                "(default: 1)",
            )
        else:
            chosen = sub.add_mutually_exclusive_group(required=True)
            chosen.add_argument(
                "--seed",
                type=int,
                help="the seed to replay (this or --schedule is required; no default)",
            )
            chosen.add_argument(
                "--schedule",
                type=Path,
                metavar="FILE",
                help="replay the seed and every option of a schedule file written by craton sim "
                "shrink (this or --seed is required; no default)",
            )
            sub.add_argument(
                "--html",
                type=Path,
                metavar="FILE",
                help="also write the run's timeline here, as a self-contained HTML page "
                "(default: none)",
            )
        sub.add_argument(
            "--replicas",
            type=int,
            choices=[1, 2, 3, 4, 5, 6, 7],
            default=None,
            help="replicas in the simulated cluster (default: drawn per seed: 1, 3 or 5)",
        )
        sub.add_argument(
            "--ticks",
            type=int,
            default=None,
            help="length of the fault phase, in ticks (default: drawn per seed, 1500..4000)",
        )
        sub.add_argument(
            "--trace", type=Path, default=None, help="write a per-event log here (default: none)"
        )
        sub.add_argument(
            "--disk-profile",
            choices=["atlas", "disjoint"],
            default="atlas",
            help="where destructive disk faults land (default: atlas)",
        )
        sub.add_argument(
            "--sizes",
            choices=["shrunk", "production"],
            default=None,
            help="the replicas' sizes and timeouts: the simulation profile (shrunk) or the "
            "production profile a node runs (default: drawn per seed, production in 1 of 8)",
        )
        _add_scenario(sub)
        sub.set_defaults(run=_run_sim)
    _add_shrink(sim_commands)
    collect = sim_commands.add_parser(
        "collect", help="merge the JSON lines of a swarm run in pieces into one verdict"
    )
    collect.add_argument(
        "files", nargs="+", type=Path, metavar="FILE", help="files of seeds' JSON lines"
    )
    collect.set_defaults(run=_run_collect)

    from craton.client.commands import add_client_commands

    add_client_commands(commands)

    version = commands.add_parser("version", help="print the version")
    version.set_defaults(run=lambda args: print(f"craton {__version__}") or EXIT_OK)
    return parser


def _add_scenario(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scenario",
        choices=["none", "stale-answer", "isolated-suffix"],
        default=None,
        help="a hard case built on purpose in every seed, or none (default: drawn per seed, "
        "one in 5 clusters of 3 replicas or more; see docs/SIMULATION.md)",
    )


def _add_shrink(sim_commands: argparse._SubParsersAction[OneLineParser]) -> None:
    shrink = sim_commands.add_parser(
        "shrink", help="reduce a failing seed to a smaller schedule that fails the same way"
    )
    shrink.add_argument("--seed", type=int, required=True, help="the failing seed (required)")
    shrink.add_argument(
        "--replicas",
        type=int,
        choices=[1, 2, 3, 4, 5, 6, 7],
        default=None,
        help="replicas in the simulated cluster, as the seed was run (default: drawn)",
    )
    shrink.add_argument(
        "--ticks",
        type=int,
        default=None,
        help="length of the fault phase to start from, in ticks (default: drawn per seed)",
    )
    shrink.add_argument(
        "--disk-profile",
        choices=["atlas", "disjoint"],
        default="atlas",
        help="where destructive disk faults land, as the seed was run (default: atlas)",
    )
    shrink.add_argument(
        "--sizes",
        choices=["shrunk", "production"],
        default=None,
        help="the replicas' sizes and timeouts, as the seed was run (default: drawn per seed)",
    )
    _add_scenario(shrink)
    shrink.add_argument(
        "--out", type=Path, required=True, metavar="FILE", help="write the schedule here (required)"
    )
    shrink.add_argument(
        "--runs",
        type=int,
        default=60,
        metavar="N",
        help="runs of the cluster to spend at most, the first included (default: 60)",
    )
    shrink.set_defaults(run=_run_shrink)


def _fail(message: str, code: int) -> int:
    print(f"craton: {message}", file=sys.stderr)
    return code


# --- verify ----------------------------------------------------------------------------------


def _run_verify(args: argparse.Namespace) -> int:
    data_dir: Path = args.data_dir
    if not (data_dir / SUPERBLOCK_PATH).is_file():
        return _fail(
            f"{data_dir}: not a Craton data directory (no '{SUPERBLOCK_PATH}')", EXIT_USAGE
        )
    pinned = None
    if args.public_key is not None:
        try:
            pinned = bytes.fromhex(args.public_key)
        except ValueError:
            return _fail("--public-key: expected 64 hexadecimal digits", EXIT_USAGE)
    try:
        report = verify_directory(data_dir, public_key=pinned)
    except OSError as error:
        return _fail(f"{data_dir}: cannot read: {error.strerror or error}", EXIT_USAGE)
    if args.json:
        print(json.dumps(_report_json(data_dir, report), sort_keys=True))
    else:
        for warning in report.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        print(_report_line(data_dir, report))
    return EXIT_OK if report.ok else EXIT_DAMAGED


def verify_directory(data_dir: Path, *, public_key: bytes | None = None) -> AuditReport:
    folder = data_dir / SEGMENT_FOLDER
    names = sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []

    def read(path: str) -> bytes:
        file = data_dir / path
        return file.read_bytes() if file.is_file() else b""

    return audit(names, read, public_key=public_key)


def _report_line(data_dir: Path, report: AuditReport) -> str:
    if not report.ok:
        return f"DAMAGED {data_dir}: {report.problem}"
    start = f" from position {report.base} (its base)" if report.base else ""
    return (
        f"OK {data_dir}: {report.records - report.base} records{start} in {report.segments} "
        "segments, "
        f"{report.checkpoints} sealed checkpoints, head hash {report.head_hash.hex()[:16]}…"
    )


def _report_json(data_dir: Path, report: AuditReport) -> dict[str, object]:
    return {
        "data_dir": str(data_dir),
        "ok": report.ok,
        "records": report.records - report.base,
        "base": report.base,
        "segments": report.segments,
        "checkpoints": report.checkpoints,
        "head_hash": report.head_hash.hex(),
        "public_key": report.public_key.hex(),
        "problem": report.problem,
        "warnings": report.warnings,
    }


# --- sim -------------------------------------------------------------------------------------


def _run_sim(args: argparse.Namespace) -> int:
    from craton.sim.runner import parse_seeds, run_header, run_seeds

    if getattr(args, "schedule", None) is not None:
        return _run_replay(args)  # a schedule carries its seed and every option
    try:
        seeds = (
            parse_seeds(args.seeds) if getattr(args, "seeds", None) else parse_seeds(str(args.seed))
        )
    except ValueError as error:
        option = "--seeds" if getattr(args, "seeds", None) else "--seed"
        return _fail(f"{option}: {error}", EXIT_USAGE)
    if args.ticks is not None and args.ticks < 1:
        return _fail("--ticks must be at least 1", EXIT_USAGE)
    if args.sim_command == "replay" and args.html is not None:
        return _run_replay(args)
    if args.sim_command == "replay":
        header = run_header(
            args.seed,
            replicas=args.replicas,
            ticks=args.ticks,
            profile=args.disk_profile,
            sizes=args.sizes,
            scenario=args.scenario,
        )
        print(header, file=sys.stderr)
    shape = {
        "replicas": args.replicas,
        "ticks": args.ticks,
        "profile": args.disk_profile,
        "sizes": args.sizes,
        "scenario": args.scenario,
    }
    jobs = getattr(args, "jobs", 1)
    if jobs < 1:
        return _fail("--jobs must be at least 1", EXIT_USAGE)
    if jobs > 1 and args.trace is not None:
        return _fail("--trace is written by one process: use it with --jobs 1", EXIT_USAGE)
    if jobs > 1 and len(seeds) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=jobs) as pool:
            return run_seeds(seeds, **shape, trace_file=None, mapper=pool.map)
    if args.trace is None:
        return run_seeds(seeds, **shape, trace_file=None)
    try:
        trace_file = args.trace.open("w", encoding="utf-8")
    except OSError as error:
        return _fail(f"--trace {args.trace}: cannot write: {error.strerror or error}", EXIT_USAGE)
    with trace_file:
        return run_seeds(seeds, **shape, trace_file=trace_file)


def _run_replay(args: argparse.Namespace) -> int:
    """``replay`` of a schedule file, or of a seed with its timeline written as HTML."""
    from craton.sim.runner import options_header, report, run_options
    from craton.sim.timeline import Recorder, render_html

    target = _replay_target(args)
    if isinstance(target, int):
        return target
    seed, options, replay = target
    print(options_header(seed, options), file=sys.stderr)
    files = {}
    for flag, path in (("--trace", args.trace), ("--html", args.html)):
        try:
            files[flag] = None if path is None else path.open("w", encoding="utf-8")
        except OSError as error:
            return _fail(f"{flag} {path}: cannot write: {error.strerror or error}", EXIT_USAGE)
    trace_file, html_file = files["--trace"], files["--html"]
    recorder = Recorder() if html_file is not None else None

    def trace(line: str) -> None:
        if trace_file is not None:
            print(line, file=trace_file)
        if recorder is not None:
            recorder.line(line)

    tracing = trace_file is not None or recorder is not None
    summary = run_options(
        seed,
        options,
        replay=replay,
        trace=trace if tracing else None,
        on_cluster=None if recorder is None else recorder.attach,
    )
    if recorder is not None and html_file is not None:
        ticks = summary.get("ticks")
        recorder.finish(ticks if isinstance(ticks, int) else recorder.now)
        html_file.write(render_html(recorder, seed=seed, options=options, summary=summary))
    for file in files.values():
        if file is not None:
            file.close()
    return report(summary, out=sys.stdout, progress=sys.stderr)


def _replay_target(args: argparse.Namespace) -> tuple[int, SwarmOptions, str] | int:
    """The seed, options and replay command ``replay`` runs, or the exit code of bad usage."""
    from craton.sim.cluster import draw_options
    from craton.sim.runner import replay_command, schedule_replay_command
    from craton.sim.shrink import ScheduleError, read_schedule

    if args.schedule is None:
        shape = (args.replicas, args.ticks, args.disk_profile, args.sizes, args.scenario)
        options = draw_options(
            args.seed,
            replicas=shape[0],
            ticks=shape[1],
            profile=shape[2],
            sizes=shape[3],
            scenario=shape[4],
        )
        return args.seed, options, replay_command(args.seed, *shape)
    given = {
        "--replicas": args.replicas,
        "--ticks": args.ticks,
        "--sizes": args.sizes,
        "--scenario": args.scenario,
        "--disk-profile": None if args.disk_profile == "atlas" else args.disk_profile,
    }
    named = [flag for flag, value in given.items() if value is not None]
    if named:
        return _fail(f"--schedule carries every option: drop {', '.join(named)}", EXIT_USAGE)
    try:
        seed, options = read_schedule(args.schedule)
    except ScheduleError as error:
        return _fail(f"--schedule {args.schedule}: {error}", EXIT_USAGE)
    return seed, options, schedule_replay_command(args.schedule)


def _run_shrink(args: argparse.Namespace) -> int:
    """Shrink a failing seed: progress on stderr, the sizes and the replay command on
    stdout; 0 once the schedule is written, 1 when the seed does not fail."""
    from craton.sim.cluster import draw_options
    from craton.sim.runner import schedule_replay_command
    from craton.sim.shrink import comparison, schedule_json, shrink, sizes

    if args.seed < 0:
        return _fail("--seed must be a non-negative integer", EXIT_USAGE)
    if args.ticks is not None and args.ticks < 1:
        return _fail("--ticks must be at least 1", EXIT_USAGE)
    if args.runs < 1:
        return _fail("--runs must be at least 1", EXIT_USAGE)
    options = draw_options(
        args.seed,
        replicas=args.replicas,
        ticks=args.ticks,
        profile=args.disk_profile,
        sizes=args.sizes,
        scenario=args.scenario,
    )
    shrunk = shrink(
        args.seed,
        options,
        runs_max=args.runs,
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    if shrunk.original_failure.result == "pass":
        print(f"seed {args.seed} passes: there is no failure to shrink", file=sys.stderr)
        return 1
    failure = shrunk.reduced_failure
    text = schedule_json(
        args.seed,
        shrunk.reduced,
        expected={"result": failure.result, "kind": failure.kind},
        shrunk_from=sizes(shrunk.original, shrunk.original_failure),
    )
    try:
        args.out.write_text(text, encoding="utf-8")
    except OSError as error:
        return _fail(f"--out {args.out}: cannot write: {error.strerror or error}", EXIT_USAGE)
    for line in comparison(shrunk):
        print(line)
    print(f"wrote {args.out}; replay with: {schedule_replay_command(args.out)}")
    return EXIT_OK


def _run_collect(args: argparse.Namespace) -> int:
    """One JSON summary line on stdout; each failing seed's replay command on stderr; the
    exit code ``craton sim run`` would give for all the seeds together."""
    from craton.sim.collect import CollectError, collect

    numbered: list[tuple[str, str]] = []
    for path in args.files:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
            return _fail(f"{path}: cannot read: {reason or error}", EXIT_USAGE)
        numbered.extend((f"{path}:{n}", line) for n, line in enumerate(text.splitlines(), 1))
    try:
        verdict = collect(numbered)
    except CollectError as error:
        return _fail(str(error), EXIT_USAGE)
    print(json.dumps(verdict.summary(), sort_keys=True))
    for failure in verdict.failures():
        seed, result, replay = failure["seed"], failure["result"], failure["replay"]
        print(f"seed {seed} failed ({result}); replay with: {replay}", file=sys.stderr)
    return verdict.exit_code


# --- demo ------------------------------------------------------------------------------------


def _run_demo(args: argparse.Namespace) -> int:
    from craton.demo import run_demo

    if args.records < 1 or args.seed < 0:
        return _fail("--records must be at least 1 and --seed non-negative", EXIT_USAGE)
    return run_demo(seed=args.seed, records=args.records, data_dir=args.data_dir)


if __name__ == "__main__":
    sys.exit(main())
