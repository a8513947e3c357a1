"""Talking to a node the way a bad peer would: raw TCP and TLS sockets, hand-made
frames, and reading what comes back until the node closes the connection.

For tests that check what a node itself says and does, with no client in between.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections import Counter
from typing import Any

from sector.security import pki
from sector.testing.cluster import ProcCluster
from sector.wire import codec
from sector.wire.codec import Envelope, FrameDecoder

IO_TIMEOUT = 10.0
FLOOD_FROM = ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")  # as if other hosts


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


def node_info(cluster: ProcCluster, addr: str) -> dict[str, Any]:
    """``node.info`` as the admin sees it (connection counts included)."""
    assert cluster.admin_token is not None
    with tls_socket(addr) as s:
        assert raw_call(s, "auth.hello", {"token": cluster.admin_token}).e is None
        env = raw_call(s, "node.info", {}, i=2)
        assert env.e is None, env.e
        return dict(env.r)


class Flood:
    """Threads that keep as many TLS connections to ``addr`` open as they can (up to
    ``per_address``) from each of ``sources``, each kept busy with pings: the
    connection flood of an attacker with no credential. ``counts``: opened, refused
    (no connection or no handshake), lost (closed by the node)."""

    def __init__(
        self, addr: str, per_address: int = 30, sources: tuple[str, ...] = FLOOD_FROM
    ) -> None:
        self.addr = addr
        self.per_address = per_address
        self.stop = threading.Event()
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._run, args=(src,), daemon=True) for src in sources
        ]

    def __enter__(self) -> Flood:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def _count(self, what: str) -> None:
        with self._lock:
            self.counts[what] += 1

    def _run(self, src: str) -> None:
        conns: list[ssl.SSLSocket] = []
        try:
            while not self.stop.is_set():
                if len(conns) < self.per_address:
                    try:
                        s = tls_socket(self.addr, source=src, timeout=2.0)
                    except (OSError, ssl.SSLError):
                        self._count("refused")
                        time.sleep(0.02)
                    else:
                        conns.append(s)
                        self._count("opened")
                for s in list(conns):  # keep them busy; drop the ones the node closed
                    try:
                        ok = raw_call(s, "node.ping", {}).e is None
                    except (OSError, ssl.SSLError, AssertionError):
                        ok = False
                    if not ok:
                        conns.remove(s)
                        s.close()
                        self._count("lost")
        finally:
            for s in conns:
                s.close()
