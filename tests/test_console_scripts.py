"""What a user meets first: every console script answers ``--help`` and ``--version``;
``craton-server --help`` lists every ``VDB_*`` variable with its default; ``platform-app``
without its extra says what to install; every ``craton`` option documents its default; a
client command aimed where no node listens fails fast, in one line."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from craton import __version__
from craton.cli import _parser
from craton.net.config import REQUIRED, UNSET, VARIABLES, load_config

SCRIPTS = {  # console script -> the module it runs
    "craton": "craton",
    "craton-server": "craton.net.server_main",
    "platform-app": "craton.platform.main",
}
WITHOUT_EXTRA = (  # run a module as if the platform extra were not installed
    "import runpy, sys; sys.modules['nats'] = None; sys.modules['webauthn'] = None; "
    "sys.argv[0] = 'platform-app'; runpy.run_module('craton.platform.main', run_name='__main__')"
)
UNREACHABLE_S_MAX = 8.0  # far above the 2 s the CLI allows, so that a slow machine passes


def run(*command: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("VDB_", "CRATON_"))}
    return subprocess.run(
        [sys.executable, *command],
        capture_output=True,
        text=True,
        env={**clean, **env},
        timeout=60,
    )


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_console_script_answers_help_and_version(script: str) -> None:
    helped = run("-m", SCRIPTS[script], "--help")
    assert helped.returncode == 0, f"{script} --help: expected exit 0, got {helped}"
    assert helped.stdout.startswith(f"usage: {script}"), helped.stdout
    assert helped.stderr == "", f"{script} --help wrote to stderr: {helped.stderr}"
    version = run("-m", SCRIPTS[script], "--version")
    assert version.returncode == 0, f"{script} --version: expected exit 0, got {version}"
    assert version.stdout == f"craton {__version__}\n"
    unknown = run("-m", SCRIPTS[script], "--no-such-option")
    assert unknown.returncode == 2 and unknown.stderr.count("\n") == 1, unknown
    assert "Traceback" not in unknown.stderr


def test_server_help_lists_every_variable_with_its_default() -> None:
    helped = run("-m", "craton.net.server_main", "--help")
    lines = helped.stdout.splitlines()
    assert len(VARIABLES) >= 21, "expected the deployment guide's variables and two more"
    for variable in VARIABLES:
        found = [line.split() for line in lines if line.split()[:1] == [variable.name]]
        assert len(found) == 1, f"expected one line for {variable.name} in:\n{helped.stdout}"
        assert found[0][1] == variable.default, f"{variable.name}: default not shown"
        assert " ".join(found[0][2:]) == variable.description
        assert variable.description and len(variable.description) <= 56


def test_server_help_needs_no_configuration() -> None:
    helped = run("-m", "craton.net.server_main", "--help", VDB_AUTH_MODE="nonsense")
    assert helped.returncode == 0 and "VDB_DATA_DIR" in helped.stdout


class Recording(Mapping[str, str]):
    """An environment that notes every variable asked for."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values = values
        self.asked: list[str] = []

    def __getitem__(self, key: str) -> str:
        self.asked.append(key)
        return self.values[key]

    def get(self, key: str, default: object = None) -> object:  # type: ignore[override]
        self.asked.append(key)
        return self.values.get(key, default)

    def __iter__(self) -> Iterator[str]:
        raise AssertionError("the configuration reader must ask for variables by name")

    def __len__(self) -> int:
        return len(self.values)


def test_the_variable_table_is_exactly_what_the_configuration_reads(tmp_path: Path) -> None:
    environ = Recording({"VDB_DATA_DIR": str(tmp_path)})
    config = load_config(environ, hostname="host-0")
    read = {name for name in environ.asked if name.startswith("VDB_")}
    table = [variable.name for variable in VARIABLES]
    assert len(table) == len(set(table)), "a variable is listed twice"
    unlisted, unread = sorted(read - set(table)), sorted(set(table) - read)
    assert not unlisted and not unread, f"read, not listed: {unlisted}; listed, not read: {unread}"
    shown = config.summary()
    for variable in VARIABLES:
        key = variable.name.removeprefix("VDB_").lower()
        if variable.default in (REQUIRED, UNSET) or key not in shown:
            continue
        assert str(shown[key]).lower() == variable.default, f"{variable.name}'s default"


def test_platform_app_without_its_extra_names_the_extra_in_one_line() -> None:
    for option in ("--help", "--version"):
        answered = run("-c", WITHOUT_EXTRA, option)
        assert answered.returncode == 0, f"platform-app {option} without the extra: {answered}"
    refused = run("-c", WITHOUT_EXTRA)
    assert refused.returncode != 0
    assert refused.stderr.count("\n") == 1, f"expected one line, got {refused.stderr!r}"
    assert "pip install 'craton[platform]'" in refused.stderr
    assert "Traceback" not in refused.stderr and refused.stdout == ""


Parsers = Iterator[tuple[str, argparse.ArgumentParser]]


def parsers(parser: argparse.ArgumentParser, path: str) -> Parsers:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from parsers(sub, f"{path} {name}")


def test_every_craton_option_has_help_that_states_its_default() -> None:
    problems = []
    seen = 0
    for path, parser in parsers(_parser(), "craton"):
        required_groups = {
            id(action)
            for group in parser._mutually_exclusive_groups
            if group.required
            for action in group._group_actions
        }
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
                continue
            seen += 1
            name = f"{path} {'/'.join(action.option_strings) or action.metavar or action.dest}"
            text = action.help or ""
            if not text or text == argparse.SUPPRESS:
                problems.append(f"{name}: no help text")
            elif action.option_strings and not isinstance(action, argparse._VersionAction):
                needed = ("required",) if action.required or id(action) in required_groups else ()
                if not any(word in text for word in ("default", *needed)):
                    problems.append(f"{name}: the help does not state the default: {text!r}")
    assert seen >= 60, f"expected to walk every subcommand's options, saw {seen}"
    assert not problems, "\n".join(problems)


def free_port() -> int:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        return int(unused.getsockname()[1])


@pytest.mark.parametrize("command", [["status"], ["append", "orders", "placed"]], ids=str)
def test_a_client_command_where_no_node_listens_fails_fast_in_one_line(
    command: list[str],
) -> None:
    address = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    failed = run("-m", "craton", *command, "--address", address)
    elapsed_s = time.monotonic() - started
    print(f"craton {' '.join(command)} to {address}: failed after {elapsed_s:.2f} s")
    assert failed.returncode == 3, f"expected exit 3 (unreachable), got {failed}"
    assert failed.stderr.count("\n") == 1, f"expected one line, got {failed.stderr!r}"
    assert failed.stderr.startswith(f"craton: cannot connect to {address}"), failed.stderr
    assert "Traceback" not in failed.stderr and failed.stdout == ""
    assert elapsed_s < UNREACHABLE_S_MAX, f"expected about 2 s, took {elapsed_s:.1f} s"
