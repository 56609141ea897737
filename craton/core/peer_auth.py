"""Replica membership proofs: a replica shows it knows the cluster secret. Pure.

A replica that opens a connection to another puts a *proof* in its hello's ``auth_token``:

    crtnpeer.v1.<time_ms>.<nonce: 32 hex>.<HMAC-SHA256: 64 hex>

The HMAC (key: ``VDB_CLUSTER_SECRET``) covers a fixed label, the hello's client id (which
names the sender and the cluster size), the *receiver's* replica id, the time and the
nonce. So a proof is good for one sender, one receiver and one moment: the receiver
accepts it only within ``PROOF_AGE_MS_MAX`` of its own clock (given by the driver, never
read here) and only once (``ProofChecker`` remembers the nonces of that window). Someone
who can reach the port but does not know the secret cannot make one; someone who recorded
one cannot use it again, nor against another replica. The comparison is constant-time.
A restarted replica has forgotten the nonces it saw, so its checker refuses proofs dated
before it started (``started_ms``, the driver's time then): a hello recorded before a
restart cannot open a connection after it (unless the sender's clock ran ahead of the
receiver's by more than the time between the recording and the restart).

Rules: the checker's memory is bounded (``NONCES_MAX``); when it is full of fresh nonces a
proof is refused (the sender retries) rather than a nonce forgotten early.
"""

from __future__ import annotations

import hashlib
import hmac
import re

PROOF_PREFIX = "crtnpeer.v1"
PROOF_AGE_MS_MAX = 30_000  # clock difference between replicas a proof tolerates
NONCE_SIZE = 16  # bytes
NONCES_MAX = 4096  # proofs remembered at once (hellos within one window)
_LABEL = b"craton replica hello v1\x00"
_PROOF = re.compile(r"crtnpeer\.v1\.([0-9]{1,20})\.([0-9a-f]{32})\.([0-9a-f]{64})")


def make_proof(secret: bytes, client_id: int, receiver: int, time_ms: int, nonce: bytes) -> str:
    """The proof a hello with ``client_id`` to replica ``receiver`` carries."""
    assert len(nonce) == NONCE_SIZE and time_ms >= 0
    mac = _mac(secret, client_id, receiver, time_ms, nonce)
    return f"{PROOF_PREFIX}.{time_ms}.{nonce.hex()}.{mac.hex()}"


class ProofChecker:
    """Checks proofs sent to replica ``receiver``; remembers the nonces it accepted. A proof
    made with any of ``secrets`` is good (more than one only while the secret rotates)."""

    def __init__(self, secrets: tuple[bytes, ...], receiver: int, started_ms: int = 0) -> None:
        assert 1 <= len(secrets) <= 2
        self._secrets = secrets
        self._receiver = receiver
        # the nonces seen before this checker existed are gone: older proofs are refused
        self._started_ms = started_ms
        self._seen: dict[bytes, int] = {}  # nonce -> time_ms of its proof, oldest first

    def check(self, proof: str | None, client_id: int, now_ms: int) -> str | None:
        """None if ``proof`` is good for a hello with ``client_id`` now; else why not."""
        match = None if proof is None else _PROOF.fullmatch(proof)
        if match is None:
            return "the hello carries no proof of the cluster secret"
        time_ms, nonce = int(match.group(1)), bytes.fromhex(match.group(2))
        if time_ms >= 2**64:
            return "the hello's proof is malformed"
        given = bytes.fromhex(match.group(3))
        matches = [
            hmac.compare_digest(_mac(secret, client_id, self._receiver, time_ms, nonce), given)
            for secret in self._secrets
        ]
        if not any(matches):
            return "the hello's proof does not match this cluster's secret"
        if abs(now_ms - time_ms) > PROOF_AGE_MS_MAX:
            return "the hello's proof is too old or from the future (check the clocks)"
        if time_ms < self._started_ms:
            return "the hello's proof was made before this replica started; retry"
        self._forget_before(now_ms - PROOF_AGE_MS_MAX)
        if nonce in self._seen:
            return "the hello's proof was used before"
        if len(self._seen) >= NONCES_MAX:
            return "too many replica hellos at once; retry"
        self._seen[nonce] = time_ms
        return None

    def _forget_before(self, cutoff_ms: int) -> None:
        stale = [nonce for nonce, time_ms in self._seen.items() if time_ms < cutoff_ms]
        for nonce in stale:
            del self._seen[nonce]

    def invariants(self) -> None:
        assert len(self._seen) <= NONCES_MAX


def _mac(secret: bytes, client_id: int, receiver: int, time_ms: int, nonce: bytes) -> bytes:
    message = (
        _LABEL
        + client_id.to_bytes(16, "little")
        + receiver.to_bytes(1, "little")
        + time_ms.to_bytes(8, "little")
        + nonce
    )
    return hmac.new(secret, message, hashlib.sha256).digest()
