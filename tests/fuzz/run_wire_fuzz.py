"""Run the wire fuzzing properties for as long as asked; ``scripts/fuzz`` calls this.

The properties are those of ``wire_properties`` (the ones ``pytest tests/fuzz`` runs, with
their explicit examples) plus the decoder's stateful model. They run in rounds, each a fresh
Hypothesis run with its own random seed, taking turns, until the example budget
(``--examples``, shared evenly by the properties) or the time budget (``--seconds``) is
spent, whichever comes first. Failures are saved in Hypothesis's example database
(``.hypothesis/``), which ``pytest tests/fuzz`` replays too.

Prints one line per property with the inputs it was called with, and the total; exits 1 on
the first failing property (Hypothesis prints the minimal failing input and how to
reproduce it), 0 otherwise.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test
from wire_properties import PROPERTIES, TRIED, DecoderMachine, hypothesis_test

ROUND_EXAMPLES = 500  # examples per Hypothesis run; a budget is spent in such rounds
MACHINE = "decoder_machine"


def _settings(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples,
        deadline=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow],
        stateful_step_count=25,
    )


def _runner(name: str) -> Callable[[int], None]:
    if name == MACHINE:
        return lambda n: run_state_machine_as_test(DecoderMachine, settings=_settings(n))
    prop = next(prop for prop in PROPERTIES if prop.name == name)
    return lambda n: hypothesis_test(prop, _settings(n))()


def main(argv: list[str] | None = None) -> int:
    names = [prop.name for prop in PROPERTIES] + [MACHINE]
    parser = argparse.ArgumentParser(prog="scripts/fuzz", description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, help="total examples, shared by properties")
    parser.add_argument("--seconds", type=float, help="stop starting rounds after this long")
    parser.add_argument("--only", action="append", choices=names, help="run only these")
    args = parser.parse_args(argv)
    if args.examples is None and args.seconds is None:
        args.examples = 20_000
    chosen = args.only or names
    quota = math.inf if args.examples is None else math.ceil(args.examples / len(chosen))
    deadline = math.inf if args.seconds is None else time.monotonic() + args.seconds
    print(
        f"wire fuzz: {len(chosen)} properties, examples="
        f"{args.examples if args.examples is not None else 'unbounded'}, "
        f"seconds={args.seconds if args.seconds is not None else 'unbounded'}",
        flush=True,
    )
    started = time.monotonic()
    spent = dict.fromkeys(chosen, 0)
    elapsed = dict.fromkeys(chosen, 0.0)
    while True:
        pending = [name for name in chosen if spent[name] < quota]
        if not pending or time.monotonic() >= deadline:
            break
        for name in pending:
            if time.monotonic() >= deadline:
                break
            examples = int(min(ROUND_EXAMPLES, quota - spent[name]))
            round_started = time.monotonic()
            try:
                _runner(name)(examples)
            except Exception:
                traceback.print_exc()
                _report(chosen, elapsed, started)
                print(f"FAILED: property {name}", flush=True)
                return 1
            spent[name] += examples
            elapsed[name] += time.monotonic() - round_started
        tried = sum(TRIED[name] for name in chosen)
        print(f"  ... {tried:,} inputs, {time.monotonic() - started:.0f} s", flush=True)
    _report(chosen, elapsed, started)
    print("ok: no failures", flush=True)
    return 0


def _report(chosen: list[str], elapsed: dict[str, float], started: float) -> None:
    for name in chosen:
        print(f"  {name:<18} {TRIED[name]:>10,} inputs {elapsed[name]:>9.1f} s")
    total = sum(TRIED[name] for name in chosen)
    print(f"total: {total:,} inputs tried in {time.monotonic() - started:.1f} s", flush=True)


if __name__ == "__main__":
    sys.exit(main())
