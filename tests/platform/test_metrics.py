"""platform-app's /metrics before anything happened: the series whose label values are known
in advance exist at 0, and every label value the platform's code writes out is one of them."""

from __future__ import annotations

import ast
from pathlib import Path

from craton.platform import fleet
from craton.platform.metrics import (
    AGGREGATES,
    COMMAND_OUTCOMES,
    POLL_READINESS,
    SIGNIN_METHODS,
    SIGNIN_OUTCOMES,
    PlatformMetrics,
)

PLATFORM = Path(__file__).resolve().parents[2] / "craton" / "platform"


def samples() -> dict[str, float]:
    found: dict[str, float] = {}
    for line in PlatformMetrics().render().decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            found[name] = float(value)
    return found


def test_known_series_are_at_zero_from_start_up() -> None:
    found = samples()
    expected = [
        *(
            f'platform_commands_total{{aggregate="{aggregate}",outcome="{outcome}"}}'
            for aggregate in AGGREGATES
            for outcome in COMMAND_OUTCOMES
        ),
        *(
            f'platform_signins_total{{method="{method}",outcome="{outcome}"}}'
            for method in SIGNIN_METHODS
            for outcome in SIGNIN_OUTCOMES
        ),
        *(f'platform_node_polls_total{{ready="{ready}"}}' for ready in POLL_READINESS),
    ]
    assert 'platform_signins_total{method="github",outcome="ok"}' in expected
    for series in expected:
        assert found.get(series) == 0.0, f"expected {series} at 0 from start-up"


def _literal_labels() -> tuple[set[str], set[str], set[tuple[str, str]]]:
    """(aggregates, command outcomes, sign-in (method, outcome) pairs) written out in
    craton/platform where commands are executed and counted and sign-ins counted."""
    aggregates: set[str] = set()
    outcomes: set[str] = set()
    signins: set[tuple[str, str]] = set()
    for path in sorted(PLATFORM.glob("*.py")):
        if path.name == "metrics.py":  # it creates the series from the constants
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            args = [arg.value if isinstance(arg, ast.Constant) else None for arg in node.args]
            owner = node.func.value
            metric = owner.attr if isinstance(owner, ast.Attribute) else None
            if node.func.attr == "execute" and len(args) == 5 and isinstance(args[1], str):
                aggregates.add(args[1])
            elif node.func.attr == "labels" and metric == "commands":
                assert isinstance(args[1], str), f"{path.name}: expected a literal outcome"
                outcomes.add(args[1])
            elif node.func.attr == "labels" and metric == "signins":
                assert isinstance(args[1], str), f"{path.name}: expected a literal outcome"
                methods = SIGNIN_METHODS if args[0] is None else (args[0],)
                signins.update((str(method), args[1]) for method in methods)
    return aggregates, outcomes, signins


def test_every_label_the_platform_writes_is_created_at_start_up() -> None:
    aggregates, outcomes, signins = _literal_labels()
    assert aggregates == set(AGGREGATES), f"expected aggregates {AGGREGATES}, code has {aggregates}"
    assert outcomes == set(COMMAND_OUTCOMES), f"expected {COMMAND_OUTCOMES}, code has {outcomes}"
    known = {(method, outcome) for method in SIGNIN_METHODS for outcome in SIGNIN_OUTCOMES}
    assert ("passkey", "ok") in signins and signins <= known, f"sign-in labels: {signins}"
    assert fleet.UNREACHABLE in POLL_READINESS
