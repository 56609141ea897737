"""The linearizability checker: judges a run by what clients saw against the committed log.

It is handed two records kept apart from the replicas: the client-side history (every
request a simulated client sent, when it was invoked, and — if the client learned it — when
it completed, the reply and the log position the system reported) and the committed log
(the canonical sequence of client operations, by position). It answers with a list of
readable violations; an empty list means the history is linearizable with the log's order
as the witness.

What it checks, each violation prefixed by its ``Violation`` kind:
- the log is dense: positions follow one another from the first, with no gap or repeat;
- every committed entry is a request some client sent (same client, request number and
  body), and no request is committed twice (exactly-once);
- every acknowledged operation is committed, at exactly the position it was told;
- real-time order: if acknowledged A completed before B was invoked, A precedes B in the
  log whenever B is committed (acknowledged or not);
- replaying the committed log through a fresh state machine, ``apply(position, body)`` in
  order, gives every acknowledged operation exactly the reply it received (so reads return
  what the order implies).

An operation whose outcome its client never learned ("unknown") may or may not be
committed; if it is, it takes part in the real-time and replay checks like any other.

Rules it keeps: deterministic (no clocks, randomness, threads or set iteration: the same
inputs give the same messages in the same order); O(n log n) in the number of operations;
at most ``MESSAGES_MAX`` violations are spelled out, the rest are counted.
"""

from __future__ import annotations

import bisect
import enum
from collections.abc import Callable, Sequence
from typing import Protocol

import attrs

MESSAGES_MAX = 50  # violations described one by one; later ones are only counted
SHOWN_BYTES_MAX = 24  # bytes of a body or reply shown (as hex) by the default description


class Violation(enum.StrEnum):
    """The kind of a violation: the prefix of its message."""

    LOG_NOT_DENSE = "log not dense"
    PHANTOM = "phantom commit"
    BODY_MISMATCH = "body mismatch"
    DUPLICATE_COMMIT = "duplicate commit"
    DUPLICATE_REQUEST = "duplicate request"
    LOST_ACKNOWLEDGED = "lost acknowledged operation"
    WRONG_POSITION = "wrong position"
    REAL_TIME_ORDER = "real-time order"
    REPLY_MISMATCH = "reply mismatch"


@attrs.frozen
class Operation:
    """One request as its client saw it. ``completed_tick``, ``reply`` and ``position`` are
    all None when the client never learned the outcome (unknown, not failed), and all set
    when it was acknowledged (``position`` is the log position the system reported)."""

    client_id: int
    request_number: int
    body: bytes
    invoked_tick: int
    completed_tick: int | None = None
    reply: bytes | None = None
    position: int | None = None

    def __attrs_post_init__(self) -> None:
        outcome = (self.completed_tick, self.reply, self.position)
        if any(value is None for value in outcome) and any(v is not None for v in outcome):
            raise ValueError("completed_tick, reply and position are all set or all None")
        if self.completed_tick is not None and self.completed_tick < self.invoked_tick:
            raise ValueError(
                f"completed at tick {self.completed_tick}, before invoked at {self.invoked_tick}"
            )

    @property
    def acknowledged(self) -> bool:
        return self.completed_tick is not None

    @property
    def key(self) -> tuple[int, int]:
        return (self.client_id, self.request_number)


@attrs.frozen
class Committed:
    """The committed log's entry at ``position``: client ``client_id``'s request
    ``request_number`` with ``body``."""

    position: int
    client_id: int
    request_number: int
    body: bytes

    @property
    def key(self) -> tuple[int, int]:
        return (self.client_id, self.request_number)


Describe = Callable[[bytes], str]


class Replayable(Protocol):
    """What the replay needs of a state machine: every ``StateMachine`` is one, and so is a
    wrapper that answers some log entries itself (``apply`` only)."""

    def apply(self, op: int, body: bytes) -> bytes: ...


