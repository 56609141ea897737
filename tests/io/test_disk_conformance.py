"""One behaviour for every Disk: the conformance suite of the submit/complete disk contract.

Every test here runs against each implementation of ``craton.io.interfaces.Disk`` through a
``DiskHarness``, which submits requests, drives the implementation's loop until completions
arrive, and checks on every completion the rules of the contract that no single test
names: a completion is never delivered inside ``submit``, and exactly one arrives per
request, carrying its ``io_id``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

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
)
from craton.io.file_disk import FileDisk
from craton.io.interfaces import Disk
from craton.io.loop import BlockingLoop
from craton.sim.disk import DiskFaults, SimDisk
from craton.sim.events import EventQueue

HANG_GUARD_S = 10.0
REJECTED_IO_ID = 999_999
CRASH_LOSES_UNSYNCED = DiskFaults(crash_lose_unsynced=1.0)


class DiskHarness:
    """Drives one Disk implementation for the suite; subclasses supply the disk and loop."""

    name = ""

    def __init__(self) -> None:
        self.completions: dict[int, DiskCompletion] = {}
        self._in_submit = False
        self._next_io_id = 1

    # Hooks each implementation provides.

    @property
    def disk(self) -> Disk:
        raise NotImplementedError

    def drive_until(self, predicate: Callable[[], bool]) -> None:
        """Run the implementation's loop until ``predicate`` holds (bounded as a hang guard)."""
        raise NotImplementedError

    def crash_and_restart(self) -> None:
        """Lose the process (and, if the disk models it, anything not synced); reopen."""
        raise NotImplementedError

    def pause_syncs(self) -> None:
        """Hold the next sync of the medium until ``resume_syncs`` (no-op if not needed)."""

    def resume_syncs(self) -> None:
        """Release syncs held by ``pause_syncs``."""

    def sync_calls(self) -> int | None:
        """How many syncs reached the medium so far, if the implementation counts them."""
        return None

    def close(self) -> None:
        """Release the implementation's resources."""

    # Shared machinery.

    def io_id(self) -> int:
        io_id = self._next_io_id
        self._next_io_id += 1
        return io_id

    def submit(self, request: DiskRequest) -> None:
        def complete(result: DiskCompletion) -> None:
            assert not self._in_submit, f"{request} completed inside submit"
            assert result.io_id not in self.completions, f"second completion for {request}"
            self.completions[result.io_id] = result

        self._in_submit = True
        try:
            self.disk.submit(request, complete)
        finally:
            self._in_submit = False

    def submit_all_and_wait(self, requests: Sequence[DiskRequest]) -> list[DiskCompletion]:
        """Submit ``requests`` back to back, then wait for all; completions in that order."""
        io_ids = [request.io_id for request in requests]
        assert len(set(io_ids)) == len(io_ids), "io_ids must be distinct"
        for request in requests:
            self.submit(request)
        self.drive_until(lambda: all(io_id in self.completions for io_id in io_ids))
        return [self.completions[io_id] for io_id in io_ids]

    def submit_and_wait(self, request: DiskRequest) -> DiskCompletion:
        return self.submit_all_and_wait([request])[0]

    # Conveniences for the tests.

    def write(self, path: str, offset: int, data: bytes) -> None:
        result = self.submit_and_wait(DiskWrite(self.io_id(), path, offset, data))
        assert result == WriteDone(result.io_id), f"write {path} at {offset}: {result}"

    def read(self, path: str, offset: int, length: int) -> bytes:
        result = self.submit_and_wait(DiskRead(self.io_id(), path, offset, length))
        assert isinstance(result, ReadDone), f"read {path} at {offset}: {result}"
        return result.data

    def sync(self, path: str) -> None:
        result = self.submit_and_wait(DiskSync(self.io_id(), path))
        assert result == SyncDone(result.io_id), f"sync {path}: {result}"

    def truncate(self, path: str, length: int) -> None:
        result = self.submit_and_wait(DiskTruncate(self.io_id(), path, length))
        assert result == TruncateDone(result.io_id), f"truncate {path} to {length}: {result}"

    def list(self, path: str) -> tuple[FileInfo, ...]:
        result = self.submit_and_wait(DiskList(self.io_id(), path))
        assert isinstance(result, ListDone), f"list {path!r}: {result}"
        return result.files


