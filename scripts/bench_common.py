"""Process helpers shared by the benchmark scripts."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

STOP_GRACE_S = 20.0


def peak_rss_kib(pid: int) -> int:
    """The peak resident set of process ``pid`` (``VmHWM``), 0 once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def stop_process(process: subprocess.Popen[bytes] | subprocess.Popen[str]) -> None:
    """SIGTERM ``process`` and wait for it; SIGKILL it after the grace."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def status_kib(pid: int, field: str) -> int:
    """One ``kB`` field of ``/proc/<pid>/status`` (``VmRSS``: resident now), 0 once gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0
