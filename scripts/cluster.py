"""A Craton cluster on one machine: ``--replicas`` (3) ``craton-server`` processes in
``cluster`` mode on loopback, each with its own data directory under ``--dir``.

    python scripts/cluster.py [--dir cluster-data] [--replicas 3] [--port 5441]
                              [--metrics-port 9091] [--tls CERT_DIR] [--fresh]

Replica ``i`` listens on ``--port + i`` (clients and replicas) and ``--metrics-port + i``
(``/health``, ``/ready``, ``/metrics``); ``--port 0`` picks free ports. Its data is in
``DIR/data<i>`` and its log (JSON lines) in ``DIR/node<i>.log``; the data is kept between
runs (``--fresh`` removes those folders and logs first); once a run has formed the cluster,
later runs start every replica with ``VDB_CLUSTER_FORMED=true``, so a replica whose folder
was removed rejoins as one that lost its disk. ``--tls CERT_DIR`` serves TLS with
``CERT_DIR/server.crt`` and ``server.key`` (``scripts/gen-certs``); replicas then reach each
other over TLS too. Replicas prove membership with ``VDB_CLUSTER_SECRET``: taken from the
environment when set, else drawn once and kept in ``DIR/cluster.secret`` (mode 0600), so
that the replicas of later runs share it.

Once every replica logged ``server.ready`` it prints the cluster (one ``replica`` line
each), how to talk to it, and ``cluster ready``. A replica that stops (``kill PID``) is
reported and the others go on serving: a majority is enough. ``Ctrl-C`` or ``SIGTERM``
stops every replica with ``SIGTERM`` and waits for each to shut down cleanly. Exit status:
0 when every replica that was still running stopped cleanly; 1 when a replica did not start
or did not stop cleanly; 2 for bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

START_TIMEOUT_S = 30.0
STOP_GRACE_S = 20.0  # craton-server's own shutdown grace is 10 s
POLL_S = 0.1
REPLICAS_MAX = 16
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def free_ports(count: int) -> list[int]:
    """Ports free on loopback a moment ago (bound together, then released)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class Replica:
    def __init__(self, index: int, folder: Path, address: str, metrics: str) -> None:
        self.index = index
        self.data_dir = folder / f"data{index}"
        self.log_path = folder / f"node{index}.log"
        self.address = address
        self.metrics = metrics
        self.process: subprocess.Popen[bytes] | None = None
        self.reported = False  # its exit was reported

    def start(self, env: dict[str, str]) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "craton.net.server_main"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # Ctrl-C reaches this script, which stops them in turn
            )

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def events(self, since: int) -> list[str]:
        """Event names this run logged (the log file may hold earlier runs' lines)."""
        names = []
        with self.log_path.open("rb") as log:
            log.seek(since)
            for line in log:
                try:
                    names.append(str(json.loads(line).get("event", "")))
                except (ValueError, AttributeError):
                    continue
        return names

    def tail(self, lines: int = 8) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join("    " + line for line in text.splitlines()[-lines:])


def cluster_secret(folder: Path) -> str:
    """``$VDB_CLUSTER_SECRET``, else the one kept in ``folder`` (made on first use)."""
    given = os.environ.get("VDB_CLUSTER_SECRET", "").strip()
    if given:
        return given
    path = folder / "cluster.secret"
    if not path.exists():
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(secrets.token_hex(32))
    return path.read_text().strip()


