"""RPC over TCP: a table of named handlers, request ids, timeouts, typed errors.

Server side: ``Server(handlers, bulk_handlers)`` serves length-prefixed msgpack
frames (``sector.wire.codec``). Each request runs as its own task, so one slow
handler does not hold up the connection; replies carry the request id. A handler
that raises a ``SectorError`` is answered with a typed error reply; any other
exception becomes ``RemoteError`` and is logged with its traceback on the node.

Malformed input never takes the node down: garbage bytes, an oversize frame, an
envelope of the wrong shape, or a frame that stalls half-way (slow-loris) closes *that*
connection, is logged, and every other connection is served as before. A handler that
rejects its arguments' types (``BadRequest``) gets an error reply and the connection
is closed too, since a peer that sends ill-typed frames cannot be trusted to frame.

Bulk data: a request whose op is in ``bulk_handlers`` turns its connection into a
dedicated raw stream (``BulkChannel``): the handler reads or writes raw bytes after the
header frame (``os.sendfile`` on the sending side where the transport allows) and ends
with one reply frame; then the connection closes. Control traffic never queues behind
a gigabyte.

Client side: ``RpcPool.call(addr, op, args)`` multiplexes requests over one pooled
connection per address; ``RpcPool.open_bulk`` opens a fresh connection per transfer.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import os
import socket
import ssl as _ssl
from collections import Counter
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import IO, Any, Protocol

from sector.errors import (
    BadRequest,
    ConnectError,
    ProtocolError,
    SectorError,
    Timeout,
    TransportError,
    from_wire,
    to_wire,
)
from sector.wire import codec
from sector.wire.codec import HEADER, Envelope, FrameDecoder

log = logging.getLogger("sector.rpc")

Handler = Callable[[dict[str, Any]], Awaitable[Any]]
BulkHandler = Callable[[dict[str, Any], "BulkChannel"], Awaitable[Any]]

READ_CHUNK = 1 << 20
SOCK_BUF = 4 << 20
STREAM_LIMIT = 8 << 20
TLS_SEND_CHUNK = 4 << 20  # file bytes per write on a TLS bulk stream
MAX_HELLOS = 4  # per connection: a client says hello once
HELLO = "auth.hello"  # answered inline, before any later frame of the connection is read
TLS_RECORD = b"\x16\x03"  # the first bytes of a TLS ClientHello


@dataclass(slots=True)
class Session:
    """Who is at the other end of one server connection.

    ``identity`` is set by the server's ``Authenticator`` when the connection opens (a
    node proved by its certificate, or anonymous) and again by ``auth.hello`` (a user
    credential). Handlers read it through ``current_session``; on a node with no
    authenticator (an open cluster) it stays None and every check passes.
    """

    peer: str
    host: str = ""
    tls: bool = False
    peer_cert: bytes | None = None  # DER of a certificate the TLS layer verified
    identity: Any = None
    auth: Any = None  # the Authenticator that set ``identity``
    hellos: int = 0  # auth.hello requests seen (a few per connection at most)


current_session: ContextVar[Session | None] = ContextVar("sector_session", default=None)


class Authenticator(Protocol):
    """The server's hook for who a connection is (``sector.security.guard`` has one)."""

    def on_connect(self, session: Session) -> None: ...

    def hello(self, session: Session, args: dict[str, Any]) -> Any: ...

    def authorize(self, op: str) -> None:
        """Raise if the caller (``current_session``) may not call ``op`` at all."""


# Called on every new client connection before it is used (TLS peer check, auth.hello).
ConnectHook = Callable[[str, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def split_addr(addr: str) -> tuple[str, int]:
    """'host:port' -> (host, port); raises UsageError-like ValueError on bad input."""
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"not a HOST:PORT address: {addr!r}")
    return host.strip("[]"), int(port)


def _tune(sock: socket.socket | None) -> None:
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCK_BUF)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCK_BUF)


