"""Authentication and tenant isolation on real sockets, against real ``craton-server``s.

- every bad credential (none, wrong secret, expired, not yet valid, wrong issuer, wrong
  audience, ``alg: none``, a tampered payload, another algorithm, an unknown API key) gets
  ``AUTHENTICATION_FAILED`` with request id 0 and a closed connection, and is counted;
- tenant A's token cannot read, append to, or learn the existence of tenant B's streams;
  a viewer cannot write;
- API keys: created by an admin (shown once), listed, used, revoked — and a revoked key
  stops working on the connection that holds it and at every handshake, on every node of a
  3-node cluster; the audit stream records it all.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest

from craton.client import (
    AuthenticationFailed,
    Client,
    PermissionDenied,
    Role,
    StreamNotFound,
)
from craton.core.auth import JWT_LEEWAY_S
from craton.core.event_store import AUDIT_STREAM
from craton.core.wire import ErrorCode, ErrorReply, Handshake, HandshakeReply, Sync
from tests.net.cluster_support import LocalCluster
from tests.net.support import RawConnection, ServerProcess, http_get

SECRET = "a jwt secret for the tests, 32 bytes or more"
CONVERGE_BOUND_S = 15.0  # a committed op reaches every backup within this (heartbeats: 50 ms)


def token(
    tenant: int = 1, role: str = "member", secret: str = SECRET, algorithm: str = "HS256",
    **claims: object,
) -> str:  # fmt: skip
    now = int(time.time())
    body: dict[str, object] = {
        "sub": f"user-of-{tenant}",
        "tenant_id": tenant,
        "role": role,
        "iss": "craton",
        "aud": "craton",
        "iat": now,
        "exp": now + 600,
    }
    body.update(claims)
    return jwt.encode(body, secret, algorithm=algorithm)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def alg_none() -> str:
    now = int(time.time())
    claims = {"sub": "x", "tenant_id": 1, "role": "owner", "iss": "craton", "aud": "craton",
              "iat": now, "exp": now + 60}  # fmt: skip
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{_b64(json.dumps(claims).encode())}."


def tampered() -> str:
    header, payload, signature = token(tenant=1).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["tenant_id"] = 2
    return f"{header}.{_b64(json.dumps(claims).encode())}.{signature}"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("auth")
    env = {"VDB_AUTH_MODE": "both", "VDB_JWT_SECRET": SECRET}
    with ServerProcess(folder / "data", folder / "server.log", **env) as server:
        server.start()
        yield server


def handshake(address: str, credential: str | None) -> ErrorReply | HandshakeReply:
    raw = RawConnection(address)
    try:
        raw.send(Handshake(1, 0xC0FFEE, credential), 1)
        request_id, reply = raw.receive()
        if isinstance(reply, ErrorReply):
            assert request_id == 0 and raw.closed_by_peer(), "a refusal closes the connection"
        assert isinstance(reply, ErrorReply | HandshakeReply), reply
        return reply
    finally:
        raw.close()


BAD_CREDENTIALS = {
    "no token": None,
    "wrong secret": token(secret="another secret that is long enough!!"),
    "expired": token(iat=int(time.time()) - 900, exp=int(time.time()) - JWT_LEEWAY_S - 60),
    "not yet valid": token(nbf=int(time.time()) + JWT_LEEWAY_S + 300),
    "wrong issuer": token(iss="not-craton"),
    "wrong audience": token(aud="not-craton"),
    "alg none": alg_none(),
    "tampered payload": tampered(),
    "HS384": token(algorithm="HS384", secret=SECRET * 2),
    "unknown api key": "crtn_00000000000000ff_" + "A" * 43,
}


def test_every_bad_credential_is_refused_and_counted(node: ServerProcess) -> None:
    for name, credential in BAD_CREDENTIALS.items():
        reply = handshake(node.address, credential)
        assert isinstance(reply, ErrorReply), f"{name}: expected a refusal, got {reply}"
        assert reply.code == ErrorCode.AUTHENTICATION_FAILED, f"{name}: {reply}"
        assert credential is None or credential not in reply.message
    expired = Client(node.address, auth_token=BAD_CREDENTIALS["expired"], retry_deadline_s=5)
    try:
        with pytest.raises(AuthenticationFailed):
            expired.connect()  # not retried: a refused credential is final
    finally:
        expired.close()
    metrics = http_get(node.metrics_address, "/metrics")[2].decode()
    total = sum(
        float(line.split()[1])
        for line in metrics.splitlines()
        if line.startswith("vdb_auth_failures_total{")
    )
    assert total == len(BAD_CREDENTIALS) + 1, f"expected every refusal counted:\n{metrics}"
    assert 'vdb_auth_failures_total{reason="algorithm"} 2.0' in metrics
    # Refusals of genuine credentials are audited in their tenant; the rest in tenant 0.
    with Client(node.address, auth_token=token(tenant=1, role="admin")) as tenant_admin:
        genuine = [json.loads(e) for e in tenant_admin.read(AUDIT_STREAM).events]
    with Client(node.address, auth_token=token(tenant=0, role="admin")) as operator:
        unattributed = [json.loads(e) for e in operator.read(AUDIT_STREAM).events]
    assert sorted(r["outcome"] for r in genuine) == [
        "refused: audience", "refused: expired", "refused: expired", "refused: issuer",
        "refused: not_yet_valid",
    ], genuine  # fmt: skip
    assert sorted(r["outcome"] for r in unattributed) == [
        "refused: algorithm", "refused: algorithm", "refused: missing", "refused: signature",
        "refused: signature", "refused: unknown_key",
    ], unattributed  # fmt: skip
    assert all(r["action"] == "authenticate" for r in genuine + unattributed)
    assert all(r["actor"] == "user-of-1" for r in genuine)
    assert all(r["actor"].startswith("connection from 127.0.0.1:") for r in unattributed)
    assert "Traceback" not in node.log_path.read_text()
    assert SECRET not in node.log_path.read_text()


def test_a_good_token_is_accepted(node: ServerProcess) -> None:
    reply = handshake(node.address, token())
    assert isinstance(reply, HandshakeReply), reply


def test_tenants_do_not_see_each_other(node: ServerProcess) -> None:
    with Client(node.address, auth_token=token(tenant=11)) as a:
        a.create_stream("orders")
        a.append("orders", [b"tenant 11's order"])
    with Client(node.address, auth_token=token(tenant=12)) as b:
        with pytest.raises(StreamNotFound) as read:
            b.read("orders")
        with pytest.raises(StreamNotFound) as append:
            b.append("orders", [b"injected"])
        with pytest.raises(StreamNotFound) as as_of:
            b.read_as_of("orders", b.sync() - 1)
        # "not found", worded exactly as for a stream that never existed anywhere
        with pytest.raises(StreamNotFound) as never:
            b.read("no-such-stream-anywhere")
        assert str(read.value) == str(append.value) == str(as_of.value) == str(never.value)
        b.create_stream("orders")  # the name is free in tenant 12: nothing leaks through it
        assert b.read("orders").events == ()
    with Client(node.address, auth_token=token(tenant=11)) as a:
        assert a.read("orders").events == (b"tenant 11's order",)


def test_a_viewer_reads_and_cannot_write(node: ServerProcess) -> None:
    with Client(node.address, auth_token=token(tenant=21)) as member:
        member.create_stream("ledger")
        member.append("ledger", [b"entry"])
    with Client(node.address, auth_token=token(tenant=21, role="viewer")) as viewer:
        assert viewer.read("ledger").events == (b"entry",)
        with pytest.raises(PermissionDenied):
            viewer.append("ledger", [b"forged"])
        with pytest.raises(PermissionDenied):
            viewer.create_stream("another")
        with pytest.raises(PermissionDenied):
            viewer.list_api_keys()


def test_api_keys_are_created_used_and_revoked(node: ServerProcess) -> None:
    with Client(node.address, auth_token=token(tenant=31, role="admin")) as admin:
        with pytest.raises(PermissionDenied):
            admin.create_api_key(Role.OWNER)  # an admin grants up to admin
        made = admin.create_api_key(Role.MEMBER, label="ci pipeline")
        assert made.api_key.startswith("crtn_") and made.key_id
        with Client(node.address, auth_token=made.api_key) as by_key:
            by_key.create_stream("builds")
            by_key.append("builds", [b"build 1"])
            listed = {info.key_id: info for info in admin.list_api_keys()}
            assert listed[made.key_id].role is Role.MEMBER
            assert listed[made.key_id].revoked_op is None
            assert listed[made.key_id].label == "ci pipeline"
            admin.revoke_api_key(made.key_id)
            with pytest.raises(AuthenticationFailed):  # the open connection stops working
                by_key.append("builds", [b"build 2"])
        reply = handshake(node.address, made.api_key)  # and so does every new one
        assert isinstance(reply, ErrorReply) and reply.code == ErrorCode.AUTHENTICATION_FAILED
        assert admin.read("builds").events == (b"build 1",)
        assert {i.key_id: i for i in admin.list_api_keys()}[made.key_id].revoked_op is not None
        records = [json.loads(event) for event in admin.read(AUDIT_STREAM).events]
    actions = [(record["action"], record["outcome"].split(":")[0]) for record in records]
    assert ("create_api_key", "denied") in actions and ("create_api_key", "ok") in actions
    assert ("revoke_api_key", "ok") in actions and ("append", "refused") in actions
    assert ("authenticate", "refused") in actions  # the handshake with the revoked key
    assert all(record["time_ms"] > 0 and record["actor"] for record in records), records
    member = Client(node.address, auth_token=token(tenant=31, role="member"))
    with member, pytest.raises(PermissionDenied):
        member.read(AUDIT_STREAM)


def test_a_revoked_key_fails_on_every_node_of_a_cluster(tmp_path: Path) -> None:
    with LocalCluster(tmp_path / "cluster", VDB_AUTH_MODE="both", VDB_JWT_SECRET=SECRET) as cluster:
        cluster.start()
        cluster.wait_primary()
        admin_token = token(tenant=41, role="admin")
        with Client(cluster.addresses, auth_token=admin_token, retry_deadline_s=15) as admin:
            made = admin.create_api_key(Role.MEMBER)
            for address in cluster.addresses:
                reply = _until(address, made.api_key, accepted=True)
                assert isinstance(reply, HandshakeReply), f"{address}: {reply}"
            with Client(cluster.addresses, auth_token=made.api_key, retry_deadline_s=15) as k:
                k.create_stream("metrics")
            admin.revoke_api_key(made.key_id)
        for address in cluster.addresses:
            reply = _until(address, made.api_key, accepted=False)
            assert isinstance(reply, ErrorReply), f"{address} still accepts the revoked key"
            assert reply.code == ErrorCode.AUTHENTICATION_FAILED and "revoked" in reply.message
        assert cluster.stop_all()


def _until(address: str, credential: str, *, accepted: bool) -> ErrorReply | HandshakeReply:
    """Handshake until the node accepts (or refuses) ``credential``, within the bound."""
    deadline = time.monotonic() + CONVERGE_BOUND_S
    while True:
        reply = handshake(address, credential)
        if isinstance(reply, HandshakeReply) == accepted or time.monotonic() > deadline:
            return reply
        time.sleep(0.05)


def test_a_token_that_expires_ends_its_open_connection(node: ServerProcess) -> None:
    # Good for about 5 s more (exp is just inside the leeway): the handshake succeeds, then
    # a request made after exp + leeway must be refused like an expired token at the
    # handshake, not served on the strength of a token that is no longer valid.
    now = time.time()
    valid_s = 5.0  # room for a busy machine to answer the handshake in time
    exp = int(now - JWT_LEEWAY_S + valid_s)
    credential = token(tenant=41, role="member", iat=exp - 60, exp=exp)
    raw = RawConnection(node.address)
    try:
        raw.send(Handshake(1, 0xE0E0, credential), 1)
        _, reply = raw.receive()
        assert isinstance(reply, HandshakeReply), f"expected the handshake accepted: {reply}"
        time.sleep(max(0.0, exp + JWT_LEEWAY_S + 1.5 - time.time()))
        raw.send(Sync(), 2)
        request_id, refused = raw.receive()
        assert isinstance(refused, ErrorReply), f"expected a refusal, got {refused}"
        assert refused.code == ErrorCode.AUTHENTICATION_FAILED, refused
        assert request_id == 0 and raw.closed_by_peer(), "the expiry closes the connection"
    finally:
        raw.close()
    metrics = http_get(node.metrics_address, "/metrics")[2].decode()
    assert 'vdb_auth_failures_total{reason="expired"}' in metrics, metrics
