"""The simulated network injects every fault it names, only when asked, deterministically."""

from __future__ import annotations

import attrs
import pytest

from craton.core.prng import Prng
from craton.sim.events import EventQueue
from craton.sim.network import (
    CLOGS_ACTIVE_MAX,
    FAULT_NAMES,
    NetworkFaults,
    Partition,
    SimNetwork,
    UnknownNode,
)

REPLICAS = 3
CLIENTS = (1000, 1001)


@attrs.frozen
class Arrival:
    tick: int
    src: int
    dst: int
    payload: bytes


@attrs.define
class World:
    events: EventQueue
    network: SimNetwork
    arrivals: list[Arrival]


def make_world(
    seed: int,
    faults: NetworkFaults,
    *,
    replicas: int = REPLICAS,
    clients: tuple[int, ...] = CLIENTS,
    messages_in_flight_max: int = 100_000,
) -> World:
    events = EventQueue()
    network = SimNetwork(
        Prng(seed, "network"),
        events,
        faults,
        replicas,
        clients,
        messages_in_flight_max=messages_in_flight_max,
    )
    arrivals: list[Arrival] = []
    for node in network.nodes:

        def receive(src: int, payload: bytes, dst: int = node) -> None:
            arrivals.append(Arrival(events.now, src, dst, payload))

        network.endpoint(node).set_receiver(receive)
    return World(events, network, arrivals)


def advance(world: World, ticks: int, *, chatter: bool = True) -> None:
    """Run ``ticks`` world ticks the way a world does: one step per tick that calls
    ``tick()`` and, with ``chatter``, has every pair that talks (not client to client) send."""
    events, network = world.events, world.network
    left = [ticks]

    def step() -> None:
        if left[0] == 0:
            return
        left[0] -= 1
        network.tick()
        if chatter:
            for src in network.nodes:
                for dst in network.nodes:
                    if talks(network, src, dst):
                        payload = f"{events.now}:{src}->{dst}".encode()
                        network.endpoint(src).send(dst, payload)
        events.schedule(1, step)

    end = events.now + ticks
    events.schedule(0, step)
    events.run_until(lambda: left[0] == 0 and events.now >= end)


def talks(network: SimNetwork, src: int, dst: int) -> bool:
    return src != dst and (src < network.replica_count or dst < network.replica_count)


def drain(world: World) -> None:
    world.events.run_until_idle()


KNOBS: dict[str, dict[str, float]] = {
    "lost": {"loss": 0.2},
    "duplicated": {"duplication": 0.2},
    "reordered": {"reorder": 0.2},
    "partitions": {"partition": 0.05},
    "asymmetric_partitions": {"asymmetric_partition": 0.05},
    "clogs": {"clog": 0.05},
}
CONSEQUENCES = {
    "partitions": {"dropped_partition"},
    "asymmetric_partitions": {"dropped_partition"},
    "clogs": {"clogged"},
}


@pytest.mark.parametrize("fault", sorted(KNOBS))
def test_every_knob_injects_its_fault_and_nothing_else(fault: str) -> None:
    world = make_world(7, NetworkFaults(**KNOBS[fault]))  # type: ignore[arg-type]
    advance(world, 300)
    drain(world)
    faults = world.network.faults
    assert faults[fault] > 0, f"{fault} was never injected: {faults}"
    for consequence in CONSEQUENCES.get(fault, ()):
        assert faults[consequence] > 0, f"{fault} had no effect on messages: {faults}"
    allowed = {fault} | CONSEQUENCES.get(fault, set())
    others = {name: count for name, count in faults.items() if count and name not in allowed}
    assert others == {}, f"faults injected that were not enabled: {others}"


def test_no_faults_delivers_everything_in_order_after_the_path_latency() -> None:
    world = make_world(3, NetworkFaults.none())
    advance(world, 50)
    drain(world)
    network = world.network
    assert all(count == 0 for count in network.faults.values()), network.faults
    assert network.delivered == network.sent > 0 and network.in_flight == 0
    by_path: dict[tuple[int, int], list[Arrival]] = {}
    for arrival in world.arrivals:
        by_path.setdefault((arrival.src, arrival.dst), []).append(arrival)
    latencies = set()
    for (src, dst), arrivals in by_path.items():
        latency = network.path_latency_ticks(src, dst)
        latencies.add(latency)
        assert 1 <= latency <= 3
        sent_ticks = [int(a.payload.split(b":")[0]) for a in arrivals]
        assert sent_ticks == sorted(sent_ticks), f"path {src}->{dst} reordered without faults"
        assert all(a.tick - sent == latency for a, sent in zip(arrivals, sent_ticks, strict=True))
    assert latencies == {1, 2, 3}, "each path draws its own latency from the range"