class FileDiskHarness(DiskHarness):
    """``FileDisk`` in a temporary folder, driven by a ``BlockingLoop``."""

    name = "file"

    def __init__(self, root: Path) -> None:
        super().__init__()
        self._root = root
        self._loop = BlockingLoop()
        self._syncs_open = threading.Event()
        self._syncs_open.set()
        self._sync_calls_before = 0
        self._disk = self._open()

    def _open(self) -> FileDisk:
        return FileDisk(self._root, self._loop.post, data_sync=self._gated_data_sync)

    def _gated_data_sync(self, fd: int) -> None:
        assert self._syncs_open.wait(HANG_GUARD_S), "syncs stayed paused"
        os.fdatasync(fd)

    @property
    def disk(self) -> Disk:
        return self._disk

    def drive_until(self, predicate: Callable[[], bool]) -> None:
        self._loop.run_until(predicate, HANG_GUARD_S)

    def crash_and_restart(self) -> None:
        # A process cannot lose its own page cache: what survives here is what the file
        # system holds, which a fresh FileDisk must find without help from the old one.
        self._sync_calls_before += self._disk.fsync_count
        self._disk.close()
        self._loop.run_pending()
        self._disk = self._open()

    def pause_syncs(self) -> None:
        self._syncs_open.clear()

    def resume_syncs(self) -> None:
        self._syncs_open.set()

    def sync_calls(self) -> int:
        return self._sync_calls_before + self._disk.fsync_count

    def close(self) -> None:
        self._syncs_open.set()
        self._disk.close()
        self._loop.run_pending()


class SimDiskHarness(DiskHarness):
    """``SimDisk`` driven by its event queue; its only fault is that a crash loses every
    unsynced operation, so what survives a restart is exactly what was synced."""

    name = "sim"

    def __init__(self, seed: int) -> None:
        super().__init__()
        self._events = EventQueue()
        self._disk = SimDisk(Prng(seed).split("disk"), self._events, CRASH_LOSES_UNSYNCED)

    @property
    def disk(self) -> Disk:
        return self._disk

    def drive_until(self, predicate: Callable[[], bool]) -> None:
        assert self._events.run_until(predicate), "the simulated disk went idle first"

    def crash_and_restart(self) -> None:
        # Requests in flight at a crash never complete; the suite crashes only when idle.
        assert len(self._events) == 0, "crash_and_restart with requests in flight"
        self._disk.crash()


HARNESSES: list[str] = ["file", "sim"]

# Where an implementation does not yet keep the contract: (implementation, test) -> why.
# Each is a strict xfail, so a fix shows up as a failure until its entry is removed.
KNOWN_GAPS: dict[tuple[str, str], str] = {}


@pytest.fixture(params=HARNESSES)
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DiskHarness]:
    gap = KNOWN_GAPS.get((request.param, request.node.originalname))
    if gap is not None:
        request.applymarker(pytest.mark.xfail(reason=gap, strict=True))
    made: DiskHarness
    if request.param == "file":
        made = FileDiskHarness(tmp_path)
    elif request.param == "sim":
        made = SimDiskHarness(seed=1)
    else:
        raise AssertionError(f"unknown disk implementation {request.param}")
    try:
        yield made
    finally:
        made.close()


# --- Reads and writes ------------------------------------------------------------------------


def test_write_then_read_returns_the_bytes(harness: DiskHarness) -> None:
    harness.write("log", 0, b"hello, craton")
    assert harness.read("log", 0, 13) == b"hello, craton"
    assert harness.read("log", 7, 6) == b"craton"


def test_overwrite_replaces_only_the_bytes_written(harness: DiskHarness) -> None:
    harness.write("log", 0, b"aaaaaaaaaa")
    harness.write("log", 3, b"BBB")
    assert harness.read("log", 0, 10) == b"aaaBBBaaaa"


def test_read_past_end_of_file_is_short(harness: DiskHarness) -> None:
    harness.write("log", 0, b"0123456789")
    assert harness.read("log", 6, 100) == b"6789", "a read crossing EOF stops at EOF"
    assert harness.read("log", 10, 5) == b"", "a read at EOF is empty"
    assert harness.read("log", 50, 5) == b"", "a read beyond EOF is empty"
    assert harness.read("log", 2, 0) == b"", "a zero-length read is empty"


def test_missing_file_reads_empty(harness: DiskHarness) -> None:
    assert harness.read("absent", 0, 10) == b""
    assert harness.read("no/such/file", 0, 10) == b""
    assert harness.list("") == (), "reading a missing file must not create it"


def test_write_past_end_of_file_fills_the_gap_with_zeros(harness: DiskHarness) -> None:
    harness.write("log", 0, b"ab")
    harness.write("log", 6, b"cd")
    assert harness.read("log", 0, 100) == b"ab\x00\x00\x00\x00cd"
    harness.write("fresh", 3, b"x")
    assert harness.read("fresh", 0, 100) == b"\x00\x00\x00x"


def test_write_creates_missing_folders(harness: DiskHarness) -> None:
    harness.write("a/b/c/file", 0, b"deep")
    assert harness.read("a/b/c/file", 0, 4) == b"deep"
    assert harness.list("a/b/c") == (FileInfo("file", 4),)


