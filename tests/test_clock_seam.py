"""Time through the seam, enforced: no module outside craton/io reads a clock.

The node, the client, the platform and the demo read time only through a ``Clock``
(``craton.io.interfaces``; the production one is ``craton.io.clock.SystemClock``), so a test
can hand them a clock of its own and the simulator can stand in for the world. This test
parses every module under ``craton/`` outside ``craton/io`` and fails, naming file and line,
on any read of a system clock:

- ``time.time``, ``time.monotonic``, ``time.perf_counter`` and the like (called or passed
  around), however ``time`` was imported, and ``from time import monotonic`` and the like;
- ``datetime.datetime.now/utcnow/today`` and ``datetime.date.today``, however spelled
  (``datetime.now``, ``date.today``, through an alias);
- ``<anything>.time()`` with no arguments: an event loop's clock (``loop.time()``,
  ``asyncio.get_running_loop().time()``, ``self._loop.time()``).

Waiting is not reading: ``asyncio.sleep``, ``asyncio.wait_for`` and ``time.sleep`` are allowed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "craton"
SEAM = PACKAGE / "io"

TIME_READERS = frozenset(
    {
        "time",
        "time_ns",
        "monotonic",
        "monotonic_ns",
        "perf_counter",
        "perf_counter_ns",
        "process_time",
        "process_time_ns",
        "thread_time",
        "thread_time_ns",
        "clock_gettime",
        "clock_gettime_ns",
    }
)
# (class, method) pairs of datetime that read the wall clock, matched on a name's last two parts
DATETIME_READERS = frozenset(
    {("datetime", "now"), ("datetime", "utcnow"), ("datetime", "today"), ("date", "today")}
)
ADVICE = "read time through a Clock: craton.io.clock"


def _aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> the dotted name it was imported as (``dt`` -> ``datetime``,
    ``DT`` -> ``datetime.datetime``), over the whole module."""
    found: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname is not None:
                    found[alias.asname] = alias.name
                else:
                    top = alias.name.split(".")[0]
                    found[top] = top
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            for alias in node.names:
                found[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return found


def _dotted(node: ast.expr) -> str | None:
    """``a.b.c`` for a chain of names and attributes; None for anything else."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


def _resolved(node: ast.expr, aliases: dict[str, str]) -> str | None:
    """The dotted name of ``node`` with its first part replaced by what it was imported as."""
    dotted = _dotted(node)
    if dotted is None:
        return None
    first, _, rest = dotted.partition(".")
    first = aliases.get(first, first)
    return f"{first}.{rest}" if rest else first


def clock_reads(source: str, filename: str) -> list[str]:
    """Every read of a system clock in ``source``, as ``filename:line: what``."""
    tree = ast.parse(source, filename)
    aliases = _aliases(tree)
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "time" and node.level == 0:
            for alias in node.names:
                if alias.name in TIME_READERS or alias.name == "*":
                    found.append((node.lineno, f"imports time.{alias.name}"))
        elif isinstance(node, ast.Attribute):
            name = _resolved(node, aliases)
            parts = name.split(".") if name is not None else []
            if len(parts) == 2 and parts[0] == "time" and parts[1] in TIME_READERS:
                found.append((node.lineno, f"reads the system clock: {name}"))
            elif len(parts) >= 2 and (parts[-2], parts[-1]) in DATETIME_READERS:
                found.append((node.lineno, f"reads the wall clock: {name}"))
        elif isinstance(node, ast.Call) and _is_loop_time(node, aliases):
            shown = ast.unparse(node)
            found.append((node.lineno, f"reads an event loop's clock: {shown}"))
    return [f"{filename}:{line}: {what} ({ADVICE})" for line, what in sorted(found)]


def _is_loop_time(call: ast.Call, aliases: dict[str, str]) -> bool:
    """``<receiver>.time()`` with no arguments, the receiver not the ``time`` module (whose
    ``time`` is caught as such) nor ``datetime`` (whose ``time()`` is a class)."""
    func = call.func
    if not isinstance(func, ast.Attribute) or func.attr != "time" or call.args or call.keywords:
        return False
    receiver = _resolved(func.value, aliases)
    return receiver not in ("time", "datetime")


def _outside_the_seam() -> list[Path]:
    return sorted(path for path in PACKAGE.rglob("*.py") if SEAM not in path.parents)


MODULES = _outside_the_seam()


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_reads_time_only_through_the_clock(path: Path) -> None:
    source = path.read_text(encoding="utf-8")
    found = clock_reads(source, str(path.relative_to(PACKAGE.parent)))
    assert found == [], "time must come through the Clock seam:\n" + "\n".join(found)


def test_the_scan_covers_the_modules_that_take_a_clock() -> None:
    names = {str(path.relative_to(PACKAGE)) for path in MODULES}
    expected = {
        "net/connection.py",
        "net/server.py",
        "net/node.py",
        "net/logs.py",
        "platform/sessions.py",
        "client/aio.py",
        "demo.py",
    }
    assert expected <= names, f"missing from the scan: {sorted(expected - names)}"
    assert not any(name.startswith("io/") for name in names), "craton/io is the seam itself"


def test_the_checker_reports_every_kind_of_clock_read() -> None:
    source = "\n".join(
        [
            "import time",  # 1
            "import datetime as dt",  # 2
            "from datetime import date, datetime",  # 3
            "from time import monotonic_ns, sleep",  # 4
            "import asyncio",  # 5
            "a = time.monotonic()",  # 6
            "b = time.perf_counter_ns",  # 7: a reference reads it later
            "c = dt.datetime.now(dt.UTC)",  # 8
            "d = datetime.utcnow()",  # 9
            "e = date.today()",  # 10
            "f = loop.time() + 1.0",  # 11
            "g = asyncio.get_running_loop().time()",  # 12
            "h = self._loop.time()",  # 13
            "i = monotonic_ns()",  # 14: reported at its import, line 4
        ]
    )
    assert clock_reads(source, "x.py") == [
        f"x.py:4: imports time.monotonic_ns ({ADVICE})",
        f"x.py:6: reads the system clock: time.monotonic ({ADVICE})",
        f"x.py:7: reads the system clock: time.perf_counter_ns ({ADVICE})",
        f"x.py:8: reads the wall clock: datetime.datetime.now ({ADVICE})",
        f"x.py:9: reads the wall clock: datetime.datetime.utcnow ({ADVICE})",
        f"x.py:10: reads the wall clock: datetime.date.today ({ADVICE})",
        f"x.py:11: reads an event loop's clock: loop.time() ({ADVICE})",
        f"x.py:12: reads an event loop's clock: asyncio.get_running_loop().time() ({ADVICE})",
        f"x.py:13: reads an event loop's clock: self._loop.time() ({ADVICE})",
    ]


def test_the_checker_finds_reads_however_time_was_imported() -> None:
    source = "import time as t\nimport datetime\nx = t.time_ns()\ny = datetime.datetime.now()\n"
    assert clock_reads(source, "y.py") == [
        f"y.py:3: reads the system clock: time.time_ns ({ADVICE})",
        f"y.py:4: reads the wall clock: datetime.datetime.now ({ADVICE})",
    ]
    assert clock_reads("from time import *\n", "z.py") == [f"z.py:1: imports time.* ({ADVICE})"]


def test_the_checker_lets_waiting_and_the_clock_seam_pass() -> None:
    source = "\n".join(
        [
            "import asyncio, datetime, time",
            "from craton.io.clock import monotonic_s, realtime_ms",
            "time.sleep(0.1)",
            "await asyncio.sleep(0.1)",
            "await asyncio.wait_for(job, 2.0)",
            "now_ms = realtime_ms(clock)",
            "deadline_s = monotonic_s(self._clock) + 1.0",
            "started_ns = clock.monotonic_ns()",
            "moment = datetime.datetime.fromtimestamp(0, datetime.UTC)",
            "midnight = datetime.time()",
            "t = record.time(3)",
        ]
    )
    assert clock_reads(source, "ok.py") == []
