"""Named VSR scenarios: the classic protocol cases, scripted on the cluster simulator.

Every drawn fault is off (no loss, latency jitter, partitions, clock faults, disk faults or
random crashes); each scenario scripts its own faults at the moments that matter, found by
watching the replicas once per tick. The run then goes on as any simulator run does: the
liveness phase must settle, and the checkers (one history, hash chain, linearizable client
histories, views never going back) must find nothing. Each test also asserts the concrete
outcome the protocol promises: views, commit numbers, what the logs hold, client replies.

Sections cited are those of "Viewstamped Replication Revisited" (Liskov & Cowling, 2012).
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import pytest

from craton.core import kv_machine
from craton.core.gateway import READ_CLIENT_ID
from craton.core.kv_machine import KvMachine
from craton.core.prng import Prng
from craton.core.seam import ClientRequest, Effect, Reply, Submit, SubmitKind
from craton.core.state_machine import StateMachine
from craton.core.vsr.replica import (
    NUMBER_MASK,
    Replica,
    ReplicaConfig,
    ReplyStatus,
    Status,
    decode_prepare_body,
)
from craton.sim import cluster as cluster_module
from craton.sim.clock import ClockFaults
from craton.sim.cluster import (
    LIVENESS_TICKS_DEFAULT,
    Cluster,
    MachineKind,
    ProcessFaults,
    RunResult,
    SwarmOptions,
)
from craton.sim.disk import DiskFaults
from craton.sim.network import NetworkFaults
from craton.sim.workload import (
    KEYS,
    TENANT_ID,
    WireAnswer,
    decode_answer,
    encode_submit,
    kv_is_read,
)

REPLICAS = 3
SEEDS = (7, 11, 19)  # scripted scenarios: a seed only picks path latencies and operations


def quiet_options(*, clients: int, requests: int, fault_ticks: int) -> SwarmOptions:
    """Three replicas with every drawn fault switched off."""
    return SwarmOptions(
        replica_count=REPLICAS,
        client_count=clients,
        requests_per_client=requests,
        fault_ticks=fault_ticks,
        liveness_ticks=LIVENESS_TICKS_DEFAULT,
        machine="kv",
        network=NetworkFaults.none(),
        disk=DiskFaults.none(),
        clocks=ClockFaults.none(),
        processes=ProcessFaults(),
    )


@attrs.define
class _Step:
    name: str
    condition: Callable[[], bool]
    action: Callable[[], None]


class Script:
    """Watches a cluster once per tick: runs every watcher, then fires the next step of the
    script once its condition holds (steps fire in order, each once)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.fired: dict[str, int] = {}  # step name -> the tick it fired at
        self._steps: list[_Step] = []
        self._watchers: list[Callable[[], None]] = []
        cluster.events.schedule(1, self._poll)

    def then(self, name: str, condition: Callable[[], bool], action: Callable[[], None]) -> None:
        self._steps.append(_Step(name, condition, action))

    def watch(self, watcher: Callable[[], None]) -> None:
        self._watchers.append(watcher)

    @property
    def done(self) -> bool:
        return not self._steps

    def _poll(self) -> None:
        for watcher in self._watchers:
            watcher()
        if self._steps and self._steps[0].condition():
            step = self._steps.pop(0)
            self.fired[step.name] = self.cluster.events.now
            step.action()
        self.cluster.events.schedule(1, self._poll)


def replica(cluster: Cluster, index: int) -> Replica:
    return cluster.nodes[index].replica


def requests_in(entries_replica: Replica, upto: int) -> list[tuple[int, int]]:
    """(client, request id) of each op below ``upto`` in ``entries_replica``'s journal."""
    assert entries_replica.first_op == 0, "expected a journal that still holds op 0"
    requests = []
    for op in range(upto):
        body = decode_prepare_body(entries_replica.entry(op).body)
        requests.append((body.client_id, body.request_number))
    return requests


def assert_clean(result: RunResult) -> None:
    assert result.result == "pass" and result.liveness == "pass", (
        f"expected a clean run (no violation, liveness passed), got {result.result} "
        f"(liveness {result.liveness}): {list(result.violations)}"
    )


