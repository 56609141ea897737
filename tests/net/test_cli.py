"""``craton stream create``, ``append``, ``read`` and ``status`` against a real node, and
their failures: one line on stderr and a distinct exit code each."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

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
    *args: str, stdin: str = "", address: str | None = None, **extra_env: str
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VDB_", "CRATON_"))}
    env.update(extra_env)
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


SECRET = "the cli tests' jwt secret, 32 bytes or more"


def test_token_issue_and_the_apikey_commands(tmp_path: Path) -> None:
    env = {"VDB_AUTH_MODE": "both", "VDB_JWT_SECRET": SECRET}
    with ServerProcess(tmp_path / "data", tmp_path / "server.log", **env) as server:
        server.start()
        issued = craton("token", "issue", "--tenant", "5", "--role", "admin", VDB_JWT_SECRET=SECRET)
        assert issued.returncode == 0, issued.stderr
        admin = issued.stdout.strip()
        anonymous = craton("stream", "create", "s", address=server.address)
        assert anonymous.returncode == 1 and "AUTHENTICATION_FAILED" in anonymous.stderr

        made = craton("apikey", "create", "--role", "member", "--label", "ci",
                      address=server.address, CRATON_TOKEN=admin)  # fmt: skip
        assert made.returncode == 0, made.stderr
        key = made.stdout.strip()
        assert key.startswith("crtn_") and "shown this once" in made.stderr
        key_id = key.split("_")[1]
        assert (
            craton("stream", "create", "s", "--token", key, address=server.address).returncode == 0
        )
        listed = craton("apikey", "list", "--json", address=server.address, CRATON_TOKEN=admin)
        rows = json.loads(listed.stdout)["keys"]
        assert [(r["key_id"], r["role"], r["revoked_op"], r["label"]) for r in rows] == [
            (key_id, "member", None, "ci")
        ]
        assert key not in listed.stdout
        member_list = craton("apikey", "list", "--token", key, address=server.address)
        assert member_list.returncode == 1 and "PERMISSION_DENIED" in member_list.stderr

        revoked = craton("apikey", "revoke", key_id, address=server.address, CRATON_TOKEN=admin)
        assert revoked.returncode == 0 and f"revoked API key {key_id}" in revoked.stdout
        refused = craton("append", "s", "x", "--token", key, address=server.address)
        assert refused.returncode == 1 and refused.stderr.count("\n") == 1
        assert "AUTHENTICATION_FAILED" in refused.stderr and key not in refused.stderr


def test_token_issue_refuses_what_a_node_would_refuse() -> None:
    for env, args, why in [
        ({}, ("--tenant", "1", "--role", "owner"), "VDB_JWT_SECRET"),
        ({"VDB_JWT_SECRET": "short"}, ("--tenant", "1", "--role", "owner"), "VDB_JWT_SECRET"),
        ({"VDB_JWT_SECRET": SECRET}, ("--tenant", "-1", "--role", "owner"), "--tenant"),
        (
            {"VDB_JWT_SECRET": SECRET},
            ("--tenant", "1", "--role", "owner", "--ttl", "9999"),
            "--ttl",
        ),
        ({"VDB_JWT_SECRET": SECRET}, ("--tenant", "1", "--role", "root"), "invalid choice"),
    ]:
        result = craton("token", "issue", *args, **env)
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        assert why in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("replica_id", "cluster_size", "view", "expected"),
    [(0, 1, 0, "single"), (0, 3, 0, "primary"), (1, 3, 0, "backup"), (1, 3, 4, "primary")],
)
def test_status_role_is_the_primary_of_the_nodes_view(
    replica_id: int, cluster_size: int, view: int, expected: str
) -> None:
    from craton.client.commands import role

    assert role(replica_id, cluster_size, view) == expected
