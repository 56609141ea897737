"""The simulated network: the ``Network`` interface between simulated nodes, seeded and faulty.

Nodes are the replicas ``0 .. replica_count - 1`` and the client ids given. ``endpoint(node)``
hands a node its ``Network``; ``send`` schedules the delivery on the world's ``EventQueue``
after the latency of the directed path. Payload bytes arrive unchanged: damaged bytes are the
codec's concern (its checksum), so corruption is not a network fault here.

Faults, drawn from the network's own PRNG streams:
- per message: ``loss`` (never delivered), ``duplication`` (a second copy travels with its own
  delay), ``reorder`` (an extra random delay, so later messages overtake it), and
  ``latency_jitter_ticks`` (a random spread on the path's latency), and ``replay`` (between
  replicas only: a stale copy arrives ``replay_ticks_min..max`` later, long after the view
  it was sent in may be over — the late messages of an old view that the protocol's view
  rules must discard; a client's connection, TCP, never delivers a frame that late);
- per tick, from ``tick()``: a symmetric ``partition`` (the replicas split into two sides, each
  client placed on one side; nothing crosses), an ``asymmetric_partition`` (the same split,
  but only one direction is cut), and a ``clog`` (one directed path delays every message by
  ``clog_delay_ticks`` for a while).

Rules it keeps:
- Delivery never happens inside ``send``: the earliest arrival is the next tick.
- Without faults every directed path is FIFO with a fixed latency of its own.
- A message crosses only if its path is open both when it is sent and when it arrives.
- A node that is down sends nothing; a message is dropped on arrival if its destination or
  its source is down at that moment.
- At most one partition at a time and at most ``CLOGS_ACTIVE_MAX`` clogs, each for a bounded
  number of ticks, so the nodes can always meet again; ``heal()`` ends them all and starts no
  more.
- Per-message draws, the fault schedule and path latencies come from separate streams: the
  schedule of partitions and clogs does not depend on how many messages were sent.
- Messages in flight are bounded by ``messages_in_flight_max`` (asserted, never dropped).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import attrs

from craton.core.prng import Prng
from craton.io.interfaces import ReceiveCallback
from craton.sim.events import EventQueue

if TYPE_CHECKING:
    from craton.io.interfaces import Network

MESSAGES_IN_FLIGHT_MAX = 100_000  # messages scheduled for delivery and not yet arrived
CLOGS_ACTIVE_MAX = 4  # directed paths clogged at the same time
LATENCY_TICKS_LIMIT = 1_000  # upper bound on any configured latency or delay, in ticks
PARTITION_TICKS_LIMIT = 100_000  # upper bound on one partition's or clog's duration, in ticks
ISOLATE_ONE_CHANCE = 0.5  # a drawn partition cuts off a single replica this often

FAULT_NAMES = (
    "lost",
    "duplicated",
    "reordered",
    "clogged",  # messages delayed by a clog
    "partitions",
    "asymmetric_partitions",
    "clogs",
    "dropped_partition",  # messages stopped by a partition
    "dropped_down",  # messages dropped because their source or destination was down
    "replayed",  # stale copies delivered long after the original
)


class UnknownNode(ValueError):
    """A node id that is neither a replica nor one of the network's clients."""


