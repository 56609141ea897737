"""The replica-to-replica messages of Viewstamped Replication, and the prepare body.

They live in the wire package beside the client messages because they share its framing
and schema; the replica that sends them is ``craton.core.vsr.replica``.

Names follow "Viewstamped Replication Revisited" (Liskov & Cowling, 2012): ``view``,
``op``, ``commit``, ``log_view`` (the paper's "latest normal view"). Craton counts ops from
0, as log positions, and ``commit`` is the number of committed ops (ops ``0..commit-1``).

Each message is a frozen attrs class whose fields carry their wire schema
(``craton.core.wire.schema``) and travels in a checksummed frame of the wire protocol with a
``Command`` from the replica range. An entry of a log suffix carries the op, its chain hash
and its prepare body; the receiver recomputes the hash chain before it believes any of it.
"""

from typing import Annotated

import attrs

from craton.core.wire.schema import Blob, Record, Seq, UInt, wire_fields

HASH_SIZE = 32
OPERATION_SIZE_MAX = 1024 * 1024  # bytes of one client operation
PREPARE_BODY_SIZE_MAX = OPERATION_SIZE_MAX + 64  # the operation and its prepare header
SUFFIX_ENTRIES_MAX = 64  # entries in one do-view-change, start-view or new-state message
REPLICAS_MAX = 16
# bytes of checkpoint state one NewCheckpoint carries: a larger state goes in parts, each
# asked for by the receiver (``GetState.state_offset``)
STATE_PART_SIZE_MAX = 15 * 1024 * 1024
STATE_SIZE_MAX = 2**40  # bytes of a whole checkpoint state, as a decoder bound

U8 = UInt(8)
U32 = UInt(32)
U64 = UInt(64)
REPLICA = UInt(8, maximum=REPLICAS_MAX - 1)
HASH = Blob(HASH_SIZE)


def _check_hash(value: bytes) -> None:
    if len(value) != HASH_SIZE:
        raise ValueError(f"a chain hash is {HASH_SIZE} bytes, not {len(value)}")


@attrs.frozen(field_transformer=wire_fields)
class Entry:
    """One op of a log: its position, chain hash and prepare body."""

    op: Annotated[int, U64]
    hash: Annotated[bytes, HASH]
    body: Annotated[bytes, Blob(PREPARE_BODY_SIZE_MAX)]

    def __attrs_post_init__(self) -> None:
        _check_hash(self.hash)


ENTRIES = Seq(Record(Entry), 0, SUFFIX_ENTRIES_MAX)


@attrs.frozen(field_transformer=wire_fields)
class Prepare:
    """The primary of ``view`` asks backups to log ``entry``; ``commit`` piggybacks."""

    view: Annotated[int, U32]
    commit: Annotated[int, U64]
    entry: Annotated[Entry, Record(Entry)]


@attrs.frozen(field_transformer=wire_fields)
class PrepareOk:
    """``replica`` holds every op up to ``op`` of ``view``'s log, durably."""

    view: Annotated[int, U32]
    op: Annotated[int, U64]
    replica: Annotated[int, REPLICA]


@attrs.frozen(field_transformer=wire_fields)
class Commit:
    """The primary's heartbeat: ops below ``commit`` are committed."""

    view: Annotated[int, U32]
    commit: Annotated[int, U64]


@attrs.frozen(field_transformer=wire_fields)
class StartViewChange:
    view: Annotated[int, U32]
    replica: Annotated[int, REPLICA]


@attrs.frozen(field_transformer=wire_fields)
class DoViewChange:
    """``replica``'s log for the new primary: its ``log_view``, ``head`` and ``commit``,
    and the entries from ``suffix_start`` to its head (the ones that may be uncommitted)."""

    view: Annotated[int, U32]
    log_view: Annotated[int, U32]
    head: Annotated[int, U64]
    commit: Annotated[int, U64]
    replica: Annotated[int, REPLICA]
    suffix_start: Annotated[int, U64]
    entries: Annotated[tuple[Entry, ...], ENTRIES]


@attrs.frozen(field_transformer=wire_fields)
class StartView:
    """The new primary's log: ``head``, ``commit`` and the entries from ``suffix_start``."""

    view: Annotated[int, U32]
    head: Annotated[int, U64]
    commit: Annotated[int, U64]
    suffix_start: Annotated[int, U64]
    entries: Annotated[tuple[Entry, ...], ENTRIES]


@attrs.frozen(field_transformer=wire_fields)
class RequestStartView:
    """``replica`` missed the start of ``view``: the primary sends ``StartView`` again."""

    view: Annotated[int, U32]
    replica: Annotated[int, REPLICA]