def test_delivery_never_happens_inside_send() -> None:
    world = make_world(1, NetworkFaults(latency_ticks_min=1, latency_ticks_max=1))
    world.network.endpoint(0).send(1, b"hello")
    assert world.arrivals == [] and world.network.in_flight == 1
    drain(world)
    assert world.arrivals == [Arrival(1, 0, 1, b"hello")]


def test_every_sent_copy_is_accounted_for() -> None:
    faults = NetworkFaults(loss=0.1, duplication=0.1, reorder=0.1, partition=0.02, clog=0.02)
    world = make_world(11, faults)
    advance(world, 300)
    drain(world)
    network, counts = world.network, world.network.faults
    copies = network.sent + counts["duplicated"]
    outcomes = (
        network.delivered + counts["lost"] + counts["dropped_partition"] + counts["dropped_down"]
    )
    assert copies == outcomes and network.unattached == 0 and network.in_flight == 0


def test_duplication_delivers_a_payload_twice_and_reorder_overtakes() -> None:
    world = make_world(5, NetworkFaults(duplication=0.3))
    advance(world, 100)
    drain(world)
    keys = [(a.src, a.dst, a.payload) for a in world.arrivals]
    assert len(keys) > len(set(keys)), "no payload arrived twice"

    world = make_world(5, NetworkFaults(reorder=0.3, reorder_ticks_max=10))
    advance(world, 100)
    drain(world)
    sent_ticks: dict[tuple[int, int], list[int]] = {}
    for a in world.arrivals:
        sent_ticks.setdefault((a.src, a.dst), []).append(int(a.payload.split(b":")[0]))
    assert any(ticks != sorted(ticks) for ticks in sent_ticks.values()), "nothing overtaken"


def test_loss_is_roughly_its_probability() -> None:
    world = make_world(9, NetworkFaults(loss=0.25))
    advance(world, 200)
    drain(world)
    ratio = world.network.faults["lost"] / world.network.sent
    assert 0.2 < ratio < 0.3, f"expected about 25% lost, got {ratio:.3f}"


def crossings(world: World, start_tick: int) -> set[tuple[int, int]]:
    """Directed paths on which a message sent at or after ``start_tick`` arrived."""
    found = set()
    for a in world.arrivals:
        if int(a.payload.split(b":")[0]) >= start_tick:
            found.add((a.src, a.dst))
    return found


def test_a_symmetric_partition_blocks_exactly_the_paths_across_and_heals() -> None:
    world = make_world(2, NetworkFaults.none())
    network = world.network
    network.partition([0, 1000], one_way=False, duration_ticks=40)
    advance(world, 30)
    during = crossings(world, 0)
    near = (0, 1000)
    for src in network.nodes:
        for dst in network.nodes:
            across = (src in near) != (dst in near)
            assert network.blocked(src, dst) == across, f"{src}->{dst} blocked={across} expected"
            if talks(network, src, dst):
                assert ((src, dst) in during) == (not across), f"{src}->{dst} across={across}"
    assert network.faults["partitions"] == 1 and network.faults["dropped_partition"] > 0
    assert network.partition_active is not None
    assert network.partition_active.far == (1, 2, 1001)
    advance(world, 20)  # the partition ends at tick 40
    start = world.events.now
    advance(world, 10)
    drain(world)
    assert network.partition_active is None
    assert (0, 1) in crossings(world, start) and (1, 0) in crossings(world, start)


