"""The benchmark's etcd baseline, when etcd is installed: the same workload as
``scripts/bench`` drives against Craton, SQLite and PostgreSQL.

A throwaway one-member etcd cluster is started in the benchmark's folder (so on the same
disk) on free loopback ports, with its durable defaults kept: a put is answered after its
Raft entry is in the write-ahead log and the log is fsynced (etcd shares one fsync among
the entries that arrive together). The clients speak etcd's v3 JSON gateway over HTTP/1.1
keep-alive connections — one connection per client, one request in flight on it. A request
is one put of a 128-byte value under a fresh key, or, with 100 events per request, one
transaction of 100 such puts. Peak RSS is the etcd process's.

The client is a minimal HTTP/1.1 exchange on asyncio streams (a request with its
``Content-Length``, a response read by its length or its chunks), so the figure measures etcd
rather than an HTTP library. When ``etcd`` is not on the PATH, or the member does not
start, the baseline is skipped with one line saying why.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from bench_common import peak_rss_kib, stop_process
from cluster import free_ports  # scripts/cluster.py

EVENT_SIZE = 128
START_TIMEOUT_S = 30.0
MAX_TXN_OPS = 128  # etcd's default limit on the operations of one transaction


def find_bin() -> str | None:
    return shutil.which("etcd")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _put(key: bytes, value: str) -> dict[str, object]:
    return {"key": _b64(key), "value": value}


class Etcd:
    """A throwaway one-member etcd cluster under ``folder``, on loopback."""

    def __init__(self, folder: Path, program: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        client_port, peer_port = free_ports(2)
        self.port = client_port
        client_url = f"http://127.0.0.1:{client_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        self._log = (folder / "etcd.log").open("wb")
        self.process = subprocess.Popen(
            [
                program, "--name", "bench", "--data-dir", str(folder / "data"),
                "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
                "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
                "--initial-cluster", f"bench={peer_url}", "--initial-cluster-state", "new",
                "--max-txn-ops", str(MAX_TXN_OPS), "--logger", "zap", "--log-level", "error",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            self._wait_healthy(client_url)
        except BaseException:
            self.stop()
            raise

    def _wait_healthy(self, url: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"etcd exited with status {self.process.returncode}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=1) as response:
                    if json.loads(response.read()).get("health") == "true":
                        return
            except (urllib.error.URLError, OSError, ValueError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"etcd was not healthy within {START_TIMEOUT_S:.0f} s")

    def workload(self, clients: int, batch: int, seconds: float) -> tuple[list[float], float]:
        assert 1 <= batch <= MAX_TXN_OPS
        return asyncio.run(self._workload(clients, batch, seconds))

    async def _workload(
        self, clients: int, batch: int, seconds: float
    ) -> tuple[list[float], float]:
        value = _b64(b"e" * EVENT_SIZE)
        latencies: list[float] = []
        streams = [await asyncio.open_connection("127.0.0.1", self.port) for _ in range(clients)]
        deadline = time.perf_counter() + seconds

        async def worker(
            index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> None:
            sequence = 0
            while time.perf_counter() < deadline:
                keys = [f"e/{index}/{sequence + n}".encode() for n in range(batch)]
                sequence += batch
                if batch == 1:
                    path, body = "/v3/kv/put", _put(keys[0], value)
                else:
                    success = [{"requestPut": _put(key, value)} for key in keys]
                    path, body = "/v3/kv/txn", {"success": success}
                started = time.perf_counter()
                await _exchange(reader, writer, path, json.dumps(body).encode())
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker(i, r, w) for i, (r, w) in enumerate(streams)))
        elapsed = time.perf_counter() - started
        for _, writer in streams:
            writer.close()
        return latencies, elapsed

    def peak_rss_kib(self) -> int:
        return peak_rss_kib(self.process.pid)

    def stop(self) -> None:
        stop_process(self.process)
        self._log.close()


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str, body: bytes
) -> None:
    """One HTTP/1.1 POST on a kept-alive connection; raises unless etcd answers 200."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: etcd\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    writer.write(head + body)
    header = await reader.readuntil(b"\r\n\r\n")
    lines = header.decode("latin-1").split("\r\n")
    status = lines[0].split(" ", 2)
    fields = dict(
        (name.strip().lower(), value.strip())
        for name, _, value in (line.partition(":") for line in lines[1:] if line)
    )
    if fields.get("transfer-encoding") == "chunked":
        answer = await _read_chunked(reader)
    elif "content-length" in fields:
        answer = await reader.readexactly(int(fields["content-length"]))
    else:
        raise RuntimeError(f"etcd answered without a body length: {lines[0]}")
    if len(status) < 2 or status[1] != "200":
        raise RuntimeError(f"etcd answered {lines[0]}: {answer[:200]!r}")


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    """A chunked body: chunks of a hexadecimal size line each, up to the empty one."""
    chunks: list[bytes] = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
        chunk = await reader.readexactly(size + 2)  # the chunk and its CRLF
        if size == 0:
            return b"".join(chunks)
        chunks.append(chunk[:-2])
