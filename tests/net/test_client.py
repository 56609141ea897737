"""The client against scripted nodes: retries keep the client id and request id, redirects
are followed, writes go one at a time, deadlines hold, errors are typed.

A ``ScriptedNode`` is a small asyncio server speaking frames, whose answer to each request
is chosen by the test, and which records every request it saw.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable

import attrs
import pytest

from craton.client import (
    AccessDenied,
    AsyncClient,
    AuthenticationFailed,
    Client,
    ConnectionFailed,
    InvalidArgument,
    NotPrimary,
    RateLimited,
    RequestRejected,
    RequestTimeout,
    RetryableError,
    SessionExpired,
    StreamError,
    StreamNotFound,
    Unavailable,
)
from craton.client.aio import AppendResult
from craton.client.errors import error_class
from craton.core.auth import Role
from craton.core.wire import (
    AppendEvents,
    AppendEventsReply,
    ErrorCode,
    ErrorReply,
    FrameDecoder,
    Handshake,
    HandshakeReply,
    decode_frame,
    encode,
)
from craton.core.wire.codec import AnyMessage
from craton.core.wire.messages import AUTH_TOKEN_SIZE_MAX, EVENT_SIZE_MAX

Answer = AnyMessage | None  # None: close the connection without answering
Script = Callable[["ScriptedNode", AnyMessage], Awaitable[Answer]]


@attrs.define
class Seen:
    connection: int
    client_id: int
    request_id: int
    message: AnyMessage
    at_s: float


class ScriptedNode:
    def __init__(self, script: Script, *, cluster_size: int = 1) -> None:
        self.script = script
        self.cluster_size = cluster_size
        self.seen: list[Seen] = []
        self.connections = 0
        self.address = ""
        self._server: asyncio.Server | None = None

    async def start(self) -> ScriptedNode:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.address = f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()

    def requests(self) -> list[Seen]:
        return [s for s in self.seen if not isinstance(s.message, Handshake)]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        connection, client_id, decoder = self.connections, 0, FrameDecoder()
        try:
            while data := await reader.read(65536):
                decoder.feed(data)
                while (frame := decoder.next_frame()) is not None:
                    message = decode_frame(frame)
                    if isinstance(message, Handshake):
                        client_id = message.client_id
                    self.seen.append(
                        Seen(connection, client_id, frame.request_id, message, time.monotonic())
                    )
                    if isinstance(message, Handshake):
                        answer: Answer = HandshakeReply(1, "test", 0, self.cluster_size, 0)
                    else:
                        answer = await self.script(self, message)
                    if answer is None:
                        writer.close()
                        return
                    writer.write(encode(answer, frame.request_id))
        finally:
            writer.close()


APPENDED = AppendEventsReply(7, 42)


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 20))


def test_a_dropped_connection_is_retried_with_the_same_ids() -> None:
    async def script(node: ScriptedNode, message: AnyMessage) -> Answer:
        return None if node.connections == 1 else APPENDED

    async def scenario() -> None:
        node = await ScriptedNode(script).start()
        async with AsyncClient(node.address, retry_deadline_s=5) as client:
            result = await client.append("s", [b"e"])
        assert (result.first_offset, result.log_position) == (7, 42)
        appends = node.requests()
        assert len(appends) == 2 and appends[0].connection != appends[1].connection
        assert appends[0].request_id == appends[1].request_id
        assert appends[0].client_id == appends[1].client_id == client.client_id
        await node.stop()

    run(scenario)


def test_not_primary_redirects_to_the_named_primary() -> None:
    async def primary_script(node: ScriptedNode, message: AnyMessage) -> Answer:
        return APPENDED

    async def scenario() -> None:
        primary = await ScriptedNode(primary_script).start()

        async def backup_script(node: ScriptedNode, message: AnyMessage) -> Answer:
            return ErrorReply(ErrorCode.NOT_PRIMARY, "not the primary", primary.address)

        backup = await ScriptedNode(backup_script).start()
        async with AsyncClient(backup.address, retry_deadline_s=5) as client:
            result = await client.append("s", [b"e"])
            assert result.log_position == 42 and client.info is not None
            assert client.info.address == primary.address
        assert backup.requests()[0].request_id == primary.requests()[0].request_id
        assert backup.requests()[0].client_id == primary.requests()[0].client_id
        await primary.stop()
        await backup.stop()

    run(scenario)


def test_unavailable_moves_to_another_replica_only_in_a_cluster() -> None:
    async def cut_off(node: ScriptedNode, message: AnyMessage) -> Answer:
        return ErrorReply(ErrorCode.UNAVAILABLE, "view change in progress", None)

    async def serving(node: ScriptedNode, message: AnyMessage) -> Answer:
        return APPENDED

    async def scenario() -> None:
        stuck = await ScriptedNode(cut_off, cluster_size=3).start()
        primary = await ScriptedNode(serving, cluster_size=3).start()
        addresses = [stuck.address, primary.address]
        async with AsyncClient(addresses, retry_deadline_s=5) as client:
            assert (await client.append("s", [b"e"])).log_position == 42
        assert len(stuck.requests()) == 1 and len(primary.requests()) == 1
        alone = await ScriptedNode(cut_off).start()  # a single node: retry it, not the other
        other = await ScriptedNode(serving).start()
        async with AsyncClient([alone.address, other.address], retry_deadline_s=1.0) as client:
            with pytest.raises(Unavailable):
                await client.append("s", [b"e"])
        assert len(alone.requests()) >= 2 and not other.requests()
        for node in (stuck, primary, alone, other):
            await node.stop()

    run(scenario)


def test_retryable_errors_are_retried_and_final_ones_raised_at_once() -> None:
    async def script(node: ScriptedNode, message: AnyMessage) -> Answer:
        assert isinstance(message, AppendEvents)
        if message.stream == "missing":
            return ErrorReply(ErrorCode.STREAM_NOT_FOUND, "no such stream", None)
        limited = [s for s in node.requests() if s.message == message]
        if len(limited) <= 2:
            return ErrorReply(ErrorCode.RATE_LIMITED, "slow down", None)
        return APPENDED

    async def scenario() -> None:
        node = await ScriptedNode(script).start()
        async with AsyncClient(node.address, retry_deadline_s=5) as client:
            assert (await client.append("busy", [b"e"])).log_position == 42
            assert len({s.request_id for s in node.requests()}) == 1, "one id for all tries"
            before = len(node.requests())
            with pytest.raises(StreamNotFound):
                await client.append("missing", [b"e"])
            assert len(node.requests()) == before + 1, "a final error is not retried"
        await node.stop()

    run(scenario)


def test_the_retry_deadline_bounds_every_call() -> None:
    async def silent(node: ScriptedNode, message: AnyMessage) -> Answer:
        await asyncio.sleep(30)
        return APPENDED

    async def limited(node: ScriptedNode, message: AnyMessage) -> Answer:
        return ErrorReply(ErrorCode.RATE_LIMITED, "slow down", None)

    async def scenario() -> None:
        for script, expected in ((silent, RequestTimeout), (limited, RateLimited)):
            node = await ScriptedNode(script).start()
            client = AsyncClient(node.address, request_timeout_s=0.2, retry_deadline_s=0.8)
            started = time.monotonic()
            with pytest.raises(expected):
                await client.append("s", [b"e"])
            assert time.monotonic() - started < 3.0
            await client.close()
            await node.stop()

    run(scenario)


def test_writes_of_one_client_go_one_at_a_time_and_reads_do_not_wait() -> None:
    async def script(node: ScriptedNode, message: AnyMessage) -> Answer:
        await asyncio.sleep(0.1)
        return APPENDED

    async def scenario() -> None:
        node = await ScriptedNode(script).start()
        async with AsyncClient(node.address) as client:
            await asyncio.gather(*(client.append("s", [b"%d" % n]) for n in range(3)))
        appends = node.requests()
        gaps = [b.at_s - a.at_s for a, b in itertools.pairwise(appends)]
        assert all(gap >= 0.09 for gap in gaps), f"a write overtook another: gaps {gaps}"
        ids = [s.request_id for s in appends]
        assert ids == sorted(ids), "writes carry increasing request ids"
        await node.stop()

    run(scenario)


def test_a_refused_handshake_raises_its_typed_error() -> None:
    async def scenario() -> None:
        async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(65536)
            reply = ErrorReply(ErrorCode.AUTHENTICATION_FAILED, "bad token", None)
            writer.write(encode(reply, 0))
            writer.close()

        server = await asyncio.start_server(refuse, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(AuthenticationFailed):
            await AsyncClient(f"127.0.0.1:{port}", retry_deadline_s=2).connect()
        server.close()

    run(scenario)


def test_the_blocking_client_wraps_the_same_behaviour() -> None:
    async def script(node: ScriptedNode, message: AnyMessage) -> Answer:
        return ErrorReply(ErrorCode.STREAM_NOT_FOUND, "no such stream", None)

    def scenario(address: str) -> None:
        with Client(address, retry_deadline_s=2) as client, pytest.raises(StreamNotFound):
            client.append("s", [b"e"])

    async def host() -> None:
        node = await ScriptedNode(script).start()
        await asyncio.get_running_loop().run_in_executor(None, scenario, node.address)
        await node.stop()

    run(host)


@pytest.mark.parametrize("code", list(ErrorCode), ids=lambda c: c.name)
def test_every_error_code_has_its_class_and_family(code: ErrorCode) -> None:
    cls = error_class(code)
    assert cls.code == code
    families = (RequestRejected, AccessDenied, StreamError, SessionExpired, RetryableError)
    assert sum(issubclass(cls, family) for family in families) == 1
    assert cls.retryable == issubclass(cls, RetryableError)
    assert issubclass(error_class(ErrorCode.NOT_PRIMARY), NotPrimary)


@pytest.mark.parametrize("address", ["nowhere", "host:", ":5432", "host:0", "host:70000"])
def test_malformed_addresses_are_refused_up_front(address: str) -> None:
    with pytest.raises(InvalidArgument, match="address: expected host:port"):
        AsyncClient(address)
    with pytest.raises(InvalidArgument):
        AsyncClient(["127.0.0.1:5432", address])


SECRET_LOOKING = "s3cr3t-" * 1200  # printable, but longer than a token may be


@pytest.mark.parametrize(
    "options",
    [
        {"address": []},
        {"auth_token": ""},
        {"auth_token": "has a space"},
        {"auth_token": SECRET_LOOKING},
        {"client_id": 0},
        {"client_id": 2**128},
        {"retry_deadline_s": 0.0},
        {"connect_timeout_s": -1.0},
        {"first_connect_deadline_s": 0.0},
    ],
    ids=repr,
)
def test_a_bad_client_option_is_an_invalid_argument(options: dict[str, object]) -> None:
    assert len(SECRET_LOOKING) > AUTH_TOKEN_SIZE_MAX
    arguments: dict[str, object] = {"address": "127.0.0.1:5432", **options}
    for client_class in (AsyncClient, Client):
        with pytest.raises(InvalidArgument) as raised:
            client_class(**arguments)  # type: ignore[arg-type]
        assert isinstance(raised.value, ValueError), "InvalidArgument is also a ValueError"
        assert "s3cr3t" not in str(raised.value), "a token is never quoted in an error"


BAD_CALLS: dict[str, Callable[[AsyncClient], Awaitable[object]]] = {
    "empty stream name": lambda c: c.create_stream(""),
    "stream name with a space": lambda c: c.create_stream("two words"),
    "stream name too long": lambda c: c.create_stream("s" * 129),
    "region outside its pattern": lambda c: c.create_stream("s", region="Upper Case"),
    "append to a bad stream name": lambda c: c.append("-leading-dash", [b"e"]),
    "append of no events": lambda c: c.append("s", []),
    "event over the size limit": lambda c: c.append("s", [b"x" * (EVENT_SIZE_MAX + 1)]),
    "negative expected offset": lambda c: c.append("s", [b"e"], expected_offset=-1),
    "read of a bad stream name": lambda c: c.read("a/b"),
    "negative offset": lambda c: c.read("s", -1),
    "no events asked for": lambda c: c.read("s", 0, max_events=0),
    "negative log position": lambda c: c.read_as_of("s", -1),
    "label with a newline": lambda c: c.create_api_key(Role.VIEWER, label="one\ntwo"),
    "key id zero": lambda c: c.revoke_api_key(0),
}


@pytest.mark.parametrize("call", BAD_CALLS.values(), ids=BAD_CALLS.keys())
def test_a_call_the_protocol_does_not_allow_raises_before_anything_is_sent(
    call: Callable[[AsyncClient], Awaitable[object]],
) -> None:
    async def answer(node: ScriptedNode, message: AnyMessage) -> Answer:
        return APPENDED

    async def scenario() -> None:
        node = await ScriptedNode(answer).start()
        client = AsyncClient(node.address)
        with pytest.raises(InvalidArgument) as raised:
            await call(client)
        assert isinstance(raised.value, ValueError)
        assert node.connections == 0, "a call refused up front opens no connection"
        await client.close()
        await node.stop()

    run(scenario)


def test_an_append_too_large_for_one_frame_is_refused_and_the_client_goes_on() -> None:
    async def answer(node: ScriptedNode, message: AnyMessage) -> Answer:
        return APPENDED

    async def scenario() -> None:
        node = await ScriptedNode(answer).start()
        client = AsyncClient(node.address)
        with pytest.raises(InvalidArgument, match="frame"):
            await client.append("s", [b"x" * EVENT_SIZE_MAX] * 17)  # each fits; all do not
        assert await client.append("s", [b"small"]) == AppendResult(7, 42)
        appends = [seen.message for seen in node.requests()]
        assert len(appends) == 1, f"expected only the small append to be sent, saw {appends}"
        await client.close()
        await node.stop()

    run(scenario)


def test_a_client_that_never_reached_a_node_gives_up_at_its_first_connect_deadline() -> None:
    async def scenario() -> None:
        node = await ScriptedNode(lambda node, message: asyncio.sleep(0, APPENDED)).start()
        address = node.address
        await node.stop()  # nothing listens there now
        client = AsyncClient(address, retry_deadline_s=60.0, first_connect_deadline_s=0.3)
        started = time.monotonic()
        with pytest.raises(ConnectionFailed, match="cannot connect"):
            await client.sync()
        elapsed_s = time.monotonic() - started
        assert elapsed_s < 10.0, "expected to give up near 0.3 s, not the 60 s retry deadline"
        await client.close()

    run(scenario)


def test_a_client_that_reached_a_node_retries_until_its_retry_deadline() -> None:
    """A node that goes away after it answered (a restart, a failover) is waited for for the
    whole retry deadline, however short the first-connect deadline."""

    async def answer(node: ScriptedNode, message: AnyMessage) -> Answer:
        return APPENDED

    async def hang_up(node: ScriptedNode, message: AnyMessage) -> Answer:
        assert node._server is not None
        node._server.close()  # nothing listens there any more,
        return None  # and this connection closes without an answer

    async def scenario() -> None:
        node = await ScriptedNode(hang_up).start()
        client = AsyncClient(node.address, retry_deadline_s=15.0, first_connect_deadline_s=0.1)
        await client.connect()
        host, port = node.address.rsplit(":", 1)

        async def restart_later() -> ScriptedNode:
            await asyncio.sleep(0.6)  # well past the first-connect deadline
            again = ScriptedNode(answer)
            again._server = await asyncio.start_server(again._serve, host, int(port))
            return again

        restarted = asyncio.ensure_future(restart_later())
        assert await client.append("s", [b"e"]) == AppendResult(7, 42)
        again = await restarted
        first, retried = node.requests()[0], again.requests()[0]
        assert (retried.client_id, retried.request_id) == (first.client_id, first.request_id)
        await client.close()
        await again.stop()

    run(scenario)
