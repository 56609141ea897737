"""Every test in tests/deploy is bounded in time (the tools are local binaries and the
nodes run on loopback): a test still running after ``TEST_TIMEOUT_S`` fails."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from craton.client import Client
from tests.deploy.support import ROOT
from tests.net.conftest import time_bound
from tests.net.support import ServerProcess

__all__ = ["time_bound"]


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of TLS files made by scripts/gen-certs (through its Python module)."""
    folder = tmp_path_factory.mktemp("certs")
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_certs.py"), "--out", str(folder)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return folder


@pytest.fixture(scope="session")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A live single-node craton-server on free loopback ports that has answered one
    request of each kind, so its labelled metrics have samples."""
    root = tmp_path_factory.mktemp("node")
    with ServerProcess(root / "data", root / "server.log") as server:
        server.start()
        with Client(server.address) as client:
            client.create_stream("orders")
            client.append("orders", [b"order 1 placed"])
            client.read("orders")
        yield server
        assert server.stop() == 0, server.tail()
