"""docs/platform-openapi.json and docs/PLATFORM.md describe exactly the routes the app
serves, with the minimum roles it enforces. The console's HTML pages (under ``/console``)
are not part of the JSON API: PLATFORM.md's "Pages" section lists them, the OpenAPI file
does not."""

from __future__ import annotations

import json
from pathlib import Path

from craton.platform.http import ORG_ROUTES, build_app
from craton.platform.metrics import PlatformMetrics
from craton.platform.pages import PREFIX
from craton.platform.service import Platform
from tests.platform.support import config_for

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _served(tmp_path: Path) -> set[tuple[str, str]]:
    app = build_app(Platform(config_for(tmp_path, "nats://127.0.0.1:4222"), PlatformMetrics()))
    served = set()
    for route in app.router.routes():
        if route.method in ("HEAD", "OPTIONS") or route.resource is None:
            continue
        served.add((route.method.lower(), route.resource.canonical))
    return served


def test_the_openapi_file_lists_every_served_route_and_no_other(tmp_path: Path) -> None:
    spec = json.loads((DOCS / "platform-openapi.json").read_text())
    documented = {(method, path) for path, ops in spec["paths"].items() for method in ops}
    served = {(m, p) for m, p in _served(tmp_path) if not p.startswith(PREFIX)}
    assert documented == served, (
        f"undocumented: {sorted(served - documented)}; not served: {sorted(documented - served)}"
    )
    for method, path, _, role in ORG_ROUTES:
        stated = spec["paths"][path][method.lower()]["x-minimum-role"]
        assert stated.split()[0] == role.label, f"{method} {path}: docs say {stated}"


def test_platform_md_names_every_route(tmp_path: Path) -> None:
    text = (DOCS / "PLATFORM.md").read_text()
    missing = [
        f"{method.upper()} {path}"
        for method, path in sorted(_served(tmp_path))
        if f"`{method.upper()} {path}`" not in text
    ]
    assert not missing, f"docs/PLATFORM.md does not document: {missing}"
