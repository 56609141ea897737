"""``scripts/gen-certs`` and ``scripts/cluster`` for real: the certificates verify against
their CA and serve TLS that a client checking the CA and host name accepts; running it
again rotates the leaves under the same CA; the cluster script forms a cluster that
``craton status`` shows as one primary and two backups, keeps serving when the primary is
stopped, and stops cleanly on Ctrl-C; ``scripts/run platform`` keeps its state in its own
directory, outside the node's."""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from craton.client import Client
from tests.deploy.support import ROOT, run
from tests.net.support import ServerProcess
from tests.platform.support import free_port

GUIDE_SANS = {"craton-server.craton.local", "localhost", "127.0.0.1"}
CLUSTER_START_S = 40.0
VIEW_CHANGE_S = 20.0
STOP_S = 30.0


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def sans(certificate: x509.Certificate) -> set[str]:
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(getattr(name, "value", name)) for name in names}


def test_gen_certs_makes_a_ca_and_the_guides_certificates(certs: Path) -> None:
    ca = load(certs / "ca.crt")
    for stem in ("server", "nats-server", "client"):
        leaf = load(certs / f"{stem}.crt")
        leaf.verify_directly_issued_by(ca)  # raises when not signed by the CA
        assert (certs / f"{stem}.key").stat().st_mode & 0o077 == 0, f"{stem}.key is private"
    assert sans(load(certs / "server.crt")) >= GUIDE_SANS | {
        "*.craton-server.craton.svc.cluster.local",
        "craton-0",
    }
    usage = load(certs / "client.crt").extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert ExtendedKeyUsageOID.CLIENT_AUTH in usage.value


def test_a_node_serves_tls_that_the_ca_and_host_name_verify(certs: Path, tmp_path: Path) -> None:
    env = {"VDB_TLS_CERT": str(certs / "server.crt"), "VDB_TLS_KEY": str(certs / "server.key")}
    with ServerProcess(tmp_path / "data", tmp_path / "server.log", **env) as server:
        server.start()
        trust = ssl.create_default_context(cafile=str(certs / "ca.crt"))  # checks host names
        for host in ("127.0.0.1", "localhost"):
            port = server.address.rpartition(":")[2]
            with Client(f"{host}:{port}", tls=trust) as client:
                assert client.connect().replica_id == 0
        strangers = ssl.create_default_context(cafile=str(certs / "nats-server.crt"))
        host, port = server.address.rpartition(":")[::2]
        with (
            pytest.raises(ssl.SSLCertVerificationError),
            socket.create_connection((host, int(port)), timeout=10) as raw,
            strangers.wrap_socket(raw, server_hostname=host),
        ):
            pass  # a trust without the CA refuses the server's certificate
        assert server.stop() == 0, server.tail()


def test_gen_certs_again_rotates_the_leaves_under_the_same_ca(certs: Path, tmp_path: Path) -> None:
    folder = tmp_path / "certs"
    shutil.copytree(certs, folder)
    script = ROOT / "scripts" / "gen_certs.py"
    result = run(sys.executable, script, "--out", folder, "--san", "db.example.com")
    assert result.returncode == 0, result.stderr
    assert (folder / "ca.crt").read_bytes() == (certs / "ca.crt").read_bytes(), "CA kept"
    server = load(folder / "server.crt")
    assert server.serial_number != load(certs / "server.crt").serial_number, "a new leaf"
    server.verify_directly_issued_by(load(certs / "ca.crt"))
    assert "db.example.com" in sans(server)
    bad = run(sys.executable, script, "--out", folder, "--days", "0")
    assert bad.returncode == 2 and bad.stderr.startswith("gen-certs: --days"), bad.stderr


# --- scripts/cluster -------------------------------------------------------------------------


