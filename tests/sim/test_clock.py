"""Simulated clocks: monotonic, drifting within bounds, jumping only when asked, seeded."""

from __future__ import annotations

from itertools import pairwise

import pytest

from craton.core.auth import JWT_LEEWAY_S, JwtPolicy, Principal, Refusal, authenticate_jwt
from craton.core.connection import (
    Conditions,
    ConnectionProtocol,
    RefuseCredential,
    StartHandshake,
)
from craton.core.prng import Prng
from craton.core.wire import PROTOCOL_VERSION, Handshake, Sync, encode
from craton.sim.clock import (
    DRIFT_PPM_LIMIT,
    FAULT_NAMES,
    NS_PER_MS,
    PPM,
    REALTIME_EPOCH_NS,
    REALTIME_OFFSET_NS_MAX,
    TICK_NS,
    ClockFaults,
    SimClock,
    SimClocks,
)
from craton.sim.events import EventQueue

NS_PER_S = 1_000_000_000

NODES = (0, 1, 2, 1000)


def step(events: EventQueue) -> None:
    """Advance the world by one tick."""
    events.schedule(1, lambda: None)
    events.run_next()


def run(
    seed: int, faults: ClockFaults, ticks: int
) -> tuple[SimClocks, EventQueue, list[tuple[int, int, int]]]:
    """Tick every clock ``ticks`` times, reading all of them each tick."""
    events = EventQueue()
    clocks = SimClocks(Prng(seed, "clocks"), events, faults, NODES)
    readings: list[tuple[int, int, int]] = []
    for _ in range(ticks):
        clocks.tick()
        for node in NODES:
            clock = clocks.clock(node)
            readings.append((clock.monotonic_ns(), clock.realtime_ns(), clocks.ticks_due(node)))
        step(events)
    return clocks, events, readings


def test_without_faults_clocks_tick_at_the_nominal_rate_and_tell_true_time() -> None:
    events = EventQueue()
    clock = SimClock(Prng(1), events, ClockFaults.none())
    origin = clock.monotonic_ns()
    assert clock.realtime_ns() == REALTIME_EPOCH_NS
    for tick in range(1, 200):
        assert clock.ticks_due() == 1
        step(events)
        assert clock.monotonic_ns() == origin + tick * TICK_NS
        assert clock.realtime_ns() == REALTIME_EPOCH_NS + tick * TICK_NS
    assert all(count == 0 for count in clock.faults.values()), clock.faults


def test_monotonic_never_goes_backwards_even_when_the_wall_clock_jumps() -> None:
    faults = ClockFaults(drift_ppm_max=DRIFT_PPM_LIMIT, jump=0.2, jump_ms_max=100_000)
    clocks, _, readings = run(3, faults, 500)
    for index, node in enumerate(NODES):
        mine = readings[index :: len(NODES)]
        monotonic = [reading[0] for reading in mine]
        assert all(b > a for a, b in pairwise(monotonic))
        realtime = [reading[1] for reading in mine]
        backwards = sum(b < a for a, b in pairwise(realtime))
        assert backwards > 0, f"node {node}: the wall clock never jumped back"
    totals = clocks.faults
    assert totals["jumps_forward"] > 0 and totals["jumps_backward"] > 0, totals


@pytest.mark.parametrize("drift_ppm_max", [200, 20_000, DRIFT_PPM_LIMIT])
def test_drift_stays_within_its_bound(drift_ppm_max: int) -> None:
    ticks = 2_000
    drifts = []
    for seed in range(30):
        events = EventQueue()
        clock = SimClock(Prng(seed), events, ClockFaults(drift_ppm_max=drift_ppm_max))
        start = clock.monotonic_ns()
        for _ in range(ticks):
            step(events)
        elapsed = clock.monotonic_ns() - start
        nominal = ticks * TICK_NS
        assert abs(elapsed - nominal) <= nominal * drift_ppm_max // PPM + 1
        assert abs(clock.drift_ppm) <= drift_ppm_max
        drifts.append(clock.drift_ppm)
    assert min(drifts) < 0 < max(drifts), "drift goes both ways across nodes"


def test_ticks_due_follow_the_drift_so_timeouts_drift_apart() -> None:
    events = EventQueue()
    clocks = SimClocks(Prng(5), events, ClockFaults(drift_ppm_max=DRIFT_PPM_LIMIT), NODES)
    world_ticks = 5_000
    local = dict.fromkeys(NODES, 0)
    seen: set[int] = set()
    for _ in range(world_ticks):
        for node in NODES:
            due = clocks.ticks_due(node)
            assert due == clocks.ticks_due(node), "ticks_due is a function of the world tick"
            seen.add(due)
            local[node] += due
        step(events)
    for node in NODES:
        drift = clocks.clock(node).drift_ppm
        expected = world_ticks * (PPM + drift) / PPM
        assert abs(local[node] - expected) <= 1, f"node {node}: {local[node]} vs {expected}"
    assert seen == {0, 1, 2}
    assert len(set(local.values())) == len(NODES), "every node keeps its own pace"


