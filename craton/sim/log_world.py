"""A one-node simulated world: the log service on a simulated disk, driven by the driver.

It runs the very ``LogService``, ``Log`` and ``Driver`` that production runs; only the disk
is simulated. Tests, the stateful log model and ``craton demo`` use it to append, read,
crash and recover under a seeded fault plan.
"""

from __future__ import annotations

import attrs

from craton.core.log import LogConfig
from craton.core.log_service import OK, LogService
from craton.core.prng import Prng
from craton.core.seam import ClientRequest, Halt, Notice, Reply
from craton.io.driver import Driver
from craton.sim.disk import DiskFaults, SimDisk
from craton.sim.events import EventQueue

EVENTS_PER_OPERATION_MAX = 100_000


@attrs.frozen
class AppendOk:
    position: int
    chain_hash: bytes


@attrs.frozen
class Refused:
    reason: str


class LogWorld:
    def __init__(
        self,
        seed: int,
        faults: DiskFaults | None = None,
        *,
        segment_size_max: int = 1 << 20,
        checkpoint_interval: int = 64,
    ) -> None:
        self.prng = Prng(seed, "log-world")
        self.events = EventQueue()
        self.disk = SimDisk(self.prng.split("disk"), self.events, faults)
        self.config = LogConfig(
            seal_seed=self.prng.split("keys").random_bytes(32),
            segment_size_max=segment_size_max,
            checkpoint_interval=checkpoint_interval,
        )
        self.notices: list[Notice] = []
        self.halt: Halt | None = None
        self.replies: dict[int, bytes] = {}
        self._next_request = 1
        self.boots = 0
        self.service = LogService(self.config)
        self.driver = self._boot()

    def _boot(self) -> Driver:
        self.boots += 1
        self.halt = None
        self.service = LogService(self.config)
        driver = Driver(
            self.service,
            self.disk,
            on_reply=self._on_reply,
            on_notice=self.notices.append,
            on_halt=self._on_halt,
            check_invariants=True,
        )
        driver.launch(self.service.start())
        self.events.run_until(lambda: self.service.log.is_open or self.halt is not None)
        return driver

    @property
    def is_open(self) -> bool:
        return self.service.log.is_open and self.halt is None

    def crash_and_recover(self) -> None:
        """Kill the process (losing the page cache) and start a fresh one on the same disk."""
        self.disk.crash()
        self.driver = self._boot()

    def submit_append(self, payload: bytes) -> int:
        """Send an append without waiting; returns the request id."""
        return self._submit(b"A" + payload)

    def append(self, payload: bytes) -> AppendOk | Refused | None:
        """Append and wait for the reply (None: no reply came, e.g. the log halted)."""
        return self.wait(self.submit_append(payload))

    def read(self, position: int) -> bytes | Refused | None:
        request_id = self._submit(b"R" + position.to_bytes(8, "little"))
        reply = self._wait_raw(request_id)
        if reply is None:
            return None
        return reply[1:] if reply[:1] == OK else Refused(reply[1:].decode())

    def truncate(self, position: int) -> bool | None:
        """Cut the log at ``position``: True once durable, False if refused, None on halt."""
        reply = self._wait_raw(self._submit(b"T" + position.to_bytes(8, "little")))
        return None if reply is None else reply[:1] == OK

    def save_state(self, state: bytes) -> bool | None:
        """Save an owner state in the superblock: True once durable, None on halt."""
        reply = self._wait_raw(self._submit(b"S" + state))
        return None if reply is None else reply[:1] == OK

    def wait(self, request_id: int) -> AppendOk | Refused | None:
        reply = self._wait_raw(request_id)
        if reply is None:
            return None
        if reply[:1] != OK:
            return Refused(reply[1:].decode())
        return AppendOk(int.from_bytes(reply[1:9], "little"), reply[9:41])

    def settle(self) -> None:
        """Run until nothing is in flight."""
        self.events.run_until_idle()

    def _submit(self, body: bytes) -> int:
        request_id = self._next_request
        self._next_request += 1
        self.driver.step(ClientRequest(1, request_id, body))
        return request_id

    def _wait_raw(self, request_id: int) -> bytes | None:
        self.events.run_until(
            lambda: request_id in self.replies or self.halt is not None,
            EVENTS_PER_OPERATION_MAX,
        )
        return self.replies.pop(request_id, None)

    def _on_reply(self, reply: Reply) -> None:
        self.replies[reply.request_id] = reply.body

    def _on_halt(self, halt: Halt) -> None:
        self.halt = halt
