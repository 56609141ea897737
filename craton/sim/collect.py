"""``craton sim collect``: one verdict from the JSON lines of a swarm run in pieces.

A swarm split across processes, machines or the pods of a Kubernetes Indexed Job
(``deploy/k8s/sim-swarm-job.yaml``) leaves one JSON line per seed in several files. This
merges them: every seed counted once (a seed reported twice must carry the same trace
digest, or the simulator was not deterministic: that is a failure of its own), the seeds
missing from the range they cover named, the results counted, the failures listed with their
replay commands, and the exit code that ``craton sim run`` would have given for the whole
range: the first failing seed's, in seed order.

Pure: it is handed the lines with where each came from; the CLI reads the files.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import attrs

from craton.sim.runner import EXIT_CODES, EXIT_CRASH, EXIT_PASS

MISSING_SHOWN_MAX = 20  # missing seeds named in the verdict; the count is always given


class CollectError(ValueError):
    """A line that is not a seed's JSON line: ``where`` names its file and line."""


@attrs.define
class Verdict:
    lines: dict[int, dict[str, object]] = attrs.field(factory=dict)  # seed -> its line
    nondeterministic: list[int] = attrs.field(factory=list)  # seeds seen with two digests
    skipped: int = 0  # lines that were not seeds' lines (progress, blank)

    def summary(self) -> dict[str, object]:
        seeds = sorted(self.lines)
        results: dict[str, int] = {}
        for seed in seeds:
            result = str(self.lines[seed]["result"])
            results[result] = results.get(result, 0) + 1
        missing = [] if not seeds else sorted(set(range(seeds[0], seeds[-1] + 1)) - set(seeds))
        return {
            "seeds": len(seeds),
            "first": seeds[0] if seeds else None,
            "last": seeds[-1] if seeds else None,
            "missing": len(missing),
            "missing_seeds": missing[:MISSING_SHOWN_MAX],
            "results": dict(sorted(results.items())),
            "nondeterministic": self.nondeterministic,
            "lines_skipped": self.skipped,
            "failures": self.failures(),
            "verdict": "pass" if self.exit_code == EXIT_PASS else "fail",
        }

    def failures(self) -> list[dict[str, object]]:
        """The failing seeds, in seed order, with their result and replay command."""
        return [
            {"seed": seed, "result": line["result"], "replay": line.get("replay")}
            for seed, line in sorted(self.lines.items())
            if line["result"] != "pass"
        ]

    @property
    def exit_code(self) -> int:
        if self.nondeterministic:
            return EXIT_CRASH
        for seed in sorted(self.lines):
            code = EXIT_CODES.get(str(self.lines[seed]["result"]), EXIT_CRASH)
            if code != EXIT_PASS:
                return code
        return EXIT_PASS


def collect(lines: Iterable[tuple[str, str]]) -> Verdict:
    """Merge ``(where, line)`` pairs (``where``: ``file:line``). Lines that do not start
    with ``{`` are not seeds' lines and are skipped (a pod's log holds the progress lines of
    stderr too); a line that does but is not a seed's JSON line raises ``CollectError``."""
    verdict = Verdict()
    for where, text in lines:
        if not text.lstrip().startswith("{"):
            verdict.skipped += 1
            continue
        line = _parse(where, text)
        seed = line["seed"]
        assert isinstance(seed, int)
        known = verdict.lines.get(seed)
        if known is None:
            verdict.lines[seed] = line
        elif known.get("trace_digest") != line.get("trace_digest"):
            verdict.nondeterministic.append(seed)
    verdict.nondeterministic = sorted(dict.fromkeys(verdict.nondeterministic))
    return verdict


def _parse(where: str, text: str) -> dict[str, object]:
    try:
        line = json.loads(text)
    except json.JSONDecodeError as error:
        raise CollectError(f"{where}: not a JSON line ({error.msg})") from None
    if not isinstance(line, dict):
        raise CollectError(f"{where}: not a seed's JSON line (an object is expected)")
    seed, result = line.get("seed"), line.get("result")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise CollectError(f"{where}: no seed (a non-negative integer) in the line")
    if not isinstance(result, str):
        raise CollectError(f"{where}: no result in the line of seed {seed}")
    return line
