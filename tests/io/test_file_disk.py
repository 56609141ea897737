"""FileDisk beyond the shared contract: group commit, name durability, error kinds, threads.

The group-commit tests hold each ``fdatasync`` at a gate the test opens, so that which sync
is waiting for which call is decided by the test, not by thread timing.
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from craton.core.seam import (
    DiskCompletion,
    DiskList,
    DiskRead,
    DiskRequest,
    DiskSync,
    DiskTruncate,
    DiskWrite,
    IoError,
    IoFailed,
    ListDone,
    ReadDone,
    SyncDone,
    WriteDone,
)
from craton.io.file_disk import FileDisk, FileDiskClosed
from craton.io.loop import BlockingLoop

HANG_GUARD_S = 10.0


class HeldSyncs:
    """A ``data_sync`` whose calls each wait until the test releases them, in order."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self.started = 0
        self._released = 0
        self.failure: OSError | None = None

    def __call__(self, fd: int) -> None:
        with self._changed:
            index = self.started
            self.started += 1
            self._changed.notify_all()
            released = self._changed.wait_for(lambda: self._released > index, HANG_GUARD_S)
        assert released, f"fdatasync #{index + 1} was never released"
        if self.failure is not None:
            raise self.failure
        os.fdatasync(fd)

    def wait_started(self, count: int) -> None:
        with self._changed:
            started = self._changed.wait_for(lambda: self.started >= count, HANG_GUARD_S)
        assert started, f"expected fdatasync #{count} to start; {self.started} started"

    def release(self, count: int = 1) -> None:
        with self._changed:
            self._released += count
            self._changed.notify_all()


class Driver:
    """Submits to a FileDisk and runs its completions on the test's thread."""

    def __init__(self, root: Path, **options: Any) -> None:
        self.loop = BlockingLoop()
        self.disk_root = root
        self.disk = FileDisk(root, self.loop.post, **options)
        self.completions: dict[int, DiskCompletion] = {}
        self._next_io_id = 1

    def submit(self, request: DiskRequest) -> int:
        self.disk.submit(request, self._record)
        return request.io_id

    def _record(self, result: DiskCompletion) -> None:
        assert result.io_id not in self.completions, f"second completion {result}"
        self.completions[result.io_id] = result

    def io_id(self) -> int:
        io_id = self._next_io_id
        self._next_io_id += 1
        return io_id

    def sync(self, path: str) -> int:
        return self.submit(DiskSync(self.io_id(), path))

    def wait(self, *io_ids: int) -> list[DiskCompletion]:
        self.loop.run_until(lambda: all(i in self.completions for i in io_ids), HANG_GUARD_S)
        return [self.completions[io_id] for io_id in io_ids]

    def done(self, request: DiskRequest) -> DiskCompletion:
        return self.wait(self.submit(request))[0]

    def write(self, path: str, data: bytes, offset: int = 0) -> None:
        result = self.done(DiskWrite(self.io_id(), path, offset, data))
        assert isinstance(result, WriteDone), result


@pytest.fixture
def held() -> Iterator[HeldSyncs]:
    syncs = HeldSyncs()
    yield syncs
    syncs.release(1000)  # let any worker still waiting finish so close() can join it


@pytest.fixture
def driver(tmp_path: Path, held: HeldSyncs) -> Iterator[Driver]:
    made = Driver(tmp_path, data_sync=held)
    yield made
    held.release(1000)
    made.disk.close()


# --- Group commit ------------------------------------------------------------------------------


def test_sync_arriving_during_a_running_fdatasync_waits_for_the_next(
    driver: Driver, held: HeldSyncs
) -> None:
    driver.write("log", b"first batch")
    first = driver.sync("log")
    held.wait_started(1)
    second, third = driver.sync("log"), driver.sync("log")
    held.release(1)
    assert driver.wait(first) == [SyncDone(first)]
    held.wait_started(2)
    driver.loop.run_pending()
    assert second not in driver.completions, "completed by an fdatasync that began before it"
    assert third not in driver.completions, "completed by an fdatasync that began before it"
    held.release(1)
    assert driver.wait(second, third) == [SyncDone(second), SyncDone(third)]
    assert held.started == 2, "the two late syncs share one fdatasync"
    assert driver.disk.fsync_count == 2


