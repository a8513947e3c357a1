"""Talking to a node the way a bad peer would: raw TCP and TLS sockets, hand-made
frames, and reading what comes back until the node closes the connection.

For tests that check what a node itself says and does, with no client in between.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any

from sector.security import pki
from sector.wire import codec
from sector.wire.codec import Envelope, FrameDecoder

IO_TIMEOUT = 10.0


def split(addr: str) -> tuple[str, int]:
    host, port = addr.rsplit(":", 1)
    return host, int(port)


def tls_socket(
    addr: str,
    ctx: ssl.SSLContext | None = None,
    *,
    source: str | None = None,
    timeout: float = IO_TIMEOUT,
) -> ssl.SSLSocket:
    """A TLS connection to ``addr`` (an anonymous user's context unless ``ctx``), from
    the local address ``source`` if given (any 127.x.y.z on loopback)."""
    raw = socket.create_connection(
        split(addr), timeout=timeout, source_address=(source, 0) if source else None
    )
    try:
        return (ctx or pki.user_client_context()).wrap_socket(raw)
    except BaseException:
        raw.close()
        raise


def read_envelope(sock: socket.socket) -> Envelope | None:
    """The next frame the node sends, or None if it closes the connection first."""
    dec = FrameDecoder()
    while True:
        try:
            data = sock.recv(65536)
        except (ConnectionResetError, ssl.SSLError):
            return None
        if not data:
            return None
        if envs := dec.feed(data):
            return envs[0]


def raw_call(sock: socket.socket, op: str, args: dict[str, Any], i: int = 1) -> Envelope:
    """Send one request and read its reply (the connection must stay open for it)."""
    sock.sendall(codec.request(i, op, args))
    env = read_envelope(sock)
    assert env is not None, f"{op}: the node closed the connection without a reply"
    assert env.i == i
    return env