class ClusterScript:
    """``scripts/cluster.py`` as a developer runs it, its output read line by line (by a
    thread, so a wait is bounded by a timeout)."""

    def __init__(self, folder: Path, *extra: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VDB_")}
        script = str(ROOT / "scripts" / "cluster.py")
        self.process = subprocess.Popen(
            [sys.executable, script, "--dir", str(folder), "--port", "0", *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            text=True,
        )
        self.output: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def read_until(self, pattern: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.output.append(line)
            if re.search(pattern, line):
                return line
        raise AssertionError(f"expected {pattern!r} within {timeout_s} s:\n" + self.text())

    def text(self) -> str:
        return "\n".join(self.output)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=STOP_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def status(address: str) -> dict[str, object]:
    result = run(sys.executable, "-m", "craton", "status", "--json", "--address", address)
    assert result.returncode == 0, result.stderr
    answer: dict[str, object] = json.loads(result.stdout)
    return answer


def roles(addresses: list[str], timeout_s: float) -> Counter[str]:
    """The roles ``craton status`` reports once they settle into one primary."""
    deadline = time.monotonic() + timeout_s
    while True:
        seen = Counter(str(status(address)["role"]) for address in addresses)
        if seen["primary"] == 1 or time.monotonic() > deadline:
            return seen
        time.sleep(0.2)


def test_scripts_cluster_forms_a_cluster_that_survives_a_stopped_primary(
    tmp_path: Path,
) -> None:
    script = ClusterScript(tmp_path / "cluster")
    try:
        script.read_until(r"^cluster ready$", CLUSTER_START_S)
        found = re.findall(r"replica (\d+)\s+pid (\d+)\s+address (\S+)", script.text())
        assert len(found) == 3, script.text()
        pids = {int(index): int(pid) for index, pid, _ in found}
        addresses = {int(index): address for index, _, address in found}
        assert "craton status --address" in script.text(), "it says how to talk to it"
        assert roles(list(addresses.values()), VIEW_CHANGE_S) == {"primary": 1, "backup": 2}
        primary = next(i for i, a in addresses.items() if status(a)["role"] == "primary")
        with Client(list(addresses.values())) as client:
            client.create_stream("orders")
            client.append("orders", [b"before"])
        os.kill(pids[primary], signal.SIGTERM)
        script.read_until(rf"replica {primary} .*exited with status 0; 2 of 3 running", STOP_S)
        backup = tmp_path / "backup"  # docs/DEPLOYMENT.md: copy a stopped replica, verify
        shutil.copytree(tmp_path / "cluster" / f"data{primary}", backup)
        verified = run(sys.executable, "-m", "craton", "verify", backup)
        assert verified.returncode == 0 and verified.stdout.startswith("OK "), verified.stdout
        rest = [a for i, a in addresses.items() if i != primary]
        assert roles(rest, VIEW_CHANGE_S) == {"primary": 1, "backup": 1}, "a new primary"
        with Client(rest, retry_deadline_s=VIEW_CHANGE_S) as client:
            client.append("orders", [b"after"])
            assert list(client.read("orders").events) == [b"before", b"after"]
        script.process.send_signal(signal.SIGINT)  # Ctrl-C
        script.read_until(r"^stopping the cluster$", STOP_S)
        for _ in rest:
            script.read_until(r"^replica \d stopped with status 0$", STOP_S)
        assert script.process.wait(timeout=STOP_S) == 0, script.text()
    finally:
        script.kill()


def test_scripts_cluster_over_tls_with_gen_certs_files(tmp_path: Path, certs: Path) -> None:
    script = ClusterScript(tmp_path / "cluster", "--tls", str(certs))
    try:
        script.read_until(r"^cluster ready$", CLUSTER_START_S)
        addresses = re.findall(r"address (\S+)", script.text())
        assert len(addresses) == 3 and "cafile=" in script.text(), script.text()
        trust = ssl.create_default_context(cafile=str(certs / "ca.crt"))
        with Client(addresses[1], tls=trust) as client:  # a backup: redirected over TLS
            client.create_stream("sealed")
            assert client.append("sealed", [b"over tls"]).first_offset == 0
        script.process.send_signal(signal.SIGINT)
        assert script.process.wait(timeout=STOP_S) == 0, script.text()
    finally:
        script.kill()


def test_the_wrappers_run_the_scripts() -> None:
    for name, module in (("cluster", "cluster.py"), ("gen-certs", "gen_certs.py")):
        wrapper = ROOT / "scripts" / name
        assert os.access(wrapper, os.X_OK), f"scripts/{name} is not executable"
        text = wrapper.read_text()
        assert "_venv.sh" in text and f'exec python "$ROOT/scripts/{module}"' in text, text


# --- scripts/run platform --------------------------------------------------------------------

PLATFORM_START_S = 30.0


def _node_data_dir() -> str:
    """The node's data directory as ``scripts/run`` defaults it."""
    found = re.search(
        r'VDB_DATA_DIR="\$\{VDB_DATA_DIR:-([^}]+)\}"', (ROOT / "scripts/run").read_text()
    )
    assert found, "expected scripts/run to default VDB_DATA_DIR"
    return found.group(1)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status) == 200
    except OSError:
        return False


def test_scripts_run_platform_keeps_its_state_outside_the_nodes_data_dir(tmp_path: Path) -> None:
    """``scripts/run platform`` runs from the repository's root, as ``scripts/run`` does:
    run here from ``tmp_path``, its state lands in ``./platform-data``, and nothing in the
    node's ``./data`` (where earlier versions kept it, and where it is now only pointed at)
    is written."""
    wrapper = (ROOT / "scripts" / "run").read_text()
    assert 'exec python scripts/run_platform.py "$@"' in wrapper, wrapper
    old = tmp_path / "data" / "platform"  # the old location, left by an earlier version
    old.mkdir(parents=True)
    nats_port, github_port, http_port = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLATFORM_", "VDB_"))}
    process = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "scripts" / "run_platform.py"),
            "--nats-port",
            str(nats_port),
            "--github-port",
            str(github_port),
        ],
        cwd=tmp_path,
        env={**env, "PLATFORM_HTTP_ADDR": f"127.0.0.1:{http_port}"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + PLATFORM_START_S
        while not _answers(f"http://127.0.0.1:{http_port}/health"):
            assert process.poll() is None, f"run_platform exited: {process.communicate()[1]}"
            assert time.monotonic() < deadline, "expected platform-app to answer /health"
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=STOP_S)
        assert process.returncode == 0, stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=STOP_S)
    state = tmp_path / "platform-data"
    for name in ("platform.db", "secret-key", "nats"):
        assert (state / name).exists(), (
            f"expected {name} in ./platform-data: {list(state.iterdir())}"
        )
    node_dir = (tmp_path / _node_data_dir()).resolve()
    assert not state.resolve().is_relative_to(node_dir), f"{state} is inside {node_dir}"
    assert list(node_dir.rglob("*")) == [old], "expected nothing written in the node's ./data"
    assert "data/platform (the old location) is not used" in stderr, stderr
    assert "/platform-data/" in (ROOT / ".gitignore").read_text().splitlines()
    assert "./platform-data" in (ROOT / "docs" / "PLATFORM.md").read_text()
