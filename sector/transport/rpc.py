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

This module is the RPC's front door: it names the parts, which live apart —
``tcp`` (addresses, socket tuning, the frame cork), ``bulk`` (bulk streams and the
byte-moving loops), ``server`` (``Server``, ``Session``, ``Authenticator``) and ``pool``
(``RpcPool``, ``hello``, ``call_once``) — and re-exports what callers import from here.
"""

from sector.transport.bulk import TLS_SEND_CHUNK, BulkChannel
from sector.transport.pool import ConnectHook, RpcPool, call_once, hello
from sector.transport.server import (
    MAX_HELLOS,
    TLS_RECORD,
    Authenticator,
    BulkHandler,
    Handler,
    Server,
    Session,
    current_session,
)
from sector.transport.tcp import HELLO, READ_CHUNK, SOCK_BUF, STREAM_LIMIT, split_addr

__all__ = [
    "HELLO",
    "MAX_HELLOS",
    "READ_CHUNK",
    "SOCK_BUF",
    "STREAM_LIMIT",
    "TLS_RECORD",
    "TLS_SEND_CHUNK",
    "Authenticator",
    "BulkChannel",
    "BulkHandler",
    "ConnectHook",
    "Handler",
    "RpcPool",
    "Server",
    "Session",
    "call_once",
    "current_session",
    "hello",
    "split_addr",
]
