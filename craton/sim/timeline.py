"""The timeline of one simulated run, as a self-contained HTML page a person can read.

``Recorder`` is a run's trace callback (the readable lines of docs/SIMULATION.md, "Running
and replaying a seed") and, once ``attach``ed to the ``Cluster``, looks at it from outside
at every line: which replicas are paused, the partition in force, each replica's commit
number, the operations clients finished, the checkers' violations. ``render_html`` draws
what it gathered: one lane per replica and per client, messages as arrows from the
sender's lane to the receiver's at the tick they were delivered, faults, view changes and
commits marked, and the violations at the top and at the tick they were found.

Rules it keeps:
- It only reads: a run is the same with a recorder or without (same trace digest).
- Bounded: at most ``MESSAGES_RECORDED_MAX`` messages are kept (the others are counted),
  and the page says which of them it draws.
- The page needs nothing from elsewhere: inline SVG and CSS, and one line of script.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable, Mapping

import attrs

from craton.sim.cluster import Cluster, SwarmOptions
from craton.sim.durability import DAMAGE_NOTICES
from craton.sim.network import Partition
from craton.sim.workload import CLIENT_ID_BASE

DETAIL_TICKS_MAX = 600  # the detailed window: at most this many ticks before the failure
FOCUS_AFTER_TICKS = 100  # drawn after the commit of the ops a violation judged at the end names
MESSAGES_SHOWN_MAX = 3_000  # arrows drawn at most (the latest in the window)
MESSAGES_RECORDED_MAX = 1_000_000  # kept for the page; past it, deliveries are only counted
DETAIL_TICK_PX = 4  # horizontal pixels per tick in the detailed window
OVERVIEW_WIDTH_PX = 1_100  # the whole run's strip
LANE_PX = 34  # height of a lane in the detailed window
OVERVIEW_LANE_PX = 16
AXIS_PX = 22  # room for the tick axis above the lanes
VIOLATION_SHOWN_CHARS_MAX = 160  # of a violation's text written on the timeline itself

_DELIVERY = re.compile(r"^\s*(\d+) r(\d+) <- (\d+): (.*)$")
_REPLICA_LINE = re.compile(r"^\s*(\d+) r(\d+) (.*)$")
_WORLD_LINE = re.compile(r"^\s*(\d+) (.*)$")
MESSAGE_KINDS = {  # the first word of a message's description -> how it is drawn
    "client": "client",
    "Prepare": "prepare",
    "PrepareOk": "ack",
    "Commit": "heartbeat",
    "StartViewChange": "view",
    "DoViewChange": "view",
    "StartView": "view",
}
COLORS = {
    "client": "#111827",
    "prepare": "#2563eb",
    "ack": "#0d9488",
    "heartbeat": "#9ca3af",
    "view": "#ea580c",
    "repair": "#7c3aed",
    "down": "#fecaca",
    "paused": "#fde68a",
    "partition": "#c7d2fe",
}


@attrs.frozen
class Message:
    tick: int  # delivered at
    src: int  # node ids: replica index, or a client's id (from CLIENT_ID_BASE)
    dst: int
    label: str


@attrs.frozen
class Mark:
    tick: int
    node: int
    kind: str  # crash, restart, halt, disk, view, primary, repair, commit, ack, unknown
    text: str


@attrs.frozen
class Span:
    start: int
    end: int
    nodes: tuple[int, ...]
    kind: str  # down, paused, partition
    text: str


class Recorder:
    """Gathers a run's timeline from its trace lines and from looks at the cluster."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.messages_seen = 0  # delivered in the whole run (kept or not)
        self.commit_rises: list[tuple[int, int]] = []  # (tick, highest commit number by then)
        self.marks: list[Mark] = []
        self.spans: list[Span] = []
        self.found_ticks: list[int] = []  # the tick each violation was first seen
        self.now = 0
        self.heal_tick: int | None = None
        self._cluster: Cluster | None = None
        self._open: dict[tuple[str, int], tuple[int, tuple[int, ...], str]] = {}
        self._commits: list[int] = []
        self._finished: list[int] = []  # operations seen in each client's history
        self.client_ids: dict[int, int] = {}  # a client's node id -> its id at the replicas
        self._partition: Partition | None = None  # the one in force at the last look

    def attach(self, cluster: Cluster) -> None:
        self._cluster = cluster
        self._commits = [0] * cluster.options.replica_count
        self._finished = [0] * cluster.options.client_count
        self.client_ids = {client.endpoint_id: client.client_id for client in cluster.clients}

    def line(self, text: str) -> None:
        """The trace callback."""
        if text.startswith("#"):
            return
        delivery = _DELIVERY.match(text)
        if delivery is not None:
            tick, dst, src, label = delivery.groups()
            self.now = int(tick)
            if len(self.messages) < MESSAGES_RECORDED_MAX:
                self.messages.append(Message(self.now, int(src), int(dst), label))
            self.messages_seen += 1
        elif (about := _REPLICA_LINE.match(text)) is not None:
            self.now = int(about.group(1))
            self._replica_event(int(about.group(2)), about.group(3))
        elif (world := _WORLD_LINE.match(text)) is not None:
            self.now = int(world.group(1))
            if world.group(2).startswith("healed"):
                self.heal_tick = self.now
        self._look()

    def finish(self, end_tick: int) -> None:
        """After the run: a last look (the clients' unknown operations, the checks made at
        the end) and every span still open closed at ``end_tick``."""
        self.now = max(self.now, end_tick)
        self._look(final=True)
        for key in list(self._open):
            self._close(key)

    def _replica_event(self, index: int, what: str) -> None:
        name, _, fields = what.partition(" ")
        if what.startswith("crashed until"):
            self.marks.append(Mark(self.now, index, "crash", f"r{index} {what}"))
            self._open[("down", index)] = (self.now, (index,), f"r{index} down")
        elif what == "restarted":
            self.marks.append(Mark(self.now, index, "restart", f"r{index} restarted"))
            self._close(("down", index))
        elif what.startswith("halted"):
            self.marks.append(Mark(self.now, index, "halt", f"r{index} {what}"))
        elif what.startswith(("disk wiped", "rot in op")) or name in DAMAGE_NOTICES:
            self.marks.append(Mark(self.now, index, "disk", f"r{index} {what}"))
        elif name == "replica.view_change":
            self.marks.append(Mark(self.now, index, "view", f"r{index} view change {fields}"))
        elif name == "replica.primary":
            self.marks.append(Mark(self.now, index, "primary", f"r{index} primary {fields}"))
        elif name.startswith("replica.re") or name.startswith("replica.state_"):
            self.marks.append(Mark(self.now, index, "repair", f"r{index} {what}"))

    def _look(self, *, final: bool = False) -> None:
        cluster = self._cluster
        if cluster is None:
            return  # lines written while the cluster is being built
        for node in cluster.nodes:
            key = ("paused", node.index)
            if node.paused and key not in self._open:
                text = f"r{node.index} paused until {node.back_at}"
                self._open[key] = (self.now, (node.index,), text)
            elif not node.paused and key in self._open:
                self._close(key)
            commit = node.replica.commit
            if commit > self._commits[node.index]:
                text = f"r{node.index} commit {commit}"
                self.marks.append(Mark(self.now, node.index, "commit", text))
            self._commits[node.index] = commit
        high = max(self._commits, default=0)
        if high > (self.commit_rises[-1][1] if self.commit_rises else 0):
            self.commit_rises.append((self.now, high))
        self._look_at_partition(cluster)
        for index, client in enumerate(cluster.clients):
            for operation in client.history[self._finished[index] :]:
                tick = operation.completed_tick
                kind = "unknown" if tick is None else "ack"
                told = "outcome unknown" if tick is None else f"at position {operation.position}"
                text = f"client {operation.client_id} request {operation.request_number} {told}"
                self.marks.append(
                    Mark(self.now if tick is None else tick, client.endpoint_id, kind, text)
                )
            self._finished[index] = len(client.history)
        if not final:
            while len(self.found_ticks) < len(cluster.checker.violations):
                self.found_ticks.append(self.now)

    def _look_at_partition(self, cluster: Cluster) -> None:
        partition = cluster.network.partition_active
        if partition is not None and partition.end_tick <= self.now:
            partition = None  # over: the network lets it go at its next tick
        key = ("partition", -1)
        if partition == self._partition:
            return
        if key in self._open:  # over, or replaced by another
            self._close(key)
        self._partition = partition
        if partition is not None:
            cut = "one way" if partition.one_way else "both ways"
            text = f"partition ({cut}): {_names(partition.near)} | {_names(partition.far)}"
            self._open[key] = (self.now, tuple(partition.near), text)

    def _close(self, key: tuple[str, int]) -> None:
        start, nodes, text = self._open.pop(key)
        self.spans.append(Span(start, max(start, self.now), nodes, key[0], text))

    def committed_at(self, op: int) -> int | None:
        """The tick at which some replica first committed op ``op`` (ops count from 0)."""
        for tick, commit in self.commit_rises:
            if commit > op:
                return tick
        return None


