"""The linearizability checker: valid histories pass, and each kind of violation is caught.

Histories are built by hand (named cases) and by hypothesis: a generator produces valid
histories by committing operations in order and giving each an invocation a little before
and a completion a little after its commit, and single mutations of them (a lost entry, a
repeated entry, a changed reply, a shifted position) must each be reported.
"""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from craton.core import event_store as es
from craton.core import kv_machine as kv
from craton.core.event_store import EventStore
from craton.core.kv_machine import KvMachine, KvReply
from craton.core.wire.messages import DataClass
from craton.sim.linearizability import (
    MESSAGES_MAX,
    Committed,
    Operation,
    Violation,
    check_history,
)

PUT_X1 = kv.encode_put(b"x", b"1")
PUT_X2 = kv.encode_put(b"x", b"2")
PUT_Y = kv.encode_put(b"y", b"7")
GET_X = kv.encode_get(b"x")
OK = kv.encode_reply(KvReply(None, None, ""))


def value(data: bytes | None) -> bytes:
    return kv.encode_reply(KvReply(data, None, ""))


def kinds(messages: list[str]) -> list[Violation]:
    """The kind of each message (each starts with its kind)."""
    found = []
    for message in messages:
        matching = [kind for kind in Violation if message.startswith(kind.value + ": ")]
        assert len(matching) == 1, f"message without a known kind: {message}"
        found.append(matching[0])
    return found


def check(operations: list[Operation], committed: list[Committed]) -> list[str]:
    return check_history(
        operations,
        committed,
        KvMachine,
        describe_body=kv.describe_body,
        describe_reply=kv.describe_reply,
    )


def acked(
    client: int, number: int, body: bytes, ticks: tuple[int, int], reply: bytes, position: int
) -> Operation:
    return Operation(client, number, body, ticks[0], ticks[1], reply, position)


def entry(position: int, operation: Operation) -> Committed:
    return Committed(position, operation.client_id, operation.request_number, operation.body)


# --- Valid histories -------------------------------------------------------------------------


def test_sequential_history_passes() -> None:
    write = acked(1, 1, PUT_X1, (0, 5), OK, 1)
    read = acked(2, 1, GET_X, (6, 9), value(b"1"), 2)
    assert check([write, read], [entry(1, write), entry(2, read)]) == []


def test_concurrent_operations_may_take_either_order() -> None:
    """Overlapping write and read: the log decides, and the read must agree with it."""
    write = acked(1, 1, PUT_X1, (0, 10), OK, 1)
    read_before = acked(2, 1, GET_X, (2, 8), value(None), 0)
    assert check([write, read_before], [entry(0, read_before), entry(1, write)]) == []
    read_after = acked(2, 1, GET_X, (2, 8), value(b"1"), 2)
    assert check([write, read_after], [entry(1, write), entry(2, read_after)]) == []


def test_unknown_operations_may_or_may_not_be_committed() -> None:
    write = acked(1, 1, PUT_X1, (0, 5), OK, 1)
    unknown = Operation(3, 1, PUT_X2, invoked_tick=6)
    read_sees_it = acked(2, 1, GET_X, (20, 25), value(b"2"), 3)
    log = [entry(1, write), entry(2, unknown), entry(3, read_sees_it)]
    assert check([write, unknown, read_sees_it], log) == []
    read_without = acked(2, 1, GET_X, (20, 25), value(b"1"), 2)
    assert check([write, unknown, read_without], [entry(1, write), entry(2, read_without)]) == []


def test_operations_completing_and_invoked_in_the_same_tick_are_concurrent() -> None:
    first = acked(1, 1, PUT_X1, (0, 5), OK, 2)
    second = acked(2, 1, PUT_X2, (5, 8), OK, 1)
    assert check([first, second], [entry(1, second), entry(2, first)]) == []


