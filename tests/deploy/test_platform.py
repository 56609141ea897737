"""platform-app's deployment files agree with platform-app: the environment its Compose
service and its Kubernetes pod get is one ``craton.platform.config.load_config`` accepts,
the probes, ports, volumes and Secrets fit the image and the Ingress, and the image's and
Compose's health checks answer against a live platform-app that talks to a nats-server
run with the kit's own ``deploy/nats/nats.conf`` (JetStream, mutual TLS)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

import craton.platform.config
from craton.platform.config import ConfigErrors, PlatformConfig, load_config
from tests.deploy.support import (
    COMPOSE_FILES,
    DOCKERFILES,
    GUIDE_DOC,
    K8S,
    PLATFORM_TEST_KEY,
    ROOT,
    run,
    tool,
)
from tests.deploy.test_lint import nats_config
from tests.deploy.test_manifests import compose_services, final_stage, healthcheck_command
from tests.deploy.test_manifests import manifests as all_manifests
from tests.platform.support import free_port

DOCKERFILE = ROOT / "Dockerfile.platform-app"
KNOWN_VARIABLES = set(re.findall(r"\bPLATFORM_[A-Z_]*[A-Z]", craton.platform.config.__doc__ or ""))
# Where each kit's TLS file for NATS comes from in a scripts/gen-certs folder.
CERT_FILES = {
    "PLATFORM_NATS_TLS_CA": "ca.crt",
    "PLATFORM_NATS_TLS_CERT": "client.crt",
    "PLATFORM_NATS_TLS_KEY": "client.key",
}
START_TIMEOUT_S = 30.0


def localised(env: dict[str, str], tmp_path: Path, certs: Path) -> dict[str, str]:
    """The container's paths (SQLite file, TLS files) moved to real local files."""
    local = dict(env)
    local["PLATFORM_SQLITE_PATH"] = str(tmp_path / "platform.db")
    for variable, name in CERT_FILES.items():
        if variable in local:
            local[variable] = str(certs / name)
    return local


def accepted(env: dict[str, str], tmp_path: Path, certs: Path) -> PlatformConfig:
    return load_config(localised(env, tmp_path, certs))


# --- Kubernetes ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def k8s() -> dict[tuple[str, str], dict[str, Any]]:
    return all_manifests()


def _pod(k8s: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = k8s[("Deployment", "platform-app")]["spec"]["template"]["spec"]
    assert len(spec["containers"]) == 1, "one container: platform-app"
    return spec


def pod_environment(k8s: dict[tuple[str, str], dict[str, Any]]) -> dict[str, str]:
    """The ConfigMap, then the container's variables; a secret reference must name a key
    the example Secrets define, and stands for a well-formed value."""
    container = _pod(k8s)["containers"][0]
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(k8s[("ConfigMap", source["configMapRef"]["name"])]["data"])
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = str(item["value"])
            continue
        ref = item["valueFrom"]["secretKeyRef"]
        secret = k8s[("Secret", ref["name"])]
        assert ref["key"] in secret.get("stringData", {}) | secret.get("data", {}), ref
        env[item["name"]] = PLATFORM_TEST_KEY if ref["key"] == "secret-key" else ref["key"]
    return env


def test_the_pod_environment_is_accepted_by_platform_app(
    k8s: dict[tuple[str, str], dict[str, Any]], tmp_path: Path, certs: Path
) -> None:
    env = pod_environment(k8s)
    config = accepted(env, tmp_path, certs)
    assert (config.http_host, config.http_port) == ("0.0.0.0", 8080)
    assert config.secret_key is not None, "PLATFORM_SECRET_KEY comes from platform-secrets"
    assert config.nats_tls is not None and config.nats_tls.cert_file is not None, (
        "expected a client certificate: the kit's NATS verifies clients"
    )
    assert config.cookie_secure, "the Ingress serves HTTPS"
    host = k8s[("Ingress", "platform-ingress")]["spec"]["rules"][0]["host"]
    assert config.public_url == f"https://{host}", config.public_url


def test_the_loader_refuses_a_broken_copy_of_the_pod_environment(
    k8s: dict[tuple[str, str], dict[str, Any]], tmp_path: Path, certs: Path
) -> None:
    env = pod_environment(k8s)
    del env["PLATFORM_NATS_TLS_KEY"]
    env["PLATFORM_NATS_URL"] = "nats:4222"
    with pytest.raises(ConfigErrors) as caught:
        accepted(env, tmp_path, certs)
    named = sorted(line.split(":")[0] for line in caught.value.lines)
    assert named == ["PLATFORM_NATS_TLS_KEY", "PLATFORM_NATS_URL"], caught.value.lines


def test_probes_ports_volumes_and_secrets_fit_the_image(
    k8s: dict[tuple[str, str], dict[str, Any]],
) -> None:
    pod = _pod(k8s)
    container, env = pod["containers"][0], pod_environment(k8s)
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"http": 8080}
    for probe, path in (("livenessProbe", "/health"), ("readinessProbe", "/ready")):
        get = container[probe]["httpGet"]
        assert (get["path"], get["port"]) == (path, 8080), f"{probe}: {get}"
    assert {"requests", "limits"} <= set(container["resources"]), "resources are set"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    sqlite_dir = str(PurePosixPath(env["PLATFORM_SQLITE_PATH"]).parent)
    data = next(name for name, path in mounts.items() if path == sqlite_dir)
    claim = volumes[data]["persistentVolumeClaim"]["claimName"]
    assert ("PersistentVolumeClaim", claim) in k8s, f"the claim {claim} is not defined"
    deployment = k8s[("Deployment", "platform-app")]["spec"]
    assert deployment["replicas"] == 1 and deployment["strategy"]["type"] == "Recreate", (
        "expected one pod at a time on the ReadWriteOnce SQLite volume"
    )
    tls_paths = [PurePosixPath(env[variable]) for variable in CERT_FILES]
    certs_volume = next(n for n, p in mounts.items() if PurePosixPath(p) == tls_paths[0].parent)
    secret = k8s[("Secret", volumes[certs_volume]["secret"]["secretName"])]
    for tls_path in tls_paths:
        assert tls_path.parent == tls_paths[0].parent and tls_path.name in secret["data"], (
            f"expected {tls_path} to be a key of Secret {secret['metadata']['name']}"
        )
    user = [line.split()[1] for line in final_stage(DOCKERFILE)[1] if line.startswith("USER ")]
    assert pod["securityContext"]["runAsUser"] == int(user[-1].split(":")[0])


