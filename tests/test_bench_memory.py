"""``scripts/bench_memory.py`` for real, with a tiny workload: it holds a node to a memory
cgroup, fills it, restarts it, reads every event back checked, prints every figure, and
leaves neither a process, a cgroup nor a file behind. Where no memory cgroup can be made
(not root, no memory controller) it says so in one line and exits 0."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.test_bench_restart import servers_under

ROOT = Path(__file__).resolve().parent.parent
RUN_TIMEOUT_S = 180  # a bound, not a measurement: the run takes a few seconds
FIGURE_NAMES = (
    "data appended (MiB)",
    "fill (appends/s)",
    "peak RSS while appending (MiB)",
    "restart-to-ready (s)",
    "events read back and checked",
)


def test_a_tiny_run_holds_the_node_to_its_limit_and_reads_everything_back(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VDB_")}
    command = [sys.executable, str(ROOT / "scripts" / "bench_memory.py"), "--limit-mib", "128",
               "--data-mib", "4", "--clients", "4", "--dir", str(tmp_path)]  # fmt: skip
    done = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=RUN_TIMEOUT_S, cwd=tmp_path
    )
    assert done.returncode == 0, f"expected exit 0, got {done.returncode}:\n{done}"
    if done.stdout.startswith("skipped: "):
        assert len(done.stdout.splitlines()) == 1, done.stdout
        return
    rows = {
        name.strip(): value.strip()
        for name, _, value in (line.rpartition("  ") for line in done.stdout.splitlines())
    }
    for name in FIGURE_NAMES:
        assert name in rows, f"expected a row {name!r} in:\n{done.stdout}"
        assert float(rows[name].replace(",", "")) > 0, f"no figure in {rows[name]!r}"
    assert rows["events read back and checked"] == "1,024", done.stdout
    assert rows["processes killed for memory"] == "0", done.stdout
    assert list(tmp_path.iterdir()) == [], "expected the temporary data removed"
    assert servers_under(tmp_path) == [], "expected every craton-server it started stopped"
    leftovers = [
        path
        for root in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/memory"))
        if root.exists()
        for path in root.glob("craton-bench-memory-*")
    ]
    assert leftovers == [], f"expected the cgroup removed, found {leftovers}"
