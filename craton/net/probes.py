"""Health, readiness and metrics over HTTP: the deployment guide's ``/health``, ``/ready``
and ``/metrics``, answered on the metrics port (aiohttp) and on the main port.

Bodies (JSON, as the guide's Health Checks section):

    /health  {"status": ..., "version": "0.1.0", "uptime_seconds": N}
    /ready   {"status": ..., "checks": {"disk": {"status", "duration_ms"}, "memory": ...,
              "data_dir": ..., "log": ...}, "version": ..., "uptime_seconds": N}
    /metrics the Prometheus text format

``status`` is ``ok``, ``degraded`` (serving, with a warning) or ``unhealthy`` (cannot
serve); the HTTP status is 200 for the first two and 503 for the last. Readiness checks:
``disk`` — free space in the data directory's file system (degraded below
``DISK_FREE_BYTES_WARN``, unhealthy below ``DISK_FREE_BYTES_MIN`` or when it cannot be
measured); ``memory`` — open connections as a proxy (degraded from
``CONNECTIONS_WARN_FRACTION`` of ``VDB_MAX_CONNECTIONS``, unhealthy at the limit);
``data_dir`` — a probe file can be created and removed there; ``log`` — the log is
recovered and the replica runs (unhealthy while recovering and after a fault);
``replication``, in cluster mode only — the replica has recovered and takes part: normal
status with its view's whole log installed and, for a backup, caught up with the commit
number its primary announced when first heard (unhealthy during a view change, while a
rejoining replica installs the view's log, and while a restarted backup catches up, so a
rolling restart that waits for ``/ready`` never stops a second replica too early). A check
that is not ok carries a ``detail`` line. ``/health`` is liveness: unhealthy only once the
node stopped after a fault, degraded when connections are near the limit.

On the main port, ``MainPortHttp`` answers one request per connection (``Connection:
close``): ``GET`` or ``HEAD`` of those three paths, 404 for another path, 405 for another
method, 400 for a request it cannot parse or that exceeds ``HTTP_HEAD_BYTES_MAX`` or
``HTTP_READ_TIMEOUT_S``. It never echoes what it received. On the metrics port, a request
aiohttp cannot parse gets its 400 and, likewise, leaves no trace in the log, and a
connection that has not sent a whole request ``HTTP_READ_TIMEOUT_S`` after it opened (or
after its last answer) is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import attrs
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from craton import __version__
from craton.io.clock import NS_PER_MS, SYSTEM_CLOCK, Clock, monotonic_s
from craton.net.metrics import METRICS_CONTENT_TYPE, NodeMetrics
from craton.net.node import ReplicaHost

OK, DEGRADED, UNHEALTHY = "ok", "degraded", "unhealthy"
_RANK = {OK: 0, DEGRADED: 1, UNHEALTHY: 2}
DISK_FREE_BYTES_MIN = 64 * 1024 * 1024
DISK_FREE_BYTES_WARN = 1024 * 1024 * 1024
CONNECTIONS_WARN_FRACTION = 0.9
HTTP_HEAD_BYTES_MAX = 8 * 1024  # request line and headers
HTTP_READ_TIMEOUT_S = 5.0
PROBE_FILE_PREFIX = ".ready-probe-"
JSON_CONTENT_TYPE = "application/json"
PATHS = ("/health", "/ready", "/metrics")
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}


@attrs.frozen
class Answer:
    status: int
    content_type: str
    body: bytes


class Probes:
    """The answers to the three paths, computed from the node's live state."""

    def __init__(
        self,
        host: ReplicaHost,
        metrics: NodeMetrics,
        *,
        max_connections: int,
        connections: Callable[[], int],
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._host = host
        self._clock = clock
        self._metrics = metrics
        self._max_connections = max_connections
        self._connections = connections
        self._started_s = monotonic_s(clock)

    def answer(self, path: str) -> Answer:
        match path:
            case "/health":
                return self._json(self.health())
            case "/ready":
                return self._json(self.ready())
            case "/metrics":
                return Answer(200, METRICS_CONTENT_TYPE, self._metrics.render())
            case _:
                return Answer(404, JSON_CONTENT_TYPE, b'{"error": "not found"}\n')

    def health(self) -> dict[str, object]:
        if self._host.halted is not None:
            status = UNHEALTHY
        else:
            status = self._connection_status()[0]
            status = DEGRADED if status != OK else OK
        return {"status": status, "version": __version__, "uptime_seconds": self._uptime()}

    def ready(self) -> dict[str, object]:
        checks: dict[str, dict[str, object]] = {}
        clock = self._clock
        named = [
            ("disk", self._check_disk),
            ("memory", self._connection_status),
            ("data_dir", self._check_data_dir),
            ("log", self._check_log),
        ]
        if self._host.in_cluster:
            named.append(("replication", self._check_replication))
        for name, check in named:
            started_ns = clock.monotonic_ns()
            status, detail = check()
            result: dict[str, object] = {
                "status": status,
                "duration_ms": round((clock.monotonic_ns() - started_ns) / NS_PER_MS),
            }
            if detail:
                result["detail"] = detail
            checks[name] = result
        overall = max((str(c["status"]) for c in checks.values()), key=_RANK.__getitem__)
        return {
            "status": overall,
            "checks": checks,
            "version": __version__,
            "uptime_seconds": self._uptime(),
        }

    # --- checks ----------------------------------------------------------------------------

    def _check_disk(self) -> tuple[str, str]:
        try:
            stats = os.statvfs(self._host.data_dir)
        except OSError as error:
            return UNHEALTHY, f"cannot measure free space: {error.strerror}"
        free_bytes = stats.f_bavail * stats.f_frsize
        if free_bytes < DISK_FREE_BYTES_MIN:
            return UNHEALTHY, f"{free_bytes} bytes free"
        if free_bytes < DISK_FREE_BYTES_WARN:
            return DEGRADED, f"{free_bytes} bytes free"
        return OK, ""

    def _connection_status(self) -> tuple[str, str]:
        open_now = self._connections()
        if open_now >= self._max_connections:
            return UNHEALTHY, f"{open_now} connections, the limit"
        if open_now >= CONNECTIONS_WARN_FRACTION * self._max_connections:
            return DEGRADED, f"{open_now} of {self._max_connections} connections"
        return OK, ""

    def _check_data_dir(self) -> tuple[str, str]:
        data_dir: Path = self._host.data_dir
        if not data_dir.is_dir():
            return UNHEALTHY, "the data directory is missing"
        probe = data_dir / f"{PROBE_FILE_PREFIX}{os.getpid()}"
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            os.close(fd)
            os.unlink(probe)
        except OSError as error:
            return UNHEALTHY, f"the data directory is not writable: {error.strerror}"
        return OK, ""

    def _check_log(self) -> tuple[str, str]:
        host = self._host
        if host.halted is not None:
            return UNHEALTHY, "the node stopped after a fault"
        if not host.recovered or (not host.in_cluster and not host.settled):
            return UNHEALTHY, "recovering the log"
        return OK, ""

    def _check_replication(self) -> tuple[str, str]:
        host = self._host
        if not host.settled:
            return UNHEALTHY, host.status
        return OK, ""

    # --- helpers ---------------------------------------------------------------------------

    def _uptime(self) -> int:
        return int(monotonic_s(self._clock) - self._started_s)

    def _json(self, body: dict[str, object]) -> Answer:
        status = 503 if body["status"] == UNHEALTHY else 200
        return Answer(status, JSON_CONTENT_TYPE, json.dumps(body).encode() + b"\n")


# --- the metrics port ------------------------------------------------------------------------


class _ClientErrorsUnlogged(logging.Filter):
    """A request aiohttp cannot parse (a line too long, a bad method or header) is the
    client's doing: it is answered 400 and not logged, as on the main port. aiohttp would
    log it as an error quoting the client's bytes."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, HttpProcessingError)


METRICS_PORT_LOGGER = logging.getLogger("craton.metrics_port")  # the metrics port's aiohttp
METRICS_PORT_LOGGER.addFilter(_ClientErrorsUnlogged())


def metrics_app(probes: Probes) -> web.Application:
    """The aiohttp application of the metrics port (GET routes also answer HEAD)."""

    async def handle(request: web.Request) -> web.Response:
        answer = probes.answer(request.path)
        return web.Response(
            status=answer.status,
            body=answer.body,
            headers={"Content-Type": answer.content_type, "Cache-Control": "no-store"},
        )

    app = web.Application()
    for path in PATHS:
        app.router.add_get(path, handle)
    return app


# --- the main port ---------------------------------------------------------------------------


class MainPortHttp:
    """One HTTP/1.x request on a main-port connection whose first bytes were a method."""

    def __init__(self, probes: Probes) -> None:
        self._probes = probes

    async def serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first: bytes
    ) -> None:
        try:
            head = await asyncio.wait_for(self._read_head(reader, first), HTTP_READ_TIMEOUT_S)
        except (TimeoutError, ConnectionError):
            head = None
        answer, include_body = self._route(head)
        reason = _REASONS.get(answer.status, "")
        lines = [
            f"HTTP/1.1 {answer.status} {reason}",
            f"Content-Type: {answer.content_type}",
            f"Content-Length: {len(answer.body)}",
            "Cache-Control: no-store",
            "Connection: close",
        ]
        if answer.status == 405:
            lines.append("Allow: GET, HEAD")
        response = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
        writer.write(response + (answer.body if include_body else b""))
        with contextlib.suppress(TimeoutError, ConnectionError):
            await asyncio.wait_for(writer.drain(), HTTP_READ_TIMEOUT_S)

    async def _read_head(self, reader: asyncio.StreamReader, first: bytes) -> bytes | None:
        buffer = bytearray(first)
        while b"\r\n\r\n" not in buffer and b"\n\n" not in buffer:
            if len(buffer) > HTTP_HEAD_BYTES_MAX:
                return None
            chunk = await reader.read(HTTP_HEAD_BYTES_MAX)
            if not chunk:
                return None
            buffer += chunk
        return bytes(buffer[:HTTP_HEAD_BYTES_MAX])

    def _route(self, head: bytes | None) -> tuple[Answer, bool]:
        bad = Answer(400, JSON_CONTENT_TYPE, b'{"error": "bad request"}\n')
        if head is None:
            return bad, True
        request_line = head.split(b"\n", 1)[0].rstrip(b"\r")
        parts = request_line.split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            return bad, True
        method, target = parts[0], parts[1]
        if method not in (b"GET", b"HEAD"):
            return Answer(405, JSON_CONTENT_TYPE, b'{"error": "method not allowed"}\n'), True
        path = target.split(b"?", 1)[0].decode("ascii", errors="replace")
        return self._probes.answer(path), method == b"GET"
