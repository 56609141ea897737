"""Passkeys end to end with a software authenticator: register, sign in, and the refusals
(wrong origin, replayed challenge, forged signature, counter going back)."""

from __future__ import annotations

from pathlib import Path

from tests.platform.authenticator import SoftAuthenticator
from tests.platform.support import Browser, NatsServer, Stack, run, running

RP_ID = "localhost"
ORIGIN = "https://localhost:8443"
PASSKEY_ENV = {"PLATFORM_WEBAUTHN_RP_ID": RP_ID, "PLATFORM_WEBAUTHN_RP_ORIGIN": ORIGIN}


async def _register(stack: Stack, authenticator: SoftAuthenticator) -> Browser:
    browser = await stack.sign_in("octocat")
    status, begun = await browser.call("POST", "/auth/passkey/register/begin")
    assert status == 200, begun
    assert begun["options"]["rp"]["id"] == RP_ID
    credential = authenticator.create(begun["options"])
    status, done = await browser.call(
        "POST",
        "/auth/passkey/register/finish",
        {"handle": begun["handle"], "credential": credential},
    )
    assert status == 201, f"expected the passkey registered: {done}"
    return browser


async def _login(
    stack: Stack, authenticator: SoftAuthenticator, **kwargs: object
) -> tuple[Browser, int, dict[str, object]]:
    browser = stack.browser()
    status, begun = await browser.call("POST", "/auth/passkey/login/begin")
    assert status == 200, begun
    assertion = authenticator.get(begun["options"], RP_ID, **kwargs)  # type: ignore[arg-type]
    status, body = await browser.call(
        "POST", "/auth/passkey/login/finish", {"handle": begun["handle"], "credential": assertion}
    )
    return browser, status, body


def test_register_a_passkey_and_sign_in_with_it(tmp_path: Path, nats_server: NatsServer) -> None:
    async def scenario() -> None:
        async with running(tmp_path, nats_server, **PASSKEY_ENV) as stack:
            authenticator = SoftAuthenticator(ORIGIN)
            first = await _register(stack, authenticator)
            _, me = await first.call("GET", "/api/me")
            browser, status, body = await _login(stack, authenticator)
            assert status == 200 and body["user_id"] == me["user"]["id"], body
            status, again = await browser.call("GET", "/api/me")
            assert status == 200 and again["user"]["login"] == "octocat", again
            browser, status, body = await _login(stack, authenticator)
            assert status == 200, f"a second sign-in with a grown counter works: {body}"

    run(scenario())


def test_passkey_refusals(tmp_path: Path, nats_server: NatsServer) -> None:
    async def scenario() -> None:
        async with running(tmp_path, nats_server, **PASSKEY_ENV) as stack:
            authenticator = SoftAuthenticator(ORIGIN)
            await _register(stack, authenticator)
            _, status, body = await _login(stack, authenticator, origin="https://evil.test")
            assert status == 401 and body["error"]["code"] == "passkey_invalid", body
            _, status, body = await _login(stack, authenticator)
            assert status == 200, body
            _, status, body = await _login(stack, authenticator, counter_step=0)
            assert status == 401, f"a counter that does not grow is refused: {body}"
            impostor = SoftAuthenticator(ORIGIN)
            impostor.credential_id = authenticator.credential_id  # same id, another key
            _, status, body = await _login(stack, impostor)
            assert status == 401 and body["error"]["code"] == "passkey_invalid", body
            unknown = SoftAuthenticator(ORIGIN)
            _, status, body = await _login(stack, unknown)
            assert status == 401 and body["error"]["code"] == "passkey_unknown", body
            browser = stack.browser()
            _, begun = await browser.call("POST", "/auth/passkey/login/begin")
            assertion = authenticator.get(begun["options"], RP_ID)
            payload = {"handle": begun["handle"], "credential": assertion}
            status, body = await browser.call("POST", "/auth/passkey/login/finish", payload)
            assert status == 200, body
            replayer = stack.browser()
            status, body = await replayer.call("POST", "/auth/passkey/login/finish", payload)
            assert status == 400 and body["error"]["code"] == "passkey_challenge", body
            status, body = await stack.browser().call("POST", "/auth/passkey/register/begin")
            assert status == 401, "registering a passkey needs a session"

    run(scenario())


def test_passkeys_not_configured_is_a_clear_404(tmp_path: Path, nats_server: NatsServer) -> None:
    async def scenario() -> None:
        async with running(tmp_path, nats_server) as stack:
            status, body = await stack.browser().call("POST", "/auth/passkey/login/begin")
            assert status == 404 and body["error"]["code"] == "not_configured", body

    run(scenario())