def test_the_service_is_the_one_the_ingress_routes_to(
    k8s: dict[tuple[str, str], dict[str, Any]],
) -> None:
    labels = k8s[("Deployment", "platform-app")]["spec"]["template"]["metadata"]["labels"]
    rules = k8s[("Ingress", "platform-ingress")]["spec"]["rules"]
    backends = [path["backend"]["service"] for rule in rules for path in rule["http"]["paths"]]
    assert backends, "the Ingress routes somewhere"
    for backend in backends:
        service = k8s[("Service", backend["name"])]["spec"]
        assert service["selector"].items() <= labels.items(), f"{backend['name']} selects no pod"
        port = next(p for p in service["ports"] if p["port"] == backend["port"]["number"])
        assert port["targetPort"] == 8080, port


# --- Compose ---------------------------------------------------------------------------------


def test_the_compose_service_is_accepted_and_waits_for_nats(tmp_path: Path, certs: Path) -> None:
    services = compose_services(COMPOSE_FILES[0])
    app = services["platform-app"]
    config = accepted(app["environment"], tmp_path, certs)
    assert config.http_port == 8080 and config.secret_key is not None
    assert config.nats_tls is not None and config.nats_tls.key_file is not None
    assert [u.rpartition(":")[0] for u in config.nats_urls] == ["nats://nats"], config.nats_urls
    assert app["depends_on"]["nats"]["condition"] == "service_healthy"
    targets = {s["target"]: s["source"] for s in app["secrets"]}
    declared = {name: Path(s["file"]).name for name, s in compose_config_secrets().items()}
    for variable, name in CERT_FILES.items():
        path = PurePosixPath(app["environment"][variable])
        assert str(path) in targets or path.name in targets, f"{path} is not a mounted secret"
        assert declared[targets.get(str(path), path.name)] == name, (
            f"expected {variable} to be certs/{name} from scripts/gen-certs"
        )
        assert (certs / name).is_file()
    sqlite_dir = str(PurePosixPath(app["environment"]["PLATFORM_SQLITE_PATH"]).parent)
    assert any(v["target"] == sqlite_dir and v["type"] == "volume" for v in app["volumes"])
    assert {p["target"] for p in app["ports"]} == {8080}


def compose_config_secrets() -> dict[str, Any]:
    import json

    from tests.deploy.test_lint import compose_config

    code, output = compose_config(COMPOSE_FILES[0], "--format", "json")
    assert code == 0, output
    secrets: dict[str, Any] = json.loads(output)["secrets"]
    return secrets


# --- the image -------------------------------------------------------------------------------


