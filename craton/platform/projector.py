"""Read models in SQLite, projected from the event stream.

The projector pulls commits from the stream in order, from the one after the last it
applied, and applies each in one SQLite transaction that also records the commit's stream
sequence in ``projection_meta``. A commit at or below the recorded sequence is skipped, so
a restart (or a redelivery) neither skips nor applies anything twice. ``rebuild()`` drops
the read models and replays the whole stream; the result equals the incremental one.

Read models: ``users``, ``passkeys``, ``orgs``, ``members``, ``invitations``, ``audit``
(one row per organisation or cluster event: actor, time, kind, data), ``clusters`` and
``cluster_nodes``. The observed health of nodes (``node_health``) is not derived from
events and survives a rebuild.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext, api

from craton.io.clock import SYSTEM_CLOCK, Clock, monotonic_s
from craton.platform.eventstore import STREAM, SUBJECT_PREFIX, Commit, parse_commit

FETCH_BATCH = 256
FETCH_WAIT_S = 1.0
RESUBSCRIBE_PAUSE_S = 0.2
FAILURE_PAUSE_S = 1.0
CONSUMER_INACTIVE_S = 30.0
STOP_TIMEOUT_S = 10.0
STOP_RETRY_S = 0.2
log = logging.getLogger("craton.platform")

READ_MODELS = (
    "users",
    "passkeys",
    "orgs",
    "members",
    "invitations",
    "audit",
    "clusters",
    "cluster_nodes",
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS projection_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS users (
    id TEXT PRIMARY KEY, github_id INTEGER UNIQUE, login TEXT NOT NULL, name TEXT NOT NULL,
    created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS passkeys (
    credential_id TEXT PRIMARY KEY, user_id TEXT NOT NULL, public_key TEXT NOT NULL,
    sign_count INTEGER NOT NULL, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS orgs (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, tenant_id INTEGER NOT NULL,
    created_by TEXT NOT NULL, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS members (
    org_id TEXT NOT NULL, user_id TEXT NOT NULL, role TEXT NOT NULL, since TEXT NOT NULL,
    PRIMARY KEY (org_id, user_id));
CREATE TABLE IF NOT EXISTS invitations (
    org_id TEXT NOT NULL, login TEXT NOT NULL, role TEXT NOT NULL, invited_by TEXT NOT NULL,
    invited_at TEXT NOT NULL, PRIMARY KEY (org_id, login));
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER NOT NULL, idx INTEGER NOT NULL, org_id TEXT NOT NULL, actor TEXT NOT NULL,
    at TEXT NOT NULL, kind TEXT NOT NULL, subject TEXT NOT NULL, data TEXT NOT NULL,
    PRIMARY KEY (seq, idx));
CREATE INDEX IF NOT EXISTS audit_by_org ON audit (org_id, seq);
CREATE TABLE IF NOT EXISTS clusters (
    id TEXT PRIMARY KEY, org_id TEXT NOT NULL, name TEXT NOT NULL, issuer TEXT NOT NULL,
    audience TEXT NOT NULL, secret_sealed TEXT NOT NULL, created_at TEXT NOT NULL,
    removed INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS cluster_nodes (
    cluster_id TEXT NOT NULL, position INTEGER NOT NULL, address TEXT NOT NULL,
    PRIMARY KEY (cluster_id, position));
CREATE TABLE IF NOT EXISTS ready_probe (id INTEGER PRIMARY KEY, at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS node_health (
    cluster_id TEXT NOT NULL, address TEXT NOT NULL, health TEXT NOT NULL, ready TEXT NOT NULL,
    detail TEXT NOT NULL, checked_at TEXT NOT NULL, view INTEGER, lag INTEGER,
    PRIMARY KEY (cluster_id, address));
"""
NODE_HEALTH_ADDED = ("view", "lag")  # columns a database made by an earlier version lacks


def open_database(path: Path | str) -> sqlite3.Connection:
    db = sqlite3.connect(str(path), isolation_level=None)  # transactions are explicit
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA busy_timeout=5000")
    db.executescript(SCHEMA)
    columns = {row[1] for row in db.execute("PRAGMA table_info(node_health)")}
    for column in NODE_HEALTH_ADDED:
        if column not in columns:
            db.execute(f"ALTER TABLE node_health ADD COLUMN {column} INTEGER")
    return db


def applied_seq(db: sqlite3.Connection) -> int:
    row = db.execute("SELECT value FROM projection_meta WHERE key = 'last_seq'").fetchone()
    return int(row[0]) if row else 0


