#!/usr/bin/env python3
"""The cost of authentication and authorization, in process (no sockets, no disk).

Prints: the time ``craton.core.auth.authenticate`` takes for a JWT and for an API key (a
node pays it once per connection, at the handshake), and the time the event store takes to
apply a 128-byte append made without a key (mode none, or a JWT) and with an API key (one
more table lookup per request). ``scripts/bench --auth none,jwt,apikey`` measures the same
through a real node and its disk.

Usage: .venv/bin/python scripts/bench_auth.py [--rounds N]
"""

from __future__ import annotations

import argparse
import time
import timeit
from collections.abc import Callable

import jwt

from craton.core.auth import AuthMode, JwtPolicy, Role, authenticate, format_api_key, hash_api_key
from craton.core.event_store import CreateKey, EventStore, StoreRequest, encode_request
from craton.core.wire.messages import (
    AppendEvents,
    CreateStream,
    DataClass,
    Placement,
    PlacementKind,
)

SECRET = b"the benchmark's JWT secret, 32 bytes or more"
KEY_ID = 5


def per_call_us(call: Callable[[], object], rounds: int) -> float:
    return min(timeit.repeat(call, number=rounds, repeat=3)) / rounds * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20_000)
    rounds = parser.parse_args().rounds
    now_s = int(time.time())
    policy = JwtPolicy(SECRET, "craton", "craton", 3600)
    claims = {"sub": "bench", "tenant_id": 1, "role": "member", "iss": "craton",
              "aud": "craton", "iat": now_s, "exp": now_s + 600}  # fmt: skip
    token = jwt.encode(claims, SECRET, algorithm="HS256")
    store = EventStore()
    key = format_api_key(KEY_ID, bytes(range(32)))
    create_key = CreateKey(KEY_ID, hash_api_key(key), Role.MEMBER, None, "bench")
    store.apply(0, encode_request(StoreRequest(1, create_key, Role.ADMIN)))
    global_ = Placement(PlacementKind.GLOBAL, "")
    store.apply(1, encode_request(StoreRequest(1, CreateStream("s", DataClass.PUBLIC, global_))))

    now_ms = now_s * 1000
    jwt_us = per_call_us(lambda: authenticate(AuthMode.JWT, token, now_ms, policy, store), rounds)
    key_us = per_call_us(lambda: authenticate(AuthMode.APIKEY, key, now_ms, policy, store), rounds)
    print(f"authenticate at the handshake: JWT {jwt_us:.1f} us, API key {key_us:.1f} us")

    op = [1]

    def appending(role: Role, key_id: int) -> Callable[[], None]:
        append = AppendEvents("s", (b"e" * 128,), None)
        body = encode_request(StoreRequest(1, append, role, key_id, "bench", now_ms))

        def apply() -> None:
            op[0] += 1
            store.apply(op[0], body)

        return apply

    plain_us = per_call_us(appending(Role.OWNER, 0), rounds)
    keyed_us = per_call_us(appending(Role.MEMBER, KEY_ID), rounds)
    print(f"apply one append: without a key {plain_us:.1f} us, with an API key {keyed_us:.1f} us")


if __name__ == "__main__":
    main()
