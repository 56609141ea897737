"""Replica membership proofs (``craton.core.peer_auth``): good once, for one sender and one
receiver, within the clock window, with the cluster's secret (or the secondary one while
it rotates); the checker's memory is bounded."""

from __future__ import annotations

from craton.core.peer_auth import NONCES_MAX, PROOF_AGE_MS_MAX, ProofChecker, make_proof

SECRET = b"s" * 32
NEXT = b"n" * 32
NOW_MS = 1_800_000_000_000
CLIENT_ID = 0x524545504E545243 << 64 | 3 << 8 | 1  # replica 1 of 3


def nonce(number: int) -> bytes:
    return number.to_bytes(16, "little")


def test_a_proof_is_good_once() -> None:
    checker = ProofChecker((SECRET,), receiver=0)
    proof = make_proof(SECRET, CLIENT_ID, 0, NOW_MS, nonce(1))
    assert checker.check(proof, CLIENT_ID, NOW_MS + 5) is None
    assert checker.check(proof, CLIENT_ID, NOW_MS + 6) == "the hello's proof was used before"


def test_what_a_proof_does_not_prove() -> None:
    checker = ProofChecker((SECRET,), receiver=0)
    cases = {
        "absent": None,
        "not a proof": "crtnpeer.v1.garbage",
        "other secret": make_proof(NEXT, CLIENT_ID, 0, NOW_MS, nonce(2)),
        "other receiver": make_proof(SECRET, CLIENT_ID, 2, NOW_MS, nonce(3)),
        "other sender": make_proof(SECRET, CLIENT_ID ^ 1, 0, NOW_MS, nonce(4)),
        "too old": make_proof(SECRET, CLIENT_ID, 0, NOW_MS - PROOF_AGE_MS_MAX - 1, nonce(5)),
        "from the future": make_proof(
            SECRET, CLIENT_ID, 0, NOW_MS + PROOF_AGE_MS_MAX + 1, nonce(6)
        ),
        "huge time": "crtnpeer.v1.99999999999999999999." + "0" * 32 + "." + "0" * 64,
    }
    for name, proof in cases.items():
        assert checker.check(proof, CLIENT_ID, NOW_MS) is not None, f"{name}: accepted"
    checker.invariants()


def test_the_secondary_secret_is_accepted_while_rotating() -> None:
    checker = ProofChecker((SECRET, NEXT), receiver=0)
    assert (
        checker.check(make_proof(NEXT, CLIENT_ID, 0, NOW_MS, nonce(7)), CLIENT_ID, NOW_MS) is None
    )
    assert (
        checker.check(make_proof(SECRET, CLIENT_ID, 0, NOW_MS, nonce(8)), CLIENT_ID, NOW_MS) is None
    )
    stale = make_proof(b"o" * 32, CLIENT_ID, 0, NOW_MS, nonce(9))
    assert checker.check(stale, CLIENT_ID, NOW_MS) is not None


def test_nonce_memory_is_bounded_and_forgets_only_what_expired() -> None:
    checker = ProofChecker((SECRET,), receiver=0)
    for number in range(NONCES_MAX):
        proof = make_proof(SECRET, CLIENT_ID, 0, NOW_MS, nonce(number))
        assert checker.check(proof, CLIENT_ID, NOW_MS) is None
    extra = make_proof(SECRET, CLIENT_ID, 0, NOW_MS, nonce(NONCES_MAX))
    assert checker.check(extra, CLIENT_ID, NOW_MS) == "too many replica hellos at once; retry"
    later = NOW_MS + PROOF_AGE_MS_MAX + 1  # the first window is over: its nonces are dropped
    fresh = make_proof(SECRET, CLIENT_ID, 0, later, nonce(NONCES_MAX + 1))
    assert checker.check(fresh, CLIENT_ID, later) is None
    checker.invariants()


def test_a_proof_made_before_the_replica_started_is_refused() -> None:
    # A restarted replica has forgotten the nonces it saw: a hello recorded before the
    # restart, still inside the clock window, must not open a replica connection to it.
    proof = make_proof(SECRET, CLIENT_ID, 0, NOW_MS, nonce(11))
    first = ProofChecker((SECRET,), receiver=0, started_ms=NOW_MS - 1_000)
    assert first.check(proof, CLIENT_ID, NOW_MS + 1) is None
    restarted = ProofChecker((SECRET,), receiver=0, started_ms=NOW_MS + 2_000)
    why = restarted.check(proof, CLIENT_ID, NOW_MS + 2_001)
    assert why is not None and "before this replica started" in why, f"replayed: {why}"
    fresh = make_proof(SECRET, CLIENT_ID, 0, NOW_MS + 2_001, nonce(12))
    assert restarted.check(fresh, CLIENT_ID, NOW_MS + 2_001) is None, "a new hello is good"
    restarted.invariants()
