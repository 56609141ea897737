"""The interfaces between Craton's driver and the world: Disk, Network, Clock, Entropy.

Each is a ``typing.Protocol`` in submit/complete style, not ``async``: a request is handed
over with ``submit`` (or ``send``) and its outcome arrives later through a callback. The same
driver runs against the production implementations (files, TCP, the system clock) and the
simulated ones in ``craton.sim``; a conformance suite in ``tests/io`` holds them to one
behaviour.

Rules every implementation keeps:
- A completion callback is never invoked from inside ``submit``; it runs later, on the
  thread that owns the driver (the simulator's loop, or the asyncio loop in production).
- Exactly one completion is delivered for every submitted request, carrying its ``io_id``.
- ``DiskSync(path)`` makes durable every write to ``path`` whose ``WriteDone`` was delivered
  before the sync was submitted, and the file's existence (its folder entry).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from craton.core.seam import DiskCompletion, DiskRequest

DiskCallback = Callable[[DiskCompletion], None]
ReceiveCallback = Callable[[int, bytes], None]


class Disk(Protocol):
    def submit(self, request: DiskRequest, complete: DiskCallback) -> None:
        """Queue ``request``; ``complete`` is called once with its outcome."""
        ...


class Network(Protocol):
    def send(self, dst: int, payload: bytes) -> None:
        """Queue ``payload`` for replica ``dst``. Delivery, order and uniqueness are not
        promised: the protocol above tolerates loss, duplication and reordering."""
        ...

    def set_receiver(self, receive: ReceiveCallback) -> None:
        """Register the callback that gets ``(src, payload)`` for every arriving message."""
        ...


class Clock(Protocol):
    def monotonic_ns(self) -> int:
        """Nanoseconds from an arbitrary origin; never goes backwards."""
        ...

    def realtime_ns(self) -> int:
        """Wall-clock nanoseconds since the Unix epoch; may jump in either direction."""
        ...


class Entropy(Protocol):
    def random_bytes(self, count: int) -> bytes:
        """``count`` bytes of randomness (seeded in the simulator, the OS's in production)."""
        ...