def test_concurrent_writes_at_different_offsets_all_land(harness: DiskHarness) -> None:
    block_size = 512
    writes: list[DiskRequest] = [
        DiskWrite(harness.io_id(), "log", index * block_size, bytes([index]) * block_size)
        for index in range(16)
    ]
    results = harness.submit_all_and_wait(writes)
    assert results == [WriteDone(write.io_id) for write in writes]
    expected = b"".join(bytes([index]) * block_size for index in range(16))
    assert harness.read("log", 0, len(expected) + 1) == expected


# --- Truncation -------------------------------------------------------------------------------


def test_truncate_shrinks_and_grows_with_zeros(harness: DiskHarness) -> None:
    harness.write("log", 0, b"0123456789")
    harness.truncate("log", 4)
    assert harness.read("log", 0, 100) == b"0123"
    harness.truncate("log", 7)
    assert harness.read("log", 0, 100) == b"0123\x00\x00\x00", "growth reads as zeros"
    harness.truncate("log", 0)
    assert harness.read("log", 0, 100) == b""


def test_truncate_creates_a_missing_file(harness: DiskHarness) -> None:
    harness.truncate("dir/new", 3)
    assert harness.list("dir") == (FileInfo("new", 3),)
    assert harness.read("dir/new", 0, 10) == b"\x00\x00\x00"


# --- Listing ----------------------------------------------------------------------------------


def test_list_gives_regular_files_sorted_by_name_with_sizes(harness: DiskHarness) -> None:
    for name, size in [("seg-2", 5), ("seg-10", 1), ("meta", 3), ("Seg-0", 2), ("seg-1", 0)]:
        harness.truncate(f"data/{name}", size)
    assert harness.list("data") == (
        FileInfo("Seg-0", 2),
        FileInfo("meta", 3),
        FileInfo("seg-1", 0),
        FileInfo("seg-10", 1),
        FileInfo("seg-2", 5),
    )


def test_list_of_a_missing_folder_is_empty(harness: DiskHarness) -> None:
    assert harness.list("nowhere") == ()
    assert harness.list("no/where/at/all") == ()


def test_list_leaves_out_folders_and_their_files(harness: DiskHarness) -> None:
    harness.write("top", 0, b"1")
    harness.write("sub/inner", 0, b"22")
    harness.write("sub/deeper/leaf", 0, b"333")
    assert harness.list("") == (FileInfo("top", 1),), "the root lists its own files only"
    assert harness.list("sub") == (FileInfo("inner", 2),)
    assert harness.list("sub/deeper") == (FileInfo("leaf", 3),)


# --- Sync and durability ----------------------------------------------------------------------


def test_synced_data_survives_a_restart(harness: DiskHarness) -> None:
    harness.write("wal/0001", 0, b"committed record")
    harness.truncate("wal/0002", 2)
    harness.write("wal/0002", 2, b"tail")
    harness.sync("wal/0001")
    harness.sync("wal/0002")
    harness.crash_and_restart()
    assert harness.read("wal/0001", 0, 100) == b"committed record"
    assert harness.read("wal/0002", 0, 100) == b"\x00\x00tail"
    assert harness.list("wal") == (FileInfo("0001", 16), FileInfo("0002", 6))


def test_a_write_with_sync_is_durable_when_it_completes(harness: DiskHarness) -> None:
    harness.write("wal/0001", 0, b"first, unsynced")
    calls_before = harness.sync_calls()
    done = harness.submit_and_wait(DiskWrite(harness.io_id(), "wal/0002", 0, b"synced", sync=True))
    assert done == WriteDone(done.io_id)
    calls_after = harness.sync_calls()
    if calls_before is not None and calls_after is not None:
        assert calls_after - calls_before == 1, "one fdatasync per write with sync"
    harness.crash_and_restart()
    assert harness.read("wal/0002", 0, 100) == b"synced"
    assert harness.list("wal") == (
        (FileInfo("0001", 15), FileInfo("0002", 6))
        if harness.name == "file"  # a process crash keeps the page cache
        else (FileInfo("0002", 6),)  # the simulated crash lost the unsynced file
    )


def test_sync_of_a_missing_file_succeeds_and_creates_nothing(harness: DiskHarness) -> None:
    harness.sync("never-written")
    assert harness.list("") == ()


