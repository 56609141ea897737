"""The client gateway: sessions, admission, the reply cache and redirects, as a pure machine.

``Gateway`` stands between client connections and the VSR ``Replica``. It is the machine a
``Driver`` runs, in production (``craton.net.node``) and in the simulator
(``craton.sim.cluster``) alike: replica inputs (ticks, peer messages, disk completions) go
through it to its replica; a connection's requests come in as ``Submit`` inputs and are
answered by ``Answer`` effects with the same token. It performs no I/O and reads no clock.

Client sessions (the replica's client table gives exactly-once semantics):
- A wire client (``Submit.client_id``, u128, in a tenant) maps to one replica client id,
  a stable 64-bit hash of both (``replica_client_id``), so a client that reconnects — to
  this replica or to one restarted on the same data — finds its session again. A new client
  registers first (replica request number 0; the op it commits at is its session).
- A write with wire request id ``r`` is the replica request ``session << 32 | r``: a retry
  with the same ``r`` is answered from the replica's cached reply (or this gateway's
  ``WRITE_REPLIES_KEPT`` most recent replies of the client) and never applied twice. Request
  ids of writes are therefore limited to ``1..REQUEST_NUMBER_MAX``.
- Reads go through the log as well (each is applied at its own op, so reads are
  linearizable), in one session the gateway owns (``READ_CLIENT_ID``), numbered by the
  gateway: a retried read is simply executed again.
- A write refused because its session expired (more than ``client_table_max`` newer
  clients) is answered ``SESSION_EXPIRED``, which a client does not retry: an earlier
  attempt of that request may have been applied.
- Exactly once across sessions: a session is opened only by a write (a handshake opens
  none), and registered with a *floor* (the registration's body): one above the highest
  retry waiting for it (a write marked ``FLAG_RETRY`` by its client, or one its connection
  forwarded before: ``RequestFreshness``), else the lowest first attempt. The replica
  refuses ids below the floor in that session, so a retry of a request that an evicted
  session may have applied is never applied again under the new one (it is answered
  ``SESSION_EXPIRED``), on this primary or any later one: the floor is in the log.
- An answer that leaves the outcome open (the replica stopped serving while the request
  was in flight, or halted) is ``INTERNAL``, which a client retries marking the request a
  retry; ``NOT_PRIMARY`` and ``UNAVAILABLE`` say the request did not enter this replica's
  pipeline.

Rules it keeps:
- Requests enter the replica in arrival order, and only while its pipeline has room
  (``pipeline_max`` uncommitted ops), so a client's requests are prepared in the order it
  sent them. A request the replica answers ``BUSY`` goes back to the front of the queue
  and nothing more is admitted until the next tick. At most ``QUEUE_REQUESTS_MAX`` wait.
- Only a replica that is the primary of its view, in normal status, takes requests; others
  answer ``NOT_PRIMARY`` (with the primary's index when known) or ``UNAVAILABLE``. A session
  asked for while the log is being recovered (a handshake) is answered once it is.
- A session is looked up in the replica's client table before a registration is prepared,
  and only once the table is final for the view (the view's log installed and every op in
  it applied), so a client whose registration committed in an earlier view keeps its
  session — and its retried request is not applied a second time. Every registration (the
  read session's too) is admitted only then, so it is prepared at the head: a reply to an
  earlier registration of the same client (applied again while the replica catches up) is
  never taken for it, and a new read session holds no numbers yet.
- When the replica stops serving (it lost the primary role, or changed view), every request
  waiting is answered at once and the session cache is dropped: one stepped into the replica
  with ``INTERNAL`` (its outcome is open: the client retries it marked a retry, and the next
  primary's client table decides it), one still queued here with ``NOT_PRIMARY`` or
  ``UNAVAILABLE`` (not taken). A reply is never invented.
- Sessions are ops and request numbers must fit 64 bits, so a session registered at op
  ``SESSION_OPS_MAX`` (2**32) or later cannot be used: its requests get ``INTERNAL``.
- A ``Halt`` of the replica is final: every open token is answered (``INTERNAL`` for a
  request that may have been applied, ``UNAVAILABLE`` otherwise) before the ``Halt``.
- Every ``Submit`` other than a ``RECORD`` is answered exactly once (``invariants``).
"""

