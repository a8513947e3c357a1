"""Length-prefixed msgpack frames, sans-I/O (bytes in, messages out).

A frame is a 4-byte big-endian length followed by that many bytes of msgpack. The
decoder never touches a socket: the transport feeds it whatever bytes arrived and gets
back whole messages. This is what lets us test the codec by joining two ends with a
fake link, and what lets a connection switch to raw bulk bytes after a header frame
(``take_rest`` hands back what was read past the last frame).

Every message is an *envelope* (see ``Envelope``): requests carry ``i`` (request id),
``op`` and ``a`` (arguments); replies carry ``i`` and ``r``; error replies carry ``i``
and ``e`` (a typed error, see ``sector.errors.to_wire``). An envelope of the wrong
shape is a protocol error, like garbage bytes or an oversize frame: the transport
closes that connection and keeps serving the others.
"""

from __future__ import annotations

import struct
from typing import Any

import msgspec

from sector.errors import ProtocolError

HEADER = struct.Struct(">I")
DEFAULT_MAX_FRAME = 16 * 1024 * 1024


class Envelope(msgspec.Struct, omit_defaults=True):
    """One frame's message. Requests: i, op, a. Replies: i, r. Errors: i, e."""

    i: int
    op: str | None = None
    a: dict[str, Any] | None = None
    r: Any = None
    e: dict[str, Any] | None = None

    @property
    def is_request(self) -> bool:
        return self.op is not None


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Envelope)


def encode(env: Envelope) -> bytes:
    """One whole frame (header + body) for an envelope."""
    body = _encoder.encode(env)
    return HEADER.pack(len(body)) + body


def request(i: int, op: str, args: dict[str, Any]) -> bytes:
    return encode(Envelope(i=i, op=op, a=args))


def reply(i: int, result: Any) -> bytes:
    return encode(Envelope(i=i, r=result))


def error(i: int, err: dict[str, Any]) -> bytes:
    return encode(Envelope(i=i, e=err))


class FrameDecoder:
    """Incremental decoder: ``feed(bytes) -> [Envelope]``.

    Raises ProtocolError on an oversize length, bytes that are not msgpack, or an
    envelope of the wrong shape. After an error the decoder is poisoned: the
    connection it serves must be closed, since framing can no longer be trusted.
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()
        self._need: int | None = None  # body length of the frame being read
        self._broken: ProtocolError | None = None
        self.last_size = 0  # body bytes of the frame ``pop`` returned last

    @property
    def pending(self) -> bool:
        """True while part of a frame has arrived (a stall here is a slow-loris)."""
        return bool(self._buf) or self._need is not None

    @property
    def expecting(self) -> int | None:
        """Body bytes of the frame being read, once its header is in (else None)."""
        return self._need

    def feed(self, data: bytes | bytearray | memoryview) -> list[Envelope]:
        """Take in bytes and decode every whole frame they complete."""
        self.push(data)
        out: list[Envelope] = []
        while (env := self.pop()) is not None:
            out.append(env)
        return out

    def push(self, data: bytes | bytearray | memoryview) -> None:
        """Take in bytes without decoding (``pop`` decodes, one frame at a time)."""
        if self._broken is not None:
            raise self._broken
        self._buf += data

    def pop(self) -> Envelope | None:
        """The next whole frame, or None if more bytes are needed.

        One frame at a time matters: after a bulk request header, the bytes that follow
        are raw data, not frames, and must be left for ``take_rest``.
        """
        if self._broken is not None:
            raise self._broken
        try:
            if self._need is None:
                if len(self._buf) < HEADER.size:
                    return None
                (n,) = HEADER.unpack_from(self._buf)
                if n > self.max_frame:
                    raise ProtocolError(f"frame of {n} bytes exceeds the limit of {self.max_frame}")
                del self._buf[: HEADER.size]
                self._need = n
            if len(self._buf) < self._need:
                return None
            body = bytes(self._buf[: self._need])
            del self._buf[: self._need]
            self.last_size, self._need = self._need, None
            return _decode_body(body)
        except ProtocolError as exc:
            self._broken = exc
            raise

    def take_rest(self) -> bytes:
        """Bytes buffered past the last whole frame (raw bulk data that followed a header)."""
        if self._need is not None:
            raise ProtocolError("raw data requested in the middle of a frame")
        rest = bytes(self._buf)
        self._buf.clear()
        return rest


def _decode_body(body: bytes) -> Envelope:
    try:
        env = _decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise ProtocolError(f"malformed message: {exc}") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        # msgspec lets a str that is not UTF-8 through as UnicodeDecodeError.
        raise ProtocolError(f"undecodable frame: {exc}") from None
    if env.op is not None and env.a is None:
        env.a = {}
    return env
