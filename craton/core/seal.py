"""Checkpoint seals: Ed25519 signatures over (position, chain hash).

A checkpoint states "the first ``position`` records of this log hash to ``chain_hash``" and
is signed with the data directory's Ed25519 key, so an auditor holding the public key can
tell that a log prefix is the one the node vouched for. Ed25519 signing is deterministic,
so sealing is a pure function of the key and the checkpoint.

A checkpoint entry (144 bytes, little-endian) is what the superblock embeds and what the
``checkpoints`` history file holds one after another:

    offset  size  field
         0    16  checksum    BLAKE2b-128 of bytes 16..144
        16     4  magic       b"CRCP"
        20     2  version     1
        22     2  reserved    zero
        24     8  position    records covered (0..position-1)
        32     8  segment     segment holding record ``position`` (where a scan resumes)
        40     8  offset      file offset of record ``position`` in that segment
        48    32  chain_hash  chain hash of record position-1 (zeros when position is 0)
        80    64  signature   Ed25519 over SEAL_DOMAIN || position (u64) || chain_hash
"""

from __future__ import annotations

import struct

import attrs
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from craton.core.checksum import checksum

SEAL_DOMAIN = b"craton/checkpoint/v1"
KEY_SEED_SIZE = 32
PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64
ENTRY_SIZE = 144
ENTRY_MAGIC = b"CRCP"
_ENTRY = struct.Struct("<4sHHQQQ32s64s")
assert 16 + _ENTRY.size == ENTRY_SIZE


class SealError(Exception):
    """A checkpoint entry or seal does not check out; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@attrs.frozen
class Checkpoint:
    position: int
    segment: int
    offset: int
    chain_hash: bytes
    signature: bytes


def seal_message(position: int, chain_hash: bytes) -> bytes:
    return SEAL_DOMAIN + position.to_bytes(8, "little") + chain_hash


class Sealer:
    """Signs checkpoints with the data directory's key (given as a 32-byte seed)."""

    def __init__(self, seed: bytes) -> None:
        assert len(seed) == KEY_SEED_SIZE, "signing key seeds are 32 bytes"
        self._key = Ed25519PrivateKey.from_private_bytes(seed)
        self.public_key = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def seal(self, position: int, segment: int, offset: int, chain_hash: bytes) -> Checkpoint:
        signature = self._key.sign(seal_message(position, chain_hash))
        return Checkpoint(position, segment, offset, chain_hash, signature)


STATE_DOMAIN = b"craton/checkpoint-state/v1"


def state_message(op: int, chain_hash: bytes, digest: bytes) -> bytes:
    """What a replica signs to vouch for its checkpoint state at ``op`` (state sync): the
    op, the chain hash there, and the SHA-256 of the state's bytes."""
    return STATE_DOMAIN + op.to_bytes(8, "little") + chain_hash + digest


def verify_signature(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True when ``signature`` is ``public_key``'s Ed25519 signature of ``message``."""
    if len(public_key) != PUBLIC_KEY_SIZE or len(signature) != SIGNATURE_SIZE:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def verify_seal(public_key: bytes, checkpoint: Checkpoint) -> bool:
    """True when ``checkpoint`` carries a valid signature by ``public_key``."""
    if len(public_key) != PUBLIC_KEY_SIZE:
        return False
    try:
        key = Ed25519PublicKey.from_public_bytes(public_key)
        message = seal_message(checkpoint.position, checkpoint.chain_hash)
        key.verify(checkpoint.signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def encode_entry(checkpoint: Checkpoint) -> bytes:
    body = _ENTRY.pack(
        ENTRY_MAGIC,
        1,
        0,
        checkpoint.position,
        checkpoint.segment,
        checkpoint.offset,
        checkpoint.chain_hash,
        checkpoint.signature,
    )
    return checksum(body) + body


def decode_entry(data: bytes | memoryview) -> Checkpoint:
    if len(data) != ENTRY_SIZE:
        raise SealError(f"checkpoint entry is {len(data)} bytes, not {ENTRY_SIZE}")
    entry = bytes(data)
    if checksum(entry[16:]) != entry[:16]:
        raise SealError("checkpoint entry checksum mismatch")
    magic, version, reserved, position, segment, offset, chain, signature = _ENTRY.unpack_from(
        entry, 16
    )
    if magic != ENTRY_MAGIC or version != 1 or reserved != 0:
        raise SealError("checkpoint entry has a bad magic, version or reserved field")
    return Checkpoint(position, segment, offset, chain, signature)
