"""Every test in tests/net is bounded in time: a test still running after
``TEST_TIMEOUT_S`` fails (SIGALRM interrupts whatever it waits for)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from types import FrameType

import pytest

TEST_TIMEOUT_S = 60


@pytest.fixture(autouse=True)
def time_bound() -> Iterator[None]:
    def expired(signum: int, frame: FrameType | None) -> None:
        raise TimeoutError(f"test exceeded {TEST_TIMEOUT_S} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(TEST_TIMEOUT_S)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