def assert_converged(cluster: Cluster) -> None:
    """Every replica is up, normal, in one view, with one commit number and one log."""
    replicas = [node.replica for node in cluster.nodes]
    states = [(r.status, r.view, r.commit, r.head) for r in replicas]
    assert all(node.up for node in cluster.nodes), f"a replica is still down: {states}"
    assert len({(r.view, r.commit, r.head) for r in replicas}) == 1, (
        f"expected one view, commit and head on every replica, got {states}"
    )
    assert all(r.status is Status.NORMAL for r in replicas), f"not all normal: {states}"
    first = max(r.first_op for r in replicas)  # journals release ops after checkpoints
    hashes = {tuple(r.entry(op).hash for op in range(first, r.head)) for r in replicas}
    assert len(hashes) == 1, "expected every replica to hold the same log"
    history = cluster.checker.canonical
    assert all(r.entry(op).hash == history[op] for r in replicas for op in range(first, r.head))


# --- primary crash mid-pipeline -------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_primary_crash_mid_pipeline(seed: int) -> None:
    """§4.1 and §4.2: the primary crashes with several prepares in flight. Acknowledgements
    are held up on their way back, so the pipeline fills; the primary crashes right after
    preparing a new op, before that op's prepare reaches any backup. The new view keeps
    every op a client saw acknowledged and every op committed before the crash, at its
    position. Of the uncommitted ops, those the backups received survive and the newest is
    dropped: the survivors are a prefix of the old primary's pipeline, and every replica, the
    restarted old primary included, ends with the same log."""
    cluster = Cluster(seed, quiet_options(clients=3, requests=25, fault_ticks=1_200))
    script = Script(cluster)
    primary = replica(cluster, 0)
    prepared_tick: list[int] = []  # the tick each op of the primary's journal appeared at
    seen: dict[str, list[bytes]] = {}
    # (op, replica client id, wire request id, body) of each acknowledged request
    acknowledged: list[tuple[int, int, int, bytes]] = []

    def note_prepares() -> None:
        now = cluster.events.now
        del prepared_tick[primary.head :]  # (a primary's journal is never cut)
        prepared_tick.extend([now] * (primary.head - len(prepared_tick)))

    def hold_up_acks() -> None:
        for backup in (1, 2):
            cluster.network.clog(backup, 0, duration_ticks=300, delay_ticks=30)

    def mid_pipeline() -> bool:
        # At least three ops in flight: the newest prepared since the last look (its prepare
        # is still on the wire: latency is at least a tick), the oldest long enough ago that
        # the backups hold it (latency is at most 3 ticks without faults).
        pipeline = prepared_tick[primary.commit :]
        now = cluster.events.now
        return len(pipeline) >= 3 and pipeline[-1] == now and pipeline[0] <= now - 4

    def crash_primary() -> None:
        seen["committed"] = [primary.entry(op).hash for op in range(primary.commit)]
        seen["pipeline"] = [primary.entry(op).hash for op in range(primary.commit, primary.head)]
        acknowledged.extend(
            (op.position, op.client_id, op.request_number, op.body)
            for client in cluster.clients
            for op in client.history
            if op.position is not None
        )
        cluster.crash(0, down_ticks=300)

    script.watch(note_prepares)
    script.then("clients at work", lambda: primary.commit >= 8, hold_up_acks)
    script.then("mid-pipeline", mid_pipeline, crash_primary)
    result = cluster.run()

    assert script.done, f"the script did not finish: fired {script.fired}"
    assert_clean(result)
    assert_converged(cluster)
    final = replica(cluster, 1)
    assert final.view >= 1, f"expected a view change away from replica 0, view {final.view}"
    committed, pipeline = seen["committed"], seen["pipeline"]
    history = cluster.checker.canonical  # the committed history, every op of it
    assert final.commit == final.head == len(history), (final.commit, final.head, len(history))
    assert history[: len(committed)] == committed, (
        "expected every op committed before the crash at its position in the new view"
    )
    assert acknowledged, "expected clients to have seen acknowledgements before the crash"
    for position, client_id, request_id, operation in acknowledged:
        body = decode_prepare_body(cluster.checker.bodies[position])
        # A write is logged under the client's session (``session << 32 | wire id``); a read
        # under the gateway's own read session, numbered by the gateway: only its operation
        # identifies it.
        read = kv_is_read(operation)
        number = None if read else body.request_number & NUMBER_MASK
        found = (body.client_id, number, body.operation)
        expected = (READ_CLIENT_ID, None, operation) if read else (client_id, request_id, operation)
        assert found == expected, (
            f"acknowledged request {request_id} of client {client_id} expected at op "
            f"{position}, found {body.request_number:#x} of client {body.client_id}"
        )
    start = len(committed)
    survivors = [
        offset
        for offset, op_hash in enumerate(pipeline)
        if start + offset < final.head and history[start + offset] == op_hash
    ]
    assert survivors == list(range(len(survivors))), (
        f"expected the surviving in-flight ops to be a prefix of the pipeline, got {survivors}"
    )
    assert 0 < len(survivors) < len(pipeline), (
        f"expected some of the {len(pipeline)} in-flight ops to survive (those the backups "
        f"held) and the newest to be dropped (only the old primary held it): "
        f"{len(survivors)} kept"
    )


