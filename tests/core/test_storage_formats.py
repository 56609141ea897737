"""Unit tests for the pure storage pieces: records, seals, superblock copies, scanning."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from craton.core import record, superblock
from craton.core import scan as scan_module
from craton.core.prng import Prng
from craton.core.scan import Clean, Corrupt, Torn, scan_segment
from craton.core.seal import Sealer, SealError, decode_entry, encode_entry, verify_seal
from craton.core.vsr.replica import (
    NamedState,
    OwnerState,
    decode_owner_state,
    encode_owner_state,
)

SEED = bytes(range(32))


def chain(bodies: list[bytes], durable_lag: int = 1) -> tuple[bytes, list[int], bytes]:
    """Encode ``bodies`` as consecutive records; returns (bytes, offsets, last hash)."""
    data, offsets, prev = b"", [], record.GENESIS_HASH
    for position, body in enumerate(bodies):
        encoded, prev = record.encode(
            position=position,
            prev_hash=prev,
            body=body,
            durable_before=max(0, position - durable_lag),
        )
        offsets.append(len(data))
        data += encoded
    return data, offsets, prev


def scan(data: bytes, *, certified: int = 0, may_tear: bool = True) -> object:
    return scan_segment(
        data,
        base_offset=0,
        first_position=0,
        prev_hash=record.GENESIS_HASH,
        verify_from=0,
        certified=certified,
        may_tear=may_tear,
    )


@given(st.binary(max_size=2000), st.integers(0, 2**40), st.binary(min_size=32, max_size=32))
def test_record_round_trips_and_hash_links(body: bytes, position: int, prev: bytes) -> None:
    data, own = record.encode(position=position, prev_hash=prev, body=body, durable_before=0)
    header, decoded = record.decode(data)
    assert decoded == body
    assert header.position == position and header.prev_hash == prev and header.hash == own
    assert own == record.chain_hash(prev, position, body)


@given(st.binary(min_size=1, max_size=300), st.data())
def test_any_flipped_bit_in_a_record_is_detected(body: bytes, data: st.DataObject) -> None:
    encoded, _ = record.encode(position=3, prev_hash=bytes(32), body=body, durable_before=1)
    bit = data.draw(st.integers(0, len(encoded) * 8 - 1))
    damaged = bytearray(encoded)
    damaged[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(record.RecordError):
        record.decode(bytes(damaged))


def test_oversized_body_is_refused() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        record.encode(
            position=0,
            prev_hash=bytes(32),
            body=bytes(record.BODY_SIZE_MAX + 1),
            durable_before=0,
        )


def test_seal_verifies_only_with_the_right_key_and_values() -> None:
    sealer = Sealer(SEED)
    checkpoint = sealer.seal(10, 0, 4096, b"h" * 32)
    assert verify_seal(sealer.public_key, checkpoint)
    assert not verify_seal(Sealer(bytes(32)).public_key, checkpoint)
    forged = type(checkpoint)(11, 0, 4096, b"h" * 32, checkpoint.signature)
    assert not verify_seal(sealer.public_key, forged)
    assert decode_entry(encode_entry(checkpoint)) == checkpoint
    entry = bytearray(encode_entry(checkpoint))
    entry[50] ^= 1
    with pytest.raises(SealError, match="checksum"):
        decode_entry(bytes(entry))


def test_superblock_survives_any_single_damaged_or_misplaced_copy() -> None:
    sealer = Sealer(SEED)
    block = superblock.Superblock(7, sealer.public_key, 5, 1, sealer.seal(5, 0, 640, b"x" * 32))
    data = b"".join(superblock.encode_copy(block, copy) for copy in range(superblock.COPIES))
    assert superblock.choose(data) == block
    for copy in range(superblock.COPIES):
        damaged = bytearray(data)
        damaged[copy * superblock.COPY_SIZE + 40] ^= 0x10
        assert superblock.choose(bytes(damaged)) == block
    misplaced = superblock.encode_copy(block, 1) + data[superblock.COPY_SIZE :]
    assert superblock.decode_all(misplaced)[0] is None  # copy 1's bytes in slot 0


def test_superblock_prefers_the_newest_valid_copy() -> None:
    sealer = Sealer(SEED)
    old = superblock.Superblock(1, sealer.public_key, 0, 0, None)
    new = superblock.Superblock(2, sealer.public_key, 3, 0, None)
    data = superblock.encode_copy(new, 0) + b"".join(
        superblock.encode_copy(old, copy) for copy in range(1, superblock.COPIES)
    )
    assert superblock.choose(data) == new
    assert superblock.choose(bytes(len(data))) is None


def test_clean_scan_indexes_every_record() -> None:
    data, offsets, last = chain([b"a" * n for n in range(10)])
    result = scan(data)
    assert isinstance(result.verdict, Clean)
    assert list(result.offsets) == offsets and result.last_hash == last
    assert result.end == len(data)


def test_cut_inside_the_last_record_is_a_torn_tail() -> None:
    data, offsets, _ = chain([b"b" * 50 for _ in range(5)])
    for cut in (offsets[-1] + 1, offsets[-1] + record.HEADER_SIZE + 3, len(data) - 1):
        result = scan(data[:cut])
        assert result.verdict == Torn(offsets[-1], result.verdict.reason), cut
        assert result.next_position == 4


def test_zero_filled_tail_is_torn_and_garbage_is_corrupt() -> None:
    data, _, _ = chain([b"c" * 20 for _ in range(3)])
    assert isinstance(scan(data + bytes(700)).verdict, Torn)
    garbage = Prng(1).random_bytes(700)
    verdict = scan(data + garbage).verdict
    assert isinstance(verdict, Corrupt) and verdict.offset == len(data)


def test_damage_below_the_certified_watermark_is_never_torn() -> None:
    data, offsets, _ = chain([b"d" * 40 for _ in range(6)])
    damaged = bytearray(data)
    damaged[offsets[5] + record.HEADER_SIZE + 1] ^= 1
    assert isinstance(scan(bytes(damaged)).verdict, Torn)  # last record, uncertified
    certified = scan(bytes(damaged), certified=6).verdict
    assert isinstance(certified, Corrupt) and certified.position == 5
    sealed_segment = scan(bytes(damaged), may_tear=False).verdict
    assert isinstance(sealed_segment, Corrupt)


def test_a_later_header_certifying_a_damaged_record_makes_it_corrupt() -> None:
    data, offsets, _ = chain([b"e" * 40 for _ in range(6)], durable_lag=0)
    damaged = bytearray(data)
    damaged[offsets[2] + record.HEADER_SIZE] ^= 1  # record 3 says "below 3 is durable"
    verdict = scan(bytes(damaged)).verdict
    assert isinstance(verdict, Corrupt) and verdict.position == 2
    assert "later record certifies" in verdict.reason


def test_a_record_out_of_place_is_corrupt() -> None:
    data, offsets, _ = chain([b"f" * 10 for _ in range(4)])
    swapped = data[: offsets[1]] + data[offsets[2] : offsets[3]] + data[offsets[1] : offsets[2]]
    verdict = scan(swapped + data[offsets[3] :]).verdict
    assert isinstance(verdict, Corrupt) and verdict.position == 1


def test_prng_is_deterministic_and_streams_are_independent() -> None:
    a, b = Prng(42), Prng(42)
    assert [a.next_u64() for _ in range(5)] == [b.next_u64() for _ in range(5)]
    first = Prng(42).split("disk")
    other = Prng(42)
    other.split("network").next_u64()
    assert first.next_u64() == other.split("disk").next_u64()
    # pinned: a change here changes every recorded seed's trace
    seven = Prng(7)
    assert [seven.next_u64() for _ in range(3)] == [
        7999873474781482416,
        4031179788535022432,
        15464269633505413824,
    ]
    assert Prng(7, "x").below(1000) == 613


def test_owner_state_round_trips_and_older_versions_read_as_they_were() -> None:
    """A replica's state in the superblock: the damage-only flag is kept only with the
    recovering one, the named checkpoint state round-trips, and states of the first two
    versions (no flags; no named state) read as they were written."""
    named = NamedState(64, 1234, bytes(range(32)))
    for recovering in (False, True):
        for damage_only in (False, True):
            for state in (None, named):
                owner = OwnerState(7, 5, recovering, damage_only, state, damage_mark=90)
                kept = recovering and damage_only
                expected = OwnerState(7, 5, recovering, kept, state, 90 if kept else 0)
                assert decode_owner_state(encode_owner_state(owner)) == expected
    assert decode_owner_state(struct.pack("<4sII", b"VSR1", 3, 2)) == OwnerState(3, 2)
    second = struct.pack("<4sIII", b"VSR2", 3, 2, 3)
    assert decode_owner_state(second) == OwnerState(3, 2, True, True)
    # the third version named no mark: its damage-only flag is not believed (a restart
    # recovers through the peers, as it did before the flag)
    third = struct.pack("<4sIIIQQ32s", b"VSR3", 3, 2, 3, 64, 1234, bytes(range(32)))
    assert decode_owner_state(third) == OwnerState(3, 2, True, False, named)


@given(
    damage=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), max_size=3),
    cut=st.integers(0, 10**6),
    verify_from=st.integers(0, 12),
    certified=st.integers(0, 12),
    sealed_at=st.integers(0, 12),
)
def test_the_fast_header_path_judges_every_segment_as_the_full_checks_do(
    damage: list[tuple[int, int]], cut: int, verify_from: int, certified: int, sealed_at: int
) -> None:
    """Below ``verify_from`` a scan takes a fast path for intact headers; on any segment,
    damaged, cut short or whole, it finds exactly what the full checks alone find."""
    bodies = [b"body %d " % n * (n % 4 + 1) for n in range(12)]
    data, _, _ = chain(bodies)
    damaged = bytearray(data[: len(data) - cut % (len(data) + 1)])
    for at, mask in damage:
        if damaged:
            damaged[at % len(damaged)] ^= mask
    hashes = []
    prev = record.GENESIS_HASH
    for position, body in enumerate(bodies):
        prev = record.chain_hash(prev, position, body)
        hashes.append(prev)
    sealed = {sealed_at: hashes[sealed_at]} if sealed_at < len(hashes) else None

    def scanned() -> object:
        return scan_segment(
            bytes(damaged),
            base_offset=0,
            first_position=0,
            prev_hash=record.GENESIS_HASH,
            verify_from=verify_from,
            certified=certified,
            may_tear=True,
            sealed=sealed,
        )

    fast = scanned()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(scan_module, "intact_header", lambda *_: None)
        full = scanned()
    assert fast == full
