"""The benchmark's PostgreSQL baseline, when PostgreSQL is installed: the same workload as
``scripts/bench`` drives against Craton and SQLite, through PostgreSQL's own ``pgbench``.

A throwaway cluster is made with ``initdb`` in the benchmark's folder (so on the same disk)
and started with ``pg_ctl`` on a Unix socket only (no TCP port), with its durable defaults
kept: ``fsync=on``, ``synchronous_commit=on``, ``full_page_writes=on``. Each workload is one
``pgbench`` run of ``clients`` connections for ``seconds``: a transaction inserts 1 or 100
rows of a 128-byte ``bytea`` into one table, so a commit returns after its WAL flush.
Latencies come from pgbench's per-transaction log. Peak RSS is the largest of the server's
processes (they share their buffers, so adding them up would count those many times).

PostgreSQL refuses to run as root: as root, the cluster belongs to the ``postgres`` user and
its programs run through ``runuser``. When the programs or that user are missing, or the
cluster does not start, the baseline is skipped with one line saying why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

EVENT_SIZE = 128
START_TIMEOUT_S = 60
PG_USER = "postgres"  # the account the server runs as when this script runs as root


def find_bin() -> Path | None:
    """The folder of PostgreSQL's server programs, if they are installed."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return versions[-1].parent if versions else None


class Postgres:
    """A throwaway PostgreSQL cluster under ``folder``, reached on a Unix socket."""

    def __init__(self, folder: Path, bin_dir: Path) -> None:
        self.folder = folder
        self.bin = bin_dir
        self.data = folder / "pgdata"
        self.socket_dir = folder / "socket"
        self.as_root = os.geteuid() == 0
        folder.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        if self.as_root:
            shutil.chown(folder, PG_USER)
            shutil.chown(self.socket_dir, PG_USER)
        self._run("initdb", "-D", str(self.data), "-U", "bench", "--auth=trust", "-E", "UTF8")
        options = f"-c listen_addresses='' -c unix_socket_directories='{self.socket_dir}'"
        self._run(
            "pg_ctl", "-D", str(self.data), "-o", options, "-w", "-t", str(START_TIMEOUT_S),
            "-l", str(folder / "server.log"), "start",
        )  # fmt: skip
        self.started = True

    def _command(self, program: str, *args: str) -> list[str]:
        command = [str(self.bin / program), *args]
        return ["runuser", "-u", PG_USER, "--", *command] if self.as_root else command

    def _run(self, program: str, *args: str, cwd: Path | None = None) -> str:
        done = subprocess.run(
            self._command(program, *args),
            capture_output=True,
            text=True,
            cwd=cwd,
            timeout=600,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{program} failed: {(done.stderr or done.stdout).strip()[-400:]}")
        return done.stdout

    def sql(self, statement: str) -> None:
        self._run("psql", "-h", str(self.socket_dir), "-U", "bench", "-d", "postgres",
                  "-v", "ON_ERROR_STOP=1", "-q", "-c", statement)  # fmt: skip

    def pgbench(self, clients: int, batch: int, seconds: float) -> tuple[list[float], float]:
        """Latencies (seconds) of every transaction, and the run's length in seconds."""
        self.sql("DROP TABLE IF EXISTS events; CREATE TABLE events (id bigserial PRIMARY KEY,"
                 " body bytea NOT NULL)")  # fmt: skip
        run_dir = self.folder / f"run-{clients}-{batch}"
        run_dir.mkdir()
        if self.as_root:
            shutil.chown(run_dir, PG_USER)
        script = run_dir / "insert.sql"
        rows = f"repeat('e', {EVENT_SIZE})::bytea"
        if batch == 1:
            script.write_text(f"INSERT INTO events (body) VALUES ({rows});\n")
        else:
            script.write_text(
                f"INSERT INTO events (body) SELECT {rows} FROM generate_series(1, {batch});\n"
            )
        duration_s = max(1, round(seconds))
        self._run(
            "pgbench", "-h", str(self.socket_dir), "-U", "bench", "-n", "-f", str(script),
            "-c", str(clients), "-j", str(min(clients, os.cpu_count() or 1)),
            "-T", str(duration_s), "-l", "--log-prefix", str(run_dir / "tx"), "postgres",
            cwd=run_dir,
        )  # fmt: skip
        latencies = []
        for log in run_dir.glob("tx*"):
            for line in log.read_text().splitlines():
                fields = line.split()
                if len(fields) >= 3:
                    latencies.append(int(fields[2]) / 1e6)  # microseconds
        return latencies, float(duration_s)

    def peak_rss_kib(self) -> int:
        pid_file = self.data / "postmaster.pid"
        try:
            leader = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return 0
        peak = 0
        for status in Path("/proc").glob("[0-9]*/status"):
            try:
                text = status.read_text()
            except OSError:
                continue
            fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
            pid = int(status.parent.name)
            if pid != leader and int(fields.get("PPid", "0").strip()) != leader:
                continue
            peak = max(peak, int(fields.get("VmHWM", "0 kB").split()[0]))
        return peak

    def stop(self) -> None:
        if self.started:
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
            self.started = False


def unavailable_reason() -> str | None:
    """Why the PostgreSQL baseline cannot run here, or None when it can try."""
    if find_bin() is None:
        return "not installed"
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam(PG_USER)
        except KeyError:
            return f"running as root and there is no {PG_USER!r} user to run it as"
        if shutil.which("runuser") is None:
            return "running as root and runuser is missing"
    return None
