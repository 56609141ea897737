"""The timeline page of a run (``craton.sim.timeline``, ``craton sim replay --html``).

The run is a failing one: the planted floorless gateway of ``test_shrink`` under its failing
options, put where ``craton sim replay`` takes its cluster and options from. The page must
draw a lane per replica and per client, the messages as arrows, and the violation; it must
need nothing from elsewhere, leave the run as it was, and open in a real browser (headless
Chromium through Playwright) without an error.
"""

from __future__ import annotations

import contextlib
import functools
import html
import io
import json
import re
import shutil
from pathlib import Path

import pytest

from craton import cli
from craton.sim import cluster as cluster_module
from craton.sim import runner
from craton.sim.cluster import Cluster
from craton.sim.runner import EXIT_CORRECTNESS
from craton.sim.timeline import Recorder
from tests.sim.test_shrink import FloorlessGateway, failing_options, failing_seed

REPLICAS, CLIENTS = 3, 4  # failing_options' cluster


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    """The page of a failing run (``failing_seed()``), and that run's JSON line."""
    path = tmp_path_factory.mktemp("timeline") / "run.html"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cluster_module, "draw_options", lambda seed, **_: failing_options(seed))
        planted = functools.partial(Cluster, gateway_factory=FloorlessGateway)
        patch.setattr(runner, "Cluster", planted)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = cli.main(["sim", "replay", "--seed", str(failing_seed()), "--html", str(path)])
    assert code == EXIT_CORRECTNESS, "the floorless gateway's run should fail"
    return path, json.loads(out.getvalue())


def test_the_page_draws_lanes_arrows_and_the_violation(
    page: tuple[Path, dict[str, object]],
) -> None:
    path, summary = page
    text = path.read_text(encoding="utf-8")
    lanes = re.findall(r'<g class="lane" data-node="(\w+)"', text)
    expected = [f"r{i}" for i in range(REPLICAS)] + [f"c{1000 + i}" for i in range(CLIENTS)]
    assert lanes == expected, f"one lane per replica and per client, in order: {lanes}"
    assert text.count('<line class="msg"') > 100, "messages are drawn as arrows"
    assert 'marker-end="url(#head-prepare)"' in text
    violations = summary["violations"]
    assert isinstance(violations, list) and violations
    assert html.escape(violations[0]) in text, "the first violation is written on the page"
    assert '<section class="violations"' in text
    assert '<g class="violation">' in text, "and marked on the timeline"
    for outside in ("http://", "https://", "<script src", "@import", "@font-face"):
        assert outside not in text, f"the page must be self-contained: found {outside!r}"


def test_watching_a_run_leaves_it_as_it_was() -> None:
    seed = failing_seed()
    options = failing_options(seed)
    bare = Cluster(seed, options, gateway_factory=FloorlessGateway).run()
    recorder = Recorder()
    watched = Cluster(seed, options, trace=recorder.line, gateway_factory=FloorlessGateway)
    recorder.attach(watched)
    run = watched.run()
    recorder.finish(run.ticks)
    assert run.trace_digest == bare.trace_digest, "watching a run must not change it"
    assert recorder.messages_seen == len(recorder.messages) > 0
    kinds = {mark.kind for mark in recorder.marks}
    assert {"crash", "restart", "commit", "ack"} <= kinds, f"marks drawn: {sorted(kinds)}"


def test_the_page_opens_in_a_browser_without_errors(page: tuple[Path, dict[str, object]]) -> None:
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="Playwright is not installed (the test extras have it)"
    )
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no Chromium binary (Debian package chromium): the browser check is skipped")
    path, summary = page
    errors: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            tab = browser.new_page(viewport={"width": 1400, "height": 1000})
            tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            tab.on("pageerror", lambda error: errors.append(str(error)))
            tab.goto(path.as_uri())
            violations = summary["violations"]
            assert isinstance(violations, list)
            shown = tab.locator("#violations .violation-text").first
            assert shown.is_visible(), "the first violation is visible at the top"
            assert shown.inner_text() == violations[0]
            assert tab.locator("svg.detail g.lane").count() == REPLICAS + CLIENTS
            assert tab.locator("svg.detail line.msg").count() > 100
        finally:
            browser.close()
    assert errors == [], f"the page logged errors: {errors}"
