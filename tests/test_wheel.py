"""``pip install .`` in a fresh virtual environment, then the README's first commands.

The checkout (a copy of it, so that no build output lands in the working tree) is built into
a wheel by the pip that ``python -m venv`` ships, that wheel is installed into the same fresh
environment with its dependencies from the package index, and the commands a new user types
first are run with that environment's console scripts, from a directory outside the
checkout: the tour (``craton demo``, ``craton verify``, the simulator), the Python snippets,
and a single-node ``craton-server`` answering the client commands and the probes. Each
command run is first looked up, verbatim, in README.md. The installed metadata carries
``craton.__version__``, the Apache-2.0 licence and the declared dependencies, and ``pip
check`` passes. Select it with ``pytest tests/test_wheel.py`` (or ``-k wheel``); with an
unreachable package index it skips in one line.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

import craton

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
README_DATA_DIR = "/tmp/craton-data"  # the README's example data directory

INSTALL_TIMEOUT_S = 300  # venv creation, the wheel build and the install, each
COMMAND_TIMEOUT_S = 120
SERVER_START_TIMEOUT_S = 30.0
SERVER_STOP_TIMEOUT_S = 20.0
HTTP_TIMEOUT_S = 10.0
NOT_COPIED = (  # what .gitignore leaves out of the checkout, and the checkout's git
    ".git",
    ".venv",
    "__pycache__",
    "*.pyc",
    "*.egg-info",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    ".hypothesis",
    "build",
    "dist",
    "data",
    "platform-data",
    "cluster-data",
    "certs",
    ".env",
)
UNREACHABLE_INDEX = (  # what pip prints when it cannot reach the package index
    "NewConnectionError",
    "Max retries exceeded",
    "Temporary failure in name resolution",
    "Network is unreachable",
    "ProxyError",
    "ConnectTimeoutError",
    "ReadTimeoutError",
)


class Installed:
    """The fresh environment: its interpreter, console scripts and clean process env."""

    def __init__(self, venv: Path, work: Path) -> None:
        self.venv = venv
        self.work = work  # outside the checkout: every command runs here
        self.bin = venv / "bin"
        clean = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("VDB_", "CRATON_"))
            and k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
        }
        self.env = {**clean, "PATH": f"{self.bin}{os.pathsep}{clean.get('PATH', '')}"}

    def run(self, argv: list[str], **env: str) -> subprocess.CompletedProcess[str]:
        program = self.bin / argv[0]
        assert program.exists(), f"expected {argv[0]} in the fresh environment's {self.bin}"
        return subprocess.run(
            [str(program), *argv[1:]],
            cwd=self.work,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
        )

    def python(self, code: str, **env: str) -> subprocess.CompletedProcess[str]:
        return self.run(["python", "-c", code], **env)


def from_readme(command: str, **replace: str) -> list[str]:
    """``command``, which README.md must show verbatim, as argv after ``replace``."""
    assert command in README, f"expected README.md to show the command `{command}`"
    for old, new in replace.items():
        command = command.replace(old, new)
    return shlex.split(command)


def readme_python(marker: str) -> str:
    """The README's Python example that contains ``marker``."""
    blocks: list[str] = re.findall(r"```python\n(.*?)```", README, flags=re.DOTALL)
    found = [block for block in blocks if marker in block]
    assert len(found) == 1, f"expected one Python example in README.md with {marker!r}"
    return found[0]


def checked(result: subprocess.CompletedProcess[str], what: str) -> str:
    assert result.returncode == 0, (
        f"{what}: expected exit 0, got {result.returncode}\n"
        f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"
    )
    return result.stdout


