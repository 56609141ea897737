"""Shrinking a failing seed: the same seed under smaller swarm options that still fails.

A run is a function of its seed and its ``SwarmOptions``. ``shrink`` starts from the options
a seed drew and tries smaller variants one at a time — a shorter fault phase (halving, then
smaller steps), fewer clients, fewer requests per client, each fault knob switched off, and
last the cluster's shape: two replicas fewer, no faulty disks, the shrunk replica profile —
and keeps a variant only when ``Cluster(seed, variant).run()`` still fails *the same way*:
the same result and the same ``Failure.kind`` (for a correctness failure, the kind of its
first violation; for a crash, the exception and where it was raised). It passes over those
dimensions again while a pass still reduced something, within ``runs_max`` runs.

Rules it keeps:
- Deterministic: the same seed, options and code give the same candidates in the same
  order, hence the same reduced schedule.
- The machine and the liveness budget stay as drawn; the replica count stays odd, and the
  atlas keeps only faulty replicas the smaller cluster has, at most ``(R - 1) // 2`` of
  them in the atlas profile (every replica in the disjoint one, none for one replica).

A *schedule* is a seed with its full options, written as JSON (``schedule_json``, read back
by ``read_schedule``); ``craton sim replay --schedule FILE`` runs it exactly, so the same
file always gives the same run and the same trace digest.
"""

from __future__ import annotations

import json
import re
import traceback
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs

from craton.core.gateway import Gateway
from craton.core.vsr.profile import PROFILE_NAMES, SIMULATION
from craton.core.vsr.replica import Replica
from craton.sim.clock import ClockFaults
from craton.sim.cluster import (
    DISK_PROFILES,
    MACHINES,
    Cluster,
    FaultAtlas,
    ProcessFaults,
    RunResult,
    SwarmOptions,
)
from craton.sim.disk import DiskFaults
from craton.sim.network import NetworkFaults
from craton.sim.scenarios import NO_SCENARIO, ScenarioPlan

RUNS_MAX_DEFAULT = 60  # runs of the cluster one shrink may spend, the first one included
FAULT_TICKS_STEP_MIN = 25  # finer steps of the fault phase than this are not tried
SCHEDULE_FORMAT = "craton-sim-schedule"
SCHEDULE_VERSION = 2  # 1: written before scenarios; read as "no scenario"
REPLICA_COUNT_MAX = 7  # as ``craton sim run --replicas`` allows

# Every fault knob a shrink may switch off: (group, field). Off is zero.
KNOBS: tuple[tuple[str, str], ...] = (
    ("network", "loss"),
    ("network", "duplication"),
    ("network", "reorder"),
    ("network", "partition"),
    ("network", "asymmetric_partition"),
    ("network", "clog"),
    ("network", "replay"),
    ("network", "latency_jitter_ticks"),
    ("disk", "read_error"),
    ("disk", "read_corruption"),
    ("disk", "write_error"),
    ("disk", "torn_write"),
    ("disk", "misdirected_write"),
    ("disk", "corruption_at_rest"),
    ("disk", "crash_lose_unsynced"),
    ("disk", "crash_tear_unsynced"),
    ("clocks", "drift_ppm_max"),
    ("clocks", "skew_ms_max"),
    ("clocks", "jump"),
    ("processes", "crash"),
    ("processes", "pause"),
    ("processes", "crash_at_sync"),
    ("processes", "crash_after_commit"),
    ("atlas", "wipe"),
    ("atlas", "rot"),
)
# The option groups that are attrs classes of their own, as the JSON nests them.
GROUPS: dict[str, type[Any]] = {
    "network": NetworkFaults,
    "disk": DiskFaults,
    "clocks": ClockFaults,
    "processes": ProcessFaults,
    "atlas": FaultAtlas,
    "scenario": ScenarioPlan,
}


class ScheduleError(ValueError):
    """A schedule file that is not one: unreadable, not JSON, or options that do not fit."""


@attrs.frozen
class Failure:
    """How a run ended: its ``result`` and, for a failure, its ``kind`` ("" for a pass or a
    liveness failure). ``run`` is None when the run crashed."""

    result: str
    kind: str
    run: RunResult | None

    @property
    def faults_injected(self) -> int | None:
        return None if self.run is None else sum(self.run.faults.values())

    def same_as(self, other: Failure) -> bool:
        return (self.result, self.kind) == (other.result, other.kind)

    def describe(self) -> str:
        return self.result if not self.kind else f"{self.result} ({self.kind})"


