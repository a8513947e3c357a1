"""Bulk streams: a dedicated connection carrying one header frame, raw bytes, and a
final reply frame (``BulkChannel``).

Control traffic never queues behind a gigabyte: a request whose op is a bulk handler
gets a connection of its own, which closes after the final frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Awaitable
from typing import IO, Any, TypeVar

from sector.errors import ConnectError, ProtocolError, Timeout, from_wire
from sector.transport.tcp import READ_CHUNK
from sector.wire import codec
from sector.wire.codec import HEADER, Envelope, FrameDecoder

TLS_SEND_CHUNK = 4 << 20  # file bytes per write on a TLS bulk stream

T = TypeVar("T")


class BulkChannel:
    """A dedicated connection carrying one header frame, raw bytes, and a final frame."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        leftover: bytes = b"",
        *,
        stall_timeout: float = 30.0,
        max_frame: int = codec.DEFAULT_MAX_FRAME,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self._buf = bytearray(leftover)
        self.stall_timeout = stall_timeout
        self.max_frame = max_frame
        self.peer = str(writer.get_extra_info("peername"))

    async def read_some(self, n: int = READ_CHUNK) -> bytes:
        """Up to n raw bytes; b'' at end of stream. Times out on a stalled peer."""
        if self._buf:
            out = bytes(self._buf[:n])
            del self._buf[:n]
            return out
        return await self._within(self.reader.read(n), "from")

    async def read_exactly(self, n: int) -> bytes:
        parts = bytearray()
        while len(parts) < n:
            chunk = await self.read_some(n - len(parts))
            if not chunk:
                raise ProtocolError(f"bulk stream from {self.peer} ended early")
            parts += chunk
        return bytes(parts)

    async def read_frame(self) -> Envelope:
        (n,) = HEADER.unpack(await self.read_exactly(HEADER.size))
        if n > self.max_frame:
            raise ProtocolError(f"frame of {n} bytes exceeds the limit of {self.max_frame}")
        dec = FrameDecoder(self.max_frame)
        envs = dec.feed(HEADER.pack(n) + await self.read_exactly(n))
        return envs[0]

    async def read_reply(self) -> Any:
        """The final reply frame; raises the remote error if it is an error reply."""
        env = await self.read_frame()
        if env.e is not None:
            raise from_wire(env.e)
        return env.r

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writer.write(data)
        await self._drain()

    async def _drain(self) -> None:
        await self._within(self.writer.drain(), "to")

    async def _within(self, step: Awaitable[T], way: str) -> T:
        """A read or a drain within the stall timeout; its failure as a TransportError."""
        try:
            return await asyncio.wait_for(step, self.stall_timeout)
        except TimeoutError:
            raise Timeout(
                f"bulk stream {way} {self.peer} stalled for {self.stall_timeout:g} s"
            ) from None
        except (ConnectionError, OSError) as exc:
            raise self._lost(way, exc) from None

    def _lost(self, way: str, exc: OSError) -> ConnectError:
        return ConnectError(f"bulk stream {way} {self.peer} lost: {exc}")

    async def sendfile(self, f: IO[bytes], offset: int, count: int) -> None:
        """Send count bytes of a file: os.sendfile on plain TCP, a read/send loop otherwise."""
        if count == 0:
            return
        await self._drain()
        loop = asyncio.get_running_loop()
        try:
            if self.writer.get_extra_info("sslcontext") is None:
                await loop.sendfile(self.writer.transport, f, offset, count)
            else:
                await self._send_tls(f, offset, count)
        except (ConnectionError, OSError) as exc:
            raise self._lost("to", exc) from None

    async def _send_tls(self, f: IO[bytes], offset: int, count: int) -> None:
        """The file through the TLS transport in large pieces.

        asyncio's own fallback for TLS reads 256 KiB and waits for the buffer to drain
        after each piece (about 85 MB/s here); reading the next piece in a thread
        while the transport encrypts and sends this one, with a deeper write buffer,
        is several times faster.
        """
        loop = asyncio.get_running_loop()
        self.writer.transport.set_write_buffer_limits(high=TLS_SEND_CHUNK * 2)
        fd = f.fileno()
        end = offset + count
        nxt = loop.run_in_executor(None, os.pread, fd, min(TLS_SEND_CHUNK, count), offset)
        while offset < end:
            data = await nxt
            if not data:
                raise ProtocolError(f"file ended {end - offset} bytes early")
            offset += len(data)
            if offset < end:
                nxt = loop.run_in_executor(
                    None, os.pread, fd, min(TLS_SEND_CHUNK, end - offset), offset
                )
            self.writer.write(data)
            await self._drain()

    def raw_socket(self, *, reading: bool = True) -> socket.socket | None:
        """A blocking duplicate of the connection's socket, for a copy loop in a thread.

        The fast path for bulk bytes: asyncio's StreamReader copies every byte twice
        and shifts its buffer on each read (a quarter of a node's time in a profile of
        a chain write), while ``recv_into`` a preallocated buffer in a worker thread
        copies once and releases the GIL. Reading through the transport is paused first,
        and what it had already buffered is moved into this channel (``read_some``
        returns it first). With ``reading=False`` the duplicate is only written to and
        the transport keeps reading (the peer's final reply comes that way). None on
        TLS connections, which must stay on the transport.
        """
        if self.writer.get_extra_info("sslcontext") is not None:
            return None
        sock = self.writer.get_extra_info("socket")
        if sock is None:
            return None
        if not reading:
            raw = socket.socket(fileno=os.dup(sock.fileno()))
            raw.settimeout(self.stall_timeout)
            return raw
        self.writer.transport.pause_reading()  # type: ignore[attr-defined]
        buffered = getattr(self.reader, "_buffer", None)
        if isinstance(buffered, bytearray) and buffered:
            self._buf += buffered
            buffered.clear()
        raw = socket.socket(fileno=os.dup(sock.fileno()))
        raw.settimeout(self.stall_timeout)
        return raw

    def take_buffered(self, limit: int) -> bytes:
        """Up to ``limit`` bytes already read off the socket (the rest stays buffered:
        it may be the frame that follows the raw data)."""
        out = bytes(self._buf[:limit])
        del self._buf[:limit]
        return out

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), 2.0)
