"""A cluster of real ``craton-server`` processes on loopback, a client workload that records
its history, and the history's check against the committed log on disk.

``LocalCluster`` starts ``size`` processes in cluster mode, each with its own data
directory and a port chosen free beforehand (the replicas must know each other's
addresses before any starts). ``Workload`` runs ``AsyncClient`` writers and readers against
every address, recording each operation's invocation, completion, reply and log position
(an operation whose outcome a client never learned is recorded as unknown, never failed).
``check_linearizable`` reads the committed log back from a data directory and hands both
to the simulator's checker (``craton.sim.linearizability.check_history``) with a fresh
``EventStore`` as the model.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from pathlib import Path

import attrs

from craton.client import AsyncClient, CratonError
from craton.core import event_store
from craton.core.event_store import EventStore, ReplyKind
from craton.core.gateway import READ_CLIENT_ID, replica_client_id
from craton.core.log import SEGMENT_FOLDER, SEGMENT_NAME
from craton.core.record import HEADER_SIZE as RECORD_HEADER_SIZE
from craton.core.record import decode, decode_header
from craton.core.vsr.replica import decode_prepare_body
from craton.core.wire import (
    HEADER_SIZE,
    AppendEventsReply,
    DataClass,
    DecodeError,
    ReadEventsReply,
    encode,
)
from craton.core.wire.codec import AnyMessage
from craton.net.node import SESSIONS_MAX
from craton.sim.checkers import NO_OP, NO_OP_ID_BASE, ClientTableModel, WithNoOps
from craton.sim.linearizability import Committed, Operation, check_history
from tests.net.support import ServerProcess

TENANT = 0  # the one tenant of a node without authentication
CLUSTER_SECRET = "a cluster secret for tests, 32 bytes or more"
READ_BYTES_BASE = 1_000_000  # reads ask for this many bytes plus their number: unique bodies
READ_EVENTS = 8
CLIENT_REQUEST_TIMEOUT_S = 2.0
CLIENT_RETRY_DEADLINE_S = 25.0
WAIT_STEP_S = 0.05


def free_ports(count: int) -> list[int]:
    """Ports that were free on loopback a moment ago (bound together, then released)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class LocalCluster:
    """``size`` replicas on loopback; ``nodes[i]`` is replica ``i``."""

    def __init__(self, folder: Path, size: int = 3, **env: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        env.setdefault("VDB_CLUSTER_SECRET", CLUSTER_SECRET)
        ports = free_ports(size)
        self.addresses = [f"127.0.0.1:{port}" for port in ports]
        peers = ",".join(self.addresses)
        self.nodes = [
            ServerProcess(
                folder / f"data{index}",
                folder / f"node{index}.log",
                VDB_REPLICATION_MODE="cluster",
                VDB_CLUSTER_PEERS=peers,
                VDB_REPLICA_ID=str(index),
                VDB_BIND_ADDR=self.addresses[index],
                **env,
            )
            for index in range(size)
        ]

    def start(self) -> LocalCluster:
        for node in self.nodes:
            node.start(wait_ready=False)
        for node in self.nodes:
            node.wait_for("server.ready")
        return self

    def serving(self, index: int) -> bool:
        """Whether replica ``index`` last said it serves as the primary (from its log)."""
        node = self.nodes[index]
        if node.process is None or node.process.poll() is not None:
            return False
        roles = [
            e["event"]
            for e in node._own_events()
            if e["event"] in ("replica.serving", "replica.not_serving")
        ]
        return bool(roles) and roles[-1] == "replica.serving"

    def wait_primary(self, timeout_s: float = 20.0, *, other_than: int | None = None) -> int:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            serving = [i for i in range(len(self.nodes)) if i != other_than and self.serving(i)]
            if len(serving) == 1:
                return serving[0]
            time.sleep(WAIT_STEP_S)
        raise AssertionError(f"no single primary within {timeout_s} s:\n" + self.tails())

    def stop_all(self) -> dict[int, int]:
        """SIGTERM every running node; each one's commit number as it logged it on exit."""
        commits = {}
        for index, node in enumerate(self.nodes):
            if node.process is not None and node.process.poll() is None:
                assert node.stop() == 0, node.tail()
            stopped = [e for e in node.events() if e["event"] == "server.stopped"]
            if stopped:
                commit = stopped[-1]["commit"]
                assert isinstance(commit, int)
                commits[index] = commit
        return commits

    def tails(self) -> str:
        return "\n".join(f"--- node {i}\n{node.tail(15)}" for i, node in enumerate(self.nodes))

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for node in self.nodes:
            node.__exit__(None, None, None)


async def commits_converge(
    addresses: list[str], timeout_s: float = 20.0, *, tls: ssl.SSLContext | None = None
) -> int:
    """Wait until every replica reports the same commit number; returns it."""
    clients = [AsyncClient(address, retry_deadline_s=5.0, tls=tls) for address in addresses]
    deadline = time.monotonic() + timeout_s
    seen: list[int] = []
    try:
        while time.monotonic() < deadline:
            try:
                seen = [await client.sync() for client in clients]
            except CratonError:
                seen = []
            if seen and len(set(seen)) == 1:
                return seen[0]
            await asyncio.sleep(WAIT_STEP_S)
    finally:
        for client in clients:
            await client.close()
    raise AssertionError(f"commit numbers did not converge within {timeout_s} s: {seen}")


# --- the workload ----------------------------------------------------------------------------


@attrs.define
class Recorded:
    """One operation as its client saw it; ``reply`` and ``position`` once acknowledged."""

    client: int  # replica client id of its writer, or READ_CLIENT_ID for reads
    number: int  # unique in the whole workload
    body: bytes  # the event-store operation
    invoked_ns: int
    completed_ns: int | None = None
    reply: bytes | None = None
    position: int | None = None
    event: tuple[str, bytes] | None = None  # an append's (stream, event)
    first_offset: int | None = None

    @property
    def is_read(self) -> bool:
        return self.client == READ_CLIENT_ID

    def operation(self) -> Operation:
        if self.completed_ns is None:
            return Operation(self.client, self.number, self.body, self.invoked_ns)
        return Operation(
            self.client,
            self.number,
            self.body,
            self.invoked_ns,
            self.completed_ns,
            self.reply,
            self.position,
        )


class Workload:
    """``writers`` clients, each appending unique events to shared streams and reading them
    back, one operation at a time, against all the cluster's addresses."""

    def __init__(self, addresses: list[str], *, writers: int = 4, streams: int = 2) -> None:
        self.addresses = addresses
        self.streams = [f"shared{index}" for index in range(streams)]
        self.history: list[Recorded] = []
        self.failures: list[str] = []
        self._writers = writers
        self._numbers = iter(range(1, 1 << 62))
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._lengths = dict.fromkeys(self.streams, 0)

    @property
    def acknowledged(self) -> int:
        return sum(1 for r in self.history if r.completed_ns is not None and not r.is_read)

    async def start(self) -> None:
        async with self._client() as setup:
            for stream in self.streams:
                await self._create(setup, stream)
        for index in range(self._writers):
            self._tasks.append(asyncio.create_task(self._run(index)))

    async def wait_acknowledged(self, count: int, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.acknowledged < count:
            assert time.monotonic() < deadline, (
                f"only {self.acknowledged} of {count} appends acknowledged after "
                f"{timeout_s} s; failures: {self.failures[-3:]}"
            )
            assert all(not t.done() for t in self._tasks), "a writer stopped early"
            await asyncio.sleep(WAIT_STEP_S)

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.wait(self._tasks, timeout=CLIENT_RETRY_DEADLINE_S + 5)
        for task in self._tasks:
            assert task.done(), "a writer did not stop"
            task.result()

    def _client(self) -> AsyncClient:
        return AsyncClient(
            self.addresses,
            request_timeout_s=CLIENT_REQUEST_TIMEOUT_S,
            retry_deadline_s=CLIENT_RETRY_DEADLINE_S,
        )

    async def _run(self, index: int) -> None:
        async with self._client() as client:
            count = 0
            while not self._stop.is_set():
                count += 1
                stream = self.streams[count % len(self.streams)]
                if count % 4 == 0:
                    await self._read(client, stream)
                else:
                    await self._append(client, stream, f"w{index}-{count}".encode())

    async def _create(self, client: AsyncClient, stream: str) -> None:
        body = event_store.encode_create_stream(TENANT, stream, DataClass.INTERNAL)
        record = self._record(client, body)
        position = await client.create_stream(stream, DataClass.INTERNAL)
        self._done(record, bytes([ReplyKind.STREAM_CREATED]), position.to_bytes(8, "little"))
        record.position = position

    async def _append(self, client: AsyncClient, stream: str, event: bytes) -> None:
        body = event_store.encode_append(TENANT, stream, [event])
        record = self._record(client, body)
        record.event = (stream, event)
        try:
            result = await client.append(stream, [event])
        except CratonError as error:
            self.failures.append(f"append: {error}")
            return  # unknown outcome
        reply = AppendEventsReply(result.first_offset, result.log_position)
        self._done(record, bytes([ReplyKind.EVENTS_APPENDED]), _wire_body(reply))
        record.position, record.first_offset = result.log_position, result.first_offset
        self._lengths[stream] = max(self._lengths[stream], result.first_offset + 1)

    async def _read(self, client: AsyncClient, stream: str) -> None:
        number = next(self._numbers)
        from_offset = max(0, self._lengths[stream] - READ_EVENTS // 2)
        max_bytes = READ_BYTES_BASE + number
        body = event_store.encode_read(TENANT, stream, from_offset, READ_EVENTS, max_bytes)
        record = Recorded(READ_CLIENT_ID, number, body, time.monotonic_ns())
        self.history.append(record)
        try:
            result = await client.read(
                stream, from_offset, max_events=READ_EVENTS, max_bytes=max_bytes
            )
        except CratonError as error:
            self.failures.append(f"read: {error}")
            return
        reply = ReadEventsReply(result.from_offset, result.log_position, result.events)
        self._done(record, bytes([ReplyKind.EVENTS_READ]), _wire_body(reply))
        record.position = result.log_position

    def _record(self, client: AsyncClient, body: bytes) -> Recorded:
        """A write of ``client`` (the node's session for it is ``replica_client_id``)."""
        owner = replica_client_id(TENANT, client.client_id)
        record = Recorded(owner, next(self._numbers), body, time.monotonic_ns())
        self.history.append(record)
        return record

    @staticmethod
    def _done(record: Recorded, kind: bytes, body: bytes) -> None:
        record.completed_ns = time.monotonic_ns()
        record.reply = kind + body


def _wire_body(message: AnyMessage) -> bytes:
    """A message's encoding without its frame header: the event store's reply record."""
    return encode(message, 0)[HEADER_SIZE:]


async def check_acknowledged_appends(addresses: list[str], workload: Workload) -> int:
    """Every acknowledged append's event is at its offset in its stream; returns how many."""
    checked = 0
    async with AsyncClient(addresses, retry_deadline_s=CLIENT_RETRY_DEADLINE_S) as client:
        for stream in workload.streams:
            events: list[bytes] = []
            while True:
                page = await client.read(stream, len(events))
                if not page.events:
                    break
                events.extend(page.events)
            for record in workload.history:
                if record.event is None or record.first_offset is None:
                    continue
                if record.event[0] != stream:
                    continue
                offset = record.first_offset
                assert offset < len(events) and events[offset] == record.event[1], (
                    f"acknowledged {record.event[1]!r} at {stream}[{offset}] is not there"
                )
                checked += 1
    return checked


# --- the committed log -----------------------------------------------------------------------


def read_log(data_dir: Path) -> list[tuple[bytes, bytes]]:
    """Every intact record of a stopped node's log, in position order: (chain hash, body)."""
    first, records = read_log_from(data_dir)
    return records if first == 0 else []


def read_log_from(data_dir: Path) -> tuple[int, list[tuple[bytes, bytes]]]:
    """(first position, every intact record from it on) of a stopped node's log: a log
    that starts at a base (its replica caught up by state sync) starts past 0."""
    folder = data_dir / SEGMENT_FOLDER
    names = sorted(p.name for p in folder.iterdir() if SEGMENT_NAME.match(p.name))
    first: int | None = None
    records: list[tuple[bytes, bytes]] = []
    for name in names:
        data = (folder / name).read_bytes()
        at = 0
        while at + RECORD_HEADER_SIZE <= len(data):
            header = decode_header(data[at : at + RECORD_HEADER_SIZE])
            if first is None:
                first = header.position
            if header.position != first + len(records) or at + header.size > len(data):
                break
            _, body = decode(data[at : at + header.size])
            records.append((header.hash, body))
            at += header.size
    return (0 if first is None else first), records


def logs_agree(logs: list[tuple[int, list[tuple[bytes, bytes]]]], commit: int) -> bool:
    """Whether logs read by ``read_log_from`` hold the same records wherever they overlap
    below ``commit``, and each reaches ``commit``."""
    reference: dict[int, tuple[bytes, bytes]] = {}
    for first, records in logs:
        if first + len(records) < commit:
            return False
        for position in range(first, commit):
            seen = reference.setdefault(position, records[position - first])
            if seen != records[position - first]:
                return False
    return True


def check_linearizable(
    history: list[Recorded], log: list[tuple[bytes, bytes]], commit: int
) -> list[str]:
    """The checker's violations for ``history`` against the first ``commit`` log records."""
    assert len(log) >= commit, f"the log holds {len(log)} records, {commit} were committed"
    writes = {(r.client, r.body): r for r in history if not r.is_read}
    reads = {r.body: r for r in history if r.is_read}
    operations = [record.operation() for record in history]
    committed: list[Committed] = []
    used: set[int] = set()
    applies = ClientTableModel(SESSIONS_MAX)
    for op in range(commit):
        body = decode_prepare_body(log[op][1])
        body = attrs.evolve(body, operation=_at_time_zero(body.operation))
        matched: Recorded | None = None
        if applies(op, body.client_id, body.request_number, body.operation):
            if body.client_id == READ_CLIENT_ID:
                read = reads.get(body.operation)
                if read is not None and _the_execution(read, op, used):
                    matched = read
            else:
                matched = writes.get((body.client_id, body.operation))
                if matched is None:  # a phantom: reported by the checker
                    committed.append(
                        Committed(op, body.client_id, body.request_number, body.operation)
                    )
                    continue
        if matched is None:
            key = NO_OP_ID_BASE + op
            committed.append(Committed(op, body.client_id, key, NO_OP))
            operations.append(Operation(body.client_id, key, NO_OP, 0))
            continue
        used.add(matched.number)
        committed.append(Committed(op, matched.client, matched.number, matched.body))
    return check_history(operations, committed, lambda: WithNoOps(EventStore()))


def _at_time_zero(operation: bytes) -> bytes:
    """An operation as the workload predicts it: the node stamps each request with the time
    it arrived, which no client knows, so the comparison leaves it out."""
    try:
        request = event_store.decode_request(operation)
    except DecodeError:
        return operation
    return event_store.encode_request(attrs.evolve(request, time_ms=0))


def _the_execution(read: Recorded, op: int, used: set[int]) -> bool:
    """A retried read may run more than once; the one that counts is the one whose answer
    the client got (or the first, when it got none). Reads change nothing, so the others
    are no-ops."""
    if read.position is not None:
        return op == read.position
    return read.number not in used