def check_history(
    operations: Sequence[Operation],
    committed: Sequence[Committed],
    make_machine: Callable[[], Replayable],
    *,
    describe_body: Describe | None = None,
    describe_reply: Describe | None = None,
) -> list[str]:
    """The violations of linearizability in this run; empty when there are none.

    ``committed`` lists the log in position order; ``make_machine`` gives a fresh state
    machine (a ``craton.core.state_machine.StateMachine``) for the replay. ``describe_body``
    and ``describe_reply`` turn bodies and replies into words in the messages (hex by
    default)."""
    report = _Report(describe_body or _hex, describe_reply or _hex)
    sent = _index_operations(operations, report)
    increasing = _check_dense(committed, report)
    where = _check_entries(committed, sent, report)
    _check_acknowledged(operations, committed, where, report)
    _check_real_time(sent, where, report)
    if increasing:
        _check_replies(operations, committed, where, make_machine, report)
    return report.messages()


# --- Checks ----------------------------------------------------------------------------------


def _index_operations(
    operations: Sequence[Operation], report: _Report
) -> dict[tuple[int, int], Operation]:
    """The operations by (client, request number); a number used twice is reported."""
    sent: dict[tuple[int, int], Operation] = {}
    for operation in operations:
        first = sent.get(operation.key)
        if first is None:
            sent[operation.key] = operation
        else:
            report.add(
                Violation.DUPLICATE_REQUEST,
                f"{_name(operation)} appears twice in the client history (invoked at ticks "
                f"{first.invoked_tick} and {operation.invoked_tick}); a client must not reuse "
                "a request number (only the first is checked)",
            )
    return sent


def _check_dense(committed: Sequence[Committed], report: _Report) -> bool:
    """Report gaps and repeats in the log; True if positions at least strictly increase."""
    increasing = True
    for index, entry in enumerate(committed):
        expected = committed[0].position + index
        if entry.position != expected:
            report.add(
                Violation.LOG_NOT_DENSE,
                f"entry {index} of the committed log is at position {entry.position}, "
                f"expected {expected} (positions follow one another from "
                f"{committed[0].position})",
            )
        if index and entry.position <= committed[index - 1].position:
            increasing = False
    return increasing


def _check_entries(
    committed: Sequence[Committed],
    sent: dict[tuple[int, int], Operation],
    report: _Report,
) -> dict[tuple[int, int], int]:
    """Every entry was sent, with that body, and only once; returns each request's (first)
    position."""
    where: dict[tuple[int, int], int] = {}
    for entry in committed:
        operation = sent.get(entry.key)
        if operation is None:
            report.add(
                Violation.PHANTOM,
                f"position {entry.position} holds {_name(entry)} "
                f"({report.body(entry.body)}), which no client sent",
            )
        elif operation.body != entry.body:
            report.add(
                Violation.BODY_MISMATCH,
                f"position {entry.position} holds {_name(entry)} with body "
                f"{report.body(entry.body)}, but the client sent {report.body(operation.body)}",
            )
        first = where.get(entry.key)
        if first is not None:
            report.add(
                Violation.DUPLICATE_COMMIT,
                f"{_name(entry)} is committed twice: at positions {first} and "
                f"{entry.position} (expected exactly once)",
            )
        else:
            where[entry.key] = entry.position
    return where


def _check_acknowledged(
    operations: Sequence[Operation],
    committed: Sequence[Committed],
    where: dict[tuple[int, int], int],
    report: _Report,
) -> None:
    """Every acknowledged operation is committed at the position it was told."""
    by_position = {entry.position: entry for entry in committed}
    for operation in operations:
        if not operation.acknowledged:
            continue
        told = operation.position
        actual = where.get(operation.key)
        if actual is None:
            span = (
                f"positions {committed[0].position}..{committed[-1].position}"
                if committed
                else "no positions"
            )
            report.add(
                Violation.LOST_ACKNOWLEDGED,
                f"{_name(operation)} ({report.body(operation.body)}) was acknowledged at "
                f"position {told} (tick {operation.completed_tick}) but is not in the "
                f"committed log ({span})",
            )
        elif actual != told:
            there = by_position.get(told) if told is not None else None
            holder = "nothing" if there is None else _name(there)
            report.add(
                Violation.WRONG_POSITION,
                f"{_name(operation)} was told position {told} but is committed at position "
                f"{actual}; position {told} holds {holder}",
            )


