"""The built-in state machines (key-value registers, event store) against simple models.

Stateful hypothesis tests drive each machine through random operations, with snapshots and
restores in between, and compare every reply with a plain dict/list model. Property tests
check that arbitrary and mutated bodies only ever yield an error reply that changes nothing,
that equal states have equal digests (and unequal ones not), that snapshots round-trip and
that any damage to a snapshot is refused. Pinned digests prove the encodings do not depend
on the process or on ``PYTHONHASHSEED``.

CRATON_STATE_MACHINE_EXAMPLES=1000 selects a long run.
"""

from __future__ import annotations

import hashlib
import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from craton.core import event_store as es
from craton.core import kv_machine as kv
from craton.core.event_store import EventStore, StoreError
from craton.core.kv_machine import KvMachine, KvReply
from craton.core.state_machine import (
    OP_MAX,
    OpOrderError,
    SnapshotError,
    StateMachine,
    open_snapshot,
    seal_snapshot,
)
from craton.core.wire.errors import ErrorCode
from craton.core.wire.messages import (
    AppendEventsReply,
    CreateStreamReply,
    DataClass,
    Placement,
    PlacementKind,
    ReadEventsReply,
)

EXAMPLES = int(os.environ.get("CRATON_STATE_MACHINE_EXAMPLES", "100"))

