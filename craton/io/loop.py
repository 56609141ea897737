"""A minimal blocking event loop for driving Craton without asyncio.

``BlockingLoop`` is the owner thread's side of the submit/complete contract when there is no
asyncio loop: I/O implementations hand completions to ``post`` from any thread, and the
thread that calls ``run_until`` (or ``run_pending``) runs them, one at a time, in the order
they were posted. CLI tools, benchmarks and tests use it to drive a machine synchronously.

Rules it keeps:
- ``post`` is thread-safe and never runs the callback itself.
- Callbacks run only on a thread inside ``run_until``/``run_pending``, never concurrently.
- ``run_until`` waits at most ``timeout_s``: the timeout is a guard against hangs, so
  running out of time raises ``LoopTimeout`` instead of returning quietly.
- An exception raised by a callback propagates out of ``run_until``/``run_pending``; the
  callbacks posted after it stay queued.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable

Callback = Callable[[], None]


class LoopTimeout(TimeoutError):
    """``run_until`` ran out of time before its predicate held."""


class BlockingLoop:
    """A thread-safe queue of callbacks, run on the thread that asks for them."""

    def __init__(self) -> None:
        self._callbacks: queue.SimpleQueue[Callback] = queue.SimpleQueue()

    def post(self, callback: Callback) -> None:
        """Queue ``callback`` to run on the loop's thread. Safe from any thread."""
        self._callbacks.put(callback)

    def run_pending(self) -> int:
        """Run the callbacks already posted (and any they post), without waiting.

        Returns how many ran."""
        ran = 0
        while True:
            try:
                callback = self._callbacks.get_nowait()
            except queue.Empty:
                return ran
            callback()
            ran += 1

    def run_until(self, predicate: Callable[[], bool], timeout_s: float) -> None:
        """Run posted callbacks until ``predicate()`` holds; raise ``LoopTimeout`` if it
        still does not after ``timeout_s`` seconds."""
        assert timeout_s > 0, "the timeout guards against hangs; it must be positive"
        deadline_s = time.monotonic() + timeout_s
        while not predicate():
            remaining_s = deadline_s - time.monotonic()
            if remaining_s <= 0:
                raise LoopTimeout(f"condition not reached within {timeout_s} s")
            try:
                callback = self._callbacks.get(timeout=remaining_s)
            except queue.Empty:
                raise LoopTimeout(f"condition not reached within {timeout_s} s") from None
            callback()
