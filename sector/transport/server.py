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
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

from sector.errors import BadRequest, ProtocolError, SectorError, TransportError, to_wire
from sector.transport.admission import Admission, InputBudget, Refused
from sector.transport.bulk import BulkChannel
from sector.transport.opstats import OpStats
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


class _Gate(asyncio.Protocol):
    """The first protocol of every accepted connection. It stops the transport before
    a byte is read and asks the server for a slot: a refused connection is closed with
    no TLS handshake paid for; an admitted one goes to its task (``Server._on_conn``)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.pause_reading()
        self.server._admit(self, transport)

    def close(self) -> None:
        """Evicted: end the connection, whatever stage it is at."""
        if self.task is not None:
            self.task.cancel()
        elif self.transport is not None:
            self.transport.abort()


class Server:
    """Serves a handler table on one TCP port (port 0 = ephemeral).

    Connection slots and input bytes are budgeted (``transport/admission.py``): on a
    node that checks identities (an ``authenticator``), connections that have not yet
    said who they are get ``max_strangers`` slots (``max_strangers_per_peer`` from one
    address), counted before their TLS handshake, and are closed when idle for
    ``stranger_idle_timeout``; identified ones always find a slot.
    """

    def __init__(
        self,
        handlers: dict[str, Handler],
        bulk_handlers: dict[str, BulkHandler] | None = None,
        *,
        max_frame: int = codec.DEFAULT_MAX_FRAME,
        stall_timeout: float = 10.0,
        idle_timeout: float = 600.0,
        stranger_idle_timeout: float = 30.0,
        max_connections: int = 1024,
        max_connections_per_peer: int = 256,
        max_strangers: int = 256,
        max_strangers_per_peer: int = 64,
        max_inflight_per_conn: int = 128,
        max_inflight_bytes_per_peer: int = 64 << 20,
        max_input_bytes: int = 256 << 20,
        max_stranger_input_bytes: int = 32 << 20,
        ssl: _ssl.SSLContext | None = None,
        authenticator: Authenticator | None = None,
    ) -> None:
        self.handlers = handlers
        self.bulk_handlers = bulk_handlers or {}
        self.max_frame = max_frame
        self.stall_timeout = stall_timeout
        self.idle_timeout = idle_timeout
        self.stranger_idle_timeout = stranger_idle_timeout
        self.max_inflight = max_inflight_per_conn
        self.admission = Admission(
            total=max_connections,
            per_source=max_connections_per_peer,
            strangers=max_strangers,
            strangers_per_source=max_strangers_per_peer,
        )
        self.input = InputBudget(
            per_peer=max_inflight_bytes_per_peer,
            node=max_input_bytes,
            strangers=max_stranger_input_bytes,
        )
        self._input_freed = asyncio.Event()
        self._ssl = ssl
        self.authenticator = authenticator
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self._refusals_logged = 0.0  # loop time of the last refusal logged
        self._refusals_unlogged = 0
        self.address = ""
        self.stats = {"connections": 0, "requests": 0, "protocol_errors": 0}
        self.ops = OpStats()  # by operation and outcome, with latencies (``/metrics``)

    async def start(self, host: str, port: int) -> str:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Gate(self), host, port, backlog=1024)
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

    def _admit(self, gate: _Gate, transport: asyncio.Transport) -> None:
        peername = transport.get_extra_info("peername")
        host = str(peername[0]) if isinstance(peername, tuple) else str(peername)
        try:
            victim = self.admission.admit(gate, host)
        except Refused as exc:
            self._log_refusal(host, exc)
            transport.abort()
            return
        if victim is not None:
            assert isinstance(victim, _Gate)
            victim.close()
        if self.authenticator is None:
            self.admission.identified(gate)  # an open node: nobody is a stranger
        gate.task = asyncio.get_running_loop().create_task(self._on_conn(gate, transport, host))
        self._conns.add(gate.task)

    def _log_refusal(self, host: str, exc: Refused) -> None:
        """One line per few seconds at most: a flood must not fill the log too."""
        now = asyncio.get_running_loop().time()
        self._refusals_unlogged += 1
        if now - self._refusals_logged >= 5.0:
            log.warning(
                "refusing a connection from %s: %s (%d refused since the last such line)",
                host,
                exc,
                self._refusals_unlogged,
            )
            self._refusals_logged, self._refusals_unlogged = now, 0

    async def _on_conn(self, gate: _Gate, raw: asyncio.Transport, host: str) -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        transport = raw
        writer: asyncio.StreamWriter | None = None
        try:
            self.stats["connections"] += 1
            tune(raw.get_extra_info("socket"))
            reader = asyncio.StreamReader(limit=STREAM_LIMIT)
            proto = asyncio.StreamReaderProtocol(reader)
            if self._ssl is not None:
                try:
                    # A TLS handshake that stalls is a slow-loris too.
                    tls = await loop.start_tls(
                        raw,
                        proto,
                        self._ssl,
                        server_side=True,
                        ssl_handshake_timeout=self.stall_timeout,
                    )
                except (OSError, _ssl.SSLError, TimeoutError, ConnectionError) as exc:
                    log.debug("TLS handshake with %s failed: %s", host, exc)
                    return
                assert tls is not None
                transport = tls
            else:
                raw.set_protocol(proto)
            proto.connection_made(transport)
            if self._ssl is None:
                raw.resume_reading()
            writer = asyncio.StreamWriter(transport, proto, reader, loop)
            peername = writer.get_extra_info("peername")
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
                if self.authenticator.identified(sess):
                    self.admission.identified(gate)
            await self._serve(reader, writer, sess, gate)
        except asyncio.CancelledError:
            pass
        finally:
            self.admission.release(gate)
            self._conns.discard(task)
            transport.close()
            if writer is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _reserve(
        self, writer: asyncio.StreamWriter, host: str, n: int, stranger: bool
    ) -> None:
        """Reserve ``n`` input bytes, not reading the connection while they do not fit."""
        if not self.input.fits(host, n, stranger):
            async with _not_reading(writer):
                while not self.input.fits(host, n, stranger):
                    self._input_freed.clear()
                    await self._input_freed.wait()
        self.input.take(host, n, stranger)

    def _give_back(self, host: str, n: int, stranger: bool, *_task: object) -> None:
        self.input.give_back(host, n, stranger)
        self._input_freed.set()

    async def _serve(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        sess: Session,
        gate: _Gate,
    ) -> None:
        peer = writer.get_extra_info("peername")
        host = sess.host
        # A stranger's connection (on a node that checks identities) may send only
        # small frames until it says who it is: a request it may make is small, and
        # a frame declared larger is refused at its header, before any byte of it is
        # held (many strangers half-sending 16 MiB frames took a node to 1 GiB).
        stranger = self.admission.is_stranger(gate)
        dec = FrameDecoder(min(self.max_frame, STRANGER_MAX_FRAME) if stranger else self.max_frame)
        inflight = asyncio.Semaphore(self.max_inflight)
        cork = Cork(writer)
        tasks: set[asyncio.Task[None]] = set()
        closing = asyncio.Event()
        held = 0  # input bytes reserved for the frame being read
        held_as_stranger = False
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
                    timeout = self.stranger_idle_timeout if stranger else self.idle_timeout
                    # A connection that has said nothing yet gets little time to start:
                    # idle slots held open by strangers would lock out real clients.
                    if first:
                        timeout = min(timeout, self.stall_timeout * 3)
                try:
                    # asyncio.timeout, not wait_for: 3.11's wait_for loses a cancel that
                    # lands as the read completes (the loop then read on, and a node's
                    # stop waited for this connection for ever), and costs a task a read.
                    async with asyncio.timeout(timeout):
                        data = await reader.read(READ_CHUNK)
                except TimeoutError:
                    if dec.pending:
                        log.warning("closing %s: frame stalled for %g s", peer, self.stall_timeout)
                        self.stats["protocol_errors"] += 1
                        return
                    if tasks:
                        continue  # not idle: its requests are still being answered
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
                        need = dec.expecting
                        if need is not None and not held:
                            # Reserve the frame's bytes at its header, before its body
                            # is read: half-sent frames count against the budgets too.
                            await self._reserve(writer, host, need, stranger)
                            held, held_as_stranger = need, stranger
                            frame_started = loop.time()  # the wait was ours, not the peer's
                        break
                    size = dec.last_size
                    if not held:  # the whole frame came in one read
                        await self._reserve(writer, host, size, stranger)
                        held, held_as_stranger = size, stranger
                    size_as_stranger, held = held_as_stranger, 0
                    if not env.is_request:
                        self.stats["protocol_errors"] += 1
                        log.warning("closing %s: a reply frame where a request was expected", peer)
                        self._give_back(host, size, size_as_stranger)
                        return
                    op = env.op or ""
                    if op == HELLO:
                        self._give_back(host, size, size_as_stranger)
                        sess.hellos += 1
                        if sess.hellos > MAX_HELLOS:  # each costs a signature check
                            log.warning("closing %s: %d auth.hello", peer, sess.hellos)
                            return
                        cork.write(self._hello(env, sess))
                        cork.flush()
                        auth = self.authenticator
                        if stranger and auth is not None and auth.identified(sess):
                            stranger = False
                            self.admission.identified(gate)
                            dec.max_frame = self.max_frame
                        continue
                    if op in self.bulk_handlers:
                        self._give_back(host, size, size_as_stranger)
                        if tasks:
                            # The requests read before it are answered first: the bulk
                            # stream owns the connection (a sendfile takes no writes).
                            async with _not_reading(writer):
                                await asyncio.wait(set(tasks))
                            if writer.transport.is_closing():
                                return  # the peer left meanwhile
                        cork.flush()
                        chan = BulkChannel(
                            reader,
                            writer,
                            dec.take_rest(),
                            stall_timeout=self.stall_timeout * 3,
                            max_frame=self.max_frame,
                        )
                        await self._run_bulk(env, chan, sess)
                        return
                    if inflight.locked():
                        async with _not_reading(writer):
                            await inflight.acquire()
                    else:
                        await inflight.acquire()
                    t = asyncio.create_task(self._run(env, writer, cork, inflight, closing, sess))
                    t.add_done_callback(
                        functools.partial(self._give_back, host, size, size_as_stranger)
                    )
                    tasks.add(t)
                    t.add_done_callback(tasks.discard)
        finally:
            if held:
                self._give_back(host, held, held_as_stranger)
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
        started, outcome = time.perf_counter(), "error"
        handler = self.handlers.get(env.op or "")
        try:
            if handler is None:
                raise BadRequest(f"unknown operation {env.op!r}")
            if self.authenticator is not None:
                self.authenticator.authorize(env.op or "")
            result = await handler(env.a or {})
            frame = codec.reply(env.i, result)
            outcome = "ok"
        except asyncio.CancelledError:
            raise
        except BadRequest as exc:
            outcome = "bad_request"
            log.warning(
                "bad request %s from %s: %s", env.op, writer.get_extra_info("peername"), exc
            )
            frame = codec.error(env.i, to_wire(exc))
            closing.set()
        except Exception as exc:
            frame = _error_reply(env, exc, "handler")
        finally:
            inflight.release()
        op = (env.op or "") if handler is not None else "unknown"
        self.ops.record(op, outcome, time.perf_counter() - started)
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
        started, outcome = time.perf_counter(), "error"
        try:
            if self.authenticator is not None:
                self.authenticator.authorize(env.op or "")
            result = await self.bulk_handlers[env.op or ""](env.a or {}, chan)
            frame = codec.reply(env.i, result)
            outcome = "ok"
        except asyncio.CancelledError:
            raise
        except TransportError as exc:
            log.warning("bulk %s from %s failed: %s", env.op, chan.peer, exc)
            return
        except Exception as exc:
            frame = _error_reply(env, exc, "bulk handler")
        finally:
            current_session.reset(token)
            self.ops.record(env.op or "", outcome, time.perf_counter() - started)
        with contextlib.suppress(ConnectionError, OSError, TransportError):
            await chan.write(frame)


@contextlib.asynccontextmanager
async def _not_reading(writer: asyncio.StreamWriter) -> AsyncIterator[None]:
    """Stop reading the connection meanwhile: what the peer sends waits in the kernel's
    buffers (TCP holds it back), not in ours."""
    transport = writer.transport
    assert isinstance(transport, asyncio.Transport)
    was = transport.is_reading()
    if was:
        transport.pause_reading()
    try:
        yield
    finally:
        if was and not transport.is_closing():
            transport.resume_reading()


def _error_reply(env: Envelope, exc: Exception, what: str) -> bytes:
    """The typed error reply to a request; anything but a ``SectorError`` is a bug on
    this node, logged with its traceback (call from inside the ``except``)."""
    if not isinstance(exc, SectorError):
        log.exception("%s %s failed", what, env.op)
    return codec.error(env.i, to_wire(exc))
