"""Frames: the envelope every Craton wire message travels in, and the incremental decoder.

A frame is a 32-byte header followed by a body of ``body_size`` bytes (layout below, all
integers little-endian; docs/PROTOCOL.md has the byte-by-byte table):

    offset size field
     0      4   magic            b"CRTN"
     4      2   protocol_version u16, PROTOCOL_VERSION
     6      2   command          u16, a ``Command`` value
     8      2   flags            u16, FLAG_RETRY or 0; other bits must be 0
    10      2   reserved         u16, must be 0
    12      4   body_size        u32, at most BODY_SIZE_MAX
    16      8   request_id       u64, echoed by the reply
    24      4   body_checksum    u32, CRC-32 of the body
    28      4   header_checksum  u32, CRC-32 of header bytes 0..28

Checksum choice: CRC-32 (``zlib.crc32``, the IEEE 802.3 polynomial of gzip and PNG). It
catches every burst error up to 32 bits and all but 2**-32 of random damage, it is in the
standard library of every language a client may be written in, and it runs at memory speed.
It detects damage and misframing, not forgery: TLS and replica authentication do that. The
header checksum covers the body checksum, so together they cover header and body, and the
header (with its length field) is verified before a single body byte is awaited.

Rules the decoder keeps:
- Magic is checked on the first bytes received, so a stranger is refused without waiting
  for a whole header; the version comes next (it is the one field every version keeps at
  the same place), then the header checksum, then every other header field.
- ``body_size`` is checked against ``BODY_SIZE_MAX`` as soon as the header is complete and
  before any body byte is awaited; the buffer only ever holds bytes actually received.
- The buffer never holds more than one incomplete frame plus the last chunk fed: callers
  drain complete frames (``next_frame``) before feeding more, or ``feed`` raises
  ``DecoderNotDrained``.
- The frames produced, and the error raised, do not depend on how the bytes were chunked.
- After a ``DecodeError`` the byte stream is out of step: the decoder refuses to continue.
"""

from __future__ import annotations

import enum
import struct
import zlib
from typing import NamedTuple, NoReturn

import attrs

from craton.core.wire.errors import DecodeError, DecoderNotDrained, ErrorCode, MessageTooLarge

MAGIC = b"CRTN"
PROTOCOL_VERSION = 1
PROTOCOL_VERSIONS_SUPPORTED = (1,)
HEADER_SIZE = 32
FRAME_SIZE_MAX = 16 * 1024 * 1024  # bytes, header included
BODY_SIZE_MAX = FRAME_SIZE_MAX - HEADER_SIZE
REQUEST_ID_MAX = 2**64 - 1
# A client request that may have been sent before and applied (an earlier attempt went out
# and got no answer that rules it out): the node never opens a session for it.
FLAG_RETRY = 0x0001
FLAGS_KNOWN = FLAG_RETRY
_SMALL_FRAME_SIZE = 4096  # bytes; a decoder copies a frame this small out of its buffer twice

# <: little-endian. magic, version, command, flags, reserved, body_size, request_id, body
# checksum; the header checksum (u32) follows at offset 28.
_HEADER = struct.Struct("<4sHHHHIQI")
_CHECKSUM = struct.Struct("<I")
_CHECKSUMMED_SIZE = _HEADER.size
assert _CHECKSUMMED_SIZE + _CHECKSUM.size == HEADER_SIZE


