"""``platform-app``: the control plane service, configured by ``PLATFORM_*`` variables.

Start-up: check the configuration (every mistake printed, one line each, exit 2), connect
to NATS, open SQLite, start projecting, listen on ``PLATFORM_HTTP_ADDR``. ``SIGTERM`` or
``SIGINT`` stops it cleanly (exit 0). A failure to start (NATS unreachable, the address
taken, the database not openable) prints one line and exits 1, never a traceback. Logs are
JSON lines on standard error (``ts``, ``level``, ``event`` and fields; never secrets).

``--help`` and ``--version`` answer (exit 0) even where the ``platform`` extra is not
installed; anything else without it prints one line naming the extra to install and exits
1. The service takes no other arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import logging
import os
import signal
import sqlite3
import sys
from collections.abc import Sequence

from craton import __version__
from craton.console import OneLineParser
from craton.io.clock import SYSTEM_CLOCK, iso_utc_ms
from craton.platform.config import ConfigErrors, PlatformConfig, load_config

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
START_TIMEOUT_S = 15.0
EXTRA_MODULES = ("nats", "webauthn", "jinja2")  # what ``pip install 'craton[platform]'`` brings
EXTRA_INSTALL = "pip install 'craton[platform]'"


def emit(level: str, event: str, **fields: object) -> None:
    line = {
        "ts": iso_utc_ms(SYSTEM_CLOCK.realtime_ns()),
        "level": level,
        "event": event,
        **fields,
    }
    sys.stderr.write(json.dumps(line, default=str) + "\n")
    sys.stderr.flush()


class _JsonLines(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        fields: dict[str, object] = {"message": record.getMessage()}
        if record.exc_info and record.exc_info[1] is not None:
            fields["error"] = repr(record.exc_info[1])
        emit(record.levelname.lower(), f"log.{record.name}", **fields)


def main(argv: Sequence[str] | None = None) -> int:
    _parser().parse_args(argv)  # --help and --version exit here; the rest is the environment
    missing = missing_extra()
    if missing is not None:
        print(
            f"platform-app: the control plane needs the platform extra ({missing} is not "
            f"installed): {EXTRA_INSTALL}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    try:
        config = load_config(os.environ)
    except ConfigErrors as errors:
        for line in errors.lines:
            print(f"platform-app: {line}", file=sys.stderr)
        return EXIT_CONFIG
    logging.getLogger("craton.platform").addHandler(_JsonLines())
    logging.getLogger("craton.platform").propagate = False
    try:
        return asyncio.run(serve(config))
    except KeyboardInterrupt:
        return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="platform-app",
        description="Run Craton's control plane (identity, organisations, the fleet of "
        "clusters). It is configured by the PLATFORM_* environment variables that "
        f"docs/PLATFORM.md lists, and needs the platform extra: {EXTRA_INSTALL}.",
    )
    parser.add_argument("--version", action="version", version=f"craton {__version__}")
    return parser


def missing_extra() -> str | None:
    """The first module of the ``platform`` extra that cannot be imported, or None."""
    for name in EXTRA_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            return name
    return None


async def serve(config: PlatformConfig) -> int:
    from aiohttp import web

    from craton.platform.http import build_app
    from craton.platform.metrics import PlatformMetrics
    from craton.platform.service import Platform

    emit("info", "platform.starting", **config.summary())
    platform = Platform(config, PlatformMetrics(), SYSTEM_CLOCK)
    runner: web.AppRunner | None = None
    try:
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                await platform.start()
            runner = web.AppRunner(build_app(platform), access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, config.http_host, config.http_port)
            await site.start()
        except (OSError, TimeoutError, sqlite3.Error, Exception) as error:
            reason = _reason(error)
            emit("error", "platform.start_failed", reason=reason)
            print(f"platform-app: {reason}", file=sys.stderr)
            return EXIT_FAILED
        addresses = [f"{h}:{p}" for h, p in _bound(runner)]
        emit("info", "platform.listening", addr=",".join(addresses))
        await _until_signal()
        emit("info", "platform.stopping")
        return EXIT_OK
    finally:
        if runner is not None:
            await runner.cleanup()
        await platform.stop()
        emit("info", "platform.stopped")


def _reason(error: BaseException) -> str:
    import nats.errors

    if isinstance(error, TimeoutError):
        return f"could not reach NATS within {START_TIMEOUT_S:g} s"
    if isinstance(error, nats.errors.NoServersError):
        return "could not connect to NATS at PLATFORM_NATS_URL"
    text = str(error) or type(error).__name__
    return f"cannot start: {text}"


def _bound(runner: object) -> list[tuple[str, int]]:
    found: list[tuple[str, int]] = []
    for site in getattr(runner, "sites", ()):
        server = getattr(site, "_server", None)
        for sock in getattr(server, "sockets", None) or ():
            host, port = sock.getsockname()[:2]
            found.append((str(host), int(port)))
    return found


async def _until_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    await stop.wait()


if __name__ == "__main__":
    sys.exit(main())
