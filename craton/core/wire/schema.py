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

    def __init__(self, data: bytes | memoryview) -> None:
        self.data = data  # a view, for a state too large to copy
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
        return chunk if type(chunk) is bytes else bytes(chunk)

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
        chunk = data[start:end]
        return chunk if type(chunk) is bytes else bytes(chunk)

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
            field.converter is None
            for field in attrs.fields(record_class)  # type: ignore[arg-type]
        ) and "__slots__" in vars(record_class)
        self._fast_decode: FastDecode | None = None  # compiled on first use
        self._fast_encode: FastEncode | None = None

    def check(self, value: object) -> None:
        if not isinstance(value, self.record_class):
            raise TypeError(f"expected {self.record_class.__name__}, got {type(value).__name__}")

    def encode(self, value: T, out: bytearray) -> None:
        encode = self._fast_encode
        if encode is None:
            encode = self._fast_encode = _compile_record_encoder(self)
        encode(value, out)

    def decode(self, reader: Reader) -> T:
        data = reader.data
        if type(data) is not bytes:  # the compiled decoder reads bytes, not views
            return self.decode_checked(reader)
        decode = self._fast_decode
        if decode is None:
            decode = self._fast_decode = _compile_record_decoder(self)
        decoded = decode(data, reader.offset)
        if decoded is None:  # not a valid encoding: the field by field path says why
            return self.decode_checked(reader)
        value, reader.offset = decoded
        return value  # type: ignore[no-any-return]

    def encode_checked(self, value: T, out: bytearray) -> None:
        """``encode``, one field at a time (the reference the compiled encoder matches)."""
        for name, wire in self.fields:
            wire.encode(getattr(value, name), out)

    def decode_checked(self, reader: Reader) -> T:
        """``decode``, one field at a time: the reference the compiled decoder matches, and
        the path that names the field and the rule a bad encoding breaks."""
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


class Fields:
    """A run of wire types decoded one after the other, outside any record (e.g. a header
    in front of a message): ``decode`` returns their values in order."""

    def __init__(self, *wires: WireType[Any]) -> None:
        self.wires = wires
        self._fast_decode: FastDecode | None = None

    def decode(self, reader: Reader) -> tuple[Any, ...]:
        data = reader.data
        decode = self._fast_decode
        if decode is None:
            decode = self._fast_decode = _compile_fields_decoder(self.wires)
        decoded = decode(data, reader.offset) if type(data) is bytes else None
        if decoded is None:  # invalid (or a view): each type's own decode says why
            return tuple(wire.decode(reader) for wire in self.wires)
        values, reader.offset = decoded
        return values  # type: ignore[no-any-return]


# --- Compiled codecs -------------------------------------------------------------------------
#
# ``Record`` and ``Fields`` compile, on first use, one straight-line Python function per
# schema: consecutive fixed-size fields (and the length or count prefix after them) are one
# ``struct`` call, and checks are inline comparisons. A compiled decoder never raises for bad
# bytes: it returns None, and the caller runs the field by field decoder, which raises the
# ``DecodeError`` that names the field. It returns a value only where that decoder returns the
# same value, and the compiled encoder writes the same bytes as the field by field one (the
# property tests compare both on every message).

FastDecode = typing.Callable[[bytes, int], "tuple[Any, int] | None"]
FastEncode = typing.Callable[[Any, bytearray], None]
_STRUCT_CODES = {8: "B", 16: "H", 32: "I", 64: "Q"}


