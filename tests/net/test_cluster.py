"""Cluster mode on real processes: three ``craton-server`` replicas on loopback, each with
its own data directory, started and stopped by PID.

- kill -9 of the primary under load: the others elect a new primary and keep serving
  (clients follow the redirects), the old primary rejoins and catches up, no acknowledged
  append is lost, and the whole client history is linearizable against the committed log
  (the simulator's checker, with the event store as the model);
- SIGTERM of a backup under load: it exits 0 promptly, the other two keep serving, and on
  restart it catches up; nothing acknowledged is lost;
- a backup answers requests with ``NOT_PRIMARY`` and the primary's address, which the
  client follows; replica hellos without a proof of the cluster secret (none, a wrong
  secret, made for another replica, tampered, replayed) are refused with
  ``AUTHENTICATION_FAILED`` and counted, proven ones that claim an impossible identity
  are refused; probes and replication metrics say what each replica is doing;
- with TLS configured, replicas connect to each other over TLS.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import ssl
import time
from pathlib import Path

from craton.client import Client
from craton.core.peer_auth import make_proof
from craton.core.wire import (
    AppendEvents,
    Command,
    ErrorCode,
    ErrorReply,
    Handshake,
    HandshakeReply,
    Sync,
    SyncReply,
)
from craton.core.wire.frame import encode_frame
from craton.net.peers import PEER_MARKER, hello_client_id
from tests.net.cluster_support import (
    CLUSTER_SECRET,
    LocalCluster,
    Workload,
    check_acknowledged_appends,
    check_linearizable,
    commits_converge,
    logs_agree,
    read_log,
    read_log_from,
)
from tests.net.support import RawConnection, ServerProcess, http_get
from tests.net.test_lifecycle import verify
from tests.net.test_tls import self_signed

SHUTDOWN_BOUND_S = 12.0  # the node's grace (10 s) and the process's exit
RECONNECT_BOUND_S = 5.0  # a replica's back-off is at most 1 s
PEERS_UP_TIMEOUT_S = 15.0  # every link up again, on a machine busy with other work


def test_kill_9_of_the_primary_under_load(tmp_path: Path) -> None:
    with LocalCluster(tmp_path) as cluster:
        cluster.start()
        first = cluster.wait_primary()
        workload = Workload(cluster.addresses)

        async def scenario() -> int:
            await workload.start()
            await workload.wait_acknowledged(60)
            await asyncio.to_thread(cluster.nodes[first].kill9)
            killed_at = workload.acknowledged
            await workload.wait_acknowledged(killed_at + 60)
            second = await asyncio.to_thread(cluster.wait_primary, other_than=first)
            assert second != first
            await asyncio.to_thread(cluster.nodes[first].start)  # ready: it rejoined
            await workload.wait_acknowledged(workload.acknowledged + 30)
            await workload.stop()
            assert await check_acknowledged_appends(cluster.addresses, workload) > 150
            return await commits_converge(cluster.addresses)  # the old primary caught up

        commit = asyncio.run(scenario())
        views = [_metric(n.metrics_address, "vdb_replication_view_number") for n in cluster.nodes]
        assert len(set(views)) == 1 and views[0] >= 1, f"views after the failover: {views}"
        commits = cluster.stop_all()
    assert set(commits.values()) == {commit}, commits
    # The old primary may have caught up by state sync (its log then starts at that state):
    # the logs are compared where they overlap, and the history against a whole log.
    logs = [read_log_from(node.data_dir) for node in cluster.nodes]
    assert logs_agree(logs, commit), [(first, len(records)) for first, records in logs]
    whole = next(records for first, records in logs if first == 0)
    violations = check_linearizable(workload.history, whole, commit)
    assert not violations, "\n".join(violations)
    for node in cluster.nodes:
        verify(node.data_dir)


def test_replicas_talk_over_tls_when_the_node_has_it(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)  # one certificate for the cluster, naming 127.0.0.1
    env = {"VDB_TLS_CERT": str(cert), "VDB_TLS_KEY": str(key)}
    trust = ssl.create_default_context(cafile=str(cert))
    with LocalCluster(tmp_path / "cluster", **env) as cluster:
        cluster.start()
        primary = cluster.wait_primary()
        backup = (primary + 1) % 3
        with Client(cluster.addresses[backup], tls=trust, retry_deadline_s=10) as client:
            client.create_stream("sealed")
            for number in range(20):
                client.append("sealed", [b"over tls %d" % number])
            assert client.info is not None and client.info.replica_id == primary
        asyncio.run(commits_converge(cluster.addresses, tls=trust))
        for index, node in enumerate(cluster.nodes):
            # A link that broke while the machine was busy is redialled after a backoff.
            others = [p for p in range(3) if p != index]
            deadline = time.monotonic() + PEERS_UP_TIMEOUT_S
            while (up := _peers_up(node.metrics_address)) != others:
                assert time.monotonic() < deadline, f"replica {index}: peers up {up}, {others}"
                time.sleep(0.1)
        plain = RawConnection(cluster.addresses[backup])  # a plain-text hello gets nowhere
        plain.send(Handshake(1, hello_client_id(primary, 3), None), 1)
        assert plain.closed_by_peer()
        plain.close()
        # TLS and the secret, but no certificate of the cluster: not a replica (mutual TLS)
        uncertified = RawConnection(cluster.addresses[backup], tls=trust)
        hello_id = hello_client_id(primary, 3)
        uncertified.send(Handshake(1, hello_id, proof(hello_id, backup)), 1)
        request_id, refused = uncertified.receive()
        assert request_id == 0 and isinstance(refused, ErrorReply), refused
        assert refused.code == ErrorCode.AUTHENTICATION_FAILED and "certificate" in refused.message
        assert uncertified.closed_by_peer()
        uncertified.close()
        failures = _metric(cluster.nodes[backup].metrics_address, "vdb_peer_auth_failures_total")
        assert failures == 1, f"expected the uncertified hello counted, got {failures}"
        commits = cluster.stop_all()
    assert len(commits) == 3 and len(set(commits.values())) == 1, commits


def _peers_up(address: str) -> list[int]:
    metrics = http_get(address, "/metrics")[2].decode()
    return [p for p in range(3) if f'connected{{peer="{p}"}} 1.0' in metrics]


def _metric(address: str, name: str) -> float:
    status, _, body = http_get(address, "/metrics")
    assert status == 200
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} is not in /metrics of {address}")


def test_sigterm_of_a_backup_under_load_loses_nothing(tmp_path: Path) -> None:
    with LocalCluster(tmp_path) as cluster:
        cluster.start()
        primary = cluster.wait_primary()
        backup = (primary + 1) % len(cluster.nodes)
        node = cluster.nodes[backup]
        workload = Workload(cluster.addresses)

        async def scenario() -> int:
            await workload.start()
            await workload.wait_acknowledged(60)
            started = time.monotonic()
            node.signal(signal.SIGTERM)
            status = await asyncio.to_thread(node.wait, SHUTDOWN_BOUND_S)
            assert status == 0, node.tail()
            assert time.monotonic() - started < SHUTDOWN_BOUND_S
            await workload.wait_acknowledged(workload.acknowledged + 60)  # two of three serve
            lag = _metric(cluster.nodes[primary].metrics_address, "vdb_replication_lag_records")
            assert lag >= 60, f"the primary counts {lag} ops its stopped backup lacks"
            await asyncio.to_thread(node.start)
            await workload.wait_acknowledged(workload.acknowledged + 30)
            await workload.stop()
            assert await check_acknowledged_appends(cluster.addresses, workload) > 150
            return await commits_converge(cluster.addresses)  # the backup caught up

        commit = asyncio.run(scenario())
        assert cluster.wait_primary() == primary, "the primary kept its role throughout"
        for each in cluster.nodes:  # caught up, as every replica sees it
            _wait_metric(each.metrics_address, "vdb_replication_lag_records", 0.0)
        stopped = [e for e in node.events() if e["event"] == "server.stopped"]
        assert len(stopped) == 1 and stopped[0]["clean"] is True
        commits = cluster.stop_all()
    assert set(commits.values()) == {commit}, commits
    # A backup that caught up by state sync (past op 1,024 its peers released their
    # journals) holds a log that starts at that state: compared where the logs overlap.
    logs = [read_log_from(n.data_dir) for n in cluster.nodes]
    assert logs[primary][0] == 0, "the primary's log starts at op 0"
    assert logs_agree(logs, commit), [(first, len(records)) for first, records in logs]
    violations = check_linearizable(workload.history, logs[primary][1], commit)
    assert not violations, "\n".join(violations)
    verify(node.data_dir)


def proof(client_id: int, receiver: int, secret: bytes = CLUSTER_SECRET.encode()) -> str:
    return make_proof(secret, client_id, receiver, time.time_ns() // 1_000_000, os.urandom(16))


def test_backups_redirect_and_replica_hellos_are_checked(tmp_path: Path) -> None:
    with LocalCluster(tmp_path / "cluster") as cluster:
        cluster.start()
        primary = cluster.wait_primary()
        backup = (primary + 1) % 3
        at_backup = RawConnection(cluster.addresses[backup])
        at_backup.send(Handshake(1, 0xFEED, None), 1)
        _, hello = at_backup.receive()
        assert isinstance(hello, HandshakeReply)
        assert (hello.replica_id, hello.cluster_size) == (backup, 3)
        at_backup.send(AppendEvents("s", (b"x",), None), 2)
        request_id, refused = at_backup.receive()
        assert request_id == 2 and isinstance(refused, ErrorReply)
        assert refused.code == ErrorCode.NOT_PRIMARY
        assert refused.primary_address == cluster.addresses[primary]
        at_backup.close()

        with Client(cluster.addresses[backup], retry_deadline_s=10) as client:
            client.create_stream("redirected")
            assert client.append("redirected", [b"followed"]).first_offset == 0
            assert client.info is not None and client.info.replica_id == primary

        own = cluster.addresses[backup]
        for claimed, size in ((backup, 3), (3, 3), (7, 8), (primary, 4)):
            raw = RawConnection(own)  # proven, but an identity that cannot be
            client_id = PEER_MARKER << 64 | size << 8 | claimed
            raw.send(Handshake(1, client_id, proof(client_id, backup)), 1)
            request_id, refused = raw.receive()
            assert request_id == 0 and isinstance(refused, ErrorReply), (claimed, size)
            assert refused.code == ErrorCode.INVALID_REQUEST and raw.closed_by_peer()
            raw.close()
        reserved = RawConnection(own)
        reserved_id = hello_client_id(primary, 3) | 1 << 20
        reserved.send(Handshake(1, reserved_id, proof(reserved_id, backup)), 1)
        assert reserved.receive()[0] == 0 and reserved.closed_by_peer()
        reserved.close()

        genuine_id = hello_client_id(primary, 3)
        genuine = proof(genuine_id, backup)
        unproven = [
            None,  # a fake peer that knows no secret
            proof(genuine_id, backup, b"not the cluster's secret, 32 B.."),
            proof(genuine_id, primary),  # made for another replica
            genuine.replace("crtnpeer.v1.", "crtnpeer.v1.1"),  # tampered time
        ]
        for token in unproven:
            fake = RawConnection(own)
            fake.send(Handshake(1, genuine_id, token), 1)
            request_id, refused = fake.receive()
            assert request_id == 0 and isinstance(refused, ErrorReply), token
            assert refused.code == ErrorCode.AUTHENTICATION_FAILED, refused
            assert fake.closed_by_peer()
            fake.close()
        failures = _metric(cluster.nodes[backup].metrics_address, "vdb_peer_auth_failures_total")
        assert failures == len(unproven), f"expected {len(unproven)} counted, got {failures}"

        posing = RawConnection(own)  # a hello that checks out, then a client's frame
        posing.send(Handshake(1, genuine_id, genuine), 5)
        request_id, accepted = posing.receive()
        assert request_id == 5 and isinstance(accepted, HandshakeReply)
        assert accepted.replica_id == backup
        posing.send_bytes(encode_frame(Command.SYNC, 6, b""))
        request_id, refused = posing.receive()
        assert request_id == 0 and isinstance(refused, ErrorReply) and posing.closed_by_peer()
        posing.close()
        replayed = RawConnection(own)  # the same proof again: refused
        replayed.send(Handshake(1, genuine_id, genuine), 1)
        request_id, refused = replayed.receive()
        assert isinstance(refused, ErrorReply) and refused.code == ErrorCode.AUTHENTICATION_FAILED
        assert "used before" in refused.message and replayed.closed_by_peer()
        replayed.close()

        for index, node in enumerate(cluster.nodes):
            status, _, body = http_get(node.metrics_address, "/ready")
            ready = json.loads(body)
            assert status == 200 and ready["checks"]["replication"]["status"] == "ok", ready
            # The impostor replaced the primary's connection to the backup for a moment;
            # the primary reconnects after its back-off.
            deadline = time.monotonic() + RECONNECT_BOUND_S
            while True:
                metrics = http_get(node.metrics_address, "/metrics")[2].decode()
                up = [p for p in range(3) if f'connected{{peer="{p}"}} 1.0' in metrics]
                if up == [p for p in range(3) if p != index]:
                    break
                assert time.monotonic() < deadline, f"replica {index} is connected to {up}"
                time.sleep(0.05)
            assert f'vdb_replication_messages_dropped_total{{peer="{primary}"}}' in metrics or (
                index == primary
            )
        assert _metric(cluster.nodes[primary].metrics_address, "vdb_replication_lag_records") >= 0

        with Client(cluster.addresses[primary]) as client:  # the real replicas still agree
            client.append("redirected", [b"after the impostor"])
        assert cluster.stop_all()

    single = ServerProcess(tmp_path / "single", tmp_path / "single.log")
    with single:
        single.start()
        raw = RawConnection(single.address)
        raw.send(Handshake(1, hello_client_id(1, 3), None), 1)
        request_id, refused = raw.receive()
        assert request_id == 0 and isinstance(refused, ErrorReply)
        assert "not in cluster mode" in refused.message and raw.closed_by_peer()
        raw.close()
        sync = RawConnection(single.address)  # ordinary clients are unaffected
        sync.send(Handshake(1, 0xAB, None), 1)
        assert isinstance(sync.receive()[1], HandshakeReply)
        sync.send(Sync(), 2)
        assert isinstance(sync.receive()[1], SyncReply)
        sync.close()
        assert single.stop() == 0


def _wait_metric(address: str, name: str, value: float) -> None:
    deadline = time.monotonic() + RECONNECT_BOUND_S
    while (seen := _metric(address, name)) != value:
        assert time.monotonic() < deadline, f"{name} of {address} is {seen}, expected {value}"
        time.sleep(0.05)


def test_a_hello_recorded_before_a_restart_is_refused_after_it(tmp_path: Path) -> None:
    # One replica of a three-replica cluster is enough: hellos are checked before anything
    # else, whether or not a primary is known.
    with LocalCluster(tmp_path / "cluster") as cluster:
        node = cluster.nodes[0]
        node.start(wait_ready=False)
        node.wait_for("server.listening")
        sender = hello_client_id(1, 3)
        recorded = proof(sender, 0)  # as someone on the path would have captured it
        assert node.stop() == 0, node.tail()
        node.start(wait_ready=False)
        node.wait_for("server.listening")
        replayed = RawConnection(node.address)
        replayed.send(Handshake(1, sender, recorded), 1)
        request_id, refused = replayed.receive()
        assert isinstance(refused, ErrorReply), f"the recorded hello was accepted: {refused}"
        assert request_id == 0 and refused.code == ErrorCode.AUTHENTICATION_FAILED, refused
        assert "before this replica started" in refused.message, refused.message
        assert replayed.closed_by_peer()
        replayed.close()
        fresh = RawConnection(node.address)
        fresh.send(Handshake(1, sender, proof(sender, 0)), 1)
        assert isinstance(fresh.receive()[1], HandshakeReply), "a new hello is accepted"
        fresh.close()


def test_a_replica_whose_disk_was_lost_rejoins_once_the_cluster_has_formed(
    tmp_path: Path,
) -> None:
    """With ``VDB_CLUSTER_FORMED=true`` a replica that finds a blank data directory knows it
    lost its disk: it rejoins through a quorum (never as a new, empty member), and then
    counts in the quorum again."""
    with LocalCluster(tmp_path) as cluster:
        cluster.start()
        primary = cluster.wait_primary()
        lost, other = (primary + 1) % 3, (primary + 2) % 3
        with Client(cluster.addresses[primary], retry_deadline_s=10) as client:
            client.create_stream("kept")
            for number in range(20):
                client.append("kept", [b"before %d" % number])
        asyncio.run(commits_converge(cluster.addresses))
        node = cluster.nodes[lost]
        assert node.stop() == 0
        shutil.rmtree(node.data_dir)
        node.env["VDB_CLUSTER_FORMED"] = "true"
        node.start(wait_ready=False)
        recovering = node.wait_for("replica.recovering")
        assert recovering["reason"] == "wiped", recovering
        node.wait_for("replica.recovered")
        asyncio.run(commits_converge(cluster.addresses))
        assert cluster.nodes[other].stop() == 0  # from now on the primary needs `lost`'s ack
        with Client(cluster.addresses[primary], retry_deadline_s=15) as client:
            reply = client.append("kept", [b"after"])
            assert reply.first_offset == 20, reply
            events = client.read("kept", max_events=30).events
        assert list(events) == [b"before %d" % n for n in range(20)] + [b"after"], events
        commits = cluster.stop_all()
    commit = commits[primary]  # a backup learns the last commit number later: its log counts
    logs = {index: read_log(cluster.nodes[index].data_dir) for index in (primary, lost)}
    assert len(logs[lost]) >= commit, (commits, len(logs[lost]))
    assert logs[lost][:commit] == logs[primary][:commit], "the rejoined replica's log differs"
    verify(cluster.nodes[lost].data_dir)
