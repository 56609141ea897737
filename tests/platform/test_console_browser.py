"""The console in a real browser: Playwright driving the system's Chromium (Debian's
``chromium``; Playwright's own browser downloads are not used) against platform-app, the
stand-in GitHub and a stand-in Craton node, all in this test's event loop on loopback.

GitHub sign-in, inviting a member and changing their role, registering a cluster and
watching its nodes' health arrive without a reload, minting a token, and adding a passkey
then signing in with it through Chromium's virtual authenticator (CDP ``WebAuthn``). With
``CRATON_SCREENSHOTS=1`` the tests also write the pictures docs/PLATFORM.md shows to
docs/images/. Without Chromium (or Playwright) every test here skips with one line.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web

from tests.platform.support import NatsServer, Stack, free_port, run

IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"
SCREENSHOTS = os.environ.get("CRATON_SCREENSHOTS") == "1"
VIEWPORT = {"width": 1100, "height": 640}
WAIT_MS = 10_000  # every wait in the browser is bounded by this
JWT_SECRET = "console-cluster-secret-" + "y" * 24
NODE_VIEW = 7
NODE_LAG_OPS = 2

# One line for the whole module when the browser is missing, not one per test.
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip(
        "no Chromium binary (Debian package chromium): the console's browser tests skip",
        allow_module_level=True,
    )
pytest.importorskip(
    "playwright.async_api", reason="Playwright is not installed (the test extras have it)"
)


class StandInNode:
    """A Craton node's HTTP face as the poller sees it: /health, /ready and /metrics."""

    def __init__(self) -> None:
        self.port = free_port()
        self.runner: web.AppRunner | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> StandInNode:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/ready", self._ready)
        app.router.add_get("/metrics", self._metrics)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "version": "0", "uptime_seconds": 1})

    async def _ready(self, request: web.Request) -> web.Response:
        checks = {"disk": {"status": "ok"}, "replication": {"status": "ok"}}
        return web.json_response({"status": "ok", "checks": checks})

    async def _metrics(self, request: web.Request) -> web.Response:
        text = (
            "# TYPE vdb_replication_view_number gauge\n"
            f"vdb_replication_view_number {NODE_VIEW}.0\n"
            f"vdb_replication_lag_records {NODE_LAG_OPS}.0\n"
        )
        return web.Response(text=text)


@contextlib.asynccontextmanager
async def console(tmp: Path, nats: NatsServer) -> AsyncIterator[tuple[Stack, str]]:
    """platform-app on ``http://localhost:PORT`` (passkeys need a hostname as the relying
    party); yields the stack and that base address."""
    port = free_port()
    base = f"http://localhost:{port}"
    stack = Stack(
        tmp,
        nats,
        PLATFORM_PUBLIC_URL=base,
        PLATFORM_WEBAUTHN_RP_ID="localhost",
        PLATFORM_WEBAUTHN_RP_ORIGIN=base,
    )
    stack.port = port
    await stack.start()
    try:
        yield stack, base
    finally:
        await stack.stop()


@contextlib.asynccontextmanager
async def chromium_browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox"], timeout=WAIT_MS
        )
        try:
            yield browser
        finally:
            await browser.close()


async def new_page(browser: Any, errors: list[str]) -> Any:
    context = await browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(WAIT_MS)
    page = await context.new_page()
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    return page


async def shot(page: Any, name: str) -> None:
    if SCREENSHOTS:
        IMAGES.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(IMAGES / f"console-{name}.png"))


async def github_sign_in(page: Any, base: str, login: str | None = None) -> None:
    """Sign in through the stand-in GitHub: by the page's button, or as ``login``."""
    if login is None:
        await page.goto(base + "/console")
        await page.click("#github-signin")
    else:  # the stand-in signs in whoever its authorize URL names
        start = await page.context.request.get(
            base + "/auth/github/start?next=/console", max_redirects=0
        )
        await page.goto(start.headers["location"] + f"&login={login}")
    await page.wait_for_url(base + "/console")
    await page.locator("h1", has_text="Your organisations").wait_for()


async def new_org(page: Any, name: str) -> str:
    await page.fill("form[action='/console/orgs'] input[name=name]", name)
    await page.click("form[action='/console/orgs'] button")
    await page.wait_for_url("**/clusters")
    return str(page.url.split("/")[-2])


