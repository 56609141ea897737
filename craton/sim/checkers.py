"""The simulator's checkers: they watch the replicas from outside and judge what clients saw.

Nothing here is part of a replica: the checkers read a replica's journal, commit number,
view and state machine after every step, and keep their own record of the one canonical
history. On every commit they check:

- the hash chain: each newly committed entry's hash is the chain hash of its body and the
  hash of the op before it;
- one history: an op committed on two replicas has the same hash on both;
- views never go backwards on a replica, even across restarts (the view is persisted), and
  commit numbers never go backwards within one incarnation (a restarted replica re-applies
  from its checkpoint, and every op it commits again is checked against the history);
- state machine digests agree between replicas at equal commit numbers;
- checkpoint states (state machine snapshot and client table, taken at every multiple of
  the checkpoint interval) are byte-identical between replicas at the same op: equal
  SHA-256 digests, and the chain hash the committed history has there.

At the end of a run: every committed op is a request a client actually sent, the client
histories are linearizable against the committed log (``craton.sim.linearizability``):
acknowledged ops committed where they were told, real-time order respected, and replies
equal to what replaying the log gives; and, for a machine with an independent model
(``craton.sim.models``), every reply of that replay is the one the model predicts.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence

from craton.core.gateway import READ_CLIENT_ID
from craton.core.record import GENESIS_HASH, chain_hash
from craton.core.state_machine import StateMachine
from craton.core.vsr import codec
from craton.core.vsr.replica import (
    NUMBER_MASK,
    SESSION_SHIFT,
    Replica,
    Status,
    decode_prepare_body,
)
from craton.core.wire.replica import (
    DoViewChange,
    PrepareOk,
    RecoveryResponse,
    StartView,
    StartViewChange,
)
from craton.sim.linearizability import Committed, Operation, check_history
from craton.sim.models import Model
from craton.sim.workload import SimClient

VIOLATIONS_MAX = 50
NO_OP = b"\x00craton-no-op"  # a committed op the state machine never saw (see finish)
NO_OP_ID_BASE = 1 << 63  # history ids of such ops: above every request id


class ClientTableModel:
    """Which committed requests reached the state machine, by the client table's rules,
    modelled apart from the replicas: a registration (request id 0) opens a session (the
    registration's op) whose numbers start above its floor (its body), evicting the least
    recently used client when ``table_max`` are open; a request applies only under its client's
    current session, above its last number. Call it on every committed op, in order."""

    def __init__(self, table_max: int) -> None:
        self._table_max = table_max
        self._sessions: dict[int, list[int]] = {}  # client -> [session, last number, last op]

    def __call__(self, op: int, client: int, request_id: int, operation: bytes = b"") -> bool:
        sessions = self._sessions
        if request_id == 0:
            if client not in sessions and len(sessions) >= self._table_max:
                evicted = min(sessions, key=lambda c: (sessions[c][2], c))
                del sessions[evicted]
            # The registration's body is its floor: numbers below it never apply.
            floor = int.from_bytes(operation, "little") if operation else 1
            sessions[client] = [op, max(0, floor - 1), op]
            return False
        current = sessions.get(client)
        session, number = request_id >> SESSION_SHIFT, request_id & NUMBER_MASK
        if current is None or current[0] != session or number <= current[1]:
            return False
        current[1], current[2] = number, op
        return True


class WithNoOps:
    """The state machine as the history sees it: registrations, and requests the client
    table refused, are no-ops (the replica answers them itself)."""

    def __init__(self, inner: StateMachine) -> None:
        self.inner = inner
        self.name = inner.name

    def apply(self, op: int, body: bytes) -> bytes:
        return b"" if body == NO_OP else self.inner.apply(op, body)

    def digest(self) -> bytes:
        return self.inner.digest()

    def snapshot(self) -> bytes:
        return self.inner.snapshot()


class Checker:
    def __init__(
        self,
        replica_count: int,
        make_machine: Callable[[], StateMachine],
        client_table_max: int,
        checkpoint_interval: int = 0,
        make_model: Callable[[], Model] | None = None,
    ) -> None:
        self._checkpoint_interval = checkpoint_interval
        self._make_model = make_model  # the machine's independent model, where it has one
        self.model_replies_checked = 0
        self.checkpoints_checked = 0
        self.checkpoint_states_checked = 0
        self._checkpoint_digests: dict[int, bytes] = {}  # op -> digest of the state there
        self._checkpoint_states_seen = [0] * replica_count  # highest op checked, per replica
        self._make_machine = make_machine
        self._client_table_max = client_table_max
        self.violations: list[str] = []
        self.canonical: list[bytes] = []  # hash of each committed op
        self.commit_views: list[int] = []  # the view each op was first seen committed in
        self.bodies: list[bytes] = []  # prepare body of each committed op
        self._committed_seen = [0] * replica_count
        self._view_max = [0] * replica_count
        self._persisted_max = [0] * replica_count
        self._acked: list[dict[int, bytes]] = [{} for _ in range(replica_count)]  # op -> hash
        self._digests: dict[int, bytes] = {}  # commit number -> state machine digest
        self.commits_checked = 0

    def fail(self, message: str) -> None:
        if len(self.violations) < VIOLATIONS_MAX:
            self.violations.append(message)

    def restarted(self, index: int) -> None:
        self._committed_seen[index] = 0
        self._checkpoint_states_seen[index] = 0
        self._view_max[index] = 0  # in memory it starts again from the persisted view

    def wiped(self, index: int) -> None:
        """Replica ``index``'s disk was wiped: its persisted view is gone with it (what keeps
        it safe then is that it rejoins only through a quorum of the others)."""
        self._persisted_max[index] = 0
        self._acked[index].clear()  # what it acknowledged went with the disk

    def sent(self, index: int, replica: Replica, payload: bytes) -> None:
        """Persist before send: a message may only claim what its sender has made durable.

        A view-change vote needs its view in the superblock; a do-view-change or start-view
        also its log view; a prepare-ok needs the op on disk. (The replica object is still
        the one that emitted the message: the driver sends effects as it runs them.)"""
        message = codec.decode_message(payload)
        self._check_quorum_member(index, replica, message)
        self._check_vote_keeps_acks(index, replica, message)
        if isinstance(message, StartView):
            self._check_start_view(index, message)
        problem = None
        match message:
            case StartViewChange() | DoViewChange() if message.view > replica.persisted_view:
                problem = f"view {message.view} before persisting it ({replica.persisted_view})"
            case DoViewChange() if message.log_view > replica.persisted_log_view:
                problem = f"log view {message.log_view} before persisting it"
            case StartView() if message.view > replica.persisted_log_view:
                problem = f"view {message.view}'s log before persisting it as its log view"
            case PrepareOk() if message.op >= replica.log.durable:
                problem = f"op {message.op} before it was durable ({replica.log.durable})"
            case _:
                return
        self.fail(f"replica {index}: sent {type(message).__name__} for {problem}")

    def _check_vote_keeps_acks(self, index: int, replica: Replica, message: object) -> None:
        """A replica's vote in a view change carries a log holding every op it acknowledged
        that is committed: a commit counted its acknowledgement, so a view change that can
        be decided by its log must find the op there (however the replica lost and rebuilt
        its log in between: damage, a cut, a wipe, a restart)."""
        acked = self._acked[index]
        if isinstance(message, PrepareOk):
            if replica.first_op <= message.op < replica.head:
                acked[message.op] = replica.entry(message.op).hash
            return
        if not isinstance(message, DoViewChange):
            return
        committed = len(self.canonical)
        for op, op_hash in acked.items():
            if message.head <= op < committed and self.canonical[op] == op_hash:
                self.fail(
                    f"replica {index}: DoViewChange for view {message.view} ends at op "
                    f"{message.head}, without op {op}, which it acknowledged and is committed"
                )
                return

    def _check_quorum_member(self, index: int, replica: Replica, message: object) -> None:
        """A replica that may lack ops it once held (recovering: damage, a lost disk, an
        unfinished recovery) is part of no quorum that vouches for a log: it acknowledges no
        prepare, sends no log in a view change and answers no other replica's recovery
        until it has its view's log again. (A ``StartViewChange`` names no log: a recovering
        replica that promised a later view than the others are in sends one to move them.)"""
        if not (replica.recovering or replica.status is Status.RECOVERING):
            return
        if isinstance(message, PrepareOk | DoViewChange | RecoveryResponse):
            self.fail(
                f"replica {index}: sent {type(message).__name__} while recovering "
                "(a recovering replica must not count towards any quorum)"
            )

    def _check_start_view(self, index: int, start: StartView) -> None:
        """A new view's log holds every op committed in an earlier view: the StartView's
        head is past each of them, and its suffix agrees with the committed history. (A
        stale view, formed from messages of a view that is over, may lack ops committed in
        a later view: no replica of the later view takes part in it, so it commits nothing.)"""
        committed = bisect.bisect_left(self.commit_views, start.view)
        if start.head < committed:
            self.fail(
                f"replica {index}: StartView of view {start.view} ends at op {start.head}, "
                f"but ops below {committed} were committed"
            )
            return
        for entry in start.entries:
            if entry.op < committed and entry.hash != self.canonical[entry.op]:
                self.fail(
                    f"replica {index}: StartView of view {start.view} carries op {entry.op} "
                    "unlike the one committed there"
                )
                return

    def agree_with_primary(self, index: int, replica: Replica, primary: Replica) -> None:
        """A backup that installed its view's log holds the view's log: on every op both
        hold past the backup's commit number (the committed ones are checked against the
        history), its entry is its primary's. State transfer brings only what the view's
        primary vouches for."""
        if replica is primary or not _installed(replica) or not _installed(primary):
            return
        if primary.view != replica.view or not primary.is_primary:
            return
        low = max(replica.commit, replica.first_op, primary.first_op)
        for op in range(low, min(replica.head, primary.head)):
            if replica.entry(op).hash != primary.entry(op).hash:
                self.fail(
                    f"replica {index}: holds an op {op} in view {replica.view} that its "
                    f"primary (replica {primary.config.replica_id}) does not"
                )
                return

    def observe(self, index: int, replica: Replica) -> None:
        if replica.status is Status.LOADING:
            return  # its view and journal are not known until its log is recovered
        if replica.view < self._view_max[index]:
            self.fail(
                f"replica {index}: view went back from {self._view_max[index]} "
                f"to {replica.view} within one run of the process"
            )
        if replica.persisted_view < self._persisted_max[index]:
            self.fail(
                f"replica {index}: persisted view went back from "
                f"{self._persisted_max[index]} to {replica.persisted_view}"
            )
        self._view_max[index] = max(self._view_max[index], replica.view)
        self._persisted_max[index] = max(self._persisted_max[index], replica.persisted_view)
        self._check_checkpoint(index, replica)
        self._check_checkpoint_states(index, replica)
        seen = self._committed_seen[index]
        if replica.commit < seen:
            self.fail(f"replica {index}: commit went back from {seen} to {replica.commit}")
            return
        if replica.commit == seen:
            return
        for op in range(max(seen, replica.first_op), replica.commit):
            self._check_commit(index, replica, op)
        self._committed_seen[index] = replica.commit
        digest = replica.machine.digest()
        known = self._digests.setdefault(replica.commit, digest)
        if known != digest:
            self.fail(f"replica {index}: state machine digest differs at commit {replica.commit}")

    def _check_checkpoint(self, index: int, replica: Replica) -> None:
        """A sealed checkpoint is at an agreed op (a multiple of the interval) and vouches
        for the chain hash the one committed history has there."""
        checkpoint = replica.log.checkpoint
        if checkpoint is None or checkpoint.position == 0:
            return
        position = checkpoint.position
        if self._checkpoint_interval and position % self._checkpoint_interval:
            self.fail(f"replica {index}: checkpoint at op {position}, not an agreed op")
        if position - 1 < len(self.canonical):
            self.checkpoints_checked += 1
            if self.canonical[position - 1] != checkpoint.chain_hash:
                self.fail(
                    f"replica {index}: checkpoint at op {position} seals a chain hash the "
                    "committed history does not have"
                )

    def _check_checkpoint_states(self, index: int, replica: Replica) -> None:
        """The states replicas write at the same checkpoint op are byte-identical (equal
        digests) and carry the chain hash the committed history has there. A state's digest
        is known once its file is written (its parts are produced as they are written)."""
        seen = self._checkpoint_states_seen[index]
        for op, state in replica.checkpoints.items():
            if op <= seen or op - 1 >= len(self.canonical) or state.digest is None:
                continue  # checked already, or once the checker knows the op's hash
            self._checkpoint_states_seen[index] = max(self._checkpoint_states_seen[index], op)
            self.checkpoint_states_checked += 1
            known = self._checkpoint_digests.setdefault(op, state.digest)
            if known != state.digest:
                self.fail(
                    f"replica {index}: checkpoint state at op {op} differs from another "
                    "replica's at the same op (expected byte-identical states)"
                )
            if self.canonical[op - 1] != state.chain_hash:
                self.fail(
                    f"replica {index}: checkpoint state at op {op} names a chain hash the "
                    "committed history does not have"
                )

    def _check_commit(self, index: int, replica: Replica, op: int) -> None:
        self.commits_checked += 1
        entry = replica.entry(op)
        if op > len(self.canonical):
            self.fail(f"replica {index}: committed op {op} beyond the known history")
            return
        prev = GENESIS_HASH if op == 0 else self.canonical[op - 1]
        if entry.op != op or entry.hash != chain_hash(prev, op, entry.body):
            self.fail(f"replica {index}: committed op {op} breaks the hash chain")
        if op == len(self.canonical):
            self.canonical.append(entry.hash)
            # The view it was first seen committed in: ops commit in order, so a running max.
            view = max(replica.view, self.commit_views[-1] if self.commit_views else 0)
            self.commit_views.append(view)
            self.bodies.append(entry.body)
        elif self.canonical[op] != entry.hash:
            self.fail(
                f"replica {index}: committed op {op} differs from the op committed "
                "there before (two histories)"
            )

    def finish(self, clients: Sequence[SimClient], replicas: Sequence[Replica]) -> None:
        """The end-of-run checks: committed ops were sent, and histories are linearizable.

        Which committed ops reached the state machine is worked out here independently of
        the replicas, from the rules of the client table: a registration opens a session
        (evicting the least recently used one when the table is full); a request is applied
        only under its client's current session and above its last number. Registrations and
        ops that were not applied enter the history as no-ops with ids of their own and an
        unknown outcome, so positions stay dense and replies are judged for applied ops."""
        del replicas
        by_id = {client.client_id: client for client in clients}
        committed: list[Committed] = []
        operations = [op for client in clients for op in client.history]
        reads_at = {  # acknowledged reads, by the op they were told
            operation.position: operation
            for client in clients
            for operation in client.history
            if operation.position is not None and operation.body in client.read_bodies
        }
        read_bodies = {body for client in clients for body in client.read_bodies}
        applies = ClientTableModel(self._client_table_max)
        for op, raw in enumerate(self.bodies):
            body = decode_prepare_body(raw)
            if body.client_id == READ_CLIENT_ID:
                applied = applies(op, body.client_id, body.request_number, body.operation)
                self._read_entry(op, body.operation, applied, reads_at, read_bodies, committed)
                entry = committed[-1]
                if entry.request_number >= NO_OP_ID_BASE:  # an outcome no one saw
                    operations.append(Operation(*entry.key, entry.body, 0))
                continue
            if body.client_id not in by_id:
                self.fail(f"op {op}: committed for client {body.client_id}, which never ran")
                continue
            if applies(op, body.client_id, body.request_number, body.operation):
                number = body.request_number & NUMBER_MASK  # the wire request id
                committed.append(Committed(op, body.client_id, number, body.operation))
                continue
            key = NO_OP_ID_BASE + op
            committed.append(Committed(op, body.client_id, key, NO_OP))
            operations.append(Operation(body.client_id, key, NO_OP, 0, None, None, None))
        for problem in check_history(
            operations, committed, lambda: WithNoOps(self._make_machine())
        ):
            self.fail(problem)
        if self._make_model is not None:
            self._check_model(committed, self._make_model())

    def _read_entry(
        self,
        op: int,
        operation: bytes,
        applied: bool,
        reads_at: dict[int, Operation],
        read_bodies: set[bytes],
        committed: list[Committed],
    ) -> None:
        """An op of the gateway's read session: the read a client was told ran there, or
        one more execution of a read some client sent (a retried read runs again), whose
        outcome no one saw; applied all the same, so a read that changed state would show."""
        acknowledged = reads_at.get(op)
        if applied and acknowledged is not None and acknowledged.body == operation:
            key = (acknowledged.client_id, acknowledged.request_number)
            committed.append(Committed(op, *key, operation))
            return
        if applied and operation not in read_bodies:
            self.fail(f"op {op}: a read no client sent was applied")
        body = operation if applied else NO_OP
        committed.append(Committed(op, READ_CLIENT_ID, NO_OP_ID_BASE + op, body))

    def _check_model(self, committed: Sequence[Committed], model: Model) -> None:
        """The machine's reply to every applied op of the committed log is the one the
        independent model predicts (``craton.sim.models``): the machine's semantics are
        judged by a second statement of them, not by a replay of themselves."""
        machine = self._make_machine()
        for entry in committed:
            if entry.body == NO_OP:
                continue
            reply = machine.apply(entry.position, entry.body)
            problem = model.check(entry.position, entry.body, reply)
            if problem is not None:
                self.fail(f"op {entry.position}: the {machine.name} machine {problem}")
                return
        self.model_replies_checked += model.judged


def _installed(replica: Replica) -> bool:
    """Normal status with its view's log installed (a backup then holds the view's log)."""
    return (
        replica.status is Status.NORMAL
        and not replica.installing
        and replica.log_view == replica.view
        and not replica.recovering
    )
