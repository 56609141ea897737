"""Fleet: clusters' secrets at rest, their nodes' observed health, and minted tokens.

- A cluster's JWT secret is sealed with AES-256-GCM under ``PLATFORM_SECRET_KEY`` before it
  enters an event (a fresh 12-byte nonce each time; the cluster id is the associated data,
  so a sealed secret moved to another cluster does not open). Events, the audit log and
  the read models only ever hold the sealed form.
- ``poll_node`` asks a node's real ``/health`` and ``/ready`` (craton-server answers HTTP
  on its main port), reads its VSR view and replication lag from its ``/metrics``
  (``vdb_replication_view_number``, ``vdb_replication_lag_records``; None when not
  there), and reports what it saw; it never raises.
- ``mint_token`` makes the HS256 token craton-server accepts in ``jwt`` mode: ``iss`` and
  ``aud`` as the cluster was registered with (default ``craton``), ``sub`` the user id,
  ``tenant_id`` the organisation's tenant (an unsigned 64-bit integer), ``role`` the
  member's organisation role, ``iat``/``nbf`` now and ``exp`` now + the token TTL.
"""

from __future__ import annotations

import asyncio
import base64
import os

import aiohttp
import attrs
import jwt
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from craton.platform.domain import Role

NONCE_BYTES = 12
POLL_TIMEOUT_S = 2.0
JWT_SECRET_BYTES_MIN = 32  # craton-server refuses shorter secrets
JWT_SECRET_BYTES_MAX = 1024
UNREACHABLE = "unreachable"
VIEW_METRIC = "vdb_replication_view_number"
LAG_METRIC = "vdb_replication_lag_records"
METRICS_BYTES_MAX = 1024 * 1024


class SealError(Exception):
    """A sealed secret does not open with this key (wrong key, or tampered)."""


def seal(key: bytes, cluster_id: str, secret: str) -> str:
    nonce = os.urandom(NONCE_BYTES)
    sealed = AESGCM(key).encrypt(nonce, secret.encode(), cluster_id.encode())
    return base64.urlsafe_b64encode(nonce + sealed).decode()


def unseal(key: bytes, cluster_id: str, sealed: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(sealed)
        plain = AESGCM(key).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], cluster_id.encode())
    except (InvalidTag, ValueError) as error:
        raise SealError("the cluster's secret does not open with PLATFORM_SECRET_KEY") from error
    return plain.decode()


def mint_token(
    *,
    secret: str,
    issuer: str,
    audience: str,
    subject: str,
    tenant_id: int,
    role: Role,
    now_s: int,
    ttl_s: int,
) -> str:
    claims = {
        "iss": issuer,
        "aud": audience,
        "sub": subject,
        "tenant_id": tenant_id,
        "role": role.label,
        "iat": now_s,
        "nbf": now_s,
        "exp": now_s + ttl_s,
    }
    return jwt.encode(claims, secret, algorithm="HS256")


@attrs.frozen
class NodeHealth:
    address: str
    health: str  # ok | degraded | unhealthy | unreachable
    ready: str
    detail: str
    view: int | None = None
    lag: int | None = None  # ops


async def poll_node(session: aiohttp.ClientSession, address: str) -> NodeHealth:
    statuses: list[str] = []
    detail = ""
    for path in ("/health", "/ready"):
        try:
            async with asyncio.timeout(POLL_TIMEOUT_S):
                async with session.get(f"http://{address}{path}") as response:
                    body = await response.json(content_type=None)
            status = body.get("status") if isinstance(body, dict) else None
            statuses.append(status if isinstance(status, str) else "unhealthy")
            if path == "/ready" and isinstance(body, dict):
                detail = _failing_checks(body)
        except (TimeoutError, aiohttp.ClientError, ValueError, OSError) as error:
            statuses.append(UNREACHABLE)
            detail = f"{path}: {type(error).__name__}"
    if UNREACHABLE in statuses:
        return NodeHealth(address, statuses[0], statuses[1], detail)
    view, lag = await _view_and_lag(session, address)
    return NodeHealth(address, statuses[0], statuses[1], detail, view, lag)


async def _view_and_lag(
    session: aiohttp.ClientSession, address: str
) -> tuple[int | None, int | None]:
    try:
        async with asyncio.timeout(POLL_TIMEOUT_S):
            async with session.get(f"http://{address}/metrics") as response:
                if response.status != 200:
                    return None, None
                text = (await response.content.read(METRICS_BYTES_MAX)).decode("utf-8", "replace")
    except (TimeoutError, aiohttp.ClientError, OSError):
        return None, None
    samples = metric_samples(text, (VIEW_METRIC, LAG_METRIC))
    return samples.get(VIEW_METRIC), samples.get(LAG_METRIC)


def metric_samples(text: str, names: tuple[str, ...]) -> dict[str, int]:
    """The value of each unlabelled gauge in ``names`` found in Prometheus text."""
    found: dict[str, int] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in names:
            try:
                found[name] = int(float(value.split()[0]))
            except (ValueError, IndexError, OverflowError):
                continue
    return found


def _failing_checks(body: dict[str, object]) -> str:
    checks = body.get("checks")
    if not isinstance(checks, dict):
        return ""
    failing = [
        name
        for name, check in sorted(checks.items())
        if isinstance(check, dict) and check.get("status") != "ok"
    ]
    return ",".join(failing)
