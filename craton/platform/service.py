"""The control plane's shell: NATS, the event store, the projector, sessions, commands.

``Platform.start()`` connects to NATS (reconnecting forever, so an outage is waited out),
makes sure the stream and buckets exist, opens SQLite and starts the projector and the
node poller. A command goes: load the aggregate, decide (pure), append with the expected
last sequence, and on a conflict load again and re-decide (at most ``CONFLICT_RETRIES``
times); once appended, it waits for the projector to apply it, so the caller's next read
sees its own write. Queries read SQLite.

Time comes only from the platform's ``Clock`` (``clock``, the system's by default): the
stamps of commits and health rows, the uptime, session expiry, the sign-in rate limit and
every deadline; the platform hands it to its sessions, event store and HTTP app.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sqlite3
import ssl
import uuid
import zlib
from collections.abc import Callable
from typing import Any, TypeVar

import aiohttp
import nats
from nats.aio.client import Client as NatsClient

from craton.io.clock import SYSTEM_CLOCK, Clock, iso_utc_ms, monotonic_s
from craton.platform import domain as d
from craton.platform.config import NatsTls, PlatformConfig
from craton.platform.eventstore import (
    Aggregates,
    Commit,
    ConcurrencyConflict,
    EventStore,
)
from craton.platform.fleet import poll_node
from craton.platform.metrics import PlatformMetrics
from craton.platform.projector import Projector, open_database, stop_task
from craton.platform.sessions import Sessions

CONFLICT_RETRIES = 8
CONFLICT_PAUSE_S = 0.01
AGGREGATE_LOCK_STRIPES = 256
PROJECTION_WAIT_S = 10.0
NATS_CONNECT_TIMEOUT_S = 2.0
NATS_RECONNECT_WAIT_S = 0.25
NATS_START_ATTEMPTS = 8
JS_TIMEOUT_S = 5.0
S = TypeVar("S")
log = logging.getLogger("craton.platform")


class Refused(Exception):
    """A command or request was refused; carries the domain's refusal."""

    def __init__(self, refusal: d.Refusal) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal


class ProjectionBehind(Exception):
    """The command was recorded, but the read models did not show it in time."""


def nats_tls_context(settings: NatsTls) -> ssl.SSLContext:
    """The client side of TLS to NATS: verify its certificate (against ``ca_file`` or the
    system's CAs) and present ours when one is configured."""
    context = ssl.create_default_context(
        cafile=None if settings.ca_file is None else str(settings.ca_file)
    )
    if settings.cert_file is not None and settings.key_file is not None:
        context.load_cert_chain(str(settings.cert_file), str(settings.key_file))
    return context


def now_iso(clock: Clock) -> str:
    """``clock``'s wall-clock time, ISO 8601 in UTC with milliseconds (events, health rows)."""
    return iso_utc_ms(clock.realtime_ns())