class _Cork:
    """Coalesces the frames written in one event-loop turn into one ``send``.

    Under load a node answers many small requests per turn; one syscall per frame
    was the biggest single cost in a profile of 4 clients doing stats (38 % of a
    node's time in ``transport.write``). Frames are queued and written together
    from a callback scheduled at the end of the turn.
    """

    __slots__ = ("_parts", "_scheduled", "writer")

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self._parts: list[bytes] = []
        self._scheduled = False

    def write(self, frame: bytes) -> None:
        self._parts.append(frame)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def flush(self) -> None:
        """Write what is queued now (before a close)."""
        self._flush()

    def _flush(self) -> None:
        self._scheduled = False
        parts, self._parts = self._parts, []
        if parts and not self.writer.is_closing():
            self.writer.write(b"".join(parts) if len(parts) > 1 else parts[0])


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
        try:
            return await asyncio.wait_for(self.reader.read(n), self.stall_timeout)
        except TimeoutError:
            raise Timeout(
                f"bulk stream from {self.peer} stalled for {self.stall_timeout:g} s"
            ) from None
        except (ConnectionError, OSError) as exc:
            raise ConnectError(f"bulk stream from {self.peer} lost: {exc}") from None

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
        try:
            await asyncio.wait_for(self.writer.drain(), self.stall_timeout)
        except TimeoutError:
            raise Timeout(
                f"bulk stream to {self.peer} stalled for {self.stall_timeout:g} s"
            ) from None
        except (ConnectionError, OSError) as exc:
            raise ConnectError(f"bulk stream to {self.peer} lost: {exc}") from None

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
            raise ConnectError(f"bulk stream to {self.peer} lost: {exc}") from None

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


