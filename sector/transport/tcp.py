"""What both ends of an RPC connection share: ``HOST:PORT`` addresses, socket tuning,
buffer sizes, the cork that coalesces the frames of one event-loop turn, and the one
read of a blocking socket that bulk receives (plain or TLS) make in their threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time

from sector.errors import ConnectError, Timeout

READ_CHUNK = 1 << 20
SOCK_BUF = 4 << 20
STREAM_LIMIT = 8 << 20
HELLO = "auth.hello"  # answered inline, before any later frame of the connection is read
RATE_GRACE = 30.0  # seconds before a receive's minimum average rate applies


def split_addr(addr: str) -> tuple[str, int]:
    """'host:port' -> (host, port); raises UsageError-like ValueError on bad input."""
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"not a HOST:PORT address: {addr!r}")
    return host.strip("[]"), int(port)


def tune(sock: socket.socket | None) -> None:
    """No Nagle delay for small frames; large buffers for bulk streams on long links."""
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCK_BUF)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCK_BUF)


class Cork:
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


class Pace:
    """A receive's minimum average rate (bytes/s), enforced after ``RATE_GRACE``
    seconds: a per-read timeout alone lets a peer trickle a byte every few seconds
    and hold a thread for ever."""

    def __init__(self, min_rate: int, what: str) -> None:
        self.min_rate = min_rate
        self.what = what
        self.started = time.monotonic()

    def check(self, got: int) -> None:
        elapsed = time.monotonic() - self.started
        if self.min_rate and elapsed > RATE_GRACE and got / elapsed < self.min_rate:
            raise Timeout(f"{self.what} too slow ({got} bytes in {elapsed:.0f} s)")


def recv_some(sock: socket.socket, view: memoryview, what: str, done: str) -> int:
    """``recv_into`` a blocking socket with a timeout: the count, never 0; a stall, a
    failure or the end of the stream as a ``TransportError`` (``done`` says how far)."""
    try:
        n = sock.recv_into(view)
    except TimeoutError:
        raise Timeout(f"{what} stalled after {done}") from None
    except OSError as exc:
        raise ConnectError(f"{what} failed: {exc}") from None
    if n == 0:
        raise ConnectError(f"{what} cut off after {done}")
    return n
