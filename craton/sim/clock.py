"""Simulated clocks: the ``Clock`` interface for each node, driven by the world's tick.

A node's clock is an oscillator that runs fast or slow by a fixed ``drift_ppm`` drawn per node.
``monotonic_ns`` is an arbitrary origin plus the world ticks elapsed (``EventQueue.now``), each
worth ``tick_ns`` scaled by the drift; ``realtime_ns`` is an epoch plus the same elapsed time
plus an offset — an initial skew per node, moved by wall-clock jumps the fault plan injects.
``ticks_due`` turns the drifting clock into the node's local ``Tick`` inputs: 0, 1 or 2 per
world tick, so replica timeouts drift against each other as real ones do.

Rules it keeps:
- Every reading is a pure function of the world tick, the seed and the jumps injected so far:
  the same seed and the same calls give the same readings.
- ``monotonic_ns`` never goes backwards (asserted); only ``realtime_ns`` jumps.
- ``|drift_ppm| <= DRIFT_PPM_LIMIT``, so a node's local ticks per world tick stay in 0..2.
- The wall-clock offset never exceeds ``REALTIME_OFFSET_NS_MAX`` either way.
- A wall-clock jump is counted as a fault (``jumps_forward``, ``jumps_backward``), and a
  skewed start as ``skewed``, only once something read the wall clock after it: a fault
  that reaches no code was not injected.
- ``heal()`` stops drift and jumps from the current tick on and steps the wall clock to true
  time (``epoch_ns + now * tick_ns``); readings already taken are unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import attrs

from craton.core.prng import Prng
from craton.sim.events import EventQueue

if TYPE_CHECKING:
    from craton.io.interfaces import Clock

TICK_NS = 10_000_000  # one world tick is 10 ms of simulated time
PPM = 1_000_000  # parts per million
DRIFT_PPM_LIMIT = 100_000  # ±10%: a node's local ticks per world tick stay within 0..2
SKEW_MS_LIMIT = 3_600_000  # initial wall-clock skew of a node: at most an hour
JUMP_MS_LIMIT = 3_600_000  # one wall-clock jump: at most an hour
REALTIME_OFFSET_NS_MAX = 86_400 * 1_000_000_000  # wall clock stays within a day of true time
REALTIME_EPOCH_NS = 1_700_000_000 * 1_000_000_000  # true wall-clock time at world tick 0
MONOTONIC_ORIGIN_NS_MAX = 1 << 50  # monotonic origins are drawn in [0, this]
NS_PER_MS = 1_000_000
JUMPS_UNSEEN_MAX = 1_000_000  # jumps of a clock no one reads: bounded by a run's ticks

FAULT_NAMES = (
    "drifting",  # clocks whose drift_ppm is not zero
    "skewed",  # clocks whose wall clock started off true time
    "jumps_forward",
    "jumps_backward",
)


@attrs.frozen
class ClockFaults:
    """The clock fault plan of one run (the same plan for every node; draws differ per node)."""

    drift_ppm_max: int = 0
    skew_ms_max: int = 0
    jump: float = 0.0  # per tick and node: the wall clock jumps
    jump_ms_max: int = 60_000

    def __attrs_post_init__(self) -> None:
        if not 0 <= self.drift_ppm_max <= DRIFT_PPM_LIMIT:
            raise ValueError(f"drift_ppm_max must be in 0..{DRIFT_PPM_LIMIT}: {self!r}")
        if not 0 <= self.skew_ms_max <= SKEW_MS_LIMIT:
            raise ValueError(f"skew_ms_max must be in 0..{SKEW_MS_LIMIT}: {self!r}")
        if not 0.0 <= self.jump <= 1.0:
            raise ValueError(f"jump must be a probability: {self!r}")
        if not 1 <= self.jump_ms_max <= JUMP_MS_LIMIT:
            raise ValueError(f"jump_ms_max must be in 1..{JUMP_MS_LIMIT}: {self!r}")

    @classmethod
    def none(cls) -> ClockFaults:
        return cls()

    @classmethod
    def draw(cls, prng: Prng) -> ClockFaults:
        """A swarm of clock faults for one run, each knob on with some probability."""
        drift_ppm_max = prng.choice((200, 2_000, 20_000, DRIFT_PPM_LIMIT))
        return cls(
            drift_ppm_max=drift_ppm_max if prng.chance(0.6) else 0,
            skew_ms_max=prng.between(1, 60_000) if prng.chance(0.5) else 0,
            jump=0.002 * prng.fraction() if prng.chance(0.5) else 0.0,
            jump_ms_max=prng.between(1, 600_000),
        )


class SimClock:
    """One node's clock: the ``Clock`` interface plus the node's local tick schedule."""

    def __init__(
        self,
        prng: Prng,
        events: EventQueue,
        faults: ClockFaults | None = None,
        *,
        tick_ns: int = TICK_NS,
        epoch_ns: int = REALTIME_EPOCH_NS,
    ) -> None:
        assert tick_ns >= 1 and epoch_ns >= REALTIME_OFFSET_NS_MAX
        self._prng = prng
        self._events = events
        self.fault_plan = faults if faults is not None else ClockFaults.none()
        self.tick_ns = tick_ns
        self.epoch_ns = epoch_ns
        plan = self.fault_plan
        self.drift_ppm = prng.between(-plan.drift_ppm_max, plan.drift_ppm_max)
        self.origin_ns = prng.between(0, MONOTONIC_ORIGIN_NS_MAX)
        skew_ns = plan.skew_ms_max * NS_PER_MS
        self.offset_ns = prng.between(-skew_ns, skew_ns)  # wall clock minus true time
        self.healed_at_tick: int | None = None
        self.faults: dict[str, int] = dict.fromkeys(FAULT_NAMES, 0)
        self.faults["drifting"] = int(self.drift_ppm != 0)
        self._skew_unseen = self.offset_ns != 0  # counted as ``skewed`` once a reader sees it
        self._monotonic_last_ns = self.origin_ns
        self._unseen: list[str] = []  # jumps no reader has seen yet (counted when one does)

    # --- the Clock interface -----------------------------------------------------------------

    def monotonic_ns(self) -> int:
        value = self._monotonic_at(self._events.now)
        assert value >= self._monotonic_last_ns, "the monotonic clock went backwards"
        self._monotonic_last_ns = value
        return value

    def realtime_ns(self) -> int:
        for name in self._unseen:  # a jump is a fault once something read the clock after it
            self.faults[name] += 1
        self._unseen.clear()
        if self._skew_unseen:
            self._skew_unseen = False
            self.faults["skewed"] = 1
        elapsed_ns = self._monotonic_at(self._events.now) - self.origin_ns
        return self.epoch_ns + elapsed_ns + self.offset_ns

    # --- driven by the world -----------------------------------------------------------------

    def ticks_due(self) -> int:
        """How many local ``Tick`` inputs the node gets in the current world tick: the local
        ticks its clock completes between world tick ``now`` and ``now + 1`` (0, 1 or 2)."""
        now = self._events.now
        due = self._local_ticks_at(now + 1) - self._local_ticks_at(now)
        assert 0 <= due <= 2
        return due

    def tick(self) -> None:
        """Called once per world tick: maybe jump the wall clock, per the fault plan."""
        plan = self.fault_plan
        if self.healed_at_tick is not None or not self._prng.chance(plan.jump):
            return
        jump_ns = self._prng.between(1, plan.jump_ms_max) * NS_PER_MS
        backward = self._prng.chance(0.5)
        if abs(self.offset_ns + (-jump_ns if backward else jump_ns)) > REALTIME_OFFSET_NS_MAX:
            backward = not backward  # stay within a day of true time
        self.offset_ns += -jump_ns if backward else jump_ns
        assert abs(self.offset_ns) <= REALTIME_OFFSET_NS_MAX
        self._unseen.append("jumps_backward" if backward else "jumps_forward")
        assert len(self._unseen) <= JUMPS_UNSEEN_MAX

    def heal(self) -> None:
        """From this tick on: no drift, no jumps, and the wall clock stepped to true time."""
        now = self._events.now
        if self.healed_at_tick is None:
            self.healed_at_tick = now
        self.offset_ns = now * self.tick_ns - (self._monotonic_at(now) - self.origin_ns)

    # --- helpers -----------------------------------------------------------------------------

    def _monotonic_at(self, tick: int) -> int:
        assert tick >= 0
        healed = self.healed_at_tick
        if healed is None or tick <= healed:
            return self.origin_ns + tick * self.tick_ns * (PPM + self.drift_ppm) // PPM
        return self._monotonic_at(healed) + (tick - healed) * self.tick_ns

    def _local_ticks_at(self, tick: int) -> int:
        return (self._monotonic_at(tick) - self.origin_ns) // self.tick_ns


class SimClocks:
    """The clocks of every node of a world, each from its own PRNG stream."""

    def __init__(
        self,
        prng: Prng,
        events: EventQueue,
        faults: ClockFaults | None,
        node_ids: Sequence[int],
        *,
        tick_ns: int = TICK_NS,
        epoch_ns: int = REALTIME_EPOCH_NS,
    ) -> None:
        assert len(set(node_ids)) == len(node_ids), "node ids must be unique"
        self._clocks = {
            node: SimClock(
                prng.split(f"clock-{node}"), events, faults, tick_ns=tick_ns, epoch_ns=epoch_ns
            )
            for node in node_ids
        }

    def clock(self, node: int) -> SimClock:
        return self._clocks[node]

    def ticks_due(self, node: int) -> int:
        """Local ``Tick`` inputs ``node`` gets in the current world tick (0, 1 or 2)."""
        return self._clocks[node].ticks_due()

    def tick(self) -> None:
        """Called once per world tick: every clock may jump, in node order."""
        for clock in self._clocks.values():
            clock.tick()

    def heal(self) -> None:
        for clock in self._clocks.values():
            clock.heal()

    @property
    def faults(self) -> dict[str, int]:
        """Fault counts summed over every node."""
        total = dict.fromkeys(FAULT_NAMES, 0)
        for clock in self._clocks.values():
            for name, count in clock.faults.items():
                total[name] += count
        return total


if TYPE_CHECKING:

    def _conforms(clock: SimClock) -> Clock:
        return clock
