"""Every platform test is bounded in time: one still running after ``TEST_TIMEOUT_S``
fails (SIGALRM interrupts whatever it waits for)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from types import FrameType

import pytest

from tests.platform.support import NatsServer

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


@pytest.fixture
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path_factory.mktemp("nats") / "store").start()
    try:
        yield server
    finally:
        server.stop()