def step(argv: list[str], cwd: Path, what: str) -> None:
    """One installation step; an unreachable package index skips the module."""
    try:
        result = subprocess.run(
            argv, cwd=cwd, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        pytest.skip(f"{what} did not finish in {INSTALL_TIMEOUT_S} s (package index slow?)")
    output = result.stdout + result.stderr
    if result.returncode != 0 and any(sign in output for sign in UNREACHABLE_INDEX):
        pytest.skip(f"{what}: the package index is unreachable")
    checked(result, what)


def install(root: Path) -> None:
    """Copy the checkout, make the venv, build the wheel and ``pip install`` it."""
    for left_by_a_failed_attempt in ("source", "venv", "wheels"):
        shutil.rmtree(root / left_by_a_failed_attempt, ignore_errors=True)
    source = root / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_COPIED))
    venv = root / "venv"
    step([sys.executable, "-m", "venv", str(venv)], root, "python -m venv")
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    wheels = root / "wheels"
    step([*pip, "wheel", "--no-deps", "-w", str(wheels), str(source)], root, "pip wheel")
    built = sorted(wheels.glob("craton-*.whl"))
    assert [w.name for w in built] == [f"craton-{craton.__version__}-py3-none-any.whl"], built
    step([*pip, "install", str(built[0])], root, "pip install")


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """One installation per run, shared by every pytest-xdist worker (under a file lock)."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the run's directory, above each worker's own
    root = base / "wheel-install"
    root.mkdir(exist_ok=True)
    outcome = root / "outcome"
    with (root / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not outcome.exists():
            try:
                install(root)
            except pytest.skip.Exception as skipped:
                outcome.write_text(f"skip {skipped.msg}", encoding="utf-8")
                raise
            outcome.write_text("ok", encoding="utf-8")
    recorded = outcome.read_text(encoding="utf-8")
    if recorded.startswith("skip "):
        pytest.skip(recorded.removeprefix("skip "))
    work = tmp_path_factory.mktemp("outside-the-checkout")
    assert ROOT not in work.parents, f"expected {work} outside the checkout {ROOT}"
    return Installed(root / "venv", work)


def test_wheel_imports_craton_from_the_fresh_environment(installed: Installed) -> None:
    where = checked(installed.python("import craton; print(craton.__file__)"), "import craton")
    path = Path(where.strip())
    assert installed.venv in path.parents, f"expected craton imported from the venv: {path}"
    typed = "import importlib.resources as r; print(r.files('craton').joinpath('py.typed'))"
    marker = Path(checked(installed.python(typed), "find py.typed").strip())
    assert marker.is_file(), f"expected the wheel to ship {marker}"


def test_wheel_metadata_version_licence_and_dependencies(installed: Installed) -> None:
    code = (
        "import importlib.metadata as m, json; d = m.distribution('craton'); "
        "print(json.dumps({'version': d.version, "
        "'licence': d.metadata['License-Expression'], "
        "'licence_files': d.metadata.get_all('License-File'), "
        "'requires': d.metadata.get_all('Requires-Dist'), "
        "'files': [str(f) for f in d.files or []]}))"
    )
    found = json.loads(checked(installed.python(code), "read the installed metadata"))
    assert found["version"] == craton.__version__, f"expected {craton.__version__}: {found}"
    assert found["licence"] == "Apache-2.0", f"expected License-Expression Apache-2.0: {found}"
    assert found["licence_files"] == ["LICENSE"], f"expected License-File LICENSE: {found}"
    files = found["files"]
    licences = [f for f in files if f.endswith(".dist-info/licenses/LICENSE")]
    assert licences, f"expected the wheel to ship LICENSE: {files}"
    tops = {f.split("/")[0] for f in files} - {"craton", ".."}
    outside = sorted(top for top in tops if not top.endswith(".dist-info"))
    assert outside == [], f"expected the wheel to install only craton: {outside}"
    required = sorted(r.replace(" ", "") for r in found["requires"] if "extra ==" not in r)
    declared = sorted(r.replace(" ", "") for r in PYPROJECT["project"]["dependencies"])
    assert required == declared, f"expected Requires-Dist {declared}, got {required}"


def test_wheel_pip_check_passes(installed: Installed) -> None:
    result = installed.run(["python", "-m", "pip", "--disable-pip-version-check", "check"])
    assert "No broken requirements found." in checked(result, "pip check"), result.stdout


@pytest.mark.parametrize("script", ["craton", "craton-server", "platform-app"])
def test_wheel_console_scripts_answer_version_and_help(installed: Installed, script: str) -> None:
    assert f"`{script}`" in README, f"expected README.md to name the console script {script}"
    version = checked(installed.run([script, "--version"]), f"{script} --version")
    assert version == f"craton {craton.__version__}\n", version
    helped = checked(installed.run([script, "--help"]), f"{script} --help")
    assert helped.startswith(f"usage: {script}"), helped


def test_wheel_the_tour_demo_verify_and_simulator(installed: Installed) -> None:
    data = str(installed.work / "craton-data")
    demo = from_readme(
        "craton demo --seed 1 --data-dir /tmp/craton-data", **{README_DATA_DIR: data}
    )
    lines = [json.loads(line) for line in checked(installed.run(demo), "craton demo").splitlines()]
    assert [line["result"] for line in lines] == ["pass", "pass"], lines
    verify = from_readme("craton verify /tmp/craton-data", **{README_DATA_DIR: data})
    verified = checked(installed.run(verify), "craton verify")
    assert verified.startswith(f"OK {data}: 2000 records in 1 segments"), verified

    # The README runs 100 seeds on two workers; three show the same path in seconds.
    sim = from_readme("craton sim run --seeds 0..99 --replicas 3 --jobs 2", **{"0..99": "0..2"})
    seeds = [json.loads(line) for line in checked(installed.run(sim), "sim run").splitlines()]
    assert [(s["seed"], s["result"]) for s in seeds] == [(0, "pass"), (1, "pass"), (2, "pass")]
    assert seeds[0]["replay"] == "craton sim replay --seed 0 --replicas 3", seeds[0]

    trace = installed.work / "seed42.log"
    replay = from_readme(
        "craton sim replay --seed 42 --replicas 3 --trace /tmp/seed42.log",
        **{"/tmp/seed42.log": str(trace)},
    )
    replayed = json.loads(checked(installed.run(replay), "sim replay"))
    assert (replayed["seed"], replayed["result"]) == (42, "pass"), replayed
    assert trace.read_text(encoding="utf-8").startswith("# seed 42"), "expected a trace"


def test_wheel_the_python_example_on_local_files(installed: Installed) -> None:
    data = installed.work / "local-log"
    code = readme_python("LocalLog").replace(README_DATA_DIR, str(data))
    checked(installed.python(code), "the README's LocalLog example")
    assert any((data / "log").glob("*.seg")), f"expected a log segment under {data}"


def server_events(log: Path) -> list[dict[str, object]]:
    lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


@pytest.fixture
def server(installed: Installed) -> Iterator[tuple[str, str]]:
    """A single-node craton-server of the fresh environment on free loopback ports: its
    (client address, metrics address); stopped by its PID with SIGTERM, exit 0 expected."""
    log = installed.work / "server.log"
    env = {
        **installed.env,
        "VDB_DATA_DIR": str(installed.work / "server-data"),
        "VDB_BIND_ADDR": "127.0.0.1:0",
        "VDB_METRICS_ADDR": "127.0.0.1:0",
        "VDB_REPLICATION_MODE": "single-node",
    }
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [str(installed.bin / "craton-server")],
            cwd=installed.work,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=sink,
        )
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while not any(e.get("event") == "server.ready" for e in server_events(log)):
            assert process.poll() is None, f"craton-server exited:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"no server.ready:\n{log.read_text()}"
            time.sleep(0.05)
        listening = [e for e in server_events(log) if e.get("event") == "server.listening"]
        yield str(listening[-1]["addr"]), str(listening[-1]["metrics_addr"])
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=SERVER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=SERVER_STOP_TIMEOUT_S)
    assert process.returncode == 0, f"expected exit 0 on SIGTERM:\n{log.read_text()}"


def http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as response:
        assert response.status == 200, f"{url}: expected 200, got {response.status}"
        return str(response.read().decode("utf-8"))


def test_wheel_the_server_answers_the_readme_client_commands(
    installed: Installed, server: tuple[str, str]
) -> None:
    address, metrics = server
    to_node = {"CRATON_ADDRESS": address}
    create = from_readme("craton stream create orders")
    checked(installed.run(create, **to_node), "craton stream create")
    append = from_readme('craton append orders "order 1 placed" "order 1 paid"')
    checked(installed.run(append, **to_node), "craton append")
    read = checked(installed.run(from_readme("craton read orders"), **to_node), "craton read")
    assert read.startswith("0\torder 1 placed\n"), f"expected the first event first: {read!r}"
    assert "order 1 paid" in read, read
    checked(installed.run(from_readme("craton status"), **to_node), "craton status")

    assert "curl localhost:5432/health" in README and "curl localhost:9090/ready" in README
    http_get(f"http://{address}/health")
    http_get(f"http://{metrics}/ready")
    assert "vdb_" in http_get(f"http://{metrics}/metrics"), "expected vdb_* metrics"

    code = readme_python("from craton.client import Client").replace("127.0.0.1:5432", address)
    printed = checked(installed.python(code), "the README's Client example")
    assert "order 2 placed" in printed, printed