class Command(enum.IntEnum):
    """The message type tag in the frame header. Values are never reused.

    0x0001..0x00FF: the client protocol (below). 0x0100..0x01FF: reserved for replica to
    replica messages (VSR prepare, prepare-ok, commit, view change, repair, ...). 0x0000 and
    0x0200..0xFFFF are unassigned; a frame carrying one is refused.
    """

    HANDSHAKE = 0x0001
    HANDSHAKE_REPLY = 0x0002
    CREATE_STREAM = 0x0003
    CREATE_STREAM_REPLY = 0x0004
    APPEND_EVENTS = 0x0005
    APPEND_EVENTS_REPLY = 0x0006
    READ_EVENTS = 0x0007
    READ_EVENTS_REPLY = 0x0008
    READ_EVENTS_AS_OF = 0x0009
    SYNC = 0x000A
    SYNC_REPLY = 0x000B
    ERROR_REPLY = 0x000C
    CREATE_API_KEY = 0x000D
    CREATE_API_KEY_REPLY = 0x000E
    REVOKE_API_KEY = 0x000F
    REVOKE_API_KEY_REPLY = 0x0010
    LIST_API_KEYS = 0x0011
    LIST_API_KEYS_REPLY = 0x0012
    # replica to replica (craton.core.wire.replica)
    PREPARE = 0x0101
    PREPARE_OK = 0x0102
    COMMIT = 0x0103
    START_VIEW_CHANGE = 0x0104
    DO_VIEW_CHANGE = 0x0105
    START_VIEW = 0x0106
    REQUEST_START_VIEW = 0x0107
    GET_STATE = 0x0108
    NEW_STATE = 0x0109
    RECOVERY = 0x010A
    RECOVERY_RESPONSE = 0x010B
    REQUEST_PREPARE = 0x010C
    PREPARE_REPLY = 0x010D
    NEW_CHECKPOINT = 0x010E


COMMAND_CLIENT_RANGE = range(0x0001, 0x0100)
COMMAND_REPLICA_RANGE = range(0x0100, 0x0200)
_COMMANDS: dict[int, Command] = {command.value: command for command in Command}


@attrs.frozen
class Frame:
    """One whole, checksum-verified frame; its body is not decoded yet."""

    command: Command
    request_id: int
    body: bytes
    flags: int = 0


def checksum(data: bytes | bytearray | memoryview) -> int:
    """The wire checksum: CRC-32 (IEEE 802.3), as an unsigned 32-bit integer."""
    return zlib.crc32(data) & 0xFFFFFFFF


def encode_frame(command: Command, request_id: int, body: bytes, flags: int = 0) -> bytes:
    """Wrap ``body`` in a frame header; raises on values the header cannot carry."""
    if flags & ~FLAGS_KNOWN:
        raise ValueError(f"unknown flags 0x{flags:04x}")
    if not 0 <= request_id <= REQUEST_ID_MAX:
        raise ValueError(f"request_id must be in 0..{REQUEST_ID_MAX}, got {request_id}")
    if len(body) > BODY_SIZE_MAX:
        raise MessageTooLarge(f"body of {len(body)} bytes exceeds BODY_SIZE_MAX={BODY_SIZE_MAX}")
    header = _HEADER.pack(
        MAGIC,
        PROTOCOL_VERSION,
        command,
        flags,
        0,
        len(body),
        request_id,
        checksum(body),
    )
    return header + _CHECKSUM.pack(checksum(header)) + body


def parse_frame(data: bytes) -> Frame:
    """Decode exactly one whole frame: nothing missing, nothing after it."""
    if len(data) < HEADER_SIZE:
        _check_magic(data[: len(MAGIC)])
        raise DecodeError(f"truncated frame: {len(data)} bytes do not make a whole frame")
    header = _parse_header(data[:HEADER_SIZE])
    frame_size = HEADER_SIZE + header.body_size
    if len(data) < frame_size:
        raise DecodeError(f"truncated frame: {len(data)} bytes do not make a whole frame")
    if len(data) > frame_size:
        raise DecodeError(f"{len(data) - frame_size} trailing bytes after the frame")
    return _verified_frame(header, data[HEADER_SIZE:])


def _verified_frame(header: _Header, body: bytes) -> Frame:
    if checksum(body) != header.body_checksum:
        raise DecodeError("body checksum mismatch")
    return Frame(header.command, header.request_id, body, header.flags)


class _Header(NamedTuple):
    command: Command
    request_id: int
    body_size: int
    body_checksum: int
    flags: int


def _check_magic(prefix: bytes) -> None:
    """Refuse a stream whose first bytes (however many have arrived) are not the magic."""
    if MAGIC.startswith(prefix):
        return
    for offset, (got, want) in enumerate(zip(prefix, MAGIC, strict=False)):
        if got != want:
            raise DecodeError(f"bad magic: byte {offset} is 0x{got:02x}, expected 0x{want:02x}")