def test_event_store_history_with_optimistic_concurrency_passes() -> None:
    create = es.encode_create_stream(1, "orders", DataClass.INTERNAL)
    append_a = es.encode_append(1, "orders", [b"a"], expected_offset=0)
    append_b = es.encode_append(1, "orders", [b"b"], expected_offset=0)  # loses the race
    read = es.encode_read(1, "orders", 0)
    bodies = [create, append_a, append_b, read]
    machine = EventStore()
    replies = [machine.apply(position, body) for position, body in enumerate(bodies, start=1)]
    refused = es.decode_reply(replies[2])
    assert isinstance(refused, es.StoreError) and refused.stream_length == 1
    operations = [
        acked(1, 1, create, (0, 3), replies[0], 1),
        acked(1, 2, append_a, (4, 9), replies[1], 2),
        acked(2, 1, append_b, (5, 9), replies[2], 3),
        acked(3, 1, read, (10, 12), replies[3], 4),
    ]
    committed = [entry(position, op) for position, op in enumerate(operations, start=1)]
    assert check_history(operations, committed, EventStore) == []
    # The read claims it saw only "b": the order implies ["a"].
    wrong = es.encode_reply(es.ReadEventsReply(0, 4, (b"b",)))
    operations[3] = attrs.evolve(operations[3], reply=wrong)
    messages = check_history(operations, committed, EventStore, describe_reply=es.describe_reply)
    assert kinds(messages) == [Violation.REPLY_MISMATCH], messages
    assert "[b'a']" in messages[0] and "[b'b']" in messages[0], messages


def test_empty_history_passes() -> None:
    assert check([], []) == []
    assert check([Operation(1, 1, GET_X, 0)], []) == []


# --- Each kind of violation ------------------------------------------------------------------


def test_stale_read_is_caught() -> None:
    write = acked(1, 1, PUT_X1, (0, 5), OK, 1)
    stale = acked(2, 1, GET_X, (6, 9), value(None), 2)  # invoked after the write completed
    messages = check([write, stale], [entry(1, write), entry(2, stale)])
    assert kinds(messages) == [Violation.REPLY_MISMATCH], messages
    assert "received ok" in messages[0] and "implies ok b'1'" in messages[0], messages


def test_lost_acknowledged_write_is_caught() -> None:
    write = acked(1, 1, PUT_X1, (0, 5), OK, 1)
    other = acked(2, 1, PUT_Y, (0, 5), OK, 0)
    messages = check([write, other], [entry(0, other)])
    assert kinds(messages) == [Violation.LOST_ACKNOWLEDGED], messages
    assert "client 1 request 1" in messages[0] and "position 1" in messages[0], messages


def test_reordered_non_overlapping_operations_are_caught() -> None:
    """A completed before B was invoked, but the log (and the replies) put B first."""
    first = acked(1, 1, PUT_X1, (0, 5), OK, 1)
    second = acked(2, 1, PUT_Y, (10, 15), OK, 0)
    messages = check([first, second], [entry(0, second), entry(1, first)])
    assert kinds(messages) == [Violation.REAL_TIME_ORDER], messages
    assert "client 1 request 1 completed at tick 5" in messages[0], messages
    assert "client 2 request 1 was invoked at tick 10" in messages[0], messages


def test_reordering_an_unknown_but_committed_operation_is_caught() -> None:
    first = acked(1, 1, PUT_X1, (0, 5), OK, 1)
    late = Operation(2, 1, PUT_Y, invoked_tick=10)
    messages = check([first, late], [entry(0, late), entry(1, first)])
    assert kinds(messages) == [Violation.REAL_TIME_ORDER], messages


def test_duplicate_commit_is_caught() -> None:
    write = acked(1, 1, PUT_X1, (0, 5), OK, 1)
    read = acked(2, 1, GET_X, (6, 9), value(b"1"), 3)
    log = [entry(1, write), entry(2, write), entry(3, read)]
    messages = check([write, read], log)
    assert kinds(messages) == [Violation.DUPLICATE_COMMIT], messages
    assert "positions 1 and 2" in messages[0], messages


def test_phantom_committed_operation_is_caught() -> None:
    write = acked(1, 1, PUT_X1, (0, 5), OK, 1)
    phantom = Committed(2, 9, 1, PUT_X2)
    messages = check([write], [entry(1, write), phantom])
    assert kinds(messages) == [Violation.PHANTOM], messages
    assert "client 9 request 1" in messages[0] and "put(b'x', b'2')" in messages[0], messages


