"""The simulated disk: the ``Disk`` interface in memory, deterministic from a seed, faulty.

Each file has two layers: what the page cache shows (``current``) and what has reached
stable storage (``durable``), plus the list of writes and truncations made since the last
sync. ``DiskSync`` copies the cache to stable storage (a ``DiskWrite`` with ``sync`` does
so one latency after its write reached the cache). ``crash()`` throws the cache away and
rebuilds each file from stable storage, deciding for every unsynced operation whether it
was lost, landed whole, or tore (a prefix of its sectors landed) — and a file whose
existence was never synced may vanish. Completions arrive after a latency drawn per
request; requests still in flight at a crash never complete.

Faults (probabilities per request, drawn from the disk's own PRNG stream):
- ``read_error``: the read fails (``IoFailed``);
- ``read_corruption``: one bit of the returned data is flipped (the medium is intact);
- ``write_error``: the write fails and nothing lands;
- ``torn_write``: the write reports success but only a prefix of its sectors lands;
- ``misdirected_write``: the write reports success but lands a few sectors away;
- ``corruption_at_rest``: after a write, one bit of some file's stored bytes flips;
- ``crash_lose_unsynced`` / ``crash_tear_unsynced``: the fate of unsynced operations on
  crash (the rest land whole).

Every injected fault is counted in ``faults``; faults that destroy stored bytes are also
listed in ``damage`` so tests can tell losses the disk caused from losses the code caused.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from craton.core.prng import Prng
from craton.core.seam import (
    DiskCompletion,
    DiskList,
    DiskRead,
    DiskRequest,
    DiskSync,
    DiskTruncate,
    DiskWrite,
    FileInfo,
    IoError,
    IoFailed,
    ListDone,
    ReadDone,
    SyncDone,
    TruncateDone,
    WriteDone,
    check_request,
)
from craton.io.interfaces import DiskCallback
from craton.sim.events import EventQueue

SECTOR_SIZE = 512
MISDIRECT_SECTORS_MAX = 8


@attrs.frozen
class DiskFaults:
    latency_ticks_min: int = 1
    latency_ticks_max: int = 4
    read_error: float = 0.0
    read_corruption: float = 0.0
    write_error: float = 0.0
    torn_write: float = 0.0
    misdirected_write: float = 0.0
    corruption_at_rest: float = 0.0
    crash_lose_unsynced: float = 0.0
    crash_tear_unsynced: float = 0.0

    @classmethod
    def none(cls) -> DiskFaults:
        return cls()

    @classmethod
    def draw(cls, prng: Prng, *, destructive: bool) -> DiskFaults:
        """A swarm of fault probabilities for one run. ``destructive`` enables the faults
        that destroy stored bytes (torn and misdirected writes, corruption at rest)."""

        def knob(high: float) -> float:
            return high * prng.fraction() if prng.chance(0.6) else 0.0

        return cls(
            latency_ticks_min=1,
            latency_ticks_max=prng.between(1, 8),
            read_error=knob(0.05),
            read_corruption=knob(0.05),
            write_error=knob(0.02),
            torn_write=knob(0.02) if destructive else 0.0,
            misdirected_write=knob(0.02) if destructive else 0.0,
            corruption_at_rest=knob(0.02) if destructive else 0.0,
            crash_lose_unsynced=prng.fraction(),
            crash_tear_unsynced=prng.fraction() * 0.5,
        )


@attrs.frozen
class Damage:
    """Stored bytes ``[offset, offset + length)`` of ``path`` were destroyed by a fault."""

    path: str
    offset: int
    length: int
    fault: str


@attrs.define
class _File:
    current: bytearray = attrs.field(factory=bytearray)
    durable: bytearray = attrs.field(factory=bytearray)
    durable_exists: bool = False
    unsynced: list[tuple[int, bytes] | int] = attrs.field(factory=list)  # write or truncate


FAULT_NAMES = (
    "read_error",
    "read_corruption",
    "write_error",
    "torn_write",
    "misdirected_write",
    "corruption_at_rest",
    "crash_lost_write",
    "crash_torn_write",
    "crash_lost_file",
    "wiped",
)
EXPLICIT_FAULTS = ("wiped",)  # never drawn per request: the simulator decides them


class SimDisk:
    def __init__(self, prng: Prng, events: EventQueue, faults: DiskFaults | None = None) -> None:
        self._prng = prng
        self._events = events
        self.fault_plan = faults if faults is not None else DiskFaults.none()
        self._files: dict[str, _File] = {}
        self._generation = 0
        self.faults: dict[str, int] = dict.fromkeys(FAULT_NAMES, 0)
        self.damage: list[Damage] = []
        self.requests = 0
        self.on_sync: Callable[[], None] | None = None  # told as each sync is issued

    # --- the Disk interface ------------------------------------------------------------------

    def submit(self, request: DiskRequest, complete: DiskCallback) -> None:
        check_request(request)
        self.requests += 1
        if isinstance(request, DiskWrite) and request.sync:
            self._write_then_sync(request, complete)
            return
        if isinstance(request, DiskSync) and self.on_sync is not None:
            self.on_sync()
        generation = self._generation

        def finish() -> None:
            if generation == self._generation:  # a crash in between cancels the request
                complete(self._perform(request))

        self._events.schedule(self._latency(), finish)

    def _latency(self) -> int:
        return self._prng.between(
            self.fault_plan.latency_ticks_min, self.fault_plan.latency_ticks_max
        )

    def _write_then_sync(self, request: DiskWrite, complete: DiskCallback) -> None:
        """A write with ``sync``: the write lands in the page cache after one latency (with
        every fault a write can meet), the sync after another; a crash in between finds
        the write unsynced, as it would find a write whose own sync was not done yet."""
        generation = self._generation

        def written() -> None:
            if generation != self._generation:
                return
            done = self._perform(request)
            if not isinstance(done, WriteDone):
                complete(done)
                return
            if self.on_sync is not None:
                self.on_sync()  # a crash it schedules lands before the sync below

            def synced() -> None:
                if generation == self._generation:
                    self._sync_file(request.path)
                    complete(done)

            self._events.schedule(self._latency(), synced)

        self._events.schedule(self._latency(), written)

    # --- control for tests and the simulator -------------------------------------------------

    def crash(self) -> None:
        """Lose the page cache: every file falls back to stable storage plus the unsynced
        operations that happen to survive. Requests in flight never complete."""
        self._generation += 1
        for path in sorted(self._files):
            file = self._files[path]
            if not file.durable_exists and self._prng.chance(self.fault_plan.crash_lose_unsynced):
                self.faults["crash_lost_file"] += 1
                del self._files[path]
                continue
            rebuilt = bytearray(file.durable)
            for operation in file.unsynced:
                self._replay_on_crash(rebuilt, operation)
            file.current = rebuilt
            file.durable = bytearray(rebuilt)
            file.durable_exists = True
            file.unsynced = []

    def corrupt(self, path: str, offset: int, bit: int = 0, *, fault: str = "explicit") -> None:
        """Flip one stored bit of ``path`` (an explicit fault for scenario tests, or one the
        simulator places itself, counted as ``fault`` when that is a fault name)."""
        file = self._files[path]
        assert 0 <= offset < len(file.durable) and 0 <= bit < 8
        file.durable[offset] ^= 1 << bit
        if offset < len(file.current):
            file.current[offset] ^= 1 << bit
        if fault in self.faults:
            self.faults[fault] += 1
        self.damage.append(Damage(path, offset, 1, fault))

    def empty(self, path: str) -> None:
        """Lose every byte of ``path``, in the page cache and on stable storage (what a
        write the disk acknowledged and then lost leaves behind)."""
        self.shorten(path, 0)

    def shorten(self, path: str, length: int) -> None:
        """Lose the bytes of ``path`` from ``length`` on, cached and stable (an append the
        disk acknowledged, even synced, and lost)."""
        file = self._files.get(path)
        if file is not None:
            self.damage.append(Damage(path, length, len(file.current) - length, "explicit"))
            del file.current[length:]
            del file.durable[length:]
            file.unsynced = []

    def wipe(self) -> None:
        """Lose every file, as a replaced or reformatted disk would (call it while the
        replica is down: requests in flight never complete)."""
        self._generation += 1
        for path in sorted(self._files):
            self.damage.append(Damage(path, 0, len(self._files[path].durable), "wiped"))
        self._files = {}
        self.faults["wiped"] += 1

    def durable_size(self, path: str) -> int:
        file = self._files.get(path)
        return 0 if file is None else len(file.durable)

    def stable(self, path: str, offset: int, length: int) -> bytes:
        """The bytes of ``path`` on stable storage (what a crash now would leave of what
        was synced), ``[offset, offset + length)``; shorter where the file is."""
        file = self._files.get(path)
        return b"" if file is None else bytes(file.durable[offset : offset + length])

    def destroyed(self, path: str, offset: int, length: int) -> bool:
        """Whether an injected fault destroyed stored bytes of ``path`` in the range (a
        wipe destroys every file)."""
        end = offset + length
        return any(
            damage.fault == "wiped"
            or (
                damage.path == path
                and damage.offset < end
                and offset < damage.offset + damage.length
            )
            for damage in self.damage
        )

    def contents(self, path: str) -> bytes:
        """What a read of the whole file would return now (no faults)."""
        file = self._files.get(path)
        return b"" if file is None else bytes(file.current)

    def paths(self) -> list[str]:
        return sorted(self._files)

    # --- performing requests -----------------------------------------------------------------

    def _perform(self, request: DiskRequest) -> DiskCompletion:
        clash = self._clash(request)
        if clash is not None:
            return IoFailed(request.io_id, IoError.OTHER, clash)
        match request:
            case DiskRead():
                return self._read(request)
            case DiskWrite():
                return self._write(request)
            case DiskSync():
                self._sync_file(request.path)
                return SyncDone(request.io_id)
            case DiskTruncate():
                file = self._files.setdefault(request.path, _File())
                _resize(file.current, request.length)
                file.unsynced.append(request.length)
                return TruncateDone(request.io_id)
            case DiskList():
                return ListDone(request.io_id, self._list(request.path))
        raise AssertionError(f"unknown disk request {request!r}")

    def _sync_file(self, path: str) -> None:
        file = self._files.get(path)
        if file is not None:
            file.durable = bytearray(file.current)
            file.durable_exists = True
            file.unsynced = []

    def _read(self, request: DiskRead) -> DiskCompletion:
        if self._prng.chance(self.fault_plan.read_error):
            self.faults["read_error"] += 1
            return IoFailed(request.io_id, IoError.READ, f"{request.path}: simulated read error")
        file = self._files.get(request.path)
        data = (
            b""
            if file is None
            else bytes(file.current[request.offset : request.offset + request.length])
        )
        if data and self._prng.chance(self.fault_plan.read_corruption):
            self.faults["read_corruption"] += 1
            flipped = bytearray(data)
            flipped[self._prng.below(len(flipped))] ^= 1 << self._prng.below(8)
            data = bytes(flipped)
        return ReadDone(request.io_id, data)

    def _write(self, request: DiskWrite) -> DiskCompletion:
        plan = self.fault_plan
        if self._prng.chance(plan.write_error):
            self.faults["write_error"] += 1
            return IoFailed(request.io_id, IoError.WRITE, f"{request.path}: simulated write error")
        file = self._files.setdefault(request.path, _File())
        offset, data = request.offset, request.data
        if data and self._prng.chance(plan.torn_write):
            self.faults["torn_write"] += 1
            kept = self._sector_prefix(offset, len(data))
            self.damage.append(Damage(request.path, offset + kept, len(data) - kept, "torn_write"))
            data = data[:kept]
        elif data and self._prng.chance(plan.misdirected_write):
            self.faults["misdirected_write"] += 1
            shift = SECTOR_SIZE * self._prng.between(1, MISDIRECT_SECTORS_MAX)
            landing = offset + shift if offset < shift or self._prng.chance(0.5) else offset - shift
            self.damage.append(Damage(request.path, offset, len(data), "misdirected_write"))
            self.damage.append(Damage(request.path, landing, len(data), "misdirected_write"))
            offset = landing
        _apply_write(file.current, offset, data)
        file.unsynced.append((offset, data))
        if self._prng.chance(plan.corruption_at_rest):
            self._rot_somewhere()
        return WriteDone(request.io_id)

    def _clash(self, request: DiskRequest) -> str | None:
        """Why ``request``'s path cannot name what it asks for (a file/folder clash)."""
        path = request.path
        if not path:
            return None
        is_folder = any(other.startswith(path + "/") for other in self._files)
        if isinstance(request, DiskList):
            return f"{path}: is a file, not a folder" if path in self._files else None
        if is_folder:
            return f"{path}: is a folder"
        parts = path.split("/")
        for depth in range(1, len(parts)):
            if "/".join(parts[:depth]) in self._files:
                return f"{path}: a file stands where a folder is needed"
        return None

    def _list(self, folder: str) -> tuple[FileInfo, ...]:
        prefix = f"{folder}/" if folder else ""
        found = []
        for path in sorted(self._files):
            name = path[len(prefix) :]
            if path.startswith(prefix) and "/" not in name:
                found.append(FileInfo(name, len(self._files[path].current)))
        return tuple(found)

    # --- fault helpers -----------------------------------------------------------------------

    def _sector_prefix(self, offset: int, length: int) -> int:
        """How many bytes of a write at ``offset`` land when it tears at a sector boundary."""
        boundaries = [
            b - offset
            for b in range((offset // SECTOR_SIZE + 1) * SECTOR_SIZE, offset + length, SECTOR_SIZE)
        ]
        return self._prng.choice([0, *boundaries])

    def _replay_on_crash(self, rebuilt: bytearray, operation: tuple[int, bytes] | int) -> None:
        plan = self.fault_plan
        if self._prng.chance(plan.crash_lose_unsynced):
            self.faults["crash_lost_write"] += 1
            return
        if isinstance(operation, int):
            _resize(rebuilt, operation)
            return
        offset, data = operation
        if data and self._prng.chance(plan.crash_tear_unsynced):
            self.faults["crash_torn_write"] += 1
            data = data[: self._sector_prefix(offset, len(data))]
        _apply_write(rebuilt, offset, data)

    def _rot_somewhere(self) -> None:
        candidates = [path for path in sorted(self._files) if self._files[path].durable]
        if not candidates:
            return
        path = self._prng.choice(candidates)
        file = self._files[path]
        offset = self._prng.below(len(file.durable))
        bit = 1 << self._prng.below(8)
        file.durable[offset] ^= bit
        if offset < len(file.current):
            file.current[offset] ^= bit
        self.faults["corruption_at_rest"] += 1
        self.damage.append(Damage(path, offset, 1, "corruption_at_rest"))


def _apply_write(content: bytearray, offset: int, data: bytes) -> None:
    if offset > len(content):
        content.extend(bytes(offset - len(content)))
    content[offset : offset + len(data)] = data


def _resize(content: bytearray, length: int) -> None:
    if length < len(content):
        del content[length:]
    else:
        content.extend(bytes(length - len(content)))
