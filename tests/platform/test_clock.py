"""The platform reads time only from the ``Clock`` it is given: session expiry, the sign-in
rate limit and the timestamps it records follow a clock the test sets by hand.

The clock's wall-clock time starts in 2001, so a session it dates would have run out long
ago by the machine's clock: one that is still served proves the injected clock was read.
"""

from __future__ import annotations

import nats

from craton.platform.http import RATE_WINDOW_S, RateLimiter
from craton.platform.service import now_iso
from craton.platform.sessions import Sessions
from tests.clock_support import FakeClock
from tests.platform.support import NatsServer, run

WALL_START_S = 1_000_000_000.0  # 2001-09-09T01:46:40Z
TTL_S = 3600


def test_a_session_expires_when_the_injected_wall_clock_passes_its_expiry(
    nats_server: NatsServer,
) -> None:
    async def scenario() -> None:
        nc = await nats.connect(nats_server.url)
        try:
            clock = FakeClock(WALL_START_S)
            sessions = Sessions(nc.jetstream(), TTL_S, clock)
            await sessions.open()
            token, session = await sessions.create("user-1")
            assert session.expires_at == WALL_START_S + TTL_S, "expiry = the clock's now + TTL"
            assert await sessions.get(token) == session, "fresh by the injected clock"

            clock.set_wall_s(WALL_START_S + TTL_S - 1)
            assert await sessions.get(token) == session, "a second before its expiry: served"

            clock.set_wall_s(WALL_START_S + TTL_S)  # a forward jump to its expiry
            assert await sessions.get(token) is None, "expected expired at expires_at"

            other, _ = await sessions.create("user-2")  # created at the new time
            clock.advance(TTL_S - 1)
            assert await sessions.get(other) is not None
            clock.advance(1)
            assert await sessions.get(other) is None, "expected expired a TTL after creation"
        finally:
            await nc.close()

    run(scenario())


def test_the_sign_in_rate_limit_slides_on_the_injected_monotonic_clock() -> None:
    clock = FakeClock(WALL_START_S)
    limiter = RateLimiter(2, clock)
    assert [limiter.allow("10.0.0.1") for _ in range(3)] == [True, True, False]
    assert limiter.allow("10.0.0.2"), "each address has its own window"
    clock.advance(RATE_WINDOW_S)
    assert not limiter.allow("10.0.0.1"), "the window is still full at exactly a minute"
    clock.advance(0.001)
    assert limiter.allow("10.0.0.1"), "past the window the attempts are forgotten"


def test_recorded_timestamps_are_the_injected_wall_clock() -> None:
    clock = FakeClock(WALL_START_S + 0.123456)
    assert now_iso(clock) == "2001-09-09T01:46:40.123+00:00"