class _PeerBudget:
    """Bytes of requests read from one peer host and not yet answered, capped.

    A peer that floods a node with large requests (on one connection or many) stops
    being read once it has ``limit`` bytes in flight, until its handlers finish: TCP
    back-pressure then holds it. A single request larger than the budget still runs
    when nothing else of that peer is in flight, so no legal frame is refused.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used: Counter[str] = Counter()
        self._freed: dict[str, asyncio.Event] = {}

    async def acquire(self, host: str, n: int) -> None:
        while self.used[host] > 0 and self.used[host] + n > self.limit:
            ev = self._freed.setdefault(host, asyncio.Event())
            ev.clear()
            await ev.wait()
        self.used[host] += n

    def done(self, host: str, n: int, _task: object) -> None:
        self.release(host, n)

    def release(self, host: str, n: int) -> None:
        self.used[host] -= n
        if self.used[host] <= 0:
            del self.used[host]
        ev = self._freed.get(host)
        if ev is not None:
            ev.set()
            if host not in self.used:
                del self._freed[host]


class Server:
    """Serves a handler table on one TCP port (port 0 = ephemeral)."""

    def __init__(
        self,
        handlers: dict[str, Handler],
        bulk_handlers: dict[str, BulkHandler] | None = None,
        *,
        max_frame: int = codec.DEFAULT_MAX_FRAME,
        stall_timeout: float = 10.0,
        idle_timeout: float = 600.0,
        max_connections: int = 1024,
        max_connections_per_peer: int = 256,
        max_inflight_per_conn: int = 128,
        max_inflight_bytes_per_peer: int = 64 << 20,
        ssl: _ssl.SSLContext | None = None,
        authenticator: Authenticator | None = None,
    ) -> None:
        self.handlers = handlers
        self.bulk_handlers = bulk_handlers or {}
        self.max_frame = max_frame
        self.stall_timeout = stall_timeout
        self.idle_timeout = idle_timeout
        self.max_inflight = max_inflight_per_conn
        self._conn_slots = asyncio.Semaphore(max_connections)
        self.max_per_peer = max_connections_per_peer
        self._per_peer: Counter[str] = Counter()
        self._budget = _PeerBudget(max_inflight_bytes_per_peer)
        self._ssl = ssl
        self.authenticator = authenticator
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self.address = ""
        self.stats = {"connections": 0, "requests": 0, "protocol_errors": 0}

    async def start(self, host: str, port: int) -> str:
        self._server = await asyncio.start_server(
            self._on_conn,
            host,
            port,
            ssl=self._ssl,
            limit=STREAM_LIMIT,
            backlog=1024,
            # A TLS handshake that stalls is a slow-loris too.
            ssl_handshake_timeout=self.stall_timeout if self._ssl else None,
        )
        sock = self._server.sockets[0]
        bound = sock.getsockname()
        self.address = f"{host}:{bound[1]}"
        return self.address

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._conns):
            t.cancel()
        if self._conns:
            await asyncio.gather(*self._conns, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)

    async def _on_conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        peername = writer.get_extra_info("peername")
        host = str(peername[0]) if isinstance(peername, tuple) else str(peername)
        self._per_peer[host] += 1
        try:
            if self._conn_slots.locked() or self._per_peer[host] > self.max_per_peer:
                log.warning("connection limit reached; refusing %s", peername)
                writer.close()
                return
            async with self._conn_slots:
                self.stats["connections"] += 1
                _tune(writer.get_extra_info("socket"))
                sess = Session(
                    peer=f"{host}:{peername[1]}" if isinstance(peername, tuple) else host,
                    host=host,
                )
                sslobj = writer.get_extra_info("ssl_object")
                if sslobj is not None:
                    sess.tls = True
                    sess.peer_cert = sslobj.getpeercert(binary_form=True)
                if self.authenticator is not None:
                    self.authenticator.on_connect(sess)
                await self._serve(reader, writer, sess)
        except asyncio.CancelledError:
            pass
        finally:
            self._per_peer[host] -= 1
            if self._per_peer[host] <= 0:
                del self._per_peer[host]
            self._conns.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, sess: Session
    ) -> None:
        peer = writer.get_extra_info("peername")
        dec = FrameDecoder(self.max_frame)
        inflight = asyncio.Semaphore(self.max_inflight)
        cork = _Cork(writer)
        tasks: set[asyncio.Task[None]] = set()
        closing = asyncio.Event()
        try:
            frame_started: float | None = None
            first = True
            loop = asyncio.get_running_loop()
            while not closing.is_set():
                # A frame must arrive whole within stall_timeout of its first byte: a
                # deadline for the frame, not per read, or a peer trickling a byte at a
                # time would hold the connection open for ever.
                if dec.pending:
                    if frame_started is None:
                        frame_started = loop.time()
                    timeout = max(0.0, frame_started + self.stall_timeout - loop.time())
                else:
                    frame_started = None
                    # A connection that has said nothing yet gets little time to start:
                    # idle slots held open by strangers would lock out real clients.
                    timeout = self.idle_timeout
                    if first:
                        timeout = min(timeout, self.stall_timeout * 3)
                try:
                    data = await asyncio.wait_for(reader.read(READ_CHUNK), timeout)
                except TimeoutError:
                    if dec.pending:
                        log.warning("closing %s: frame stalled for %g s", peer, self.stall_timeout)
                        self.stats["protocol_errors"] += 1
                    return
                except (ConnectionError, OSError):
                    return
                if not data:
                    return
                if first and self._ssl is None and data.startswith(TLS_RECORD):
                    # A client trying TLS first on an open cluster; it falls back to plain.
                    log.debug("closing %s: TLS hello on a plain node", peer)
                    return
                first = False
                dec.push(data)
                while True:
                    try:
                        env = dec.pop()
                    except ProtocolError as exc:
                        self.stats["protocol_errors"] += 1
                        log.warning("closing %s: %s", peer, exc)
                        return
                    if env is None:
                        break
                    if not env.is_request:
                        self.stats["protocol_errors"] += 1
                        log.warning("closing %s: a reply frame where a request was expected", peer)
                        return
                    op = env.op or ""
                    if op == HELLO:
                        sess.hellos += 1
                        if sess.hellos > MAX_HELLOS:  # each costs a signature check
                            log.warning("closing %s: %d auth.hello", peer, sess.hellos)
                            return
                        cork.write(self._hello(env, sess))
                        cork.flush()
                        continue
                    if op in self.bulk_handlers:
                        chan = BulkChannel(
                            reader,
                            writer,
                            dec.take_rest(),
                            stall_timeout=self.stall_timeout * 3,
                            max_frame=self.max_frame,
                        )
                        await self._run_bulk(env, chan, sess)
                        return
                    await inflight.acquire()
                    size = dec.last_size
                    await self._budget.acquire(sess.host, size)
                    t = asyncio.create_task(self._run(env, writer, cork, inflight, closing, sess))
                    t.add_done_callback(functools.partial(self._budget.done, sess.host, size))
                    tasks.add(t)
                    t.add_done_callback(tasks.discard)
        finally:
            for t in tasks:
                t.cancel()

    def _hello(self, env: Envelope, sess: Session) -> bytes:
        """``auth.hello``: present a credential; the connection's identity becomes it."""
        self.stats["requests"] += 1
        try:
            if self.authenticator is None:
                return codec.reply(env.i, {"identity": None})
            return codec.reply(env.i, self.authenticator.hello(sess, env.a or {}))
        except SectorError as exc:
            return codec.error(env.i, to_wire(exc))
        except Exception as exc:
            log.exception("auth.hello failed")
            return codec.error(env.i, to_wire(exc))

    async def _run(
        self,
        env: Envelope,
        writer: asyncio.StreamWriter,
        cork: _Cork,
        inflight: asyncio.Semaphore,
        closing: asyncio.Event,
        sess: Session,
    ) -> None:
        self.stats["requests"] += 1
        current_session.set(sess)  # this task's own context: handlers see their caller
        try:
            handler = self.handlers.get(env.op or "")
            if handler is None:
                raise BadRequest(f"unknown operation {env.op!r}")
            if self.authenticator is not None:
                self.authenticator.authorize(env.op or "")
            result = await handler(env.a or {})
            frame = codec.reply(env.i, result)
        except asyncio.CancelledError:
            raise
        except BadRequest as exc:
            log.warning(
                "bad request %s from %s: %s", env.op, writer.get_extra_info("peername"), exc
            )
            frame = codec.error(env.i, to_wire(exc))
            closing.set()
        except SectorError as exc:
            frame = codec.error(env.i, to_wire(exc))
        except Exception as exc:
            log.exception("handler %s failed", env.op)
            frame = codec.error(env.i, to_wire(exc))
        finally:
            inflight.release()
        try:
            cork.write(frame)
            if closing.is_set():
                cork.flush()  # the error reply goes out before the connection closes
            await writer.drain()
        except (ConnectionError, OSError):
            return
        if closing.is_set():
            writer.close()

    async def _run_bulk(self, env: Envelope, chan: BulkChannel, sess: Session) -> None:
        self.stats["requests"] += 1
        token = current_session.set(sess)
        try:
            if self.authenticator is not None:
                self.authenticator.authorize(env.op or "")
            result = await self.bulk_handlers[env.op or ""](env.a or {}, chan)
            frame = codec.reply(env.i, result)
        except asyncio.CancelledError:
            raise
        except TransportError as exc:
            log.warning("bulk %s from %s failed: %s", env.op, chan.peer, exc)
            return
        except SectorError as exc:
            frame = codec.error(env.i, to_wire(exc))
        except Exception as exc:
            log.exception("bulk handler %s failed", env.op)
            frame = codec.error(env.i, to_wire(exc))
        finally:
            current_session.reset(token)
        with contextlib.suppress(ConnectionError, OSError, TransportError):
            await chan.write(frame)