def test_github_sign_in_invite_a_member_and_change_their_role(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    async def scenario() -> None:
        errors: list[str] = []
        async with console(tmp_path, nats_server) as (_, base), chromium_browser() as b:
            owner = await new_page(b, errors)
            await github_sign_in(owner, base)
            assert await owner.locator(".who .login").inner_text() == "octocat"
            org = await new_org(owner, "Acme")
            await owner.click("nav.org-nav >> text=Members")
            await owner.fill("#invite input[name=login]", "hubot")
            await owner.select_option("#invite select[name=role]", "member")
            await owner.click("#invite button")
            await owner.locator("#invitations td", has_text="hubot").wait_for()

            hubot = await new_page(b, errors)
            await github_sign_in(hubot, base, "hubot")
            await hubot.click(f"form[action='/console/orgs/{org}/accept'] button")
            await hubot.wait_for_url(f"**/orgs/{org}/clusters")
            assert await hubot.locator(".who .role").inner_text() == "member"

            await owner.reload()
            row = owner.locator("#members tr[data-login=hubot]")
            await row.locator("select[name=role]").select_option("admin")
            await row.locator("button", has_text="Change").click()
            await owner.wait_for_url(f"**/orgs/{org}/members")
            selected = owner.locator("#members tr[data-login=hubot] select[name=role]")
            assert await selected.input_value() == "admin", "expected hubot shown as admin"
            await shot(owner, "members")

            await hubot.goto(f"{base}/console/orgs/{org}/members")
            assert await hubot.locator(".who .role").inner_text() == "admin"
            await hubot.locator("#invite").wait_for()  # an admin sees the invitation form
        assert errors == [], f"the pages logged errors: {errors}"

    run(scenario())


def test_register_a_cluster_watch_its_health_and_mint_a_token(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    async def scenario() -> None:
        errors: list[str] = []
        node = await StandInNode().start()
        down = f"127.0.0.1:{free_port()}"
        try:
            async with (
                console(tmp_path, nats_server) as (stack, base),
                chromium_browser() as b,
            ):
                page = await new_page(b, errors)
                await github_sign_in(page, base)
                org = await new_org(page, "Acme")
                await page.fill("#register input[name=name]", "prod")
                await page.fill("#register textarea[name=nodes]", f"{node.address}\n{down}")
                await page.fill("#register input[name=jwt_secret]", JWT_SECRET)
                await page.click("#register button")
                await page.wait_for_url(f"**/orgs/{org}/clusters")
                await page.evaluate("window.stayed = true")  # gone if the page reloads
                fetched: list[str] = []
                page.on("request", lambda r: fetched.append(r.url) if "/fleet" in r.url else None)
                up = page.locator(f"tr[data-address='{node.address}']")
                await up.locator(".s-ok").first.wait_for()  # the live refresh brought it
                cells = await up.locator("td").all_inner_texts()
                assert cells[1:5] == ["ok", "ok", str(NODE_VIEW), str(NODE_LAG_OPS)], cells
                gone = page.locator(f"tr[data-address='{down}']")
                await gone.locator(".s-unreachable").first.wait_for()
                assert await page.evaluate("window.stayed === true"), "expected no reload"
                assert fetched, "expected the script to fetch the clusters' table again"
                await shot(page, "clusters")

                await page.click("section.cluster >> text=Tokens")
                await page.click("#mint button")
                token = await page.locator("#token").input_value()
                claims = jwt.decode(token, JWT_SECRET, algorithms=["HS256"], audience="craton")
                tenant = stack.platform.rows("SELECT tenant_id FROM orgs WHERE id = ?", org)
                tenant = tenant[0]["tenant_id"]
                assert claims["role"] == "owner" and claims["tenant_id"] == tenant, claims
                await shot(page, "tokens")
                await page.goto(page.url)  # the same page again, by GET
                assert await page.locator("#token").count() == 0, "shown once, not kept"

                await page.click("nav.org-nav >> text=Events")
                await page.locator("#events td.kind", has_text="ClusterRegistered").wait_for()
                assert JWT_SECRET not in await page.content(), "the secret is never shown"
                await shot(page, "events")
        finally:
            await node.stop()
        assert errors == [], f"the pages logged errors: {errors}"

    run(scenario())


def test_add_a_passkey_then_sign_in_with_it(tmp_path: Path, nats_server: NatsServer) -> None:
    async def scenario() -> None:
        errors: list[str] = []
        async with console(tmp_path, nats_server) as (_, base), chromium_browser() as b:
            page = await new_page(b, errors)
            cdp = await page.context.new_cdp_session(page)
            await cdp.send("WebAuthn.enable")
            await cdp.send(
                "WebAuthn.addVirtualAuthenticator",
                {
                    "options": {
                        "protocol": "ctap2",
                        "transport": "internal",
                        "hasResidentKey": True,
                        "hasUserVerification": True,
                        "isUserVerified": True,
                        "automaticPresenceSimulation": True,
                    }
                },
            )
            await page.goto(base + "/console")
            await page.locator("#passkey-signin").wait_for()  # shown: the browser has WebAuthn
            await shot(page, "signin")
            await github_sign_in(page, base)
            await page.click("#passkey-add")
            await page.locator("ul#passkeys li").first.wait_for()

            await page.click(".who button")  # sign out
            await page.locator("#passkey-signin").wait_for()
            assert await page.locator(".who").count() == 0, "expected to be signed out"
            await page.click("#passkey-signin")
            await page.locator("h1", has_text="Your organisations").wait_for()
            assert await page.locator(".who .login").inner_text() == "octocat"
        assert errors == [], f"the pages logged errors: {errors}"

    run(scenario())


def test_the_pages_work_without_javascript(tmp_path: Path, nats_server: NatsServer) -> None:
    async def scenario() -> None:
        node = await StandInNode().start()
        try:
            async with console(tmp_path, nats_server) as (_, base), chromium_browser() as b:
                context = await b.new_context(viewport=VIEWPORT, java_script_enabled=False)
                context.set_default_timeout(WAIT_MS)
                page = await context.new_page()
                await page.goto(base + "/console")
                assert await page.locator("#passkey-signin").is_hidden(), "needs a script"
                await github_sign_in(page, base)
                org = await new_org(page, "Acme")
                await page.fill("#register input[name=name]", "prod")
                await page.fill("#register textarea[name=nodes]", node.address)
                await page.fill("#register input[name=jwt_secret]", "short")
                await page.click("#register button")
                await page.locator(".error", has_text="jwt_secret").wait_for()
                await page.fill("#register input[name=jwt_secret]", JWT_SECRET)
                await page.click("#register button")
                await page.wait_for_url(f"**/orgs/{org}/clusters")
                for _ in range(50):  # reloading by hand, as a reader without a script would
                    if await page.locator(".s-ok").count() == 2:
                        break
                    await page.wait_for_timeout(200)
                    await page.reload()
                assert await page.locator(".s-ok").count() == 2, "expected health and readiness"
                await page.click("section.cluster >> text=Tokens")
                await page.click("#mint button")
                assert (await page.locator("#token").input_value()).count(".") == 2, "a JWT"
        finally:
            await node.stop()

    run(scenario())
