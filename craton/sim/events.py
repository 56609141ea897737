"""The simulator's clock and event queue: callbacks ordered by (tick, sequence).

Ties at the same tick run in the order they were scheduled, so a run is a pure function of
what was scheduled — no wall clock, no hash order. Cancellation is by generation: whoever
schedules can drop every callback of an older generation (e.g. a crashed process's I/O).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

EVENTS_PENDING_MAX = 1_000_000


class EventQueue:
    def __init__(self) -> None:
        self.now = 0  # the current tick
        self._sequence = 0
        self._heap: list[tuple[int, int, Callable[[], None]]] = []

    def __len__(self) -> int:
        return len(self._heap)

    def schedule(self, delay_ticks: int, callback: Callable[[], None]) -> None:
        """Run ``callback`` ``delay_ticks`` from now (0 = later in this tick)."""
        assert delay_ticks >= 0
        assert len(self._heap) < EVENTS_PENDING_MAX, "event queue overflow"
        self._sequence += 1
        heapq.heappush(self._heap, (self.now + delay_ticks, self._sequence, callback))

    def run_next(self) -> bool:
        """Run the earliest callback, advancing ``now``; False when nothing is queued."""
        if not self._heap:
            return False
        tick, _, callback = heapq.heappop(self._heap)
        assert tick >= self.now
        self.now = tick
        callback()
        return True

    def run_until_idle(self, events_max: int = 10_000_000) -> int:
        """Run callbacks until none is queued; returns how many ran."""
        ran = 0
        while ran < events_max and self.run_next():
            ran += 1
        assert not self._heap or ran == events_max
        return ran

    def run_until(self, done: Callable[[], bool], events_max: int = 10_000_000) -> bool:
        """Run callbacks until ``done()`` holds (True) or the queue is empty (False)."""
        for _ in range(events_max):
            if done():
                return True
            if not self.run_next():
                return done()
        return done()