class _Conn:
    """One pooled client connection: many requests in flight, replies matched by id."""

    def __init__(
        self, addr: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, max_frame: int
    ) -> None:
        self.addr = addr
        self.reader = reader
        self.writer = writer
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.ids = itertools.count(1)
        self.closed = False
        self._dec = FrameDecoder(max_frame)
        self._cork = _Cork(writer)
        self._task = asyncio.create_task(self._read_loop(), name=f"rpc-read {addr}")

    async def _read_loop(self) -> None:
        err: SectorError = ConnectError(f"connection to {self.addr} closed")
        try:
            while True:
                data = await self.reader.read(READ_CHUNK)
                if not data:
                    break
                for env in self._dec.feed(data):
                    fut = self.pending.pop(env.i, None)
                    if fut is None or fut.done():
                        continue
                    if env.e is not None:
                        fut.set_exception(from_wire(env.e))
                    else:
                        fut.set_result(env.r)
        except ProtocolError as exc:
            err = exc
        except (ConnectionError, OSError) as exc:
            err = ConnectError(f"connection to {self.addr} lost: {exc}")
        except asyncio.CancelledError:
            pass
        finally:
            self.closed = True
            for fut in self.pending.values():
                if not fut.done():
                    fut.set_exception(err)
            self.pending.clear()
            self.writer.close()

    async def call(self, op: str, args: dict[str, Any], timeout: float) -> Any:
        i = next(self.ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[i] = fut
        try:
            self._cork.write(codec.request(i, op, args))
            await asyncio.wait_for(self.writer.drain(), timeout)
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise Timeout(
                f"{op} to {self.addr} timed out after {timeout:g} s", node=self.addr
            ) from None
        except (ConnectionError, OSError) as exc:
            raise ConnectError(f"connection to {self.addr} lost: {exc}", node=self.addr) from None
        finally:
            self.pending.pop(i, None)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(BaseException):
            await self._task
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), 1.0)


def _connect_error(addr: str, exc: OSError) -> ConnectError:
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    return ConnectError(f"cannot connect to {addr}: {reason.lower()}", node=addr)


async def hello(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    args: dict[str, Any],
    max_frame: int = codec.DEFAULT_MAX_FRAME,
) -> Any:
    """Send ``auth.hello`` on a fresh connection and return the node's answer."""
    return await call_once(reader, writer, HELLO, args, max_frame)


async def call_once(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    op: str,
    args: dict[str, Any],
    max_frame: int = codec.DEFAULT_MAX_FRAME,
) -> Any:
    """One request on a fresh connection nothing else uses yet; its answer."""
    writer.write(codec.request(0, op, args))
    await writer.drain()
    dec = FrameDecoder(max_frame)
    while True:
        data = await reader.read(READ_CHUNK)
        if not data:
            raise ConnectError(f"connection closed during {op}")
        envs = dec.feed(data)
        if envs:
            env = envs[0]
            if env.e is not None:
                raise from_wire(env.e)
            return env.r


