"""The production Clock: the operating system's monotonic and wall clocks.

The core never reads a clock; the driver reads this one to turn elapsed time into ticks, and
stamps wall-clock time where an operator needs it. ``monotonic_ns`` never goes backwards;
``realtime_ns`` may jump either way (NTP, an operator), so nothing that must be ordered is
derived from it.

This is the one module outside the simulator that reads the system's clocks: the node, the
client and the platform take a ``Clock`` (``SYSTEM_CLOCK`` by default) and read time only
through it, so a test can hand them a clock of its own (``tests/test_clock_seam.py``
enforces it). The helpers below convert a clock's nanoseconds into the units callers name.
"""

from __future__ import annotations

import datetime
import time

from craton.io.interfaces import Clock

__all__ = [
    "NS_PER_MS",
    "NS_PER_S",
    "NS_PER_US",
    "SYSTEM_CLOCK",
    "Clock",
    "SystemClock",
    "iso_utc_ms",
    "monotonic_s",
    "realtime_ms",
    "realtime_s",
]

NS_PER_S = 1_000_000_000
NS_PER_MS = 1_000_000
NS_PER_US = 1_000
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


class SystemClock:
    """``Clock`` over ``time.monotonic_ns`` and ``time.time_ns``."""

    def monotonic_ns(self) -> int:
        return time.monotonic_ns()

    def realtime_ns(self) -> int:
        return time.time_ns()


SYSTEM_CLOCK: Clock = SystemClock()  # the default of every ``clock`` argument


def monotonic_s(clock: Clock) -> float:
    """``clock``'s monotonic time in seconds (for deadlines and durations)."""
    return clock.monotonic_ns() / NS_PER_S


def realtime_ms(clock: Clock) -> int:
    """``clock``'s wall-clock time in whole milliseconds since the Unix epoch."""
    return clock.realtime_ns() // NS_PER_MS


def realtime_s(clock: Clock) -> float:
    """``clock``'s wall-clock time in seconds since the Unix epoch."""
    return clock.realtime_ns() / NS_PER_S


def iso_utc_ms(realtime_ns: int) -> str:
    """``realtime_ns`` (Unix nanoseconds) as ISO 8601 in UTC with milliseconds, e.g.
    ``2024-05-01T12:00:00.123+00:00`` (cut to the millisecond, not rounded)."""
    moment = _EPOCH + datetime.timedelta(microseconds=realtime_ns // NS_PER_US)
    return moment.isoformat(timespec="milliseconds")
