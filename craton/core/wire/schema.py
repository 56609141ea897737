"""The schema machinery: wire types for message fields, and records built from them.

A message (or a record nested in one) is an ``attrs`` frozen class declared with
``field_transformer=wire_fields`` whose every field is annotated
``Annotated[python_type, <WireType>]``. ``wire_fields`` makes the wire type the field's
validator and records it in the field's metadata; ``Record(cls)`` then encodes and decodes
the fields in declaration order. Adding a message is declaring a class: no codec code.

Rules every wire type keeps:
- Fixed-size integers are little-endian. Every variable-size value starts with a u32
  length or count, bounded by a named limit that is checked before the bytes are consumed,
  and a count is refused at once if the bytes left cannot hold that many items.
- ``decode`` returns only values the field's validator accepts, or raises ``DecodeError``
  (never another exception) naming the field and what is wrong. Errors never quote the
  received text or bytes: a field may hold a credential, and errors end up in logs.
- The encoding is canonical: a value has exactly one encoding, and decoding accepts only
  that one (presence bytes are 0 or 1, text is strict UTF-8).
- Construction checks the same rules (``TypeError`` for a wrong type, ``ValueError`` for a
  wrong value), so every message that exists can be encoded.
"""

from __future__ import annotations

import abc
import enum
import re
import struct
import typing
from typing import Any, Generic, Literal, TypeVar

import attrs

from craton.core.wire.errors import DecodeError, ErrorCode

T = TypeVar("T")
E = TypeVar("E", bound=enum.IntEnum)

WIRE_METADATA_KEY = "craton.wire"

_LENGTH = struct.Struct("<I")  # every length and count prefix
_PRESENCE = struct.Struct("<B")
_UINT_FORMATS = {8: "<B", 16: "<H", 32: "<I", 64: "<Q"}


class Reader:
    """A cursor over one frame body; running past its end is a ``DecodeError``."""

    __slots__ = ("data", "offset")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0

    @property
    def remaining(self) -> int:
        return len(self.data) - self.offset

    def take(self, size: int) -> bytes:
        end = self.offset + size
        if end > len(self.data):
            raise DecodeError(f"needs {size} bytes, only {self.remaining} left in the body")
        chunk = self.data[self.offset : end]
        self.offset = end
        return chunk

    def unpack(self, layout: struct.Struct) -> tuple[Any, ...]:
        try:
            values = layout.unpack_from(self.data, self.offset)
        except struct.error:  # fewer than layout.size bytes left
            raise DecodeError(
                f"needs {layout.size} bytes, only {self.remaining} left in the body"
            ) from None
        self.offset += layout.size
        return values

    def length(self, what: str, minimum: int, maximum: int) -> int:
        """A u32 length or count prefix, refused unless within minimum..maximum."""
        (value,) = self.unpack(_LENGTH)
        if minimum <= value <= maximum:
            return int(value)
        if value > maximum:
            raise DecodeError(f"{what} {value} exceeds the limit {maximum}", ErrorCode.TOO_LARGE)
        raise DecodeError(f"{what} {value} is below the minimum {minimum}")

    def sized(self, minimum: int, maximum: int) -> bytes:
        """A u32 length within minimum..maximum, then that many bytes (the hot path)."""
        data, offset = self.data, self.offset
        try:
            (size,) = _LENGTH.unpack_from(data, offset)
        except struct.error:
            raise DecodeError(f"needs 4 bytes, only {self.remaining} left in the body") from None
        if not minimum <= size <= maximum:
            if size > maximum:
                raise DecodeError(f"length {size} exceeds the limit {maximum}", ErrorCode.TOO_LARGE)
            raise DecodeError(f"length {size} is below the minimum {minimum}")
        start = offset + _LENGTH.size
        end = start + size
        if end > len(data):
            raise DecodeError(f"needs {size} bytes, only {len(data) - start} left in the body")
        self.offset = end
        return data[start:end]

    def finish(self) -> None:
        if self.remaining:
            raise DecodeError(f"{self.remaining} trailing bytes after the message")


