"""A log service on real files, driven synchronously: for tools, benchmarks and tests.

``LocalLog`` opens (formatting or recovering) a data directory with the production
``FileDisk`` and the one ``Driver``, and runs completions on the calling thread through a
``BlockingLoop``. It is what ``craton demo`` and ``scripts/bench_log.py`` use; the server
runs the same pieces under asyncio instead.

The data directory's signing key lives in ``signing.key`` (hex of a 32-byte Ed25519 seed,
mode 0600), created on first use from the OS's entropy; operators who keep the key
elsewhere pass ``seal_seed`` explicitly.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable
from pathlib import Path

from craton.core.log import LogConfig
from craton.core.log_service import OK, LogService
from craton.core.seal import KEY_SEED_SIZE
from craton.core.seam import ClientRequest, Halt, Notice, Reply
from craton.io.driver import Driver
from craton.io.entropy import OsEntropy
from craton.io.file_disk import FileDisk
from craton.io.loop import BlockingLoop

KEY_FILE = "signing.key"
WAIT_TIMEOUT_S = 60.0


class LogHalted(RuntimeError):
    """The log stopped (e.g. it found damage it must not paper over); the reason says why."""


class LogRefused(RuntimeError):
    """The log refused one request (e.g. a read of a damaged record); it keeps serving."""


def load_or_create_seal_seed(data_dir: Path) -> bytes:
    """The directory's signing key seed, created (0600) when the directory has none."""
    path = data_dir / KEY_FILE
    if path.exists():
        text = path.read_text(encoding="ascii").strip()
        seed = bytes.fromhex(text)
        if len(seed) != KEY_SEED_SIZE:
            raise ValueError(f"{path}: expected {KEY_SEED_SIZE * 2} hex digits")
        return seed
    seed = OsEntropy().random_bytes(KEY_SEED_SIZE)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(descriptor, seed.hex().encode("ascii") + b"\n")
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    return seed


class LocalLog:
    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        seal_seed: bytes | None = None,
        on_notice: Callable[[Notice], None] | None = None,
        **config: int,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        seed = seal_seed if seal_seed is not None else load_or_create_seal_seed(self.data_dir)
        self.loop = BlockingLoop()
        self.disk = FileDisk(self.data_dir, self.loop.post)
        self.service = LogService(LogConfig(seal_seed=seed, **config))
        self.replies: dict[int, bytes] = {}
        self.halt: Halt | None = None
        self._waiters: collections.deque[int] = collections.deque()
        self._next_request = 1
        self.driver = Driver(
            self.service,
            self.disk,
            on_reply=self._on_reply,
            on_notice=on_notice,
            on_halt=self._on_halt,
        )
        self.driver.launch(self.service.start())
        self._run_until(lambda: self.service.log.is_open)

    def close(self) -> None:
        """Seal a checkpoint at the durable position and stop the disk's workers."""
        try:
            if self.halt is None and self.service.log.is_open:
                self.checkpoint()
        finally:
            self.disk.close()

    def checkpoint(self) -> int:
        """Seal a checkpoint at the durable position; returns the position it covers."""
        return int.from_bytes(self._wait(self._submit(b"C")), "little")

    def __enter__(self) -> LocalLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def head(self) -> int:
        return self.service.log.head

    def submit_append(self, payload: bytes) -> int:
        return self._submit(b"A" + payload)

    def append(self, payload: bytes) -> int:
        """Append durably; returns the record's position."""
        return self.wait_append(self.submit_append(payload))

    def wait_append(self, request_id: int) -> int:
        reply = self._wait(request_id)
        return int.from_bytes(reply[:8], "little")

    def read(self, position: int) -> bytes:
        return self._wait(self._submit(b"R" + position.to_bytes(8, "little")))

    def poll(self) -> int:
        """Run completions that are ready; returns how many ran."""
        return self.loop.run_pending()

    def _submit(self, body: bytes) -> int:
        request_id = self._next_request
        self._next_request += 1
        self.driver.step(ClientRequest(1, request_id, body))
        return request_id

    def _wait(self, request_id: int) -> bytes:
        self._run_until(lambda: request_id in self.replies)
        reply = self.replies.pop(request_id)
        if reply[:1] != OK:
            reason = reply[1:].decode()
            raise LogHalted(reason) if self.halt else LogRefused(reason)
        return reply[1:]

    def _run_until(self, done: Callable[[], bool]) -> None:
        self.loop.run_until(lambda: done() or self.halt is not None, WAIT_TIMEOUT_S)
        if self.halt is not None:
            raise LogHalted(self.halt.reason)

    def _on_reply(self, reply: Reply) -> None:
        self.replies[reply.request_id] = reply.body

    def _on_halt(self, halt: Halt) -> None:
        self.halt = halt
