"""docs/PROTOCOL.md says what the code does: its tables and examples are checked here.

The command, error-code and enumeration tables must list exactly the enums' members and
values, in order; each message's field table must match its schema (names, order and the
encoding in words); the limits table must give the constants' values; the hex examples
must be what ``encode`` produces.
"""

from __future__ import annotations

import enum
import itertools
import re
import zlib
from pathlib import Path

import pytest

from craton.core.auth import Role
from craton.core.wire import (
    AppendEvents,
    Command,
    DataClass,
    ErrorCode,
    ErrorReply,
    Message,
    PlacementKind,
    Sync,
    encode,
    frame,
    message_class,
    messages,
)
from craton.core.wire.schema import Record

DOC = Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md"
TEXT = DOC.read_text(encoding="utf-8")


def table_after(heading: str) -> list[list[str]]:
    """The body rows of the first table under ``heading`` (may be none), cells stripped.

    Backticks are removed from the first cell of each row (a name), kept elsewhere.
    """
    lines = TEXT.splitlines()
    assert heading in lines, f"docs/PROTOCOL.md has no heading {heading!r}"
    rows: list[list[str]] = []
    for line in lines[lines.index(heading) + 1 :]:
        if line.startswith("|"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            rows.append([cells[0].strip("`"), *cells[1:]])
        elif rows or line.startswith("#"):
            break
    assert len(rows) >= 2 and set(rows[1][0]) == {"-"}, f"no table under {heading!r}"
    return rows[2:]


def enum_rows(enum_class: type[enum.IntEnum]) -> list[tuple[str, int]]:
    return [(member.name, member.value) for member in enum_class]


def test_command_table_matches_the_enum() -> None:
    documented = [(row[0], int(row[1], 16)) for row in table_after("## Commands")]
    assert documented == enum_rows(Command)


def test_command_table_names_each_message_class() -> None:
    for row in table_after("## Commands"):
        assert row[3] == message_class(Command[row[0]]).__name__, row


def test_error_code_table_matches_the_enum() -> None:
    documented = [(row[0], int(row[1])) for row in table_after("## Error codes")]
    assert documented == enum_rows(ErrorCode)


@pytest.mark.parametrize("enum_class", [DataClass, PlacementKind, Role], ids=lambda e: e.__name__)
def test_enumeration_tables_match_the_enums(enum_class: type[enum.IntEnum]) -> None:
    documented = [(row[0], int(row[1])) for row in table_after(f"### {enum_class.__name__}")]
    assert documented == enum_rows(enum_class)


@pytest.mark.parametrize("command", list(Command), ids=lambda c: c.name)
def test_message_field_table_matches_the_schema(command: Command) -> None:
    cls = message_class(command)
    heading = f"### `{command.name}` (0x{command.value:04X}) — {cls.__name__}"
    documented = [(row[0], row[1]) for row in table_after(heading)]
    schema = [(name, wire.describe()) for name, wire in Record(cls).fields]
    assert documented == schema, f"{heading} differs from {cls.__name__}'s schema"


@pytest.mark.parametrize("record", [messages.Placement, messages.ApiKeyInfo])
def test_record_tables_match_the_schema(record: type) -> None:
    documented = [(row[0], row[1]) for row in table_after(f"### {record.__name__} record")]
    schema = [(name, wire.describe()) for name, wire in Record(record).fields]
    assert documented == schema


def test_limits_table_gives_every_limit_and_its_value() -> None:
    documented = {row[0]: int(row[1]) for row in table_after("## Limits")}
    in_code = {
        name: value
        for module in (frame, messages)
        for name, value in vars(module).items()
        if name.endswith("_MAX") or name == "HEADER_SIZE"
    }
    assert documented == in_code


def test_frame_layout_table_matches_the_header() -> None:
    rows = table_after("## Frame layout")
    offsets = [(int(row[0]), int(row[1])) for row in rows]
    assert offsets[0] == (0, 4) and sum(size for _, size in offsets) == frame.HEADER_SIZE
    assert all(a + size == b for (a, size), (b, _) in itertools.pairwise(offsets))
    assert TEXT.count(f"`{frame.MAGIC.decode()}`") >= 1


def test_checksum_check_value_is_right() -> None:
    assert "`0xCBF43926`" in TEXT
    assert zlib.crc32(b"123456789") == 0xCBF43926
    assert frame.checksum(b"123456789") == 0xCBF43926


def hex_block(data: bytes) -> str:
    pairs = data.hex(" ").split(" ")
    return "\n".join(" ".join(pairs[i : i + 16]) for i in range(0, len(pairs), 16))


@pytest.mark.parametrize(
    ("message", "request_id"),
    [
        (Sync(), 1),
        (AppendEvents("orders", (b"hello",), 41), 7),
        (ErrorReply(ErrorCode.NOT_PRIMARY, "not the primary", "10.0.0.2:5432"), 7),
    ],
    ids=["sync", "append", "error"],
)
def test_examples_are_what_encode_produces(message: Message, request_id: int) -> None:
    assert f"```text\n{hex_block(encode(message, request_id))}\n```" in TEXT


def test_replica_range_is_documented() -> None:
    low, high = frame.COMMAND_REPLICA_RANGE.start, frame.COMMAND_REPLICA_RANGE.stop - 1
    dash = "\N{EN DASH}"
    assert re.search(f"`0x{low:04X}`{dash}`0x{high:04X}`: replica-to-replica messages", TEXT)
    replica_commands = [c for c in Command if c.value in frame.COMMAND_REPLICA_RANGE]
    assert replica_commands, "the replica range holds the VSR messages"
