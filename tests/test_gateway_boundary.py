"""The gateway's boundary, enforced: no module under ``craton/net`` decides session,
admission, retry or reply-cache semantics — those are the core's ``Gateway``
(``craton/core/gateway.py``), which a node and the simulator both run.

The test parses every module under ``craton/net`` and fails, naming file and line, on any
use of the replica's client-facing vocabulary, which only the gateway may speak: the
replica's reply statuses and request numbering (``ReplyStatus``, ``SESSION_SHIFT``,
``NUMBER_MASK``), the replica-level request and reply (``ClientRequest``, ``Reply``), the
mapping of wire clients to sessions (``replica_client_id``, ``READ_CLIENT_ID``), the
registration body, the replica's client table (``.clients``), and the gateway's own
insides (any ``_``-prefixed attribute of a gateway)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "craton"
NET = PACKAGE / "net"

FORBIDDEN_NAMES = frozenset(
    {
        "ReplyStatus",
        "SESSION_SHIFT",
        "NUMBER_MASK",
        "ClientRequest",
        "Reply",
        "replica_client_id",
        "READ_CLIENT_ID",
        "encode_registration",
        "decode_prepare_body",
    }
)
FORBIDDEN_ATTRIBUTES = frozenset({"clients"})  # the replica's client table


def offences(path: Path, root: Path = PACKAGE.parent) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        name = None
        if isinstance(node, ast.Name) and node.id in FORBIDDEN_NAMES:
            name = node.id
        elif isinstance(node, ast.alias) and node.name.split(".")[-1] in FORBIDDEN_NAMES:
            name = node.name
        elif isinstance(node, ast.Attribute) and (
            node.attr in FORBIDDEN_NAMES or node.attr in FORBIDDEN_ATTRIBUTES
        ):
            name = node.attr
        elif (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "gateway"
        ):
            name = f"gateway.{node.attr}"
        if name is not None:
            line = getattr(node, "lineno", 0)
            found.append(f"{path.relative_to(root)}:{line}: {name}")
    return found


def test_no_net_module_speaks_the_replicas_client_protocol() -> None:
    modules = sorted(NET.rglob("*.py"))
    assert len(modules) >= 10, f"expected the net modules, found {modules}"
    found = [offence for path in modules for offence in offences(path)]
    assert found == [], (
        "sessions, admission, retries and the reply cache are the gateway's "
        "(craton/core/gateway.py); craton/net only submits and hands answers back:\n"
        + "\n".join(found)
    )


def test_the_check_sees_what_it_forbids(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from craton.core.vsr.replica import ReplyStatus\n"
        "x = host.replica.clients.get(1)\n"
        "y = self.gateway._sessions\n"
        "z = ClientRequest(1, 2, b'')\n"
    )
    found = offences(sample, tmp_path)
    assert len(found) == 4, found
