"""The server side of the RPC: ``Server(handlers, bulk_handlers)`` on one TCP port,
the ``Session`` of each connection, and the ``Authenticator`` hook that names it.

Each request runs as its own task, so one slow handler does not hold up the
connection; replies carry the request id. A handler that raises a ``SectorError`` is
answered with a typed error reply; any other exception becomes ``RemoteError`` and is
logged with its traceback on the node. Malformed input closes *that* connection only.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl as _ssl
from collections import Counter
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

from sector.errors import BadRequest, ProtocolError, SectorError, TransportError, to_wire
from sector.transport.bulk import BulkChannel
from sector.transport.tcp import HELLO, READ_CHUNK, STREAM_LIMIT, Cork, tune
from sector.wire import codec
from sector.wire.codec import Envelope, FrameDecoder

log = logging.getLogger("sector.rpc")

Handler = Callable[[dict[str, Any]], Awaitable[Any]]
BulkHandler = Callable[[dict[str, Any], BulkChannel], Awaitable[Any]]

MAX_HELLOS = 4  # per connection: a client says hello once
TLS_RECORD = b"\x16\x03"  # the first bytes of a TLS ClientHello
STRANGER_MAX_FRAME = 1 << 20  # bytes of one frame from a connection not yet identified


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

    def identified(self, session: Session) -> bool:
        """Whether the connection is a node's or a user's (not a stranger's)."""
        ...


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
                tune(writer.get_extra_info("socket"))
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
        # A stranger's connection (on a node that checks identities) may send only
        # small frames until it says who it is: a request it may make is small, and
        # a frame declared larger is refused at its header, before any byte of it is
        # held (many strangers half-sending 16 MiB frames took a node to 1 GiB).
        auth = self.authenticator
        stranger = auth is not None and not auth.identified(sess)
        dec = FrameDecoder(min(self.max_frame, STRANGER_MAX_FRAME) if stranger else self.max_frame)
        inflight = asyncio.Semaphore(self.max_inflight)
        cork = Cork(writer)
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
                        if auth is not None and auth.identified(sess):
                            dec.max_frame = self.max_frame
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
        except Exception as exc:
            return _error_reply(env, exc, "handler")

    async def _run(
        self,
        env: Envelope,
        writer: asyncio.StreamWriter,
        cork: Cork,
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
        except Exception as exc:
            frame = _error_reply(env, exc, "handler")
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
        except Exception as exc:
            frame = _error_reply(env, exc, "bulk handler")
        finally:
            current_session.reset(token)
        with contextlib.suppress(ConnectionError, OSError, TransportError):
            await chan.write(frame)


def _error_reply(env: Envelope, exc: Exception, what: str) -> bytes:
    """The typed error reply to a request; anything but a ``SectorError`` is a bug on
    this node, logged with its traceback (call from inside the ``except``)."""
    if not isinstance(exc, SectorError):
        log.exception("%s %s failed", what, env.op)
    return codec.error(env.i, to_wire(exc))