STATEFUL = settings(
    max_examples=EXAMPLES,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PROPERTY = settings(max_examples=4 * EXAMPLES, deadline=None)

keys = st.sampled_from([b"", b"a", b"b", b"k" * kv.KEY_SIZE_MAX])
values = st.one_of(st.binary(max_size=24), st.just(b"v" * kv.VALUE_SIZE_MAX))
tenants = st.sampled_from([1, 2, 2**64 - 1])
stream_names = st.sampled_from(["a", "orders", "Z9._:-x"])
events = st.lists(st.binary(max_size=12), min_size=1, max_size=4)
op_steps = st.integers(1, 3)  # ops may skip numbers: the log holds other entries too


# --- Key-value registers ---------------------------------------------------------------------


class KvModel(RuleBasedStateMachine):
    """KvMachine against a dict."""

    def __init__(self) -> None:
        super().__init__()
        self.machine = KvMachine()
        self.model: dict[bytes, bytes] = {}
        self.op = 0

    def next_op(self, step: int) -> int:
        self.op += step
        return self.op

    @rule(key=keys, value=values, step=op_steps)
    def put(self, key: bytes, value: bytes, step: int) -> None:
        reply = kv.decode_reply(self.machine.apply(self.next_op(step), kv.encode_put(key, value)))
        assert reply == KvReply(None, None, ""), f"put must answer ok, got {reply}"
        self.model[key] = value

    @rule(key=keys, step=op_steps)
    def get(self, key: bytes, step: int) -> None:
        reply = kv.decode_reply(self.machine.apply(self.next_op(step), kv.encode_get(key)))
        expected = self.model.get(key)
        assert reply.ok and reply.value == expected, f"get {key!r}: expected {expected!r}"

    @rule(body=st.binary(max_size=40), step=op_steps)
    def garbage(self, body: bytes, step: int) -> None:
        before = dict(self.model)
        reply = kv.decode_reply(self.machine.apply(self.next_op(step), body))
        if not reply.ok:
            assert reply.error in (ErrorCode.INVALID_REQUEST, ErrorCode.TOO_LARGE)
            return
        request = kv.decode_request(body)  # it was a valid request: follow it in the model
        if isinstance(request, kv.Put):
            self.model[request.key] = request.value
        else:
            assert reply.value == before.get(request.key)

    @rule()
    def snapshot_and_restore(self) -> None:
        snapshot = self.machine.snapshot()
        restored = KvMachine.restore(snapshot)
        assert restored.digest() == self.machine.digest(), "restored digest differs"
        assert restored.snapshot() == snapshot, "a snapshot of the restored machine differs"
        self.machine = restored

    @invariant()
    def matches_model(self) -> None:
        self.machine.invariants()
        for key in [b"", b"a", b"b", b"k" * kv.KEY_SIZE_MAX]:
            assert self.machine.get(key) == self.model.get(key), f"register {key!r}"
        expected = 0 if self.op == 0 else self.op + 1
        assert self.machine.op_next == expected, f"op_next {self.machine.op_next} != {expected}"


TestKvModel = KvModel.TestCase
TestKvModel.settings = STATEFUL


def test_kv_replies_and_limits() -> None:
    machine = KvMachine()
    assert kv.decode_reply(machine.apply(1, kv.encode_get(b"x"))) == KvReply(None, None, "")
    assert kv.decode_reply(machine.apply(2, kv.encode_put(b"x", b"1"))).ok
    assert kv.decode_reply(machine.apply(3, kv.encode_get(b"x"))).value == b"1"
    assert kv.decode_reply(machine.apply(4, kv.encode_put(b"x", b""))).ok
    assert kv.decode_reply(machine.apply(5, kv.encode_get(b"x"))).value == b""
    # A key one byte over the limit, encoded by hand: refused as too large, nothing changes.
    long_key = b"k" * (kv.KEY_SIZE_MAX + 1)
    body = bytes([kv.KvRequestKind.PUT]) + struct.pack("<I", len(long_key)) + long_key + bytes(4)
    before = machine.get(b"x")
    reply = kv.decode_reply(machine.apply(6, body))
    assert reply.error == ErrorCode.TOO_LARGE, reply
    assert machine.get(b"x") == before and machine.get(long_key) is None
    # Trailing bytes after a valid request are refused.
    reply = kv.decode_reply(machine.apply(7, kv.encode_get(b"x") + b"\x00"))
    assert reply.error == ErrorCode.INVALID_REQUEST, reply


def test_kv_encoders_refuse_misuse() -> None:
    with pytest.raises(ValueError):
        kv.encode_put(b"k" * (kv.KEY_SIZE_MAX + 1), b"")
    with pytest.raises(ValueError):
        kv.encode_put(b"k", b"v" * (kv.VALUE_SIZE_MAX + 1))
    with pytest.raises(TypeError):
        kv.encode_get("k")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        KvReply(b"value", ErrorCode.TOO_LARGE, "both")


def test_kv_refuses_new_keys_when_full(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kv, "KEYS_MAX", 2)
    machine = KvMachine()
    assert kv.decode_reply(machine.apply(1, kv.encode_put(b"a", b"1"))).ok
    assert kv.decode_reply(machine.apply(2, kv.encode_put(b"b", b"1"))).ok
    reply = kv.decode_reply(machine.apply(3, kv.encode_put(b"c", b"1")))
    assert reply.error == ErrorCode.TOO_LARGE, reply
    assert kv.decode_reply(machine.apply(4, kv.encode_put(b"a", b"2"))).ok, "overwrite is fine"
    assert machine.get(b"c") is None and machine.get(b"a") == b"2"


# --- Event store -----------------------------------------------------------------------------


class StreamModel:
    def __init__(self, created_op: int) -> None:
        self.created_op = created_op
        self.events: list[tuple[int, bytes]] = []  # (op of its append, event)

    def as_of(self, position: int) -> list[bytes]:
        return [event for op, event in self.events if op <= position]


def model_read(
    events: list[bytes], from_offset: int, max_events: int, max_bytes: int
) -> tuple[bytes, ...]:
    chosen: list[bytes] = []
    for event in events[from_offset:]:
        if len(chosen) == max_events:
            break
        if chosen and sum(map(len, chosen)) + len(event) > max_bytes:
            break
        chosen.append(event)
    return tuple(chosen)


class EventStoreModel(RuleBasedStateMachine):
    """EventStore against a dict of (tenant, name) to a list of (op, event)."""

    def __init__(self) -> None:
        super().__init__()
        self.machine = EventStore()
        self.streams: dict[tuple[int, str], StreamModel] = {}
        self.op = 0

    def apply(self, body: bytes, step: int) -> es.StoreReply:
        self.op += step
        return es.decode_reply(self.machine.apply(self.op, body))

    @rule(tenant=tenants, name=stream_names, data=st.sampled_from(DataClass), step=op_steps)
    def create(self, tenant: int, name: str, data: DataClass, step: int) -> None:
        reply = self.apply(es.encode_create_stream(tenant, name, data), step)
        if (tenant, name) in self.streams:
            assert isinstance(reply, StoreError), f"second create must fail, got {reply}"
            assert reply.code == ErrorCode.STREAM_ALREADY_EXISTS
        else:
            assert reply == CreateStreamReply(self.op), f"create: got {reply}"
            self.streams[(tenant, name)] = StreamModel(self.op)

    @rule(
        tenant=tenants,
        name=stream_names,
        batch=events,
        expected=st.one_of(st.none(), st.just("length"), st.integers(0, 6)),
        step=op_steps,
    )
    def append(
        self, tenant: int, name: str, batch: list[bytes], expected: int | str | None, step: int
    ) -> None:
        stream = self.streams.get((tenant, name))
        length = 0 if stream is None else len(stream.events)
        offset = length if expected == "length" else expected
        assert offset is None or isinstance(offset, int)
        reply = self.apply(es.encode_append(tenant, name, batch, offset), step)
        if stream is None:
            assert isinstance(reply, StoreError) and reply.code == ErrorCode.STREAM_NOT_FOUND
        elif offset is not None and offset != length:
            assert reply == StoreError(ErrorCode.UNEXPECTED_OFFSET, reply.message, length), (
                f"expected UNEXPECTED_OFFSET with length {length}, got {reply}"
            )
        else:
            assert reply == AppendEventsReply(length, self.op), f"append: got {reply}"
            stream.events.extend((self.op, event) for event in batch)

    @rule(
        tenant=tenants,
        name=stream_names,
        from_offset=st.integers(0, 8),
        max_events=st.integers(1, 5),
        max_bytes=st.integers(1, 30),
        step=op_steps,
    )
    def read(
        self, tenant: int, name: str, from_offset: int, max_events: int, max_bytes: int, step: int
    ) -> None:
        body = es.encode_read(tenant, name, from_offset, max_events, max_bytes)
        reply = self.apply(body, step)
        stream = self.streams.get((tenant, name))
        if stream is None:
            assert isinstance(reply, StoreError) and reply.code == ErrorCode.STREAM_NOT_FOUND
            return
        current = [event for _, event in stream.events]
        expected = model_read(current, from_offset, max_events, max_bytes)
        assert reply == ReadEventsReply(from_offset, self.op, expected), f"read: got {reply}"

    @rule(
        tenant=tenants,
        name=stream_names,
        back=st.integers(-2, 12),
        from_offset=st.integers(0, 4),
        max_bytes=st.integers(1, 30),
        step=op_steps,
    )
    def read_as_of(
        self, tenant: int, name: str, back: int, from_offset: int, max_bytes: int, step: int
    ) -> None:
        position = max(0, self.op + step - back)  # back < 0: a position beyond the log
        body = es.encode_read_as_of(tenant, name, position, from_offset, 8, max_bytes)
        reply = self.apply(body, step)
        stream = self.streams.get((tenant, name))
        if position > self.op:
            assert isinstance(reply, StoreError) and reply.code == ErrorCode.INVALID_REQUEST
        elif stream is None or stream.created_op > position:
            assert isinstance(reply, StoreError), f"as of {position}: expected not found"
            assert reply.code == ErrorCode.STREAM_NOT_FOUND
        else:
            expected = model_read(stream.as_of(position), from_offset, 8, max_bytes)
            assert reply == ReadEventsReply(from_offset, position, expected), (
                f"read as of {position}: got {reply}, expected {expected}"
            )

    @rule(body=st.binary(max_size=60), step=op_steps)
    def garbage(self, body: bytes, step: int) -> None:
        twin = EventStore.restore(self.machine.snapshot(), self.machine.storage)
        reply = self.apply(body, step)
        twin.apply(self.op, b"")  # an error that changes nothing but the applied op
        if isinstance(reply, StoreError):
            assert self.machine.digest() == twin.digest(), "a refused body changed the state"
            twin.close()
        else:
            self.machine.close()
            self.machine = twin  # keep the model in step: forget the lucky valid body

    @rule(part_bytes=st.integers(1, 64))
    def snapshot_and_restore(self, part_bytes: int) -> None:
        snapshot = self.machine.snapshot()
        size, taken = self.machine.snapshot_parts(part_bytes)
        parts = list(taken)
        assert b"".join(parts) == snapshot and size == len(snapshot), "parts must join"
        fed = loaded(EventStore, snapshot, part_bytes)
        assert fed.snapshot() == snapshot, "a state fed a part at a time must load the same"
        fed.close()
        restored = EventStore.restore(snapshot, self.machine.storage)
        assert restored.digest() == self.machine.digest(), "restored digest differs"
        assert restored.snapshot() == snapshot, "a snapshot of the restored machine differs"
        self.machine.close()
        self.machine = restored

    @invariant()
    def matches_model(self) -> None:
        self.machine.invariants()
        for (tenant, name), stream in self.streams.items():
            assert self.machine.stream_length(tenant, name) == len(stream.events)
        for tenant in [1, 2, 2**64 - 1]:
            for name in ["a", "orders", "Z9._:-x"]:
                if (tenant, name) not in self.streams:
                    assert self.machine.stream_length(tenant, name) is None


TestEventStoreModel = EventStoreModel.TestCase
TestEventStoreModel.settings = STATEFUL


def test_streams_are_scoped_per_tenant() -> None:
    machine = EventStore()
    machine.apply(1, es.encode_create_stream(1, "orders", DataClass.PII))
    machine.apply(2, es.encode_append(1, "orders", [b"secret"]))
    for op, body in [
        (3, es.encode_read(2, "orders", 0)),
        (4, es.encode_read_as_of(2, "orders", 3, 0)),
        (5, es.encode_append(2, "orders", [b"x"])),
        (6, es.encode_append(2, "orders", [b"x"], expected_offset=1)),
    ]:
        reply = es.decode_reply(machine.apply(op, body))
        assert isinstance(reply, StoreError), f"tenant 2 must not reach tenant 1: {reply}"
        assert reply.code == ErrorCode.STREAM_NOT_FOUND
    # Tenant 2 may create its own "orders"; it starts empty and stays apart.
    reply = es.decode_reply(machine.apply(7, es.encode_create_stream(2, "orders", DataClass.PII)))
    assert reply == CreateStreamReply(7)
    assert machine.stream_length(2, "orders") == 0 and machine.stream_length(1, "orders") == 1


def test_read_as_of_sees_the_stream_as_it_was() -> None:
    machine = EventStore()
    machine.apply(10, es.encode_create_stream(1, "s", DataClass.PUBLIC))
    machine.apply(12, es.encode_append(1, "s", [b"a", b"b"]))
    machine.apply(15, es.encode_append(1, "s", [b"c"]))

    def as_of(op: int, position: int) -> es.StoreReply:
        return es.decode_reply(machine.apply(op, es.encode_read_as_of(1, "s", position, 0)))

    assert as_of(20, 11) == ReadEventsReply(0, 11, ())
    assert as_of(21, 12) == ReadEventsReply(0, 12, (b"a", b"b"))
    assert as_of(22, 14) == ReadEventsReply(0, 14, (b"a", b"b"))
    assert as_of(23, 23) == ReadEventsReply(0, 23, (b"a", b"b", b"c"))
    before = as_of(24, 9)
    assert isinstance(before, StoreError) and before.code == ErrorCode.STREAM_NOT_FOUND
    beyond = as_of(25, 26)
    assert isinstance(beyond, StoreError) and beyond.code == ErrorCode.INVALID_REQUEST


def test_read_limits_return_the_first_event_whatever_its_size() -> None:
    machine = EventStore()
    machine.apply(1, es.encode_create_stream(1, "s", DataClass.PUBLIC))
    machine.apply(2, es.encode_append(1, "s", [b"x" * 100, b"y", b"z"]))
    reply = es.decode_reply(machine.apply(3, es.encode_read(1, "s", 0, max_bytes=10)))
    assert reply == ReadEventsReply(0, 3, (b"x" * 100,))
    reply = es.decode_reply(machine.apply(4, es.encode_read(1, "s", 1, max_bytes=2)))
    assert reply == ReadEventsReply(1, 4, (b"y", b"z"))
    reply = es.decode_reply(machine.apply(5, es.encode_read(1, "s", 1, max_events=1)))
    assert reply == ReadEventsReply(1, 5, (b"y",))
    reply = es.decode_reply(machine.apply(6, es.encode_read(1, "s", 9)))
    assert reply == ReadEventsReply(9, 6, ())


def test_event_store_capacity_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(es, "STREAMS_MAX", 1)
    monkeypatch.setattr(es, "STREAM_EVENTS_MAX", 3)
    machine = EventStore()
    reply = es.decode_reply(machine.apply(1, es.encode_create_stream(1, "a", DataClass.PUBLIC)))
    assert reply == CreateStreamReply(1), reply
    reply = es.decode_reply(machine.apply(2, es.encode_create_stream(1, "b", DataClass.PUBLIC)))
    assert isinstance(reply, StoreError) and reply.code == ErrorCode.TOO_LARGE, reply
    reply = es.decode_reply(machine.apply(3, es.encode_append(1, "a", [b"1", b"2"])))
    assert reply == AppendEventsReply(0, 3), reply
    reply = es.decode_reply(machine.apply(4, es.encode_append(1, "a", [b"3", b"4"])))
    assert isinstance(reply, StoreError) and reply.code == ErrorCode.TOO_LARGE, reply
    assert machine.stream_length(1, "a") == 2


def test_store_replies_map_to_wire_errors() -> None:
    error = es.store_error(ErrorCode.UNEXPECTED_OFFSET, "x" * 5000, 7)
    assert len(error.message.encode()) == es.ERROR_MESSAGE_SIZE_MAX
    wire = es.to_wire_reply(error)
    assert (wire.code, wire.message, wire.primary_address) == (error.code, error.message, None)
    assert es.to_wire_reply(CreateStreamReply(4)) == CreateStreamReply(4)
    with pytest.raises(ValueError):
        StoreError(ErrorCode.STREAM_NOT_FOUND, "", 3)
    with pytest.raises(ValueError):
        StoreError(ErrorCode.UNEXPECTED_OFFSET, "", None)
    with pytest.raises(ValueError):
        es.encode_append(1, "bad name", [b"x"])
    with pytest.raises(ValueError):
        es.encode_append(1, "s", [])
    with pytest.raises(ValueError):
        es.encode_create_stream(-1, "s", DataClass.PUBLIC)
    placement = Placement(PlacementKind.REGION, "eu-west-1")
    request = es.decode_request(es.encode_create_stream(3, "s", DataClass.PHI, placement))
    assert request.tenant_id == 3 and request.message.placement == placement  # type: ignore[union-attr]


# --- Both machines ---------------------------------------------------------------------------

MACHINES: list[type[KvMachine] | type[EventStore]] = [KvMachine, EventStore]


def valid_bodies() -> list[bytes]:
    return [
        kv.encode_put(b"key", b"value"),
        kv.encode_get(b"key"),
        es.encode_create_stream(5, "orders", DataClass.INTERNAL),
        es.encode_append(5, "orders", [b"e1", b"e2"], expected_offset=0),
        es.encode_read(5, "orders", 0, 3, 100),
        es.encode_read_as_of(5, "orders", 2, 0, 3, 100),
    ]


AUDITED_REFUSALS = (ErrorCode.PERMISSION_DENIED, ErrorCode.AUTHENTICATION_FAILED)


def decode_any(machine: StateMachine, reply: bytes) -> bool:
    """Decode a reply of ``machine``; True if it is an error reply that changes nothing (an
    event store's denials are written to the tenant's audit stream)."""
    if isinstance(machine, KvMachine):
        return not kv.decode_reply(reply).ok
    decoded = es.decode_reply(reply)
    return isinstance(decoded, StoreError) and decoded.code not in AUDITED_REFUSALS


@PROPERTY
@given(
    machine_type=st.sampled_from(MACHINES),
    body=st.one_of(
        st.binary(max_size=200),
        st.builds(
            lambda body, index, value, cut: body[:index] + bytes([value]) + body[index + 1 : cut],
            st.sampled_from(valid_bodies()),
            st.integers(0, 60),
            st.integers(0, 255),
            st.integers(0, 80),
        ),
    ),
)
def test_apply_never_raises_and_refusals_change_nothing(
    machine_type: type[KvMachine] | type[EventStore], body: bytes
) -> None:
    machine = machine_type()
    twin = machine_type()
    for op, setup in enumerate(valid_bodies(), start=1):
        machine.apply(op, setup)
        twin.apply(op, setup)
    reply = machine.apply(100, body)
    twin.apply(100, b"")
    if decode_any(machine, reply):
        assert machine.digest() == twin.digest(), "a refused body changed the state"
    machine.invariants()


def test_oversized_bodies_are_refused_before_decoding() -> None:
    assert not kv.decode_reply(KvMachine().apply(0, b"\x01" * (kv.BODY_SIZE_MAX + 1))).ok
    reply = es.decode_reply(EventStore().apply(0, b"\x02" * (es.REQUEST_SIZE_MAX + 1)))
    assert isinstance(reply, StoreError) and reply.code == ErrorCode.TOO_LARGE


@pytest.mark.parametrize("machine_type", MACHINES)
def test_ops_must_increase(machine_type: type[KvMachine] | type[EventStore]) -> None:
    machine = machine_type()
    machine.apply(0, b"")
    machine.apply(5, b"")
    for op in [5, 4, -1, OP_MAX + 1]:
        with pytest.raises(OpOrderError):
            machine.apply(op, b"")
    machine.apply(OP_MAX, b"")
    with pytest.raises(OpOrderError):
        machine.apply(OP_MAX, b"")
    assert machine.op_next == OP_MAX + 1
    assert machine_type.restore(machine.snapshot()).digest() == machine.digest()


kv_puts = st.lists(st.tuples(keys, values), max_size=12)


@PROPERTY
@given(puts=kv_puts, data=st.data())
def test_kv_equal_states_have_equal_digests(
    puts: list[tuple[bytes, bytes]], data: st.DataObject
) -> None:
    one = KvMachine()
    for op, (key, value) in enumerate(puts):
        one.apply(op, kv.encode_put(key, value))
    final = dict(puts)
    items = data.draw(st.permutations(list(final.items())))
    other = KvMachine()  # the same registers, reached in another order at other ops
    for op, (key, value) in enumerate(items):
        other.apply(op, kv.encode_put(key, value))
    last = max(len(puts), len(items))
    one.apply(last, b"")
    other.apply(last, b"")
    assert one.digest() == other.digest(), "equal states must have equal digests"
    assert one.snapshot() == other.snapshot(), "equal states must have equal snapshots"
    changed = b"one" if final.get(b"a") != b"one" else b"two"
    other.apply(last + 1, kv.encode_put(b"a", changed))
    one.apply(last + 1, b"")
    assert one.digest() != other.digest(), "a changed register must change the digest"


@PROPERTY
@given(
    machine_type=st.sampled_from(MACHINES),
    position=st.integers(0, 10_000),
    value=st.integers(1, 255),
    cut=st.booleans(),
    part_bytes=st.integers(1, 300),
)
def test_damaged_snapshots_are_refused(
    machine_type: type[KvMachine] | type[EventStore],
    position: int,
    value: int,
    cut: bool,
    part_bytes: int,
) -> None:
    machine = machine_type()
    for op, body in enumerate(valid_bodies()):
        machine.apply(op, body)
    snapshot = machine.snapshot()
    index = position % len(snapshot)
    if cut:
        damaged = snapshot[:index]
    else:
        damaged = snapshot[:index] + bytes([snapshot[index] ^ value]) + snapshot[index + 1 :]
    with pytest.raises(SnapshotError):
        machine_type.restore(damaged)
    with pytest.raises(SnapshotError):
        loaded(machine_type, damaged, part_bytes)


def loaded(machine_type: type[StateMachine], snapshot: bytes, part_bytes: int) -> StateMachine:
    """The machine a snapshot loader builds from ``snapshot`` fed ``part_bytes`` at a time."""
    loader = machine_type.snapshot_loader()
    for at in range(0, len(snapshot), part_bytes):
        loader.feed(snapshot[at : at + part_bytes])
    return loader.finish()


def test_snapshots_name_their_machine() -> None:
    with pytest.raises(SnapshotError, match="another machine"):
        EventStore.restore(KvMachine().snapshot())
    with pytest.raises(SnapshotError, match="another machine"):
        KvMachine.restore(EventStore().snapshot())
    with pytest.raises(SnapshotError):
        KvMachine.restore(b"")


def test_forged_snapshot_with_a_valid_digest_must_still_be_canonical() -> None:
    """Keys out of order would give an equal state from other bytes: refused."""
    state = struct.pack("<QI", 3, 2)
    for key in [b"b", b"a"]:
        state += struct.pack("<I", len(key)) + key + struct.pack("<I", 1) + b"v"
    digest = hashlib.sha256(kv.NAME.encode() + b"\x00" + state).digest()
    with pytest.raises(SnapshotError, match="increasing"):
        KvMachine.restore(seal_snapshot(kv.NAME, state, digest))


def scripted(machine: StateMachine) -> list[bytes]:
    """A fixed script of operations: the replies, for pinning and determinism checks."""
    if isinstance(machine, KvMachine):
        bodies = [
            kv.encode_put(b"b", b"2"),
            kv.encode_put(b"a", b"1"),
            kv.encode_get(b"a"),
            kv.encode_put(b"c", b"x" * 100),
            b"junk",
        ]
    else:
        bodies = [
            es.encode_create_stream(2, "zeta", DataClass.PHI),
            es.encode_create_stream(1, "alpha", DataClass.PUBLIC),
            es.encode_create_stream(1, "eu", DataClass.PII, Placement(PlacementKind.REGION, "eu")),
            es.encode_append(2, "zeta", [b"z1"]),
            es.encode_append(1, "alpha", [b"a1", b"a2"], expected_offset=0),
            es.encode_append(1, "alpha", [b"a3"], expected_offset=0),
            es.encode_read(1, "alpha", 1),
            b"junk",
        ]
    return [machine.apply(op, body) for op, body in enumerate(bodies, start=1)]


# (digest, SHA-256 of the snapshot) of the scripted state of each machine
PINNED = {
    "craton.kv": (
        "c4460e7ba9a9b26ebd7bf827991fc3c03d1beb6be2af07ca7d3615332f5b3560",
        "c80ce31eaabee2f7849ea37e86f18b5ce77c0a472ec0aef984f2c13ee06c226d",
    ),
    "craton.event_store": (
        "cdb665fd3ceb3f41e1b2bb34a89b10bccdd793234f633cb52d2050b9397e2f27",
        "adc03c9310671ac57d84f71f20ef49016c53b2982b21db3c4486d7df1ec17fcd",
    ),
}


@pytest.mark.parametrize("machine_type", MACHINES)
def test_digests_are_pinned_and_deterministic(
    machine_type: type[KvMachine] | type[EventStore],
) -> None:
    """The digest of a scripted state is a constant: the same in every process, on every
    machine, under every PYTHONHASHSEED (a change here is a change of format)."""
    one, other = machine_type(), machine_type()
    assert scripted(one) == scripted(other), "the same operations must give the same replies"
    assert one.digest() == other.digest() and one.snapshot() == other.snapshot()
    assert len(one.digest()) == 32
    digest, snapshot_hash = PINNED[machine_type.name]
    assert one.digest().hex() == digest, f"digest format changed: {one.digest().hex()}"
    found = hashlib.sha256(one.snapshot()).hexdigest()
    assert found == snapshot_hash, f"snapshot format changed: {found}"


def test_a_large_state_is_taken_in_parts_as_it_was_when_asked_for() -> None:
    store = EventStore()
    store.apply(0, es.encode_create_stream(1, "orders", DataClass.PUBLIC))
    for op in range(1, 50):
        store.apply(op, es.encode_append(1, "orders", [bytes([op]) * 40]))
    expected = store.snapshot()
    size, parts = store.snapshot_parts(256)
    # later ops change the machine before the parts are taken: they must not show
    store.apply(50, es.encode_create_stream(1, "later", DataClass.PUBLIC))
    store.apply(51, es.encode_append(1, "orders", [b"after"]))
    taken = list(parts)
    assert b"".join(taken) == expected and size == len(expected), "expected the state at op 50"
    assert len(taken) > 5, f"expected the state cut into parts, got {len(taken)}"
    middle = [len(part) for part in taken[1:-2]]  # (the envelope's head and digest are apart)
    assert all(256 <= n < 256 + 64 for n in middle), middle


@pytest.mark.parametrize(
    ("found", "replaced", "why"),
    [
        (struct.pack("<QQ", 12, 13), struct.pack("<QQ", 13, 12), "ops are not increasing"),
        (struct.pack("<QQ", 2, 3), struct.pack("<QQ", 3, 3), "appends out of order"),
    ],
    ids=["ops", "append-ends"],
)
def test_a_state_whose_columns_are_out_of_order_is_refused(
    found: bytes, replaced: bytes, why: str
) -> None:
    """Columns that decode but break the order reads rely on are refused, even sealed in a
    well-formed envelope (as a faulty writer would seal them)."""
    store = EventStore()
    store.apply(10, es.encode_create_stream(1, "orders", DataClass.PUBLIC))
    for op in range(11, 16):
        store.apply(op, es.encode_append(1, "orders", [bytes([op]) * 8]))
    state, digest = open_snapshot(EventStore.name, store.snapshot())
    assert bytes(state).count(found) == 1, "expected the column once"
    damaged = bytes(state).replace(found, replaced)
    with pytest.raises(SnapshotError, match=why):
        EventStore.restore(seal_snapshot(EventStore.name, damaged, digest))
