"""Fleet: a registered cluster's secret sealed at rest, its real nodes' health polled,
tokens minted for members; and a real craton-server in jwt mode accepting them."""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path

import jwt
import pytest

from craton.client import AsyncClient
from craton.client.errors import AccessDenied, CratonError
from craton.core.auth import JWT_LEEWAY_S
from craton.platform import fleet
from craton.platform.domain import Role
from tests.net.support import ServerProcess
from tests.platform.support import SECRET_KEY, NatsServer, Stack, free_port, run, running

JWT_SECRET = "cluster-secret-" + "x" * 32
NOT_IN_THIS_BUILD = "not available in this build"


def _files_containing(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


async def _org_and_cluster(stack: Stack, nodes: list[str]) -> tuple[str, dict[str, object]]:
    owner = await stack.sign_in("olivia")
    status, org = await owner.call("POST", "/api/orgs", {"name": "Acme"})
    assert status == 201, org
    status, cluster = await owner.call(
        "POST",
        f"/api/orgs/{org['id']}/clusters",
        {"name": "prod", "nodes": nodes, "jwt_secret": JWT_SECRET},
    )
    assert status == 201, cluster
    return org["id"], cluster


def test_register_a_cluster_see_node_health_and_mint_tokens(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    down = f"127.0.0.1:{free_port()}"
    with ServerProcess(tmp_path / "node", tmp_path / "node.log") as node:
        node.start()

        async def scenario() -> None:
            async with running(tmp_path, nats_server) as stack:
                org, cluster = await _org_and_cluster(stack, [node.address, down])
                owner = stack.browsers[0]
                for _ in range(100):  # the poller runs every PLATFORM_HEALTH_POLL_SECS (1 s)
                    status, seen = await owner.call(
                        "GET", f"/api/orgs/{org}/clusters/{cluster['id']}"
                    )
                    assert status == 200, seen
                    if all(n["health"] != "unknown" for n in seen["nodes"]):
                        break
                    await asyncio.sleep(0.05)
                health = {n["address"]: (n["health"], n["ready"]) for n in seen["nodes"]}
                assert health == {node.address: ("ok", "ok"), down: ("unreachable", "unreachable")}
                seen_view = {n["address"]: (n["view"], n["lag"]) for n in seen["nodes"]}
                assert seen_view == {node.address: (0, 0), down: (None, None)}, (
                    f"expected the node's view and lag from its /metrics: {seen_view}"
                )
                status, minted = await owner.call(
                    "POST", f"/api/orgs/{org}/clusters/{cluster['id']}/tokens"
                )
                assert status == 201, minted
                claims = jwt.decode(
                    minted["token"],
                    JWT_SECRET,
                    algorithms=["HS256"],
                    issuer="craton",
                    audience="craton",
                )
                _, me = await owner.call("GET", "/api/me")
                assert claims["sub"] == me["user"]["id"] and claims["role"] == "owner"
                assert claims["tenant_id"] == me["orgs"][0]["tenant_id"]
                assert 0 < claims["tenant_id"] < 2**64
                assert claims["exp"] - claims["iat"] == 3600 and claims["nbf"] == claims["iat"]
                _check_sealed(tmp_path, nats_server, stack, cluster["id"])

        run(scenario())


def _check_sealed(tmp_path: Path, nats_server: NatsServer, stack: Stack, cluster: str) -> None:
    needle = JWT_SECRET.encode()
    assert _files_containing(tmp_path, needle) == [], "the secret must never be stored in clear"
    assert _files_containing(nats_server.store_dir, needle) == []
    row = stack.platform.rows("SELECT secret_sealed FROM clusters WHERE id = ?", cluster)[0]
    key = base64.urlsafe_b64decode(SECRET_KEY)
    assert fleet.unseal(key, cluster, row["secret_sealed"]) == JWT_SECRET
    with pytest.raises(fleet.SealError):
        fleet.unseal(key, "another-cluster", row["secret_sealed"])
    with pytest.raises(fleet.SealError):
        fleet.unseal(bytes(32), cluster, row["secret_sealed"])


def test_registering_without_a_secret_key_is_refused_clearly(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    async def scenario() -> None:
        async with running(tmp_path, nats_server, PLATFORM_SECRET_KEY="") as stack:
            owner = await stack.sign_in("olivia")
            _, org = await owner.call("POST", "/api/orgs", {"name": "Acme"})
            status, body = await owner.call(
                "POST",
                f"/api/orgs/{org['id']}/clusters",
                {"name": "p", "nodes": ["127.0.0.1:5432"], "jwt_secret": JWT_SECRET},
            )
            assert status == 503 and body["error"]["code"] == "not_configured", body
            for bad in ({"nodes": "x"}, {"nodes": ["nohost"]}, {"jwt_secret": "short"}):
                status, body = await owner.call(
                    "POST",
                    f"/api/orgs/{org['id']}/clusters",
                    {"name": "p", "nodes": ["127.0.0.1:5432"], "jwt_secret": JWT_SECRET, **bad},
                )
                assert status == 400 and body["error"]["code"] == "invalid", body

    run(scenario())


def _jwt_node(tmp_path: Path, ttl_s: int) -> ServerProcess:
    """A craton-server in jwt mode, or a skip when this build refuses that mode."""
    node = ServerProcess(
        tmp_path / "node",
        tmp_path / "node.log",
        VDB_AUTH_MODE="jwt",
        VDB_JWT_SECRET=JWT_SECRET,
        VDB_JWT_EXPIRATION_SECS=str(ttl_s),
    )
    node.start(wait_ready=False)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert node.process is not None
        code = node.process.poll()
        if code is not None:
            log = node.log_path.read_text(errors="replace")
            if code == 2 and NOT_IN_THIS_BUILD in log and "VDB_AUTH_MODE" in log:
                pytest.skip("craton-server refuses VDB_AUTH_MODE=jwt in this build (config exit 2)")
            raise AssertionError(f"craton-server exited with {code}:\n{log[-2000:]}")
        if any(e["event"] == "server.ready" for e in node.events()):
            node.wait_for("server.ready")
            return node
        time.sleep(0.05)
    raise AssertionError("craton-server in jwt mode did not become ready")


def test_a_minted_token_is_accepted_by_a_real_node_until_removal_and_expiry(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    node = _jwt_node(tmp_path, ttl_s=3600)
    with node:

        async def scenario() -> None:
            async with running(tmp_path, nats_server, PLATFORM_TOKEN_TTL_SECS="2") as stack:
                org, cluster = await _org_and_cluster(stack, [node.address])
                owner = stack.browsers[0]
                await owner.call(
                    "POST", f"/api/orgs/{org}/invitations", {"login": "mia", "role": "member"}
                )
                member = await stack.sign_in("mia")
                await member.call("POST", f"/api/orgs/{org}/invitations/accept")
                path = f"/api/orgs/{org}/clusters/{cluster['id']}/tokens"
                status, minted = await member.call("POST", path)
                assert status == 201 and minted["role"] == Role.MEMBER.label, minted
                async with AsyncClient(node.address, auth_token=minted["token"]) as client:
                    await client.create_stream("orders")
                    await client.append("orders", [b"accepted"])
                _, me = await member.call("GET", "/api/me")
                await owner.call("DELETE", f"/api/orgs/{org}/members/{me['user']['id']}")
                status, body = await member.call("POST", path)
                assert status == 404, f"a removed member gets no new token: {body}"
                await _refused_once_expired(node.address, minted["token"], minted["expires_at"])
                forged = jwt.encode(
                    {
                        "sub": "x",
                        "tenant_id": 1,
                        "role": "owner",
                        "iss": "craton",
                        "aud": "craton",
                        "exp": int(time.time()) + 60,
                    },
                    "wrong-secret" * 4,
                    algorithm="HS256",
                )
                with pytest.raises(AccessDenied):
                    async with AsyncClient(node.address, auth_token=forged) as client:
                        await client.append("orders", [b"x"])

        run(scenario())


async def _refused_once_expired(address: str, token: str, expires_at: int) -> None:
    await asyncio.sleep(max(0.0, expires_at - time.time()) + 0.5)
    # the node accepts a token until its exp plus the leeway: wait that long, and a margin
    deadline = time.monotonic() + JWT_LEEWAY_S + 15
    while time.monotonic() < deadline:
        try:
            async with AsyncClient(address, auth_token=token, retry_deadline_s=2) as client:
                await client.append("orders", [b"late"])
        except AccessDenied:
            return
        except CratonError as error:
            raise AssertionError(f"expected an authentication refusal, got {error!r}") from None
        await asyncio.sleep(0.5)
    raise AssertionError("the expired token was still accepted after the leeway")
