"""A swarm beyond one machine: ``craton sim collect`` and the Kubernetes Indexed Job.

- ``collect`` merges JSON lines from several files into one verdict: each seed once, a seed
  seen with two digests is nondeterminism (a failure), missing seeds are named, progress
  lines are skipped, a malformed line is a one-line error naming its file and line, and the
  exit code is the first failing seed's, in seed order;
- the Indexed Job's pods run disjoint seed ranges that cover the swarm without a gap (its
  shell command run here with a stand-in ``craton`` that prints its arguments);
- end to end: two ``craton sim run`` outputs, collected, give the verdict of one run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from craton import cli
from craton.sim.collect import CollectError, collect
from craton.sim.runner import EXIT_CORRECTNESS, EXIT_CRASH, EXIT_LIVENESS, EXIT_PASS

JOB = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "sim-swarm-job.yaml"


def line(seed: int, result: str = "pass", digest: str = "d") -> str:
    replay = f"craton sim replay --seed {seed}"
    return json.dumps({"seed": seed, "result": result, "trace_digest": digest, "replay": replay})


def lines(*texts: str) -> list[tuple[str, str]]:
    return [(f"f:{number}", text) for number, text in enumerate(texts, start=1)]


def test_seeds_are_merged_once_and_the_first_failure_decides() -> None:
    verdict = collect(
        lines(
            line(3, "liveness"),
            "[10/20] seeds run, 0 failed",
            "",
            line(1),
            line(2, "correctness"),
            line(1),  # the same seed run twice, deterministically
            line(5),
        )
    )
    summary = verdict.summary()
    assert summary["seeds"] == 4 and (summary["first"], summary["last"]) == (1, 5)
    assert summary["missing"] == 1 and summary["missing_seeds"] == [4]
    assert summary["results"] == {"correctness": 1, "liveness": 1, "pass": 2}
    assert summary["lines_skipped"] == 2
    assert [f["seed"] for f in verdict.failures()] == [2, 3]
    assert verdict.exit_code == EXIT_CORRECTNESS, "seed 2 fails before seed 3"
    assert summary["verdict"] == "fail"
    assert collect(lines(line(3, "liveness"), line(4))).exit_code == EXIT_LIVENESS
    assert collect(lines(line(0), line(1))).exit_code == EXIT_PASS


def test_a_seed_with_two_digests_is_a_failure_of_determinism() -> None:
    verdict = collect(lines(line(7, digest="a"), line(7, digest="b"), line(8)))
    assert verdict.nondeterministic == [7]
    assert verdict.exit_code == EXIT_CRASH
    assert verdict.summary()["verdict"] == "fail"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{not json", "f:1: not a JSON line"),
        ('{"result": "pass"}', "f:1: no seed"),
        ('{"seed": -1, "result": "pass"}', "f:1: no seed"),
        ('{"seed": 4}', "f:1: no result in the line of seed 4"),
    ],
)
def test_a_line_that_is_not_a_seeds_line_is_named(text: str, problem: str) -> None:
    with pytest.raises(CollectError, match=problem):
        collect(lines(text))


def test_the_indexed_job_runs_disjoint_ranges_that_cover_the_swarm(tmp_path: Path) -> None:
    job = yaml.safe_load(JOB.read_text())
    spec = job["spec"]
    assert (job["kind"], spec["completionMode"]) == ("Job", "Indexed")
    container = spec["template"]["spec"]["containers"][0]
    assert container["command"] == ["sh", "-c"]
    env = {item["name"]: item["value"] for item in container["env"]}
    stand_in = tmp_path / "craton"
    stand_in.write_text('#!/bin/sh\necho "$@"\n')
    stand_in.chmod(0o755)
    covered: list[int] = []
    for index in range(spec["completions"]):
        done = subprocess.run(
            ["sh", "-c", container["args"][0]],
            env={**env, "JOB_COMPLETION_INDEX": str(index), "PATH": f"{tmp_path}:/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        words = done.stdout.split()
        assert words[:3] == ["sim", "run", "--seeds"], words
        first, last = map(int, words[3].split(".."))
        covered.extend(range(first, last + 1))
    per_pod = int(env["SWARM_SEEDS_PER_POD"])
    assert covered == list(range(spec["completions"] * per_pod)), "gaps or overlaps"


def test_two_runs_collected_give_the_verdict_of_one(tmp_path: Path) -> None:
    outputs = []
    for seeds in ("0..1", "2..3"):
        done = subprocess.run(
            [sys.executable, "-m", "craton", "sim", "run", "--seeds", seeds, "--replicas", "1"],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PYTHONHASHSEED": "0"},
        )
        assert done.returncode == EXIT_PASS, done.stderr
        path = tmp_path / f"part{len(outputs)}.jsonl"
        path.write_text(done.stdout + done.stderr)  # as a pod's log: progress lines too
        outputs.append(str(path))
    done = subprocess.run(
        [sys.executable, "-m", "craton", "sim", "collect", *outputs],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == EXIT_PASS, done.stdout + done.stderr
    summary = json.loads(done.stdout)
    assert (summary["seeds"], summary["missing"], summary["verdict"]) == (4, 0, "pass")
    assert summary["results"] == {"pass": 4}


def test_collect_of_a_missing_file_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["sim", "collect", "/nonexistent/swarm.jsonl"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "/nonexistent/swarm.jsonl" in err, err


def test_jobs_give_the_very_lines_of_one_process_in_seed_order() -> None:
    shape = ["--seeds", "0..5", "--replicas", "1", "--ticks", "300"]
    runs = [
        subprocess.run(
            [sys.executable, "-m", "craton", "sim", "run", *shape, "--jobs", jobs],
            capture_output=True,
            text=True,
            timeout=120,
        )
        for jobs in ("1", "2")
    ]
    assert [run.returncode for run in runs] == [EXIT_PASS, EXIT_PASS], runs[1].stderr
    assert runs[0].stdout == runs[1].stdout, "expected the same JSON lines, in seed order"
    assert [json.loads(text)["seed"] for text in runs[1].stdout.splitlines()] == list(range(6))


def test_jobs_with_a_trace_is_one_line_of_usage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = str(tmp_path / "t.log")
    code = cli.main(["sim", "run", "--seeds", "0..1", "--jobs", "2", "--trace", trace])
    err = capsys.readouterr().err
    assert code == 2 and "use it with --jobs 1" in err and err.count("\n") == 1, err
