"""A single-node log service: the log behind the driver, answering client requests.

This is the smallest complete machine on top of ``craton.core.log``: it appends what clients
send and reads back what they ask for, and it replies to an append only after the batch
holding it was synced (the ordering contract of ``craton.core.seam``). The replicated
machines build on the same log; this one serves the demonstration (``craton demo``), the
benchmarks and the tests of the driver.

Request bodies: ``b"A" + payload`` appends the payload; ``b"R" + position (u64 LE)`` reads a
record; ``b"C"`` seals a checkpoint at the durable position; ``b"T" + position (u64)``
removes the records from that position on (appends waiting there are refused);
``b"S" + state`` saves an owner state in the superblock. Replies: ``b"\\x00" + position
(u64) + chain hash (32 bytes)`` for an append, ``b"\\x00" + position`` for a checkpoint or
truncation, ``b"\\x00" + state`` for a state save,
``b"\\x00" + payload`` for a read, ``b"\\x01" + reason (UTF-8)`` for a refusal.
"""

from __future__ import annotations

import collections
from collections.abc import Callable

from craton.core.log import (
    BaseInstalled,
    Checkpointed,
    Durable,
    Log,
    LogConfig,
    LogError,
    LogOutput,
    OwnerStateSaved,
    ReadFailed,
    ReadResult,
    Recovered,
    StateRead,
    StateSaved,
    Truncated,
)
from craton.core.seam import (
    ClientRequest,
    Effect,
    Input,
    IoIds,
    MessageReceived,
    Notice,
    Reply,
    Submit,
    Tick,
)

OK = b"\x00"
REFUSED = b"\x01"
WAITING_MAX = 1_000_000


class LogService:
    def __init__(self, config: LogConfig) -> None:
        self.log = Log(config, IoIds())
        self._started = False
        # appends waiting for their batch's sync, in position order: (position, hash, client)
        self._waiting: collections.deque[tuple[int, bytes, int, int]] = collections.deque()
        self._reads: dict[int, tuple[int, int]] = {}  # tag -> (client_id, request_id)
        # (client_id, request_id) waiting for a checkpoint, truncation or state save
        self._controls: dict[str, list[tuple[int, int]]] = {
            "checkpoint": [],
            "truncate": [],
            "state": [],
        }
        self._next_tag = 1

    def start(self) -> list[Effect]:
        assert not self._started
        self._started = True
        return self._effects(self.log.start())

    def step(self, event: Input) -> list[Effect]:
        match event:
            case Tick() | MessageReceived():
                return []
            case ClientRequest():
                return self._on_request(event)
            case Submit():
                raise AssertionError("a Submit is the gateway's input (craton.core.gateway)")
            case _:
                return self._effects(self.log.on_disk(event))

    def invariants(self) -> None:
        self.log.invariants()
        positions = [position for position, _, _, _ in self._waiting]
        assert positions == sorted(positions)
        assert all(position >= self.log.durable for position in positions)
        assert len(self._waiting) <= WAITING_MAX

    def _on_request(self, request: ClientRequest) -> list[Effect]:
        body = request.body
        if body[:1] == b"A":
            try:
                position, outputs = self.log.append(body[1:])
            except (LogError, ValueError) as error:
                return [self._refuse(request, str(error))]
            waiting = (position, self.log.chain_hash, request.client_id, request.request_id)
            self._waiting.append(waiting)
            return self._effects(outputs)
        if body[:1] == b"R" and len(body) == 9:
            tag = self._next_tag
            self._next_tag += 1
            self._reads[tag] = (request.client_id, request.request_id)
            return self._effects(self.log.read(int.from_bytes(body[1:], "little"), tag))
        if body == b"C":
            return self._control(request, "checkpoint", self.log.checkpoint_now)
        if body[:1] == b"T" and len(body) == 9:
            position = int.from_bytes(body[1:], "little")
            effects = self._control(request, "truncate", lambda: self.log.truncate(position))
            while self._waiting and self._waiting[-1][0] >= position and self.log.head <= position:
                _, _, client_id, request_id = self._waiting.pop()
                effects.append(Reply(client_id, request_id, REFUSED + b"truncated"))
            return effects
        if body[:1] == b"S":
            state = body[1:]
            return self._control(request, "state", lambda: self.log.save_owner_state(state))
        return [self._refuse(request, "unknown request")]

    def _control(
        self, request: ClientRequest, kind: str, call: Callable[[], list[LogOutput]]
    ) -> list[Effect]:
        """Start a checkpoint, truncation or state save; the reply follows its completion."""
        try:
            outputs = call()
        except LogError as error:
            return [self._refuse(request, str(error))]
        self._controls[kind].append((request.client_id, request.request_id))
        return self._effects(outputs)

    def _answer(self, kind: str, body: bytes) -> list[Effect]:
        waiting, self._controls[kind] = self._controls[kind], []
        return [Reply(client_id, request_id, OK + body) for client_id, request_id in waiting]

    def _refuse(self, request: ClientRequest, reason: str) -> Reply:
        return Reply(request.client_id, request.request_id, REFUSED + reason.encode())

    def _effects(self, outputs: list[LogOutput]) -> list[Effect]:
        """Turn the log's owner-facing outputs into replies; pass effects through."""
        effects: list[Effect] = []
        for output in outputs:
            match output:
                case Durable():
                    while self._waiting and self._waiting[0][0] < output.position:
                        position, own_hash, client_id, request_id = self._waiting.popleft()
                        reply = OK + position.to_bytes(8, "little") + own_hash
                        effects.append(Reply(client_id, request_id, reply))
                case ReadResult():
                    client_id, request_id = self._reads.pop(output.tag)
                    effects.append(Reply(client_id, request_id, OK + output.body))
                case ReadFailed():
                    client_id, request_id = self._reads.pop(output.tag)
                    effects.append(Reply(client_id, request_id, REFUSED + output.reason.encode()))
                case Checkpointed():
                    effects.append(Notice("log.checkpoint", (("position", output.position),)))
                    effects.extend(
                        self._answer("checkpoint", output.position.to_bytes(8, "little"))
                    )
                case Truncated():
                    effects.extend(self._answer("truncate", output.position.to_bytes(8, "little")))
                case OwnerStateSaved():
                    effects.extend(self._answer("state", output.state))
                case Recovered():
                    effects.append(Notice("log.recovered", (("head", output.head),)))
                case BaseInstalled() | StateSaved() | StateRead():
                    raise AssertionError("the log service keeps no state files")
                case _:
                    effects.append(output)
        return effects