def test_an_asymmetric_partition_cuts_one_direction_only() -> None:
    world = make_world(2, NetworkFaults.none())
    network = world.network
    network.partition([2], one_way=True, duration_ticks=1000)
    advance(world, 20)
    drain(world)
    seen = crossings(world, 0)
    for other in (0, 1, 1000, 1001):
        assert (2, other) not in seen, f"2->{other} crossed a one-way cut"
        assert (other, 2) in seen, f"{other}->2 should still flow"
    assert (0, 1) in seen and (1, 0) in seen
    assert network.faults["asymmetric_partitions"] == 1 and network.faults["partitions"] == 0


def test_a_message_in_flight_when_a_partition_starts_is_dropped() -> None:
    world = make_world(2, NetworkFaults(latency_ticks_min=5, latency_ticks_max=5))
    world.network.endpoint(0).send(1, b"late")
    world.network.partition([0], one_way=False, duration_ticks=100)
    drain(world)
    assert world.arrivals == [] and world.network.faults["dropped_partition"] == 1


def test_drawn_partitions_split_the_replicas_and_place_clients_on_both_sides() -> None:
    faults = NetworkFaults(
        partition=0.2, asymmetric_partition=0.2, partition_ticks_min=1, partition_ticks_max=2
    )
    world = make_world(4, faults, replicas=5)
    splits: list[Partition] = []
    for _ in range(400):
        advance(world, 1, chatter=False)
        partition = world.network.partition_active
        if partition is not None and partition not in splits:
            splits.append(partition)
    assert len(splits) > 40
    near_replica_counts = set()
    for partition in splits:
        replicas_near = [n for n in partition.near if n < 5]
        replicas_far = [n for n in partition.far if n < 5]
        assert replicas_near and replicas_far, f"replicas not split: {partition}"
        assert sorted(partition.near + partition.far) == sorted(world.network.nodes)
        near_replica_counts.add(len(replicas_near))
    assert near_replica_counts == {1, 2, 3, 4}, "splits of every size are drawn"
    assert any(1000 in p.near for p in splits) and any(1000 in p.far for p in splits)
    assert any(p.one_way for p in splits) and any(not p.one_way for p in splits)


def test_a_clog_delays_one_path_only_and_ends() -> None:
    world = make_world(6, NetworkFaults(latency_ticks_min=2, latency_ticks_max=2))
    network = world.network
    network.clog(0, 1, duration_ticks=10, delay_ticks=50)
    network.endpoint(0).send(1, b"clogged")
    network.endpoint(1).send(0, b"reverse")
    network.endpoint(0).send(2, b"other")
    drain(world)
    assert [(a.payload, a.tick) for a in world.arrivals] == [
        (b"reverse", 2),
        (b"other", 2),
        (b"clogged", 52),
    ]
    advance(world, 10, chatter=False)
    assert network.clogs_active == {}
    start = world.events.now
    network.endpoint(0).send(1, b"free")
    drain(world)
    assert world.arrivals[-1] == Arrival(start + 2, 0, 1, b"free")
    assert network.faults["clogs"] == 1 and network.faults["clogged"] == 1


def test_clogs_are_bounded_and_touch_a_replica() -> None:
    faults = NetworkFaults(clog=1.0, clog_ticks_min=50, clog_ticks_max=50)
    world = make_world(8, faults, clients=(1000, 1001, 1002, 1003))
    for _ in range(60):
        advance(world, 1, chatter=False)
        assert len(world.network.clogs_active) <= CLOGS_ACTIVE_MAX
        for src, dst in world.network.clogs_active:
            assert src != dst and (src < REPLICAS or dst < REPLICAS)
    assert world.network.faults["clogs"] >= CLOGS_ACTIVE_MAX


def test_heal_ends_every_partition_and_clog_and_starts_no_more() -> None:
    faults = NetworkFaults(partition=0.5, asymmetric_partition=0.5, clog=0.5)
    world = make_world(12, faults)
    advance(world, 20)
    network = world.network
    assert network.partition_active is not None and network.clogs_active
    network.heal()
    assert network.partition_active is None and network.clogs_active == {}
    before = dict(network.faults)
    start = world.events.now
    advance(world, 200)
    drain(world)
    after = network.faults
    for name in ("partitions", "asymmetric_partitions", "clogs"):
        assert after[name] == before[name], f"{name} started after heal"
    talking = {(s, d) for s in network.nodes for d in network.nodes if talks(network, s, d)}
    assert crossings(world, start) == talking