def _environment(
    replica: Replica, peers: str, tls: Path | None, secret: str, formed: bool
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VDB_")}
    env.update(
        VDB_DATA_DIR=str(replica.data_dir),
        VDB_BIND_ADDR=replica.address,
        VDB_METRICS_ADDR=replica.metrics,
        VDB_REPLICATION_MODE="cluster",
        VDB_CLUSTER_PEERS=peers,
        VDB_CLUSTER_SECRET=secret,
        VDB_REPLICA_ID=str(replica.index),
        VDB_LOG_LEVEL=os.environ.get("VDB_LOG_LEVEL", "info"),
        # An earlier run formed the cluster: a replica whose folder is gone lost its data.
        VDB_CLUSTER_FORMED="true" if formed else "false",
    )
    if tls is not None:
        env.update(VDB_TLS_CERT=str(tls / "server.crt"), VDB_TLS_KEY=str(tls / "server.key"))
    return env


def _wait_ready(replicas: list[Replica], offsets: list[int], stop: threading.Event) -> bool:
    deadline = time.monotonic() + START_TIMEOUT_S
    waiting = list(replicas)
    while waiting and time.monotonic() < deadline and not stop.is_set():
        for replica in list(waiting):
            if "server.ready" in replica.events(offsets[replica.index]):
                waiting.remove(replica)
            elif not replica.running():
                code = replica.process.returncode if replica.process else None
                print(f"replica {replica.index} exited with status {code} while starting:")
                print(replica.tail())
                return False
        time.sleep(POLL_S)
    for replica in waiting:
        print(f"replica {replica.index} was not ready within {START_TIMEOUT_S:g} s:")
        print(replica.tail())
    return not waiting and not stop.is_set()


def _print_cluster(replicas: list[Replica], folder: Path, tls: Path | None) -> None:
    first, second = replicas[0].address, replicas[min(1, len(replicas) - 1)].address
    metrics = replicas[0].metrics
    print(f"Craton cluster of {len(replicas)} replicas; data and logs under {folder}")
    for r in replicas:
        assert r.process is not None
        print(
            f"  replica {r.index}  pid {r.process.pid}  address {r.address}  "
            f"metrics {r.metrics}  log {r.log_path}"
        )
    print("Talk to it from another shell (after: source .venv/bin/activate):")
    if tls:  # the craton commands speak plain TCP: use the Python client with the CA
        ca = tls / "ca.crt"
        print(
            '  python -c "import ssl; from craton.client import Client; '
            f"c = Client('{second}', tls=ssl.create_default_context(cafile='{ca}')); "
            "print(c.connect()); c.create_stream('orders'); print(c.append('orders', [b'hi'])); "
            'c.close()"'
        )
        print(f"  curl --cacert {ca} https://{first}/ready; curl http://{metrics}/metrics")
    else:
        print(f"  craton status --address {first}          # role: primary or backup")
        print(f"  craton stream create orders --address {second}   # a backup redirects")
        print(f"  craton append orders 'order 1 placed' --address {first}")
        print(f"  craton read orders --address {second}")
        print(f"  curl http://{first}/ready; curl http://{metrics}/metrics")
    print("Stop one replica with kill PID: the other two go on. Ctrl-C stops them all.")
    print("cluster ready", flush=True)


def _watch(replicas: list[Replica], stop: threading.Event) -> None:
    """Until ``stop``: report each replica that exits, once."""
    while not stop.wait(POLL_S):
        for replica in replicas:
            if replica.reported or replica.running() or replica.process is None:
                continue
            replica.reported = True
            alive = sum(1 for r in replicas if r.running())
            quorum = len(replicas) // 2 + 1
            state = "serving" if alive >= quorum else f"not serving: a majority is {quorum}"
            print(
                f"replica {replica.index} (pid {replica.process.pid}) exited with status "
                f"{replica.process.returncode}; {alive} of {len(replicas)} running, {state}",
                flush=True,
            )


def _stop_all(replicas: list[Replica]) -> bool:
    """SIGTERM every running replica, wait for each; SIGKILL after the grace. Clean?"""
    running = [r for r in replicas if r.running()]
    for replica in running:
        assert replica.process is not None
        replica.process.send_signal(signal.SIGTERM)
    clean = True
    deadline = time.monotonic() + STOP_GRACE_S
    for replica in running:
        assert replica.process is not None
        try:
            code = replica.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            replica.process.kill()
            code = replica.process.wait()
            print(f"replica {replica.index} ignored SIGTERM for {STOP_GRACE_S:g} s: killed")
        print(f"replica {replica.index} stopped with status {code}")
        clean = clean and code == 0
    return clean


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/cluster", description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, default=Path("cluster-data"))
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--port", type=int, default=5441, help="replica 0's port; 0: free")
    parser.add_argument("--metrics-port", type=int, default=9091)
    parser.add_argument("--tls", type=Path, default=None, metavar="CERT_DIR")
    parser.add_argument("--fresh", action="store_true", help="remove earlier data first")
    args = parser.parse_args(argv)
    problem = None
    if not 1 <= args.replicas <= REPLICAS_MAX:
        problem = f"--replicas must be in 1..{REPLICAS_MAX}"
    elif args.port != 0 and not 1 <= args.port <= 65535 - args.replicas:
        problem = "--port must leave room for every replica below 65536 (or be 0)"
    elif args.port != 0 and not 1 <= args.metrics_port <= 65535 - args.replicas:
        problem = "--metrics-port must leave room for every replica below 65536"
    elif args.tls is not None and not (args.tls / "server.crt").is_file():
        problem = f"--tls {args.tls}: no server.crt there (make it with scripts/gen-certs)"
    if problem:
        parser.exit(EXIT_USAGE, f"scripts/cluster: {problem}\n")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    folder: Path = args.dir.resolve()
    count: int = args.replicas
    if args.port == 0:
        ports = free_ports(2 * count)
        mains, metrics = ports[:count], ports[count:]
    else:
        mains = [args.port + i for i in range(count)]
        metrics = [args.metrics_port + i for i in range(count)]
    replicas = [
        Replica(i, folder, f"127.0.0.1:{mains[i]}", f"127.0.0.1:{metrics[i]}") for i in range(count)
    ]
    folder.mkdir(parents=True, exist_ok=True)
    if args.fresh:
        for replica in replicas:
            shutil.rmtree(replica.data_dir, ignore_errors=True)
            replica.log_path.unlink(missing_ok=True)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda _signum, _frame: stop.set())
    peers = ",".join(r.address for r in replicas)
    formed = any(replica.data_dir.exists() for replica in replicas)
    secret = cluster_secret(folder)
    offsets = []
    for replica in replicas:
        offsets.append(replica.log_path.stat().st_size if replica.log_path.exists() else 0)
        replica.start(_environment(replica, peers, args.tls, secret, formed))
    try:
        if not _wait_ready(replicas, offsets, stop):
            return EXIT_FAILED
        _print_cluster(replicas, folder, args.tls)
        _watch(replicas, stop)
        print("stopping the cluster", flush=True)
    finally:
        clean = _stop_all(replicas)
    return EXIT_OK if clean else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