def _parse_header(header: bytes | bytearray) -> _Header:
    assert len(header) == HEADER_SIZE
    magic, version, command, flags, reserved, body_size, request_id, body_checksum = (
        _HEADER.unpack_from(header)
    )
    if magic != MAGIC:
        _check_magic(magic)
    if version not in PROTOCOL_VERSIONS_SUPPORTED:
        raise DecodeError(
            f"protocol version {version} is not supported (supported: "
            f"{', '.join(map(str, PROTOCOL_VERSIONS_SUPPORTED))})",
            ErrorCode.UNSUPPORTED_VERSION,
        )
    (header_checksum,) = _CHECKSUM.unpack_from(header, _CHECKSUMMED_SIZE)
    if checksum(header[:_CHECKSUMMED_SIZE]) != header_checksum:
        raise DecodeError("header checksum mismatch")
    if flags & ~FLAGS_KNOWN:
        raise DecodeError(f"unknown flags 0x{flags:04x}")
    if reserved != 0:
        raise DecodeError(f"reserved header field is 0x{reserved:04x}, must be 0")
    if body_size > BODY_SIZE_MAX:
        raise DecodeError(
            f"body_size {body_size} exceeds BODY_SIZE_MAX={BODY_SIZE_MAX}", ErrorCode.TOO_LARGE
        )
    known = _COMMANDS.get(command)
    if known is None:
        raise DecodeError(f"unknown command 0x{command:04x}")
    return _Header(known, request_id, body_size, body_checksum, flags)


class FrameDecoder:
    """Turns a byte stream, in chunks of any size, into whole verified frames.

    Use: ``feed(chunk)``, then call ``next_frame()`` until it returns ``None``; repeat. At the
    end of the stream, ``finish()`` raises if a frame was cut short. Any ``DecodeError`` is
    final: every later call raises it again.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._header: _Header | None = None  # the verified header of the frame at the front
        self._failure: DecodeError | None = None

    @property
    def buffered_size(self) -> int:
        """Bytes received and not yet returned as part of a frame."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Buffer ``data``; raises ``DecodeError`` at once if the frame in front is invalid."""
        if self._failure is not None:
            self._raise_if_failed()
        buffer = self._buffer
        if self._header is None and buffer:  # (an empty buffer has nothing to check)
            self._check_front()
        header = self._header
        if header is not None and len(buffer) >= HEADER_SIZE + header.body_size:
            raise DecoderNotDrained("call next_frame() until None before feeding more bytes")
        buffer += data
        if header is None:
            self._check_front()

    def next_frame(self) -> Frame | None:
        """The next whole frame, or ``None`` until more bytes are fed."""
        if self._failure is not None:
            self._raise_if_failed()
        buffer = self._buffer
        header = self._header
        if header is None:
            if not buffer:
                return None
            self._check_front()
            header = self._header
            if header is None:
                return None
        frame_size = HEADER_SIZE + header.body_size
        if len(buffer) < frame_size:
            return None
        if frame_size <= _SMALL_FRAME_SIZE:  # two small copies beat a memoryview's setup
            body = bytes(buffer[HEADER_SIZE:frame_size])
        else:
            with memoryview(buffer) as view:
                body = bytes(view[HEADER_SIZE:frame_size])
        del buffer[:frame_size]
        self._header = None
        if zlib.crc32(body) & 0xFFFFFFFF != header.body_checksum:
            self._fail(DecodeError("body checksum mismatch"))
        return Frame(header.command, header.request_id, body, header.flags)

    def finish(self) -> None:
        """The stream has ended: raises ``DecodeError`` if it stopped inside a frame."""
        self._raise_if_failed()
        if self._buffer:
            self._fail(DecodeError(f"stream ended inside a frame ({len(self._buffer)} bytes)"))

    def _check_front(self) -> None:
        if self._header is not None:
            return
        buffer = self._buffer
        try:
            if len(buffer) < HEADER_SIZE:
                _check_magic(bytes(buffer[: len(MAGIC)]))
            else:
                self._header = _parse_header(buffer[:HEADER_SIZE])
        except DecodeError as error:
            self._fail(error)

    def _fail(self, error: DecodeError) -> NoReturn:
        self._failure = error
        self._buffer.clear()
        self._header = None
        raise error

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            raise DecodeError(
                f"decoder stopped after an earlier error: {self._failure.reason}",
                self._failure.code,
            )
