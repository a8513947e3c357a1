"""The client side of the RPC: ``RpcPool.call(addr, op, args)`` multiplexes requests
over one pooled connection per address (``_Conn``, replies matched by id), and the
ring's and membership's upkeep (``UPKEEP``) over a second one;
``RpcPool.open_bulk`` opens a fresh connection per transfer. TLS, with an optional
fall-back to plain TCP, and the connect hook are chosen here, when a connection opens.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import ssl as _ssl
from collections.abc import Awaitable, Callable
from typing import Any

from sector.errors import ConnectError, ProtocolError, SectorError, Timeout, from_wire
from sector.transport import wan
from sector.transport.bulk import BulkChannel
from sector.transport.tcp import HELLO, READ_CHUNK, STREAM_LIMIT, Cork, split_addr, tune
from sector.wire import codec
from sector.wire.codec import FrameDecoder

# Called on every new client connection before it is used (TLS peer check, auth.hello).
ConnectHook = Callable[[str, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

# The cluster's upkeep (the ring's, membership's): small requests that must be answered
# within seconds or a live peer is taken for dead. They go on a pooled connection of
# their own per address: on the shared one they queued behind every other request, and
# a server reads at most ``max_inflight_per_conn`` requests of one connection at a time,
# so a backlog of slow writes to a peer (a flood) timed out its heartbeats and dropped
# it from the ring (a stop-24 CI failure).
UPKEEP = frozenset(
    {"chord.ping", "chord.state", "chord.notify", "chord.next_hop", "chord.leaving", "node.gossip"}
)
_UPKEEP_LANE = "#upkeep"  # the pool's key of an address's upkeep connection


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
        self._cork = Cork(writer)
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
            # The read loop may have failed ``fut`` while this call was still in its
            # drain (the connection closed under it), or was cancelled there: nobody
            # awaits it now, so mark its error seen (asyncio would log it otherwise).
            if fut.done() and not fut.cancelled():
                fut.exception()
            fut.cancel()

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
        tune(writer.get_extra_info("socket"))
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

    async def _conn(self, addr: str, lane: str = "") -> _Conn:
        key = addr + lane
        conn = self._conns.get(key)
        if conn is not None and not conn.closed:
            return conn
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            conn = self._conns.get(key)
            if conn is None or conn.closed:
                reader, writer = await self._open(addr)
                conn = _Conn(addr, reader, writer, self.max_frame)
                self._conns[key] = conn
            return conn

    async def call(
        self,
        addr: str,
        op: str,
        args: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> Any:
        conn = await self._conn(addr, _UPKEEP_LANE if op in UPKEEP else "")
        return await conn.call(op, args or {}, timeout or self.timeout)

    async def rtt(self, addr: str) -> float | None:
        """The kernel's smoothed RTT to ``addr`` in seconds, read off the pooled
        connection (opened if there is none): how a transfer sizes itself (``wan.py``)."""
        conn = await self._conn(addr)
        return wan.rtt(conn.writer.get_extra_info("socket"))

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
        for conn in self._conns.values():
            conn.writer.close()
        self._conns.clear()

    def forget(self, addr: str) -> None:
        """Drop the pooled connections to ``addr`` (after its peer was found dead)."""
        for key in (addr, addr + _UPKEEP_LANE):
            conn = self._conns.pop(key, None)
            if conn is not None:
                conn.writer.close()

    async def close(self) -> None:
        conns = list(self._conns.values())
        self._conns.clear()
        await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)
