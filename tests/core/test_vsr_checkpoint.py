"""The checkpoint state's encoding: canonical, and opened only when it matches its digest."""

from __future__ import annotations

import hashlib

import pytest

from craton.core.vsr.checkpoint import (
    CheckpointError,
    ClientEntry,
    encode_checkpoint,
    open_checkpoint,
)

CHAIN = bytes(range(32))
CLIENTS = [
    ClientEntry(9, 4, 2, 7, b"\x00reply"),
    ClientEntry(3, 1, 0, 1, None),
]


def test_round_trip_and_clients_sorted_whatever_the_order_given() -> None:
    data, digest = encode_checkpoint(64, CHAIN, CLIENTS, b"machine")
    again = encode_checkpoint(64, CHAIN, list(reversed(CLIENTS)), b"machine")
    assert (data, digest) == again, "expected the same bytes whatever the client table's order"
    assert digest == hashlib.sha256(data).digest()
    opened = open_checkpoint(data, digest)
    assert (opened.op, opened.chain_hash, opened.machine_snapshot) == (64, CHAIN, b"machine")
    assert [c.client for c in opened.clients] == [3, 9]
    assert opened.clients[1].reply == b"\x00reply" and opened.clients[0].reply is None


def test_a_state_that_does_not_match_its_digest_is_refused() -> None:
    data, digest = encode_checkpoint(64, CHAIN, CLIENTS, b"machine")
    flipped = bytearray(data)
    flipped[-1] ^= 1
    with pytest.raises(CheckpointError, match="digest"):
        open_checkpoint(bytes(flipped), digest)


def resealed(data: bytes) -> tuple[bytes, bytes]:
    return data, hashlib.sha256(data).digest()


@pytest.mark.parametrize(
    ("mutate", "why"),
    [
        (lambda d: d[:-3], "truncated"),
        (lambda d: d + b"x", "after the checkpoint"),
        (lambda d: b"XXXX" + d[4:], "bad magic"),
        (lambda d: d[:4] + b"\x09\x00" + d[6:], "format 9"),
    ],
)
def test_malformed_states_raise_a_typed_error(mutate: object, why: str) -> None:
    state, _ = encode_checkpoint(64, CHAIN, CLIENTS, b"machine")
    assert callable(mutate)
    data, digest = resealed(mutate(state))
    with pytest.raises(CheckpointError, match=why):
        open_checkpoint(data, digest)


def test_unsorted_clients_are_refused() -> None:
    one, _ = encode_checkpoint(0, CHAIN, [CLIENTS[0]], b"")
    row = one[4 + 2 + 8 + 32 + 4 : -8]  # the single client's row
    two = bytearray(one[: 4 + 2 + 8 + 32])
    two += (2).to_bytes(4, "little") + row + row + (0).to_bytes(8, "little")
    with pytest.raises(CheckpointError, match="sorted"):
        open_checkpoint(*resealed(bytes(two)))