def test_concurrent_syncs_of_one_file_all_complete(harness: DiskHarness) -> None:
    sync_count = 32
    harness.write("log", 0, b"group commit")
    calls_before = harness.sync_calls()
    harness.pause_syncs()
    syncs = [DiskSync(harness.io_id(), "log") for _ in range(sync_count)]
    for sync in syncs:
        harness.submit(sync)
    harness.resume_syncs()
    harness.drive_until(lambda: all(sync.io_id in harness.completions for sync in syncs))
    assert [harness.completions[sync.io_id] for sync in syncs] == [
        SyncDone(sync.io_id) for sync in syncs
    ]
    calls_after = harness.sync_calls()
    if calls_before is not None and calls_after is not None:
        shared = calls_after - calls_before
        assert 1 <= shared < sync_count, f"{sync_count} syncs should share, took {shared}"


# --- The contract itself ----------------------------------------------------------------------


def test_every_completion_carries_its_request_io_id(harness: DiskHarness) -> None:
    harness.write("log", 0, b"x")
    requests: list[DiskRequest] = [
        DiskWrite(9001, "log", 1, b"yz"),
        DiskRead(77, "log", 0, 3),
        DiskTruncate(123456789, "other", 4),
        DiskSync(5, "log"),
        DiskList(31337, ""),
        DiskRead(2**40, "missing", 0, 1),
    ]
    results = harness.submit_all_and_wait(requests)
    kinds = [WriteDone, ReadDone, TruncateDone, SyncDone, ListDone, ReadDone]
    for request, result, kind in zip(requests, results, kinds, strict=True):
        assert result.io_id == request.io_id, f"{request} answered by {result}"
        assert isinstance(result, kind), f"{request} answered by {result}"


def test_completion_is_never_delivered_inside_submit(harness: DiskHarness) -> None:
    request = DiskWrite(harness.io_id(), "log", 0, b"later")
    harness.submit(request)
    assert request.io_id not in harness.completions, "completed before submit returned"
    harness.drive_until(lambda: request.io_id in harness.completions)
    assert harness.completions[request.io_id] == WriteDone(request.io_id)


@pytest.mark.parametrize(
    "request_",
    [
        DiskRead(REJECTED_IO_ID, "../escape", 0, 1),
        DiskWrite(REJECTED_IO_ID, "/absolute", 0, b"x"),
        DiskSync(REJECTED_IO_ID, "a//b"),
        DiskTruncate(REJECTED_IO_ID, "", 0),
        DiskList(REJECTED_IO_ID, "bad path"),
    ],
    ids=repr,
)
def test_bad_path_raises_and_never_completes(harness: DiskHarness, request_: DiskRequest) -> None:
    with pytest.raises(ValueError):
        harness.submit(request_)
    harness.write("log", 0, b"still working")
    assert REJECTED_IO_ID not in harness.completions, "a rejected request must not complete"


@pytest.mark.parametrize(
    "request_",
    [
        DiskRead(REJECTED_IO_ID, "log", -1, 1),
        DiskRead(REJECTED_IO_ID, "log", 0, -1),
        DiskWrite(REJECTED_IO_ID, "log", -5, b"x"),
        DiskTruncate(REJECTED_IO_ID, "log", -1),
    ],
    ids=repr,
)
def test_negative_offset_or_length_raises_and_never_completes(
    harness: DiskHarness, request_: DiskRequest
) -> None:
    with pytest.raises(ValueError):
        harness.submit(request_)
    harness.write("log", 0, b"still working")
    assert REJECTED_IO_ID not in harness.completions, "a rejected request must not complete"


# --- Failures ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make_request",
    [
        lambda io_id: DiskRead(io_id, "folder", 0, 1),
        lambda io_id: DiskWrite(io_id, "folder", 0, b"x"),
        lambda io_id: DiskTruncate(io_id, "folder", 0),
        lambda io_id: DiskSync(io_id, "folder"),
        lambda io_id: DiskList(io_id, "folder/file"),
        lambda io_id: DiskWrite(io_id, "folder/file/below", 0, b"x"),
    ],
    ids=["read", "write", "truncate", "sync", "list", "write-under-file"],
)
def test_name_clash_fails_as_other_without_raising(
    harness: DiskHarness, make_request: Callable[[int], DiskRequest]
) -> None:
    harness.write("folder/file", 0, b"content")
    request = make_request(harness.io_id())
    result = harness.submit_and_wait(request)
    assert isinstance(result, IoFailed), f"{request} should fail, got {result}"
    assert result.error == IoError.OTHER, f"a folder where a file should be is OTHER: {result}"
    assert request.path in result.detail, f"detail must name the path: {result.detail!r}"
    assert harness.read("folder/file", 0, 100) == b"content", "the failure changed nothing"


def test_failure_detail_never_carries_payload(harness: DiskHarness) -> None:
    harness.write("folder/file", 0, b"x")
    secret = b"SECRET-PAYLOAD-BYTES"
    result = harness.submit_and_wait(DiskWrite(harness.io_id(), "folder", 0, secret))
    assert isinstance(result, IoFailed), result
    assert "SECRET" not in result.detail, result.detail