def test_wrong_position_is_caught() -> None:
    first = acked(1, 1, PUT_X1, (0, 5), OK, 2)  # told 2, committed at 1
    second = acked(2, 1, PUT_Y, (0, 5), OK, 2)
    messages = check([first, second], [entry(1, first), entry(2, second)])
    assert kinds(messages) == [Violation.WRONG_POSITION], messages
    assert "told position 2 but is committed at position 1" in messages[0], messages
    assert "position 2 holds client 2 request 1" in messages[0], messages


def test_changed_body_is_caught() -> None:
    write = acked(1, 1, PUT_X1, (0, 5), OK, 1)
    forged = Committed(1, 1, 1, PUT_X2)
    messages = check([write], [forged])
    assert kinds(messages) == [Violation.BODY_MISMATCH], messages


def test_gap_in_the_log_is_caught() -> None:
    write = acked(1, 1, PUT_X1, (0, 5), OK, 1)
    read = acked(2, 1, GET_X, (6, 9), value(b"1"), 3)
    messages = check([write, read], [entry(1, write), entry(3, read)])
    assert kinds(messages) == [Violation.LOG_NOT_DENSE], messages
    assert "position 3, expected 2" in messages[0], messages


def test_reused_request_number_is_caught() -> None:
    write = acked(1, 1, PUT_X1, (0, 5), OK, 1)
    again = Operation(1, 1, PUT_X2, invoked_tick=7)
    messages = check([write, again], [entry(1, write)])
    assert kinds(messages) == [Violation.DUPLICATE_REQUEST], messages


def test_messages_are_capped_and_counted() -> None:
    phantoms = [Committed(position, 9, position, PUT_X1) for position in range(MESSAGES_MAX + 7)]
    messages = check([], phantoms)
    assert len(messages) == MESSAGES_MAX + 1, len(messages)
    assert messages[-1] == "... and 7 more violations", messages[-1]


def test_operation_outcome_is_all_or_nothing() -> None:
    with pytest.raises(ValueError):
        Operation(1, 1, GET_X, 0, completed_tick=3)
    with pytest.raises(ValueError):
        Operation(1, 1, GET_X, 5, 3, OK, 1)


# --- Generated histories ---------------------------------------------------------------------

kv_bodies = st.sampled_from([PUT_X1, PUT_X2, PUT_Y, GET_X, kv.encode_get(b"y")])


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[Operation], list[Committed]]:
    """A valid history: entry i commits at tick 10*i; its invocation is up to 25 ticks
    before and its completion up to 25 after (so non-overlapping operations are in log
    order); some outcomes are unknown, and some unknown operations never commit."""
    count = draw(st.integers(1, 25))
    first = draw(st.integers(0, 3))
    machine = KvMachine()
    numbers: dict[int, int] = {}
    operations: list[Operation] = []
    committed: list[Committed] = []
    for index in range(count):
        client = draw(st.integers(1, 4))
        numbers[client] = numbers.get(client, 0) + 1
        body = draw(kv_bodies)
        position = first + index
        reply = machine.apply(position, body)
        invoked = 10 * index - draw(st.integers(0, 25))
        committed.append(Committed(position, client, numbers[client], body))
        if draw(st.integers(0, 4)) == 0:
            operations.append(Operation(client, numbers[client], body, invoked))
        else:
            completed = 10 * index + draw(st.integers(0, 25))
            operations.append(
                Operation(client, numbers[client], body, invoked, completed, reply, position)
            )
    for _ in range(draw(st.integers(0, 3))):  # sent, never committed, outcome unknown
        client = draw(st.integers(1, 4))
        numbers[client] = numbers.get(client, 0) + 1
        invoked = draw(st.integers(-25, 10 * count))
        operations.append(Operation(client, numbers[client], draw(kv_bodies), invoked))
    order = draw(st.permutations(range(len(operations))))
    return [operations[i] for i in order], committed


@settings(max_examples=200, deadline=None)
@given(history=histories())
def test_generated_valid_histories_pass(
    history: tuple[list[Operation], list[Committed]],
) -> None:
    operations, committed = history
    assert check(operations, committed) == []