@attrs.frozen
class NetworkFaults:
    """The fault plan of one run. Probabilities are per message, or per tick where noted."""

    latency_ticks_min: int = 1
    latency_ticks_max: int = 3
    latency_jitter_ticks: int = 0
    loss: float = 0.0
    duplication: float = 0.0
    reorder: float = 0.0
    reorder_ticks_max: int = 20
    partition: float = 0.0  # per tick: a symmetric partition starts
    asymmetric_partition: float = 0.0  # per tick: a one-way partition starts
    partition_ticks_min: int = 20
    partition_ticks_max: int = 200
    clog: float = 0.0  # per tick: a directed path clogs
    clog_ticks_min: int = 20
    clog_ticks_max: int = 200
    clog_delay_ticks: int = 100
    replay: float = 0.0  # per message: a stale copy arrives replay_ticks_min..max later
    replay_ticks_min: int = 100
    replay_ticks_max: int = 600

    def __attrs_post_init__(self) -> None:
        if not 1 <= self.latency_ticks_min <= self.latency_ticks_max <= LATENCY_TICKS_LIMIT:
            raise ValueError(f"need 1 <= latency_ticks_min <= latency_ticks_max: {self!r}")
        if not 0 <= self.latency_jitter_ticks <= LATENCY_TICKS_LIMIT:
            raise ValueError(f"latency_jitter_ticks must be in 0..{LATENCY_TICKS_LIMIT}: {self!r}")
        for name in ("reorder_ticks_max", "clog_delay_ticks"):
            if not 1 <= getattr(self, name) <= LATENCY_TICKS_LIMIT:
                raise ValueError(f"{name} must be in 1..{LATENCY_TICKS_LIMIT}: {self!r}")
        for name in (
            "duplication",
            "reorder",
            "partition",
            "asymmetric_partition",
            "clog",
            "replay",
        ):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability: {self!r}")
        if not 0.0 <= self.loss < 1.0:
            raise ValueError(f"loss must be in [0, 1) so that messages can arrive: {self!r}")
        for low, high in (
            (self.partition_ticks_min, self.partition_ticks_max),
            (self.clog_ticks_min, self.clog_ticks_max),
            (self.replay_ticks_min, self.replay_ticks_max),
        ):
            if not 1 <= low <= high <= PARTITION_TICKS_LIMIT:
                raise ValueError(f"durations need 1 <= min <= max: {self!r}")

    @classmethod
    def none(cls) -> NetworkFaults:
        return cls()

    @classmethod
    def draw(cls, prng: Prng) -> NetworkFaults:
        """A swarm of network faults for one run: each knob is on with some probability, and
        every range stays small enough that the cluster can make progress between faults."""

        def knob(high: float) -> float:
            return high * prng.fraction() if prng.chance(0.5) else 0.0

        latency_ticks_max = prng.between(1, 10)
        partition_ticks_max = prng.between(20, 400)
        clog_ticks_max = prng.between(10, 300)
        return cls(
            latency_ticks_min=prng.between(1, latency_ticks_max),
            latency_ticks_max=latency_ticks_max,
            latency_jitter_ticks=prng.between(1, 5) if prng.chance(0.5) else 0,
            loss=knob(0.2),
            duplication=knob(0.2),
            reorder=knob(0.2),
            reorder_ticks_max=prng.between(1, 50),
            partition=knob(0.005),
            asymmetric_partition=knob(0.005),
            partition_ticks_min=prng.between(10, partition_ticks_max),
            partition_ticks_max=partition_ticks_max,
            clog=knob(0.01),
            clog_ticks_min=prng.between(10, clog_ticks_max),
            clog_ticks_max=clog_ticks_max,
            clog_delay_ticks=prng.between(20, 200),
        )


@attrs.frozen
class Partition:
    """Nodes split in two: ``near`` and ``far``. Symmetric cuts both directions; one-way cuts
    only near → far (far → near still flows). Over at ``end_tick``."""

    near: tuple[int, ...]
    far: tuple[int, ...]
    one_way: bool
    end_tick: int

    def blocks(self, src: int, dst: int) -> bool:
        if src in self.near and dst in self.far:
            return True
        return not self.one_way and src in self.far and dst in self.near


@attrs.frozen
class Clog:
    """Every message sent on the path while the clog lasts is delayed by ``delay_ticks``."""

    delay_ticks: int
    end_tick: int


class SimEndpoint:
    """One node's view of the simulated network: the ``Network`` interface."""

    def __init__(self, network: SimNetwork, node: int) -> None:
        self._network = network
        self.node = node

    def send(self, dst: int, payload: bytes) -> None:
        self._network._send(self.node, dst, payload)

    def set_receiver(self, receive: ReceiveCallback) -> None:
        self._network._receivers[self.node] = receive