class Platform:
    def __init__(
        self, config: PlatformConfig, metrics: PlatformMetrics, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.clock = clock  # the platform's one source of time, handed to the parts it builds
        self.nc: NatsClient | None = None
        self.db: sqlite3.Connection | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._locks = [asyncio.Lock() for _ in range(AGGREGATE_LOCK_STRIPES)]
        self._closing = False
        self.started_s = monotonic_s(clock)

    async def start(self) -> None:
        settings = self.config.nats_tls
        self.nc = await nats.connect(
            servers=list(self.config.nats_urls),
            tls=None if settings is None else nats_tls_context(settings),
            connect_timeout=NATS_CONNECT_TIMEOUT_S,
            reconnect_time_wait=NATS_RECONNECT_WAIT_S,
            max_reconnect_attempts=NATS_START_ATTEMPTS,
            allow_reconnect=True,
            error_cb=self._nats_error,
            disconnected_cb=self._nats_disconnected,
            reconnected_cb=self._nats_reconnected,
        )
        # Start-up gives up after a few tries (one clear failure); once connected, an outage
        # is waited out for as long as it lasts.
        self.nc.options["max_reconnect_attempts"] = -1
        js = self.nc.jetstream(timeout=JS_TIMEOUT_S)
        self.store = EventStore(js, clock=self.clock)
        await self.store.ensure_stream()
        self.sessions = Sessions(js, self.config.session_ttl_secs, self.clock)
        await self.sessions.open()
        self.db = open_database(self.config.sqlite_path)
        self.projector = Projector(self.db, js)
        self.users = Aggregates(self.store, "user", d.UserState(), d.evolve_user)
        self.orgs = Aggregates(self.store, "org", d.OrgState(), d.evolve_org)
        self.clusters = Aggregates(self.store, "cluster", d.ClusterState(), d.evolve_cluster)
        self.http = aiohttp.ClientSession()
        self._tasks.append(asyncio.create_task(self.projector.run(), name="projector"))
        self._tasks.append(asyncio.create_task(self._poll_forever(), name="poller"))

    async def stop(self) -> None:
        self._closing = True
        if getattr(self, "projector", None) is not None:
            self.projector.stop()
        for task in self._tasks:
            await stop_task(task, clock=self.clock)
        self._tasks.clear()
        if getattr(self, "http", None) is not None:
            await self.http.close()
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.close()
        if self.db is not None:
            self.db.close()

    async def _nats_error(self, error: Exception) -> None:
        log.warning("nats: %s", type(error).__name__)

    async def _nats_disconnected(self) -> None:
        if not self._closing:
            log.warning("nats: disconnected; reconnecting")

    async def _nats_reconnected(self) -> None:
        log.warning("nats: reconnected")

    @property
    def database(self) -> sqlite3.Connection:
        assert self.db is not None, "Platform.start() first"
        return self.db

    # --- Commands ----------------------------------------------------------------------------

    async def execute(
        self,
        aggregates: Aggregates[S],
        kind: str,
        aggregate_id: str,
        actor: str,
        decide: Callable[[S], d.Decision],
    ) -> list[d.Event]:
        """Decide and append, re-deciding on conflicts; the events appended (maybe none).

        Commands on one aggregate from this process take turns (a striped lock), so only
        another process's commands can conflict; those are re-decided after a short,
        random pause.
        """
        stripe = zlib.crc32(f"{kind}/{aggregate_id}".encode()) % AGGREGATE_LOCK_STRIPES
        async with self._locks[stripe]:
            return await self._execute(aggregates, kind, aggregate_id, actor, decide)

    async def _execute(
        self,
        aggregates: Aggregates[S],
        kind: str,
        aggregate_id: str,
        actor: str,
        decide: Callable[[S], d.Decision],
    ) -> list[d.Event]:
        for attempt in range(CONFLICT_RETRIES):
            if attempt:
                await asyncio.sleep(random.uniform(0, CONFLICT_PAUSE_S * attempt))
            state, seq = await aggregates.load(aggregate_id)
            decision = decide(state)
            if isinstance(decision, d.Refusal):
                self.metrics.commands.labels(kind, "refused").inc()
                raise Refused(decision)
            if not decision:
                return []
            commit = Commit(
                0, kind, aggregate_id, actor, now_iso(self.clock), uuid.uuid4().hex, tuple(decision)
            )
            try:
                landed = await self.store.append(commit, seq)
            except ConcurrencyConflict:
                self.metrics.commands.labels(kind, "conflict").inc()
                continue
            self.metrics.commands.labels(kind, "accepted").inc()
            if not await self.projector.wait_for(landed, PROJECTION_WAIT_S):
                raise ProjectionBehind(landed)
            return decision
        raise Refused(d.Refusal(d.RefusalCode.CONFLICT, "too many concurrent changes; retry"))

    async def sign_in_github(self, github_id: int, login: str, name: str) -> str:
        user_id = f"gh{github_id}"
        command = d.SignInWithGithub(github_id, login, name)
        await self.execute(
            self.users, "user", user_id, user_id, lambda state: d.decide_user(state, command)
        )
        return user_id

    async def org_command(self, org_id: str, actor: str, command: d.OrgCommand) -> None:
        await self.execute(
            self.orgs, "org", org_id, actor, lambda state: d.decide_org(state, command, actor)
        )

    async def cluster_command(
        self, org_id: str, cluster_id: str, actor: str, command: d.ClusterCommand
    ) -> None:
        org, _ = await self.orgs.load(org_id)
        role = org.role_of(actor) if org.exists else None
        await self.execute(
            self.clusters,
            "cluster",
            cluster_id,
            actor,
            lambda state: d.decide_cluster(state, command, role),
        )

    # --- Queries -----------------------------------------------------------------------------

    def rows(self, sql: str, *params: Any) -> list[dict[str, Any]]:
        return [dict(row) for row in self.database.execute(sql, params)]

    def role_in(self, org_id: str, user_id: str) -> d.Role | None:
        row = self.database.execute(
            "SELECT role FROM members WHERE org_id = ? AND user_id = ?", (org_id, user_id)
        ).fetchone()
        return d.Role.parse(row[0]) if row else None

    # --- Fleet -------------------------------------------------------------------------------

    async def _poll_forever(self) -> None:
        while not self._closing:
            with contextlib.suppress(sqlite3.Error):
                await self.poll_once()
            await asyncio.sleep(self.config.health_poll_secs)

    async def poll_once(self) -> None:
        nodes = self.rows(
            "SELECT n.cluster_id, n.address FROM cluster_nodes n JOIN clusters c "
            "ON c.id = n.cluster_id WHERE c.removed = 0 ORDER BY 1, n.position"
        )
        seen = await asyncio.gather(*(poll_node(self.http, n["address"]) for n in nodes))
        checked_at = now_iso(self.clock)
        db = self.database
        db.execute("BEGIN IMMEDIATE")
        for node, health in zip(nodes, seen, strict=True):
            self.metrics.polls.labels(health.ready).inc()
            db.execute(
                "INSERT INTO node_health (cluster_id, address, health, ready, detail, "
                "checked_at, view, lag) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT "
                "(cluster_id, address) DO UPDATE SET health = excluded.health, "
                "ready = excluded.ready, detail = excluded.detail, "
                "checked_at = excluded.checked_at, view = excluded.view, lag = excluded.lag",
                (
                    node["cluster_id"],
                    node["address"],
                    health.health,
                    health.ready,
                    health.detail,
                    checked_at,
                    health.view,
                    health.lag,
                ),
            )
        db.execute("COMMIT")

    # --- Readiness ---------------------------------------------------------------------------

    async def readiness(self) -> dict[str, tuple[bool, str]]:
        checks: dict[str, tuple[bool, str]] = {}
        connected = self.nc is not None and self.nc.is_connected
        checks["nats"] = (connected, "" if connected else "not connected to NATS")
        try:
            self.database.execute(
                "INSERT INTO ready_probe (id, at) VALUES (1, ?) "
                "ON CONFLICT (id) DO UPDATE SET at = excluded.at",
                (now_iso(self.clock),),
            )
            checks["sqlite"] = (True, "")
        except sqlite3.Error as error:
            checks["sqlite"] = (False, f"SQLite is not writable: {error}")
        checks["projections"] = await self._projection_check(connected)
        return checks

    async def _projection_check(self, connected: bool) -> tuple[bool, str]:
        if not connected:
            return False, "cannot compare with the stream while NATS is away"
        try:
            async with asyncio.timeout(1.0):
                last = await self.store.last_seq()
        except (TimeoutError, nats.errors.Error) as error:
            return False, f"stream state unavailable: {type(error).__name__}"
        if self.projector.failure is not None:
            return False, f"the projector is failing: {self.projector.failure}"
        lag = max(0, last - self.projector.applied)
        self.metrics.projection_lag.set(lag)
        if lag > READY_LAG_COMMITS_MAX:
            return False, f"projections are {lag} commits behind the stream"
        return True, ""


READY_LAG_COMMITS_MAX = 100