def _check_real_time(
    sent: dict[tuple[int, int], Operation],
    where: dict[tuple[int, int], int],
    report: _Report,
) -> None:
    """If acknowledged A completed before committed B was invoked, A precedes B in the log.

    The acknowledged operations sorted by completion tick, with a running maximum of their
    positions, give for each B the latest-placed A that completed before B was invoked."""
    done: list[tuple[int, int, Operation]] = []  # (completed tick, position, operation)
    for key, position in where.items():
        operation = sent.get(key)
        if operation is not None and operation.completed_tick is not None:
            done.append((operation.completed_tick, position, operation))
    done.sort(key=lambda item: item[:2])
    ticks = [tick for tick, _, _ in done]
    latest: list[tuple[int, Operation]] = []  # (position, operation) with the max position
    for _, position, operation in done:
        if not latest or position > latest[-1][0]:
            latest.append((position, operation))
        else:
            latest.append(latest[-1])
    for key, position in sorted(where.items(), key=lambda item: (item[1], item[0])):
        operation = sent.get(key)
        if operation is None:
            continue
        count = bisect.bisect_left(ticks, operation.invoked_tick)
        if count and latest[count - 1][0] > position:
            earlier_position, earlier = latest[count - 1]
            report.add(
                Violation.REAL_TIME_ORDER,
                f"{_name(earlier)} completed at tick {earlier.completed_tick}, before "
                f"{_name(operation)} was invoked at tick {operation.invoked_tick}, so it "
                f"must precede it in the log; it is at position {earlier_position}, after "
                f"position {position}",
            )


def _check_replies(
    operations: Sequence[Operation],
    committed: Sequence[Committed],
    where: dict[tuple[int, int], int],
    make_machine: Callable[[], Replayable],
    report: _Report,
) -> None:
    """Replay the log through a fresh machine; each acknowledged reply must be the replay's."""
    machine = make_machine()
    replies = {entry.position: machine.apply(entry.position, entry.body) for entry in committed}
    for operation in operations:
        position = where.get(operation.key)
        if operation.reply is None or position is None:
            continue
        expected = replies[position]
        if operation.reply != expected:
            report.add(
                Violation.REPLY_MISMATCH,
                f"{_name(operation)} ({report.body(operation.body)}) at position {position} "
                f"received {report.reply(operation.reply)}, but the committed order implies "
                f"{report.reply(expected)}",
            )


# --- Helpers ---------------------------------------------------------------------------------


class _Report:
    """Collects violation messages, spelling out at most ``MESSAGES_MAX``."""

    def __init__(self, describe_body: Describe, describe_reply: Describe) -> None:
        self.body = describe_body
        self.reply = describe_reply
        self._messages: list[str] = []
        self._dropped = 0

    def add(self, kind: Violation, detail: str) -> None:
        if len(self._messages) < MESSAGES_MAX:
            self._messages.append(f"{kind.value}: {detail}")
        else:
            self._dropped += 1

    def messages(self) -> list[str]:
        assert len(self._messages) <= MESSAGES_MAX
        if self._dropped:
            return [*self._messages, f"... and {self._dropped} more violations"]
        return list(self._messages)


def _name(item: Operation | Committed) -> str:
    return f"client {item.client_id} request {item.request_number}"


def _hex(data: bytes) -> str:
    shown = data[:SHOWN_BYTES_MAX].hex()
    return f"0x{shown}" if len(data) <= SHOWN_BYTES_MAX else f"0x{shown}... ({len(data)} bytes)"
