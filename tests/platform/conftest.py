"""Every platform test is bounded in time: one still running after ``TEST_TIMEOUT_S``
fails (SIGALRM interrupts whatever it waits for)."""

from __future__ import annotations

import asyncio
import io
import signal
from collections.abc import Iterator
from types import FrameType

import pytest

from tests.platform.support import NatsServer

TEST_TIMEOUT_S = 60


@pytest.fixture(autouse=True)
def time_bound() -> Iterator[None]:
    def expired(signum: int, frame: FrameType | None) -> None:
        loop = asyncio._get_running_loop()
        waiting = []
        if loop is not None:  # say what every task was waiting for
            for task in asyncio.all_tasks(loop):
                stack = io.StringIO()
                task.print_stack(limit=8, file=stack)
                waiting.append(stack.getvalue())
        raise TimeoutError(f"test exceeded {TEST_TIMEOUT_S} s\n" + "\n".join(waiting))

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