def apply_commit(db: sqlite3.Connection, commit: Commit) -> bool:
    """Apply one commit and record its sequence, atomically; False if already applied."""
    db.execute("BEGIN IMMEDIATE")
    try:
        if commit.seq <= applied_seq(db):
            db.execute("ROLLBACK")
            return False
        for index, event in enumerate(commit.events):
            _apply_event(db, commit, index, event.kind, event.data)
        db.execute(
            "INSERT INTO projection_meta (key, value) VALUES ('last_seq', ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (commit.seq,),
        )
        db.execute("COMMIT")
        return True
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _apply_event(db: sqlite3.Connection, commit: Commit, index: int, kind: str, data: Any) -> None:
    at, key = commit.at, commit.id
    org_id = key if commit.aggregate == "org" else data.get("org_id")
    if org_id is not None:
        db.execute(
            "INSERT INTO audit (seq, idx, org_id, actor, at, kind, subject, data) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                commit.seq,
                index,
                org_id,
                commit.actor,
                at,
                kind,
                f"{commit.aggregate}/{key}",
                json.dumps(_public(data), sort_keys=True),
            ),
        )
    match kind:
        case "UserRegistered":
            db.execute(
                "INSERT INTO users (id, github_id, login, name, created_at) VALUES (?,?,?,?,?)",
                (key, data["github_id"], data["login"], data["name"], at),
            )
        case "UserRenamed":
            db.execute(
                "UPDATE users SET login = ?, name = ? WHERE id = ?",
                (data["login"], data["name"], key),
            )
        case "PasskeyAdded":
            db.execute(
                "INSERT INTO passkeys (credential_id, user_id, public_key, sign_count, created_at)"
                " VALUES (?,?,?,?,?)",
                (data["credential_id"], key, data["public_key"], data["sign_count"], at),
            )
        case "PasskeyUsed":
            db.execute(
                "UPDATE passkeys SET sign_count = ? WHERE credential_id = ?",
                (data["sign_count"], data["credential_id"]),
            )
        case _:
            _apply_org_or_cluster(db, commit, kind, data)


def _apply_org_or_cluster(db: sqlite3.Connection, commit: Commit, kind: str, data: Any) -> None:
    at, key = commit.at, commit.id
    match kind:
        case "OrgCreated":
            db.execute(
                "INSERT INTO orgs (id, name, tenant_id, created_by, created_at) VALUES (?,?,?,?,?)",
                (key, data["name"], data["tenant_id"], data["owner"], at),
            )
            db.execute("INSERT INTO members VALUES (?, ?, 'owner', ?)", (key, data["owner"], at))
        case "MemberInvited":
            db.execute(
                "INSERT INTO invitations VALUES (?, ?, ?, ?, ?)",
                (key, data["login"], data["role"], commit.actor, at),
            )
        case "InvitationAccepted":
            db.execute(
                "DELETE FROM invitations WHERE org_id = ? AND lower(login) = lower(?)",
                (key, data["login"]),
            )
            db.execute(
                "INSERT INTO members VALUES (?, ?, ?, ?)", (key, data["user_id"], data["role"], at)
            )
        case "RoleChanged":
            db.execute(
                "UPDATE members SET role = ? WHERE org_id = ? AND user_id = ?",
                (data["role"], key, data["user_id"]),
            )
        case "MemberRemoved":
            db.execute(
                "DELETE FROM members WHERE org_id = ? AND user_id = ?", (key, data["user_id"])
            )
        case "ClusterRegistered":
            db.execute(
                "INSERT INTO clusters (id, org_id, name, issuer, audience, secret_sealed, "
                "created_at) VALUES (?,?,?,?,?,?,?)",
                (
                    key,
                    data["org_id"],
                    data["name"],
                    data["issuer"],
                    data["audience"],
                    data["secret_sealed"],
                    at,
                ),
            )
            for position, address in enumerate(data["nodes"]):
                db.execute("INSERT INTO cluster_nodes VALUES (?, ?, ?)", (key, position, address))
        case "ClusterRemoved":
            db.execute("UPDATE clusters SET removed = 1 WHERE id = ?", (key,))
        case _:
            raise AssertionError(f"the projector does not know event {kind}")


def _public(data: Any) -> Any:
    """Event data as the audit log shows it: sealed secrets left out."""
    return {k: v for k, v in data.items() if k != "secret_sealed"}


def dump(db: sqlite3.Connection) -> dict[str, list[tuple[Any, ...]]]:
    """Every read model's rows, in a stable order (for comparisons)."""
    return {
        table: [tuple(row) for row in db.execute(f"SELECT * FROM {table} ORDER BY 1, 2")]
        for table in READ_MODELS
    }