def _names(nodes: tuple[int, ...]) -> str:
    return " ".join(_lane_name(node) for node in nodes)


def _lane_name(node: int) -> str:
    return f"c{node}" if node >= CLIENT_ID_BASE else f"r{node}"


# --- the page ----------------------------------------------------------------------------------


@attrs.frozen
class _Finding:
    tick: int
    text: str
    when: str  # how the tick is known, in words
    at_end: bool  # judged by the checks at the end of the run (the tick it arose is unknown)


@attrs.frozen
class _Focus:
    """Where the detailed window ends, and why."""

    end: int
    why: str
    ops: tuple[tuple[int, int], ...]  # (op, tick first committed) of the ops the failure names


@attrs.frozen
class _Window:
    start: int
    end: int
    messages: tuple[Message, ...]

    def x(self, tick: int) -> float:
        return (tick - self.start) * DETAIL_TICK_PX + DETAIL_TICK_PX / 2

    @property
    def width(self) -> int:
        return (self.end - self.start + 1) * DETAIL_TICK_PX


def render_html(
    recorder: Recorder, *, seed: int, options: SwarmOptions, summary: Mapping[str, object]
) -> str:
    """The page for a run that ``recorder`` watched and that ended with ``summary`` (its
    JSON line's fields)."""
    end = max(recorder.now, _int(summary.get("ticks"), recorder.now))
    findings = _findings(recorder, summary, end)
    lanes = [*range(options.replica_count)]
    lanes += [CLIENT_ID_BASE + index for index in range(options.client_count)]
    focus = _focus(recorder, findings, end)
    window = _window(recorder, focus.end)
    result = str(summary.get("result", "?"))
    title = f"Craton simulator: seed {seed}, {result}"
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<link rel="icon" href="data:,">',
        f"<title>{_e(title)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f"<p>Replay: <code>{_e(str(summary.get('replay', '')))}</code></p>",
        _findings_section(findings),
        _facts_section(seed, options, summary, end),
        "<h2>The whole run</h2>",
        _overview_svg(recorder, lanes, end, window, findings),
        "<h2>Near the failure</h2>" if findings else "<h2>The end of the run</h2>",
        _window_note(recorder, window, focus),
        _legend(),
        '<div class="frame"><div class="labels">',
        *(_lane_label(node, options, recorder) for node in lanes),
        '</div><div class="scroll" id="detail">',
        _detail_svg(recorder, lanes, window, findings, focus),
        "</div></div>",
        "<script>var d=document.getElementById('detail');d.scrollLeft=d.scrollWidth;</script>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _findings(recorder: Recorder, summary: Mapping[str, object], end: int) -> list[_Finding]:
    found: list[_Finding] = []
    violations = summary.get("violations")
    for index, text in enumerate(violations if isinstance(violations, list) else []):
        if index < len(recorder.found_ticks):
            tick = recorder.found_ticks[index]
            found.append(_Finding(tick, str(text), f"found at tick {tick}", False))
        else:
            when = f"found at the end of the run (tick {end})"
            found.append(_Finding(end, str(text), when, True))
    if "error" in summary:
        found.append(_Finding(end, str(summary["error"]), f"raised at tick {end}", False))
    return found


