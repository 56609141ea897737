"""The platform-app process: exit codes, probes, metrics, and readiness that follows NATS."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.platform.support import NatsServer, free_port, run, running

START_TIMEOUT_S = 20.0


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_bad_configuration_exits_2_with_one_line_per_mistake() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLATFORM_")}
    env["PLATFORM_SESSION_TTL_SECS"] = "-1"
    done = subprocess.run(
        [sys.executable, "-m", "craton.platform.main"],
        env=env,
        capture_output=True,
        timeout=30,
        check=False,
    )
    lines = done.stderr.decode().splitlines()
    assert done.returncode == 2, f"expected exit 2 for a bad configuration, got {done.returncode}"
    assert lines == [
        "platform-app: PLATFORM_NATS_URL: is required (e.g. nats://127.0.0.1:4222)",
        "platform-app: PLATFORM_SQLITE_PATH: is required (the path of the SQLite database file)",
        "platform-app: PLATFORM_SESSION_TTL_SECS: expected a whole number in 1..2592000, got '-1'",
    ], "expected one line per mistake and no traceback"


def test_the_process_serves_probes_and_stops_cleanly_on_sigterm(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLATFORM_")}
    env.update(
        PLATFORM_NATS_URL=nats_server.url,
        PLATFORM_SQLITE_PATH=str(tmp_path / "p.db"),
        PLATFORM_HTTP_ADDR=f"127.0.0.1:{port}",
    )
    log = (tmp_path / "app.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "craton.platform.main"], env=env, stdout=log, stderr=log
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        status, body = 0, b""
        while time.monotonic() < deadline:
            try:
                status, body = _get(f"http://127.0.0.1:{port}/ready")
                if status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.05)
        assert status == 200, f"expected /ready 200, got {status} {body!r}"
        ready = json.loads(body)
        assert set(ready["checks"]) == {"nats", "sqlite", "projections"}
        status, body = _get(f"http://127.0.0.1:{port}/health")
        assert status == 200 and json.loads(body)["status"] == "ok"
        status, body = _get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200 and b"platform_http_requests_total" in body
        status, body = _get(f"http://127.0.0.1:{port}/no-such-route")
        assert status == 404 and json.loads(body)["error"]["code"] == "not_found"
        os.kill(process.pid, signal.SIGTERM)
        assert process.wait(timeout=20) == 0, "expected exit 0 after SIGTERM"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=20)
        log.close()
    assert b"Traceback" not in (tmp_path / "app.log").read_bytes()


def test_unreachable_nats_is_one_line_and_exit_1(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLATFORM_")}
    env.update(
        PLATFORM_NATS_URL=f"nats://127.0.0.1:{free_port()}",
        PLATFORM_SQLITE_PATH=str(tmp_path / "p.db"),
        PLATFORM_HTTP_ADDR="127.0.0.1:0",
    )
    done = subprocess.run(
        [sys.executable, "-m", "craton.platform.main"],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, f"expected exit 1 without NATS, got {done.returncode}"
    plain = [line for line in done.stderr.decode().splitlines() if not line.startswith("{")]
    assert len(plain) == 1 and plain[0].startswith("platform-app: "), plain
    assert "Traceback" not in done.stderr.decode()


def test_ready_turns_unhealthy_while_nats_is_away_and_back_after(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    async def scenario() -> None:
        async with running(tmp_path, nats_server) as stack:
            browser = stack.browser()
            status, ready = await browser.call("GET", "/ready")
            assert status == 200, ready
            nats_server.stop()
            for _ in range(200):
                status, ready = await browser.call("GET", "/ready")
                if ready["checks"]["nats"]["status"] != "ok":
                    break
                await asyncio.sleep(0.05)
            assert status == 503 and ready["checks"]["nats"]["status"] == "unhealthy", ready
            nats_server.start()
            for _ in range(200):
                status, ready = await browser.call("GET", "/ready")
                if status == 200:
                    break
                await asyncio.sleep(0.05)
            assert status == 200, f"expected ready again after NATS came back: {ready}"
            stack.platform.database.close()
            status, ready = await browser.call("GET", "/ready")
            assert status == 503 and ready["checks"]["sqlite"]["status"] == "unhealthy", ready
            stack.platform.db = None  # closed already

    run(scenario())