class WireType(abc.ABC, Generic[T]):
    """How one field is checked, encoded, decoded and documented."""

    size_min: int  # the fewest bytes an encoding of this type takes

    @abc.abstractmethod
    def check(self, value: object) -> None:
        """Raise ``TypeError`` or ``ValueError`` unless ``value`` is valid for this type."""

    @abc.abstractmethod
    def encode(self, value: T, out: bytearray) -> None: ...

    @abc.abstractmethod
    def decode(self, reader: Reader) -> T: ...

    @abc.abstractmethod
    def describe(self) -> str:
        """The encoding in words, as docs/PROTOCOL.md shows it."""


class UInt(WireType[int]):
    """An unsigned little-endian integer of 8, 16, 32, 64 or 128 bits, within a range."""

    def __init__(
        self,
        bits: Literal[8, 16, 32, 64, 128],
        minimum: int = 0,
        maximum: int | None = None,
    ) -> None:
        limit = 2**bits - 1
        self.bits = bits
        self.minimum = minimum
        self.maximum = limit if maximum is None else maximum
        assert 0 <= self.minimum <= self.maximum <= limit
        self.size_min = bits // 8
        self._layout = struct.Struct(_UINT_FORMATS[bits]) if bits in _UINT_FORMATS else None

    def check(self, value: object) -> None:
        if type(value) is not int:
            raise TypeError(f"expected int, got {type(value).__name__}")
        if not self.minimum <= value <= self.maximum:
            raise ValueError(f"{value} is outside {self.minimum}..{self.maximum}")

    def encode(self, value: int, out: bytearray) -> None:
        if self._layout is None:
            out += value.to_bytes(self.size_min, "little")
        else:
            out += self._layout.pack(value)

    def decode(self, reader: Reader) -> int:
        if self._layout is None:
            value = int.from_bytes(reader.take(self.size_min), "little")
        else:
            (value,) = reader.unpack(self._layout)
        if not self.minimum <= value <= self.maximum:
            raise DecodeError(f"{value} is outside {self.minimum}..{self.maximum}")
        return int(value)

    def describe(self) -> str:
        full = self.maximum == 2**self.bits - 1
        if full and self.minimum == 0:
            return f"u{self.bits}"
        if full:
            return f"u{self.bits}, at least {self.minimum}"
        return f"u{self.bits}, {self.minimum}..{self.maximum}"


class EnumType(WireType[E]):
    """An ``IntEnum`` member as a u8 or u16; values outside the enum are refused."""

    def __init__(self, enum_class: type[E], bits: Literal[8, 16]) -> None:
        self.enum_class = enum_class
        self.bits = bits
        self.size_min = bits // 8
        self._layout = struct.Struct(_UINT_FORMATS[bits])
        self._members: dict[int, E] = {member.value: member for member in enum_class}
        assert all(0 <= value < 2**bits for value in self._members)

    def check(self, value: object) -> None:
        if not isinstance(value, self.enum_class):
            raise TypeError(f"expected {self.enum_class.__name__}, got {type(value).__name__}")

    def encode(self, value: E, out: bytearray) -> None:
        out += self._layout.pack(value)

    def decode(self, reader: Reader) -> E:
        (raw,) = reader.unpack(self._layout)
        member = self._members.get(raw)
        if member is None:
            raise DecodeError(f"{raw} is not a {self.enum_class.__name__} value")
        return member

    def describe(self) -> str:
        return f"u{self.bits} {self.enum_class.__name__}"


class Blob(WireType[bytes]):
    """Opaque bytes: a u32 length, then that many bytes."""

    def __init__(self, size_max: int) -> None:
        self.size_max = size_max
        self.size_min = _LENGTH.size

    def check(self, value: object) -> None:
        if type(value) is not bytes:
            raise TypeError(f"expected bytes, got {type(value).__name__}")
        if len(value) > self.size_max:
            raise ValueError(f"{len(value)} bytes exceeds the limit {self.size_max}")

    def encode(self, value: bytes, out: bytearray) -> None:
        out += _LENGTH.pack(len(value))
        out += value

    def decode(self, reader: Reader) -> bytes:
        return reader.sized(0, self.size_max)

    def describe(self) -> str:
        return f"u32 length + 0..{self.size_max} bytes"


