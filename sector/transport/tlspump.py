"""A bulk stream's TLS records encrypted and decrypted in a worker thread.

asyncio's SSL transport runs every record through the event loop: decrypted in
256 KiB pieces, copied into the ``StreamReader`` and out again, all under the GIL
on the loop's thread. ``bench/tls.py`` measured it at 366 MB/s on loopback, against
1,303 MB/s for blocking TLS sockets with the same contexts, and the node's CPU per GB
of a secure put at four times a plain one's. A bulk stream has phases in which one
side only sends and the other only receives (the raw bytes between the header frame
and the final reply), and for those a worker thread can take the connection's TLS
state over: the ``SSLObject`` and the two memory BIOs that asyncio's ``SSLProtocol``
drives, and a duplicate of the socket. OpenSSL releases the GIL while it encrypts
and decrypts, so the records of several streams are processed on several cores,
and a record is decrypted straight into the receive buffer.

Rules (an ``SSLObject`` is not thread-safe, so the loop must not touch it while a
thread does):

1. ``TlsPump.of`` returns a pump only for asyncio's own SSL transport in its
   ``WRAPPED`` state (uvloop's, or a later asyncio's of another shape, keeps the
   transport path: ``None``).
2. Before a thread runs, the TCP transport under the TLS one stops reading
   (``pause``): the loop then never calls into the ``SSLObject``. A send also waits
   until every byte the loop had queued is on the socket (``flushed``), so the
   thread's records follow the loop's in order.
3. What the thread reads off the socket beyond its bytes (the peer's next frame)
   stays in the incoming BIO; ``resume`` hands it to the protocol as if it had just
   arrived, and reading goes on.
4. Errors are those of the plain path: a stream cut off, stalled or broken raises a
   ``TransportError`` in the thread; the caller closes the channel.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, cast

from sector.errors import ConnectError, ProtocolError, Timeout
from sector.transport.tcp import Pace, recv_some

__all__ = ["TlsPump", "TlsSender", "senders"]

RAW_CHUNK = 1 << 20  # ciphertext bytes per recv
PLAIN_CHUNK = 1 << 20  # cleartext bytes per SSLObject.write (64 records of 16 KiB)
SEND_THREADS = 16  # files sent at once over TLS by one process (a thread each)

_senders: ThreadPoolExecutor | None = None
_senders_lock = threading.Lock()


def senders() -> ThreadPoolExecutor:
    """The threads that send files over TLS: a pool of their own, since a send holds
    its thread for as long as the peer takes the bytes, and the loop's default
    executor serves short work that must not queue behind it."""
    global _senders
    with _senders_lock:
        if _senders is None:
            _senders = ThreadPoolExecutor(SEND_THREADS, thread_name_prefix="tls-send")
        return _senders


class Take(Protocol):
    """Where decrypted bytes go (``bulk._Copy``)."""

    got: int
    size: int
    what: str

    def take(self, data: memoryview) -> None: ...


class TlsPump:
    """The TLS state of one asyncio connection, driven from a worker thread (see the
    module's rules); ``recv_into`` and ``sendall`` run in the thread."""

    def __init__(self, proto: Any, sock: socket.socket) -> None:
        self._proto = proto
        self._raw = proto._transport  # the TCP transport under the TLS one
        self._obj: ssl.SSLObject = proto._sslobj
        self._incoming: ssl.MemoryBIO = proto._incoming
        self._outgoing: ssl.MemoryBIO = proto._outgoing
        self._sock = sock
        self._paused = False

    @classmethod
    def of(cls, transport: Any) -> TlsPump | None:
        """A pump for ``transport`` (an ``asyncio.StreamWriter``'s), or None."""
        proto = getattr(transport, "_ssl_protocol", None)
        if proto is None or transport.is_closing():
            return None
        parts = ("_transport", "_sslobj", "_incoming", "_outgoing", "_do_read")
        if any(getattr(proto, p, None) is None for p in parts):
            return None
        if getattr(getattr(proto, "_state", None), "name", "") != "WRAPPED":
            return None
        sock = proto._transport.get_extra_info("socket")
        if sock is None:
            return None
        return cls(proto, sock)

    # -- on the loop ----------------------------------------------------------------

    def flushed(self) -> bool:
        """Nothing the loop queued is still waiting to be encrypted or sent."""
        backlog = getattr(self._proto, "_write_backlog", ())
        return not backlog and not self._outgoing.pending and not self._raw.get_write_buffer_size()

    def pause(self) -> None:
        """The loop stops reading the socket (and so stops using the ``SSLObject``)."""
        if not self._paused:
            self._raw.pause_reading()
            self._paused = True

    def resume(self) -> None:
        """Reading goes on; what the thread left in the BIOs goes to the protocol."""
        if not self._paused:
            return
        self._paused = False
        if self._raw.is_closing():
            return
        self._raw.resume_reading()
        if self._incoming.pending or self._obj.pending():
            self._proto._do_read()

    def duplicate(self, timeout: float) -> socket.socket:
        """A blocking duplicate of the socket, for the thread."""
        dup = socket.socket(fileno=os.dup(self._sock.fileno()))
        dup.settimeout(timeout)
        return dup

    # -- in the thread --------------------------------------------------------------

    def recv_into(self, sock: socket.socket, copy: Take, chunk: int, min_rate: int = 0) -> None:
        """Decrypt the rest of ``copy``'s bytes into a buffer of ``chunk`` bytes and
        hand each buffer-full to ``copy.take``; never past ``copy.size`` (what follows
        stays in the BIO for the loop). ``min_rate`` as in ``bulk.recv``."""
        pace = Pace(min_rate, copy.what)
        buf = bytearray(min(chunk, max(1, copy.size - copy.got)))
        view = memoryview(buf)
        raw = bytearray(RAW_CHUNK)
        rawv = memoryview(raw)
        filled = 0
        while copy.got + filled < copy.size:
            want = min(len(buf) - filled, copy.size - copy.got - filled)
            try:
                n = cast(int, self._obj.read(want, view[filled:]))
            except ssl.SSLWantReadError:
                if filled:  # hand over what is here before waiting for more
                    copy.take(view[:filled])
                    filled = 0
                self._feed(sock, rawv, copy, pace)
                continue
            except ssl.SSLZeroReturnError:
                n = 0
            except ssl.SSLError as exc:
                raise ConnectError(f"{copy.what} failed: {exc}") from None
            if n == 0:
                raise ConnectError(f"{copy.what} cut off after {copy.got + filled} bytes")
            filled += n
            if filled == len(buf):
                copy.take(view[:filled])
                filled = 0
        if filled:
            copy.take(view[:filled])

    def _feed(self, sock: socket.socket, rawv: memoryview, copy: Take, pace: Pace) -> None:
        pace.check(copy.got)
        done = f"{copy.got} of {copy.size} bytes"
        self._incoming.write(rawv[: recv_some(sock, rawv, copy.what, done)])

    def sendall(self, sock: socket.socket, data: memoryview) -> None:
        """Encrypt ``data`` and send it (OSError as the socket raises it)."""
        at = 0
        while at < len(data):
            at += self._obj.write(data[at : at + PLAIN_CHUNK])
            sock.sendall(self._outgoing.read())

    def send_file(self, sock: socket.socket, fd: int, offset: int, count: int, what: str) -> None:
        """``count`` bytes of a file from ``offset``, read into one buffer, encrypted
        and sent."""
        buf = bytearray(min(PLAIN_CHUNK * 4, max(1, count)))
        view = memoryview(buf)
        end = offset + count
        while offset < end:
            n = os.preadv(fd, [view[: min(len(buf), end - offset)]], offset)
            if n == 0:
                raise ProtocolError(f"file ended {end - offset} bytes early")
            try:
                self.sendall(sock, view[:n])
            except TimeoutError:
                raise Timeout(f"{what} stalled") from None
            except OSError as exc:
                raise ConnectError(f"{what} lost: {exc}") from None
            offset += n


class TlsSender:
    """The next hop of a chain as ``bulk._Copy`` writes to it: ``sendall`` and
    ``close``, encrypting in the receiving thread."""

    def __init__(self, pump: TlsPump, sock: socket.socket) -> None:
        self.pump = pump
        self.sock = sock

    def sendall(self, data: memoryview) -> None:
        self.pump.sendall(self.sock, data)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