class SimNetwork:
    def __init__(
        self,
        prng: Prng,
        events: EventQueue,
        faults: NetworkFaults | None,
        replica_count: int,
        client_ids: Sequence[int],
        *,
        messages_in_flight_max: int = MESSAGES_IN_FLIGHT_MAX,
    ) -> None:
        assert replica_count >= 1
        assert all(client >= replica_count for client in client_ids), "client ids clash"
        assert len(set(client_ids)) == len(client_ids), "client ids must be unique"
        assert 1 <= messages_in_flight_max <= MESSAGES_IN_FLIGHT_MAX
        self._events = events
        self._prng_messages = prng.split("messages")
        self._prng_plan = prng.split("plan")
        self._prng_paths = prng.split("paths")
        self._prng_replay = prng.split("replay")  # its own: other draws stay as they were
        self.fault_plan = faults if faults is not None else NetworkFaults.none()
        self.replica_count = replica_count
        self.client_ids = tuple(client_ids)
        self.nodes = (*range(replica_count), *self.client_ids)
        self.messages_in_flight_max = messages_in_flight_max
        self._endpoints = {node: SimEndpoint(self, node) for node in self.nodes}
        self._receivers: dict[int, ReceiveCallback | None] = dict.fromkeys(self.nodes)
        self._down: dict[int, bool] = dict.fromkeys(self.nodes, False)
        self._path_position: dict[tuple[int, int], float] = {}
        self.partition_active: Partition | None = None
        self.clogs_active: dict[tuple[int, int], Clog] = {}
        self.healed = False
        self.quiet = False  # draw no partition or clog for now (a scenario is staging one)
        self.faults: dict[str, int] = dict.fromkeys(FAULT_NAMES, 0)
        self.sent = 0
        self.delivered = 0
        self.unattached = 0  # arrived at a node that has no receiver registered
        self.in_flight = 0

    # --- nodes -------------------------------------------------------------------------------

    def endpoint(self, node: int) -> SimEndpoint:
        """The ``Network`` of ``node`` (the same object on every call)."""
        self._check_node(node)
        return self._endpoints[node]

    def set_down(self, node: int, down: bool) -> None:
        """Mark ``node`` crashed or paused (``True``) or running again (``False``)."""
        self._check_node(node)
        self._down[node] = down

    def is_down(self, node: int) -> bool:
        self._check_node(node)
        return self._down[node]

    # --- the fault schedule ------------------------------------------------------------------

    def tick(self) -> None:
        """Called once per world tick: end what is over, and maybe start a partition or clog."""
        now = self._events.now
        if self.partition_active is not None and self.partition_active.end_tick <= now:
            self.partition_active = None
        for path in [path for path, clog in self.clogs_active.items() if clog.end_tick <= now]:
            del self.clogs_active[path]
        if self.healed or self.quiet:
            return
        plan, prng = self.fault_plan, self._prng_plan
        if self.partition_active is None:
            if prng.chance(plan.partition):
                self._start_drawn_partition(one_way=False)
            elif prng.chance(plan.asymmetric_partition):
                self._start_drawn_partition(one_way=True)
        if len(self.clogs_active) < CLOGS_ACTIVE_MAX and prng.chance(plan.clog):
            self._start_drawn_clog()

    def heal(self) -> None:
        """End every partition and clog now, and start no more from the fault plan."""
        self.partition_active = None
        self.clogs_active.clear()
        self.healed = True

    def partition(self, near: Sequence[int], *, one_way: bool, duration_ticks: int) -> None:
        """Split the nodes into ``near`` and everyone else, replacing any partition in force
        (an explicit fault for scenario tests; counted like a drawn one)."""
        for node in near:
            self._check_node(node)
        far = tuple(node for node in self.nodes if node not in near)
        assert near and far, "a partition needs nodes on both sides"
        assert 1 <= duration_ticks <= PARTITION_TICKS_LIMIT
        self._begin_partition(near, far, one_way, duration_ticks)

    def clog(self, src: int, dst: int, *, duration_ticks: int, delay_ticks: int) -> None:
        """Delay every message from ``src`` to ``dst`` by ``delay_ticks`` for a while (an
        explicit fault for scenario tests; counted like a drawn one)."""
        self._check_node(src)
        self._check_node(dst)
        assert src != dst
        assert 1 <= duration_ticks <= PARTITION_TICKS_LIMIT
        assert 1 <= delay_ticks <= LATENCY_TICKS_LIMIT
        self.clogs_active[(src, dst)] = Clog(delay_ticks, self._events.now + duration_ticks)
        self.faults["clogs"] += 1

    def blocked(self, src: int, dst: int) -> bool:
        """Whether a partition in force stops messages from ``src`` to ``dst`` right now."""
        partition = self.partition_active
        if partition is None or partition.end_tick <= self._events.now:
            return False
        return partition.blocks(src, dst)

    def path_latency_ticks(self, src: int, dst: int) -> int:
        """The fixed latency of the directed path before jitter, reordering and clogs."""
        position = self._path_position.get((src, dst))
        if position is None:
            position = self._prng_paths.split(f"{src}->{dst}").fraction()
            self._path_position[(src, dst)] = position
        plan = self.fault_plan
        spread = plan.latency_ticks_max - plan.latency_ticks_min + 1
        return plan.latency_ticks_min + int(position * spread)

    # --- sending and delivery ----------------------------------------------------------------

    def _send(self, src: int, dst: int, payload: bytes) -> None:
        self._check_node(dst)
        assert isinstance(payload, bytes), "payloads are bytes"
        self.sent += 1
        if self._down[src]:
            self.faults["dropped_down"] += 1
            return
        if self.blocked(src, dst):
            self.faults["dropped_partition"] += 1
            return
        prng = self._prng_messages
        copies = 1
        if prng.chance(self.fault_plan.duplication):
            self.faults["duplicated"] += 1
            copies = 2
        for _ in range(copies):
            if prng.chance(self.fault_plan.loss):
                self.faults["lost"] += 1
                continue
            assert self.in_flight < self.messages_in_flight_max, (
                f"more than {self.messages_in_flight_max} messages in flight"
            )
            self.in_flight += 1
            self._events.schedule(self._delay_ticks(src, dst), self._arrival(src, dst, payload))
        plan = self.fault_plan
        between_replicas = src < self.replica_count and dst < self.replica_count
        if plan.replay and between_replicas and self._prng_replay.chance(plan.replay):
            assert self.in_flight < self.messages_in_flight_max
            self.faults["replayed"] += 1
            self.in_flight += 1
            late = self._prng_replay.between(plan.replay_ticks_min, plan.replay_ticks_max)
            self._events.schedule(late, self._arrival(src, dst, payload))

    def _delay_ticks(self, src: int, dst: int) -> int:
        plan, prng = self.fault_plan, self._prng_messages
        delay = self.path_latency_ticks(src, dst)
        if plan.latency_jitter_ticks:
            delay += prng.between(0, plan.latency_jitter_ticks)
        if prng.chance(plan.reorder):
            self.faults["reordered"] += 1
            delay += prng.between(1, plan.reorder_ticks_max)
        clog = self.clogs_active.get((src, dst))
        if clog is not None and clog.end_tick > self._events.now:
            self.faults["clogged"] += 1
            delay += clog.delay_ticks
        return delay

    def _arrival(self, src: int, dst: int, payload: bytes) -> Callable[[], None]:
        def arrive() -> None:
            self.in_flight -= 1
            assert self.in_flight >= 0
            if self._down[dst] or self._down[src]:
                self.faults["dropped_down"] += 1
                return
            if self.blocked(src, dst):
                self.faults["dropped_partition"] += 1
                return
            receive = self._receivers[dst]
            if receive is None:
                self.unattached += 1
                return
            self.delivered += 1
            receive(src, payload)

        return arrive

    # --- drawing faults ----------------------------------------------------------------------

    def _start_drawn_partition(self, *, one_way: bool) -> None:
        prng = self._prng_plan
        replicas = list(range(self.replica_count))
        prng.shuffle(replicas)
        isolate_one = self.replica_count <= 2 or prng.chance(ISOLATE_ONE_CHANCE)
        near_count = 1 if isolate_one else prng.between(1, self.replica_count - 1)
        near, far = replicas[:near_count], replicas[near_count:]
        for client in self.client_ids:
            (near if prng.chance(0.5) else far).append(client)
        if one_way and prng.chance(0.5):
            near, far = far, near  # cut the other direction of the same split
        if not near or not far:
            return  # a single replica with every client beside it: nothing to cut
        plan = self.fault_plan
        duration_ticks = prng.between(plan.partition_ticks_min, plan.partition_ticks_max)
        self._begin_partition(near, far, one_way, duration_ticks)

    def _begin_partition(
        self, near: Sequence[int], far: Sequence[int], one_way: bool, duration_ticks: int
    ) -> None:
        end_tick = self._events.now + duration_ticks
        self.partition_active = Partition(
            tuple(sorted(near)), tuple(sorted(far)), one_way, end_tick
        )
        self.faults["asymmetric_partitions" if one_way else "partitions"] += 1

    def _start_drawn_clog(self) -> None:
        prng = self._prng_plan
        replica = prng.below(self.replica_count)
        peers = [node for node in self.nodes if node != replica]
        if not peers:
            return
        peer = prng.choice(peers)
        path = (replica, peer) if prng.chance(0.5) else (peer, replica)
        if path in self.clogs_active:
            return
        plan = self.fault_plan
        duration_ticks = prng.between(plan.clog_ticks_min, plan.clog_ticks_max)
        self.clogs_active[path] = Clog(plan.clog_delay_ticks, self._events.now + duration_ticks)
        self.faults["clogs"] += 1

    def _check_node(self, node: int) -> None:
        if node not in self._down:
            raise UnknownNode(f"node {node} is neither a replica nor a known client")


if TYPE_CHECKING:

    def _conforms(endpoint: SimEndpoint) -> Network:
        return endpoint
