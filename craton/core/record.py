"""The on-disk record: one entry of Craton's hash-chained log (layout in docs/STORAGE.md).

A record is a fixed 128-byte header followed by its body. All integers are little-endian.

    offset  size  field
         0    16  header_checksum  BLAKE2b-128 of header bytes 16..128
        16    16  body_checksum    BLAKE2b-128 of the body
        32     4  magic            b"CRTR"
        36     2  version          RECORD_VERSION
        38     2  kind             free for the log's owner (0 for plain entries)
        40     8  position         0-based index of the record in the log
        48     8  durable_before   every record below this position was durable when this
                                   one was written (the log's certified watermark)
        56     4  body_size        length of the body in bytes
        60     4  reserved         zero
        64    32  prev_hash        chain hash of the record at position - 1 (zeros at 0)
        96    32  hash             chain hash of this record

    chain hash = SHA-256(b"craton/chain/v1" || prev_hash || position (u64) || body)

The header checksum covers the body checksum, so together they cover header and body; the
header can be trusted (position, size) even when the body is damaged, which is what lets
recovery tell a torn tail from a damaged committed record. Every decode verifies both
checksums and that the stored hash is the chain hash of (prev_hash, position, body).
"""

from __future__ import annotations

import functools
import hashlib
import struct

import attrs

from craton.core.checksum import checksum

HEADER_SIZE = 128
MAGIC = b"CRTR"
RECORD_VERSION = 1
HASH_SIZE = 32
GENESIS_HASH = bytes(HASH_SIZE)
BODY_SIZE_MAX = 16 * 1024 * 1024  # one record's body; the wire frame limit is the same
CHAIN_DOMAIN = b"craton/chain/v1"
CHAIN_HASHES_KEPT = 8

# header bytes 32..128: magic, version, kind, position, durable_before, body_size, reserved,
# prev_hash, hash
_FIELDS = struct.Struct("<4sHHQQII32s32s")
assert 32 + _FIELDS.size == HEADER_SIZE


class RecordError(Exception):
    """A record's bytes are not a valid record; ``reason`` says which check failed."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@attrs.frozen
class RecordHeader:
    kind: int
    position: int
    durable_before: int
    body_size: int
    prev_hash: bytes
    hash: bytes
    body_checksum: bytes

    @property
    def size(self) -> int:
        """Bytes the whole record takes on disk."""
        return HEADER_SIZE + self.body_size


@functools.lru_cache(maxsize=CHAIN_HASHES_KEPT)
def chain_hash(prev_hash: bytes, position: int, body: bytes) -> bytes:
    """The chain hash of ``body`` at ``position`` after ``prev_hash``. An op's hash is asked
    for when it is prepared, checked and written, so the latest are kept (a pure function
    of its arguments: the cache changes only the time it takes)."""
    assert len(prev_hash) == HASH_SIZE
    digest = hashlib.sha256(CHAIN_DOMAIN)
    digest.update(prev_hash)
    digest.update(position.to_bytes(8, "little"))
    digest.update(body)
    return digest.digest()


def encode(
    *, position: int, prev_hash: bytes, body: bytes, durable_before: int, kind: int = 0
) -> tuple[bytes, bytes]:
    """Return (record bytes, chain hash of the record)."""
    assert 0 <= position < (1 << 64)
    assert 0 <= durable_before <= position
    assert 0 <= kind < (1 << 16)
    if len(body) > BODY_SIZE_MAX:
        raise ValueError(f"record body of {len(body)} bytes exceeds {BODY_SIZE_MAX}")
    own_hash = chain_hash(prev_hash, position, body)
    fields = _FIELDS.pack(
        MAGIC,
        RECORD_VERSION,
        kind,
        position,
        durable_before,
        len(body),
        0,
        prev_hash,
        own_hash,
    )
    tail = checksum(body) + fields
    return checksum(tail) + tail + body, own_hash


def intact_header(
    data: bytes, at: int, position: int, prev_hash: bytes
) -> tuple[int, bytes, int] | None:
    """The fast path of scanning: (record size, chain hash, durable_before) of the header at
    ``at`` when it is intact, is the record at ``position`` and links to ``prev_hash``, and
    the record fits in ``data``; None for anything else, which ``decode_header`` and the
    scan's own checks then judge. It checks exactly what those do, without building a
    ``RecordHeader``."""
    end = at + HEADER_SIZE
    if end > len(data):
        return None
    header = data[at:end]
    if checksum(header[16:]) != header[:16]:
        return None
    magic, version, _kind, found, durable_before, body_size, reserved, prev, own = (
        _FIELDS.unpack_from(header, 32)
    )
    if magic != MAGIC or version != RECORD_VERSION or reserved != 0:
        return None
    if durable_before > found or body_size > BODY_SIZE_MAX:
        return None
    if found != position or prev != prev_hash or end + body_size > len(data):
        return None
    return HEADER_SIZE + body_size, own, durable_before


def decode_header(data: bytes | memoryview) -> RecordHeader:
    """Decode and check a header (``data`` holds at least HEADER_SIZE bytes)."""
    if len(data) < HEADER_SIZE:
        raise RecordError("header is incomplete")
    header = bytes(data[:HEADER_SIZE])
    if checksum(header[16:]) != header[:16]:
        raise RecordError("header checksum mismatch")
    magic, version, kind, position, durable_before, body_size, reserved, prev, own = (
        _FIELDS.unpack_from(header, 32)
    )
    if magic != MAGIC:
        raise RecordError("bad magic")
    if version != RECORD_VERSION:
        raise RecordError(f"unsupported record version {version}")
    if reserved != 0 or durable_before > position:
        raise RecordError("header fields out of range")
    if body_size > BODY_SIZE_MAX:
        raise RecordError(f"body size {body_size} exceeds {BODY_SIZE_MAX}")
    return RecordHeader(kind, position, durable_before, body_size, prev, own, header[16:32])


def check_body(header: RecordHeader, body: bytes | memoryview) -> bytes:
    """Check ``body`` against ``header`` (checksum and chain hash); return it as bytes."""
    body_bytes = bytes(body)
    if len(body_bytes) != header.body_size:
        raise RecordError("body is incomplete")
    if checksum(body_bytes) != header.body_checksum:
        raise RecordError("body checksum mismatch")
    if chain_hash(header.prev_hash, header.position, body_bytes) != header.hash:
        raise RecordError("stored hash is not the chain hash of the record")
    return body_bytes


def decode(data: bytes | memoryview) -> tuple[RecordHeader, bytes]:
    """Decode one whole record (exactly its bytes), verifying everything checkable alone."""
    header = decode_header(data)
    if len(data) != header.size:
        raise RecordError(f"record is {len(data)} bytes, header says {header.size}")
    return header, check_body(header, memoryview(data)[HEADER_SIZE:])