@attrs.frozen
class Shrunk:
    seed: int
    original: SwarmOptions
    reduced: SwarmOptions
    original_failure: Failure
    reduced_failure: Failure
    runs: int


def violation_kind(violation: str) -> str:
    """The kind of a checker's violation: its words before the first ':' with numbers
    replaced by N; for a line about one replica or op ("replica 2: ..."), also the words
    after it up to the first number, which name the check."""
    head, _, rest = violation.partition(":")
    kind = re.sub(r"\d+", "N", head.strip())
    if kind in ("replica N", "op N"):
        kind += ": " + re.split(r"\d", rest, maxsplit=1)[0].strip()
    return kind


def run_once(
    seed: int,
    options: SwarmOptions,
    *,
    replica_factory: Callable[..., Replica] = Replica,
    gateway_factory: Callable[..., Gateway] = Gateway,
) -> Failure:
    """Run the cluster once and say how it ended."""
    try:
        run = Cluster(
            seed, options, replica_factory=replica_factory, gateway_factory=gateway_factory
        ).run()
    except Exception as error:  # a crash is a failure like any other: keep its place
        frames = traceback.extract_tb(error.__traceback__)
        where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"
        return Failure("crash", f"{type(error).__name__} at {where}", None)
    kind = violation_kind(run.violations[0]) if run.violations else ""
    return Failure(run.result, kind, run)


def shrink(
    seed: int,
    options: SwarmOptions,
    *,
    runs_max: int = RUNS_MAX_DEFAULT,
    replica_factory: Callable[..., Replica] = Replica,
    gateway_factory: Callable[..., Gateway] = Gateway,
    progress: Callable[[str], None] | None = None,
) -> Shrunk:
    """Reduce ``options`` while seed ``seed`` still fails the same way (see the module's
    docstring). A seed that passes comes back as it was, after one run."""
    assert runs_max >= 1, "a shrink needs at least the run that shows the failure"
    say = progress if progress is not None else (lambda line: None)

    def attempt(candidate: SwarmOptions) -> Failure:
        return run_once(
            seed, candidate, replica_factory=replica_factory, gateway_factory=gateway_factory
        )

    original = attempt(options)
    say(f"[1/{runs_max}] seed {seed} as given: {original.describe()}")
    if original.result == "pass":
        return Shrunk(seed, options, options, original, original, 1)
    state = _Search(options, original)
    tried: dict[SwarmOptions, Failure] = {options: original}  # a run is a function of these
    reduced_in_pass = True
    while reduced_in_pass and len(tried) < runs_max:
        reduced_in_pass = False
        for what, candidate in state.candidates():
            if len(tried) >= runs_max:
                break
            if candidate in tried:  # the same options again: the same run, not run twice
                continue
            outcome = tried[candidate] = attempt(candidate)
            kept = outcome.same_as(original)
            verdict = "fails the same way, kept" if kept else f"{outcome.describe()}, dropped"
            say(f"[{len(tried)}/{runs_max}] {what}: {verdict}")
            if kept:
                state.current, state.failure, reduced_in_pass = candidate, outcome, True
    return Shrunk(seed, options, state.current, original, state.failure, len(tried))