class _Code:
    """Python source being generated, and the constants it refers to."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.names: dict[str, object] = {"DecodeError": DecodeError}
        self._count = 0

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{hint}{self._count}"

    def const(self, value: object, hint: str = "k") -> str:
        name = self.fresh(f"_{hint}")
        self.names[name] = value
        return name

    def line(self, indent: int, text: str) -> None:
        self.lines.append("    " * indent + text)

    def function(self, name: str) -> Any:
        namespace = dict(self.names)
        exec("\n".join(self.lines), namespace)  # the source is built above, from schemas only
        return namespace[name]


def _fixed_code(wire: WireType[Any]) -> str | None:
    """The struct code of a fixed-size field, or None."""
    if type(wire) is UInt and wire.bits in _STRUCT_CODES:
        return _STRUCT_CODES[wire.bits]
    if type(wire) is EnumType:
        return _STRUCT_CODES[wire.bits]
    return None


def _prefixed(wire: WireType[Any]) -> bool:
    """Whether the field starts with a u32 length or count that a struct run can take."""
    return type(wire) in (Blob, Text, Seq)


def _emit_decode(code: _Code, wires: typing.Sequence[WireType[Any]], indent: int) -> list[str]:
    """Lines decoding ``wires`` from ``data`` at ``o`` (``n`` is its length), each failure a
    ``return None``; returns the variables holding the values."""
    result: list[str] = []
    index = 0
    while index < len(wires):
        run: list[tuple[str, WireType[Any]]] = []
        fmt = ""
        while index < len(wires) and (part := _fixed_code(wires[index])) is not None:
            run.append((code.fresh("v"), wires[index]))
            fmt += part
            index += 1
        tail = wires[index] if index < len(wires) and _prefixed(wires[index]) else None
        if not run and tail is None:
            result.append(_emit_decode_one(code, wires[index], indent))
            index += 1
            continue
        names = [name for name, _ in run]
        if tail is not None:
            names.append(code.fresh("n"))
            fmt += "I"
            index += 1
        layout = struct.Struct("<" + fmt)
        code.line(indent, f"if o + {layout.size} > n: return None")
        code.line(indent, f"{', '.join(names)}, = {code.const(layout, 's')}.unpack_from(data, o)")
        code.line(indent, f"o += {layout.size}")
        for name, wire in run:
            _emit_check_fixed(code, name, wire, indent)
            result.append(name)
        if tail is not None:
            result.append(_emit_decode_tail(code, tail, names[-1], indent))
    return result


def _emit_check_fixed(code: _Code, name: str, wire: WireType[Any], indent: int) -> None:
    if isinstance(wire, EnumType):
        code.line(indent, f"{name} = {code.const(wire._members, 'm')}.get({name})")
        code.line(indent, f"if {name} is None: return None")
    elif isinstance(wire, UInt) and (wire.minimum, wire.maximum) != (0, 2**wire.bits - 1):
        code.line(indent, f"if not {wire.minimum} <= {name} <= {wire.maximum}: return None")


def _emit_slice(code: _Code, size: str, indent: int) -> str:
    """Lines taking ``size`` bytes at ``o``; returns the variable holding them."""
    end, value = code.fresh("e"), code.fresh("b")
    code.line(indent, f"{end} = o + {size}")
    code.line(indent, f"if {end} > n: return None")
    code.line(indent, f"{value} = data[o:{end}]")
    code.line(indent, f"o = {end}")
    return value


def _emit_decode_tail(code: _Code, wire: WireType[Any], size: str, indent: int) -> str:
    """The rest of a Blob, Text or Seq whose u32 prefix is in ``size``."""
    if isinstance(wire, Blob):
        code.line(indent, f"if {size} > {wire.size_max}: return None")
        return _emit_slice(code, size, indent)
    if isinstance(wire, Text):
        code.line(indent, f"if not {wire.text_size_min} <= {size} <= {wire.size_max}: return None")
        raw = _emit_slice(code, size, indent)
        text = code.fresh("t")
        code.line(indent, f"try: {text} = {raw}.decode('utf-8')")
        code.line(indent, "except UnicodeDecodeError: return None")
        if wire._regex is not None:
            regex = code.const(wire._regex, "r")
            code.line(indent, f"if {regex}.fullmatch({text}) is None: return None")
        return text
    assert isinstance(wire, Seq)
    inner = wire.inner
    code.line(indent, f"if not {wire.count_min} <= {size} <= {wire.count_max}: return None")
    code.line(indent, f"if {size} * {inner.size_min} > n - o: return None")
    items = code.fresh("items")
    code.line(indent, f"{items} = []")
    code.line(indent, f"for _ in range({size}):")
    if type(inner) is Blob:
        length = code.fresh("n")
        code.line(indent + 1, "if o + 4 > n: return None")
        code.line(indent + 1, f"{length}, = {code.const(_LENGTH, 's')}.unpack_from(data, o)")
        code.line(indent + 1, "o += 4")
        code.line(indent + 1, f"if {length} > {inner.size_max}: return None")
        item = _emit_slice(code, length, indent + 1)
    else:
        item = _emit_decode_one(code, inner, indent + 1)
    code.line(indent + 1, f"{items}.append({item})")
    value = code.fresh("q")
    code.line(indent, f"{value} = tuple({items})")
    return value


def _emit_decode_one(code: _Code, wire: WireType[Any], indent: int) -> str:
    """A field that no struct run takes: a u128, an option, a record, or any other type."""
    value = code.fresh("v")
    if type(wire) is UInt and wire.bits == 128:
        raw = _emit_slice(code, "16", indent)
        code.line(indent, f"{value} = int.from_bytes({raw}, 'little')")
        code.line(indent, f"if not {wire.minimum} <= {value} <= {wire.maximum}: return None")
        return value
    if type(wire) is Option:
        code.line(indent, "if o >= n: return None")
        presence = code.fresh("p")
        code.line(indent, f"{presence} = data[o]")
        code.line(indent, "o += 1")
        code.line(indent, f"if {presence} == 0: {value} = None")
        code.line(indent, f"elif {presence} == 1:")
        (inner,) = _emit_decode(code, [wire.inner], indent + 1)
        code.line(indent + 1, f"{value} = {inner}")
        code.line(indent, "else: return None")
        return value
    decode = code.const(_fast_decoder_of(wire), "d")
    decoded = code.fresh("r")
    code.line(indent, f"{decoded} = {decode}(data, o)")
    code.line(indent, f"if {decoded} is None: return None")
    code.line(indent, f"{value}, o = {decoded}")
    return value


def _fast_decoder_of(wire: WireType[Any]) -> FastDecode:
    if isinstance(wire, Record):
        if wire._fast_decode is None:
            wire._fast_decode = _compile_record_decoder(wire)
        return wire._fast_decode

    def decode(data: bytes, offset: int) -> tuple[Any, int] | None:
        reader = Reader(data)
        reader.offset = offset
        try:
            value = wire.decode(reader)
        except DecodeError:
            return None
        return value, reader.offset

    return decode


def _compile_fields_decoder(wires: typing.Sequence[WireType[Any]]) -> FastDecode:
    code = _Code()
    code.line(0, "def decode(data, o):")
    code.line(1, "n = len(data)")
    values = _emit_decode(code, wires, 1)
    code.line(1, f"return ({''.join(value + ', ' for value in values)}), o")
    return code.function("decode")  # type: ignore[no-any-return]


def _compile_record_decoder(record: Record[Any]) -> FastDecode:
    code = _Code()
    code.line(0, "def decode(data, o):")
    code.line(1, "n = len(data)")
    values = _emit_decode(code, [wire for _, wire in record.fields], 1)
    cls = code.const(record.record_class, "c")
    if record._built_directly:
        code.line(1, f"value = _new({cls})")
        code.names["_new"] = object.__new__
        code.names["_set"] = object.__setattr__
        for (name, _), variable in zip(record.fields, values, strict=True):
            code.line(1, f"_set(value, {name!r}, {variable})")
        if record._post_init is not None:
            post = code.const(record._post_init, "post")
            code.line(1, f"try: {post}(value)")
            code.line(1, "except ValueError: return None")
    else:
        code.line(1, f"try: value = {cls}({', '.join(values)})")
        code.line(1, "except ValueError: return None")
    code.line(1, "return value, o")
    return code.function("decode")  # type: ignore[no-any-return]


def _emit_encode(code: _Code, wires: typing.Sequence[WireType[Any]], values: list[str]) -> None:
    """Lines appending the encodings of ``values`` (expressions) to ``out``."""
    index = 0
    while index < len(wires):
        args: list[str] = []
        fmt = ""
        while index < len(wires) and (part := _fixed_code(wires[index])) is not None:
            args.append(values[index])
            fmt += part
            index += 1
        tail = wires[index] if index < len(wires) and _prefixed(wires[index]) else None
        if not args and tail is None:
            _emit_encode_one(code, wires[index], values[index])
            index += 1
            continue
        body = None
        if tail is not None:
            body = code.fresh("x")
            expression = values[index]
            encoded = f"{expression}.encode('utf-8')" if isinstance(tail, Text) else expression
            code.line(1, f"{body} = {encoded}")
            args.append(f"len({body})")
            fmt += "I"
            index += 1
        layout = code.const(struct.Struct("<" + fmt), "s")
        code.line(1, f"out += {layout}.pack({', '.join(args)})")
        if isinstance(tail, Seq):
            item = code.fresh("i")
            code.line(1, f"for {item} in {body}:")
            if type(tail.inner) is Blob:
                code.line(2, f"out += {code.const(_LENGTH, 's')}.pack(len({item}))")
                code.line(2, f"out += {item}")
            else:
                code.line(2, f"{code.const(_fast_encoder_of(tail.inner), 'w')}({item}, out)")
        elif tail is not None:
            code.line(1, f"out += {body}")


def _emit_encode_one(code: _Code, wire: WireType[Any], value: str) -> None:
    if type(wire) is UInt and wire.bits == 128:
        code.line(1, f"out += {value}.to_bytes(16, 'little')")
        return
    if type(wire) is Option:
        present = code.fresh("x")
        inner = code.const(_fast_encoder_of(wire.inner), "w")
        code.line(1, f"{present} = {value}")
        code.line(1, f"if {present} is None: out.append(0)")
        code.line(1, f"else: out.append(1); {inner}({present}, out)")
        return
    code.line(1, f"{code.const(_fast_encoder_of(wire), 'w')}({value}, out)")


def _fast_encoder_of(wire: WireType[Any]) -> FastEncode:
    if isinstance(wire, Record):
        if wire._fast_encode is None:
            wire._fast_encode = _compile_record_encoder(wire)
        return wire._fast_encode
    return wire.encode


def _compile_record_encoder(record: Record[Any]) -> FastEncode:
    code = _Code()
    code.line(0, "def encode(value, out):")
    code.line(1, "pass")
    _emit_encode(
        code, [wire for _, wire in record.fields], [f"value.{name}" for name, _ in record.fields]
    )
    return code.function("encode")  # type: ignore[no-any-return]
