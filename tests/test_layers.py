"""The import rules of docs/ARCHITECTURE.md, enforced.

core is pure (no I/O, clocks, threads or OS randomness); io may use the OS but not the
simulator or the server; sim is deterministic (no wall clock, threads, sockets or OS
randomness) and never imports net; net never imports sim. platform (the control plane)
may use core and client pieces, never sim, net, io or the CLI; and nothing outside
craton/platform imports it. Of io, client and platform may use one module: the production
Clock (``craton.io.clock``), through which alone they read time (tests/test_clock_seam.py).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "craton"

CORE_BANNED = {
    "asyncio",
    "aiohttp",
    "socket",
    "ssl",
    "os",
    "time",
    "random",
    "threading",
    "multiprocessing",
    "secrets",
    "uuid",
    "subprocess",
    "selectors",
    "signal",
    "datetime",
    "tempfile",
    "shutil",
    "io",
    "pathlib",
    "glob",
    "concurrent",
    "sys",
}
SIM_BANNED = {
    "asyncio",
    "aiohttp",
    "socket",
    "ssl",
    "time",
    "random",
    "threading",
    "multiprocessing",
    "secrets",
    "uuid",
    "subprocess",
    "selectors",
    "concurrent",
}
LAYER_BANNED = {
    "core": {"io", "sim", "net", "platform", "client", "cli"},
    "io": {"sim", "net", "platform", "cli", "client"},
    "net": {"sim", "platform"},
    "sim": {"net", "platform", "client"},
    "client": {"sim", "net", "io", "platform", "cli"},
    "platform": {"sim", "net", "io", "cli"},
}
# Modules a layer may import although their subpackage is banned to it.
LAYER_ALLOWED = {
    "client": {"craton.io.clock"},
    "platform": {"craton.io.clock"},
}


def _imports(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"line {node.lineno}: use absolute imports"
            assert node.module is not None
            found.append((node.lineno, node.module))
    return found


def _violations(path: Path) -> list[str]:
    layer_parts = path.relative_to(PACKAGE).parts
    layer = layer_parts[0] if len(layer_parts) > 1 else None
    source = path.read_text(encoding="utf-8")
    return _violations_in(source, layer, str(path.relative_to(PACKAGE.parent)))


def _violations_in(source: str, layer: str | None, filename: str) -> list[str]:
    tree = ast.parse(source, filename)
    broken = []
    for lineno, name in _imports(tree):
        top = name.split(".")[0]
        where = f"{filename}:{lineno}"
        if layer == "core" and top in CORE_BANNED:
            broken.append(f"{where}: craton/core imports {name}")
        if layer == "sim" and top in SIM_BANNED:
            broken.append(f"{where}: craton/sim imports {name}")
        if top == "craton" and layer in LAYER_BANNED:
            sub = name.split(".")[1] if "." in name else ""
            if sub in LAYER_BANNED[layer] and name not in LAYER_ALLOWED.get(layer, set()):
                broken.append(f"{where}: craton/{layer} imports {name}")
        elif top == "craton" and layer != "platform" and name.startswith("craton.platform"):
            broken.append(f"{where}: craton/{layer or '.'} imports {name}")
    return broken


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_keeps_the_import_rules(path: Path) -> None:
    assert _violations(path) == [], "imports must flow core <- io <- sim/net"


def test_the_rules_catch_violations() -> None:
    source = "import os\nfrom craton.sim import world\nimport hashlib\n"
    assert _violations_in(source, "core", "x.py") == [
        "x.py:1: craton/core imports os",
        "x.py:2: craton/core imports craton.sim",
    ]
    assert _violations_in("from craton.sim.disk import SimDisk\n", "net", "n.py") == [
        "n.py:1: craton/net imports craton.sim.disk"
    ]
    assert _violations_in("import time\n", "sim", "s.py") == ["s.py:1: craton/sim imports time"]
    assert _violations_in("import os\nimport craton.core\n", "io", "i.py") == []
    assert _violations_in("import craton.platform.http\n", None, "cli.py") == [
        "cli.py:1: craton/. imports craton.platform.http"
    ]
    assert _violations_in("from craton.sim import runner\n", "platform", "p.py") == [
        "p.py:1: craton/platform imports craton.sim"
    ]
    assert _violations_in("from craton.client import Client\n", "platform", "p.py") == []
    assert _violations_in("from craton.io.clock import SystemClock\n", "client", "c.py") == []
    assert _violations_in("from craton.io.driver import Driver\n", "platform", "p.py") == [
        "p.py:1: craton/platform imports craton.io.driver"
    ]
