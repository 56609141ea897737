"""What pyproject.toml promises matches the code: every third-party module imported under
craton/ (the platform's from the ``platform`` extra), tests/ and scripts/ (from the ``test``
extra) comes from a declared distribution; every runtime dependency is imported by craton;
the version is written once (craton.__version__) and the licence ships with the package."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import craton

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
FIRST_PARTY = {"craton", "tests", "scripts"}


def normalized(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def declared(requirements: list[str]) -> set[str]:
    names = set()
    for requirement in requirements:
        match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
        assert match, f"expected a requirement to start with a name: {requirement!r}"
        names.add(normalized(match.group()))
    return names


RUNTIME = declared(PYPROJECT["project"]["dependencies"])
EXTRAS = {
    extra: declared(requirements)
    for extra, requirements in PYPROJECT["project"]["optional-dependencies"].items()
}


def third_party_imports(path: Path) -> set[str]:
    """The top-level names ``path`` imports (at any depth) that are neither the standard
    library, nor Craton's own packages, nor a module beside ``path``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            beside = path.parent / top
            if top in sys.stdlib_module_names or top in FIRST_PARTY:
                continue
            if beside.with_suffix(".py").exists() or beside.is_dir():
                continue
            found.add(top)
    return found


def allowed_for(path: Path) -> set[str]:
    """The distributions a file may import from: craton the runtime dependencies (the
    platform also its extra), tests and scripts also the ``test`` extra."""
    relative = path.relative_to(ROOT)
    if relative.parts[0] != "craton":
        return RUNTIME | EXTRAS["test"]
    if relative.parts[:2] == ("craton", "platform"):
        return RUNTIME | EXTRAS["platform"]
    return RUNTIME


def sources(*folders: str) -> list[Path]:
    return sorted(path for folder in folders for path in (ROOT / folder).rglob("*.py"))


def test_every_third_party_import_is_declared() -> None:
    distributions = importlib.metadata.packages_distributions()
    undeclared = []
    for path in sources("craton", "tests", "scripts"):
        allowed = allowed_for(path)
        for module in sorted(third_party_imports(path)):
            providers = {normalized(name) for name in distributions.get(module, [])}
            if not providers & allowed:
                where = path.relative_to(ROOT)
                undeclared.append(f"{where}: {module} (from {sorted(providers) or 'nothing'})")
    assert not undeclared, "expected every import declared in pyproject.toml:\n" + "\n".join(
        undeclared
    )


def test_every_runtime_dependency_is_used() -> None:
    distributions = importlib.metadata.packages_distributions()
    imported = set()
    for path in sources("craton"):
        for module in third_party_imports(path):
            imported.update(normalized(name) for name in distributions.get(module, []))
    unused = sorted(RUNTIME - imported)
    assert not unused, f"expected craton to import every runtime dependency; unused: {unused}"


def test_the_version_is_written_once() -> None:
    project = PYPROJECT["project"]
    assert "version" not in project and "version" in project.get("dynamic", []), project
    dynamic = PYPROJECT["tool"]["setuptools"]["dynamic"]["version"]
    assert dynamic == {"attr": "craton.__version__"}, dynamic
    assert importlib.metadata.version("craton") == craton.__version__, (
        "expected the installed metadata to carry craton.__version__; reinstall the package"
    )


def test_the_licence_is_apache_2_and_ships() -> None:
    project = PYPROJECT["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("Copyright ") and "The Craton authors" in text.splitlines()[0]
    assert "Apache License\n                           Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    for dockerfile in ("Dockerfile.craton-server", "Dockerfile.platform-app"):
        copies = (ROOT / dockerfile).read_text(encoding="utf-8")
        assert "COPY pyproject.toml README.md LICENSE ./" in copies, (
            f"expected {dockerfile} to copy LICENSE, which the build needs"
        )
    classifiers = project["classifiers"]
    for classifier in (
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Operating System :: OS Independent",
    ):
        assert classifier in classifiers, f"expected the classifier {classifier!r}"
