"""The deployment files agree with each other and with the server: the environment each
Kubernetes pod and each Compose service gets is a configuration ``craton-server`` accepts
(with the replica id and peers a cluster needs), the probes and ports are the server's, the
StatefulSet's Services, PodDisruptionBudget and Secrets fit it, and the image's health
check really answers against a live node."""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import craton.net.config
from craton.net.config import ReplicationMode, ServerConfig, load_config
from tests.deploy.support import COMPOSE_FILES, DOCKERFILES, GUIDE_DOC, K8S, ROOT, run
from tests.deploy.test_lint import compose_config
from tests.net.support import ServerProcess

PENDING_VARIABLES: set[str] = set()  # variables the kit passes before the server reads them
KNOWN_VARIABLES = {variable.name for variable in craton.net.config.VARIABLES}
DUMMY_SECRET = "not-a-real-secret, but 32 bytes or more"


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) → manifest, over deploy/k8s and its examples."""
    found = {}
    for path in [*sorted(K8S.glob("*.yaml")), *sorted((K8S / "examples").glob("*.yaml"))]:
        for doc in documents(path):
            found[(doc["kind"], doc["metadata"]["name"])] = doc
    return found


def accepted(env: dict[str, str], hostname: str | None = None) -> ServerConfig:
    """``load_config`` of ``env``: the node would start with it."""
    return load_config(env, hostname=hostname)


def with_local_files(env: dict[str, str], tmp_path: Path, certs: Path) -> dict[str, str]:
    """The container's paths (data, certificate, key) moved to real local files."""
    local = dict(env)
    local["VDB_DATA_DIR"] = str(tmp_path / "data")
    if "VDB_TLS_CERT" in local:
        local["VDB_TLS_CERT"] = str(certs / "server.crt")
        local["VDB_TLS_KEY"] = str(certs / "server.key")
    return local


# --- Kubernetes ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def k8s() -> dict[tuple[str, str], dict[str, Any]]:
    return manifests()


