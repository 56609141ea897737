"""Real ``craton-server`` processes for tests: started on free loopback ports (port 0, read
back from the ``server.listening`` log line) with a temporary data directory, stopped by
their own PID, every wait bounded.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from craton.core.wire import FrameDecoder, decode_frame, encode
from craton.core.wire.codec import AnyMessage

START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 20.0
SOCKET_TIMEOUT_S = 10.0


class ServerProcess:
    def __init__(
        self, data_dir: Path, log_path: Path, *, open_files_limit: int | None = None, **env: str
    ) -> None:
        self.data_dir = data_dir
        self.open_files_limit = open_files_limit  # the child's RLIMIT_NOFILE, soft and hard
        self.log_path = log_path
        self.env = {
            "VDB_DATA_DIR": str(data_dir),
            "VDB_BIND_ADDR": "127.0.0.1:0",
            "VDB_METRICS_ADDR": "127.0.0.1:0",
            "VDB_REPLICATION_MODE": "single-node",
            "VDB_LOG_LEVEL": "debug",
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.address = ""
        self.metrics_address = ""
        self._starts_before = 0  # processes that logged to the same file before this one

    def start(self, *, wait_ready: bool = True) -> ServerProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VDB_")}
        env.update(self.env)
        if self.log_path.exists():
            self._starts_before = sum(1 for e in self.events() if e["event"] == "server.starting")
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "craton.net.server_main"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                preexec_fn=None if self.open_files_limit is None else self._limit_open_files,
            )
        if wait_ready:
            self.wait_for("server.ready")
        return self

    def _limit_open_files(self) -> None:
        """In the child, before ``exec``: lower both open-files limits (so the node cannot
        raise its soft limit past them)."""
        assert self.open_files_limit is not None
        limit = self.open_files_limit
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def events(self) -> list[dict[str, object]]:
        found = []
        for line in self.log_path.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("{"):
                found.append(json.loads(line))
        return found

    def wait_for(self, event: str, timeout_s: float = START_TIMEOUT_S) -> dict[str, object]:
        """The latest ``event`` of the current process, once logged."""
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            seen = [e for e in self._own_events() if e["event"] == event]
            if seen:
                listening = [e for e in self._own_events() if e["event"] == "server.listening"]
                if listening:
                    self.address = str(listening[-1]["addr"])
                    self.metrics_address = str(listening[-1]["metrics_addr"])
                return seen[-1]
            if self.process.poll() is not None:
                raise AssertionError(
                    f"craton-server exited with {self.process.returncode} before {event}:\n"
                    + self.tail()
                )
            time.sleep(0.02)
        raise AssertionError(f"no {event} within {timeout_s} s:\n" + self.tail())

    def _own_events(self) -> list[dict[str, object]]:
        # A restarted process appends to the same log: only lines after its last start count.
        events = self.events()
        starts = [i for i, e in enumerate(events) if e["event"] == "server.starting"]
        if len(starts) <= self._starts_before:
            return []
        return events[starts[self._starts_before] :]

    def tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def signal(self, signum: int) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signum)

    def wait(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout_s)

    def kill9(self) -> None:
        self.signal(signal.SIGKILL)
        self.wait()

    def stop(self) -> int:
        """SIGTERM, then the exit status (SIGKILL if it does not stop in time)."""
        assert self.process is not None
        if self.process.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                return self.wait()
            except subprocess.TimeoutExpired:
                self.kill9()
                raise AssertionError("craton-server ignored SIGTERM:\n" + self.tail()) from None
        return self.process.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT_S)


def split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


class RawConnection:
    """A socket speaking frames by hand, for what the client library never sends."""

    def __init__(self, address: str, tls: ssl.SSLContext | None = None) -> None:
        self.sock = socket.create_connection(split(address), timeout=SOCKET_TIMEOUT_S)
        if tls is not None:
            self.sock = tls.wrap_socket(self.sock, server_hostname=split(address)[0])
        self.decoder = FrameDecoder()

    def send(self, message: AnyMessage, request_id: int) -> None:
        self.sock.sendall(encode(message, request_id))

    def send_bytes(self, data: bytes) -> None:
        self.sock.sendall(data)

    def receive(self) -> tuple[int, AnyMessage]:
        """The next reply (request id, message); AssertionError if the node closed first."""
        while True:
            frame = self.decoder.next_frame()
            if frame is not None:
                return frame.request_id, decode_frame(frame)
            data = self.sock.recv(65536)
            if not data:
                raise AssertionError("the node closed the connection before replying")
            self.decoder.feed(data)

    def closed_by_peer(self) -> bool:
        """True once the node has closed the connection (after any replies)."""
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return True
        except (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError):
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()


def http_get(address: str, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request by hand: (status, headers, body)."""
    with socket.create_connection(split(address), timeout=SOCKET_TIMEOUT_S) as sock:
        host, port = split(address)
        request = f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n"
        sock.sendall(request.encode("ascii"))
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("ascii").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body
