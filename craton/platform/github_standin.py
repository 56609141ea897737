"""A local stand-in for GitHub's OAuth endpoints, for tests and a local set-up.

It behaves as GitHub does for the authorization-code flow with PKCE, and checks what
GitHub checks: a known ``client_id``; ``code_challenge_method=S256``; a code used once,
within ``CODE_TTL_S``, by the same client with the same ``redirect_uri``; the client
secret; the verifier hashing to the challenge. It never asks for consent: ``/authorize``
signs in as the user named by its ``login`` query parameter (default: the first user) and
redirects straight back. Errors are GitHub's: the token endpoint answers 200 with
``{"error": "bad_verification_code"}`` and the like; ``/user`` answers 401 to a bad token.

Run it by hand: ``python -m craton.platform.github_standin --port 9999``; it prints the
``PLATFORM_OAUTH_GITHUB_*`` settings that point platform-app at it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import secrets
import zlib
from urllib.parse import urlencode

import attrs
from aiohttp import web

from craton.io.clock import SYSTEM_CLOCK, Clock, monotonic_s

CODE_TTL_S = 600.0
CLIENT_ID_DEFAULT = "standin-client"
CLIENT_SECRET_DEFAULT = "standin-secret"


@attrs.frozen
class _Grant:
    login: str
    client_id: str
    redirect_uri: str
    challenge: str
    issued_s: float


class GithubStandIn:
    def __init__(
        self,
        client_id: str,
        client_secret: str,
        logins: tuple[str, ...],
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.clock = clock  # measures a code's ``CODE_TTL_S``
        self.client_id = client_id
        self.client_secret = client_secret
        self.logins = logins
        self.codes: dict[str, _Grant] = {}
        self.tokens: dict[str, str] = {}
        self.exchanges = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/login/oauth/authorize", self.authorize)
        app.router.add_post("/login/oauth/access_token", self.access_token)
        app.router.add_get("/user", self.user)
        return app

    @staticmethod
    def user_id(login: str) -> int:
        return zlib.crc32(login.lower().encode()) + 1

    async def authorize(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        if q.get("client_id") != self.client_id:
            return web.Response(status=404, text="unknown client")
        if q.get("code_challenge_method") != "S256" or not q.get("code_challenge"):
            return web.Response(status=400, text="PKCE with S256 is required")
        redirect_uri, state = q.get("redirect_uri", ""), q.get("state", "")
        if not redirect_uri.startswith(("http://", "https://")) or not state:
            return web.Response(status=400, text="redirect_uri and state are required")
        login = q.get("login") or self.logins[0]
        code = secrets.token_hex(10)
        self.codes[code] = _Grant(
            login, self.client_id, redirect_uri, q["code_challenge"], monotonic_s(self.clock)
        )
        separator = "&" if "?" in redirect_uri else "?"
        raise web.HTTPFound(f"{redirect_uri}{separator}{urlencode({'code': code, 'state': state})}")

    async def access_token(self, request: web.Request) -> web.Response:
        form = await request.post()
        self.exchanges += 1
        grant = self.codes.pop(str(form.get("code", "")), None)
        if form.get("client_id") != self.client_id or form.get("client_secret") != (
            self.client_secret
        ):
            return web.json_response({"error": "incorrect_client_credentials"})
        if grant is None or monotonic_s(self.clock) - grant.issued_s > CODE_TTL_S:
            return web.json_response({"error": "bad_verification_code"})
        if form.get("redirect_uri") != grant.redirect_uri:
            return web.json_response({"error": "redirect_uri_mismatch"})
        verifier = str(form.get("code_verifier", ""))
        digest = hashlib.sha256(verifier.encode()).digest()
        if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != grant.challenge:
            return web.json_response({"error": "bad_verification_code"})
        token = "gho_" + secrets.token_hex(16)
        self.tokens[token] = grant.login
        return web.json_response(
            {"access_token": token, "token_type": "bearer", "scope": "read:user"}
        )

    async def user(self, request: web.Request) -> web.Response:
        header = request.headers.get("Authorization", "")
        login = self.tokens.get(header.removeprefix("Bearer ").removeprefix("token "))
        if login is None:
            return web.json_response({"message": "Bad credentials"}, status=401)
        return web.json_response(
            {"id": self.user_id(login), "login": login, "name": login.capitalize()}
        )


async def _serve(host: str, port: int, stand_in: GithubStandIn) -> None:
    runner = web.AppRunner(stand_in.app())
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    base = f"http://{host}:{port}"
    print(f"PLATFORM_OAUTH_GITHUB_CLIENT_ID={stand_in.client_id}")
    print(f"PLATFORM_OAUTH_GITHUB_CLIENT_SECRET={stand_in.client_secret}")
    print(f"PLATFORM_OAUTH_GITHUB_AUTHORIZE_URL={base}/login/oauth/authorize")
    print(f"PLATFORM_OAUTH_GITHUB_TOKEN_URL={base}/login/oauth/access_token")
    print(f"PLATFORM_OAUTH_GITHUB_API_URL={base}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description="A local stand-in for GitHub's OAuth")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9999)
    parser.add_argument("--logins", default="octocat,hubot", help="comma-separated users")
    args = parser.parse_args()
    logins = tuple(part.strip() for part in args.logins.split(",") if part.strip())
    stand_in = GithubStandIn(CLIENT_ID_DEFAULT, CLIENT_SECRET_DEFAULT, logins or ("octocat",))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.host, args.port, stand_in))


if __name__ == "__main__":
    main()
