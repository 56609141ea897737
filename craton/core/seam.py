"""The seam between Craton's pure core and the world: inputs in, effects out.

Every core machine is driven the same way. The driver hands it an ``Input`` (a tick, a
message from a peer, a client request, or the completion of an I/O it asked for) and the
machine answers with a list of ``Effect`` values that the driver carries out, in order,
against whatever ``Disk``, ``Network`` and ``Clock`` it was given. The machine itself never
performs I/O, never reads a clock and never draws randomness it was not handed.

Both unions are closed: a driver dispatches on them with an exhaustive ``match`` that ends in
``typing.assert_never``.

Ordering contract (binding for every machine and every driver):

1. Effects are executed in list order. Disk requests are *submitted* in that order; the
   disk may complete them in any order, so a machine that needs "A before B" waits for A's
   completion before emitting B.
2. Persist before send: a machine emits a ``Send`` or ``Reply`` that depends on state it
   wrote only after the ``SyncDone`` of that write has come back as an input.
3. Acknowledge only what is synced: a ``Reply`` that reports a write as done is emitted
   only after the sync covering that write completed successfully.
4. Apply only what is committed: state machines see an operation only once it is durable
   (single node) or committed by a quorum (cluster).
5. A ``Halt`` effect is final: the driver stops feeding the machine and reports the reason.

I/O requests carry an ``io_id`` chosen by the machine (see ``IoIds``); exactly one
completion with the same ``io_id`` comes back for every request.
"""

from __future__ import annotations

import enum
from typing import Protocol

import attrs

from craton.core.wire.errors import ErrorCode

# Paths on a Disk are relative, slash-separated, and made of these characters only.
PATH_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-/")
PATH_LENGTH_MAX = 255
PATH_DEPTH_MAX = 4


def check_path(path: str) -> str:
    """Return ``path`` if it is a valid Disk path, else raise ``ValueError``."""
    if not path or len(path) > PATH_LENGTH_MAX:
        raise ValueError(f"disk path length must be 1..{PATH_LENGTH_MAX}: {path!r}")
    if not set(path) <= PATH_CHARS:
        raise ValueError(f"disk path has characters outside [A-Za-z0-9._-/]: {path!r}")
    parts = path.split("/")
    if len(parts) > PATH_DEPTH_MAX or any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"disk path must be relative, without empty/./.. parts: {path!r}")
    return path


class IoIds:
    """Allocator of I/O request ids, shared by all machines behind one driver."""

    def __init__(self, first: int = 1) -> None:
        assert first >= 1
        self._next = first

    def next(self) -> int:
        io_id = self._next
        self._next += 1
        return io_id


class IoError(enum.IntEnum):
    """Why a disk request failed (reported by ``IoFailed``).

    READ, WRITE and SYNC name the call that failed (a failed listing counts as READ);
    OTHER means the name could not be opened or created (a folder in the way, permissions,
    no descriptors left). Medium errors (EIO, ENOSPC, ...) keep the operation's kind."""

    READ = 1  # the medium could not return the bytes (EIO on read)
    WRITE = 2  # the write was not performed (EIO/ENOSPC on write)
    SYNC = 3  # fsync/fdatasync failed: what was written since the last sync is suspect
    OTHER = 4


# --- Effects: what a machine asks the world to do -------------------------------------------


@attrs.frozen
class DiskRead:
    """Read up to ``length`` bytes at ``offset``; fewer come back at end of file.

    A missing file reads as empty."""

    io_id: int
    path: str
    offset: int
    length: int


@attrs.frozen
class DiskWrite:
    """Write ``data`` at ``offset``, creating the file (and its folder) when missing.

    A write past the end of the file fills the gap with zeros. Not durable until a
    ``DiskSync`` of the same path completes after this write's ``WriteDone``.

    With ``sync``, the write and that sync are one request: ``WriteDone`` comes back once
    the write is done and a sync of ``path`` that started after it has completed (a failed
    sync reports ``IoFailed(IoError.SYNC)``, and is final for the file as ``DiskSync``
    says). A crash before the completion leaves the write as unsynced as any other."""

    io_id: int
    path: str
    offset: int
    data: bytes
    sync: bool = False


@attrs.frozen
class DiskSync:
    """Make every completed write to ``path`` (and its existence) durable.

    A sync of a missing file completes and creates nothing. Once a sync of a file has
    failed, every later sync of it fails too (``IoError.SYNC``): the kernel may have
    dropped the unwritten pages and would report the next sync as clean."""

    io_id: int
    path: str


@attrs.frozen
class DiskTruncate:
    """Set the length of ``path`` to ``length`` (creating it when missing); durable on sync."""

    io_id: int
    path: str
    length: int


@attrs.frozen
class DiskList:
    """List the regular files directly inside folder ``path`` ("" is the root), by name."""

    io_id: int
    path: str


DiskRequest = DiskRead | DiskWrite | DiskSync | DiskTruncate | DiskList