def _container(k8s: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    containers = k8s[("StatefulSet", "craton-server")]["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def pod_environment(k8s: dict[tuple[str, str], dict[str, Any]]) -> dict[str, str]:
    """What a pod's process sees: the ConfigMap, then the container's own variables (a
    secret reference must name a Secret key the examples define)."""
    container = _container(k8s)
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
        env[item["name"]] = DUMMY_SECRET
    return env


def test_every_pod_is_a_replica_of_one_cluster(
    k8s: dict[tuple[str, str], dict[str, Any]], tmp_path: Path, certs: Path
) -> None:
    statefulset = k8s[("StatefulSet", "craton-server")]
    spec = statefulset["spec"]
    replicas, service, namespace = spec["replicas"], spec["serviceName"], "craton"
    assert replicas >= 3 and replicas % 2 == 1, "an odd cluster of at least 3"
    assert spec["podManagementPolicy"] == "Parallel", "no replica is ready before a majority"
    env = with_local_files(pod_environment(k8s), tmp_path, certs)
    for ordinal in range(replicas):
        config = accepted(env, hostname=f"craton-server-{ordinal}")
        assert config.replication_mode is ReplicationMode.CLUSTER
        assert config.replica_id == ordinal, f"pod {ordinal} is replica {config.replica_id}"
        assert len(config.cluster_peers) == replicas, config.cluster_peers
        peer = config.cluster_peers[ordinal]
        expected = f"craton-server-{ordinal}.{service}.{namespace}.svc.cluster.local"
        assert peer.host == expected and peer.port == config.bind_addr.port, peer
        assert config.tls, "the replicas serve, and reach each other, over TLS"


def test_probes_ports_and_volumes_are_the_servers(
    k8s: dict[tuple[str, str], dict[str, Any]],
) -> None:
    container, env = _container(k8s), pod_environment(k8s)
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"craton": 5432, "metrics": 9090}, ports
    assert env["VDB_BIND_ADDR"].endswith(":5432") and env["VDB_METRICS_ADDR"].endswith(":9090")
    scheme = "HTTPS" if env.get("VDB_TLS_CERT") else "HTTP"
    for probe, path in (("livenessProbe", "/health"), ("readinessProbe", "/ready")):
        get = container[probe]["httpGet"]
        assert (get["path"], get["port"], get.get("scheme", "HTTP")) == (path, 5432, scheme)
    template = k8s[("StatefulSet", "craton-server")]["spec"]["template"]
    assert template["metadata"]["annotations"]["prometheus.io/port"] == "9090"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    claims = k8s[("StatefulSet", "craton-server")]["spec"]["volumeClaimTemplates"]
    assert mounts[claims[0]["metadata"]["name"]] == env["VDB_DATA_DIR"]
    assert env["VDB_TLS_CERT"].startswith(mounts["certs"] + "/")
    assert container["resources"]["requests"] == {"memory": "2Gi", "cpu": "1"}
    assert claims[0]["spec"]["resources"]["requests"]["storage"] == "100Gi"


def test_services_budget_and_secrets_fit_the_statefulset(
    k8s: dict[tuple[str, str], dict[str, Any]],
) -> None:
    statefulset = k8s[("StatefulSet", "craton-server")]
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    headless = k8s[("Service", statefulset["spec"]["serviceName"])]["spec"]
    assert headless["clusterIP"] == "None" and headless["publishNotReadyAddresses"] is True
    for name in (statefulset["spec"]["serviceName"], "craton"):
        selector = k8s[("Service", name)]["spec"]["selector"]
        assert selector.items() <= labels.items(), f"Service {name} selects no pod"
    budget = k8s[("PodDisruptionBudget", "craton-server")]["spec"]
    assert budget["minAvailable"] == statefulset["spec"]["replicas"] // 2 + 1, "a majority"
    assert budget["selector"]["matchLabels"].items() <= labels.items()
    volumes = statefulset["spec"]["template"]["spec"]["volumes"]
    tls_secret = next(v["secret"]["secretName"] for v in volumes if v["name"] == "certs")
    assert ("Secret", tls_secret) in k8s
    certificate = k8s[("Certificate", "craton-cert")]["spec"]
    assert certificate["secretName"] == tls_secret
    peers = pod_environment(k8s)["VDB_CLUSTER_PEERS"].split(",")
    for peer in peers:  # the issued certificate names every peer's host
        host = peer.strip().rpartition(":")[0]
        assert any(
            name == host or (name.startswith("*.") and host.split(".", 1)[1] == name[2:])
            for name in certificate["dnsNames"]
        ), f"{host} is not in the certificate's dnsNames"
    ingress = k8s[("Ingress", "platform-ingress")]["spec"]
    assert ingress["tls"][0]["secretName"] != tls_secret, "the public certificate is separate"


# --- Compose ---------------------------------------------------------------------------------


def compose_services(path: Path) -> dict[str, Any]:
    code, output = compose_config(path, "--format", "json")
    assert code == 0, output
    services: dict[str, Any] = json.loads(output)["services"]
    return services


def test_compose_single_node_environment_is_accepted(tmp_path: Path, certs: Path) -> None:
    services = compose_services(COMPOSE_FILES[0])
    assert set(services) == {"craton-server", "nats", "platform-app"}
    server = services["craton-server"]
    config = accepted(with_local_files(server["environment"], tmp_path, certs))
    assert config.replication_mode is ReplicationMode.SINGLE_NODE and config.tls
    assert server["environment"]["VDB_AUTH_MODE"] == "jwt"
    secrets = {s["target"] for s in server["secrets"]}
    assert {server["environment"]["VDB_TLS_CERT"], server["environment"]["VDB_TLS_KEY"]} <= secrets
    assert "--config" in services["nats"]["command"]
    assert "healthz" in " ".join(services["nats"]["healthcheck"]["test"])


def test_compose_cluster_is_three_replicas_that_name_each_other(
    tmp_path: Path, certs: Path
) -> None:
    services = compose_services(COMPOSE_FILES[1])
    ids = {}
    for name, service in services.items():
        config = accepted(with_local_files(service["environment"], tmp_path / name, certs))
        assert config.replication_mode is ReplicationMode.CLUSTER
        assert config.cluster_peers[config.replica_id].host == name, "peers list it by name"
        ids[config.replica_id] = name
    assert sorted(ids) == [0, 1, 2], ids


# --- the image -------------------------------------------------------------------------------


def final_stage(path: Path) -> tuple[int, list[str]]:
    """(number of stages, the last stage's instructions, continuation lines joined)."""
    lines = path.read_text().replace("\\\n", " ").splitlines()
    instructions = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    starts = [i for i, line in enumerate(instructions) if line.upper().startswith("FROM ")]
    return len(starts), instructions[starts[-1] :]


def healthcheck_command(path: Path) -> list[str]:
    _, stage = final_stage(path)
    line = next(line for line in stage if line.startswith("HEALTHCHECK "))
    command: list[str] = json.loads(line[line.index("CMD") + 3 :])
    return command


def test_the_image_is_multi_stage_non_root_and_serves_the_ports() -> None:
    path = ROOT / "Dockerfile.craton-server"
    assert path in DOCKERFILES
    stages, stage = final_stage(path)
    assert stages >= 2, "multi-stage: the build tools stay out of the image"
    assert stage[0].startswith("FROM python:3.11-slim"), stage[0]
    user = [line.split()[1] for line in stage if line.startswith("USER ")][-1]
    assert re.fullmatch(r"[1-9][0-9]*(:[0-9]+)?", user), f"a numeric non-root user: {user}"
    assert "VOLUME /data" in stage and "EXPOSE 5432 9090" in stage
    assert stage[-1] == 'CMD ["craton-server"]'
    k8s_user = manifests()[("StatefulSet", "craton-server")]["spec"]["template"]["spec"]
    assert k8s_user["securityContext"]["runAsUser"] == int(user.split(":")[0])
    assert "/health" in " ".join(healthcheck_command(path))


def _run_check(command: list[str], metrics_port: int) -> int:
    """A container health check's command run here, against ``metrics_port``."""
    local = [sys.executable if part == "python" else part for part in command]
    local = [part.replace("127.0.0.1:9090", f"127.0.0.1:{metrics_port}") for part in local]
    return run(*local).returncode


def test_the_health_checks_answer_against_a_live_node(node: ServerProcess) -> None:
    port = int(node.metrics_address.rpartition(":")[2])
    commands = {"Dockerfile": healthcheck_command(ROOT / "Dockerfile.craton-server")}
    for path in COMPOSE_FILES:
        for name, service in compose_services(path).items():
            if name not in ("nats", "platform-app"):  # platform-app: test_platform.py
                test = service["healthcheck"]["test"]
                assert test[0] == "CMD", test
                commands[f"{path.name}:{name}"] = test[1:]
    for where, command in commands.items():
        assert "127.0.0.1:9090" in " ".join(command), f"{where}: {shlex.join(command)}"
        assert _run_check(command, port) == 0, f"{where} fails on a healthy node"
    assert _run_check(commands["Dockerfile"], 1) != 0, "passes with nothing listening"


# --- variables and documentation -------------------------------------------------------------


def test_every_variable_the_kit_sets_is_one_the_server_knows() -> None:
    assert len(KNOWN_VARIABLES) >= 16, KNOWN_VARIABLES
    files = [
        *COMPOSE_FILES,
        ROOT / ".env.example",
        *K8S.glob("*.yaml"),
        *(K8S / "examples").glob("*.yaml"),
        *DOCKERFILES,
    ]
    for path in files:
        used = set(re.findall(r"\bVDB_[A-Z_]*[A-Z]", path.read_text()))
        unknown = used - KNOWN_VARIABLES - PENDING_VARIABLES
        assert not unknown, f"{path.name} sets variables craton-server does not read: {unknown}"


def test_the_deployment_doc_covers_every_variable_and_file() -> None:
    text = GUIDE_DOC.read_text()
    for variable in sorted(KNOWN_VARIABLES | PENDING_VARIABLES):
        assert f"`{variable}`" in text, f"docs/DEPLOYMENT.md does not describe {variable}"
    kit = [
        "Dockerfile.craton-server",
        "Dockerfile.platform-app",
        "docker-compose.yml",
        "docker-compose.cluster.yml",
        ".env.example",
        "deploy/k8s/statefulset.yaml",
        "deploy/k8s/platform-app.yaml",
        "deploy/nats/nats.conf",
        "deploy/nats/nats-cluster.conf",
        "deploy/grafana/craton-dashboard.json",
        "deploy/prometheus/rules.yaml",
        "deploy/prometheus/prometheus.yml",
        "scripts/gen-certs",
        "scripts/cluster",
        "craton verify",
    ]
    for name in kit:
        assert name in text, f"docs/DEPLOYMENT.md does not mention {name}"
        if " " not in name:
            assert (ROOT / name).exists(), f"docs/DEPLOYMENT.md names a missing {name}"


def test_the_build_context_has_the_sources_and_no_secrets() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    copied = [
        source
        for path in DOCKERFILES
        for line in path.read_text().splitlines()
        if line.startswith("COPY ") and "--from" not in line
        for source in line.split()[1:-1]
    ]
    assert copied, "the builder copies the sources"
    for source in copied:
        assert source.rstrip("/") not in ignored, f".dockerignore drops {source}, which is built"
    assert ignored >= {".git", ".venv", "certs", ".env", "data", "cluster-data"}