def test_the_image_is_multi_stage_non_root_with_the_platform_extra() -> None:
    assert DOCKERFILE in DOCKERFILES
    stages, stage = final_stage(DOCKERFILE)
    assert stages >= 2, "multi-stage: the build tools stay out of the image"
    assert stage[0].startswith("FROM python:3.11-slim"), stage[0]
    user = [line.split()[1] for line in stage if line.startswith("USER ")][-1]
    assert re.fullmatch(r"[1-9][0-9]*(:[0-9]+)?", user), f"a numeric non-root user: {user}"
    env = " ".join(line for line in stage if line.startswith("ENV "))
    sqlite = re.search(r"PLATFORM_SQLITE_PATH=(\S+)", env)
    assert sqlite, "the image sets PLATFORM_SQLITE_PATH"
    assert f"VOLUME {PurePosixPath(sqlite.group(1)).parent}" in stage, "its folder is a volume"
    assert "EXPOSE 8080" in stage and stage[-1] == 'CMD ["platform-app"]'
    assert '.[platform]"' in DOCKERFILE.read_text(), "pip installs the platform extra"
    assert "/health" in " ".join(healthcheck_command(DOCKERFILE))


# --- variables and documentation -------------------------------------------------------------


def test_every_platform_variable_the_kit_sets_is_one_platform_app_reads() -> None:
    assert len(KNOWN_VARIABLES) >= 17, KNOWN_VARIABLES
    files = [*COMPOSE_FILES, ROOT / ".env.example", *K8S.glob("*.yaml"), *DOCKERFILES]
    for path in files:
        used = set(re.findall(r"\bPLATFORM_[A-Z_]*[A-Z]", path.read_text()))
        unknown = used - KNOWN_VARIABLES
        assert not unknown, f"{path.name} sets variables platform-app does not read: {unknown}"
    doc = GUIDE_DOC.read_text()
    for variable in sorted(KNOWN_VARIABLES):
        assert f"`{variable}`" in doc, f"docs/DEPLOYMENT.md does not describe {variable}"
    notes = (ROOT / "docs" / "PLATFORM.md").read_text().split("## Deployment notes", 1)[1]
    for name in ("Dockerfile.platform-app", "docker-compose.yml", "deploy/k8s/platform-app.yaml"):
        assert name in notes, f"docs/PLATFORM.md's deployment notes do not point at {name}"


# --- a live platform-app behind the kit's NATS -----------------------------------------------


def _wait_listening(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        assert process.poll() is None, f"exited at start-up: {log.read_text()[-2000:]}"
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise AssertionError(f"nothing listened on {port} within {START_TIMEOUT_S} s")


@contextlib.contextmanager
def started(command: list[str], env: dict[str, str], port: int, log: Path) -> Iterator[None]:
    with log.open("ab") as out:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env={**os.environ, **env}
        )
    try:
        _wait_listening(port, process, log)
        yield
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def _ready(base: str) -> None:
    deadline, status = time.monotonic() + START_TIMEOUT_S, 0
    while time.monotonic() < deadline:
        status = _get(base + "/ready")
        if status == 200:
            return
        time.sleep(0.1)
    raise AssertionError(f"expected /ready to answer 200 within {START_TIMEOUT_S} s: {status}")


def test_the_health_checks_answer_against_platform_app_behind_the_kits_nats(
    tmp_path: Path, certs: Path
) -> None:
    nats_port, monitor_port, http_port = free_port(), free_port(), free_port()
    conf = nats_config(ROOT / "deploy" / "nats" / "nats.conf", tmp_path, certs)
    text = conf.read_text()
    assert "\nport: 4222\n" in text and "\nhttp_port: 8222\n" in text
    text = text.replace("\nport: 4222\n", f"\nport: {nats_port}\n")
    conf.write_text(text.replace("\nhttp_port: 8222\n", f"\nhttp_port: {monitor_port}\n"))
    app = compose_services(COMPOSE_FILES[0])["platform-app"]
    env = localised(app["environment"], tmp_path, certs)
    env["PLATFORM_HTTP_ADDR"] = f"127.0.0.1:{http_port}"
    env["PLATFORM_NATS_URL"] = f"nats://localhost:{nats_port}"  # a name the certificate has
    nats = [str(tool("nats-server")), "-c", str(conf), "-a", "127.0.0.1"]
    with (
        started(nats, {}, nats_port, tmp_path / "nats.log"),
        started([str(tool("platform-app"))], env, http_port, tmp_path / "app.log"),
    ):
        base = f"http://127.0.0.1:{http_port}"
        _ready(base)
        assert _get(base + "/health") == 200
        checks = {
            "Dockerfile": healthcheck_command(DOCKERFILE),
            "docker-compose.yml": app["healthcheck"]["test"][1:],
        }
        for where, command in checks.items():
            assert "127.0.0.1:8080" in " ".join(command), f"{where}: {command}"
            assert run(*_local(command, http_port)).returncode == 0, (
                f"{where}'s health check fails on a live platform-app"
            )
        assert run(*_local(checks["Dockerfile"], 1)).returncode != 0, (
            "expected the health check to fail with nothing listening"
        )


def _local(command: list[str], port: int) -> list[str]:
    """A container's health check command, run here against ``port``."""
    python, address = str(tool("python")), f"127.0.0.1:{port}"
    return [
        python if part == "python" else part.replace("127.0.0.1:8080", address) for part in command
    ]