@settings(max_examples=200, deadline=None)
@given(history=histories(), data=st.data())
def test_generated_mutations_are_caught(
    history: tuple[list[Operation], list[Committed]], data: st.DataObject
) -> None:
    operations, committed = history
    acknowledged = [op for op in operations if op.acknowledged]
    mutation = data.draw(st.sampled_from(["lose", "repeat", "reply", "position"]))
    if mutation == "repeat":
        repeated = data.draw(st.sampled_from(committed))
        committed = [*committed, attrs.evolve(repeated, position=committed[-1].position + 1)]
        expected = Violation.DUPLICATE_COMMIT
    else:
        if not acknowledged:
            return
        victim = data.draw(st.sampled_from(acknowledged))
        index = operations.index(victim)
        if mutation == "lose":
            committed = [e for e in committed if (e.client_id, e.request_number) != victim.key]
            expected = Violation.LOST_ACKNOWLEDGED
        elif mutation == "reply":
            assert victim.reply is not None
            operations[index] = attrs.evolve(victim, reply=victim.reply + b"\x00")
            expected = Violation.REPLY_MISMATCH
        else:
            assert victim.position is not None
            operations[index] = attrs.evolve(victim, position=victim.position + 1)
            expected = Violation.WRONG_POSITION
    messages = check(operations, committed)
    assert expected in kinds(messages), f"{mutation}: expected {expected}, got {messages}"


@settings(max_examples=100, deadline=None)
@given(history=histories(), data=st.data())
def test_swapping_non_overlapping_operations_is_caught(
    history: tuple[list[Operation], list[Committed]], data: st.DataObject
) -> None:
    """Swap two log entries where the earlier one completed before the later was invoked;
    the positions the clients were told are swapped with them, so only the order (or the
    replies that follow from it) can give the swap away."""
    operations, committed = history
    by_key = {op.key: op for op in operations}
    pairs = [
        (i, j)
        for i in range(len(committed))
        for j in range(i + 1, len(committed))
        if (a := by_key[(committed[i].client_id, committed[i].request_number)]).acknowledged
        and a.completed_tick is not None
        and a.completed_tick
        < by_key[(committed[j].client_id, committed[j].request_number)].invoked_tick
    ]
    if not pairs:
        return
    i, j = data.draw(st.sampled_from(pairs))
    swapped = list(committed)
    swapped[i] = attrs.evolve(committed[j], position=committed[i].position)
    swapped[j] = attrs.evolve(committed[i], position=committed[j].position)
    moved = {
        (committed[i].client_id, committed[i].request_number): committed[j].position,
        (committed[j].client_id, committed[j].request_number): committed[i].position,
    }
    told = [
        attrs.evolve(op, position=moved[op.key]) if op.acknowledged and op.key in moved else op
        for op in operations
    ]
    found = kinds(check(told, swapped))
    assert Violation.REAL_TIME_ORDER in found, found


def test_the_checker_is_deterministic() -> None:
    write = acked(1, 1, PUT_X1, (0, 5), OK, 1)
    stale = acked(2, 1, GET_X, (6, 9), value(None), 2)
    phantom = Committed(3, 9, 9, PUT_Y)
    runs = [check([write, stale], [entry(1, write), entry(2, stale), phantom]) for _ in range(3)]
    assert runs[0] == runs[1] == runs[2] and len(runs[0]) == 2, runs


def test_real_time_order_is_checked_against_every_earlier_completion() -> None:
    """B must follow A even when another operation completed between A and B's invocation
    and sits earlier in the log."""
    early = acked(1, 1, PUT_X1, (0, 5), OK, 3)  # completed first, placed last
    middle = acked(2, 1, PUT_Y, (0, 6), OK, 1)
    late = acked(3, 1, PUT_X2, (10, 12), OK, 2)  # invoked after both completed
    log = [entry(1, middle), entry(2, late), entry(3, early)]
    messages = check([early, middle, late], log)
    assert kinds(messages) == [Violation.REAL_TIME_ORDER], messages
    assert "client 1 request 1 completed at tick 5" in messages[0], messages
