"""Passkeys (WebAuthn): registration for a signed-in user, and sign-in with a passkey.

Each ceremony has two requests. ``begin`` makes the options (a fresh challenge; the
relying party from ``PLATFORM_WEBAUTHN_RP_ID``) and remembers the challenge as a one-time
flow (``Sessions.remember_flow``); ``finish`` takes that flow once and has the ``webauthn``
package verify the browser's answer against it: the challenge, the origin
``PLATFORM_WEBAUTHN_RP_ORIGIN``, the relying party's hash, user presence and the signature.
A registered passkey is a ``PasskeyAdded`` event on the user; a sign-in records the new
signature counter (``PasskeyUsed``), and a counter that goes back is refused as a cloned
authenticator. Sign-in routes are rate-limited per client address like GitHub's.

Routes (JSON bodies; see docs/PLATFORM.md):
    POST /auth/passkey/register/begin    signed in + CSRF -> {"handle", "options"}
    POST /auth/passkey/register/finish   {"handle", "credential"} -> 201 {"credential_id"}
    POST /auth/passkey/login/begin       -> {"handle", "options"}
    POST /auth/passkey/login/finish      {"handle", "credential"} -> session cookie
"""

from __future__ import annotations

import base64
import json
from typing import Any

import webauthn
from aiohttp import web
from webauthn.helpers.structs import (
    AuthenticatorSelectionCriteria,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from craton.platform import domain as d
from craton.platform import http as h
from craton.platform.config import WebAuthnSettings

RP_NAME = "Craton"
CREDENTIAL_ID_CHARS_MAX = 1400  # urlsafe base64 of WebAuthn's 1023-byte maximum


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _settings(request: web.Request) -> WebAuthnSettings:
    settings = request.app[h.PLATFORM].config.webauthn
    if settings is None:
        raise h.ApiError(404, "not_configured", "passkeys are not configured")
    return settings


async def _flow(request: web.Request, kind: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the request body, its flow) — the flow taken once, of the expected kind."""
    body = await h.json_body(request)
    handle = h.text_field(body, "handle")
    if not isinstance(body.get("credential"), dict):
        raise h.ApiError(400, "invalid", "'credential' must be the browser's JSON credential")
    flow = await request.app[h.PLATFORM].sessions.take_flow(handle)
    if flow is None or flow.get("kind") != kind:
        raise h.ApiError(400, "passkey_challenge", "unknown, used or expired challenge")
    return body, flow


async def register_begin(request: web.Request) -> web.Response:
    settings = _settings(request)
    session = h.session_of(request)
    platform = request.app[h.PLATFORM]
    user = platform.rows("SELECT login, name FROM users WHERE id = ?", session.user_id)
    if not user:
        raise h.ApiError(401, "unauthenticated", "sign in first")
    existing = platform.rows(
        "SELECT credential_id FROM passkeys WHERE user_id = ?", session.user_id
    )
    options = webauthn.generate_registration_options(
        rp_id=settings.rp_id,
        rp_name=RP_NAME,
        user_name=user[0]["login"],
        user_id=session.user_id.encode(),
        user_display_name=user[0]["name"],
        authenticator_selection=AuthenticatorSelectionCriteria(
            resident_key=ResidentKeyRequirement.PREFERRED,
            user_verification=UserVerificationRequirement.PREFERRED,
        ),
        exclude_credentials=[
            PublicKeyCredentialDescriptor(id=_unb64(row["credential_id"])) for row in existing
        ],
    )
    handle = await platform.sessions.remember_flow(
        {"kind": "register", "user_id": session.user_id, "challenge": _b64(options.challenge)}
    )
    return web.json_response(
        {"handle": handle, "options": json.loads(webauthn.options_to_json(options))}
    )


async def register_finish(request: web.Request) -> web.Response:
    settings = _settings(request)
    session = h.session_of(request)
    body, flow = await _flow(request, "register")
    if flow["user_id"] != session.user_id:
        raise h.ApiError(400, "passkey_challenge", "this challenge belongs to another session")
    try:
        verified = webauthn.verify_registration_response(
            credential=body["credential"],
            expected_challenge=_unb64(flow["challenge"]),
            expected_rp_id=settings.rp_id,
            expected_origin=settings.rp_origin,
        )
    except Exception as error:  # bytes from the browser: any parse failure is a refusal
        raise h.ApiError(400, "passkey_invalid", f"the passkey was not accepted: {error}") from None
    credential_id = _b64(verified.credential_id)
    command = d.AddPasskey(credential_id, _b64(verified.credential_public_key), verified.sign_count)
    platform = request.app[h.PLATFORM]
    await platform.execute(
        platform.users,
        "user",
        session.user_id,
        session.user_id,
        lambda state: d.decide_user(state, command),
    )
    return web.json_response({"credential_id": credential_id}, status=201)


async def login_begin(request: web.Request) -> web.Response:
    settings = _settings(request)
    h.limited(request, "passkey")
    options = webauthn.generate_authentication_options(
        rp_id=settings.rp_id, user_verification=UserVerificationRequirement.PREFERRED
    )
    handle = await request.app[h.PLATFORM].sessions.remember_flow(
        {"kind": "login", "challenge": _b64(options.challenge)}
    )
    return web.json_response(
        {"handle": handle, "options": json.loads(webauthn.options_to_json(options))}
    )


async def login_finish(request: web.Request) -> web.Response:
    settings = _settings(request)
    h.limited(request, "passkey")
    platform = request.app[h.PLATFORM]
    body, flow = await _flow(request, "login")
    credential_id = body["credential"].get("id")
    if not isinstance(credential_id, str) or len(credential_id) > CREDENTIAL_ID_CHARS_MAX:
        raise h.ApiError(400, "invalid", "the credential has no id")
    rows = platform.rows(
        "SELECT user_id, public_key, sign_count FROM passkeys WHERE credential_id = ?",
        credential_id.rstrip("="),
    )
    if not rows:
        platform.metrics.signins.labels("passkey", "failed").inc()
        raise h.ApiError(401, "passkey_unknown", "this passkey is not registered")
    key = rows[0]
    try:
        verified = webauthn.verify_authentication_response(
            credential=body["credential"],
            expected_challenge=_unb64(flow["challenge"]),
            expected_rp_id=settings.rp_id,
            expected_origin=settings.rp_origin,
            credential_public_key=_unb64(key["public_key"]),
            credential_current_sign_count=int(key["sign_count"]),
        )
    except Exception as error:  # bytes from the browser: any parse failure is a refusal
        platform.metrics.signins.labels("passkey", "failed").inc()
        raise h.ApiError(401, "passkey_invalid", f"the passkey was not accepted: {error}") from None
    command = d.UsePasskey(credential_id.rstrip("="), verified.new_sign_count)
    await platform.execute(
        platform.users,
        "user",
        key["user_id"],
        key["user_id"],
        lambda state: d.decide_user(state, command),
    )
    platform.metrics.signins.labels("passkey", "ok").inc()
    response = web.json_response({"user_id": key["user_id"]})
    await h.start_session(request, response, key["user_id"])
    return response


def add_routes(app: web.Application) -> None:
    app.router.add_post("/auth/passkey/register/begin", register_begin)
    app.router.add_post("/auth/passkey/register/finish", register_finish)
    app.router.add_post("/auth/passkey/login/begin", login_begin)
    app.router.add_post("/auth/passkey/login/finish", login_finish)
