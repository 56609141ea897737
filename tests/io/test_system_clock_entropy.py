"""SystemClock and OsEntropy: the production Clock and Entropy."""

from __future__ import annotations

import time

import pytest

from craton.io.clock import SystemClock
from craton.io.entropy import RANDOM_BYTES_MAX, OsEntropy


def test_monotonic_clock_never_goes_backwards() -> None:
    clock = SystemClock()
    readings = [clock.monotonic_ns() for _ in range(1000)]
    assert readings == sorted(readings), "monotonic_ns went backwards"


def test_realtime_clock_reads_the_wall_clock_in_nanoseconds() -> None:
    before_ns = time.time_ns()
    reading_ns = SystemClock().realtime_ns()
    after_ns = time.time_ns()
    assert before_ns <= reading_ns <= after_ns


def test_entropy_returns_the_requested_number_of_fresh_bytes() -> None:
    entropy = OsEntropy()
    assert entropy.random_bytes(0) == b""
    first, second = entropy.random_bytes(32), entropy.random_bytes(32)
    assert len(first) == len(second) == 32
    assert first != second, "two 256-bit draws collided"


@pytest.mark.parametrize("count", [-1, RANDOM_BYTES_MAX + 1])
def test_entropy_refuses_counts_out_of_range(count: int) -> None:
    with pytest.raises(ValueError):
        OsEntropy().random_bytes(count)