@attrs.define
class _Search:
    """The smallest failing options found so far, and the smaller variants to try next."""

    current: SwarmOptions
    failure: Failure

    def candidates(self) -> Iterator[tuple[str, SwarmOptions]]:
        """Smaller variants of ``current``, each made from ``current`` as it stands when it
        is asked for (after the variants kept so far)."""
        for name, floor, step_min in (
            ("fault_ticks", 1, FAULT_TICKS_STEP_MIN),
            ("client_count", 1, 1),
            ("requests_per_client", 1, 1),
        ):
            yield from self._smaller_number(name, floor, step_min)
        for group, field in knobs():
            faults = getattr(self.current, group)
            if getattr(faults, field):
                off = attrs.evolve(faults, **{field: 0 * getattr(faults, field)})
                yield f"{group}.{field} off", attrs.evolve(self.current, **{group: off})
        if self.current.scenario.name != "none":
            off = attrs.evolve(self.current, scenario=NO_SCENARIO)
            yield f"scenario {self.current.scenario.name} off", off
        yield from self._smaller_shape()

    def _smaller_shape(self) -> Iterator[tuple[str, SwarmOptions]]:
        """Two replicas fewer, no faulty disks, the shrunk replica profile: tried last, as a
        different cluster explores a different schedule."""
        count = self.current.replica_count
        if count >= 3:
            atlas = _atlas_for(self.current.atlas, count - 2)
            smaller = attrs.evolve(self.current, replica_count=count - 2, atlas=atlas)
            yield f"replica_count {count} -> {count - 2}", smaller
        atlas = self.current.atlas
        if atlas.profile == "atlas" and atlas.faulty:
            healthy = attrs.evolve(atlas, faulty=(), wipe=0.0)
            yield "atlas.faulty none", attrs.evolve(self.current, atlas=healthy)
        if self.current.sizes != SIMULATION.name:
            shrunk = attrs.evolve(self.current, sizes=SIMULATION.name)
            yield f"sizes {self.current.sizes} -> {SIMULATION.name}", shrunk

    def _smaller_number(
        self, name: str, floor: int, step_min: int
    ) -> Iterator[tuple[str, SwarmOptions]]:
        """Halve the distance to ``floor`` while the failure holds; once it does not, try
        smaller steps (a quarter, an eighth, ...) down to ``step_min``, halving again after
        each step kept."""
        value: int = getattr(self.current, name)
        step = (value - floor + 1) // 2
        while step >= max(1, step_min):
            changes: dict[str, Any] = {name: value - step}
            smaller = attrs.evolve(self.current, **changes)
            yield f"{name} {value} -> {value - step}", smaller
            if getattr(self.current, name) == value:  # not kept: a smaller step
                step //= 2
            else:
                value = getattr(self.current, name)
                step = (value - floor + 1) // 2