# --- view change during a partition ---------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_view_change_during_partition(seed: int) -> None:
    """§4.2: the primary and one client are cut off from the two backups. The backups elect
    replica 1 in view 1 and commit the other client's requests; the old primary goes on
    preparing its client's requests in view 0 but can never commit them without a quorum.
    After the partition heals it joins the new view, the ops it prepared while cut off are
    replaced by the new view's log, and its client's requests complete."""
    cluster = Cluster(seed, quiet_options(clients=2, requests=30, fault_ticks=1_500))
    script = Script(cluster)
    old = replica(cluster, 0)
    partition_ticks = 500
    seen: dict[str, int] = {"old_commit_max": 0, "old_head_max": 0, "majority_commit_max": 0}
    stranded: dict[int, bytes] = {}  # op -> hash of what the old primary prepared cut off
    near_client = cluster.clients[0]  # cut off with the old primary

    def cut_off_primary() -> None:
        seen["commit_at_cut"], seen["head_at_cut"] = old.commit, old.head
        near = [0, near_client.endpoint_id]
        cluster.network.partition(near, one_way=False, duration_ticks=partition_ticks)

    def during_partition() -> None:
        if "cut off" not in script.fired:
            return
        if cluster.network.partition_active is None:
            return
        seen["old_commit_max"] = max(seen["old_commit_max"], old.commit)
        seen["old_head_max"] = max(seen["old_head_max"], old.head)
        seen["old_view_max"] = max(seen.get("old_view_max", 0), old.view)
        for op in range(max(seen["head_at_cut"], old.first_op), old.head):
            stranded[op] = old.entry(op).hash
        for index in (1, 2):
            backup = replica(cluster, index)
            if backup.status is Status.NORMAL and backup.view >= 1:
                seen["majority_commit_max"] = max(seen["majority_commit_max"], backup.commit)
                seen["new_view"] = backup.view

    script.watch(during_partition)

    # Cut once work is under way, when no op of the near client is in flight, so that its
    # next request is prepared cut off. An op of the other client in flight then is below
    # the head at the cut, and the acknowledgements for it are lost with the partition (it
    # is checked at delivery): the old primary commits nothing after the cut. A write of the
    # near client is in flight under its own client id; a read under the gateway's read
    # session, shared by both clients: with a read in flight, wait too.
    def near_client_idle() -> bool:
        in_flight = [client for client, _ in old._uncommitted]
        return (
            old.commit >= 6
            and near_client.client_id not in in_flight
            and READ_CLIENT_ID not in in_flight
        )

    script.then("cut off", near_client_idle, cut_off_primary)
    result = cluster.run()

    assert "cut off" in script.fired, f"the partition never started: fired {script.fired}"
    assert_clean(result)
    assert_converged(cluster)
    at_cut = seen["commit_at_cut"]
    assert seen.get("new_view", 0) >= 1, "expected the majority side to elect a new primary"
    assert seen["majority_commit_max"] > at_cut, (
        f"expected the new view to commit past {at_cut} during the partition, "
        f"got {seen['majority_commit_max']}"
    )
    assert seen["old_head_max"] > seen["head_at_cut"], (
        "expected the old primary to prepare its client's requests while cut off"
    )
    assert seen["old_commit_max"] == at_cut, (
        f"the old primary committed without a quorum: {at_cut} -> {seen['old_commit_max']}"
    )
    assert seen["old_view_max"] == 0, "the old primary cannot learn of the new view while cut off"
    assert old.view >= 1 and old.view == replica(cluster, 1).view, (
        f"expected the old primary to rejoin the new view, got view {old.view}"
    )
    history = cluster.checker.canonical  # converged: every op of every journal committed
    assert stranded and all(history[op] != h for op, h in stranded.items()), (
        f"expected the ops {sorted(stranded)} the old primary prepared in view 0 while cut off "
        "to be replaced by the new view's log"
    )
    assert near_client.done and any(op.position is not None for op in near_client.history), (
        "expected the cut-off client's requests to complete after the partition healed"
    )


