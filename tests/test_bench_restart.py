"""``scripts/bench_restart.py`` for real, with a tiny workload: it fills a node and a
cluster, restarts the node and lets a wiped backup rejoin, prints every figure, and leaves
neither a process nor a file behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUN_TIMEOUT_S = 120  # a bound, not a measurement: the run takes a few seconds
FIGURE_NAMES = (
    "single: fill (appends/s)",
    "single: peak RSS while appending (MiB)",
    "single: restart-to-ready (s)",
    "single: RSS when ready after restart (MiB)",
    "single: peak RSS during restart (MiB)",
    "cluster: fill (appends/s)",
    "cluster: backup restart-to-ready, data kept (s)",
    "cluster: wiped backup rejoin-to-ready (s)",
    "cluster: peak RSS of the rejoining backup (MiB)",
)


def test_a_tiny_run_prints_every_figure_and_leaves_nothing(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VDB_")}
    command = [sys.executable, str(ROOT / "scripts" / "bench_restart.py"), "--appends", "300",
               "--cluster-appends", "100", "--clients", "8", "--dir", str(tmp_path)]  # fmt: skip
    done = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=RUN_TIMEOUT_S, cwd=tmp_path
    )
    assert done.returncode == 0, f"expected exit 0, got {done.returncode}:\n{done}"
    rows = {line.rpartition(")")[0] + ")": line for line in done.stdout.splitlines()}
    for name in FIGURE_NAMES:
        assert name in rows, f"expected a row {name!r} in:\n{done.stdout}"
        value = rows[name].rpartition(")")[2].split()
        assert value and float(value[0].replace(",", "")) > 0, f"no figure in {rows[name]!r}"
    left = list(tmp_path.iterdir())
    assert left == [], f"expected the temporary data removed, found {left}"
    assert servers_under(tmp_path) == [], "expected every craton-server it started stopped"


def servers_under(folder: Path) -> list[int]:
    """Processes whose environment names a data directory under ``folder``."""
    marker = f"VDB_DATA_DIR={folder}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue  # gone, or not ours to read
        if marker in environ:
            found.append(int(entry.name))
    return found