def _focus(recorder: Recorder, findings: list[_Finding], end: int) -> _Focus:
    """The detailed window ends at the first violation; for one judged at the end of the run,
    a little after the ops it names were committed, when it names any."""
    if not findings:
        return _Focus(end, "the end of the run", ())
    first = findings[0]
    named = sorted({int(op) for op in re.findall(r"\bpositions? (\d+)", first.text)})
    named += [int(op) for op in re.findall(r"\bpositions \d+ and (\d+)", first.text)]
    ops = []
    for op in sorted(set(named)):
        tick = recorder.committed_at(op)
        if tick is not None:
            ops.append((op, tick))
    if not first.at_end or not ops:
        return _Focus(first.tick, "the first violation", tuple(ops))
    names = " and ".join(str(op) for op, _ in ops)
    why = f"{FOCUS_AFTER_TICKS} ticks after the commit of op {names}, which the violation names"
    return _Focus(min(end, max(tick for _, tick in ops) + FOCUS_AFTER_TICKS), why, tuple(ops))


def _window(recorder: Recorder, end: int) -> _Window:
    start = max(0, end - DETAIL_TICKS_MAX + 1)
    shown = [m for m in recorder.messages if start <= m.tick <= end][-MESSAGES_SHOWN_MAX:]
    if len(shown) == MESSAGES_SHOWN_MAX:
        start = shown[0].tick
    return _Window(start, end, tuple(shown))


