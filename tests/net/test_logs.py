"""The node's log: one JSON object per line, the level threshold of ``VDB_LOG_LEVEL``,
long values cut, and Python's own logging routed into the same format."""

from __future__ import annotations

import io
import json
import logging

from craton.net.config import LogLevel
from craton.net.logs import FIELD_CHARS_MAX, EventLog, route_python_logging


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_the_level_threshold_and_the_line_format() -> None:
    stream = io.StringIO()
    log = EventLog(LogLevel.WARN, stream)
    log.trace("a.trace")
    log.debug("a.debug")
    log.info("a.info", port=5432)
    log.warn("a.warn", peer="127.0.0.1:1", count=3, ok=True, none=None)
    log.error("a.error", reason="x" * (FIELD_CHARS_MAX + 10))
    records = lines(stream)
    assert [r["event"] for r in records] == ["a.warn", "a.error"]
    assert [r["level"] for r in records] == ["warn", "error"]
    warn = records[0]
    assert (warn["peer"], warn["count"], warn["ok"], warn["none"]) == ("127.0.0.1:1", 3, True, None)
    assert str(warn["ts"]).endswith("Z")
    assert len(str(records[1]["reason"])) == FIELD_CHARS_MAX + 3


def test_trace_writes_everything() -> None:
    stream = io.StringIO()
    log = EventLog(LogLevel.TRACE, stream)
    log.trace("t")
    log.debug("d")
    assert [r["level"] for r in lines(stream)] == ["trace", "debug"]


def test_python_logging_becomes_json_lines() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        route_python_logging(EventLog(LogLevel.INFO, stream))
        logging.getLogger("asyncio").info("not shown: below warning")
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("aiohttp.server").exception("Error handling request")
        (record,) = lines(stream)
        assert record["event"] == "python.aiohttp.server" and record["level"] == "error"
        assert record["error"] == "ValueError: boom" and "Traceback" not in stream.getvalue()
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
