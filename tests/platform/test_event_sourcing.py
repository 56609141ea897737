"""Event sourcing on a real JetStream: optimistic concurrency, the projector's restart and
rebuild, sessions' expiry, and a NATS restart under load."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import nats
import pytest

from craton.platform import domain as d
from craton.platform.eventstore import Commit, ConcurrencyConflict, EventStore
from craton.platform.metrics import PlatformMetrics
from craton.platform.projector import Projector, apply_commit, dump, open_database, stop_task
from craton.platform.service import Platform, Refused
from tests.platform.support import NatsServer, config_for, run, running


async def _platform(tmp: Path, nats_server: NatsServer, name: str) -> Platform:
    folder = tmp / name
    folder.mkdir()
    platform = Platform(config_for(folder, nats_server.url), PlatformMetrics())
    await platform.start()
    return platform


async def _org_with_two_owners(platform: Platform) -> str:
    await platform.org_command("org1", "gh1", d.CreateOrg("acme", 42))
    await platform.org_command("org1", "gh1", d.InviteMember("hubot", d.Role.OWNER))
    await platform.org_command("org1", "gh2", d.AcceptInvitation("hubot"))
    return "org1"


def test_of_two_concurrent_appends_on_one_aggregate_exactly_one_lands(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    async def scenario() -> None:
        platform = await _platform(tmp_path, nats_server, "a")
        try:
            org = await _org_with_two_owners(platform)
            state, seq = await platform.orgs.load(org)
            decisions = [_events(d.decide_org(state, d.RemoveMember(u), u)) for u in ("gh1", "gh2")]
            commits = [
                Commit(0, "org", org, actor, "t", f"cmd-{actor}", tuple(events))
                for actor, events in zip(("gh1", "gh2"), decisions, strict=True)
            ]
            results = await asyncio.gather(
                *(platform.store.append(c, seq) for c in commits), return_exceptions=True
            )
            landed = [r for r in results if isinstance(r, int)]
            lost = [r for r in results if isinstance(r, ConcurrencyConflict)]
            assert len(landed) == 1 and len(lost) == 1, f"expected one winner: {results}"
        finally:
            await platform.stop()

    run(scenario())


def _events(decision: d.Decision) -> list[d.Event]:
    assert isinstance(decision, list), decision
    return decision


def test_two_app_instances_racing_both_owners_out_leave_exactly_one_owner(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    async def scenario() -> None:
        one = await _platform(tmp_path, nats_server, "one")
        two = await _platform(tmp_path, nats_server, "two")
        try:
            org = await _org_with_two_owners(one)
            await two.orgs.load(org)  # both instances hold the same state now
            outcomes = await asyncio.gather(
                one.org_command(org, "gh1", d.RemoveMember("gh1")),
                two.org_command(org, "gh2", d.RemoveMember("gh2")),
                return_exceptions=True,
            )
            refused = [o for o in outcomes if isinstance(o, Refused)]
            assert outcomes.count(None) == 1 and len(refused) == 1, outcomes
            assert refused[0].refusal.code is d.RefusalCode.LAST_OWNER
            state, _ = await one.orgs.load(org)
            assert state.owners() == 1 and len(state.members) == 1
        finally:
            await one.stop()
            await two.stop()

    run(scenario())


async def _append_users(store: EventStore, count: int) -> int:
    last = 0
    for i in range(count):
        events = (d.Event("UserRegistered", {"github_id": i + 1, "login": f"u{i}", "name": ""}),)
        last = await store.append(
            Commit(0, "user", f"gh{i + 1}", f"gh{i + 1}", "t", f"c{i}", events), 0
        )
    for i in range(0, count, 3):
        events = (d.Event("UserRenamed", {"login": f"u{i}", "name": f"User {i}"}),)
        last = await store.append(
            Commit(0, "user", f"gh{i + 1}", "x", "t", f"r{i}", events),
            await _last_of(store, f"gh{i + 1}"),
        )
    return last


async def _last_of(store: EventStore, user: str) -> int:
    commits = await store.commits_after("user", user, 0)
    return commits[-1].seq


def test_projector_restart_mid_stream_neither_skips_nor_doubles_and_rebuild_is_equal(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    async def scenario() -> None:
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        store = EventStore(js)
        await store.ensure_stream()
        last = await _append_users(store, 60)
        db = open_database(tmp_path / "incremental.db")
        first = Projector(db, js, fetch_batch=4)
        task = asyncio.create_task(first.run())
        assert await first.wait_for(20, 10.0)
        await stop_task(task)
        stopped_at = first.applied
        assert 20 <= stopped_at < last, f"expected a stop mid-stream, at {stopped_at} of {last}"
        second = Projector(db, js)  # a restart: resumes from the recorded sequence
        assert second.applied == stopped_at
        task = asyncio.create_task(second.run())
        assert await second.wait_for(last, 10.0)
        await stop_task(task)
        assert first.applied_total + second.applied_total == last, "each commit applied once"
        fresh = open_database(tmp_path / "fresh.db")
        third = Projector(fresh, js)
        task = asyncio.create_task(third.run())
        assert await third.wait_for(last, 10.0)
        await stop_task(task)
        assert dump(db) == dump(fresh), "incremental and from-scratch projections differ"
        assert len(dump(db)["users"]) == 60
        third.rebuild()
        assert dump(fresh)["users"] == []
        task = asyncio.create_task(third.run())
        assert await third.wait_for(last, 10.0)
        await stop_task(task)
        assert dump(db) == dump(fresh), "a rebuild must give the same read models"
        await nc.close()

    run(scenario())


def test_applying_a_commit_twice_changes_nothing(tmp_path: Path) -> None:
    db = open_database(tmp_path / "p.db")
    event = d.Event("OrgCreated", {"name": "acme", "tenant_id": 9, "owner": "gh1"})
    commit = Commit(1, "org", "o1", "gh1", "t", "c1", (event,))
    assert apply_commit(db, commit) is True
    before = dump(db)
    assert apply_commit(db, commit) is False, "a redelivered commit must be skipped"
    assert dump(db) == before
    broken = Commit(2, "org", "o2", "gh1", "t", "c2", (d.Event("Nonsense", {}),))
    with pytest.raises(AssertionError):
        apply_commit(db, broken)
    assert dump(db) == before, "a failed commit leaves nothing behind"
    assert db.execute("SELECT value FROM projection_meta").fetchone()[0] == 1


def test_sessions_expire_after_the_session_ttl(tmp_path: Path, nats_server: NatsServer) -> None:
    async def scenario() -> None:
        async with running(tmp_path, nats_server, PLATFORM_SESSION_TTL_SECS="1") as stack:
            browser = await stack.sign_in("octocat")
            status, _ = await browser.call("GET", "/api/me")
            assert status == 200
            bucket = stack.platform.sessions.sessions
            assert (await bucket.status()).ttl == 1, "the bucket must expire entries itself"
            await asyncio.sleep(1.3)
            status, body = await browser.call("GET", "/api/me")
            assert status == 401, f"expected the session to have expired, got {status} {body}"

    run(scenario())


def test_a_nats_restart_during_commands_loses_no_acknowledged_command(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    async def scenario() -> None:
        async with running(tmp_path, nats_server) as stack:
            browser = await stack.sign_in("octocat")
            acknowledged: list[str] = []
            failures: list[int] = []
            restarted = asyncio.Event()
            after_restart = 0

            async def create() -> None:
                nonlocal after_restart
                i = 0
                while after_restart < 10:
                    i += 1
                    status, body = await browser.call("POST", "/api/orgs", {"name": f"org{i}"})
                    if status == 201:
                        acknowledged.append(body["id"])
                    else:
                        failures.append(status)
                    if restarted.is_set():
                        after_restart += 1

            writer = asyncio.create_task(create())
            while len(acknowledged) < 5:
                await asyncio.sleep(0.01)
            before = len(acknowledged)
            await asyncio.to_thread(nats_server.restart)
            restarted.set()
            await writer
            assert len(acknowledged) >= before + 10, f"expected commands through: {failures}"
            status, me = await browser.call("GET", "/api/me")
            assert status == 200, me
            seen = {org["id"] for org in me["orgs"]}
            missing = [org for org in acknowledged if org not in seen]
            assert not missing, f"acknowledged organisations lost: {missing}"
            db = sqlite3.connect(tmp_path / "platform.db")
            count = db.execute("SELECT count(*) FROM orgs").fetchone()[0]
            assert count >= len(acknowledged)

    run(scenario())


def test_the_projector_recovers_from_a_deleted_consumer_and_a_replaced_stream(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    async def scenario() -> None:
        async with running(tmp_path, nats_server) as stack:
            browser = await stack.sign_in("octocat")
            status, _ = await browser.call("POST", "/api/orgs", {"name": "first"})
            assert status == 201
            js = stack.platform.store.js
            for consumer in await js.consumers_info("PLATFORM_EVENTS"):
                await js.delete_consumer("PLATFORM_EVENTS", consumer.name)
            status, body = await browser.call("POST", "/api/orgs", {"name": "second"})
            assert status == 201, f"expected the write projected after losing the consumer: {body}"
            await js.delete_stream("PLATFORM_EVENTS")
            await stack.platform.store.ensure_stream()
            projector = stack.platform.projector
            for _ in range(100):
                if projector.applied == 0:
                    break
                await asyncio.sleep(0.05)
            assert projector.applied == 0, "read models ahead of a new stream must be rebuilt"
            assert dump(stack.platform.database)["orgs"] == []

    run(scenario())