def _atlas_for(atlas: FaultAtlas, replica_count: int) -> FaultAtlas:
    """``atlas`` for a cluster of ``replica_count``: only faulty replicas it has, and as
    many as ``FaultAtlas.draw`` would allow."""
    if replica_count == 1:
        return FaultAtlas(atlas.profile, (), 0.0, 0.0)  # one copy: nothing may be destroyed
    if atlas.profile == "disjoint":
        return attrs.evolve(atlas, faulty=tuple(range(replica_count)))
    kept = tuple(index for index in atlas.faulty if index < replica_count)
    return attrs.evolve(atlas, faulty=kept[: (replica_count - 1) // 2])


def knobs() -> list[tuple[str, str]]:
    """The ``KNOBS`` the options' classes have (a knob that is not there is never on)."""
    return [(group, field) for group, field in KNOBS if field in attrs.fields_dict(GROUPS[group])]


def knobs_on(options: SwarmOptions) -> int:
    return sum(1 for group, field in knobs() if getattr(getattr(options, group), field))


def sizes(options: SwarmOptions, failure: Failure) -> dict[str, int | None]:
    """What a schedule's size is measured in."""
    return {
        "replicas": options.replica_count,
        "fault_ticks": options.fault_ticks,
        "clients": options.client_count,
        "requests_per_client": options.requests_per_client,
        "fault_knobs_on": knobs_on(options),
        "faults_injected": failure.faults_injected,
    }


# --- schedules ---------------------------------------------------------------------------------


def options_to_dict(options: SwarmOptions) -> dict[str, Any]:
    """Every field of ``options``, nested as the attrs classes nest (tuples as lists)."""
    return attrs.asdict(options)


def options_from_dict(data: Mapping[str, Any]) -> SwarmOptions:
    """The ``SwarmOptions`` that ``options_to_dict`` wrote: ``from_dict(to_dict(o)) == o``.
    Raises ``ScheduleError`` for a missing or unknown field or a value of the wrong type."""
    fields = _build_fields(SwarmOptions, data, "options")
    options = SwarmOptions(**fields)
    if not 1 <= options.replica_count <= REPLICA_COUNT_MAX:
        raise ScheduleError(f"options.replica_count must be in 1..{REPLICA_COUNT_MAX}")
    for name in ("client_count", "requests_per_client", "fault_ticks", "liveness_ticks"):
        if getattr(options, name) < 1:
            raise ScheduleError(f"options.{name} must be at least 1")
    if options.machine not in MACHINES:
        raise ScheduleError(f"options.machine {options.machine!r} is not one of {sorted(MACHINES)}")
    if options.sizes not in PROFILE_NAMES:
        raise ScheduleError(f"options.sizes {options.sizes!r} is not one of {PROFILE_NAMES}")
    atlas = options.atlas
    if atlas.profile not in DISK_PROFILES:
        raise ScheduleError(f"options.atlas.profile {atlas.profile!r} is not in {DISK_PROFILES}")
    if any(not 0 <= index < options.replica_count for index in atlas.faulty):
        raise ScheduleError("options.atlas.faulty names a replica the cluster does not have")
    return options


def _build_fields(cls: type[Any], data: Mapping[str, Any], where: str) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise ScheduleError(f"{where} must be an object")
    names = [field.name for field in attrs.fields(cls)]
    missing = [name for name in names if name not in data]
    unknown = sorted(key for key in data if key not in names)
    if missing or unknown:
        raise ScheduleError(f"{where}: missing fields {missing}, unknown fields {unknown}")
    built: dict[str, Any] = {}
    for field in attrs.fields(cls):
        value, place = data[field.name], f"{where}.{field.name}"
        if field.name in GROUPS and cls is SwarmOptions:
            group = GROUPS[field.name]
            try:
                built[field.name] = group(**_build_fields(group, value, place))
            except ValueError as error:  # the group's own checks (e.g. a probability above 1)
                raise ScheduleError(f"{place}: {error}") from error
        else:
            built[field.name] = _checked(value, str(field.type), place)
    return built


def _checked(value: Any, declared: str, where: str) -> Any:
    """``value`` as the field declared as ``declared`` takes it (a JSON list is a tuple)."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if declared == "int" and number and value == int(value):
        return int(value)
    if declared == "float" and number:
        return float(value)
    if declared == "str" and isinstance(value, str):
        return value
    integers = isinstance(value, list) and all(
        isinstance(item, int) and not isinstance(item, bool) for item in value
    )
    if declared == "tuple[int, ...]" and integers:
        return tuple(value)
    raise ScheduleError(f"{where} must be of type {declared}, got {value!r}")


def schedule_json(seed: int, options: SwarmOptions, **notes: Any) -> str:
    """A schedule file's text: the seed, every option, and ``notes`` for the reader (what the
    run is expected to do, what it was shrunk from); only the seed and options are read."""
    assert seed >= 0
    document = {
        "format": SCHEDULE_FORMAT,
        "version": SCHEDULE_VERSION,
        "seed": seed,
        "options": options_to_dict(options),
        **notes,
    }
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def read_schedule(path: Path) -> tuple[int, SwarmOptions]:
    """The seed and options of the schedule file at ``path``; ``ScheduleError`` otherwise."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ScheduleError(f"cannot read: {error.strerror or error}") from error
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ScheduleError(f"not JSON: {error}") from error
    if not isinstance(document, dict) or document.get("format") != SCHEDULE_FORMAT:
        raise ScheduleError(f"not a schedule (its format is not {SCHEDULE_FORMAT!r})")
    version = document.get("version")
    if version not in (1, SCHEDULE_VERSION):
        raise ScheduleError(f"schedule version {version!r} is not supported")
    seed = document.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ScheduleError("seed must be a non-negative integer")
    options = document.get("options", {})
    if version == 1 and isinstance(options, dict) and "scenario" not in options:
        options = {**options, "scenario": attrs.asdict(NO_SCENARIO)}
    return seed, options_from_dict(options)


def comparison(shrunk: Shrunk) -> list[str]:
    """The original and the reduced schedule's sizes side by side, as lines to print."""
    before = sizes(shrunk.original, shrunk.original_failure)
    after = sizes(shrunk.reduced, shrunk.reduced_failure)
    lines = [
        f"seed {shrunk.seed} fails: {shrunk.original_failure.describe()}",
        f"{'':22}{'original':>10}{'reduced':>10}",
    ]
    for name in before:
        shown = ["?" if value is None else str(value) for value in (before[name], after[name])]
        lines.append(f"{name.replace('_', ' '):22}{shown[0]:>10}{shown[1]:>10}")
    lines.append(f"runs: {shrunk.runs}")
    return lines
