"""Bad configuration: every invalid ``VDB_*`` variable makes ``craton-server`` exit with
status 2 and exactly one line on stderr naming that variable; secrets are never echoed.
Valid values parse to the guide's defaults, and a cluster's peers to addresses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from craton.net.config import (
    Address,
    AuthMode,
    ConfigError,
    LogLevel,
    ReplicationMode,
    load_config,
    parse_address,
    replica_id_from_hostname,
)
from tests.net.support import ServerProcess

SECRET = "s3cr3t-never-shown"
CLUSTER_SECRET = "cluster-secret-never-shown-0123456789"
LONG_SECRET = "jwt-secret-never-shown-0123456789abcdef"
PEERS = "10.0.0.1:5432,10.0.0.2:5432,10.0.0.3:5432"

CASES: list[tuple[str, dict[str, str], str]] = [
    ("data dir missing", {"VDB_DATA_DIR": ""}, "VDB_DATA_DIR"),
    ("address without port", {"VDB_BIND_ADDR": "localhost"}, "VDB_BIND_ADDR"),
    ("port out of range", {"VDB_BIND_ADDR": "127.0.0.1:99999"}, "VDB_BIND_ADDR"),
    ("address without host", {"VDB_METRICS_ADDR": ":9090"}, "VDB_METRICS_ADDR"),
    ("bad ipv6", {"VDB_METRICS_ADDR": "[::zz]:9090"}, "VDB_METRICS_ADDR"),
    ("unknown replication", {"VDB_REPLICATION_MODE": "raft"}, "VDB_REPLICATION_MODE"),
    ("unknown level", {"VDB_LOG_LEVEL": "verbose"}, "VDB_LOG_LEVEL"),
    ("unknown auth", {"VDB_AUTH_MODE": "kerberos"}, "VDB_AUTH_MODE"),
    ("jwt without secret", {"VDB_AUTH_MODE": "jwt"}, "VDB_JWT_SECRET"),
    ("short jwt secret", {"VDB_AUTH_MODE": "jwt", "VDB_JWT_SECRET": SECRET}, "VDB_JWT_SECRET"),
    ("both without secret", {"VDB_AUTH_MODE": "both"}, "VDB_JWT_SECRET"),
    (
        "cluster without secret",
        {"VDB_REPLICATION_MODE": "cluster", "VDB_CLUSTER_PEERS": PEERS},
        "VDB_CLUSTER_SECRET",
    ),
    (
        "short previous jwt secret",
        {"VDB_AUTH_MODE": "jwt", "VDB_JWT_SECRET": LONG_SECRET, "VDB_JWT_SECRET_PREVIOUS": "x"},
        "VDB_JWT_SECRET_PREVIOUS",
    ),
    (
        "short secondary cluster secret",
        {"VDB_CLUSTER_SECRET_SECONDARY": "x"},
        "VDB_CLUSTER_SECRET_SECONDARY",
    ),
    (
        "cluster with a short secret",
        {
            "VDB_REPLICATION_MODE": "cluster",
            "VDB_CLUSTER_PEERS": PEERS,
            "VDB_CLUSTER_SECRET": "x" * 31,
        },
        "VDB_CLUSTER_SECRET",
    ),
    ("cluster without peers", {"VDB_REPLICATION_MODE": "cluster"}, "VDB_CLUSTER_PEERS"),
    (
        "replica id past peers",
        {"VDB_REPLICATION_MODE": "cluster", "VDB_CLUSTER_PEERS": PEERS, "VDB_REPLICA_ID": "3"},
        "VDB_REPLICA_ID",
    ),
    (
        "peer port zero",
        {
            "VDB_REPLICATION_MODE": "cluster",
            "VDB_CLUSTER_PEERS": "10.0.0.1:5432,10.0.0.2:0,10.0.0.3:5432",
        },
        "VDB_CLUSTER_PEERS",
    ),
    (
        "peer listed twice",
        {"VDB_REPLICATION_MODE": "cluster", "VDB_CLUSTER_PEERS": "h:1,h:1"},
        "VDB_CLUSTER_PEERS",
    ),
    ("bad peer", {"VDB_CLUSTER_PEERS": "10.0.0.1:5432,nope"}, "VDB_CLUSTER_PEERS"),
    ("replica id too big", {"VDB_REPLICA_ID": "16"}, "VDB_REPLICA_ID"),
    (
        "single node id",
        {"VDB_REPLICATION_MODE": "single-node", "VDB_REPLICA_ID": "2"},
        "VDB_REPLICA_ID",
    ),
    ("zero connections", {"VDB_MAX_CONNECTIONS": "0"}, "VDB_MAX_CONNECTIONS"),
    ("formed not a flag", {"VDB_CLUSTER_FORMED": "maybe"}, "VDB_CLUSTER_FORMED"),
    ("idle not a number", {"VDB_IDLE_TIMEOUT_SECS": "-1"}, "VDB_IDLE_TIMEOUT_SECS"),
    ("rate not a number", {"VDB_RATE_LIMIT_RPS": "fast"}, "VDB_RATE_LIMIT_RPS"),
    ("rate zero", {"VDB_RATE_LIMIT_RPS": "0"}, "VDB_RATE_LIMIT_RPS"),
    ("tls cert alone", {"VDB_TLS_CERT": "/etc/hostname"}, "VDB_TLS_KEY"),
    ("tls files missing", {"VDB_TLS_CERT": "/no/cert", "VDB_TLS_KEY": "/no/key"}, "VDB_TLS_CERT"),
    ("jwt expiration", {"VDB_JWT_EXPIRATION_SECS": "0"}, "VDB_JWT_EXPIRATION_SECS"),
    ("ordinal, no suffix", {"VDB_REPLICA_ID": "ordinal", "HOSTNAME": "craton"}, "VDB_REPLICA_ID"),
    ("ordinal too big", {"VDB_REPLICA_ID": "ordinal", "HOSTNAME": "db-16"}, "VDB_REPLICA_ID"),
    (
        "ordinal past peers",
        {
            "VDB_REPLICATION_MODE": "cluster",
            "VDB_CLUSTER_PEERS": PEERS,
            "VDB_REPLICA_ID": "ordinal",
            "HOSTNAME": "craton-server-3",
        },
        "VDB_REPLICA_ID",
    ),
]


def run_server(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VDB_")}
    clean.update(env)
    return subprocess.run(
        [sys.executable, "-m", "craton.net.server_main"],
        env=clean,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(("env", "variable"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_bad_variable_is_one_line_and_a_failed_exit(
    tmp_path: Path, env: dict[str, str], variable: str
) -> None:
    result = run_server({"VDB_DATA_DIR": str(tmp_path / "data"), **env})
    lines = result.stderr.splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, f"expected one line, got: {result.stderr!r}"
    assert lines[0].startswith(f"craton-server: {variable}:"), lines[0]
    assert "Traceback" not in result.stderr and SECRET not in result.stderr
    assert not (tmp_path / "data").exists(), "nothing is created before the config is valid"


def test_a_data_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    result = run_server({"VDB_DATA_DIR": str(tmp_path / "file")})
    assert result.returncode == 2 and result.stderr.startswith("craton-server: VDB_DATA_DIR:")


def test_defaults_are_the_guides(tmp_path: Path) -> None:
    config = load_config({"VDB_DATA_DIR": str(tmp_path)})
    assert config.bind_addr == Address("0.0.0.0", 5432)
    assert config.metrics_addr == Address("0.0.0.0", 9090)
    assert (config.max_connections, config.idle_timeout_secs) == (1024, 300)
    assert config.rate_limit_rps is None and not config.tls
    assert config.auth_mode is AuthMode.NONE
    assert (config.jwt.issuer, config.jwt.audience, config.jwt.expiration_secs) == (
        "craton",
        "craton",
        3600,
    )
    assert config.replication_mode is ReplicationMode.NONE and config.replica_id == 0
    assert config.cluster_peers == () and config.log_level is LogLevel.INFO
    assert config.cluster_formed is False


@pytest.mark.parametrize(
    ("text", "expected"), [("true", True), (" YES ", True), ("1", True), ("off", False)]
)
def test_cluster_formed_is_a_flag(tmp_path: Path, text: str, expected: bool) -> None:
    config = load_config({"VDB_DATA_DIR": str(tmp_path), "VDB_CLUSTER_FORMED": text})
    assert config.cluster_formed is expected and config.summary()["cluster_formed"] is expected


def test_values_parse_and_the_summary_hides_the_secret(tmp_path: Path) -> None:
    config = load_config(
        {
            "VDB_DATA_DIR": str(tmp_path),
            "VDB_BIND_ADDR": "[::1]:7000",
            "VDB_RATE_LIMIT_RPS": "2.5",
            "VDB_REPLICATION_MODE": " Single-Node ",
            "VDB_LOG_LEVEL": "WARN",
            "VDB_JWT_SECRET": SECRET,
        }
    )
    assert config.bind_addr == Address("::1", 7000) and str(config.bind_addr) == "[::1]:7000"
    assert config.rate_limit_rps == 2.5 and config.log_level is LogLevel.WARN
    assert config.replication_mode is ReplicationMode.SINGLE_NODE
    assert SECRET not in repr(config) and SECRET not in str(config.summary())


@pytest.mark.parametrize("mode", [AuthMode.JWT, AuthMode.APIKEY, AuthMode.BOTH])
def test_auth_modes_parse_with_a_long_enough_secret(tmp_path: Path, mode: AuthMode) -> None:
    env = {"VDB_DATA_DIR": str(tmp_path), "VDB_AUTH_MODE": mode.value}
    if mode is not AuthMode.APIKEY:
        env["VDB_JWT_SECRET"] = LONG_SECRET
    config = load_config(env)
    assert config.auth_mode is mode
    policy = config.jwt.policy()
    assert (policy is None) == (mode is AuthMode.APIKEY)
    assert LONG_SECRET not in repr(config) and LONG_SECRET not in repr(policy)


@pytest.mark.parametrize("mode", ["none", "apikey"])
def test_a_short_unused_jwt_secret_does_not_stop_the_node(tmp_path: Path, mode: str) -> None:
    # Only jwt and both use VDB_JWT_SECRET; elsewhere a short one is accepted by the
    # configuration, so the node must start with it (not die in a traceback).
    env = {"VDB_AUTH_MODE": mode, "VDB_JWT_SECRET": SECRET, "VDB_JWT_SECRET_PREVIOUS": "x"}
    with ServerProcess(tmp_path / "data", tmp_path / "server.log", **env) as server:
        server.start()
        assert server.stop() == 0, server.tail()
    text = (tmp_path / "server.log").read_text(encoding="utf-8")
    assert "Traceback" not in text and SECRET not in text, text[-2000:]


def test_cluster_mode_parses(tmp_path: Path) -> None:
    config = load_config(
        {
            "VDB_DATA_DIR": str(tmp_path),
            "VDB_REPLICATION_MODE": "cluster",
            "VDB_CLUSTER_PEERS": PEERS,
            "VDB_REPLICA_ID": "2",
            "VDB_CLUSTER_SECRET": CLUSTER_SECRET,
        }
    )
    assert config.replication_mode is ReplicationMode.CLUSTER and config.replica_id == 2
    assert config.cluster_secret == CLUSTER_SECRET.encode()
    assert CLUSTER_SECRET not in repr(config) and CLUSTER_SECRET not in str(config.summary())
    assert config.cluster_peers[2] == Address("10.0.0.3", 5432)
    assert config.summary()["cluster_peers"] == PEERS


@pytest.mark.parametrize("text", ["db.internal:1", "10.0.0.1:0", "[fe80::1]:65535", "a_b:2"])
def test_addresses_that_parse(text: str) -> None:
    assert str(parse_address(text, "X")) == text


@pytest.mark.parametrize("text", ["", ":1", "host:", "host:port", "a b:1", "::1:80", "[::1]80"])
def test_addresses_that_do_not(text: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_address(text, "VDB_X")
    assert str(raised.value).startswith("VDB_X: ")


def test_replica_id_ordinal_comes_from_the_statefulset_host_name(tmp_path: Path) -> None:
    env = {
        "VDB_DATA_DIR": str(tmp_path),
        "VDB_REPLICATION_MODE": "cluster",
        "VDB_CLUSTER_PEERS": PEERS,
        "VDB_REPLICA_ID": " Ordinal ",
        "VDB_CLUSTER_SECRET": CLUSTER_SECRET,
        "HOSTNAME": "craton-server-1",
    }
    assert load_config(env).replica_id == 1, "HOSTNAME craton-server-1 is replica 1"
    chosen = load_config(env, hostname="craton-server-2.craton-server.craton.svc")
    assert chosen.replica_id == 2, "an explicit host name wins, its domain is ignored"
    assert chosen.summary()["replica_id"] == 2, "the start-up log shows the derived id"


@pytest.mark.parametrize(
    ("hostname", "expected"), [("craton-server-0", 0), ("a-b-15", 15), ("x-07.domain", 7)]
)
def test_ordinals_that_parse(hostname: str, expected: int) -> None:
    assert replica_id_from_hostname(hostname) == expected


@pytest.mark.parametrize("hostname", ["craton", "-3", "db-", "db-1x", "db-3a.b", "db-99"])
def test_ordinals_that_do_not(hostname: str) -> None:
    with pytest.raises(ConfigError) as raised:
        replica_id_from_hostname(hostname)
    assert raised.value.variable == "VDB_REPLICA_ID", str(raised.value)