class Text(WireType[str]):
    """UTF-8 text: a u32 byte length within bounds, then the bytes, matching a pattern."""

    def __init__(self, size_min: int, size_max: int, pattern: str | None = None) -> None:
        assert 0 <= size_min <= size_max
        self.text_size_min = size_min
        self.size_max = size_max
        self.pattern = pattern
        self._regex = None if pattern is None else re.compile(pattern)
        self.size_min = _LENGTH.size + size_min

    def check(self, value: object) -> None:
        if type(value) is not str:
            raise TypeError(f"expected str, got {type(value).__name__}")
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            raise ValueError("text is not encodable as UTF-8 (lone surrogate)") from None
        if not self.text_size_min <= size <= self.size_max:
            raise ValueError(f"{size} bytes is outside {self.text_size_min}..{self.size_max}")
        if self._regex is not None and self._regex.fullmatch(value) is None:
            raise ValueError(f"text does not match {self.pattern}")

    def encode(self, value: str, out: bytearray) -> None:
        encoded = value.encode("utf-8")
        out += _LENGTH.pack(len(encoded))
        out += encoded

    def decode(self, reader: Reader) -> str:
        raw = reader.sized(self.text_size_min, self.size_max)
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise DecodeError(f"invalid UTF-8 at byte {error.start}") from None
        if self._regex is not None and self._regex.fullmatch(value) is None:
            raise DecodeError(f"text does not match {self.pattern}")
        return value

    def describe(self) -> str:
        words = f"u32 length + {self.text_size_min}..{self.size_max} bytes UTF-8"
        return words if self.pattern is None else f"{words} matching `{self.pattern}`"


class Option(WireType[T | None]):
    """An optional value: a u8 presence byte (0 absent, 1 present), then the value."""

    def __init__(self, inner: WireType[T]) -> None:
        self.inner = inner
        self.size_min = _PRESENCE.size

    def check(self, value: object) -> None:
        if value is not None:
            self.inner.check(value)

    def encode(self, value: T | None, out: bytearray) -> None:
        if value is None:
            out.append(0)
        else:
            out.append(1)
            self.inner.encode(value, out)

    def decode(self, reader: Reader) -> T | None:
        (presence,) = reader.unpack(_PRESENCE)
        if presence == 0:
            return None
        if presence != 1:
            raise DecodeError(f"presence byte is {presence}, must be 0 or 1")
        return self.inner.decode(reader)

    def describe(self) -> str:
        return f"u8 presence (0 or 1), then if 1: {self.inner.describe()}"


class Seq(WireType[tuple[T, ...]]):
    """A tuple of values: a u32 count within bounds, then each value."""

    def __init__(self, inner: WireType[T], count_min: int, count_max: int) -> None:
        assert 0 <= count_min <= count_max
        self.inner = inner
        self.count_min = count_min
        self.count_max = count_max
        self.size_min = _LENGTH.size + count_min * inner.size_min

    def check(self, value: object) -> None:
        if type(value) is not tuple:
            raise TypeError(f"expected tuple, got {type(value).__name__}")
        if not self.count_min <= len(value) <= self.count_max:
            raise ValueError(f"{len(value)} items is outside {self.count_min}..{self.count_max}")
        for index, item in enumerate(value):
            try:
                self.inner.check(item)
            except TypeError as error:
                raise TypeError(f"[{index}]: {error}") from None
            except ValueError as error:
                raise ValueError(f"[{index}]: {error}") from None

    def encode(self, value: tuple[T, ...], out: bytearray) -> None:
        out += _LENGTH.pack(len(value))
        for item in value:
            self.inner.encode(item, out)

    def decode(self, reader: Reader) -> tuple[T, ...]:
        count = reader.length("count", self.count_min, self.count_max)
        if count * self.inner.size_min > reader.remaining:
            raise DecodeError(f"count {count} cannot fit in the {reader.remaining} bytes left")
        items = []
        for index in range(count):
            try:
                items.append(self.inner.decode(reader))
            except DecodeError as error:
                raise DecodeError(f"[{index}]: {error.reason}", error.code) from None
        return tuple(items)

    def describe(self) -> str:
        return f"u32 count ({self.count_min}..{self.count_max}), then each: {self.inner.describe()}"