def _findings_section(findings: list[_Finding]) -> str:
    if not findings:
        return '<section class="ok"><h2>No violation</h2></section>'
    items = "".join(
        f"<li><b>{_e(finding.when)}</b>: <span class='violation-text'>{_e(finding.text)}</span>"
        "</li>"
        for finding in findings
    )
    return (
        f'<section class="violations" id="violations"><h2>Violations</h2><ol>{items}</ol></section>'
    )


def _facts_section(
    seed: int, options: SwarmOptions, summary: Mapping[str, object], end: int
) -> str:
    faults = summary.get("faults")
    shown = ", ".join(f"{k} {v}" for k, v in faults.items()) if isinstance(faults, dict) else ""
    rows = [
        ("result", f"{summary.get('result')} (liveness: {summary.get('liveness', '?')})"),
        (
            "cluster",
            f"{options.replica_count} replicas, {options.client_count} clients, "
            f"{options.requests_per_client} requests each, {options.machine}, {options.sizes}",
        ),
        ("ticks", f"{end} (fault phase {options.fault_ticks})"),
        ("committed ops", str(summary.get("committed_ops", "?"))),
        ("faults injected", shown or "none"),
        ("trace digest", str(summary.get("trace_digest", "?"))),
    ]
    table = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    every = json.dumps(options.summary(), sort_keys=True, indent=1)
    return (
        f"<table class='facts'>{table}</table>"
        f"<details><summary>seed {seed}: every swarm option</summary><pre>{_e(every)}</pre>"
        "</details>"
    )


def _window_note(recorder: Recorder, window: _Window, focus: _Focus) -> str:
    return (
        f"<p class='note'>Ticks {window.start} to {window.end}: {len(window.messages)} of the "
        f"{recorder.messages_seen} messages delivered to replicas in the run are drawn, each "
        "as an arrow from its sender's lane to its receiver's at the tick it was delivered: "
        f"those of the {DETAIL_TICKS_MAX} ticks up to {_e(focus.why)}, at most "
        f"{MESSAGES_SHOWN_MAX} of them. Answers to clients are not in the trace: each "
        "operation a client finished is marked on its lane. Hover over anything for "
        "details.</p>"
    )


def _legend() -> str:
    items = [
        ("client", "client request"),
        ("prepare", "Prepare"),
        ("ack", "PrepareOk"),
        ("heartbeat", "Commit"),
        ("view", "view change messages"),
        ("repair", "recovery, repair, state"),
    ]
    swatches = "".join(
        f"<span><i style='background:{COLORS[kind]}'></i>{_e(text)}</span>" for kind, text in items
    )
    return (
        f"<p class='legend'>{swatches}<span>✕ crash, ▲ restart, ◆ view change (filled: "
        "primary), ■ disk damage, ● repair, | commit, ○ client finished (grey: unknown); "
        "shaded: down, paused, partitioned</span></p>"
    )