def test_syncs_queued_before_their_fdatasync_starts_share_it(
    tmp_path: Path, held: HeldSyncs
) -> None:
    driver = Driver(tmp_path, data_sync=held, worker_count=1)
    try:
        driver.write("busy", b"x")
        driver.write("log", b"y")
        busy = driver.sync("busy")
        held.wait_started(1)  # the only worker is now inside busy's fdatasync
        waiting = [driver.sync("log") for _ in range(5)]
        held.release(10)
        results = driver.wait(busy, *waiting)
        assert results == [SyncDone(io_id) for io_id in (busy, *waiting)]
        assert held.started == 2, "five syncs queued together need one fdatasync of log"
    finally:
        held.release(1000)
        driver.disk.close()


def test_a_sync_after_a_completed_sync_gets_a_fresh_fdatasync(
    driver: Driver, held: HeldSyncs
) -> None:
    held.release(10)
    driver.write("log", b"a")
    driver.wait(driver.sync("log"))
    driver.write("log", b"b", offset=1)
    driver.wait(driver.sync("log"))
    assert held.started == 2, "a finished fdatasync must not stand in for a later sync"


def test_syncs_of_different_files_do_not_share(driver: Driver, held: HeldSyncs) -> None:
    held.release(10)
    driver.write("one", b"1")
    driver.write("two", b"2")
    results = driver.wait(driver.sync("one"), driver.sync("two"))
    assert all(isinstance(result, SyncDone) for result in results), results
    assert held.started == 2


def test_failed_fdatasync_fails_every_waiter_and_every_later_sync(
    driver: Driver, held: HeldSyncs
) -> None:
    driver.write("log", b"suspect")
    driver.write("other", b"fine")
    held.failure = OSError(errno.EIO, os.strerror(errno.EIO))
    first = driver.sync("log")
    held.wait_started(1)
    late = [driver.sync("log"), driver.sync("log")]
    held.release(2)
    for result in driver.wait(first, *late):
        assert isinstance(result, IoFailed), result
        assert result.error == IoError.SYNC, result
        assert "log" in result.detail and "EIO" in result.detail, result.detail
    held.failure = None
    held.release(10)
    again = driver.wait(driver.sync("log"))[0]
    assert isinstance(again, IoFailed) and again.error == IoError.SYNC, again
    assert held.started == 1, "after a failed fdatasync, a file is never fdatasynced again"
    other = driver.sync("other")
    assert driver.wait(other) == [SyncDone(other)], "other files are unaffected"


def test_a_write_with_sync_whose_fdatasync_fails_fails_as_sync_for_good(
    driver: Driver, held: HeldSyncs
) -> None:
    held.failure = OSError(errno.EIO, os.strerror(errno.EIO))
    held.release(1)
    failed = driver.done(DiskWrite(driver.io_id(), "log", 0, b"batch", sync=True))
    assert isinstance(failed, IoFailed) and failed.error == IoError.SYNC, failed
    assert "log" in failed.detail and "EIO" in failed.detail, failed.detail
    held.failure = None
    held.release(10)
    again = driver.done(DiskWrite(driver.io_id(), "log", 5, b"more", sync=True))
    assert isinstance(again, IoFailed) and again.error == IoError.SYNC, again
    assert held.started == 1, "after a failed fdatasync, a file is never fdatasynced again"


def test_a_write_with_sync_meeting_a_failing_sync_of_its_file_fails_too(
    driver: Driver, held: HeldSyncs
) -> None:
    """A write's own sync waits for a running fdatasync of its file, and sees that one's
    failure (the kernel would report it to one of two concurrent calls only)."""
    driver.write("log", b"suspect")
    first = driver.sync("log")
    held.wait_started(1)
    write = driver.submit(DiskWrite(driver.io_id(), "log", 7, b" more", sync=True))
    held.failure = OSError(errno.EIO, os.strerror(errno.EIO))
    held.release(1)
    failed = driver.wait(first, write)
    assert all(isinstance(r, IoFailed) and r.error == IoError.SYNC for r in failed), failed
    assert held.started == 1, "the write's sync did not call fdatasync after the failure"