# --- a replica restarting during a view change ----------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_replica_restarts_during_view_change(seed: int) -> None:
    """§4.2 and §4.3: the primary crashes; while the backups change views, replica 2 (having
    voted) crashes too and restarts. Craton keeps the view in the superblock instead of
    running the paper's recovery protocol, so the restarted replica comes back in the view it
    voted in, never an earlier one, and moves on to a later view change. Replica 1 cannot
    finish the view change alone; once replica 2 is back the two of them establish a view
    (before the old primary returns) and the cluster ends in one view with one log."""
    cluster = Cluster(seed, quiet_options(clients=2, requests=20, fault_ticks=1_500))
    script = Script(cluster)
    voter = replica(cluster, 2)
    seen: dict[str, int] = {}

    def crash_primary() -> None:
        seen["commit_at_crash"] = max(node.replica.commit for node in cluster.nodes)
        cluster.crash(0, down_ticks=600)

    def voting() -> bool:
        return voter.status is Status.VIEW_CHANGE and voter.view >= 1 and voter.persisted_view >= 1

    def crash_voter() -> None:
        seen["voter_view"] = voter.persisted_view
        seen["other_commit_at_crash"] = replica(cluster, 1).commit
        seen["other_commit_max"] = replica(cluster, 1).commit
        cluster.crash(2, down_ticks=150)

    def alone() -> None:
        if "voter crashed" in script.fired and "voter restarted" not in script.fired:
            other = replica(cluster, 1).commit
            seen["other_commit_max"] = max(seen["other_commit_max"], other)

    def back() -> bool:
        node = cluster.nodes[2]
        return node.up and node.incarnation == 1 and node.replica.status is not Status.LOADING

    def restarted() -> None:
        seen["voter_view_after_restart"] = cluster.nodes[2].replica.view

    def view_established() -> bool:
        pair = [replica(cluster, 1), cluster.nodes[2].replica]
        return all(r.status is Status.NORMAL for r in pair) and pair[0].view == pair[1].view

    def record_view() -> None:
        seen["established_view"] = replica(cluster, 1).view
        seen["primary_down"] = int(not cluster.nodes[0].up)

    script.watch(alone)
    script.then("primary crashed", lambda: voter.commit >= 6, crash_primary)
    script.then("voter crashed", voting, crash_voter)
    script.then("voter restarted", back, restarted)
    script.then("view established", view_established, record_view)
    result = cluster.run()

    assert script.done, f"the script did not finish: fired {script.fired}"
    assert_clean(result)
    assert_converged(cluster)
    assert seen["other_commit_max"] == seen["other_commit_at_crash"], (
        "replica 1 committed alone while replicas 0 and 2 were down: "
        f"{seen['other_commit_at_crash']} -> {seen['other_commit_max']}"
    )
    assert seen["voter_view_after_restart"] >= seen["voter_view"], (
        f"replica 2 voted in view {seen['voter_view']} but restarted in view "
        f"{seen['voter_view_after_restart']}"
    )
    assert seen["established_view"] > seen["voter_view"], (
        f"expected the view change to move past view {seen['voter_view']} after the restart, "
        f"established view {seen['established_view']}"
    )
    assert seen["primary_down"], "expected the view established while replica 0 was down"
    assert replica(cluster, 0).commit > seen["commit_at_crash"], (
        "expected the cluster to commit more after the view change"
    )


# --- a duplicate client request after a view change -----------------------------------------


@attrs.frozen
class Answered:
    replica: int
    view: int
    request_id: int
    reply: bytes


class ReplyWitness(Replica):
    """An unmodified replica that records each reply it answers a request with directly
    (from its client table) instead of preparing the request."""

    def __init__(
        self, config: ReplicaConfig, machine: StateMachine, prng: Prng, answered: list[Answered]
    ) -> None:
        super().__init__(config, machine, prng)
        self._answered = answered

    def _on_request(self, request: ClientRequest) -> list[Effect]:
        effects = super()._on_request(request)
        for effect in effects:
            if isinstance(effect, Reply) and effect.body[:1] == bytes([ReplyStatus.OK]):
                self._answered.append(
                    Answered(self.config.replica_id, self.view, effect.request_id, effect.body)
                )
        return effects


