"""The checksum Craton puts on every record, superblock copy and checkpoint entry.

BLAKE2b with a 16-byte digest (from the standard library): fast, and strong enough that
neither a bit flip nor a torn or misplaced sector goes unnoticed. It detects damage; the
SHA-256 hash chain (``craton.core.record``) is what makes tampering evident.
"""

from __future__ import annotations

import hashlib

CHECKSUM_SIZE = 16


def checksum(data: bytes | memoryview) -> bytes:
    return hashlib.blake2b(data, digest_size=CHECKSUM_SIZE).digest()