@attrs.frozen(field_transformer=wire_fields)
class GetState:
    """``replica`` asks for the entries of ``view``'s log from ``op_from`` on; when the
    answer is a checkpoint state (``op_from`` lies below the sender's journal), for its
    bytes from ``state_offset`` on (the receiver of a state in parts asks for each part)."""

    view: Annotated[int, U32]
    op_from: Annotated[int, U64]
    replica: Annotated[int, REPLICA]
    state_offset: Annotated[int, U64] = 0


@attrs.frozen(field_transformer=wire_fields)
class NewState:
    """Entries of ``view``'s log from ``op_from`` on (as many as fit), with ``commit``."""

    view: Annotated[int, U32]
    commit: Annotated[int, U64]
    head: Annotated[int, U64]
    op_from: Annotated[int, U64]
    entries: Annotated[tuple[Entry, ...], ENTRIES]


@attrs.frozen(field_transformer=wire_fields)
class NewCheckpoint:
    """The answer to a ``GetState`` from below the sender's journal: the sender's checkpoint
    state at ``op`` (ops ``0..op-1`` applied), whose SHA-256 is ``digest``, signed by the
    sender (``replica``, key ``public_key``) over op, ``chain_hash`` and digest
    (``craton.core.seal.state_message``). The receiver checks all of it before it installs
    the state, then asks for the entries from ``op`` on. ``state`` holds the state's bytes
    from ``offset`` on, of ``state_size`` in all: a state larger than one part is sent in
    parts, each asked for by the receiver, and checked once whole."""

    view: Annotated[int, U32]
    commit: Annotated[int, U64]
    head: Annotated[int, U64]
    replica: Annotated[int, REPLICA]
    op: Annotated[int, U64]
    chain_hash: Annotated[bytes, HASH]
    digest: Annotated[bytes, HASH]
    public_key: Annotated[bytes, Blob(32)]
    signature: Annotated[bytes, Blob(64)]
    state_size: Annotated[int, UInt(64, maximum=STATE_SIZE_MAX)]
    offset: Annotated[int, U64]
    state: Annotated[bytes, Blob(STATE_PART_SIZE_MAX)]

    def __attrs_post_init__(self) -> None:
        if self.offset + len(self.state) > self.state_size:
            raise ValueError(
                f"a part of {len(self.state)} bytes at {self.offset} overruns a state of "
                f"{self.state_size} bytes"
            )


@attrs.frozen(field_transformer=wire_fields)
class Recovery:
    """``replica`` lost (part of) its log or its whole disk and asks what view the cluster
    is in; ``nonce`` ties the answers to this request."""

    replica: Annotated[int, REPLICA]
    nonce: Annotated[int, U64]


@attrs.frozen(field_transformer=wire_fields)
class RecoveryResponse:
    """``replica`` is in normal status in ``view`` (answering ``Recovery`` ``nonce``)."""

    view: Annotated[int, U32]
    replica: Annotated[int, REPLICA]
    nonce: Annotated[int, U64]


@attrs.frozen(field_transformer=wire_fields)
class RequestPrepare:
    """``replica`` found op ``op`` damaged in its log and asks any replica for it."""

    replica: Annotated[int, REPLICA]
    op: Annotated[int, U64]


@attrs.frozen(field_transformer=wire_fields)
class PrepareReply:
    """The answer to ``RequestPrepare``: the sender's entry at that op, and the view whose
    log the sender's journal is (its ``log_view``). The receiver checks it against the hash
    its own log vouches for, or, when nothing vouches for one, takes it only from a log of
    its own log view."""

    log_view: Annotated[int, U32]
    entry: Annotated[Entry, Record(Entry)]


ReplicaMessage = (
    Prepare
    | PrepareOk
    | Commit
    | StartViewChange
    | DoViewChange
    | StartView
    | RequestStartView
    | GetState
    | NewState
    | NewCheckpoint
    | Recovery
    | RecoveryResponse
    | RequestPrepare
    | PrepareReply
)


# --- The prepare body: what the log stores for each op -------------------------------------


@attrs.frozen(field_transformer=wire_fields)
class PrepareBody:
    """A client's operation as the log keeps it: who asked, which request, in which view.

    ``request_number`` is the client's request id: 0 registers a session (the op becomes
    the session), any other is ``session << 32 | number`` (see the replica's client table)."""

    view: Annotated[int, U32]
    client_id: Annotated[int, U64]
    request_number: Annotated[int, U64]
    operation: Annotated[bytes, Blob(OPERATION_SIZE_MAX)]


PREPARE_BODY = Record(PrepareBody)