def test_down_nodes_neither_send_nor_receive_and_come_back() -> None:
    world = make_world(3, NetworkFaults(latency_ticks_min=3, latency_ticks_max=3))
    network = world.network
    network.endpoint(0).send(1, b"to-down")
    network.endpoint(2).send(0, b"from-soon-down")
    network.set_down(1, True)
    network.set_down(2, True)
    network.endpoint(2).send(0, b"from-down")
    drain(world)
    assert world.arrivals == [] and network.faults["dropped_down"] == 3
    assert network.is_down(1)
    network.set_down(1, False)
    network.set_down(2, False)
    network.endpoint(0).send(1, b"back")
    network.endpoint(2).send(0, b"back")
    drain(world)
    assert [(a.src, a.dst) for a in world.arrivals] == [(0, 1), (2, 0)]


def test_a_message_reaches_the_receiver_registered_at_arrival() -> None:
    world = make_world(3, NetworkFaults.none())
    late: list[bytes] = []
    world.network.endpoint(0).send(1, b"x")
    world.network.endpoint(1).set_receiver(lambda src, payload: late.append(payload))
    drain(world)
    assert late == [b"x"] and world.arrivals == []


def test_messages_in_flight_are_bounded() -> None:
    world = make_world(1, NetworkFaults.none(), messages_in_flight_max=10)
    endpoint = world.network.endpoint(0)
    for n in range(10):
        endpoint.send(1, bytes([n]))
    with pytest.raises(AssertionError, match="in flight"):
        endpoint.send(1, b"one too many")
    drain(world)
    endpoint.send(1, b"room again")
    assert world.network.in_flight == 1


def test_unknown_nodes_are_refused() -> None:
    world = make_world(1, NetworkFaults.none())
    with pytest.raises(UnknownNode):
        world.network.endpoint(0).send(5, b"nobody")
    with pytest.raises(UnknownNode):
        world.network.endpoint(999)
    with pytest.raises(ValueError):
        NetworkFaults(loss=1.0)
    with pytest.raises(ValueError):
        NetworkFaults(latency_ticks_min=0)


def trace(seed: int) -> tuple[object, ...]:
    world = make_world(seed, NetworkFaults.draw(Prng(seed, "plan")))
    advance(world, 150)
    world.network.set_down(1, True)
    advance(world, 50)
    world.network.set_down(1, False)
    world.network.heal()
    advance(world, 50)
    drain(world)
    return (tuple(world.arrivals), tuple(world.network.faults.items()), world.events.now)


def test_the_same_seed_gives_the_same_deliveries_at_the_same_ticks() -> None:
    assert trace(21) == trace(21)
    assert trace(21) != trace(22)


def test_the_partition_schedule_does_not_depend_on_traffic() -> None:
    faults = NetworkFaults(partition=0.05, asymmetric_partition=0.05, clog=0.05, loss=0.3)
    quiet, busy = make_world(13, faults), make_world(13, faults)
    schedule: list[list[object]] = [[], []]
    for _ in range(200):
        advance(quiet, 1, chatter=False)
        advance(busy, 1, chatter=True)
        for world, log in ((quiet, schedule[0]), (busy, schedule[1])):
            log.append((world.network.partition_active, tuple(world.network.clogs_active)))
    assert schedule[0] == schedule[1]
    assert busy.network.faults["lost"] > 0 and quiet.network.faults["lost"] == 0


def test_drawn_plans_stay_in_range_and_vary() -> None:
    plans = [NetworkFaults.draw(Prng(seed, "swarm")) for seed in range(200)]
    for name in ("loss", "duplication", "reorder", "partition", "asymmetric_partition", "clog"):
        values = [getattr(plan, name) for plan in plans]
        assert any(v == 0.0 for v in values) and any(v > 0.0 for v in values), name
    assert all(plan.loss <= 0.2 and plan.duplication <= 0.2 for plan in plans)
    assert all(plan.partition <= 0.005 and plan.clog <= 0.01 for plan in plans)
    assert all(plan.partition_ticks_max <= 400 and plan.latency_ticks_max <= 10 for plan in plans)
    assert len({plan.latency_ticks_max for plan in plans}) > 5
    assert set(FAULT_NAMES) >= set(KNOBS)
