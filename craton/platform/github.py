"""GitHub OAuth sign-in: the authorization-code flow with ``state`` and PKCE (S256).

``authorize_url`` builds the redirect to GitHub; ``exchange`` trades the code (with the
PKCE verifier) for an access token at the token endpoint and reads the user from the API.
Endpoints come from the configuration, so tests and a local set-up use the stand-in in
``craton.platform.github_standin``. Every failure becomes ``OAuthFailed`` with a short
reason; GitHub's own error text is never passed on to the browser.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
from urllib.parse import urlencode

import aiohttp
import attrs

from craton.platform.config import GithubOAuth

VERIFIER_BYTES = 48
EXCHANGE_TIMEOUT_S = 10.0
SCOPE = "read:user"


class OAuthFailed(Exception):
    """The sign-in could not be completed; ``str()`` is safe to show."""


@attrs.frozen
class GithubUser:
    id: int
    login: str
    name: str


def new_verifier() -> str:
    return secrets.token_urlsafe(VERIFIER_BYTES)


def challenge_of(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def authorize_url(settings: GithubOAuth, redirect_uri: str, state: str, verifier: str) -> str:
    query = {
        "client_id": settings.client_id,
        "redirect_uri": redirect_uri,
        "scope": SCOPE,
        "state": state,
        "code_challenge": challenge_of(verifier),
        "code_challenge_method": "S256",
        "allow_signup": "false",
    }
    return f"{settings.authorize_url}?{urlencode(query)}"


async def exchange(
    http: aiohttp.ClientSession,
    settings: GithubOAuth,
    *,
    code: str,
    redirect_uri: str,
    verifier: str,
) -> GithubUser:
    form = {
        "client_id": settings.client_id,
        "client_secret": settings.client_secret,
        "code": code,
        "redirect_uri": redirect_uri,
        "code_verifier": verifier,
    }
    try:
        async with asyncio.timeout(EXCHANGE_TIMEOUT_S):
            async with http.post(
                settings.token_url, data=form, headers={"Accept": "application/json"}
            ) as response:
                token_body = await response.json(content_type=None)
            token = token_body.get("access_token") if isinstance(token_body, dict) else None
            if not isinstance(token, str) or not token:
                raise OAuthFailed("GitHub did not grant an access token")
            headers = {
                "Authorization": f"Bearer {token}",
                "Accept": "application/vnd.github+json",
            }
            async with http.get(f"{settings.api_url}/user", headers=headers) as response:
                if response.status != 200:
                    raise OAuthFailed(f"GitHub's user API answered {response.status}")
                user = await response.json(content_type=None)
    except (TimeoutError, aiohttp.ClientError, ValueError) as error:
        raise OAuthFailed(f"GitHub could not be reached ({type(error).__name__})") from None
    return _user(user)


def _user(body: object) -> GithubUser:
    if not isinstance(body, dict):
        raise OAuthFailed("GitHub's user API answered something unexpected")
    user_id, login, name = body.get("id"), body.get("login"), body.get("name")
    if not isinstance(user_id, int) or user_id <= 0 or not isinstance(login, str) or not login:
        raise OAuthFailed("GitHub's user API did not name the user")
    return GithubUser(user_id, login, name if isinstance(name, str) else login)
