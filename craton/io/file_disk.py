"""The production Disk: Craton's files on a real file system, in submit/complete style.

``FileDisk`` carries out the core's disk requests (``craton.core.seam``) against regular
files under one root folder, on a small pool of worker threads, and hands every completion
to ``post`` so that it runs on the driver's thread (``loop.call_soon_threadsafe`` under
asyncio, ``BlockingLoop.post`` elsewhere).

Rules it keeps:
- ``submit`` never touches the file system and never calls ``complete``; it validates the
  request (a bad path or a negative offset is the caller's bug and raises ``ValueError``)
  and queues it. Requests may complete in any order; writes to one file at different
  offsets may run concurrently.
- Exactly one completion per request, carrying its ``io_id``. An ``OSError`` becomes
  ``IoFailed`` naming the operation and the relative path (never payload bytes); any other
  exception is a bug and is re-raised on the driver's thread through ``post``.
- Error kinds: a failure of the data call itself (``pread``; ``pwrite``/``ftruncate``;
  ``fdatasync``/``fsync``) is READ, WRITE or SYNC by operation (a failed ``DiskList`` is a
  failed read). A failure to resolve or create the name (``open``, ``mkdir``, ``scandir``:
  a folder where a file should be, permissions, no file descriptors left) is OTHER, unless
  its errno says the medium failed (EIO, ENOSPC, EDQUOT, EROFS, EFBIG), which keeps the
  operation's kind.
- Files are opened lazily (``O_RDWR``; ``O_CREAT`` only for writes and truncations, mode
  0o600), their descriptors cached until ``close``; missing folders are created 0o700. A
  read or sync of a missing file creates nothing: it reads empty and syncs trivially, and a
  list of a missing folder is empty. Lists hold regular files only, sorted by name.
- A ``DiskWrite`` with ``sync`` runs its ``fdatasync`` on the worker that wrote, right
  after the write: one hand-off to the workers and one back, instead of two of each.
- Group commit: concurrent ``DiskSync`` requests for one file share ``fdatasync`` calls.
  A sync completes only after an ``fdatasync`` that *started* after the sync was submitted
  (hence after every write whose ``WriteDone`` it could have seen); one that arrives while
  an ``fdatasync`` of its file is running waits for the next one, which starts when the
  running one ends and completes all its waiters together.
- Names are durable too: the first sync of a file in the life of a ``FileDisk`` also fsyncs
  every folder from the file's own up to the root, once per name, so a file survives power
  loss whether this process created it or inherited it from one that died before syncing.
- A failed sync is final for its file: after a failed ``fdatasync`` the kernel may have
  dropped the dirty pages it could not write and report success next time, so every later
  ``DiskSync`` of that file fails too, without trying again.
- ``close`` finishes every queued request (posting its completion), stops the workers and
  closes the descriptors; ``submit`` after ``close`` raises ``FileDiskClosed``.

Descriptors are limited by the process's RLIMIT_NOFILE; running out surfaces as
``IoFailed(OTHER)``. Durability assumes Linux semantics: on macOS ``fsync`` does not flush
the drive's cache.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import queue
import threading
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING

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
from craton.io.interfaces import Disk, DiskCallback

FILE_MODE = 0o600
FOLDER_MODE = 0o700
WORKER_COUNT_DEFAULT = 2
WORKER_COUNT_MAX = 16

# errnos that mean the medium (not the name) failed: they keep the operation's error kind.
MEDIUM_ERRNOS = frozenset({errno.EIO, errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})

Post = Callable[[Callable[[], None]], object]
DataSync = Callable[[int], None]

_data_sync_default: DataSync = getattr(os, "fdatasync", os.fsync)


class FileDiskClosed(RuntimeError):
    """A request was submitted to a ``FileDisk`` after ``close``."""


class _Failure(Exception):
    """An I/O step failed; carries the ``IoFailed`` kind and detail for its request."""

    def __init__(self, kind: IoError, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


_Waiter = tuple[int, DiskCallback]


class FileDisk:
    """``Disk`` over the files under ``root`` (an existing folder)."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        post: Post,
        *,
        worker_count: int = WORKER_COUNT_DEFAULT,
        data_sync: DataSync = _data_sync_default,
    ) -> None:
        assert 1 <= worker_count <= WORKER_COUNT_MAX, worker_count
        self._root = os.fspath(root)
        if not os.path.isdir(self._root):
            raise NotADirectoryError(f"FileDisk root is not an existing folder: {self._root}")
        self._post = post
        self._data_sync = data_sync
        # Held while opening files (which may block); only worker threads take it.
        self._open_lock = threading.Lock()
        self._fds: dict[str, int] = {}
        # Never held across I/O, so ``submit`` never waits for the file system.
        self._state_lock = threading.Lock()
        self._closed = False
        # A path has an entry while a sync job for it is queued or running; the list holds
        # the syncs that the job's next fdatasync will complete.
        self._sync_waiters: dict[str, list[_Waiter]] = {}
        self._sync_failed: dict[str, str] = {}
        self._sync_locks: dict[str, threading.Lock] = {}  # one fdatasync of a file at a time
        self._names_durable: dict[str, None] = {}
        self.fsync_count = 0  # fdatasync calls on files
        self.dir_sync_count = 0  # fsync calls on folders
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._workers = [
            threading.Thread(target=self._work, name=f"craton-disk-{index}", daemon=True)
            for index in range(worker_count)
        ]
        for worker in self._workers:
            worker.start()

    # --- Entry points ---------------------------------------------------------------------

    def submit(self, request: DiskRequest, complete: DiskCallback) -> None:
        """Queue ``request``; ``complete`` runs later, through ``post``, with its outcome."""
        check_request(request)
        with self._state_lock:
            if self._closed:
                raise FileDiskClosed(f"FileDisk at {self._root} is closed")
            if isinstance(request, DiskSync):
                waiters = self._sync_waiters.get(request.path)
                if waiters is not None:
                    waiters.append((request.io_id, complete))
                    return
                self._sync_waiters[request.path] = [(request.io_id, complete)]
                self._jobs.put(functools.partial(self._guarded, self._sync_job, request.path))
            else:
                job = functools.partial(self._request_job, request, complete)
                self._jobs.put(functools.partial(self._guarded, job))

    def close(self) -> None:
        """Finish the queued requests, stop the workers and close every file."""
        with self._state_lock:
            if self._closed:
                return
            self._closed = True
        for _ in self._workers:
            self._jobs.put(None)
        for worker in self._workers:
            worker.join()
        with self._open_lock:
            fds = list(self._fds.values())
            self._fds.clear()
        for fd in fds:
            os.close(fd)

    def __enter__(self) -> FileDisk:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- Worker side ----------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            job()

    def _guarded(self, job: Callable[..., None], *args: object) -> None:
        try:
            job(*args)
        except Exception as exc:  # a bug, not an I/O failure: crash the driver loudly
            self._post(functools.partial(_reraise, exc))

    def _request_job(self, request: DiskRequest, complete: DiskCallback) -> None:
        try:
            result = self._execute(request)
        except _Failure as failure:
            result = IoFailed(request.io_id, failure.kind, failure.detail)
        self._post(functools.partial(complete, result))

    def _sync_job(self, path: str) -> None:
        while True:
            with self._state_lock:
                waiters = self._sync_waiters[path]
                if not waiters:
                    del self._sync_waiters[path]
                    return
                self._sync_waiters[path] = []
            try:
                self._sync(path)
            except _Failure as failure:
                for io_id, complete in waiters:
                    result: DiskCompletion = IoFailed(io_id, failure.kind, failure.detail)
                    self._post(functools.partial(complete, result))
                continue
            for io_id, complete in waiters:
                self._post(functools.partial(complete, SyncDone(io_id)))

    # --- Operations (run on workers; raise _Failure) --------------------------------------

    def _execute(self, request: DiskRequest) -> DiskCompletion:
        match request:
            case DiskRead(io_id=io_id, path=path, offset=offset, length=length):
                return ReadDone(io_id, self._read(path, offset, length))
            case DiskWrite(io_id=io_id, path=path, offset=offset, data=data, sync=sync):
                self._write(path, offset, data)
                if sync:  # on the same worker, no hand-back in between
                    self._sync(path)
                return WriteDone(io_id)
            case DiskTruncate(io_id=io_id, path=path, length=length):
                self._truncate(path, length)
                return TruncateDone(io_id)
            case DiskList(io_id=io_id, path=path):
                return ListDone(io_id, self._list(path))
            case DiskSync():
                raise AssertionError("syncs run through the group-commit job")
            case _:
                typing.assert_never(request)

    def _read(self, path: str, offset: int, length: int) -> bytes:
        fd = self._open(path, IoError.READ, create=False)
        if fd is None:
            return b""
        chunks: list[bytes] = []
        position = offset
        remaining = length
        while remaining > 0:
            try:
                chunk = os.pread(fd, remaining, position)
            except OSError as exc:
                raise _Failure(IoError.READ, _detail(f"pread at {position}", path, exc)) from exc
            if not chunk:
                break
            chunks.append(chunk)
            position += len(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)

    def _write(self, path: str, offset: int, data: bytes) -> None:
        fd = self._open(path, IoError.WRITE, create=True)
        assert fd is not None
        view = memoryview(data)
        position = offset
        while view:
            try:
                written = os.pwrite(fd, view, position)
            except OSError as exc:
                detail = _detail(f"pwrite at {position}", path, exc)
                raise _Failure(IoError.WRITE, detail) from exc
            view = view[written:]
            position += written

    def _truncate(self, path: str, length: int) -> None:
        fd = self._open(path, IoError.WRITE, create=True)
        assert fd is not None
        try:
            os.ftruncate(fd, length)
        except OSError as exc:
            detail = _detail(f"ftruncate to {length}", path, exc)
            raise _Failure(IoError.WRITE, detail) from exc

    def _list(self, path: str) -> tuple[FileInfo, ...]:
        folder = os.path.join(self._root, path) if path else self._root
        files: list[FileInfo] = []
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    if not entry.is_file(follow_symlinks=False):
                        continue
                    try:
                        size = entry.stat(follow_symlinks=False).st_size
                    except FileNotFoundError:
                        continue  # removed from outside since scandir saw it
                    files.append(FileInfo(entry.name, size))
        except FileNotFoundError:
            return ()
        except OSError as exc:
            raise _Failure(_name_kind(IoError.READ, exc), _detail("list", path, exc)) from exc
        files.sort(key=lambda info: info.name)
        return tuple(files)

    def _sync(self, path: str) -> None:
        # One fdatasync of a file at a time (a group-commit job and a write's own sync may
        # meet): the kernel reports a writeback error to one of two concurrent calls only,
        # so the failure is recorded before the next call may start.
        with self._state_lock:
            lock = self._sync_locks.setdefault(path, threading.Lock())
        with lock:
            with self._state_lock:
                failed = self._sync_failed.get(path)
            if failed is not None:
                raise _Failure(IoError.SYNC, f"{failed} (an earlier sync of {path} failed)")
            fd = self._open(path, IoError.SYNC, create=False)
            if fd is None:
                return  # nothing was ever written to it, so nothing to make durable
            with self._state_lock:
                self.fsync_count += 1
            try:
                self._data_sync(fd)
            except OSError as exc:
                self._fail_sync(path, _detail("fdatasync", path, exc))
        self._sync_names(path)

    def _sync_names(self, path: str) -> None:
        """fsync the folder holding each name on the way up from ``path`` not yet synced."""
        names = [path]
        while "/" in names[-1]:
            names.append(names[-1].rsplit("/", 1)[0])
        with self._state_lock:
            pending = [name for name in names if name not in self._names_durable]
        for name in pending:
            folder = name.rsplit("/", 1)[0] if "/" in name else ""
            try:
                self._sync_folder(folder)
            except OSError as exc:
                self._fail_sync(path, _detail(f"fsync of folder {folder!r}", path, exc))
        with self._state_lock:
            for name in pending:
                self._names_durable[name] = None

    def _sync_folder(self, folder: str) -> None:
        full = os.path.join(self._root, folder) if folder else self._root
        fd = os.open(full, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            with self._state_lock:
                self.dir_sync_count += 1
            os.fsync(fd)
        finally:
            os.close(fd)

    def _fail_sync(self, path: str, detail: str) -> typing.NoReturn:
        with self._state_lock:
            self._sync_failed.setdefault(path, detail)
        raise _Failure(IoError.SYNC, detail)

    def _open(self, path: str, kind: IoError, *, create: bool) -> int | None:
        """The cached descriptor of ``path``; None if it is missing and ``create`` is off."""
        with self._open_lock:
            fd = self._fds.get(path)
            if fd is not None:
                return fd
            full = os.path.join(self._root, path)
            try:
                try:
                    fd = os.open(full, os.O_RDWR | os.O_CLOEXEC)
                except FileNotFoundError:
                    if not create:
                        return None
                    self._make_folders(path)
                    fd = os.open(full, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
            except OSError as exc:
                raise _Failure(_name_kind(kind, exc), _detail("open", path, exc)) from exc
            self._fds[path] = fd
            return fd

    def _make_folders(self, path: str) -> None:
        parts = path.split("/")[:-1]
        folder = self._root
        for part in parts:
            folder = os.path.join(folder, part)
            # A file in the way makes the open that follows fail with ENOTDIR.
            with contextlib.suppress(FileExistsError):
                os.mkdir(folder, FOLDER_MODE)


# --- Helpers ---------------------------------------------------------------------------------


def _name_kind(kind: IoError, exc: OSError) -> IoError:
    """The kind for a failure to resolve or create a name: OTHER unless the medium failed."""
    return kind if exc.errno in MEDIUM_ERRNOS else IoError.OTHER


def _detail(operation: str, path: str, exc: OSError) -> str:
    if exc.errno is None:
        return f"{operation} {path}: {exc}"
    code = errno.errorcode.get(exc.errno, f"errno {exc.errno}")
    return f"{operation} {path}: {code} {os.strerror(exc.errno)}"


def _reraise(exc: Exception) -> None:
    raise exc


if TYPE_CHECKING:

    def _conforms(disk: FileDisk) -> Disk:
        return disk