def _lane_label(node: int, options: SwarmOptions, recorder: Recorder) -> str:
    style = f"height:{LANE_PX}px"
    if node < CLIENT_ID_BASE:
        faulty = " <small>faulty disk</small>" if node in options.atlas.faulty else ""
        return f"<div class='label' style='{style}'>replica r{node}{faulty}</div>"
    known = recorder.client_ids.get(node)
    named = "" if known is None else f" <small title='{known}'>client {known}</small>"
    return f"<div class='label' style='{style}'>c{node}{named}</div>"


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _int(value: object, default: int) -> int:
    return value if isinstance(value, int) else default


def _lane_y(lanes: list[int], node: int, top: int, height: int) -> float:
    return top + lanes.index(node) * height + height / 2


def _overview_svg(
    recorder: Recorder, lanes: list[int], end: int, window: _Window, findings: list[_Finding]
) -> str:
    """The whole run squeezed into one strip: spans, faults, views and the violations."""
    left = 60
    scale = (OVERVIEW_WIDTH_PX - left - 10) / max(end, 1)
    height = AXIS_PX + len(lanes) * OVERVIEW_LANE_PX + 4

    def x(tick: int) -> float:
        return left + tick * scale

    def y(node: int) -> float:
        return _lane_y(lanes, node, AXIS_PX, OVERVIEW_LANE_PX)

    out = [f'<svg class="overview" width="{OVERVIEW_WIDTH_PX}" height="{height}">']
    for tick in _axis_ticks(end, 10):
        out.append(f'<text class="axis" x="{x(tick):.1f}" y="12">{tick}</text>')
    for node in lanes:
        out.append(
            f'<g class="overview-lane"><text x="2" y="{y(node) + 4:.1f}">{_lane_name(node)}'
            f'</text><line x1="{left}" x2="{x(end):.1f}" y1="{y(node):.1f}" y2="{y(node):.1f}"/>'
            "</g>"
        )
    for span in recorder.spans:
        out += _span_rects(span, lanes, x, x(span.end) - x(span.start), AXIS_PX, OVERVIEW_LANE_PX)
    for mark in recorder.marks:
        if mark.kind not in ("commit", "ack", "unknown") and mark.node in lanes:
            out.append(_glyph(mark.kind, x(mark.tick), y(mark.node), mark.text))
    bottom = height - 2
    if recorder.heal_tick is not None:
        out.append(
            f'<line class="heal" x1="{x(recorder.heal_tick):.1f}" '
            f'x2="{x(recorder.heal_tick):.1f}" y1="{AXIS_PX}" y2="{bottom}">'
            "<title>healed: liveness phase</title></line>"
        )
    out.append(
        f'<rect class="window" x="{x(window.start):.1f}" y="{AXIS_PX - 4}" '
        f'width="{max(x(window.end) - x(window.start), 2):.1f}" height="{bottom - AXIS_PX + 4}">'
        "<title>the ticks drawn below</title></rect>"
    )
    for finding in findings:
        out.append(_violation_line(x(finding.tick), AXIS_PX, bottom, finding, labelled=False))
    out.append("</svg>")
    return "\n".join(out)


def _detail_svg(
    recorder: Recorder,
    lanes: list[int],
    window: _Window,
    findings: list[_Finding],
    focus: _Focus,
) -> str:
    """The window near the failure, tick by tick: every message as an arrow."""
    height = AXIS_PX + len(lanes) * LANE_PX
    width = window.width + 40

    def y(node: int) -> float:
        return _lane_y(lanes, node, AXIS_PX, LANE_PX)

    out = [f'<svg class="timeline detail" width="{width}" height="{height}">', _markers()]
    for tick in _axis_ticks(window.end, 50):
        if tick >= window.start:
            out.append(f'<text class="axis" x="{window.x(tick):.1f}" y="12">{tick}</text>')
    for node in lanes:
        out.append(
            f'<g class="lane" data-node="{_lane_name(node)}"><line x1="0" x2="{width}" '
            f'y1="{y(node):.1f}" y2="{y(node):.1f}"/></g>'
        )
    for span in recorder.spans:
        if span.end >= window.start and span.start <= window.end:
            start, stop = max(span.start, window.start), min(span.end, window.end)
            clipped = attrs.evolve(span, start=start, end=stop)
            span_width = window.x(stop) - window.x(start) + DETAIL_TICK_PX
            out += _span_rects(clipped, lanes, window.x, span_width, AXIS_PX, LANE_PX)
    out += _arrows(window, lanes)
    for mark in recorder.marks:
        if window.start <= mark.tick <= window.end and mark.node in lanes:
            out.append(_glyph(mark.kind, window.x(mark.tick), y(mark.node), mark.text))
    for op, tick in focus.ops:
        if window.start <= tick <= window.end:
            x = window.x(tick)
            out.append(
                f'<g class="op-commit"><line x1="{x:.1f}" x2="{x:.1f}" y1="{AXIS_PX}" '
                f'y2="{height}"><title>op {op} first committed at tick {tick}</title></line>'
                f'<text x="{x + 3:.1f}" y="{height - 4}">op {op}</text></g>'
            )
    labelled: set[int] = set()  # one label per tick: the others are listed at the top
    for finding in findings:
        if window.start <= finding.tick <= window.end:
            first = finding.tick not in labelled
            labelled.add(finding.tick)
            x = window.x(finding.tick)
            out.append(_violation_line(x, AXIS_PX, height, finding, labelled=first))
    out.append("</svg>")
    return "\n".join(out)


