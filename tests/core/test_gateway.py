"""The client gateway (``craton.core.gateway``) as a pure machine, driven by the one
``Driver`` over a simulated disk: a single replica, no network, no asyncio.

- writes are applied once: a retry is answered from the gateway's cache, or the replica's;
- reads run at an op of their own in the gateway's read session; a retried read runs again;
- a session expired by newer clients answers ``SESSION_EXPIRED``, and a retry of a request
  that the expired session may have applied is never applied under a new session (the
  registration's floor), while fresh requests are;
- a handshake before recovery waits for it; bad requests get typed answers;
- every submit is answered exactly once.
"""

from __future__ import annotations

import attrs
import pytest

from craton.core import kv_machine
from craton.core.gateway import (
    OPERATION_BYTES_MAX,
    READ_CLIENT_ID,
    Gateway,
    RequestFreshness,
    replica_client_id,
)
from craton.core.kv_machine import KvMachine
from craton.core.prng import Prng
from craton.core.seam import Answer, Submit, SubmitKind, Tick
from craton.core.vsr.profile import SIMULATION
from craton.core.vsr.replica import NUMBER_MASK, SESSION_SHIFT, Replica, decode_prepare_body
from craton.core.wire.errors import ErrorCode
from craton.io.driver import Driver
from craton.sim.disk import SimDisk
from craton.sim.events import EventQueue

TENANT = 1


class Harness:
    """One replica behind its gateway, on a simulated disk; submits get answers."""

    def __init__(self, *, client_table_max: int = 8) -> None:
        self.events = EventQueue()
        config = attrs.evolve(
            SIMULATION.config(replica_id=0, replica_count=1, seal_seed=b"s" * 32),
            client_table_max=client_table_max,
        )
        self.replica = Replica(config, KvMachine(), Prng(7, "replica"))
        self.gateway = Gateway(self.replica)
        self.answers: dict[int, Answer] = {}
        self.driver = Driver(
            self.gateway,
            SimDisk(Prng(7, "disk"), self.events),
            on_answer=self._answered,
            check_invariants=True,
        )
        self._token = 0
        self.driver.launch(self.gateway.start())
        self.settle()

    def _answered(self, answer: Answer) -> None:
        assert answer.token not in self.answers, f"token {answer.token} answered twice"
        self.answers[answer.token] = answer

    def settle(self, ticks: int = 30) -> None:
        for _ in range(ticks):
            self.events.run_until_idle()
            self.driver.step(Tick())
        self.events.run_until_idle()

    def submit(self, kind: SubmitKind, **fields: object) -> int:
        self._token += 1
        self.driver.step(Submit(self._token, kind, TENANT, **fields))  # type: ignore[arg-type]
        return self._token

    def ask(self, kind: SubmitKind, **fields: object) -> Answer:
        token = self.submit(kind, **fields)
        self.settle()
        assert token in self.answers, f"submit {token} ({kind.value}) was not answered"
        return self.answers[token]

    def write(self, client: int, request_id: int, body: bytes, *, fresh: bool) -> Answer:
        return self.ask(
            SubmitKind.WRITE, client_id=client, request_id=request_id, body=body, fresh=fresh
        )

    def ops_of(self, client: int, request_id: int) -> list[int]:
        """The ops that applied-or-prepared client ``client``'s wire request ``request_id``."""
        owner = replica_client_id(TENANT, client)
        found = []
        for op in range(self.replica.first_op, self.replica.head):
            body = decode_prepare_body(self.replica.entry(op).body)
            number = body.request_number
            if body.client_id == owner and number and number & NUMBER_MASK == request_id:
                found.append(op)
        return found


def put(value: bytes) -> bytes:
    return kv_machine.encode_put(b"k", value)


def test_a_write_is_applied_once_and_its_retry_answered_from_the_cache() -> None:
    harness = Harness()
    assert harness.ask(SubmitKind.SESSION, client_id=5, request_id=1).code is None
    first = harness.write(5, 2, put(b"one"), fresh=True)
    assert first.code is None and first.op >= 1, first
    assert kv_machine.decode_reply(first.reply).ok
    head = harness.replica.head
    again = harness.write(5, 2, put(b"one"), fresh=False)
    assert (again.code, again.op, again.reply) == (None, first.op, first.reply)
    assert harness.replica.head == head, "a retry must not prepare a new op"
    assert harness.gateway.counts.replies_from_cache == 1
    assert harness.ops_of(5, 2) == [first.op]


def test_reads_run_in_the_gateway_session_and_a_retry_runs_again() -> None:
    harness = Harness()
    harness.write(5, 1, put(b"v"), fresh=True)
    read = harness.ask(SubmitKind.READ, client_id=5, request_id=2, body=kv_machine.encode_get(b"k"))
    assert read.code is None and kv_machine.decode_reply(read.reply).value == b"v"
    body = decode_prepare_body(harness.replica.entry(read.op).body)
    assert body.client_id == READ_CLIENT_ID, "a read runs in the gateway's read session"
    again = harness.ask(
        SubmitKind.READ, client_id=5, request_id=2, body=kv_machine.encode_get(b"k")
    )
    assert again.code is None and again.op > read.op, "a retried read is a new read"


