"""A ``Clock`` a test sets by hand: its monotonic and wall-clock readings move only when
told, the wall clock in either direction (as NTP or an operator may move a real one)."""

from __future__ import annotations

from craton.io.clock import NS_PER_S

MONOTONIC_START_NS = 5_000 * NS_PER_S  # an arbitrary origin, as a real monotonic clock has


class FakeClock:
    """``Clock`` whose readings are set by the test: ``advance`` moves both readings
    forward; ``set_wall_s`` moves only the wall clock, forward or back."""

    def __init__(self, wall_s: float) -> None:
        self._monotonic_ns = MONOTONIC_START_NS
        self._realtime_ns = round(wall_s * NS_PER_S)

    def monotonic_ns(self) -> int:
        return self._monotonic_ns

    def realtime_ns(self) -> int:
        return self._realtime_ns

    def advance(self, seconds: float) -> None:
        assert seconds >= 0, "a monotonic clock never goes backwards"
        step_ns = round(seconds * NS_PER_S)
        self._monotonic_ns += step_ns
        self._realtime_ns += step_ns

    def set_wall_s(self, wall_s: float) -> None:
        self._realtime_ns = round(wall_s * NS_PER_S)