def witnesses(answered: list[Answered]) -> Callable[[ReplicaConfig, StateMachine, Prng], Replica]:
    def make(config: ReplicaConfig, machine: StateMachine, prng: Prng) -> Replica:
        return ReplyWitness(config, machine, prng, answered)

    return make


def put_operation(prng: Prng, known_position: int) -> bytes:
    del known_position
    """A kv write: the scenario needs its last request to be one (a read is run again when
    retried, not answered from the client table)."""
    return kv_machine.encode_put(prng.choice(KEYS), prng.random_bytes(prng.between(0, 16)))


@pytest.mark.parametrize("seed", SEEDS)
def test_duplicate_request_after_view_change(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """§4.1 (the client table) and §4.2: the primary commits a client's last request and
    crashes before its reply reaches the client, and the new primary's replies to the client
    are held up for a while, so the reply it sends when it commits the op again comes late.
    The client times out and retries the same request id; the new primary, which learned the
    op in the view change, answers the retry from its client table with the very reply the
    op produced, without preparing it again. A further duplicate, sent after the client is
    done, gets the same reply (now from the new primary's gateway, which kept the reply it
    passed on) and is not prepared either. The op is applied once."""
    monkeypatch.setitem(
        cluster_module.MACHINES, "kv", MachineKind(KvMachine, put_operation, kv_is_read)
    )
    answered: list[Answered] = []
    requests = 4
    options = quiet_options(clients=1, requests=requests, fault_ticks=1_200)
    cluster = Cluster(seed, options, replica_factory=witnesses(answered))
    script = Script(cluster)
    client = cluster.clients[0]
    old, new = replica(cluster, 0), replica(cluster, 1)
    seen: dict[str, int] = {}
    delivered: list[tuple[int, int, WireAnswer]] = []  # (tick, replica, answer) to the client
    endpoint = cluster.network.endpoint(client.endpoint_id)

    def sniff(src: int, payload: bytes) -> None:
        delivered.append((cluster.events.now, src, decode_answer(payload)))
        client._on_receive(src, payload)

    endpoint.set_receiver(sniff)

    def last_request() -> int | None:
        """The wire request id of the client's last request, once it sent it."""
        sent = list(client.sent)
        return sent[requests - 1] if len(sent) >= requests else None

    def client_requests(journal: Replica, upto: int) -> list[tuple[int, int]]:
        """(client, wire request id) of each op below ``upto`` in ``journal``."""
        return [(c, number & NUMBER_MASK) for c, number in requests_in(journal, upto)]

    def committed_on_old() -> bool:
        request_id = last_request()
        committed = client_requests(old, old.commit)
        return request_id is not None and (client.client_id, request_id) in committed

    def crash_primary() -> None:
        request_id = last_request()
        assert request_id is not None
        seen["request_id"] = request_id
        seen["op"] = client_requests(old, old.commit).index((client.client_id, request_id))
        seen["acknowledged_before"] = len(client.history)
        cluster.crash(0, down_ticks=400)
        cluster.network.clog(1, client.endpoint_id, duration_ticks=150, delay_ticks=500)
        # every answer held up by the clog is delivered by then (latency is at most 3 ticks)
        seen["clog_drained"] = cluster.events.now + 150 + 500 + 3

    def send_duplicate() -> None:
        seen["answered_before_duplicate"] = len(answered)
        seen["head_before_duplicate"] = new.head
        seen["cached_before_duplicate"] = cluster.gateway_counts.replies_from_cache
        seen["duplicate_sent"] = cluster.events.now
        request_id = seen["request_id"]
        body = client.sent[request_id]
        submit = Submit(0, SubmitKind.WRITE, TENANT_ID, client.wire_client_id, request_id, body)
        endpoint.send(1, encode_submit(submit))

    def duplicate_answers() -> list[WireAnswer]:
        since = seen["duplicate_sent"]
        return [
            answer
            for tick, src, answer in delivered
            if tick > since and src == 1 and answer.request_id == seen["request_id"]
        ]

    script.then("committed in view 0", committed_on_old, crash_primary)
    # Once the client is done and the clog has drained: an answer delivered after the
    # duplicate is sent is the duplicate's.
    drained = lambda: client.done and cluster.events.now > seen["clog_drained"]  # noqa: E731
    script.then("client done", drained, send_duplicate)
    script.then("duplicate answered", lambda: bool(duplicate_answers()), lambda: None)
    result = cluster.run()

    assert script.done, f"the script did not finish: fired {script.fired}"
    assert_clean(result)
    assert_converged(cluster)
    request_id, op = seen["request_id"], seen["op"]
    assert seen["acknowledged_before"] == requests - 1, "the reply must not reach the client"
    assert new.view >= 1 and new.is_primary, f"expected replica 1 primary, view {new.view}"
    assert client_requests(new, new.commit).count((client.client_id, request_id)) == 1, (
        f"expected request {request_id} committed exactly once"
    )
    assert new.head == seen["head_before_duplicate"], "the duplicate was prepared again"
    acknowledged = [h for h in client.history if h.request_number == request_id]
    assert len(acknowledged) == 1 and acknowledged[0].position == op, (
        f"expected the client to learn op {op} for its retried request, got {acknowledged}"
    )
    retries = answered[: seen["answered_before_duplicate"]]
    assert retries and {a.request_id & NUMBER_MASK for a in retries} == {request_id}, (
        f"expected the client's retries answered from the new primary's table: {retries}"
    )
    for cached in retries:
        assert cached.replica == 1 and cached.view >= 1, f"answered by {cached}"
        assert cached.reply[1:9] == op.to_bytes(8, "little"), f"expected op {op}: {cached}"
        assert cached.reply[9:] == acknowledged[0].reply, (
            "expected the cached reply to be the reply the op produced"
        )
    # The late duplicate: answered by the new primary's gateway from the reply it kept, so
    # it reached neither the replica's client table nor the log.
    assert answered[seen["answered_before_duplicate"] :] == [], "the duplicate reached the replica"
    assert cluster.gateway_counts.replies_from_cache > seen["cached_before_duplicate"], (
        "expected the late duplicate answered from the gateway's reply cache"
    )
    duplicates = duplicate_answers()
    assert [(a.kind, a.code, a.op, a.reply) for a in duplicates] == [
        (SubmitKind.WRITE, None, op, acknowledged[0].reply)
    ], f"expected the late duplicate answered with op {op} and the op's reply: {duplicates}"


# --- a restarted backup is settled (``/ready``) only once it caught up ----------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_a_restarted_backup_is_settled_only_once_caught_up(seed: int) -> None:
    """§4.3 (a replica rejoining after a crash): a backup that was down while the others
    committed comes back in normal status with a log that ends short of the view's. It is
    not ``settled`` (what the node's ``/ready`` reports) until it has heard the primary and
    committed as far as the primary then announced: a rolling restart that waits for it
    never takes a second replica away while the first still lacks the view's log."""
    cluster = Cluster(seed, quiet_options(clients=3, requests=30, fault_ticks=1_500))
    script = Script(cluster)
    seen: dict[str, int] = {}
    unsettled_ticks: list[int] = []
    settled_too_early: list[tuple[int, int]] = []

    def crash_backup() -> None:
        cluster.crash(2, down_ticks=200)

    def back() -> bool:
        node = cluster.nodes[2]
        return node.up and node.incarnation == 1 and node.replica.status is Status.NORMAL

    def restarted() -> None:
        seen["primary_commit"] = max(node.replica.commit for node in cluster.nodes)
        seen["own_commit"] = cluster.nodes[2].replica.commit

    def watch_backup() -> None:
        node = cluster.nodes[2]
        if "backup restarted" not in script.fired or not node.up:
            return
        if not node.replica.settled:
            unsettled_ticks.append(cluster.events.now)
        elif node.replica.commit < seen["primary_commit"]:
            settled_too_early.append((node.replica.commit, seen["primary_commit"]))

    script.watch(watch_backup)
    script.then("clients at work", lambda: replica(cluster, 0).commit >= 10, crash_backup)
    script.then("backup restarted", back, restarted)
    result = cluster.run()

    assert script.done, f"the script did not finish: fired {script.fired}"
    assert_clean(result)
    assert_converged(cluster)
    assert seen["own_commit"] < seen["primary_commit"], (
        f"expected the restarted backup behind the primary, {seen}"
    )
    assert unsettled_ticks, "expected the behind backup to be unsettled for a while"
    assert not settled_too_early, f"settled before catching up: {settled_too_early[:3]}"
    assert all(node.replica.settled for node in cluster.nodes), "expected all settled at the end"