class RpcPool:
    """Client side of the RPC: pooled control connections and fresh bulk channels."""

    def __init__(
        self,
        *,
        connect_timeout: float = 5.0,
        timeout: float = 30.0,
        max_frame: int = codec.DEFAULT_MAX_FRAME,
        ssl: _ssl.SSLContext | None = None,
        tls: str = "on",
        on_open: ConnectHook | None = None,
    ) -> None:
        """``ssl`` with ``tls``: "on" = TLS only; "auto" = TLS first and, if the node
        does not speak it, plain TCP (remembered per address); without ``ssl``: plain.
        ``on_open`` runs on each new connection before use (peer check, credential)."""
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.max_frame = max_frame
        self._ssl = ssl
        self.tls = tls if ssl is not None else "off"
        self.on_open = on_open
        self.plain: set[str] = set()  # addresses found to speak plain TCP (auto mode)
        self._conns: dict[str, _Conn] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def _open(self, addr: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            host, port = split_addr(addr)
        except ValueError as exc:
            raise ConnectError(str(exc), node=addr) from None
        use_tls = self.tls == "on" or (self.tls == "auto" and addr not in self.plain)
        try:
            reader, writer = await self._connect(host, port, self._ssl if use_tls else None)
        except (_ssl.SSLError, ConnectionResetError, asyncio.IncompleteReadError) as exc:
            if self.tls != "auto" or not use_tls:
                raise ConnectError(
                    f"cannot connect to {addr}: TLS handshake failed: {exc}", node=addr
                ) from None
            # Not a TLS node (it closed on our hello): an open cluster speaks plain TCP.
            self.plain.add(addr)
            reader, writer = await self._connect_or_raise(addr, host, port, None)
        except TimeoutError:
            raise ConnectError(f"cannot connect to {addr}: timed out", node=addr) from None
        except OSError as exc:
            raise _connect_error(addr, exc) from None
        _tune(writer.get_extra_info("socket"))
        if self.on_open is not None:
            try:
                await asyncio.wait_for(self.on_open(addr, reader, writer), self.connect_timeout)
            except BaseException:
                # Closed here and now: a refused client may shut its event loop next,
                # and a TLS close left pending would leak the socket.
                writer.close()
                try:
                    await asyncio.wait_for(writer.wait_closed(), 1.0)
                except BaseException:
                    writer.transport.abort()
                raise
        return reader, writer

    async def _connect(
        self, host: str, port: int, ssl: _ssl.SSLContext | None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.wait_for(
            asyncio.open_connection(
                host,
                port,
                ssl=ssl,
                limit=STREAM_LIMIT,
                ssl_handshake_timeout=self.connect_timeout if ssl else None,
            ),
            self.connect_timeout,
        )

    async def _connect_or_raise(
        self, addr: str, host: str, port: int, ssl: _ssl.SSLContext | None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            return await self._connect(host, port, ssl)
        except TimeoutError:
            raise ConnectError(f"cannot connect to {addr}: timed out", node=addr) from None
        except OSError as exc:
            raise _connect_error(addr, exc) from None

    async def _conn(self, addr: str) -> _Conn:
        conn = self._conns.get(addr)
        if conn is not None and not conn.closed:
            return conn
        lock = self._locks.setdefault(addr, asyncio.Lock())
        async with lock:
            conn = self._conns.get(addr)
            if conn is None or conn.closed:
                reader, writer = await self._open(addr)
                conn = _Conn(addr, reader, writer, self.max_frame)
                self._conns[addr] = conn
            return conn

    async def call(
        self,
        addr: str,
        op: str,
        args: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> Any:
        conn = await self._conn(addr)
        return await conn.call(op, args or {}, timeout or self.timeout)

    async def open_bulk(
        self, addr: str, op: str, args: dict[str, Any], *, stall_timeout: float = 60.0
    ) -> BulkChannel:
        """A dedicated connection whose first frame is the request ``op``."""
        reader, writer = await self._open(addr)
        chan = BulkChannel(reader, writer, stall_timeout=stall_timeout, max_frame=self.max_frame)
        await chan.write(codec.request(1, op, args))
        return chan

    def forget_all(self) -> None:
        """Drop every pooled connection (new ones are checked again when opened)."""
        for addr in list(self._conns):
            self.forget(addr)

    def forget(self, addr: str) -> None:
        """Drop a pooled connection (after its peer was found dead)."""
        conn = self._conns.pop(addr, None)
        if conn is not None:
            conn.writer.close()

    async def close(self) -> None:
        conns = list(self._conns.values())
        self._conns.clear()
        await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)
