"""The cluster simulator: real replicas on a simulated network, disks and clocks.

One seeded world runs the very ``Replica``, ``Log``, state machine and ``Driver`` that
production runs; only ``Disk``, ``Network`` and ``Clock`` are simulated. Each seed draws its
own *swarm* of options — cluster shape, workload, and the probabilities of every fault —
and the run has two phases:

1. the fault phase: clients send requests while the network drops, duplicates, delays,
   reorders, partitions and clogs messages, clocks drift and jump, and replicas crash
   (losing or tearing unsynced writes), restart and pause;
2. the liveness phase: the network, clocks and processes heal (every replica is brought
   back), clients send nothing new, and the cluster must commit every outstanding request
   within a fixed tick budget.

The checkers (``craton.sim.checkers``) watch every replica after every tick and judge the
client histories at the end. The run is a function of its seed: every choice comes from one
``Prng`` split into per-subsystem streams, and ``trace_digest`` hashes what happened.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Callable

import attrs

from craton.core.event_store import EventStore
from craton.core.gateway import Gateway, GatewayCounts, RequestFreshness
from craton.core.kv_machine import KvMachine
from craton.core.prng import Prng
from craton.core.seal import Sealer
from craton.core.seam import Answer, Halt, MessageReceived, Notice, SubmitKind, Tick
from craton.core.state_machine import StateMachine
from craton.core.vsr import codec
from craton.core.vsr.profile import PROFILE_NAMES, PROFILES, SIMULATION
from craton.core.vsr.replica import Replica, ReplicaConfig, Status
from craton.core.wire.errors import DecodeError, ErrorCode
from craton.io.driver import Driver
from craton.sim.checkers import Checker
from craton.sim.clock import ClockFaults, SimClocks
from craton.sim.disk import DiskFaults, SimDisk
from craton.sim.durability import DAMAGE_NOTICES, DurabilityChecker
from craton.sim.events import EventQueue
from craton.sim.models import EventStoreModel, KvModel, Model
from craton.sim.network import NetworkFaults, SimNetwork
from craton.sim.scenarios import NO_SCENARIO, SCENARIO_NAMES, Scenario, ScenarioPlan
from craton.sim.workload import (
    CLIENT_ID_BASE,
    SimClient,
    decode_submit,
    encode_answer,
    event_store_is_read,
    event_store_operation,
    kv_is_read,
    kv_operation,
)


@attrs.frozen
class MachineKind:
    """A state machine the swarm runs: how to make one, its workload, and which of its
    requests clients send down the read path."""

    make: Callable[[], StateMachine]
    operation: Callable[[Prng, int], bytes]  # (prng, latest position the client learned)
    is_read: Callable[[bytes], bool]


MACHINES: dict[str, MachineKind] = {
    "kv": MachineKind(KvMachine, kv_operation, kv_is_read),
    "event_store": MachineKind(EventStore, event_store_operation, event_store_is_read),
}
# Each machine's independent model (``craton.sim.models``), where it has one.
MODELS: dict[str, Callable[[], Model]] = {"kv": KvModel, "event_store": EventStoreModel}

# Replicas run the simulation profile (the production one with sizes shrunk) or, in a share
# of the seeds, the production profile exactly (``craton.core.vsr.profile``).
CLIENT_TABLE_MAX = SIMULATION.client_table_max
CHECKPOINT_INTERVAL_OPS = SIMULATION.checkpoint_interval_ops
PRODUCTION_SIZES_SHARE = 0.125  # of seeds whose sizes are drawn, not given
LIVENESS_TICKS_DEFAULT = 3000
MESSAGE_LOSS_FLOOR = 0.01  # per message, when a seed drew no network fault at all
CRASH_FLOOR = 0.0005  # per replica per tick, when a cluster's seed drew no crashes
REPLAY_SHARE = 0.3  # of seeds in which stale copies of messages arrive late
DISK_PROFILES = ("atlas", "disjoint")
REPAIR_NOTICES = {  # notices counted in a run's ``repairs``, by the name they are counted as
    "log.damage_cut": "damage_cuts",
    "log.superblock_lost": "superblocks_lost",
    "log.torn_tail_truncated": "torn_tails_cut",
    "replica.prepare_repaired": "prepares_repaired",
    "replica.repair_abandoned": "repairs_abandoned",
    "replica.repaired": "logs_repaired",
    "replica.repair_completed": "repairs_completed_at_restart",
    "replica.restarted_from_state": "checkpoint_restarts",
    "replica.restart_state_unusable": "checkpoint_restarts_refused",
    "replica.repair_by_state": "repairs_by_state",
    "replica.recovered": "rejoined",
    "replica.state_transfer": "state_transfers",
    "replica.state_synced": "state_syncs",
    "replica.state_part": "state_parts",  # a part of a checkpoint state asked for the next
    "replica.install_compares": "installs_compared",  # an install compared before it cut
    "replica.checkpoint_rejected": "checkpoints_rejected",
    "replica.journal_released": "journal_releases",
    "log.base_state_lost": "base_states_lost",
    "log.history_lost": "histories_lost",
    "log.places_found": "places_found",  # records below a log's index found again
    "log.read_damaged": "reads_damaged",
}


@attrs.frozen
class FaultAtlas:
    """Where the faults that destroy stored bytes may land, so that every committed op keeps
    an intact copy on some replica and any failure the checkers find is a real bug.

    ``atlas`` profile: only the ``faulty`` replicas (at most ``(R - 1) // 2`` of them, so
    every commit quorum holds a replica outside) get torn and misdirected writes and rot,
    and only they may be ``wipe``d (per crash: the disk comes back blank). ``disjoint``
    profile: every replica is damaged, by rot the simulator places itself
    (``rot`` per tick) in records of ops ``op % R == replica`` only, so no op is damaged
    on two replicas."""

    profile: str
    faulty: tuple[int, ...]
    wipe: float
    rot: float

    @classmethod
    def draw(cls, prng: Prng, replica_count: int, profile: str) -> FaultAtlas:
        assert profile in DISK_PROFILES
        if replica_count == 1:
            return cls(profile, (), 0.0, 0.0)  # one copy: nothing may be destroyed
        if profile == "disjoint":
            return cls(profile, tuple(range(replica_count)), 0.0, 0.002 + 0.01 * prng.fraction())
        count = prng.between(1, (replica_count - 1) // 2) if prng.chance(0.8) else 0
        order = list(range(replica_count))
        prng.shuffle(order)
        wipe = 0.3 * prng.fraction() if prng.chance(0.5) else 0.0
        return cls(profile, tuple(sorted(order[:count])), wipe, 0.0)


@attrs.frozen
class ProcessFaults:
    crash: float = 0.0  # per replica per tick
    pause: float = 0.0  # per replica per tick
    down_ticks_min: int = 20
    down_ticks_max: int = 200
    # Crashes timed where durability rules matter: as a replica issues a sync (its write is
    # in the page cache, the sync not done), and as a replica's commit number moves.
    crash_at_sync: float = 0.0  # per sync a replica issues
    crash_after_commit: float = 0.0  # per step in which a replica commits

    @classmethod
    def draw(cls, prng: Prng) -> ProcessFaults:
        return cls(
            crash=0.002 * prng.fraction() if prng.chance(0.7) else 0.0,
            pause=0.002 * prng.fraction() if prng.chance(0.5) else 0.0,
            down_ticks_min=prng.between(5, 40),
            down_ticks_max=prng.between(50, 300),
        )

    def targeted(self, prng: Prng) -> ProcessFaults:
        """With the timed crashes drawn from ``prng`` (a stream of their own, so that the
        other draws of a seed are the same with them or without)."""
        return attrs.evolve(
            self,
            crash_at_sync=0.02 * prng.fraction() if prng.chance(0.25) else 0.0,
            crash_after_commit=0.02 * prng.fraction() if prng.chance(0.25) else 0.0,
        )


@attrs.frozen
class SwarmOptions:
    replica_count: int
    client_count: int
    requests_per_client: int
    fault_ticks: int
    liveness_ticks: int
    machine: str
    network: NetworkFaults
    disk: DiskFaults
    clocks: ClockFaults
    processes: ProcessFaults
    atlas: FaultAtlas = FaultAtlas("atlas", (), 0.0, 0.0)
    sizes: str = SIMULATION.name  # the replica profile (``craton.core.vsr.profile``)
    scenario: ScenarioPlan = NO_SCENARIO  # a hard case built on purpose (``scenarios``)

    def summary(self) -> dict[str, object]:
        return {
            "sizes": self.sizes,
            "replicas": self.replica_count,
            "clients": self.client_count,
            "requests_per_client": self.requests_per_client,
            "fault_ticks": self.fault_ticks,
            "machine": self.machine,
            "network": attrs.asdict(self.network),
            "disk": attrs.asdict(self.disk),
            "clocks": attrs.asdict(self.clocks),
            "processes": attrs.asdict(self.processes),
            "atlas": attrs.asdict(self.atlas),
            "scenario": attrs.asdict(self.scenario),
        }

    def disk_plan(self, replica: int) -> DiskFaults:
        """Replica ``replica``'s disk faults: the destructive ones only where the atlas
        lets them land."""
        if replica in self.atlas.faulty and self.atlas.profile == "atlas":
            return self.disk
        return attrs.evolve(
            self.disk, torn_write=0.0, misdirected_write=0.0, corruption_at_rest=0.0
        )


def draw_options(
    seed: int,
    *,
    replicas: int | None = None,
    ticks: int | None = None,
    profile: str = "atlas",
    sizes: str | None = None,
    scenario: str | None = None,
) -> SwarmOptions:
    """The options seed ``seed`` draws; ``sizes`` (a replica profile's name) is drawn too
    when not given: the production profile in ``PRODUCTION_SIZES_SHARE`` of the seeds.
    ``scenario`` (``craton.sim.scenarios``) likewise: when given, the seed runs that one
    (``"none"``: none), starting at the tick the seed draws for it."""
    assert sizes is None or sizes in PROFILE_NAMES, sizes
    assert scenario is None or scenario in SCENARIO_NAMES, scenario
    if sizes is None:  # a stream of its own: the other draws are the same either way
        production = Prng(seed, "sizes").chance(PRODUCTION_SIZES_SHARE)
        sizes = "production" if production else SIMULATION.name
    prng = Prng(seed, "swarm")
    replica_count = replicas if replicas is not None else prng.choice([1, 3, 3, 5])
    network = NetworkFaults.draw(prng.split("network"))
    if not (network.loss or network.duplication or network.reorder or network.partition):
        # Every seed breaks the network somehow: a swarm may switch knobs off, not all.
        network = attrs.evolve(network, loss=MESSAGE_LOSS_FLOOR)
    processes = ProcessFaults.draw(prng.split("processes"))
    if replica_count > 1 and not processes.crash:
        processes = attrs.evolve(processes, crash=CRASH_FLOOR)  # and every cluster crashes
    if replica_count > 1 and profile == "atlas":  # the disjoint profile studies repair
        processes = processes.targeted(Prng(seed, "targeted"))
    network = _with_replays(network, Prng(seed, "replay"))
    # drawn in this order, as they always were: a seed's other draws stay as they were
    client_count = prng.between(1, 4)
    requests_per_client = prng.between(10, 60)
    fault_ticks = ticks if ticks is not None else prng.between(1500, 4000)
    plan = NO_SCENARIO
    if scenario is not None or profile == "atlas":  # a stream of its own, as for replays
        plan = ScenarioPlan.draw(Prng(seed, "scenario"), replica_count, fault_ticks, name=scenario)
    return SwarmOptions(
        replica_count=replica_count,
        client_count=client_count,
        requests_per_client=requests_per_client,
        fault_ticks=fault_ticks,
        liveness_ticks=LIVENESS_TICKS_DEFAULT,
        machine=prng.choice(sorted(MACHINES)),
        network=network,
        disk=DiskFaults.draw(prng.split("disk"), destructive=True),
        clocks=ClockFaults.draw(prng.split("clocks")),
        processes=processes,
        atlas=FaultAtlas.draw(prng.split("atlas"), replica_count, profile),
        sizes=sizes,
        scenario=plan,
    )


def _with_replays(network: NetworkFaults, prng: Prng) -> NetworkFaults:
    """Stale copies of messages delivered long after (in a share of the seeds, from a stream
    of their own, so that the other draws of a seed are the same with them or without)."""
    if not prng.chance(REPLAY_SHARE):
        return network
    low = prng.between(50, 300)
    return attrs.evolve(
        network,
        replay=0.02 * prng.fraction(),
        replay_ticks_min=low,
        replay_ticks_max=prng.between(low, 1_000),
    )


class _Outbound:
    """A replica's side of the network for its driver: sends go out through the node's
    endpoint; arrivals are dispatched by the cluster (client requests and replica messages
    become different inputs), so the driver's receiver is not installed."""

    def __init__(self, network: SimNetwork, node: int, watch: Callable[[int, bytes], None]) -> None:
        self._endpoint = network.endpoint(node)
        self._watch = watch

    def send(self, dst: int, payload: bytes) -> None:
        self._watch(dst, payload)  # the checkers see every message as it leaves its replica
        self._endpoint.send(dst, payload)

    def set_receiver(self, receive: Callable[[int, bytes], None]) -> None:
        del receive


@attrs.define
class _Node:
    index: int
    disk: SimDisk
    replica: Replica
    gateway: Gateway
    driver: Driver
    # token -> (client endpoint, kind, request id) of each submit the gateway has not answered
    submits: dict[int, tuple[int, SubmitKind, int]] = attrs.Factory(dict)
    # by client endpoint: (its handshake's request id, the connection's judge of retries)
    connections: dict[int, tuple[int, RequestFreshness]] = attrs.Factory(dict)
    up: bool = True
    paused: bool = False
    back_at: int = 0  # tick at which a down or paused replica comes back
    incarnation: int = 0


@attrs.frozen
class RunResult:
    seed: int
    result: str  # "pass", "correctness", "liveness"
    ticks: int
    trace_digest: str
    committed_ops: int
    faults: dict[str, int]
    repairs: dict[str, int]
    liveness: str
    violations: tuple[str, ...]
    options: SwarmOptions
    gateway: dict[str, int] = attrs.Factory(dict)


class Cluster:
    def __init__(
        self,
        seed: int,
        options: SwarmOptions,
        *,
        trace: Callable[[str], None] | None = None,
        replica_factory: Callable[[ReplicaConfig, StateMachine, Prng], Replica] = Replica,
        gateway_factory: Callable[..., Gateway] = Gateway,
    ) -> None:
        self.seed = seed
        self.options = options
        self._trace = trace
        self._replica_factory = replica_factory
        self._gateway_factory = gateway_factory  # called as (replica, counts=...)
        self.prng = Prng(seed, "cluster")
        self.events = EventQueue()
        n = options.replica_count
        client_ids = [CLIENT_ID_BASE + index for index in range(options.client_count)]
        self.network = SimNetwork(
            self.prng.split("network"), self.events, options.network, n, client_ids
        )
        self.clocks = SimClocks(
            self.prng.split("clocks"), self.events, options.clocks, [*range(n), *client_ids]
        )
        self._faults_prng = self.prng.split("processes")
        self._seal_seeds = [self.prng.split(f"key-{i}").random_bytes(32) for i in range(n)]
        self._public_keys = tuple(Sealer(seed).public_key for seed in self._seal_seeds)
        self.process_faults: dict[str, int] = {
            "crashes": 0,
            "pauses": 0,
            "restarts": 0,
            "crashes_at_sync": 0,
            "crashes_after_commit": 0,
        }
        self._targeted_prng = self.prng.split("targeted")  # the timed crashes' own stream
        self._commits_seen = [0] * n  # each replica's commit number at its last look
        self._after_commit = [
            self._timed_crash(index, "crashes_after_commit", "crash_after_commit")
            for index in range(n)
        ]
        self.repairs: dict[str, int] = {}
        self.gateway_counts = GatewayCounts()  # every gateway's, every incarnation's
        self._next_token = 1
        self._members = [False] * n  # whose view state was ever durable (see Replica.member)
        self.digest = hashlib.sha256(f"craton-sim:{seed}".encode())
        self.profile = PROFILES[options.sizes]
        self.checker = Checker(
            n,
            self._make_machine,
            self.profile.client_table_max,
            self.profile.checkpoint_interval_ops,
            MODELS.get(options.machine),
        )
        self.durability = DurabilityChecker(n // 2 + 1, self.checker.fail)
        self._durability_seen = 0  # committed ops whose durable copies were counted
        self.scenario = Scenario(
            options.scenario,
            Prng(seed, "scenario-run"),
            self.network,
            lambda: [node.replica if node.up and not node.paused else None for node in self.nodes],
            lambda: self.events.now,
            self._log,
            self._pause,
        )
        self.nodes = [self._boot(index, None) for index in range(n)]
        for index in range(n):
            self.network.endpoint(index).set_receiver(self._receiver(index))
        self.clients = [
            SimClient(
                client_id,
                self.network.endpoint(client_id),
                self.prng.split(f"client-{client_id}"),
                replica_count=n,
                requests=options.requests_per_client,
                make_operation=MACHINES[options.machine].operation,
                is_read=MACHINES[options.machine].is_read,
                now=lambda: self.events.now,
            )
            for client_id in client_ids
        ]
        self.phase = "faults"

    # --- nodes -------------------------------------------------------------------------------

    def _make_machine(self) -> StateMachine:
        return MACHINES[self.options.machine].make()

    def _boot(self, index: int, disk: SimDisk | None) -> _Node:
        joined = self._members[index] if disk is not None else False
        if disk is None:
            plan = self.options.disk_plan(index)
            disk = SimDisk(self.prng.split(f"disk-{index}"), self.events, plan)
            disk.on_sync = self._timed_crash(index, "crashes_at_sync", "crash_at_sync")
        config = self.profile.config(
            joined=joined,
            replica_id=index,
            replica_count=self.options.replica_count,
            seal_seed=self._seal_seeds[index],
            peer_public_keys=self._public_keys,
        )
        prng = self.prng.split(f"replica-{index}-{self.process_faults['restarts']}")
        replica = self._replica_factory(config, self._make_machine(), prng)
        gateway = self._gateway_factory(replica, counts=self.gateway_counts)
        submits: dict[int, tuple[int, SubmitKind, int]] = {}
        driver = Driver(
            gateway,
            disk,
            network=_Outbound(self.network, index, self._sent_by(index)),
            on_answer=self._answer_sender(index, submits),
            on_notice=self._notice(index),
            on_halt=self._halted(index),
            check_invariants=True,
        )
        node = _Node(index, disk, replica, gateway, driver, submits)
        driver.launch(gateway.start())
        return node

    def _receiver(self, index: int) -> Callable[[int, bytes], None]:
        def receive(src: int, payload: bytes) -> None:
            node = self.nodes[index]
            if not node.up or node.paused:
                return
            self._record("recv", index, src, payload)
            if src >= CLIENT_ID_BASE:
                self._submit(node, src, payload)
            else:
                node.driver.step(MessageReceived(src, payload))
            self._observe(node)

        return receive

    def _submit(self, node: _Node, client: int, payload: bytes) -> None:
        """A client's submit, through its connection to this replica: a ``SESSION`` is the
        handshake of a new connection; a write's freshness is the connection's to judge
        (``RequestFreshness``), as a node's connection judges it."""
        token, self._next_token = self._next_token, self._next_token + 1
        submit, retry = decode_submit(token, payload)
        if submit.kind is SubmitKind.SESSION:
            known = node.connections.get(client)
            # A client's handshake ids only grow: an older one is a late copy, not a new
            # connection (a real one cannot arrive on a connection opened after it).
            if known is None or submit.request_id > known[0]:
                node.connections[client] = (submit.request_id, RequestFreshness())
        else:
            connection = node.connections.get(client)
            if connection is None:  # the replica restarted since: that connection is gone
                lost = Answer(token, ErrorCode.INVALID_REQUEST, message="no connection")
                reply = encode_answer(SubmitKind.SESSION, submit.request_id, lost)
                self.network.endpoint(node.index).send(client, reply)
                return
            if submit.kind is SubmitKind.WRITE:
                fresh = connection[1].fresh(submit.request_id, retry=retry)
                submit = attrs.evolve(submit, fresh=fresh)
        node.submits[token] = (client, submit.kind, submit.request_id)
        node.driver.step(submit)

    def _observe(self, node: _Node) -> None:
        """The checkers' look at a replica after it stepped; ops the history gained are
        looked for on the disks' stable bytes (``craton.sim.durability``)."""
        committed = node.replica.commit
        self.checker.observe(node.index, node.replica)
        if committed > self._commits_seen[node.index]:
            self._commits_seen[node.index] = committed
            self._after_commit[node.index]()
        primary = self.nodes[node.replica.primary]
        if primary.up and primary.replica.status is not Status.LOADING:
            self.checker.agree_with_primary(node.index, node.replica, primary.replica)
        if primary is node:  # its head moved: each backup's suffix is compared up to it
            for other in self.nodes:
                if other is not node and other.up and other.replica.status is Status.NORMAL:
                    self.checker.agree_with_primary(other.index, other.replica, node.replica)
        history = self.checker.canonical
        while self._durability_seen < len(history):
            op = self._durability_seen
            self.durability.committed(op, history[op], self._holders())
            self._durability_seen += 1

    def _timed_crash(self, index: int, counter: str, knob: str) -> Callable[[], None]:
        """Crash replica ``index`` right after what it is doing now, with the seed's ``knob``
        probability (in the fault phase): the crash lands once the current step's effects
        are out (for a write carrying its own sync, once the write is in the page cache),
        before any of its I/O completes."""

        def maybe() -> None:
            chance = getattr(self.options.processes, knob)
            if not chance or self.phase != "faults" or not self._targeted_prng.chance(chance):
                return

            def crash() -> None:
                node = self.nodes[index]
                if node.up and not node.paused and self.phase == "faults":
                    self.process_faults[counter] += 1
                    self._crash(index, self._down_ticks())

            self.events.schedule(0, crash)

        return maybe

    def _holders(self) -> list[tuple[int, Replica, SimDisk]]:
        return [(node.index, node.replica, node.disk) for node in self.nodes]

    def _sent_by(self, index: int) -> Callable[[int, bytes], None]:
        def watch(dst: int, payload: bytes) -> None:
            self.checker.sent(index, self.nodes[index].replica, payload)
            self.scenario.outbound(index, dst, payload)

        return watch

    def _answer_sender(
        self, index: int, submits: dict[int, tuple[int, SubmitKind, int]]
    ) -> Callable[[Answer], None]:
        """The gateway's answers go back to the client that sent the submit."""

        def send(answer: Answer) -> None:
            client, kind, request_id = submits.pop(answer.token)
            payload = encode_answer(kind, request_id, answer)
            self.network.endpoint(index).send(client, payload)

        return send

    def _notice(self, index: int) -> Callable[[Notice], None]:
        def notice(event: Notice) -> None:
            name = REPAIR_NOTICES.get(event.event)
            if event.event == "replica.recovering":
                name = f"recoveries_{dict(event.fields)['reason']}"
            if name is not None:
                self.repairs[name] = self.repairs.get(name, 0) + 1
            if event.event in DAMAGE_NOTICES:
                disk = self.nodes[index].disk
                self.durability.damage_found(index, event.event, dict(event.fields), disk)
            if event.event == "log.superblock_lost":
                self._superblock_lost(index)
            if self._trace is not None:
                fields = " ".join(f"{k}={v}" for k, v in event.fields)
                self._trace(f"{self.events.now:>7} r{index} {event.event} {fields}")

        return notice

    def _superblock_lost(self, index: int) -> None:
        """Every superblock copy of replica ``index`` was damaged, and its log starts over
        blank: its persisted view is gone as with a wiped disk, which only destructive disk
        faults may cause (a replica the atlas spares must never lose them all)."""
        atlas = self.options.atlas
        if index not in atlas.faulty:
            self.checker.fail(
                f"replica {index}: lost every superblock copy, though no destructive disk "
                "fault may land on its disk"
            )
        self.checker.wiped(index)

    def _halted(self, index: int) -> Callable[[Halt], None]:
        def halted(halt: Halt) -> None:
            self._log(f"r{index} halted: {halt.reason}")
            self.events.schedule(0, lambda: self._crash(index, self._down_ticks()))

        return halted

    def crash(self, index: int, *, down_ticks: int) -> None:
        """Crash replica ``index`` now; it restarts ``down_ticks`` later (an explicit fault
        for scenario tests, counted like a drawn one; a replica already down is left so)."""
        assert 0 <= index < self.options.replica_count and down_ticks >= 1
        self._crash(index, down_ticks)

    def wipe(self, index: int, *, down_ticks: int) -> None:
        """Crash replica ``index`` and wipe its disk; it restarts on a blank disk (an
        explicit fault for scenario tests, counted like a drawn one)."""
        self.crash(index, down_ticks=down_ticks)
        self.nodes[index].disk.wipe()
        self.checker.wiped(index)
        self._log(f"r{index} disk wiped")

    def corrupt_op(self, index: int, op: int, *, header: bool = False) -> None:
        """Flip a bit of op ``op``'s record on replica ``index``'s disk: in its body, or in
        its header (which hides the record's length). The op must be durable there."""
        log = self.nodes[index].replica.log
        assert 0 <= op < log.durable, f"op {op} is not durable on replica {index}"
        place = log.location(op)
        assert place is not None, f"durable op {op} has no place on disk"
        path, offset, size = place
        at = offset + 40 if header else offset + 128 + (size - 128) // 2
        self.nodes[index].disk.corrupt(path, at, 3, fault="corruption_at_rest")
        self._log(f"r{index} rot in op {op}")

    def _crash(self, index: int, down_ticks: int) -> None:
        node = self.nodes[index]
        if not node.up:
            return
        self.process_faults["crashes"] += 1
        self._members[index] = self._members[index] or node.replica.member
        node.disk.crash()
        atlas = self.options.atlas
        wiping = self.phase == "faults" and index in atlas.faulty and atlas.wipe > 0
        if wiping and self._faults_prng.chance(atlas.wipe):
            node.disk.wipe()
            self.checker.wiped(index)
            self._log(f"r{index} disk wiped")
        self.durability.crashed(index, self.checker.canonical, self._holders())
        node.up = False
        node.paused = False
        node.back_at = self.events.now + down_ticks
        self.network.set_down(index, True)
        self._log(f"r{index} crashed until {node.back_at}")

    def _restart(self, index: int) -> None:
        old = self.nodes[index]
        self.process_faults["restarts"] += 1
        self.network.set_down(index, False)
        node = self._boot(index, old.disk)
        node.incarnation = old.incarnation + 1
        self.nodes[index] = node
        self._commits_seen[index] = 0
        self.checker.restarted(index)
        self._log(f"r{index} restarted")

    def _down_ticks(self) -> int:
        plan = self.options.processes
        return self._faults_prng.between(plan.down_ticks_min, plan.down_ticks_max)

    # --- the run -----------------------------------------------------------------------------

    def run(self) -> RunResult:
        fault_end = self.options.fault_ticks
        deadline = fault_end + self.options.liveness_ticks
        liveness = "pending"
        while self.events.now < deadline:
            if self.events.now >= fault_end and self.phase == "faults":
                self._heal()
            self._tick()
            if self.checker.violations:
                break
            if self.phase == "liveness" and self._settled():
                liveness = "pass"
                break
            self._advance_one_tick()
        if liveness == "pending" and not self.checker.violations:
            liveness = "fail" if self.phase == "liveness" else "pending"
        if liveness == "pass":
            self._check_every_submit_answered()
        for client in self.clients:
            client.give_up()
        self.checker.finish(self.clients, [node.replica for node in self.nodes])
        result = "pass"
        if self.checker.violations:
            result = "correctness"
        elif liveness != "pass":
            result = "liveness"
        return RunResult(
            seed=self.seed,
            result=result,
            ticks=self.events.now,
            trace_digest=self.digest.hexdigest(),
            committed_ops=max(node.replica.commit for node in self.nodes),
            faults=self.fault_counts(),
            repairs=dict(sorted(self.repairs.items())),
            liveness=liveness,
            violations=tuple(self.checker.violations[:5]),
            options=self.options,
            gateway=self.gateway_counts.as_dict(),
        )

    def _check_every_submit_answered(self) -> None:
        """Once the healed cluster settled, every gateway has answered every submit it took
        (nothing hangs): a request left open is a violation, with the client and request."""
        for node in self.nodes:
            for token, (client, kind, request_id) in sorted(node.submits.items())[:1]:
                self.checker.fail(
                    f"replica {node.index}'s gateway never answered a {kind.name.lower()} "
                    f"submit (token {token}) of client {client}, request id {request_id}"
                )

    def _advance_one_tick(self) -> None:
        """Run every event due before the next tick (and those due at it, queued earlier)."""
        arrived: list[bool] = []
        self.events.schedule(1, lambda: arrived.append(True))
        while not arrived:
            self.events.run_next()

    def _tick(self) -> None:
        now = self.events.now
        self.network.tick()
        self.clocks.tick()
        if self.phase == "faults":
            self.scenario.tick()
            # While a scenario stages its case, the drawn faults of processes and network
            # paths wait: a crash or partition of their own would undo what it arranges.
            self.network.quiet = self.scenario.staging
            if not self.scenario.staging:
                self._inject_process_faults()
            self._inject_disjoint_rot()
        for node in self.nodes:
            if not node.up and now >= node.back_at:
                self._restart(node.index)
            elif node.paused and now >= node.back_at:
                node.paused = False
                self.network.set_down(node.index, False)
        for node in list(self.nodes):
            if node.up and not node.paused:
                for _ in range(self.clocks.ticks_due(node.index)):
                    node.driver.step(Tick())
                self._observe(node)
        for client in self.clients:
            client.tick()

    def _inject_process_faults(self) -> None:
        plan = self.options.processes
        for node in self.nodes:
            if not node.up or node.paused or self.options.replica_count == 1:
                continue
            if self._faults_prng.chance(plan.crash):
                self._crash(node.index, self._down_ticks())
            elif self._faults_prng.chance(plan.pause):
                self._pause(node.index, self._down_ticks())

    def _pause(self, index: int, ticks: int) -> None:
        """Freeze replica ``index`` for ``ticks``: it neither hears, sends nor ticks, and
        comes back where it stopped (a stopped process, a long pause of its runtime)."""
        node = self.nodes[index]
        if not node.up or node.paused:
            return
        self.process_faults["pauses"] += 1
        node.paused = True
        node.back_at = self.events.now + ticks
        self.network.set_down(index, True)
        self._log(f"r{index} paused until {node.back_at}")

    def _inject_disjoint_rot(self) -> None:
        """The disjoint profile: flip a bit in a synced record of some replica's log, only
        ever in ops that belong to that replica (``op % R == replica``)."""
        atlas = self.options.atlas
        if atlas.profile != "disjoint" or not self._faults_prng.chance(atlas.rot):
            return
        count = self.options.replica_count
        index = self._faults_prng.below(count)
        node = self.nodes[index]
        log = node.replica.log
        # its ops: the ones equal to its index modulo the count, from the log's base on
        first = log.base + (index - log.base) % count
        if not node.up or not log.is_open or log.durable <= first:
            return
        op = first + count * self._faults_prng.below((log.durable - 1 - first) // count + 1)
        place = log.location(op)
        assert place is not None, f"durable op {op} has no place on disk"
        path, offset, size = place
        at = offset + self._faults_prng.below(size)
        if at >= node.disk.durable_size(path):
            return  # not synced yet (a truncation is under way)
        node.disk.corrupt(path, at, self._faults_prng.below(8), fault="corruption_at_rest")
        self._log(f"r{index} rot in op {op}")

    def _heal(self) -> None:
        self.phase = "liveness"
        self.scenario.stop()
        self.network.quiet = False
        self.network.heal()
        self.network.fault_plan = attrs.evolve(
            self.network.fault_plan, loss=0.0, duplication=0.0, reorder=0.0, replay=0.0
        )
        self.clocks.heal()
        for node in self.nodes:
            # A failed write stops a replica for good reason; healed disks stop failing.
            node.disk.fault_plan = attrs.evolve(node.disk.fault_plan, write_error=0.0)
            if not node.up or node.paused:
                node.back_at = self.events.now
        for client in self.clients:
            client.accepting_new = False
        self._log("healed: liveness phase")

    def _settled(self) -> bool:
        if not all(client.done for client in self.clients):
            return False
        commits = {node.replica.commit for node in self.nodes if node.up}
        heads = {node.replica.head for node in self.nodes if node.up}
        return all(node.up for node in self.nodes) and len(commits) == 1 and commits == heads

    # --- accounting --------------------------------------------------------------------------

    def fault_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for name, value in self.network.faults.items():
            counts[f"network.{name}"] = value
        for name, value in self.clocks.faults.items():
            counts[f"clock.{name}"] = value
        for node in self.nodes:
            for name, value in node.disk.faults.items():
                counts[f"disk.{name}"] = counts.get(f"disk.{name}", 0) + value
        for name, value in self.process_faults.items():
            counts[f"process.{name}"] = value
        counts.update(self.scenario.faults)
        return counts

    def _record(self, kind: str, dst: int, src: int, payload: bytes) -> None:
        header = struct.pack("<QIII", self.events.now, dst, src, zlib.crc32(payload))
        self.digest.update(kind.encode() + header)
        if self._trace is not None:
            self._trace(f"{self.events.now:>7} r{dst} <- {src}: {_describe(src, payload)}")

    def _log(self, line: str) -> None:
        self.digest.update(line.encode())
        if self._trace is not None:
            self._trace(f"{self.events.now:>7} {line}")


def _describe(src: int, payload: bytes) -> str:
    """A short readable form of a payload for the trace."""
    if src >= CLIENT_ID_BASE:
        submit, retry = decode_submit(0, payload)
        marked = " retry" if retry else ""
        return f"client {submit.kind.value}{marked} {submit.request_id} ({len(submit.body)} bytes)"
    try:
        message = codec.decode_message(payload)
    except DecodeError as error:
        return f"undecodable ({error.reason})"
    fields = attrs.asdict(message, recurse=False)
    shown = " ".join(f"{name}={value}" for name, value in fields.items() if isinstance(value, int))
    return f"{type(message).__name__} {shown}"