def test_a_write_with_sync_starts_its_fdatasync_after_the_write(
    driver: Driver, held: HeldSyncs
) -> None:
    io_id = driver.submit(DiskWrite(driver.io_id(), "log", 0, b"batch", sync=True))
    held.wait_started(1)
    assert (driver.disk_root / "log").read_bytes() == b"batch", "written before the sync"
    driver.loop.run_pending()
    assert io_id not in driver.completions, "completed before its fdatasync ended"
    held.release(1)
    assert driver.wait(io_id) == [WriteDone(io_id)]


# --- Names are durable -----------------------------------------------------------------------


def test_first_sync_of_a_file_fsyncs_each_new_folder_once(tmp_path: Path) -> None:
    driver = Driver(tmp_path)
    try:
        driver.write("a/b/f", b"x")
        driver.wait(driver.sync("a/b/f"))
        assert driver.disk.dir_sync_count == 3, "a/b (for f), a (for b), the root (for a)"
        driver.wait(driver.sync("a/b/f"))
        assert driver.disk.dir_sync_count == 3, "names already synced are not synced again"
        driver.write("a/b/g", b"y")
        driver.wait(driver.sync("a/b/g"))
        assert driver.disk.dir_sync_count == 4, "only a/b holds the new name g"
    finally:
        driver.disk.close()
    reopened = Driver(tmp_path)
    try:
        reopened.wait(reopened.sync("a/b/f"))
        assert reopened.disk.dir_sync_count == 3, "names inherited from a crash are synced"
    finally:
        reopened.disk.close()


def test_failed_folder_fsync_fails_the_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    driver = Driver(tmp_path)
    try:
        driver.write("dir/file", b"x")
        monkeypatch.setattr(os, "fsync", _failing(errno.EIO))
        result = driver.wait(driver.sync("dir/file"))[0]
        assert isinstance(result, IoFailed) and result.error == IoError.SYNC, result
        assert "folder" in result.detail and "dir/file" in result.detail, result.detail
    finally:
        monkeypatch.undo()
        driver.disk.close()


def test_files_and_folders_are_private_to_the_owner(tmp_path: Path) -> None:
    driver = Driver(tmp_path)
    try:
        driver.write("folder/file", b"x")
    finally:
        driver.disk.close()
    file_mode = stat.S_IMODE((tmp_path / "folder" / "file").stat().st_mode)
    folder_mode = stat.S_IMODE((tmp_path / "folder").stat().st_mode)
    assert file_mode & 0o077 == 0 and file_mode & 0o600 == 0o600, oct(file_mode)
    assert folder_mode & 0o077 == 0 and folder_mode & 0o700 == 0o700, oct(folder_mode)


# --- Error kinds -----------------------------------------------------------------------------


def _failing(code: int) -> Callable[..., Any]:
    def fail(*args: object, **kwargs: object) -> Any:
        raise OSError(code, os.strerror(code))

    return fail


@pytest.mark.parametrize(
    ("os_function", "code", "make_request", "kind", "words"),
    [
        ("pread", errno.EIO, lambda: DiskRead(1000, "log", 0, 4), IoError.READ, "pread at 0"),
        ("pwrite", errno.ENOSPC, lambda: DiskWrite(1000, "log", 2, b"z"), IoError.WRITE, "pwrite"),
        ("ftruncate", errno.EIO, lambda: DiskTruncate(1000, "log", 9), IoError.WRITE, "ftruncate"),
        ("open", errno.EACCES, lambda: DiskRead(1000, "new", 0, 1), IoError.OTHER, "open new"),
        ("open", errno.ENOSPC, lambda: DiskWrite(1000, "new", 0, b"z"), IoError.WRITE, "open new"),
        ("open", errno.EMFILE, lambda: DiskWrite(1000, "new", 0, b"z"), IoError.OTHER, "EMFILE"),
        ("open", errno.EIO, lambda: DiskSync(1000, "new"), IoError.SYNC, "open new"),
        ("scandir", errno.EIO, lambda: DiskList(1000, ""), IoError.READ, "list"),
        ("scandir", errno.EACCES, lambda: DiskList(1000, "d"), IoError.OTHER, "list d"),
    ],
)
def test_os_errors_become_io_failed_of_the_right_kind(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    os_function: str,
    code: int,
    make_request: Callable[[], DiskRequest],
    kind: IoError,
    words: str,
) -> None:
    driver = Driver(tmp_path)
    try:
        driver.write("log", b"data")
        monkeypatch.setattr(os, os_function, _failing(code))
        result = driver.done(make_request())
        monkeypatch.undo()
        assert isinstance(result, IoFailed), f"expected IoFailed, got {result}"
        assert result.error == kind, f"{os_function} {errno.errorcode[code]}: {result}"
        assert words in result.detail, f"detail {result.detail!r} should mention {words!r}"
        assert errno.errorcode[code] in result.detail, result.detail
        assert isinstance(driver.done(DiskRead(1001, "log", 0, 4)), ReadDone), "disk still works"
    finally:
        monkeypatch.undo()
        driver.disk.close()