from __future__ import annotations

import collections
import enum
import functools
import hashlib
from collections.abc import Callable

import attrs

from craton.core.seam import (
    Answer,
    ClientRequest,
    Effect,
    Halt,
    Input,
    Reply,
    Submit,
    SubmitKind,
    Tick,
)
from craton.core.vsr.replica import NUMBER_MASK, SESSION_SHIFT, Replica, ReplyStatus, Status
from craton.core.wire.errors import ErrorCode
from craton.core.wire.replica import OPERATION_SIZE_MAX

QUEUE_REQUESTS_MAX = 65_536  # requests waiting for the pipeline
WRITE_REPLIES_KEPT = 64  # most recent write replies kept per client, for retries
SESSIONS_KEPT_MAX = 1 << 20  # sessions this gateway tracks (pruned to the client table)
SESSION_OPS_MAX = 1 << (64 - SESSION_SHIFT)  # a session (an op) must leave room for numbers
REQUEST_NUMBER_MAX = NUMBER_MASK  # largest wire request id of a write
OPERATION_BYTES_MAX = OPERATION_SIZE_MAX  # bytes of one encoded operation
_U64 = 8
_OP_END = 1 + _U64


@functools.lru_cache(maxsize=4096)
def replica_client_id(tenant_id: int, client_id: int) -> int:
    """The replica's 64-bit id for wire client ``client_id`` of tenant ``tenant_id``."""
    digest = hashlib.blake2b(
        tenant_id.to_bytes(8, "little") + client_id.to_bytes(16, "little"),
        digest_size=8,
        person=b"craton.client",
    ).digest()
    return int.from_bytes(digest, "little")


READ_CLIENT_ID = int.from_bytes(
    hashlib.blake2b(b"reads", digest_size=8, person=b"craton.host").digest(), "little"
)


class RequestFreshness:
    """Which of a connection's writes are first attempts: the client did not mark the frame
    a retry (``FLAG_RETRY``: an earlier attempt went out and got no answer that rules it
    out), and the connection has not forwarded that id, or a higher one, before. One per
    connection, fed every write in arrival order."""

    def __init__(self) -> None:
        self._highest = 0

    def fresh(self, request_id: int, *, retry: bool) -> bool:
        first = not retry and request_id > self._highest
        self._highest = max(self._highest, request_id)
        return first


def encode_registration(floor: int) -> bytes:
    """The body of a registration op: the session's floor (u64 LE)."""
    return floor.to_bytes(_U64, "little")


class _State(enum.Enum):
    NEW = "new"
    REGISTERING = "registering"
    ACTIVE = "active"


@attrs.define
class _Session:
    client: int  # replica client id
    state: _State = _State.NEW
    session: int = 0  # the op that registered it, once ACTIVE
    waiting: list[Submit] = attrs.Factory(list)  # requests until registered
    replies: collections.OrderedDict[int, bytes] = attrs.Factory(collections.OrderedDict)


@attrs.frozen
class _Pending:
    client: int
    number: int
    body: bytes


# A waiter is told the replica's reply, and whether its request was stepped into the replica
# (taken: its outcome may be open) or never left this gateway's queue.
Replied = Callable[[bytes, bool], None]


