"""The compiled record codecs against the field by field ones, on every schema.

Each record's body is built from one well-formed encoding per field, then one field at a
time is replaced by each of its edge encodings (bounds and one past them, unknown enum
values, bad presence bytes, lengths over the limit or past the end, invalid UTF-8, text
outside its pattern), and the body is also cut short at every length and given a trailing
byte. The compiled decoder must give the same message, or raise the same error, as the
field by field decoder; every message that decodes must encode to the same bytes both ways.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Iterator
from typing import Any

import pytest

from craton.core import event_store, kv_machine
from craton.core.wire import codec
from craton.core.wire import replica as vsr
from craton.core.wire.errors import DecodeError
from craton.core.wire.schema import (
    Blob,
    EnumType,
    Fields,
    Option,
    Reader,
    Record,
    Seq,
    Text,
    UInt,
    WireType,
)

_U32 = struct.Struct("<I")
TEXT_SAMPLES = ("", "a", "Zz9", "a-b.c:d_e", "-a", "a b", "ä", "\x7f", "A" * 70)


@contextlib.contextmanager
def field_by_field() -> Iterator[None]:
    saved = Record.decode, Record.encode
    Record.decode, Record.encode = Record.decode_checked, Record.encode_checked  # type: ignore[method-assign]
    try:
        yield
    finally:
        Record.decode, Record.encode = saved  # type: ignore[method-assign]


def samples(wire: WireType[Any], depth: int = 0) -> list[bytes]:
    """Encodings of values of ``wire``'s shape, valid and not."""
    if isinstance(wire, UInt):
        top = 2**wire.bits - 1
        values = {0, 1, wire.minimum, wire.maximum, top}
        values |= {value for value in (wire.minimum - 1, wire.maximum + 1) if 0 <= value <= top}
        return [value.to_bytes(wire.bits // 8, "little") for value in sorted(values)]
    if isinstance(wire, EnumType):
        known = sorted(wire._members)
        values = [*known, 0, max(known) + 1, 2**wire.bits - 1]
        return [value.to_bytes(wire.bits // 8, "little") for value in values]
    if isinstance(wire, Text):
        texts = [text.encode() for text in TEXT_SAMPLES]
        texts += [b"\xff", b"a" * wire.size_max, b"a" * (wire.size_max + 1)]
        encodings = [_U32.pack(len(text)) + text for text in texts]
        return [*encodings, _U32.pack(5) + b"ab", _U32.pack(2**32 - 1)]
    if isinstance(wire, Blob):
        full = [_U32.pack(wire.size_max) + bytes(wire.size_max)] if wire.size_max <= 64 else []
        return [
            *full,
            _U32.pack(0),
            _U32.pack(3) + b"abc",
            _U32.pack(wire.size_max + 1) + b"abc",
            _U32.pack(5) + b"ab",
            b"\x01",
        ]
    if isinstance(wire, Option):
        inner = samples(wire.inner, depth + 1)[:4]
        return [b"\x00", *(b"\x01" + each for each in inner), b"\x02", b""]
    if isinstance(wire, Seq):
        inner = samples(wire.inner, depth + 1)[:3] if depth < 2 else []
        counts = [_U32.pack(0), _U32.pack(wire.count_max + 1), _U32.pack(3)]
        return [*counts, *(_U32.pack(1) + each for each in inner), _U32.pack(2) + b"".join(inner)]
    if isinstance(wire, Record):
        fields = [samples(field, depth + 1) for _, field in wire.fields]
        base = b"".join(
            _valid(field, options) for (_, field), options in zip(wire.fields, fields, strict=True)
        )
        return [base, *(b"".join(options[-1:]) for options in fields[:1]), base[:-1]]
    raise AssertionError(f"no samples for {wire!r}")


def _valid(wire: WireType[Any], options: list[bytes]) -> bytes:
    """The first of ``options`` that is one whole valid encoding of ``wire``."""
    for option in options:
        reader = Reader(option)
        with field_by_field():
            try:
                wire.decode(reader)
                reader.finish()
            except DecodeError:
                continue
        return option
    raise AssertionError(f"no valid sample for {wire!r}")


def outcome(decode: Any, body: bytes) -> object:
    reader = Reader(body)
    try:
        value = decode(reader)
        reader.finish()
    except DecodeError as error:
        return ("error", error.reason, error.code)
    return value


def bodies(wires: list[WireType[Any]]) -> Iterator[bytes]:
    options = [samples(wire) for wire in wires]
    base = [_valid(wire, each) for wire, each in zip(wires, options, strict=True)]
    joined = b"".join(base)
    yield joined + b"\x00"
    for cut in range(len(joined) + 1):
        yield joined[:cut]
    for index, each in enumerate(options):
        for option in each:
            yield b"".join([*base[:index], option, *base[index + 1 :]])


def _records() -> dict[str, Record[Any]]:
    found: dict[str, Record[Any]] = {}
    for module in (codec, event_store, kv_machine, vsr):
        for value in vars(module).values():
            candidates = value.values() if isinstance(value, dict) else [value]
            for candidate in candidates:
                record = candidate[1] if isinstance(candidate, tuple) else candidate
                if isinstance(record, Record):
                    found[record.record_class.__name__] = record
    return found


RECORDS = _records()


def test_every_schema_is_covered() -> None:
    expected = {"AppendEvents", "PrepareBody", "Prepare", "ListApiKeysReply", "StoreError"}
    assert expected <= set(RECORDS), f"schemas missing from the test: {expected - set(RECORDS)}"


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_compiled_record_codec_matches_field_by_field(name: str) -> None:
    record = RECORDS[name]
    accepted = 0
    for body in bodies([wire for _, wire in record.fields]):
        compiled = outcome(record.decode, body)
        with field_by_field():
            expected = outcome(record.decode, body)
        assert compiled == expected and type(compiled) is type(expected), (
            f"{name}: body {body.hex()}: compiled gave {compiled!r}, expected {expected!r}"
        )
        if isinstance(compiled, tuple):
            continue
        accepted += 1
        out, reference = bytearray(), bytearray()
        record.encode(compiled, out)
        with field_by_field():
            record.encode(compiled, reference)
        assert out == reference == body, f"{name}: {compiled!r} must encode to {body.hex()}"
    assert accepted > 0, f"{name}: no sample body was valid, so nothing was compared"


def test_compiled_fields_match_one_by_one() -> None:
    wires: list[WireType[Any]] = [
        EnumType(event_store.RequestKind, 8),
        UInt(64, maximum=10),
        Text(0, 8),
        Option(UInt(128, minimum=1)),
    ]
    fields = Fields(*wires)
    for body in bodies(wires):
        compiled = outcome(fields.decode, body)
        expected = outcome(lambda reader: tuple(wire.decode(reader) for wire in wires), body)
        assert compiled == expected, f"body {body.hex()}: {compiled!r}, expected {expected!r}"
