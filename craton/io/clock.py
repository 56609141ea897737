"""The production Clock: the operating system's monotonic and wall clocks.

The core never reads a clock; the driver reads this one to turn elapsed time into ticks, and
stamps wall-clock time where an operator needs it. ``monotonic_ns`` never goes backwards;
``realtime_ns`` may jump either way (NTP, an operator), so nothing that must be ordered is
derived from it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from craton.io.interfaces import Clock


class SystemClock:
    """``Clock`` over ``time.monotonic_ns`` and ``time.time_ns``."""

    def monotonic_ns(self) -> int:
        return time.monotonic_ns()

    def realtime_ns(self) -> int:
        return time.time_ns()


if TYPE_CHECKING:

    def _conforms(clock: SystemClock) -> Clock:
        return clock