class Record(WireType[T]):
    """An attrs class declared with ``wire_fields``: its fields in declaration order."""

    def __init__(self, record_class: type[T]) -> None:
        self.record_class = record_class
        self.fields: tuple[tuple[str, WireType[Any]], ...] = tuple(
            (field.name, field.metadata[WIRE_METADATA_KEY])
            for field in attrs.fields(record_class)  # type: ignore[arg-type]
        )
        self.size_min = sum(wire.size_min for _, wire in self.fields)
        self._post_init = getattr(record_class, "__attrs_post_init__", None)
        self._built_directly = all(
            field.converter is None for field in attrs.fields(record_class)  # type: ignore[arg-type]
        ) and "__slots__" in vars(record_class)

    def check(self, value: object) -> None:
        if not isinstance(value, self.record_class):
            raise TypeError(f"expected {self.record_class.__name__}, got {type(value).__name__}")

    def encode(self, value: T, out: bytearray) -> None:
        for name, wire in self.fields:
            wire.encode(getattr(value, name), out)

    def decode(self, reader: Reader) -> T:
        values: list[Any] = []
        for name, wire in self.fields:
            try:
                values.append(wire.decode(reader))
            except DecodeError as error:
                raise DecodeError(f"{name}: {error.reason}", error.code) from None
        try:
            return self._build(values)
        except ValueError as error:  # a rule across fields (``__attrs_post_init__``)
            raise DecodeError(f"{self.record_class.__name__}: {error}") from None

    def _build(self, values: list[Any]) -> T:
        """The instance of ``values``. Each decoded value already passed what its field's
        validator checks (a decoder yields only values its type accepts), so the hot path
        sets the fields directly and runs just the rule across fields."""
        if not self._built_directly:
            return self.record_class(*values)
        instance = object.__new__(self.record_class)
        for (name, _), value in zip(self.fields, values, strict=True):
            object.__setattr__(instance, name, value)
        if self._post_init is not None:
            self._post_init(instance)
        return instance

    def describe(self) -> str:
        return f"{self.record_class.__name__} record"


def wire_fields(cls: type, fields: list[attrs.Attribute[Any]]) -> list[attrs.Attribute[Any]]:
    """attrs ``field_transformer``: each field's ``Annotated`` wire type becomes its validator."""
    result = []
    for field in fields:
        wire = wire_type_of(cls, field)
        assert field.validator is None, f"{cls.__name__}.{field.name}: the wire type validates"
        metadata = {**field.metadata, WIRE_METADATA_KEY: wire}
        result.append(field.evolve(validator=_validator(wire), metadata=metadata))
    return result


def wire_type_of(cls: type, field: attrs.Attribute[Any]) -> WireType[Any]:
    annotation: Any = field.type
    if typing.get_origin(annotation) is typing.Annotated:
        wires = [extra for extra in annotation.__metadata__ if isinstance(extra, WireType)]
        if len(wires) == 1:
            return wires[0]
    raise TypeError(
        f"{cls.__name__}.{field.name} must be annotated Annotated[<type>, <one WireType>]"
        " (is `from __future__ import annotations` in effect in its module?)"
    )


def _validator(wire: WireType[Any]) -> Any:
    def validate(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        try:
            wire.check(value)
        except TypeError as error:
            raise TypeError(f"{attribute.name}: {error}") from None
        except ValueError as error:
            raise ValueError(f"{attribute.name}: {error}") from None

    return validate
