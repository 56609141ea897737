"""Sign-in sessions and short-lived sign-in flow state, in JetStream key-value buckets.

A session is a random token (the cookie's value); the bucket key is its SHA-256, so the
bucket never holds a usable credential. The value records the user, a CSRF token and the
expiry time. The ``platform_sessions`` bucket's TTL is ``PLATFORM_SESSION_TTL_SECS``, so
JetStream forgets a session by itself; the stored expiry is checked as well, so a session
never outlives its TTL by the bucket's expiry granularity. That expiry is wall-clock time
read from the ``Clock`` the sessions are given (any platform instance may read a session
another created), checked afresh at every ``get``: nothing about it is cached.

``platform_flows`` holds what a sign-in flow must remember between its two requests (the
OAuth ``state`` with its PKCE verifier, a WebAuthn challenge), for ``FLOW_TTL_SECS``, and
each is taken at most once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
from typing import Any

import attrs
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from craton.io.clock import SYSTEM_CLOCK, Clock, realtime_s

SESSIONS_BUCKET = "platform_sessions"
FLOWS_BUCKET = "platform_flows"
FLOW_TTL_SECS = 600
TOKEN_BYTES = 32


@attrs.frozen
class Session:
    user_id: str
    csrf: str
    expires_at: float  # seconds since the epoch


def _key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Sessions:
    def __init__(self, js: JetStreamContext, ttl_secs: int, clock: Clock = SYSTEM_CLOCK) -> None:
        self.js = js
        self.ttl_secs = ttl_secs
        self.clock = clock
        self._sessions: KeyValue | None = None
        self._flows: KeyValue | None = None

    async def open(self) -> None:
        self._sessions = await self._bucket(SESSIONS_BUCKET, self.ttl_secs)
        self._flows = await self._bucket(FLOWS_BUCKET, FLOW_TTL_SECS)

    async def _bucket(self, name: str, ttl_secs: int) -> KeyValue:
        try:
            bucket = await self.js.key_value(name)
            status = await bucket.status()
            if int(status.ttl or 0) == ttl_secs:
                return bucket
            await self.js.delete_key_value(name)  # the TTL changed: sessions start over
        except nats.js.errors.BucketNotFoundError:
            pass
        return await self.js.create_key_value(bucket=name, ttl=float(ttl_secs), history=1)

    @property
    def sessions(self) -> KeyValue:
        assert self._sessions is not None, "Sessions.open() first"
        return self._sessions

    @property
    def flows(self) -> KeyValue:
        assert self._flows is not None, "Sessions.open() first"
        return self._flows

    async def create(self, user_id: str) -> tuple[str, Session]:
        token = secrets.token_urlsafe(TOKEN_BYTES)
        expires_at = realtime_s(self.clock) + self.ttl_secs
        session = Session(user_id, secrets.token_urlsafe(TOKEN_BYTES), expires_at)
        await self.sessions.put(_key(token), json.dumps(attrs.asdict(session)).encode())
        return token, session

    async def get(self, token: str) -> Session | None:
        try:
            entry = await self.sessions.get(_key(token))
        except nats.js.errors.KeyNotFoundError:
            return None
        if entry.value is None:
            return None
        session = Session(**json.loads(entry.value))
        if session.expires_at <= realtime_s(self.clock):
            return None
        return session

    async def end(self, token: str) -> None:
        with contextlib.suppress(nats.js.errors.KeyNotFoundError):
            await self.sessions.purge(_key(token))

    async def remember_flow(self, value: dict[str, Any]) -> str:
        """Store ``value`` under a new random key (its ``state``/handle), returned."""
        handle = secrets.token_urlsafe(TOKEN_BYTES)
        await self.flows.create(_key(handle), json.dumps(value).encode())
        return handle

    async def take_flow(self, handle: str) -> dict[str, Any] | None:
        """The flow's value, once: a second take (a replayed ``state``) finds nothing."""
        key = _key(handle)
        try:
            entry = await self.flows.get(key)
        except nats.js.errors.KeyNotFoundError:
            return None
        if entry.value is None or entry.revision is None:
            return None
        try:
            await self.flows.delete(key, last=entry.revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            return None  # someone else took it first
        value: dict[str, Any] = json.loads(entry.value)
        return value
