"""Scenarios (``craton.sim.scenarios``): each injects the faults it names, in the seeds
that draw it and only there, deterministically, and the schedule files carry it."""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import pytest

from craton.core.prng import Prng
from craton.sim.cluster import Cluster, draw_options
from craton.sim.scenarios import NO_SCENARIO, SCENARIO_SHARE, ScenarioPlan
from craton.sim.shrink import (
    SCHEDULE_FORMAT,
    ScheduleError,
    options_from_dict,
    options_to_dict,
    read_schedule,
    schedule_json,
)

TICKS = 1_500
SEEDS = range(6)


def run(seed: int, name: str, replicas: int = 3) -> dict[str, int]:
    options = draw_options(seed, replicas=replicas, ticks=TICKS, scenario=name)
    assert options.scenario.name == name
    result = Cluster(seed, options).run()
    assert result.result == "pass", (seed, name, result.violations, result.liveness)
    return {k: v for k, v in result.faults.items() if k.startswith("scenario.")}


def test_a_share_of_the_seeds_draws_a_scenario_and_single_replicas_never() -> None:
    drawn = [draw_options(seed, replicas=3).scenario.name for seed in range(1_000)]
    share = sum(name != "none" for name in drawn) / len(drawn)
    assert SCENARIO_SHARE / 2 < share < SCENARIO_SHARE * 1.5, share
    assert {"stale-answer", "isolated-suffix"} <= set(drawn)
    assert all(draw_options(seed, replicas=1).scenario is NO_SCENARIO for seed in range(200))
    assert all(
        draw_options(seed, replicas=3, profile="disjoint").scenario is NO_SCENARIO
        for seed in range(200)
    )


def test_a_scenario_leaves_every_other_draw_of_its_seed_as_it_was() -> None:
    for seed in range(50):
        drawn = draw_options(seed, replicas=3)
        for name in ("none", "stale-answer", "isolated-suffix"):
            chosen = draw_options(seed, replicas=3, scenario=name)
            assert attrs.evolve(chosen, scenario=drawn.scenario) == drawn


def test_stale_answer_holds_back_state_answers_after_a_backup_falls_behind() -> None:
    counts = [run(seed, "stale-answer") for seed in SEEDS]
    assert all(c["scenario.lagging_cut"] == 1 for c in counts if c["scenario.paths_clogged"])
    assert sum(c["scenario.lagging_cut"] for c in counts) >= len(SEEDS) - 2
    assert sum(c["scenario.answers_held"] > 0 for c in counts) >= 2, counts
    assert sum(c["scenario.clients_cut"] for c in counts) >= 1, counts
    assert not any(c["scenario.primary_cut"] for c in counts)


@pytest.mark.parametrize("replicas", [3, 5])
def test_isolated_suffix_clogs_then_cuts_off_the_primary(replicas: int) -> None:
    counts = [run(seed, "isolated-suffix", replicas) for seed in SEEDS]
    assert sum(c["scenario.paths_clogged"] for c in counts) >= len(SEEDS) - 2, counts
    assert sum(c["scenario.primary_cut"] > 0 for c in counts) >= len(SEEDS) - 2, counts
    if replicas == 5:  # the first new primary is cut off too, in some seeds
        assert any(c["scenario.primary_cut"] == 2 for c in counts), counts
    assert not any(c["scenario.answers_held"] for c in counts)


def test_no_scenario_injects_nothing() -> None:
    for seed in SEEDS:
        assert not any(run(seed, "none").values())


def test_a_seed_with_a_scenario_runs_the_same_twice() -> None:
    options = draw_options(2, replicas=3, ticks=TICKS, scenario="stale-answer")
    first, second = Cluster(2, options).run(), Cluster(2, options).run()
    assert first.trace_digest == second.trace_digest
    assert first.faults == second.faults


def test_scenario_plans_refuse_what_they_do_not_know() -> None:
    with pytest.raises(ValueError, match="scenario must be one of"):
        ScenarioPlan("partition-everything", 10)
    with pytest.raises(ValueError, match="start_tick"):
        ScenarioPlan("stale-answer", -1)
    assert ScenarioPlan.draw(Prng(1), 1, TICKS, name="stale-answer") is NO_SCENARIO


def test_schedules_carry_the_scenario_and_read_older_files_as_none(tmp_path: Path) -> None:
    options = draw_options(3, replicas=3, scenario="isolated-suffix")
    as_json = json.loads(json.dumps(options_to_dict(options)))  # lists where tuples were
    assert options_from_dict(as_json) == options
    path = tmp_path / "schedule.json"
    path.write_text(schedule_json(3, options), encoding="utf-8")
    assert read_schedule(path) == (3, options)
    older = dict(as_json)
    del older["scenario"]
    document = {"format": SCHEDULE_FORMAT, "version": 1, "seed": 3, "options": older}
    path.write_text(json.dumps(document), encoding="utf-8")
    assert read_schedule(path) == (3, attrs.evolve(options, scenario=NO_SCENARIO))
    document["version"] = 2
    path.write_text(json.dumps(document), encoding="utf-8")
    with pytest.raises(ScheduleError, match="missing fields"):
        read_schedule(path)
    bad = {**as_json, "scenario": {"name": "nope", "start_tick": 1}}
    with pytest.raises(ScheduleError, match="scenario must be one of"):
        options_from_dict(bad)
