"""Structured logs for the node: one JSON object per line on standard error.

Every line has ``ts`` (UTC, ISO 8601 with milliseconds, read from the log's ``Clock``),
``level``, ``event`` (a dotted name such as ``server.listening``) and the event's fields.
``VDB_LOG_LEVEL`` chooses the lowest level written: ``trace`` < ``debug`` < ``info`` <
``warn`` < ``error``.

Rules: callers pass fields as values of their own, never request payloads, event bytes or
credentials; a field value is cut to ``FIELD_CHARS_MAX`` characters; a line is written in
one ``write`` call so that lines from different threads never interleave; logging never
raises into the node (a value that is not JSON becomes its ``str``).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from typing import TextIO

from craton.io.clock import SYSTEM_CLOCK, Clock, iso_utc_ms
from craton.net.config import LogLevel

LOGGER_NAME = "craton.node"
FIELD_CHARS_MAX = 512
TRACE = 5  # below logging.DEBUG

LEVELS: dict[LogLevel, int] = {
    LogLevel.TRACE: TRACE,
    LogLevel.DEBUG: logging.DEBUG,
    LogLevel.INFO: logging.INFO,
    LogLevel.WARN: logging.WARNING,
    LogLevel.ERROR: logging.ERROR,
}
_NAMES = {
    TRACE: "trace",
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warn",
    logging.ERROR: "error",
}

FieldValue = str | int | float | bool | None


class EventLog:
    """The node's log: ``log.info("server.listening", addr="0.0.0.0:5432")``."""

    def __init__(
        self, level: LogLevel, stream: TextIO | None = None, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self._threshold = LEVELS[level]
        self._clock = clock
        self._stream = stream if stream is not None else sys.stderr
        self._lock = threading.Lock()

    def enabled(self, level: int) -> bool:
        return level >= self._threshold

    def trace(self, event: str, **fields: FieldValue) -> None:
        self.emit(TRACE, event, fields)

    def debug(self, event: str, **fields: FieldValue) -> None:
        self.emit(logging.DEBUG, event, fields)

    def info(self, event: str, **fields: FieldValue) -> None:
        self.emit(logging.INFO, event, fields)

    def warn(self, event: str, **fields: FieldValue) -> None:
        self.emit(logging.WARNING, event, fields)

    def error(self, event: str, **fields: FieldValue) -> None:
        self.emit(logging.ERROR, event, fields)

    def emit(self, level: int, event: str, fields: dict[str, FieldValue]) -> None:
        if level < self._threshold:
            return
        record: dict[str, FieldValue] = {
            "ts": iso_utc_ms(self._clock.realtime_ns()).replace("+00:00", "Z"),
            "level": _NAMES.get(level, str(level)),
            "event": event,
        }
        for name, value in fields.items():
            record[name] = _clip(value)
        line = json.dumps(record, default=str, ensure_ascii=False) + "\n"
        with self._lock:
            try:
                self._stream.write(line)
                self._stream.flush()
            except (OSError, ValueError):
                pass  # a closed or broken log stream must not take the node down


class _Bridge(logging.Handler):
    """Records of Python's ``logging`` (asyncio, aiohttp) as lines of the node's log."""

    def __init__(self, log: EventLog) -> None:
        super().__init__(level=logging.WARNING)
        self._log = log

    def emit(self, record: logging.LogRecord) -> None:
        fields: dict[str, FieldValue] = {"message": record.getMessage()}
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            fields["error"] = f"{type(error).__name__}: {error}"
        self._log.emit(record.levelno, f"python.{record.name}", fields)


def route_python_logging(log: EventLog) -> None:
    """Send warnings and errors of Python's ``logging`` to ``log`` as JSON lines, one per
    record (exceptions as their type and message, without a traceback)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(_Bridge(log))
    root.setLevel(logging.WARNING)


def _clip(value: FieldValue) -> FieldValue:
    if isinstance(value, str) and len(value) > FIELD_CHARS_MAX:
        return value[:FIELD_CHARS_MAX] + "..."
    return value