async def stop_task(
    task: asyncio.Task[None], timeout_s: float = STOP_TIMEOUT_S, clock: Clock = SYSTEM_CLOCK
) -> None:
    """Cancel ``task`` and wait until it has ended (at most ``timeout_s``, on ``clock``).

    Python 3.11's ``asyncio.wait_for`` (used inside nats-py) can swallow a cancellation
    that arrives as the awaited result does; so the task is cancelled again until it ends.
    """
    deadline_s = monotonic_s(clock) + timeout_s
    while not task.done() and monotonic_s(clock) < deadline_s:
        task.cancel()
        await asyncio.wait({task}, timeout=STOP_RETRY_S)
    if task.done() and not task.cancelled() and task.exception() is not None:
        log.error("a background task ended with %r", task.exception())


class Projector:
    """Keeps the read models in ``db`` up to date with the stream."""

    def __init__(
        self,
        db: sqlite3.Connection,
        js: JetStreamContext,
        stream: str = STREAM,
        fetch_batch: int = FETCH_BATCH,
    ) -> None:
        self.db = db
        self.fetch_batch = fetch_batch
        self.js = js
        self.stream = stream
        self.applied = applied_seq(db)
        self.applied_total = 0
        self.failure: str | None = None
        self._stopping = False
        self._advanced = asyncio.Condition()

    def stop(self) -> None:
        """Ask ``run()`` to return at its next step (``stop_task`` makes sure it does)."""
        self._stopping = True

    def rebuild(self) -> None:
        """Drop the read models; ``run()`` then replays the stream from its start."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        for table in READ_MODELS:
            db.execute(f"DELETE FROM {table}")
        db.execute("DELETE FROM projection_meta")
        db.execute("COMMIT")
        self.applied = 0

    async def run(self) -> None:
        """Project until cancelled. A NATS outage, a lost consumer or a lost delivery ends
        in a new subscription from the last applied commit; any other failure is logged,
        shown by ``failure`` (and so by /ready) and retried after a pause."""
        while not self._stopping:
            try:
                await self._follow()
            except asyncio.CancelledError:
                raise
            except (nats.errors.Error, OSError):
                await asyncio.sleep(RESUBSCRIBE_PAUSE_S)
            except Exception as error:
                self.failure = f"{type(error).__name__}: {error}"
                log.exception("the projector failed; retrying")
                await asyncio.sleep(FAILURE_PAUSE_S)

    async def _stream_state(self) -> tuple[int, int]:
        info = await self.js.stream_info(self.stream)
        return int(info.state.first_seq), int(info.state.last_seq)

    async def _follow(self) -> None:
        _, last = await self._stream_state()
        if self.applied > last:
            # The stream was replaced (deleted and created again): its history is the truth.
            log.error(
                "read models are ahead of the stream (%d > %d): rebuilding", self.applied, last
            )
            self.rebuild()
        config = api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=self.applied + 1,
            ack_policy=api.AckPolicy.NONE,
            inactive_threshold=CONSUMER_INACTIVE_S,
        )
        sub = await self.js.pull_subscribe(f"{SUBJECT_PREFIX}.>", stream=self.stream, config=config)
        try:
            while not self._stopping:
                try:
                    messages = await sub.fetch(self.fetch_batch, timeout=FETCH_WAIT_S)
                except nats.errors.TimeoutError:
                    if (await self._stream_state())[1] > self.applied:
                        return  # commits exist that this consumer does not deliver
                    continue
                for message in messages:
                    seq = int(message.metadata.sequence.stream)
                    if seq <= self.applied:
                        continue
                    if seq != self.applied + 1 and (await self._stream_state())[0] < seq:
                        return  # a delivery was lost: resubscribe from the last applied
                    self.apply(parse_commit(seq, message.data))
                self.failure = None
                await self._notify()
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    def apply(self, commit: Commit) -> None:
        if apply_commit(self.db, commit):
            self.applied_total += 1
        self.applied = max(self.applied, commit.seq)

    async def _notify(self) -> None:
        async with self._advanced:
            self._advanced.notify_all()

    async def wait_for(self, seq: int, timeout_s: float) -> bool:
        """True once commit ``seq`` is applied; False if not within ``timeout_s``."""
        async with self._advanced:
            try:
                await asyncio.wait_for(
                    self._advanced.wait_for(lambda: self.applied >= seq), timeout_s
                )
            except TimeoutError:
                return False
        return True