def check_request(request: DiskRequest) -> None:
    """Raise ``ValueError`` for a malformed request (bad path, negative offset or length).

    Every ``Disk`` calls this in ``submit``: a malformed request is a bug in the caller,
    not an I/O outcome, so it raises instead of completing."""
    if isinstance(request, DiskList):
        if request.path:
            check_path(request.path)
        return
    check_path(request.path)
    for name in ("offset", "length"):
        value = getattr(request, name, 0)
        if value < 0:
            raise ValueError(f"disk request {name} must not be negative: {value}")


@attrs.frozen
class Send:
    """Send ``payload`` (an encoded message) to replica ``dst``; delivery is not promised."""

    dst: int
    payload: bytes


@attrs.frozen
class Reply:
    """Answer client ``client_id``'s request ``request_id`` with an encoded ``body``."""

    client_id: int
    request_id: int
    body: bytes


@attrs.frozen
class Answer:
    """The gateway's answer to the ``Submit`` with this ``token`` (``craton.core.gateway``):
    ``code`` is None when it was applied (``op`` and the state machine's ``reply``) or, for a
    session, opened; otherwise the request was refused, ``message`` says why in words and,
    with ``NOT_PRIMARY``, ``primary`` is the primary's replica index when one is known."""

    token: int
    code: ErrorCode | None
    op: int = 0
    reply: bytes = b""
    message: str = ""
    primary: int | None = None


@attrs.frozen
class Notice:
    """Something an operator should see in the logs (never payloads or secrets)."""

    event: str
    fields: tuple[tuple[str, str | int], ...] = ()


@attrs.frozen
class Halt:
    """The machine cannot go on safely (e.g. corruption it must not paper over)."""

    reason: str


Effect = (
    DiskRead
    | DiskWrite
    | DiskSync
    | DiskTruncate
    | DiskList
    | Send
    | Reply
    | Answer
    | Notice
    | Halt
)


# --- Inputs: what the world tells a machine -------------------------------------------------


@attrs.frozen
class Tick:
    """One unit of logical time passed. Timeouts inside the core are counted in ticks."""


@attrs.frozen
class MessageReceived:
    """Replica ``src`` sent ``payload`` (still encoded: the machine decodes and checks it)."""

    src: int
    payload: bytes


@attrs.frozen
class ClientRequest:
    """Client ``client_id`` asks for ``body`` (encoded) as its request ``request_id``."""

    client_id: int
    request_id: int
    body: bytes


class SubmitKind(enum.Enum):
    """What a client connection asks the gateway for."""

    SESSION = "session"  # the handshake: make sure the client has a session on the primary
    WRITE = "write"  # applied once, whatever the retries of its request id
    READ = "read"  # applied at an op of its own; a retry is a new read
    RECORD = "record"  # a record of the node's own (an audit record), never answered


@attrs.frozen
class Submit:
    """A client connection's request to the gateway (``craton.core.gateway``), answered by one
    ``Answer`` with the same ``token`` (a ``RECORD`` by none). ``client_id`` is the wire
    client's u128 id in tenant ``tenant_id``; ``request_id`` its wire request id (for a
    ``SESSION``, the handshake's); ``fresh`` says a write is sent for the first time
    (``craton.core.gateway.RequestFreshness``)."""

    token: int
    kind: SubmitKind
    tenant_id: int = 0
    client_id: int = 0
    request_id: int = 0
    body: bytes = b""
    fresh: bool = False


@attrs.frozen
class FileInfo:
    name: str
    size: int


@attrs.frozen
class ReadDone:
    io_id: int
    data: bytes


@attrs.frozen
class WriteDone:
    io_id: int


@attrs.frozen
class SyncDone:
    io_id: int


@attrs.frozen
class TruncateDone:
    io_id: int


@attrs.frozen
class ListDone:
    io_id: int
    files: tuple[FileInfo, ...]


@attrs.frozen
class IoFailed:
    io_id: int
    error: IoError
    detail: str = ""


DiskCompletion = ReadDone | WriteDone | SyncDone | TruncateDone | ListDone | IoFailed

Input = (
    Tick
    | MessageReceived
    | ClientRequest
    | Submit
    | ReadDone
    | WriteDone
    | SyncDone
    | TruncateDone
    | ListDone
    | IoFailed
)

DISK_REQUEST_TYPES: tuple[type, ...] = (DiskRead, DiskWrite, DiskSync, DiskTruncate, DiskList)
DISK_COMPLETION_TYPES: tuple[type, ...] = (
    ReadDone,
    WriteDone,
    SyncDone,
    TruncateDone,
    ListDone,
    IoFailed,
)


class Machine(Protocol):
    """A pure core machine: one way in, one kind of output."""

    def step(self, event: Input) -> list[Effect]:
        """Consume one input and return the effects to carry out, in order."""
        ...

    def invariants(self) -> None:
        """Assert the machine's internal invariants (the simulator calls this every step)."""
        ...
