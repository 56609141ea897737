"""``craton stream create``, ``append``, ``read`` and ``status`` against a real node, and
their failures: one line on stderr and a distinct exit code each."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.net.support import ServerProcess


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("cli")
    with ServerProcess(root / "data", root / "server.log") as server:
        server.start()
        yield server
        assert server.stop() == 0, server.tail()


def craton(
    *args: str, stdin: str = "", address: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if address is not None:
        env["CRATON_ADDRESS"] = address
    return subprocess.run(
        [sys.executable, "-m", "craton", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )


def test_create_append_read_and_status(node: ServerProcess) -> None:
    created = craton("stream", "create", "ledger", "--data-class", "pii", address=node.address)
    assert created.returncode == 0 and created.stdout.startswith("created stream ledger")
    appended = craton("append", "ledger", "opened", "credited 10", address=node.address)
    assert appended.returncode == 0, appended.stderr
    assert "appended 2 events to ledger: offset 0..1, log position" in appended.stdout
    position = int(appended.stdout.rsplit(" ", 1)[1])
    piped = craton("append", "ledger", stdin="debited 3\nclosed\n", address=node.address)
    assert piped.returncode == 0 and "offset 2..3" in piped.stdout, piped.stderr

    read = craton("read", "ledger", "--address", node.address)
    assert read.returncode == 0, read.stderr
    assert read.stdout.splitlines() == ["0\topened", "1\tcredited 10", "2\tdebited 3", "3\tclosed"]
    assert "next offset 4" in read.stderr
    past = craton("read", "ledger", "--as-of", str(position), "--json", address=node.address)
    body = json.loads(past.stdout)
    assert [e["text"] for e in body["events"]] == ["opened", "credited 10"]
    assert body["log_position"] == position and body["next_offset"] == 2

    status = craton("status", address=node.address)
    assert status.returncode == 0, status.stderr
    assert "replica 0 of 1, view 0" in status.stdout and "health: ok" in status.stdout
    assert "role: single" in status.stdout, status.stdout
    status_json = json.loads(craton("status", "--json", address=node.address).stdout)
    assert status_json["health"]["status"] == "ok" and status_json["committed"] > position


def test_failures_are_one_line_with_distinct_exit_codes(node: ServerProcess) -> None:
    missing = craton("append", "no-such-stream", "x", address=node.address)
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1
    assert "STREAM_NOT_FOUND" in missing.stderr
    craton("stream", "create", "twice", address=node.address)
    again = craton("stream", "create", "twice", address=node.address)
    assert again.returncode == 1 and "STREAM_ALREADY_EXISTS" in again.stderr
    bad_name = craton("stream", "create", "-bad name", "--address", node.address)
    assert bad_name.returncode == 2 and bad_name.stderr.count("\n") == 1

    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        closed_port = unused.getsockname()[1]
    unreachable = craton("status", "--timeout", "0.5", address=f"127.0.0.1:{closed_port}")
    assert unreachable.returncode == 3 and unreachable.stderr.count("\n") == 1
    assert "cannot connect" in unreachable.stderr and "Traceback" not in unreachable.stderr
    bad_address = craton("status", "--address", "nowhere")
    assert bad_address.returncode == 2 and bad_address.stderr.startswith("craton: --address")


@pytest.mark.parametrize(
    ("replica_id", "cluster_size", "view", "expected"),
    [(0, 1, 0, "single"), (0, 3, 0, "primary"), (1, 3, 0, "backup"), (1, 3, 4, "primary")],
)
def test_status_role_is_the_primary_of_the_nodes_view(
    replica_id: int, cluster_size: int, view: int, expected: str
) -> None:
    from craton.client.commands import role

    assert role(replica_id, cluster_size, view) == expected
