"""The superblock: the data directory's root of trust, kept in redundant copies.

The ``superblock`` file holds COPIES copies of COPY_SIZE bytes each. An update writes every
copy (one write per slot) and then syncs; recovery takes the valid copy with the highest
sequence number. A copy is valid when its checksum holds *and* it names its own slot, so a
torn copy, a copy rotted at rest, or a copy written to the wrong slot is skipped, and one
bad copy never loses the superblock.

Copy layout (little-endian):

    offset  size  field
         0    16  checksum         BLAKE2b-128 of bytes 16..COPY_SIZE
        16     4  magic            b"CRSB"
        20     2  version          1
        22     2  copy             slot index this copy was written to
        24     8  sequence         bumps on every update
        32    32  public_key       Ed25519 key that seals this directory's checkpoints
        64     8  durable_before   every record below this position is durable
        72     8  checkpoint_count entries of the ``checkpoints`` file that are sealed
        80   144  checkpoint       latest checkpoint entry (all zeros: none yet)
       224     2  owner_size       bytes of owner state that follow
       226     …  owner_state      opaque state of the log's owner (e.g. replica view)
      2274     8  base_position    the log's first record (0 unless a base was installed)
      2282    32  base_hash        chain hash before base_position
      2314     8  base_segment     segments numbered below it are not part of the log
      2322    32  base_digest      SHA-256 of the base state file (see ``state_path``)
      2354     8  base_size        bytes of the base state file
         …     …  zeros

Version 1 copies have zeros where the base fields are: a log that starts at record 0. A
*base* is installed by a replica that caught up from another replica's checkpoint state
instead of from its ops: the records below ``base_position`` are not on this disk, and the
owner's state at that position is in the base state file, vouched for by its digest here.
"""

from __future__ import annotations

import struct

import attrs

from craton.core.checksum import checksum
from craton.core.seal import (
    ENTRY_SIZE,
    PUBLIC_KEY_SIZE,
    Checkpoint,
    SealError,
    decode_entry,
    encode_entry,
)

PATH = "superblock"
COPIES = 4
COPY_SIZE = 4096
MAGIC = b"CRSB"
VERSION = 2
VERSIONS_READ = (1, 2)
OWNER_STATE_SIZE_MAX = 2048
_FIXED = struct.Struct("<4sHHQ32sQQ")
_CHECKPOINT_OFFSET = 80
_OWNER_OFFSET = _CHECKPOINT_OFFSET + ENTRY_SIZE
assert 16 + _FIXED.size == _CHECKPOINT_OFFSET
_BASE = struct.Struct("<Q32sQ32sQ")  # position, hash, segment, state digest, state size
_BASE_OFFSET = _OWNER_OFFSET + 2 + OWNER_STATE_SIZE_MAX
assert _BASE_OFFSET == 2274 and _BASE_OFFSET + _BASE.size <= COPY_SIZE
NO_HASH = bytes(32)
STATE_FOLDER = "state"


def state_path(position: int) -> str:
    """The file holding the owner's state at ``position`` when it is the log's base."""
    return f"{STATE_FOLDER}/{position:020d}.state"


@attrs.frozen
class Superblock:
    sequence: int
    public_key: bytes
    durable_before: int
    checkpoint_count: int
    checkpoint: Checkpoint | None
    owner_state: bytes = b""
    base_position: int = 0
    base_hash: bytes = NO_HASH
    base_segment: int = 0
    base_digest: bytes = NO_HASH
    base_size: int = 0


def encode_copy(superblock: Superblock, copy: int) -> bytes:
    assert 0 <= copy < COPIES
    assert len(superblock.public_key) == PUBLIC_KEY_SIZE
    assert len(superblock.owner_state) <= OWNER_STATE_SIZE_MAX
    fixed = _FIXED.pack(
        MAGIC,
        VERSION,
        copy,
        superblock.sequence,
        superblock.public_key,
        superblock.durable_before,
        superblock.checkpoint_count,
    )
    entry = (
        bytes(ENTRY_SIZE) if superblock.checkpoint is None else encode_entry(superblock.checkpoint)
    )
    owner = len(superblock.owner_state).to_bytes(2, "little") + superblock.owner_state
    body = fixed + entry + owner
    body += bytes(_BASE_OFFSET - 16 - len(body))
    body += _BASE.pack(
        superblock.base_position,
        superblock.base_hash,
        superblock.base_segment,
        superblock.base_digest,
        superblock.base_size,
    )
    body += bytes(COPY_SIZE - 16 - len(body))
    return checksum(body) + body


def decode_copy(data: bytes, copy: int) -> Superblock | None:
    """The superblock in slot ``copy``, or None when that copy is damaged or misplaced."""
    if len(data) != COPY_SIZE or checksum(data[16:]) != data[:16]:
        return None
    magic, version, slot, sequence, public_key, durable_before, count = _FIXED.unpack_from(data, 16)
    if magic != MAGIC or version not in VERSIONS_READ or slot != copy:
        return None
    entry = data[_CHECKPOINT_OFFSET:_OWNER_OFFSET]
    checkpoint = None
    if entry != bytes(ENTRY_SIZE):
        try:
            checkpoint = decode_entry(entry)
        except SealError:
            return None
    owner_size = int.from_bytes(data[_OWNER_OFFSET : _OWNER_OFFSET + 2], "little")
    if owner_size > OWNER_STATE_SIZE_MAX:
        return None
    owner_state = data[_OWNER_OFFSET + 2 : _OWNER_OFFSET + 2 + owner_size]
    base = _BASE.unpack_from(data, _BASE_OFFSET)
    return Superblock(sequence, public_key, durable_before, count, checkpoint, owner_state, *base)


def decode_all(data: bytes) -> list[Superblock | None]:
    """Every slot of the superblock file's bytes: its copy, or None when it is not valid."""
    return [
        decode_copy(data[copy * COPY_SIZE : (copy + 1) * COPY_SIZE], copy) for copy in range(COPIES)
    ]


def newest(copies: list[Superblock | None]) -> Superblock | None:
    """The valid copy with the highest sequence (the first such slot on a tie)."""
    best: Superblock | None = None
    for candidate in copies:
        if candidate is not None and (best is None or candidate.sequence > best.sequence):
            best = candidate
    return best


def choose(data: bytes) -> Superblock | None:
    """The newest valid copy in the superblock file's bytes, or None when none is valid."""
    return newest(decode_all(data))