@attrs.define
class GatewayCounts:
    """What the gateway did, for metrics and the simulator's summary line."""

    sessions_registered: int = 0
    replies_from_cache: int = 0  # retries answered with a reply applied before
    busy: int = 0  # requests the replica answered BUSY (put back in the queue)
    redirects: int = 0  # answers NOT_PRIMARY
    unavailable: int = 0  # answers UNAVAILABLE
    sessions_expired: int = 0  # writes answered SESSION_EXPIRED
    outcomes_open: int = 0  # requests answered INTERNAL when the primary changed under them

    def as_dict(self) -> dict[str, int]:
        return attrs.asdict(self)


class Gateway:
    def __init__(self, replica: Replica, *, counts: GatewayCounts | None = None) -> None:
        self.replica = replica
        self.counts = counts if counts is not None else GatewayCounts()
        self._pipeline_max = replica.config.pipeline_max
        self._queue: collections.deque[_Pending] = collections.deque()
        self._waiters: dict[tuple[int, int], list[Replied]] = {}
        self._sessions: dict[int, _Session] = {}
        self._reads = _Session(READ_CLIENT_ID)
        self._read_number = 0
        self._after_recovery: list[Submit] = []
        self._open: set[int] = set()  # tokens submitted and not answered yet
        self._out: list[Effect] = []  # the effects of the step under way
        self._held = False  # the replica answered BUSY: admit nothing until the next tick
        self._stepping: _Pending | None = None
        self._registering: dict[int, int] = {}  # client -> the head its registration went in at
        self._taken: set[tuple[int, int]] = set()  # (client, number) stepped, not answered yet
        self._serving_view: int | None = None
        self._table_final = False
        self._halted = False

    # --- the machine -----------------------------------------------------------------------

    def start(self) -> list[Effect]:
        return self._run(lambda: self._absorb(self.replica.start()))

    def step(self, event: Input) -> list[Effect]:
        if self._halted:
            return []
        if isinstance(event, Submit):
            return self._run(lambda: self._on_submit(event))
        if isinstance(event, Tick):
            self._held = False
        return self._run(lambda: self._absorb(self.replica.step(event)))

    def invariants(self) -> None:
        self.replica.invariants()
        assert len(self._queue) <= QUEUE_REQUESTS_MAX
        assert len(self._sessions) <= SESSIONS_KEPT_MAX
        assert not self._out
        if self._serving_view is None:
            assert not self._queue and not self._waiters, "requests wait on a non-primary"
        for session in [*self._sessions.values(), self._reads]:
            assert session.state is not _State.ACTIVE or not session.waiting

    @property
    def serving(self) -> bool:
        """The replica is the primary of its view, in normal status: it takes requests."""
        replica = self.replica
        return not self._halted and replica.status is Status.NORMAL and replica.is_primary

    @property
    def idle(self) -> bool:
        """Nothing queued and, as primary, nothing prepared but uncommitted."""
        replica = self.replica
        return not self._queue and (replica.head == replica.commit or not self.serving)

    @property
    def open_tokens(self) -> int:
        return len(self._open)

    def _run(self, action: Callable[[], None]) -> list[Effect]:
        assert not self._out
        action()
        self._settle()
        out, self._out = self._out, []
        return out

    # --- submits ---------------------------------------------------------------------------

    def _on_submit(self, submit: Submit) -> None:
        if submit.kind is not SubmitKind.RECORD:
            assert submit.token not in self._open, f"token {submit.token} is in use"
            self._open.add(submit.token)
        match submit.kind:
            case SubmitKind.SESSION:
                self._open_session(submit)
            case SubmitKind.WRITE:
                self._submit_write(submit)
            case SubmitKind.READ | SubmitKind.RECORD:
                self._submit_read(submit)

    def _open_session(self, submit: Submit) -> None:
        """A handshake: answered once the log is recovered (the client table is known then).
        It opens no session: the client's first write does, with a floor it can vouch for."""
        if self.replica.status is Status.LOADING:
            self._after_recovery.append(submit)
            return
        self._answer(submit.token, None)

    def _submit_write(self, submit: Submit) -> None:
        if not 1 <= submit.request_id <= REQUEST_NUMBER_MAX:
            why = f"a write's request id must be in 1..{REQUEST_NUMBER_MAX}"
            self._answer(submit.token, ErrorCode.INVALID_REQUEST, message=why)
            return
        if self._refuse(submit):
            return
        session = self._session(replica_client_id(submit.tenant_id, submit.client_id))
        if session.state is not _State.ACTIVE:
            session.waiting.append(submit)
            self._register(session)
            return
        self._send_write(session, submit)

    def _submit_read(self, submit: Submit) -> None:
        if self._refuse(submit):
            return
        session = self._reads
        if session.state is not _State.ACTIVE or self._read_number >= REQUEST_NUMBER_MAX:
            session.waiting.append(submit)
            if session.state is _State.ACTIVE:
                session.state = _State.NEW  # numbers ran out: a new session starts over
            self._register(session)
            return
        self._send_read(submit)

    def _refuse(self, submit: Submit) -> bool:
        """Answer a request the gateway cannot take now; True if it did."""
        if not self.serving:
            self._not_serving(submit.token, "")
            return True
        if len(submit.body) > OPERATION_BYTES_MAX:
            why = f"the operation is {len(submit.body)} bytes; at most {OPERATION_BYTES_MAX} fit"
            self._answer(submit.token, ErrorCode.TOO_LARGE, message=why)
            return True
        if len(self._queue) >= QUEUE_REQUESTS_MAX:
            self.counts.unavailable += 1
            why = "the node's request queue is full"
            self._answer(submit.token, ErrorCode.UNAVAILABLE, message=why)
            return True
        return False

    # --- sessions --------------------------------------------------------------------------

    def _session(self, client: int) -> _Session:
        session = self._sessions.get(client)
        if session is None:
            session = _Session(client)
            known = self.replica.clients.get(client)
            if known is not None:  # the log holds this client's session
                session.state, session.session = _State.ACTIVE, known.session
            self._sessions[client] = session
        return session

    def _register(self, session: _Session) -> None:
        if session.state is not _State.NEW:
            return
        session.state = _State.REGISTERING
        # The floor goes into the body when the registration is admitted (``_admit_one``).
        self._enqueue(session.client, 0, b"", lambda body, _: self._registered(session, body))

    def _registered(self, session: _Session, body: bytes) -> None:
        waiting, session.waiting = session.waiting, []
        if body[0] != ReplyStatus.OK:
            session.state = _State.NEW
            for submit in waiting:  # they waited for it: none of them was taken
                self._refused(submit.token, body, "write", taken=False)
            return
        session.state = _State.ACTIVE
        session.session = int.from_bytes(body[1:_OP_END], "little")
        session.replies.clear()
        if len(self._sessions) > self.replica.config.client_table_max:
            self._prune_sessions()
        if session is self._reads:
            self._read_number = 0  # a new session: it was registered at the head (see below)
            for submit in waiting:
                self._send_read(submit)
        else:
            for submit in waiting:
                self._send_write(session, submit)

    def _registration(self, client: int) -> bytes:
        """The body of client ``client``'s registration: its floor. A retry waiting for it
        may have been applied by an earlier session, so the floor is above every one;
        without retries, it is the lowest first attempt waiting."""
        session = self._sessions.get(client)
        waiting = [] if session is None else session.waiting
        retried = [s.request_id + 1 for s in waiting if not s.fresh]
        fresh = [s.request_id for s in waiting if s.fresh]
        floor = max(retried) if retried else min(fresh, default=1)
        return encode_registration(max(1, floor))

    def _prune_sessions(self) -> None:
        """Forget the sessions that wait for nothing and that the replica evicted from its
        client table, or that have none (expired, or their registration failed), so that
        this gateway holds about as many as the replica does: ``_session`` makes a
        forgotten one again from the table when its client comes back."""
        known = self.replica.clients
        for client, session in list(self._sessions.items()):
            idle = not session.waiting
            evicted = session.state is _State.ACTIVE and client not in known
            if idle and (evicted or session.state is _State.NEW):
                del self._sessions[client]

    def _send_write(self, session: _Session, submit: Submit) -> None:
        if session.session >= SESSION_OPS_MAX:
            self._exhausted(submit.token)
            return
        request_id, token = submit.request_id, submit.token
        cached = session.replies.get(request_id)
        if cached is not None:  # a retry of a request this gateway saw applied
            self.counts.replies_from_cache += 1
            self._applied(token, cached)
            return
        number = session.session << SESSION_SHIFT | request_id

        def replied(reply: bytes, taken: bool) -> None:
            status = reply[0]
            if status == ReplyStatus.OK:
                session.replies[request_id] = reply
                while len(session.replies) > WRITE_REPLIES_KEPT:
                    session.replies.popitem(last=False)
                self._applied(token, reply)
            elif status == ReplyStatus.STALE and request_id in session.replies:
                self.counts.replies_from_cache += 1
                self._applied(token, session.replies[request_id])
            elif status == ReplyStatus.STALE:
                self.counts.sessions_expired += 1
                why = (
                    f"request {request_id} is at or below the last request of this client's "
                    "session, or was sent before the session began, and no reply of it is "
                    f"kept (only the last {WRITE_REPLIES_KEPT} are): it may have been applied"
                )
                self._answer(token, ErrorCode.SESSION_EXPIRED, message=why)
            elif status == ReplyStatus.SESSION_EXPIRED:
                if session.state is _State.ACTIVE and session.session == number >> SESSION_SHIFT:
                    session.state = _State.NEW
                self.counts.sessions_expired += 1
                why = (
                    f"the client's session expired (over {self.replica.config.client_table_max}"
                    " newer clients): this attempt was not applied; an earlier one may have been"
                )
                self._answer(token, ErrorCode.SESSION_EXPIRED, message=why)
            else:
                self._refused(token, reply, "write", taken=taken)

        self._enqueue(session.client, number, submit.body, replied)

    def _send_read(self, submit: Submit) -> None:
        session = self._reads
        if session.session >= SESSION_OPS_MAX:
            if submit.kind is not SubmitKind.RECORD:
                self._exhausted(submit.token)
            return
        self._read_number += 1
        number = session.session << SESSION_SHIFT | self._read_number

        def replied(reply: bytes, taken: bool) -> None:
            if submit.kind is SubmitKind.RECORD:
                return  # nobody waits for a record of the node's own
            if reply[0] == ReplyStatus.OK:
                self._applied(submit.token, reply)
            elif reply[0] == ReplyStatus.SESSION_EXPIRED:
                if session.state is _State.ACTIVE and session.session == number >> SESSION_SHIFT:
                    session.state = _State.NEW
                self._open.discard(submit.token)
                self._on_submit(submit)  # reads change nothing: run it again
            else:
                self._refused(submit.token, reply, "read", taken=taken)

        self._enqueue(session.client, number, submit.body, replied)

    # --- admission -------------------------------------------------------------------------

    def _enqueue(self, client: int, number: int, body: bytes, replied: Replied) -> None:
        self._waiters.setdefault((client, number), []).append(replied)
        self._queue.append(_Pending(client, number, body))

    def _settle(self) -> None:
        """Bring the gateway up to date with its replica, then admit what the pipeline takes;
        every replica step this causes is looked at in turn."""
        self._observe()
        while self._admit_one():
            self._observe()

    def _admit_one(self) -> bool:
        """Step the first queued request into the replica; False when none can go now."""
        replica = self.replica
        if not self._queue or not self.serving or self._held:
            return False
        if replica.head - replica.commit >= self._pipeline_max:
            return False  # a commit makes room
        pending = self._queue[0]
        if pending.number == 0:
            if not self._table_final:
                return False  # a step that installs the view's log tries again
            known = replica.clients.get(pending.client)
            if known is not None and pending.client != READ_CLIENT_ID:
                # Registered in an earlier view: keep that session.
                self._queue.popleft()
                reply = bytes([ReplyStatus.OK]) + known.session.to_bytes(_U64, "little")
                for replied in self._waiters.pop((pending.client, 0), []):
                    replied(reply, True)
                return True
        self._queue.popleft()
        if pending.number == 0:
            # The table is final, so the pipeline is empty: the registration's op is the head.
            self._registering[pending.client] = replica.head
            if pending.client != READ_CLIENT_ID:
                pending = attrs.evolve(pending, body=self._registration(pending.client))
        self._stepping = pending
        self._taken.add((pending.client, pending.number))  # unless the replica answers BUSY
        if pending.number == 0:
            self.counts.sessions_registered += 1
        try:
            self._absorb(replica.step(ClientRequest(pending.client, pending.number, pending.body)))
        finally:
            self._stepping = None
        return True

    def _absorb(self, effects: list[Effect]) -> None:
        """Take the replica's effects: replies go to their waiters, a ``BUSY`` puts the
        request back, a ``Halt`` answers everyone first; the rest goes out as it is."""
        for effect in effects:
            if isinstance(effect, Reply):
                self._on_reply(effect)
            elif isinstance(effect, Halt):
                self._on_halt()
                self._out.append(effect)
                return
            else:
                self._out.append(effect)

    def _on_reply(self, reply: Reply) -> None:
        if reply.body[:1] == bytes([ReplyStatus.BUSY]):
            pending = self._stepping
            assert pending is not None, "BUSY answers only the request being stepped"
            self.counts.busy += 1
            self._taken.discard((pending.client, pending.number))
            self._queue.appendleft(pending)
            self._held = True
            return
        if reply.request_id == 0 and reply.body[:1] == bytes([ReplyStatus.OK]):
            op = int.from_bytes(reply.body[1:_OP_END], "little")
            admitted = self._registering.get(reply.client_id)
            if admitted is None or op < admitted:
                return  # an earlier registration of the client, applied again: not ours
            self._registering.pop(reply.client_id, None)
        key = (reply.client_id, reply.request_id)
        self._taken.discard(key)
        for replied in self._waiters.pop(key, []):
            replied(reply.body, True)

    # --- watching the replica --------------------------------------------------------------

    def _observe(self) -> None:
        replica = self.replica
        if self._halted:
            return
        serving = self.serving
        if self._serving_view is not None and (not serving or replica.view != self._serving_view):
            self._stop_serving()
        if serving and self._serving_view is None:
            self._serving_view = replica.view
            self._table_final = False
        if serving and not self._table_final and _table_is_final(replica):
            self._table_final = True
        if self._after_recovery and replica.status is not Status.LOADING:
            after, self._after_recovery = self._after_recovery, []
            for submit in after:
                self._open_session(submit)

    def _stop_serving(self) -> None:
        """The replica is no longer the primary of the view it served in: every request
        waiting is answered now and the session cache is dropped; the next primary's client
        table is the truth."""
        self._serving_view = None
        self._registering = {}
        waiters, self._waiters = self._waiters, {}
        self._queue.clear()
        self._sessions = {}
        self._reads = _Session(READ_CLIENT_ID)
        self._read_number = 0
        taken, self._taken = self._taken, set()
        lost = bytes([ReplyStatus.NOT_PRIMARY])
        for key, callbacks in waiters.items():
            for replied in callbacks:
                replied(lost, key in taken)

    def _on_halt(self) -> None:
        self._halted = True
        waiters, self._waiters = self._waiters, {}
        self._queue.clear()
        taken, self._taken = self._taken, set()
        for key, callbacks in waiters.items():
            for replied in callbacks:
                replied(bytes([ReplyStatus.BUSY]), key in taken)
        # Whatever is still open never reached the replica: handshakes waiting for the log,
        # and requests waiting for a registration (answered by its waiter above, or here).
        for session in [*self._sessions.values(), self._reads]:
            session.waiting = []
        self._after_recovery = []
        for token in sorted(self._open):
            self._answer(token, ErrorCode.UNAVAILABLE, message="the node stopped after a fault")

    # --- answers ---------------------------------------------------------------------------

    def _answer(
        self,
        token: int,
        code: ErrorCode | None,
        *,
        op: int = 0,
        reply: bytes = b"",
        message: str = "",
        primary: int | None = None,
    ) -> None:
        if token not in self._open:
            return  # a record of the node's own: nobody waits for it
        self._open.discard(token)
        self._out.append(Answer(token, code, op, reply, message, primary))

    def _applied(self, token: int, reply: bytes) -> None:
        op = int.from_bytes(reply[1:_OP_END], "little")
        self._answer(token, None, op=op, reply=reply[_OP_END:])

    def _exhausted(self, token: int) -> None:
        why = (
            f"the log has passed op {SESSION_OPS_MAX}, beyond which client sessions cannot be "
            "numbered in this version"
        )
        self._answer(token, ErrorCode.INTERNAL, message=why)

    def _refused(self, token: int, reply: bytes, what: str, *, taken: bool) -> None:
        """A request the replica did not answer with its outcome: ``INTERNAL`` when it was
        stepped into the replica (it may have been applied), else an answer that says it
        was not taken (``NOT_PRIMARY`` or ``UNAVAILABLE``), so its retry is a first attempt."""
        status = reply[0] if reply else -1
        if status == ReplyStatus.NOT_PRIMARY and not taken:
            self._not_serving(token, "")
        elif status == ReplyStatus.NOT_PRIMARY:
            self.counts.outcomes_open += 1
            why = (
                f"the primary changed before the {what} was answered: it may or may not have "
                "been applied (a retry with the same request id is safe)"
            )
            self._answer(token, ErrorCode.INTERNAL, message=why)
        elif status == ReplyStatus.BUSY and not taken:
            why = "the node stopped after a fault"
            self._answer(token, ErrorCode.UNAVAILABLE, message=why)
        elif status == ReplyStatus.BUSY:
            self._answer(token, ErrorCode.INTERNAL, message=f"the node stopped during a {what}")
        else:
            why = f"unexpected replica answer {status} to a {what}"
            self._answer(token, ErrorCode.INTERNAL, message=why)

    def _not_serving(self, token: int, prefix: str) -> None:
        """Answer a request this replica cannot take now, by what it is doing."""
        replica = self.replica
        if self._halted:
            code, why, primary = ErrorCode.UNAVAILABLE, "the node stopped after a fault", None
        elif replica.status is Status.LOADING:
            code, why, primary = ErrorCode.UNAVAILABLE, "the node is recovering its log", None
        elif replica.status is Status.NORMAL and not replica.is_primary:
            code, primary = ErrorCode.NOT_PRIMARY, replica.primary
            why = f"this replica is not the primary; replica {replica.primary} is"
        elif replica.status is Status.NORMAL:
            code, why, primary = ErrorCode.NOT_PRIMARY, "this replica changed view", None
        else:
            code, why, primary = ErrorCode.UNAVAILABLE, "no primary is known; retry later", None
        if code is ErrorCode.NOT_PRIMARY:
            self.counts.redirects += 1
        else:
            self.counts.unavailable += 1
        message = f"{prefix}: {why}" if prefix else why
        self._answer(token, code, message=message, primary=primary)


def _table_is_final(replica: Replica) -> bool:
    """Whether the replica's client table reflects every op of its view's log: the log is
    installed (``log_view`` is the view, set only once the view's whole log is held) and
    every op in it is applied."""
    return replica.log_view == replica.view and replica.commit == replica.head