def _arrows(window: _Window, lanes: list[int]) -> list[str]:
    out: list[str] = []
    at_tick: dict[int, int] = {}  # arrows drawn so far at each tick: spread them a little
    for message in window.messages:
        if message.src not in lanes or message.dst not in lanes:
            continue
        spread = at_tick.get(message.tick, 0)
        at_tick[message.tick] = spread + 1
        x = window.x(message.tick) + (spread % 3 - 1) * (DETAIL_TICK_PX / 3)
        y1 = _lane_y(lanes, message.src, AXIS_PX, LANE_PX)
        y2 = _lane_y(lanes, message.dst, AXIS_PX, LANE_PX)
        y2 += -3 if y2 > y1 else 3  # the head ends on the receiver's lane
        kind = MESSAGE_KINDS.get(message.label.split(" ", 1)[0], "repair")
        about = f"tick {message.tick}: {_lane_name(message.src)} → {_lane_name(message.dst)}"
        out.append(
            f'<line class="msg" x1="{x:.1f}" y1="{y1:.1f}" x2="{x:.1f}" y2="{y2:.1f}" '
            f'stroke="{COLORS[kind]}" marker-end="url(#head-{kind})">'
            f"<title>{_e(about)} {_e(message.label)}</title></line>"
        )
    return out


def _markers() -> str:
    heads = "".join(
        f'<marker id="head-{kind}" viewBox="0 0 6 6" refX="6" refY="3" markerWidth="6" '
        f'markerHeight="6" orient="auto"><path d="M0,0L6,3L0,6z" fill="{COLORS[kind]}"/>'
        "</marker>"
        for kind in ("client", "prepare", "ack", "heartbeat", "view", "repair")
    )
    return f"<defs>{heads}</defs>"


def _span_rects(
    span: Span, lanes: list[int], x: Callable[[int], float], width: float, top: int, lane_px: int
) -> list[str]:
    rects = []
    for node in span.nodes:
        if node in lanes:
            y = top + lanes.index(node) * lane_px + 1
            rects.append(
                f'<rect class="span {span.kind}" x="{x(span.start):.1f}" y="{y}" '
                f'width="{max(width, 1.0):.1f}" height="{lane_px - 2}" '
                f'fill="{COLORS[span.kind]}"><title>{_e(span.text)} (ticks {span.start} to '
                f"{span.end})</title></rect>"
            )
    return rects