def test_jumps_happen_only_when_enabled_and_stay_bounded() -> None:
    quiet, _, _ = run(7, ClockFaults(drift_ppm_max=2_000, skew_ms_max=1_000), 400)
    assert quiet.faults["jumps_forward"] == quiet.faults["jumps_backward"] == 0
    assert quiet.faults["drifting"] == quiet.faults["skewed"] == len(NODES)

    jumpy, _, _ = run(7, ClockFaults(jump=0.05, jump_ms_max=3_600_000), 2_000)
    assert jumpy.faults["jumps_forward"] + jumpy.faults["jumps_backward"] > 100
    assert jumpy.faults["drifting"] == jumpy.faults["skewed"] == 0
    for node in NODES:
        assert abs(jumpy.clock(node).offset_ns) <= REALTIME_OFFSET_NS_MAX


def test_skew_offsets_each_wall_clock_within_its_bound() -> None:
    events = EventQueue()
    clocks = SimClocks(Prng(2), events, ClockFaults(skew_ms_max=500), NODES)
    offsets = [clocks.clock(node).realtime_ns() - REALTIME_EPOCH_NS for node in NODES]
    assert all(abs(offset) <= 500_000_000 for offset in offsets)
    assert len(set(offsets)) == len(NODES)


def test_heal_stops_drift_and_jumps_and_restores_true_time() -> None:
    faults = ClockFaults(drift_ppm_max=DRIFT_PPM_LIMIT, skew_ms_max=10_000, jump=0.3)
    clocks, events, _ = run(9, faults, 300)
    before = {node: clocks.clock(node).monotonic_ns() for node in NODES}
    jumps = clocks.faults["jumps_forward"] + clocks.faults["jumps_backward"]
    clocks.heal()
    for _ in range(300):
        clocks.tick()
        for node in NODES:
            clock = clocks.clock(node)
            assert clocks.ticks_due(node) == 1
            assert clock.realtime_ns() == REALTIME_EPOCH_NS + events.now * TICK_NS
        step(events)
    assert clocks.faults["jumps_forward"] + clocks.faults["jumps_backward"] == jumps
    for node in NODES:
        assert clocks.clock(node).monotonic_ns() == before[node] + 300 * TICK_NS


def test_the_same_seed_gives_the_same_readings() -> None:
    faults = ClockFaults(drift_ppm_max=20_000, skew_ms_max=5_000, jump=0.05)
    assert run(11, faults, 300)[2] == run(11, faults, 300)[2]
    assert run(11, faults, 300)[2] != run(12, faults, 300)[2]


def test_drawn_plans_vary_and_stay_in_range() -> None:
    plans = [ClockFaults.draw(Prng(seed, "swarm")) for seed in range(200)]
    for name in ("drift_ppm_max", "skew_ms_max", "jump"):
        values = [getattr(plan, name) for plan in plans]
        assert any(v == 0 for v in values) and any(v > 0 for v in values), name
    assert all(0 <= plan.drift_ppm_max <= DRIFT_PPM_LIMIT for plan in plans)
    assert all(plan.jump <= 0.002 for plan in plans)
    assert set(FAULT_NAMES) == {"drifting", "skewed", "jumps_forward", "jumps_backward"}


def test_bad_plans_are_refused() -> None:
    with pytest.raises(ValueError):
        ClockFaults(drift_ppm_max=DRIFT_PPM_LIMIT + 1)
    with pytest.raises(ValueError):
        ClockFaults(jump=1.5)


def test_a_long_walk_of_jumps_never_leaves_the_offset_bound() -> None:
    events = EventQueue()
    clock = SimClock(Prng(4), events, ClockFaults(jump=1.0, jump_ms_max=3_600_000))
    widest = 0
    for _ in range(5_000):
        clock.tick()
        widest = max(widest, abs(clock.realtime_ns() - REALTIME_EPOCH_NS - events.now * TICK_NS))
        step(events)
    assert widest <= REALTIME_OFFSET_NS_MAX
    assert widest > REALTIME_OFFSET_NS_MAX * 9 // 10, "the walk should reach the bound"


def test_each_node_draws_from_its_own_stream() -> None:
    faults = ClockFaults(drift_ppm_max=20_000, skew_ms_max=5_000, jump=0.1)

    def node_zero(nodes: tuple[int, ...]) -> list[int]:
        events = EventQueue()
        clocks = SimClocks(Prng(8), events, faults, nodes)
        readings = []
        for _ in range(300):
            clocks.tick()
            readings.append(clocks.clock(0).realtime_ns())
            step(events)
        return readings

    assert node_zero((0,)) == node_zero(NODES), "other nodes' draws changed node 0's clock"


