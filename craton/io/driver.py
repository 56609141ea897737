"""The driver: the one piece that carries out a core machine's effects.

The same ``Driver`` runs in the simulator and in production; only the ``Disk``, ``Network``
and callbacks handed to it differ. It feeds an input to the machine, executes the returned
effects in order (see the ordering contract in ``craton.core.seam``), and turns every I/O
completion back into an input.

Inputs that arrive while effects are being executed (a completion cannot — the interfaces
never complete inside ``submit`` — but a reply callback may answer with a new request) are
queued and fed after the current list is done, so effects are always executed in the order
the machine emitted them.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import assert_never

from craton.core.seam import (
    Answer,
    DiskList,
    DiskRead,
    DiskSync,
    DiskTruncate,
    DiskWrite,
    Effect,
    Halt,
    Input,
    Machine,
    MessageReceived,
    Notice,
    Reply,
    Send,
)
from craton.io.interfaces import Disk, Network

INBOX_MAX = 1_000_000


class Driver:
    def __init__(
        self,
        machine: Machine,
        disk: Disk,
        *,
        network: Network | None = None,
        on_reply: Callable[[Reply], None] | None = None,
        on_answer: Callable[[Answer], None] | None = None,
        on_notice: Callable[[Notice], None] | None = None,
        on_halt: Callable[[Halt], None] | None = None,
        check_invariants: bool = False,
    ) -> None:
        self.machine = machine
        self._disk = disk
        self._network = network
        self._on_reply = on_reply
        self._on_answer = on_answer
        self._on_notice = on_notice
        self._on_halt = on_halt
        self._check_invariants = check_invariants
        self._inbox: collections.deque[Input] = collections.deque()
        self._busy = False
        self.halted: Halt | None = None
        self.steps = 0
        if network is not None:
            network.set_receiver(self._receive)

    def launch(self, effects: list[Effect]) -> None:
        """Carry out a machine's start-up effects (e.g. the reads that begin recovery)."""
        assert not self._busy and self.steps == 0
        self._busy = True
        try:
            for effect in effects:
                self._execute(effect)
                if self.halted is not None:
                    break
        finally:
            self._busy = False
        self._drain()

    def step(self, event: Input) -> None:
        """Feed ``event`` to the machine and carry out what it asks for."""
        assert len(self._inbox) < INBOX_MAX, "driver inbox overflow"
        self._inbox.append(event)
        if not self._busy:
            self._drain()

    def _drain(self) -> None:
        self._busy = True
        try:
            while self._inbox and self.halted is None:
                effects = self.machine.step(self._inbox.popleft())
                self.steps += 1
                if self._check_invariants:
                    self.machine.invariants()
                for effect in effects:
                    self._execute(effect)
                    if self.halted is not None:
                        break
            self._inbox.clear()
        finally:
            self._busy = False

    def _execute(self, effect: Effect) -> None:
        match effect:
            case DiskRead() | DiskWrite() | DiskSync() | DiskTruncate() | DiskList():
                self._disk.submit(effect, self.step)
            case Send():
                assert self._network is not None, "a machine sent without a network"
                self._network.send(effect.dst, effect.payload)
            case Reply():
                if self._on_reply is not None:
                    self._on_reply(effect)
            case Answer():
                if self._on_answer is not None:
                    self._on_answer(effect)
            case Notice():
                if self._on_notice is not None:
                    self._on_notice(effect)
            case Halt():
                self.halted = effect
                if self._on_halt is not None:
                    self._on_halt(effect)
            case _:
                assert_never(effect)

    def _receive(self, src: int, payload: bytes) -> None:
        self.step(MessageReceived(src, payload))
