"""The control plane's event history: one JetStream stream, one subject per aggregate.

A command's events are appended as one message (a *commit*) on the aggregate's subject
``platform.events.<kind>.<id>``, with ``Nats-Expected-Last-Subject-Sequence`` set to the
stream sequence of the last commit the command was decided on (0 for a new aggregate).
JetStream refuses the append when another commit landed on that subject in between, so of
two concurrent commands on one aggregate exactly one wins; the loser sees
``ConcurrencyConflict`` and is re-decided by the caller on the newer state.

Every commit carries ``Nats-Msg-Id`` (the command's id): an append that is retried after a
lost acknowledgement or a NATS restart is recognised as a duplicate, never stored twice.
Commit bodies are JSON: ``{"aggregate", "id", "actor", "at", "command_id", "events":
[{"kind", "data"}]}``. The stream keeps everything (no limits): it is the history.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import attrs
import nats.errors
import nats.js.errors
from nats.js import JetStreamContext, api

from craton.io.clock import SYSTEM_CLOCK, Clock, monotonic_s
from craton.platform.domain import Event

STREAM = "PLATFORM_EVENTS"
SUBJECT_PREFIX = "platform.events"
APPEND_DEADLINE_S = 15.0  # keeps retrying (same msg id) through a NATS restart this long
APPEND_ATTEMPT_TIMEOUT_S = 2.0
RETRY_PAUSE_S = 0.1
WRONG_LAST_SEQUENCE = (10071, 10164)  # JetStream's error codes for a failed expectation
JETSTREAM_UNAVAILABLE = 503
COMMIT_BYTES_MAX = 64 * 1024
AGGREGATE_KINDS = ("user", "org", "cluster")
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")

S = TypeVar("S")


class ConcurrencyConflict(Exception):
    """Another commit landed on the aggregate since its state was read."""


class StoreUnavailable(Exception):
    """NATS did not acknowledge the append within ``APPEND_DEADLINE_S``."""


@attrs.frozen
class Commit:
    seq: int
    aggregate: str
    id: str
    actor: str
    at: str
    command_id: str
    events: tuple[Event, ...]

    def body(self) -> bytes:
        return json.dumps(
            {
                "aggregate": self.aggregate,
                "id": self.id,
                "actor": self.actor,
                "at": self.at,
                "command_id": self.command_id,
                "events": [{"kind": e.kind, "data": dict(e.data)} for e in self.events],
            },
            separators=(",", ":"),
            sort_keys=True,
        ).encode()


def parse_commit(seq: int, body: bytes) -> Commit:
    raw = json.loads(body)
    events = tuple(Event(str(e["kind"]), dict(e["data"])) for e in raw["events"])
    return Commit(
        seq, raw["aggregate"], raw["id"], raw["actor"], raw["at"], raw["command_id"], events
    )


def subject_of(aggregate: str, aggregate_id: str) -> str:
    assert aggregate in AGGREGATE_KINDS, aggregate
    assert _ID.fullmatch(aggregate_id), f"aggregate id {aggregate_id!r} is not a subject token"
    return f"{SUBJECT_PREFIX}.{aggregate}.{aggregate_id}"


def valid_id(text: str) -> bool:
    return bool(_ID.fullmatch(text))


class EventStore:
    """Appends commits and reads an aggregate's commits back."""

    def __init__(
        self, js: JetStreamContext, stream: str = STREAM, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.js = js
        self.stream = stream
        self.clock = clock  # measures ``APPEND_DEADLINE_S``

    async def ensure_stream(self) -> None:
        config = api.StreamConfig(
            name=self.stream,
            subjects=[f"{SUBJECT_PREFIX}.>"],
            storage=api.StorageType.FILE,
            retention=api.RetentionPolicy.LIMITS,
            max_msg_size=COMMIT_BYTES_MAX,
            duplicate_window=120.0,
        )
        try:
            await self.js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            await self.js.add_stream(config)

    async def last_seq(self) -> int:
        info = await self.js.stream_info(self.stream)
        return int(info.state.last_seq)

    async def append(self, commit: Commit, expected_seq: int) -> int:
        """Append ``commit`` if the aggregate's last commit is ``expected_seq``; its sequence."""
        subject = subject_of(commit.aggregate, commit.id)
        body = commit.body()
        assert len(body) <= COMMIT_BYTES_MAX, "a commit stays far below the stream's limit"
        headers: dict[str, str] = {
            api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE.value: str(expected_seq),
            api.Header.MSG_ID.value: commit.command_id,
        }
        deadline_s = monotonic_s(self.clock) + APPEND_DEADLINE_S
        attempts = 0
        while True:
            attempts += 1
            try:
                ack = await self.js.publish(
                    subject, body, timeout=APPEND_ATTEMPT_TIMEOUT_S, headers=dict(headers)
                )
                return int(ack.seq)
            except nats.js.errors.APIError as error:
                if error.code == JETSTREAM_UNAVAILABLE and monotonic_s(self.clock) < deadline_s:
                    await asyncio.sleep(RETRY_PAUSE_S)  # JetStream is still starting
                    continue
                if error.err_code not in WRONG_LAST_SEQUENCE:
                    raise
                if attempts > 1:
                    # An earlier attempt may have landed and its acknowledgement been lost.
                    landed = await self._landed(subject, commit.command_id)
                    if landed is not None:
                        return landed
                raise ConcurrencyConflict(subject) from None
            except (
                nats.errors.TimeoutError,
                nats.errors.ConnectionClosedError,
                nats.errors.NoRespondersError,
                nats.js.errors.NoStreamResponseError,
                nats.errors.ConnectionReconnectingError,
            ):
                if monotonic_s(self.clock) > deadline_s:
                    raise StoreUnavailable("NATS did not acknowledge the append") from None
                await asyncio.sleep(RETRY_PAUSE_S)

    async def _landed(self, subject: str, command_id: str) -> int | None:
        try:
            last = await self.js.get_last_msg(self.stream, subject)
        except nats.js.errors.NotFoundError:
            return None
        if last.headers and last.headers.get(api.Header.MSG_ID) == command_id:
            return int(last.seq or 0)
        return None

    async def commits_after(self, aggregate: str, aggregate_id: str, seq: int) -> list[Commit]:
        """The aggregate's commits after stream sequence ``seq``, oldest first."""
        subject = subject_of(aggregate, aggregate_id)
        found: list[Commit] = []
        while True:
            try:
                msg = await self.js.get_msg(self.stream, seq=seq + 1, subject=subject, next=True)
            except nats.js.errors.NotFoundError:
                return found
            assert msg.seq is not None and msg.data is not None
            found.append(parse_commit(int(msg.seq), msg.data))
            seq = int(msg.seq)


@attrs.define
class _Cached(Generic[S]):
    state: S
    seq: int


class Aggregates(Generic[S]):
    """One kind of aggregate's states, folded from its commits and cached by id.

    A cached state may be stale (another process appended since); loading catches up
    from the cached sequence, and the optimistic append catches whatever lands after.
    """

    CACHE_MAX = 10_000

    def __init__(
        self, store: EventStore, kind: str, initial: S, evolve: Callable[[S, Event], S]
    ) -> None:
        self._store = store
        self._kind = kind
        self._initial = initial
        self._evolve = evolve
        self._cache: dict[str, _Cached[S]] = {}

    async def load(self, aggregate_id: str) -> tuple[S, int]:
        cached = self._cache.get(aggregate_id) or _Cached(self._initial, 0)
        for commit in await self._store.commits_after(self._kind, aggregate_id, cached.seq):
            state = cached.state
            for event in commit.events:
                state = self._evolve(state, event)
            cached = _Cached(state, commit.seq)
        if len(self._cache) >= self.CACHE_MAX:
            self._cache.clear()  # a cache, not the truth: reloading is always correct
        self._cache[aggregate_id] = cached
        return cached.state, cached.seq

    def forget(self, aggregate_id: str) -> None:
        self._cache.pop(aggregate_id, None)


def to_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)
