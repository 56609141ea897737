"""Derived storage in files (``craton.core.storage``): a machine's blobs in a folder of the
node's data directory, so that the bulk of its state lives in the page cache and on disk
rather than in the process's memory.

Nothing here is durable or needs to be: the folder is emptied when the node starts (the
machine is rebuilt from the checkpoint state and the log), writes are never synced, and a
blob's file is removed when the blob is closed (its descriptor stays open until the blob is
garbage, for a checkpoint state still being written from it). Appends gather in a small
buffer and reach the file in one write once it fills or a read needs them. Every call runs
on the thread that runs the replica; a read the page cache cannot answer waits for the disk
there.
"""

from __future__ import annotations

import os
from pathlib import Path

from craton.core.storage import DerivedDataError

__all__ = ["BLOB_SUFFIX", "WRITE_BUFFER_BYTES", "FileBlob", "FileStorage"]

BLOB_SUFFIX = ".blob"
WRITE_BUFFER_BYTES = 1 << 20  # appends gathered before one write to the file


class FileBlob:
    """A blob in one file, opened for this process alone."""

    __slots__ = ("_closed", "_fd", "_path", "_pending", "_written")

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        self._written = 0  # bytes already in the file
        self._pending = bytearray()  # bytes appended after them
        self._closed = False

    @property
    def size(self) -> int:
        return self._written + len(self._pending)

    def append(self, data: bytes | bytearray | memoryview) -> int:
        assert not self._closed, "append to a closed blob"
        pending = self._pending
        offset = self._written + len(pending)
        pending += data
        if len(pending) >= WRITE_BUFFER_BYTES:
            self._flush()
        return offset

    def read(self, offset: int, size: int) -> bytes:
        assert offset >= 0 and size >= 0 and offset + size <= self.size
        if offset >= self._written:
            start = offset - self._written
            return bytes(self._pending[start : start + size])
        if offset + size > self._written:
            self._flush()
        try:
            data = os.pread(self._fd, size, offset)
        except OSError as error:
            raise DerivedDataError(f"{self._path.name}: {error.strerror or error}") from None
        if len(data) != size:
            raise DerivedDataError(f"{self._path.name}: {len(data)} bytes at {offset}, not {size}")
        return data

    def close(self) -> None:
        """Remove the file's name at once; its descriptor (and so its bytes, for a state
        still being written from them) goes when the blob is garbage."""
        if not self._closed:
            self._closed = True
            self._path.unlink(missing_ok=True)

    def __del__(self) -> None:
        if getattr(self, "_fd", -1) >= 0:  # (unset when the open failed)
            os.close(self._fd)
            self._fd = -1

    def _flush(self) -> None:
        flushed = 0
        try:
            with memoryview(self._pending) as view:
                while flushed < len(view):
                    with view[flushed:] as rest:
                        flushed += os.pwrite(self._fd, rest, self._written + flushed)
        except OSError as error:
            raise DerivedDataError(f"{self._path.name}: {error.strerror or error}") from None
        finally:
            self._written += flushed
            del self._pending[:flushed]


class FileStorage:
    """Blobs as files in ``folder``; what an earlier process left there is removed."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        for leftover in folder.glob(f"*{BLOB_SUFFIX}"):
            leftover.unlink(missing_ok=True)
        self._opened = 0

    def open_blob(self, name: str) -> FileBlob:
        self._opened += 1
        return FileBlob(self.folder / f"{name}-{self._opened}{BLOB_SUFFIX}")
