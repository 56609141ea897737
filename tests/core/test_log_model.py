"""The log against a plain-list model, through appends, reads, crashes and disk faults.

A hypothesis ``RuleBasedStateMachine`` drives the real log service (through the real driver)
on the simulated disk. The model is a list of acknowledged payloads plus the payloads sent
but not yet acknowledged. What must hold:

- an acknowledged append returned the position the model expects, and reads of it return
  exactly its payload (a read may fail when the disk keeps failing, never return wrong bytes);
- after a crash, the recovered log holds every acknowledged record, and any further record
  it holds is the one that was sent for that position (prefix-consistent);
- the recovered directory passes the offline audit (checksums, chain, seals);
- with faults that destroy stored bytes (torn or misdirected writes, rot at rest), a lost
  acknowledged record or a refusal to start is allowed only when the disk recorded damage.

CI runs a bounded number of examples; CRATON_LOG_MODEL_EXAMPLES=2000 selects the long run.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from craton.core.audit import audit
from craton.core.log import SEGMENT_FOLDER
from craton.core.prng import Prng
from craton.sim.disk import DiskFaults
from craton.sim.log_world import AppendOk, LogWorld, Refused

EXAMPLES = int(os.environ.get("CRATON_LOG_MODEL_EXAMPLES", "120"))

payloads = st.binary(min_size=0, max_size=300)


def audit_world(world: LogWorld) -> tuple[bool, str]:
    names = [
        path.split("/", 1)[1]
        for path in world.disk.paths()
        if path.startswith(SEGMENT_FOLDER + "/")
    ]
    report = audit(names, world.disk.contents, public_key=world.service.log.public_key)
    return report.ok, report.problem or ""


class LogModel(RuleBasedStateMachine):
    destructive = False

    def __init__(self) -> None:
        super().__init__()
        self.world: LogWorld | None = None
        self.acked: list[bytes] = []  # payload at each acknowledged-or-recovered position
        self.sent: list[tuple[int, bytes]] = []  # (request id, payload) awaiting a reply
        self.floor: int | None = None  # acked records from here on may vanish (cut halted)
        self.state = b""  # the last owner state saved
        self.states_tried: list[bytes] = []  # states asked for whose outcome is unknown

    @initialize(seed=st.integers(0, 2**32 - 1), segment_kib=st.sampled_from([1, 2, 8]))
    def boot(self, seed: int, segment_kib: int) -> None:
        faults = DiskFaults.draw(Prng(seed, "faults"), destructive=self.destructive)
        self.world = LogWorld(
            seed, faults, segment_size_max=segment_kib * 1024, checkpoint_interval=7
        )
        if not self.world.is_open:
            cause = self.world.disk.faults["write_error"]
            assert cause, f"a fresh directory must open: {self.world.halt}"

    @property
    def w(self) -> LogWorld:
        assert self.world is not None
        return self.world

    def damaged(self) -> bool:
        return bool(self.w.disk.damage)

    @precondition(lambda self: self.world is not None and self.world.is_open)
    @rule(payload=payloads)
    def send(self, payload: bytes) -> None:
        self.sent.append((self.w.submit_append(payload), payload))

    @precondition(lambda self: self.world is not None and self.world.is_open)
    @rule()
    def collect(self) -> None:
        """Wait for every outstanding append and check the positions they were given."""
        while self.sent:
            request_id, payload = self.sent[0]
            reply = self.w.wait(request_id)
            if reply is None:  # the log halted (a write or sync failed): no acknowledgement
                assert self.w.halt is not None, "an append neither answered nor halted"
                return  # what was sent stays unacknowledged: it may or may not survive
            assert isinstance(reply, AppendOk), f"append refused: {reply}"
            assert reply.position == len(self.acked), "positions must be dense and in order"
            self.acked.append(payload)
            self.sent.pop(0)

    @precondition(lambda self: self.world is not None and self.world.is_open and self.acked)
    @rule(data=st.data())
    def read_back(self, data: st.DataObject) -> None:
        position = data.draw(st.integers(0, len(self.acked) - 1))
        got = self.w.read(position)
        if isinstance(got, bytes):
            assert got == self.acked[position], f"read of {position} returned other bytes"
        elif got is None:
            assert self.w.halt is not None, "a read neither answered nor halted"
        else:
            faulty = self.w.disk.faults["read_error"] + self.w.disk.faults["read_corruption"]
            assert faulty or self.damaged(), f"read of {position} failed on a sound disk: {got}"

    @precondition(lambda self: self.world is not None and self.world.is_open and self.acked)
    @rule(data=st.data())
    def truncate(self, data: st.DataObject) -> None:
        """Cut the log like a replica replacing an uncommitted suffix."""
        self.collect()
        if not self.w.is_open:
            return
        position = data.draw(st.integers(0, len(self.acked)))
        done = self.w.truncate(position)
        if done is None:  # halted mid-way: the cut may or may not have landed
            self.floor = position if self.floor is None else min(self.floor, position)
        elif done:
            self.acked = self.acked[:position]
            assert self.w.service.log.head == position

    @precondition(lambda self: self.world is not None and self.world.is_open)
    @rule(state=st.binary(max_size=64))
    def save_state(self, state: bytes) -> None:
        done = self.w.save_state(state)
        if done is None:
            self.states_tried.append(state)
        else:
            assert done, "saving an owner state was refused"
            self.state, self.states_tried = state, []

    @precondition(lambda self: self.world is not None)
    @rule()
    def crash_and_recover(self) -> None:
        pending = [payload for _, payload in self.sent]
        self.sent = []
        write_errors = self.w.disk.faults["write_error"]
        self.w.crash_and_recover()
        if not self.w.is_open and self.w.disk.faults["write_error"] > write_errors:
            self.sent = [(0, payload) for payload in pending]  # a write failed: try again later
            return
        if not self.w.is_open:
            assert self.damaged(), f"recovery refused a sound disk: {self.w.halt}"
            self.world = None  # the directory is damaged beyond what a single node repairs
            return
        head = self.w.service.log.head
        floor = len(self.acked) if self.floor is None else self.floor
        if head < floor:
            assert self.damaged(), f"lost acknowledged records {head}..{len(self.acked) - 1}"
        self.floor = None
        saved = self.w.service.log.owner_state
        assert saved in (self.state, *self.states_tried) or self.damaged(), "owner state lost"
        self.state, self.states_tried = saved, []
        survivors = (self.acked + pending)[:head]
        assert head <= len(self.acked) + len(pending), "recovered records nobody appended"
        for position in range(min(head, floor), head):
            got = self.w.read(position)
            assert got == survivors[position] or isinstance(got, Refused)
        self.acked = survivors
        ok, problem = audit_world(self.w)
        assert ok or self.damaged(), f"recovered directory fails the audit: {problem}"

    @rule()
    def settle(self) -> None:
        """Let in-flight I/O finish (also the only step left once a directory is given up)."""
        if self.world is not None:
            self.world.settle()

    @invariant()
    def never_halts_without_cause(self) -> None:
        if self.world is not None and self.world.halt is not None:
            disk = self.world.disk
            cause = disk.faults["write_error"] or self.damaged()
            assert cause, f"halted without a disk fault: {self.world.halt}"


class DestructiveLogModel(LogModel):
    destructive = True


STATEFUL = settings(
    max_examples=EXAMPLES,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

TestLogModel = LogModel.TestCase
TestLogModel.settings = STATEFUL
TestDestructiveLogModel = DestructiveLogModel.TestCase
TestDestructiveLogModel.settings = STATEFUL