def test_a_retry_from_an_expired_session_is_never_applied_again() -> None:
    """Client 5's request 2 is applied; three newer clients evict its session (the table
    holds two). Its retry is refused (``SESSION_EXPIRED``), and so is the retry after that,
    which makes the gateway register a new session: the floor in that registration keeps
    request 2 out. A fresh request 3 is applied under the new session."""
    harness = Harness(client_table_max=2)
    applied = harness.write(5, 2, put(b"once"), fresh=True)
    assert applied.code is None
    for other in (6, 7, 8):
        assert harness.write(other, 1, put(b"x"), fresh=True).code is None
    assert replica_client_id(TENANT, 5) not in harness.replica.clients, "expected 5 evicted"
    for attempt in range(2):
        retry = harness.write(5, 2, put(b"once"), fresh=False)
        assert retry.code is ErrorCode.SESSION_EXPIRED, (attempt, retry)
    assert harness.ops_of(5, 2) == [applied.op], "request 2 applied more than once"
    fresh = harness.write(5, 3, put(b"twice"), fresh=True)
    assert fresh.code is None and harness.ops_of(5, 3) == [fresh.op]
    session = harness.replica.clients[replica_client_id(TENANT, 5)].session
    assert session > applied.op, "request 3 runs in a new session"
    assert harness.gateway.counts.sessions_expired == 2


def test_a_handshake_opens_no_session_and_a_retry_sets_the_floor() -> None:
    """A client that reconnects after its session was evicted: the handshake opens nothing;
    its retry of request 4 (which the old session applied) opens the new session with a
    floor above 4, so it is refused, and its next first attempt runs."""
    harness = Harness(client_table_max=2)
    assert harness.write(5, 4, put(b"a"), fresh=True).code is None
    for other in (6, 7):
        harness.write(other, 1, put(b"x"), fresh=True)
    owner = replica_client_id(TENANT, 5)
    assert harness.ask(SubmitKind.SESSION, client_id=5, request_id=10).code is None
    assert owner not in harness.replica.clients, "a handshake registers nothing"
    assert harness.write(5, 4, put(b"a"), fresh=False).code is ErrorCode.SESSION_EXPIRED
    assert harness.replica.clients[owner].number == 4, "the floor is above the retry"
    assert harness.write(5, 11, put(b"b"), fresh=True).code is None
    assert len(harness.ops_of(5, 4)) == 1


def test_a_first_attempt_of_a_new_client_opens_its_session_at_its_id() -> None:
    """A new client's first write, redirected from another replica, arrives on a connection
    whose handshake took a higher id: it is a first attempt all the same, and runs."""
    harness = Harness()
    assert harness.ask(SubmitKind.SESSION, client_id=9, request_id=3).code is None
    applied = harness.write(9, 2, put(b"v"), fresh=True)
    assert applied.code is None, applied
    assert harness.replica.clients[replica_client_id(TENANT, 9)].session < applied.op


def test_bad_requests_get_typed_answers_and_the_gateway_goes_on() -> None:
    harness = Harness()
    too_large = harness.write(5, 1, b"\x00" * (OPERATION_BYTES_MAX + 1), fresh=True)
    assert too_large.code is ErrorCode.TOO_LARGE, too_large
    no_id = harness.write(5, 0, put(b"v"), fresh=True)
    assert no_id.code is ErrorCode.INVALID_REQUEST and "request id" in no_id.message
    assert harness.write(5, 1, put(b"v"), fresh=True).code is None


def test_a_handshake_before_recovery_waits_for_it_and_a_write_is_refused() -> None:
    events = EventQueue()
    replica = Replica(
        SIMULATION.config(replica_id=0, replica_count=1, seal_seed=b"s" * 32),
        KvMachine(),
        Prng(7, "replica"),
    )
    gateway = Gateway(replica)
    answers: list[Answer] = []
    driver = Driver(gateway, SimDisk(Prng(7, "disk"), events), on_answer=answers.append)
    driver.launch(gateway.start())
    driver.step(Submit(1, SubmitKind.SESSION, TENANT, 5, 1))
    driver.step(Submit(2, SubmitKind.WRITE, TENANT, 5, 2, put(b"v"), True))
    assert [a.token for a in answers] == [2], "the handshake waits for the log"
    assert answers[0].code is ErrorCode.UNAVAILABLE and "recovering" in answers[0].message
    for _ in range(20):
        events.run_until_idle()
        driver.step(Tick())
    assert [a.token for a in answers] == [2, 1] and answers[1].code is None
    assert gateway.open_tokens == 0


def test_every_submit_is_answered_exactly_once_under_a_mixed_load() -> None:
    harness = Harness(client_table_max=3)
    prng = Prng(11, "load")
    tokens = []
    for index in range(200):
        client = prng.between(1, 6)
        if prng.chance(0.3):
            body = kv_machine.encode_get(b"k")
            tokens.append(harness.submit(SubmitKind.READ, client_id=client, body=body))
        else:
            request_id = prng.between(1, 40)
            tokens.append(
                harness.submit(
                    SubmitKind.WRITE,
                    client_id=client,
                    request_id=request_id,
                    body=put(bytes([index % 256])),
                    fresh=prng.chance(0.5),
                )
            )
        if index % 7 == 0:
            harness.settle(3)
    harness.settle()
    assert sorted(harness.answers) == tokens, "every submit answered"
    assert harness.gateway.open_tokens == 0 and harness.gateway.idle
    for answer in harness.answers.values():
        assert answer.code in (None, ErrorCode.SESSION_EXPIRED), answer


@pytest.mark.parametrize(
    ("sent", "expected"),
    [
        ([(5, False), (6, False), (7, False)], [True, True, True]),
        ([(5, True), (6, False)], [False, True]),  # the client marked 5 a retry
        ([(6, False), (6, False), (7, False)], [True, False, True]),  # the second 6 is a retry
        ([(7, False), (6, False)], [True, False]),  # below the highest forwarded: may be one
    ],
)
def test_request_freshness(sent: list[tuple[int, bool]], expected: list[bool]) -> None:
    freshness = RequestFreshness()
    assert [freshness.fresh(rid, retry=retry) for rid, retry in sent] == expected


def test_session_numbers_leave_room_for_the_request_id() -> None:
    assert NUMBER_MASK == (1 << SESSION_SHIFT) - 1
