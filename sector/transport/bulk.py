"""Bulk streams, and the one place that moves their bytes to and from files.

``BulkChannel`` is a dedicated connection carrying one header frame, raw bytes, and a
final reply frame: control traffic never queues behind a gigabyte, since a request
whose op is a bulk handler gets a connection of its own, closed after the final frame.

``send_file`` and ``recv`` move the bytes. Whether a stream is plain TCP or TLS is
decided here (``BulkChannel.tls``), and the rest of the code never sees a socket:

- sending a file: ``os.sendfile`` on plain TCP; on TLS, read, encrypted and sent by a
  worker thread that takes the connection's TLS state over (``tlspump``);
- receiving: on plain TCP, ``recv_into`` one preallocated buffer in a worker thread
  (one copy, the GIL released; asyncio's StreamReader copies every byte twice); on
  TLS, decrypted into such a buffer by a worker thread (``tlspump``), and the next hop
  of a chain encrypted for by the same thread. Either way every chunk goes to a sink
  (a file, a ``BlobWriter``), optionally to a hasher, and optionally on to the next
  hop of a replica chain, whose failure only ends the forwarding (the chain goes on
  without it). A TLS transport the pump cannot take (not asyncio's own) keeps the
  transport path: chunk by chunk through the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import IO, Any, Protocol, TypeVar

from sector.errors import (
    BadRequest,
    ConnectError,
    ProtocolError,
    Timeout,
    TransportError,
    from_wire,
)
from sector.transport import wan
from sector.transport.tcp import READ_CHUNK, Pace, recv_some
from sector.transport.tlspump import TlsPump, TlsSender, senders
from sector.wire import codec
from sector.wire.codec import HEADER, Envelope, FrameDecoder

log = logging.getLogger("sector.bulk")

TLS_SEND_CHUNK = 4 << 20  # file bytes per write on a TLS bulk stream
RECV_CHUNK = 4 << 20  # the receive buffer (one per transfer, reused for every read)
PROGRESS_STEP = 16 << 20  # bytes between two progress reports

T = TypeVar("T")
Progress = Callable[[int, int], None]  # (bytes done, bytes in all)


class Sink(Protocol):
    """Where received bytes go: a binary file, a ``BlobWriter``."""

    def write(self, data: memoryview, /) -> object: ...


class Hasher(Protocol):
    """A running checksum (``blake3.blake3()``, ``hashlib.sha256()``)."""

    def update(self, data: memoryview, /) -> object: ...


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
        # Encrypted: its bytes must go through the transport (read once: a TLS transport
        # closed twice has no extra info left to give).
        self.tls = writer.get_extra_info("sslcontext") is not None
        # Congestion control and buffers for the path (``wan.py``); its RTT in seconds.
        self.rtt = wan.fit(writer.get_extra_info("socket"))

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
        self._check_open()
        self.writer.write(data)
        await self._drain()

    def _check_open(self) -> None:
        """A stream closed under the handler (the peer hung up, a bad request on the same
        connection closed it) is lost: writing to it would drop the bytes, or raise
        AttributeError on a TLS transport closed twice."""
        if self.writer.is_closing():
            raise ConnectError(f"bulk stream to {self.peer} lost: closed")

    async def _drain(self) -> None:
        await self._within(self.writer.drain(), "to")

    async def _within(self, step: Awaitable[T], way: str) -> T:
        """A read or a drain within the stall timeout; its failure as a TransportError."""
        try:
            async with asyncio.timeout(self.stall_timeout):  # not wait_for: see Server._serve
                return await step
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
        self._check_open()
        loop = asyncio.get_running_loop()
        try:
            if not self.tls:
                await loop.sendfile(self.writer.transport, f, offset, count)
            else:
                await self._send_tls(f, offset, count)
        except (ConnectionError, OSError) as exc:
            raise self._lost("to", exc) from None

    async def _send_tls(self, f: IO[bytes], offset: int, count: int) -> None:
        """The file encrypted and sent by a worker thread (``tlspump``), else through
        the transport."""
        pump = await self.tls_pump()
        if pump is None:
            await self._send_tls_transport(f, offset, count)
            return
        sock = pump.duplicate(self.stall_timeout)
        try:
            await asyncio.get_running_loop().run_in_executor(
                senders(),
                pump.send_file,
                sock,
                f.fileno(),
                offset,
                count,
                f"bulk stream to {self.peer}",
            )
        finally:
            sock.close()
            pump.resume()

    async def tls_pump(self, *, reading: bool = False) -> TlsPump | None:
        """The connection's TLS state for a worker thread (``tlspump``), the loop's
        reading paused and every byte it had queued sent; None if it cannot be had.
        With ``reading``, what the ``StreamReader`` had already decrypted is moved into
        this channel (``take_buffered`` returns it first). The caller resumes it."""
        pump = TlsPump.of(self.writer.transport)
        if pump is None:
            return None
        if not pump.flushed():
            # Writing paused at the first byte queued, resumed at none: drain() then
            # returns once everything is on the socket. (A high mark of 0 would pause
            # an empty buffer too, and nothing would ever resume it.)
            self.writer.transport.set_write_buffer_limits(high=1, low=0)
            try:
                for _ in range(100):
                    await self._drain()
                    if pump.flushed():
                        break
                    await asyncio.sleep(0.001)
                else:
                    return None
            finally:
                self.writer.transport.set_write_buffer_limits()
        self._check_open()
        pump.pause()
        if reading:
            buffered = getattr(self.reader, "_buffer", None)
            if isinstance(buffered, bytearray) and buffered:
                self._buf += buffered
                buffered.clear()
        return pump

    async def _send_tls_transport(self, f: IO[bytes], offset: int, count: int) -> None:
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
            await self.write(data)

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
        if self.tls:
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


async def send_file(
    chan: BulkChannel, f: IO[bytes], offset: int, count: int, *, progress: Progress | None = None
) -> None:
    """``count`` bytes of an open file from ``offset`` down the stream (``sendfile`` on
    plain TCP), with a progress report every ``PROGRESS_STEP`` bytes and at the end."""
    if progress is None:
        await chan.sendfile(f, offset, count)
        return
    sent = 0
    while sent < count:
        n = min(PROGRESS_STEP, count - sent)
        await chan.sendfile(f, offset + sent, n)
        sent += n
        progress(sent, count)


async def next_request(chan: BulkChannel, op: str) -> dict[str, Any] | None:
    """The arguments of the next ``op`` request on a kept stream (a handler's loop:
    ``swarm.piece`` links, a striped read's ``blob.get``); None once the peer closed
    it (or it went idle). Another op there is a BadRequest."""
    try:
        env = await chan.read_frame()
    except TransportError:
        return None
    if env.op != op or not env.is_request:
        raise BadRequest(f"{env.op!r} on a {op} stream")
    return env.a or {}


async def recv(
    chan: BulkChannel,
    size: int,
    sink: Sink,
    *,
    hasher: Hasher | None = None,
    forward: BulkChannel | None = None,
    executor: Executor | None = None,
    progress: Progress | None = None,
    chunk: int = RECV_CHUNK,
    min_rate: int = 0,
    what: str = "",
) -> bool:
    """The next ``size`` raw bytes of ``chan`` into ``sink``, also into ``hasher`` and
    on to ``forward`` (the next hop of a chain) where given.

    The copying runs on ``executor`` (the default one if None): the receive loop on
    plain TCP, the sink's writes on TLS. ``min_rate`` (bytes/s, on plain TCP, after
    ``RATE_GRACE`` seconds): a per-read timeout alone lets a peer trickle a byte every
    few seconds and hold a thread for ever. ``what`` names the transfer in errors and
    logs. Returns whether ``forward`` took every byte (False without one); a stream
    that stalls, breaks or ends early raises a ``TransportError``; the sink's own
    errors (a full disk) are raised as they are.
    """
    loop = asyncio.get_running_loop()
    report = None
    if progress is not None:
        cb = progress

        def report(done: int, total: int) -> None:
            loop.call_soon_threadsafe(cb, done, total)

    copy = _Copy(size, sink, hasher, report, what or f"bulk stream from {chan.peer}")
    got = await _recv_tls(chan, copy, forward, executor, chunk, min_rate) if chan.tls else None
    # TLS: a worker thread, else (None) the transport. Plain: a raw socket in a thread,
    # unless the next hop is TLS (the transport for both). Duplicated only if used.
    src = None if chan.tls or (forward is not None and forward.tls) else chan.raw_socket()
    if got is not None:
        forwarded = got
    elif src is None:
        forwarded = await _recv_transport(chan, copy, forward, executor, chunk)
    else:
        copy.dst = forward.raw_socket(reading=False) if forward is not None else None
        try:
            first = chan.take_buffered(size)
            await loop.run_in_executor(executor, copy.pump, src, first, chunk, min_rate)
        finally:
            src.close()
            if copy.dst is not None:
                copy.dst.close()
            if not chan.writer.is_closing():  # raw_socket paused it: what follows is the loop's
                chan.writer.transport.resume_reading()  # type: ignore[attr-defined]
        forwarded = copy.dst is not None
    if progress is not None:
        progress(size, size)
    return forwarded


async def _recv_tls(
    chan: BulkChannel,
    copy: _Copy,
    forward: BulkChannel | None,
    executor: Executor | None,
    chunk: int,
    min_rate: int,
) -> bool | None:
    """The TLS path: decrypted (and encrypted again for ``forward``, a TLS hop) by a
    worker thread (``tlspump``); None if a pump cannot be had (nothing was read)."""
    nxt = None
    if forward is not None:
        nxt = await forward.tls_pump() if forward.tls else None
        if nxt is None:
            return None
    pump = await chan.tls_pump(reading=True)
    if pump is None:
        if nxt is not None:
            nxt.resume()
        return None
    src = pump.duplicate(chan.stall_timeout)
    if nxt is not None and forward is not None:  # (the one implies the other)
        copy.dst = TlsSender(nxt, nxt.duplicate(forward.stall_timeout))
    try:
        first = chan.take_buffered(copy.size)
        if first:
            copy.take(memoryview(first))
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(executor, pump.recv_into, src, copy, chunk, min_rate)
    finally:
        src.close()
        pump.resume()
        if copy.dst is not None:
            copy.dst.close()
        if nxt is not None:
            nxt.resume()
    return copy.dst is not None


async def _recv_transport(
    chan: BulkChannel,
    copy: _Copy,
    forward: BulkChannel | None,
    executor: Executor | None,
    chunk: int,
) -> bool:
    """The portable path (TLS): through the transports, chunk by chunk.

    Each chunk is handed to the next hop first, then written and hashed in a thread
    while the event loop decrypts the next one: the loop does only the TLS.
    """
    loop = asyncio.get_running_loop()
    got = 0
    writing: asyncio.Future[None] | None = None
    try:
        while got < copy.size:
            data = await chan.read_some(min(chunk, copy.size - got))
            if not data:
                raise ConnectError(f"{copy.what} cut off after {got} of {copy.size} bytes")
            got += len(data)
            if forward is not None:
                try:
                    await forward.write(data)
                except TransportError as exc:
                    log.warning("%s: the next hop failed (%s)", copy.what, exc)
                    forward = None
            if writing is not None:
                await writing
            writing = loop.run_in_executor(executor, copy.take, memoryview(data))
    finally:
        if writing is not None:
            await writing
    return forward is not None


class _Copy:
    """One receive's bytes into a sink, a hasher and (on plain TCP) the next hop."""

    def __init__(
        self, size: int, sink: Sink, hasher: Hasher | None, progress: Progress | None, what: str
    ) -> None:
        self.size, self.sink, self.hasher = size, sink, hasher
        self.progress, self.what = progress, what
        self.dst: socket.socket | TlsSender | None = None
        self.got = 0
        self._reported = 0

    def pump(self, src: socket.socket, first: bytes, chunk: int, min_rate: int) -> None:
        """The receive loop on plain TCP, in a worker thread: ``recv_into`` one buffer."""
        if first:
            self.take(memoryview(first))
        buf = bytearray(min(chunk, max(1, self.size - self.got)))
        view = memoryview(buf)
        pace = Pace(min_rate, self.what)
        while self.got < self.size:
            pace.check(self.got)
            want = view[: min(len(buf), self.size - self.got)]
            self.take(view[: recv_some(src, want, self.what, self._done())])

    def take(self, data: memoryview) -> None:
        """One chunk into the sink, the hasher and the next hop (dropped if it fails)."""
        self.sink.write(data)
        if self.hasher is not None:
            self.hasher.update(data)
        if self.dst is not None:
            try:
                self.dst.sendall(data)
            except OSError as exc:
                log.warning("%s: the next hop failed (%s)", self.what, exc)
                self.dst.close()
                self.dst = None
        self.got += len(data)
        if self.progress is not None and self.got - self._reported >= PROGRESS_STEP:
            self._reported = self.got
            self.progress(self.got, self.size)

    def _done(self) -> str:
        return f"{self.got} of {self.size} bytes"
