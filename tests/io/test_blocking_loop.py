"""BlockingLoop: callbacks posted from any thread run in order on the thread that asks."""

from __future__ import annotations

import functools
import threading

import pytest

from craton.io.loop import BlockingLoop, LoopTimeout

HANG_GUARD_S = 10.0


def test_callbacks_run_in_post_order_on_the_running_thread() -> None:
    loop = BlockingLoop()
    ran: list[tuple[int, int]] = []

    def record(index: int) -> None:
        ran.append((index, threading.get_ident()))

    for index in range(5):
        loop.post(functools.partial(record, index))
    assert ran == [], "post must not run the callback"
    loop.run_until(lambda: len(ran) == 5, HANG_GUARD_S)
    assert ran == [(index, threading.get_ident()) for index in range(5)]


def test_run_until_wakes_for_callbacks_posted_by_other_threads() -> None:
    loop = BlockingLoop()
    ran: list[int] = []
    go = threading.Event()

    def poster() -> None:
        go.wait(HANG_GUARD_S)
        for index in range(100):
            loop.post(functools.partial(ran.append, index))

    thread = threading.Thread(target=poster)
    thread.start()
    go.set()
    loop.run_until(lambda: len(ran) == 100, HANG_GUARD_S)
    thread.join()
    assert ran == list(range(100)), "one poster's callbacks keep their order"


def test_run_until_returns_at_once_when_the_predicate_already_holds() -> None:
    loop = BlockingLoop()
    ran: list[int] = []
    loop.post(lambda: ran.append(1))
    loop.run_until(lambda: True, HANG_GUARD_S)
    assert ran == [], "nothing runs once the predicate holds"


def test_run_until_raises_when_the_predicate_never_holds() -> None:
    loop = BlockingLoop()
    with pytest.raises(LoopTimeout):
        loop.run_until(lambda: False, 0.05)


def test_run_pending_runs_what_callbacks_post_and_counts() -> None:
    loop = BlockingLoop()
    ran: list[str] = []

    def first() -> None:
        ran.append("first")
        loop.post(lambda: ran.append("posted by first"))

    loop.post(first)
    assert loop.run_pending() == 2
    assert ran == ["first", "posted by first"]
    assert loop.run_pending() == 0


def test_an_exception_in_a_callback_propagates_and_keeps_the_rest_queued() -> None:
    loop = BlockingLoop()
    ran: list[int] = []

    def broken() -> None:
        raise ValueError("callback failed")

    loop.post(broken)
    loop.post(lambda: ran.append(2))
    with pytest.raises(ValueError, match="callback failed"):
        loop.run_pending()
    assert ran == []
    assert loop.run_pending() == 1 and ran == [2]