# --- a JWT connection under simulated clocks -------------------------------------------------
#
# The node's own connection code (``craton.core.connection.ConnectionProtocol``, the token
# checked by ``craton.core.auth``) reads its time from a simulated clock whose wall clock the
# scenario jumps, as the swarm's clock faults do: a forward jump past the token's ``exp``
# ends the connection at its next frame; a backward jump does not lend the token time.


def _jwt_connection(clock: SimClock, lifetime_s: int) -> ConnectionProtocol:
    """A connection that opened at the clock's time with a JWT valid ``lifetime_s`` more."""
    import jwt

    now_ms = clock.realtime_ns() // NS_PER_MS
    secret = b"a jwt secret for the simulated clock tests, 32+ bytes"
    policy = JwtPolicy(secret, "craton", "craton", lifetime_max_s=3600)
    claims = {
        "sub": "sim",
        "tenant_id": 7,
        "role": "member",
        "iss": "craton",
        "aud": "craton",
        "iat": now_ms // 1000,
        "exp": now_ms // 1000 + lifetime_s,
    }
    principal = authenticate_jwt(jwt.encode(claims, secret, algorithm="HS256"), now_ms, policy)
    assert isinstance(principal, Principal), principal
    protocol = ConnectionProtocol(clock.monotonic_ns(), request_number_max=1000)
    handshake = Handshake(PROTOCOL_VERSION, 0xC0FFEE, "a-token")
    protocol.receive_data(encode(handshake, 1), clock.monotonic_ns())
    assert protocol.serve_next(_conditions(clock)) == [StartHandshake(handshake, 1)]
    protocol.on_session_opened(principal, 0, 1, 0, clock.monotonic_ns())
    return protocol


def _conditions(clock: SimClock) -> Conditions:
    return Conditions(clock.monotonic_ns(), clock.realtime_ns() // NS_PER_MS, 0, False)


def _sync(protocol: ConnectionProtocol, clock: SimClock, request_id: int) -> list[object]:
    protocol.receive_data(encode(Sync(), request_id), clock.monotonic_ns())
    return list(protocol.serve_next(_conditions(clock)) or [])


def _expired(effects: list[object]) -> bool:
    return any(
        isinstance(e, RefuseCredential) and e.refusal.reason is Refusal.EXPIRED for e in effects
    )


def _run_ticks(events: EventQueue, ticks: int) -> None:
    for _ in range(ticks):
        events.schedule(1, lambda: None)
        events.run_until_idle()


def test_a_forward_jump_past_a_tokens_expiry_ends_its_connection() -> None:
    events = EventQueue()
    clock = SimClock(Prng(3, "node"), events, ClockFaults(jump=0.0, jump_ms_max=600_000))
    protocol = _jwt_connection(clock, lifetime_s=60)
    _run_ticks(events, 100)  # one simulated second: well within the minute
    assert not _expired(_sync(protocol, clock, 2)), "a valid token serves"
    clock.offset_ns += (120 + JWT_LEEWAY_S) * NS_PER_S  # a jump two minutes past exp
    assert clock.realtime_ns() // NS_PER_MS > 0
    assert _expired(_sync(protocol, clock, 3)), "the jump took the wall clock past exp"
    assert protocol.closed


def test_a_backward_jump_does_not_extend_a_token() -> None:
    events = EventQueue()
    clock = SimClock(Prng(4, "node"), events, ClockFaults())
    protocol = _jwt_connection(clock, lifetime_s=2)  # valid 2 s, plus the leeway
    valid_ticks = (2 + JWT_LEEWAY_S) * 100
    clock.offset_ns -= 3600 * NS_PER_S  # the wall clock steps back an hour
    _run_ticks(events, valid_ticks - 50)  # half a second before the token runs out
    assert not _expired(_sync(protocol, clock, 2))
    _run_ticks(events, 100)  # half a second after: by the wall clock, an hour to go
    assert _expired(_sync(protocol, clock, 3)), (
        "a wall clock stepped back must not extend the token past its lifetime"
    )


def test_a_jump_is_counted_once_a_reader_saw_it() -> None:
    events = EventQueue()
    clock = SimClock(Prng(5, "node"), events, ClockFaults(jump=1.0, jump_ms_max=1_000))
    clock.tick()
    clock.tick()
    seen = clock.faults["jumps_forward"] + clock.faults["jumps_backward"]
    assert seen == 0, "no one has read the wall clock since the jumps"
    clock.realtime_ns()
    seen = clock.faults["jumps_forward"] + clock.faults["jumps_backward"]
    assert seen == 2, f"both jumps reached the reader, counted {seen}"
    clock.realtime_ns()
    assert clock.faults["jumps_forward"] + clock.faults["jumps_backward"] == 2
