"""Where a state machine keeps its derived data: the bytes it need not hold in memory.

A machine's state is derived from the log: every replica that applied the same ops holds
the same state, and the checkpoint states and the log together rebuild it. So the place a
machine keeps the bulk of its state (an event store's event bodies; later SQL tables) need
not be durable, and is never trusted across a restart: it is rebuilt from the latest
checkpoint state and the log tail every time a machine is restored, in production and in
the simulator alike. What it must do is keep those bytes out of the process's memory when
the data outgrows it, and return exactly what was written.

``DerivedStorage`` hands out ``BlobFile``s: append-only byte files, read back by offset.
The core holds only this protocol and an in-memory implementation (``MemoryStorage``,
what the simulator and unit tests use); ``craton.io.derived.FileStorage`` keeps the bytes
in files of a node's data directory. A machine checks what it reads back (a checksum it
keeps in memory) and raises ``DerivedDataError`` when the bytes are not what it wrote: the
replica halts with that reason, and a restart rebuilds the data.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["BlobFile", "DerivedDataError", "DerivedStorage", "MemoryBlob", "MemoryStorage"]


class DerivedDataError(Exception):
    """Bytes read back from a machine's derived storage are not the bytes it wrote (or the
    storage could not be read): the machine cannot answer from them."""


class BlobFile(Protocol):
    """An append-only file of bytes, read back by offset; emptied by ``close``."""

    @property
    def size(self) -> int:
        """How many bytes were appended."""
        ...

    def append(self, data: bytes | bytearray | memoryview) -> int:
        """Add ``data`` at the end; return the offset where it starts."""
        ...

    def read(self, offset: int, size: int) -> bytes:
        """The ``size`` bytes at ``offset`` (within what was appended); ``DerivedDataError``
        when the storage cannot be read."""
        ...

    def close(self) -> None:
        """Nothing more is appended: the bytes go once the last reader lets go of the blob
        (a checkpoint state of the machine that closed it may still be being written)."""
        ...


class DerivedStorage(Protocol):
    """Hands out a machine's blobs."""

    def open_blob(self, name: str) -> BlobFile:
        """A new, empty blob; ``name`` says what it holds (for file names and logs)."""
        ...


class MemoryBlob:
    """A blob held in memory: one growing buffer."""

    __slots__ = ("_closed", "_data")

    def __init__(self) -> None:
        self._data = bytearray()
        self._closed = False

    @property
    def size(self) -> int:
        return len(self._data)

    def append(self, data: bytes | bytearray | memoryview) -> int:
        assert not self._closed, "append to a closed blob"
        offset = len(self._data)
        self._data += data
        return offset

    def read(self, offset: int, size: int) -> bytes:
        assert offset >= 0 and size >= 0 and offset + size <= len(self._data)
        with memoryview(self._data) as view:  # released at once: the buffer may grow
            return view[offset : offset + size].tobytes()

    def close(self) -> None:
        self._closed = True  # the bytes go with the blob


class MemoryStorage:
    """Derived storage in memory: the simulator's, and a machine's when none is given."""

    def open_blob(self, name: str) -> MemoryBlob:
        del name
        return MemoryBlob()