# --- Threads, posting and lifetime -----------------------------------------------------------


def test_completions_are_posted_from_workers_never_from_submit(tmp_path: Path) -> None:
    loop = BlockingLoop()
    posting_threads: list[int] = []

    def post(callback: Callable[[], None]) -> None:
        posting_threads.append(threading.get_ident())
        loop.post(callback)

    results: list[DiskCompletion] = []
    disk = FileDisk(tmp_path, post)
    try:
        for io_id in range(1, 21):
            disk.submit(DiskWrite(io_id, f"f{io_id % 3}", io_id, b"x"), results.append)
            disk.submit(DiskSync(100 + io_id, f"f{io_id % 3}"), results.append)
        loop.run_until(lambda: len(results) == 40, HANG_GUARD_S)
    finally:
        disk.close()
    assert len(posting_threads) == 40
    assert threading.get_ident() not in posting_threads, "post was called on submit's thread"


def test_close_finishes_queued_requests_then_refuses_more(tmp_path: Path) -> None:
    driver = Driver(tmp_path)
    io_ids = [driver.submit(DiskWrite(driver.io_id(), "log", n, b"w")) for n in range(50)]
    io_ids.append(driver.sync("log"))
    driver.disk.close()
    driver.loop.run_pending()
    assert sorted(driver.completions) == sorted(io_ids), "close dropped queued requests"
    with pytest.raises(FileDiskClosed):
        driver.submit(DiskRead(999, "log", 0, 1))
    driver.disk.close()  # closing twice is harmless


def test_a_bug_in_a_worker_is_raised_on_the_driver_thread(tmp_path: Path) -> None:
    def broken(fd: int) -> None:
        raise RuntimeError("a bug, not an I/O error")

    driver = Driver(tmp_path, data_sync=broken)
    try:
        driver.write("log", b"x")
        driver.sync("log")
        with pytest.raises(RuntimeError, match="a bug"):
            driver.loop.run_until(lambda: False, HANG_GUARD_S)
    finally:
        driver.disk.close()


def test_root_must_be_an_existing_folder(tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError):
        FileDisk(tmp_path / "missing", BlockingLoop().post)
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        FileDisk(tmp_path / "file", BlockingLoop().post)


def test_works_under_asyncio_with_call_soon_threadsafe(tmp_path: Path) -> None:
    async def scenario() -> tuple[list[DiskCompletion], set[int]]:
        loop = asyncio.get_running_loop()
        completion_threads: set[int] = set()
        disk = FileDisk(tmp_path, loop.call_soon_threadsafe)

        async def run(request: DiskRequest) -> DiskCompletion:
            future: asyncio.Future[DiskCompletion] = loop.create_future()

            def complete(result: DiskCompletion) -> None:
                completion_threads.add(threading.get_ident())
                future.set_result(result)

            disk.submit(request, complete)
            return await future

        try:
            results = [
                await run(DiskWrite(1, "seg/1", 0, b"async")),
                await run(DiskSync(2, "seg/1")),
                await run(DiskRead(3, "seg/1", 0, 10)),
                await run(DiskList(4, "seg")),
            ]
        finally:
            disk.close()
        return results, completion_threads

    results, threads = asyncio.run(scenario())
    assert results[:3] == [WriteDone(1), SyncDone(2), ReadDone(3, b"async")]
    assert isinstance(results[3], ListDone) and results[3].files[0].size == 5, results[3]
    assert threads == {threading.get_ident()}, "completions must run on the loop's thread"