def _glyph(kind: str, x: float, y: float, text: str) -> str:
    """A mark's shape on a lane at ``(x, y)``, with ``text`` shown on hover."""
    shapes = {
        "crash": ("path", f'class="crash" d="M{x - 4:.1f},{y - 4:.1f}l8,8m0,-8l-8,8"'),
        "halt": ("rect", f'class="crash" x="{x - 3:.1f}" y="{y - 3:.1f}" width="6" height="6"'),
        "restart": ("path", f'class="restart" d="M{x - 4:.1f},{y + 4:.1f}l4,-8l4,8z"'),
        "disk": ("rect", f'class="disk" x="{x - 3:.1f}" y="{y - 9:.1f}" width="6" height="6"'),
        "view": ("path", f'class="view" d="M{x:.1f},{y - 6:.1f}l5,6l-5,6l-5,-6z"'),
        "primary": ("path", f'class="primary" d="M{x:.1f},{y - 6:.1f}l5,6l-5,6l-5,-6z"'),
        "repair": ("circle", f'class="repair" cx="{x:.1f}" cy="{y - 7:.1f}" r="3"'),
        "commit": ("path", f'class="commit" d="M{x:.1f},{y + 3:.1f}v8"'),
        "ack": ("circle", f'class="ack" cx="{x:.1f}" cy="{y:.1f}" r="4"'),
        "unknown": ("circle", f'class="unknown" cx="{x:.1f}" cy="{y:.1f}" r="4"'),
    }
    tag, attributes = shapes[kind]
    return f"<{tag} {attributes}><title>{_e(text)}</title></{tag}>"


def _violation_line(x: float, top: int, bottom: int, finding: _Finding, *, labelled: bool) -> str:
    text = finding.text
    if len(text) > VIOLATION_SHOWN_CHARS_MAX:
        text = text[: VIOLATION_SHOWN_CHARS_MAX - 1] + "…"
    label = ""
    if labelled:
        label = f'<text class="violation-label" x="{x - 4:.1f}" y="{top + 12}">{_e(text)}</text>'
    return (
        f'<g class="violation"><line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{bottom}">'
        f"<title>{_e(finding.when)}: {_e(finding.text)}</title></line>{label}</g>"
    )


def _axis_ticks(end: int, count: int) -> list[int]:
    """Round ticks for an axis: about ``count`` of them up to ``end`` (``count`` 50 in the
    detail: every 50 ticks)."""
    step = count if count >= 50 else max(1, _round_step(end // max(count, 1)))
    return list(range(0, end + 1, step))


def _round_step(raw: int) -> int:
    for step in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000):
        if step >= raw:
            return step
    return raw


_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 16px 24px; color: #111827; }
h1 { font-size: 20px; } h2 { font-size: 16px; margin: 18px 0 6px; }
code, pre { font: 12px ui-monospace, monospace; }
.violations { border: 2px solid #dc2626; background: #fef2f2; padding: 4px 12px; }
.violations h2 { color: #b91c1c; } .ok { border: 2px solid #16a34a; padding: 4px 12px; }
.facts th { text-align: left; padding-right: 12px; font-weight: 600; }
.note, .legend { color: #374151; max-width: 1100px; }
.legend span { margin-right: 14px; white-space: nowrap; }
.legend i { display: inline-block; width: 14px; height: 4px; margin: 0 4px 3px 0; }
.frame { display: flex; border: 1px solid #d1d5db; max-width: 100%; }
.labels { flex: none; width: 150px; padding-top: 22px; background: #f9fafb;
  border-right: 1px solid #d1d5db; }
.label { display: flex; align-items: center; padding-left: 6px; font-size: 12px; }
.label small { color: #6b7280; margin-left: 4px; overflow: hidden; }
.scroll { overflow-x: auto; flex: 1; }
svg text { font: 10px system-ui, sans-serif; fill: #374151; }
.lane line, .overview-lane line { stroke: #d1d5db; }
.msg { stroke-width: 1.2; }
.crash { stroke: #dc2626; stroke-width: 2; fill: #dc2626; }
.restart { fill: #16a34a; } .disk { fill: #92400e; } .repair { fill: #7c3aed; }
.view { fill: #fff; stroke: #ea580c; stroke-width: 1.5; } .primary { fill: #ea580c; }
.commit { stroke: #16a34a; stroke-width: 1.5; }
.ack { fill: none; stroke: #16a34a; stroke-width: 1.5; }
.unknown { fill: none; stroke: #9ca3af; stroke-width: 1.5; }
.violation line { stroke: #dc2626; stroke-width: 2; }
text.violation-label { fill: #b91c1c; font-weight: 600; text-anchor: end; }
.heal { stroke: #16a34a; stroke-dasharray: 4 3; }
.op-commit line { stroke: #dc2626; stroke-dasharray: 5 3; } .op-commit text { fill: #b91c1c; }
.window { fill: none; stroke: #111827; stroke-dasharray: 3 3; }
"""
