"""One replica profile: a production node and the simulator build replicas from the same
declared profiles (``craton.core.vsr.profile``).

- the node builds its configuration from ``PRODUCTION`` and from nowhere else;
- the simulation profile differs from production in sizes and timeouts only: every feature
  (checkpoint states included) is on in both;
- a share of drawn seeds run the production profile exactly, without reshuffling any other
  draw of the seed; ``--sizes`` forces either profile, and the JSON line and the replay
  command carry it;
- a production-sized seed's replicas hold exactly the configuration a node builds.
"""

from __future__ import annotations

import ast
import io
import json
from pathlib import Path

import attrs
import pytest

from craton import cli
from craton.core.vsr.profile import PRODUCTION, PROFILES, SIMULATION
from craton.sim.cluster import PRODUCTION_SIZES_SHARE, Cluster, draw_options
from craton.sim.runner import replay_command, run_seeds

NODE = Path(__file__).parents[2] / "craton" / "net" / "node.py"
SEEDS = range(200)
SHORT_TICKS = 300


def test_the_node_builds_its_replica_from_the_production_profile_only() -> None:
    tree = ast.parse(NODE.read_text(encoding="utf-8"))
    calls = [
        node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
    ]
    assert "ReplicaConfig" not in calls, "the node must not build a ReplicaConfig of its own"
    assert "PRODUCTION.config" in calls, "expected the node to build PRODUCTION.config(...)"


def test_the_simulation_profile_shrinks_sizes_and_switches_no_feature() -> None:
    differing = {
        field.name
        for field in attrs.fields(type(PRODUCTION))
        if getattr(PRODUCTION, field.name) != getattr(SIMULATION, field.name)
    }
    assert differing <= {
        "name",
        "pipeline_max",
        "heartbeat_ticks",
        "view_change_timeout_ticks",
        "view_change_jitter_ticks",
        "client_table_max",
        "checkpoint_interval_ops",
        "segment_size_max",
        "state_part_bytes",
    }, differing
    assert PRODUCTION.checkpoint_states and SIMULATION.checkpoint_states
    for name in ("pipeline_max", "client_table_max", "checkpoint_interval_ops", "state_part_bytes"):
        assert getattr(SIMULATION, name) <= getattr(PRODUCTION, name), name
    assert set(PROFILES) == {"shrunk", "production"}


def test_a_share_of_drawn_seeds_runs_production_sizes_and_nothing_else_changes() -> None:
    drawn = [draw_options(seed, replicas=3) for seed in SEEDS]
    production = [
        seed for seed, options in zip(SEEDS, drawn, strict=True) if options.sizes != "shrunk"
    ]
    share = len(production) / len(SEEDS)
    assert PRODUCTION_SIZES_SHARE / 2 <= share <= PRODUCTION_SIZES_SHARE * 2, production
    for seed, options in zip(SEEDS, drawn, strict=True):
        for sizes in ("shrunk", "production"):
            forced = draw_options(seed, replicas=3, sizes=sizes)
            assert forced == attrs.evolve(options, sizes=sizes), (seed, sizes)


def test_a_production_sized_seed_runs_the_configuration_a_node_builds() -> None:
    options = draw_options(3, replicas=3, ticks=SHORT_TICKS, sizes="production")
    cluster = Cluster(3, options)
    for index, node in enumerate(cluster.nodes):
        config = node.replica.config
        expected = PRODUCTION.config(
            replica_id=index,
            replica_count=3,
            seal_seed=config.seal_seed,
            joined=config.joined,
            peer_public_keys=config.peer_public_keys,
        )
        assert config == expected, (config, expected)
    result = cluster.run()
    assert result.result == "pass", result.violations


def test_sizes_reach_the_json_line_and_the_replay_command(
    capsys: pytest.CaptureFixture[str],
) -> None:
    out, progress = io.StringIO(), io.StringIO()
    code = run_seeds(
        range(5, 6),
        replicas=3,
        ticks=SHORT_TICKS,
        trace_file=None,
        out=out,
        progress=progress,
        sizes="production",
    )
    assert code == 0, progress.getvalue()
    summary = json.loads(out.getvalue())
    assert summary["sizes"] == "production", summary
    command = replay_command(5, 3, SHORT_TICKS, sizes="production")
    assert command.endswith("--sizes production"), command
    assert cli.main(command.split()[1:]) == 0
    replayed = json.loads(capsys.readouterr().out)
    assert (replayed["sizes"], replayed["trace_digest"]) == ("production", summary["trace_digest"])
