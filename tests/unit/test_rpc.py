"""The RPC transport on real sockets: a Server and an RpcPool on 127.0.0.1, port 0.

Each test is a plain function that runs one coroutine with ``asyncio.run`` (no
pytest-asyncio), under an overall deadline so a hang fails fast instead of waiting for
the suite's timeout. Waiting is done on events and on the peer closing the socket,
never by sleeping and hoping; the only sleeps are the stalls a test commits on
purpose.

The hardening tests speak to the server through a raw stream, the way a broken or
hostile peer would, while a well-behaved client is connected to the same server at the
same time; each asserts both that the bad connection was closed and that the good one
kept being served on its existing connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import hashlib
import os
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pytest

from sector.errors import (
    AlreadyExists,
    BadRequest,
    ConnectError,
    NotFound,
    ProtocolError,
    RemoteError,
    Timeout,
)
from sector.transport.rpc import BulkChannel, RpcPool, Server
from sector.wire import codec
from sector.wire.codec import HEADER, Envelope, FrameDecoder

T = TypeVar("T")
DEADLINE = 10.0


def run(coro: Coroutine[Any, Any, T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, DEADLINE)

    try:
        return asyncio.run(bounded())
    finally:
        # A socket left open warns when it is collected; collect now, so the warning
        # (an error in this suite) lands on the test that leaked it.
        gc.collect()


class Handlers:
    """A handler table with gates, so tests control when each request finishes."""

    def __init__(self) -> None:
        self.gates: dict[str, asyncio.Event] = {}
        self.waiting = 0
        self.some_waiting = asyncio.Event()
        self.table: dict[str, Callable[[dict[str, Any]], Awaitable[Any]]] = {
            "echo": self.echo,
            "missing": self.missing,
            "exists": self.exists,
            "boom": self.boom,
            "unencodable": self.unencodable,
            "gate": self.gate,
        }

    async def echo(self, a: dict[str, Any]) -> Any:
        return a

    async def missing(self, a: dict[str, Any]) -> Any:
        raise NotFound(f"no such file: {a['path']}", path=a["path"])

    async def exists(self, a: dict[str, Any]) -> Any:
        raise AlreadyExists("it exists", path="/d", node="n1")

    async def boom(self, a: dict[str, Any]) -> Any:
        raise ValueError("unexpected")

    async def unencodable(self, a: dict[str, Any]) -> Any:
        return object()

    async def gate(self, a: dict[str, Any]) -> Any:
        gate = self.gates.setdefault(a["k"], asyncio.Event())
        self.waiting += 1
        self.some_waiting.set()
        await gate.wait()
        return a["k"]


@contextlib.asynccontextmanager
async def serving(
    handlers: Handlers | None = None,
    bulk: dict[str, Any] | None = None,
    **kw: Any,
) -> AsyncIterator[tuple[Server, RpcPool, Handlers]]:
    h = handlers or Handlers()
    server = Server(h.table, bulk, **kw)
    await server.start("127.0.0.1", 0)
    pool = RpcPool(timeout=5.0, connect_timeout=2.0)
    try:
        yield server, pool, h
    finally:
        await pool.close()
        await server.close()


@contextlib.asynccontextmanager
async def raw_connect(
    addr: str,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A plain stream to the server, for speaking to it the way a bad peer would."""
    host, port = addr.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def closed_by_peer(reader: asyncio.StreamReader, within: float = 3.0) -> bool:
    """True once the server has closed this connection (EOF or reset)."""
    try:
        while True:
            if not await asyncio.wait_for(reader.read(65536), within):
                return True
    except TimeoutError:  # first: TimeoutError is an OSError
        return False
    except (ConnectionError, OSError):
        return True


async def read_envelope(reader: asyncio.StreamReader) -> Envelope:
    (n,) = HEADER.unpack(await reader.readexactly(HEADER.size))
    (env,) = FrameDecoder().feed(HEADER.pack(n) + await reader.readexactly(n))
    return env


async def until(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait for ``pred()`` to hold, failing the test past ``timeout``."""
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- calls, results and typed errors ------------------------------------------------------


def test_handler_results_come_back() -> None:
    async def main() -> None:
        async with serving() as (server, pool, _):
            args = {"path": "/a", "n": [1, 2.5, None], "b": b"\x00\xff"}
            assert await pool.call(server.address, "echo", args) == args
            assert await pool.call(server.address, "echo") == {}
            assert server.stats["requests"] == 2
            assert server.stats["connections"] == 1

    run(main())


def test_typed_errors_are_raised_again_as_the_same_class_with_their_data() -> None:
    async def main() -> None:
        async with serving() as (server, pool, _):
            with pytest.raises(NotFound) as nf:
                await pool.call(server.address, "missing", {"path": "/x/y"})
            assert str(nf.value) == "no such file: /x/y"
            assert nf.value.data == {"path": "/x/y"}
            with pytest.raises(AlreadyExists) as ae:
                await pool.call(server.address, "exists")
            assert ae.value.data == {"path": "/d", "node": "n1"}
            # A typed error is an answer, not a broken connection: it stays pooled.
            assert await pool.call(server.address, "echo", {"x": 1}) == {"x": 1}
            assert server.stats["connections"] == 1

    run(main())


def test_unexpected_handler_failures_arrive_as_remote_error() -> None:
    async def main() -> None:
        async with serving() as (server, pool, _):
            with pytest.raises(RemoteError, match="ValueError: unexpected"):
                await pool.call(server.address, "boom")
            # A result msgpack cannot carry is the handler's bug, reported the same way.
            with pytest.raises(RemoteError):
                await pool.call(server.address, "unencodable")
            assert await pool.call(server.address, "echo", {"ok": True}) == {"ok": True}

    run(main())


def test_unknown_op_is_bad_request_and_the_pool_reconnects() -> None:
    async def main() -> None:
        async with serving() as (server, pool, _):
            with pytest.raises(BadRequest, match=r"unknown operation 'no\.such'"):
                await pool.call(server.address, "no.such", {})
            # The server drops a connection that sent a bad request; the next call opens
            # a fresh one instead of failing.
            assert await pool.call(server.address, "echo", {"a": 1}) == {"a": 1}

    run(main())


def test_concurrent_requests_on_one_connection_are_matched_by_id() -> None:
    keys = [f"k{n}" for n in range(8)]

    async def main() -> None:
        async with serving() as (server, pool, h):
            calls = [asyncio.create_task(pool.call(server.address, "gate", {"k": k})) for k in keys]
            while h.waiting < len(keys):  # every request is inside its handler at once
                h.some_waiting.clear()
                await h.some_waiting.wait()
            # Finish them in the reverse order: each reply must still reach its own caller.
            for k in reversed(keys):
                h.gates[k].set()
                await asyncio.sleep(0)
            assert await asyncio.gather(*calls) == keys
            assert server.stats["connections"] == 1

    run(main())


def test_a_call_that_outlives_its_timeout_raises_timeout() -> None:
    async def main() -> None:
        async with serving() as (server, pool, h):
            t0 = time.monotonic()
            with pytest.raises(Timeout, match=r"gate to 127\.0\.0\.1:\d+ timed out after 0\.2 s"):
                await pool.call(server.address, "gate", {"k": "never"}, timeout=0.2)
            assert 0.15 < time.monotonic() - t0 < 2.0
            # The late reply is dropped; the connection is still good for other calls.
            h.gates["never"].set()
            assert await pool.call(server.address, "echo", {"z": 0}) == {"z": 0}
            assert server.stats["connections"] == 1

    run(main())


def test_connecting_where_nothing_listens_is_a_one_line_connect_error() -> None:
    addr = f"127.0.0.1:{free_port()}"

    async def main() -> None:
        pool = RpcPool(connect_timeout=2.0)
        try:
            with pytest.raises(ConnectError) as exc:
                await pool.call(addr, "echo", {})
            msg = str(exc.value)
            assert msg.startswith(f"cannot connect to {addr}: ")
            assert "\n" not in msg
            assert exc.value.data["node"] == addr
            with pytest.raises(ConnectError, match="not a HOST:PORT address"):
                await pool.call("no-port-here", "echo", {})
        finally:
            await pool.close()

    run(main())


def test_connect_error_names_the_reason() -> None:
    addr = f"127.0.0.1:{free_port()}"

    async def main() -> None:
        pool = RpcPool(connect_timeout=2.0)
        try:
            with pytest.raises(ConnectError, match="connection refused"):
                await pool.call(addr, "echo", {})
        finally:
            await pool.close()

    run(main())


def test_calls_in_flight_fail_with_connect_error_when_the_server_goes() -> None:
    async def main() -> None:
        async with serving() as (server, pool, h):
            call = asyncio.create_task(pool.call(server.address, "gate", {"k": "held"}))
            await h.some_waiting.wait()
            await server.close()
            with pytest.raises(ConnectError, match=r"closed|lost"):
                await call

    run(main())


# -- hardening: a bad peer loses its connection, the others are served -------------------


async def _good_client_survives(
    bad_bytes: bytes, *, stall: float = 10.0, max_frame: int = codec.DEFAULT_MAX_FRAME
) -> tuple[Server, float]:
    """Send bad_bytes on a raw connection next to a pooled client; return when it is cut."""
    async with serving(stall_timeout=stall, max_frame=max_frame) as (server, pool, _):
        addr = server.address
        assert await pool.call(addr, "echo", {"n": 0}) == {"n": 0}
        good = pool._conns[addr]

        async with raw_connect(addr) as (reader, writer):
            writer.write(bad_bytes)
            await writer.drain()
            t0 = time.monotonic()
            # While the bad peer is being dealt with, the good client keeps being answered.
            for n in range(1, 20):
                assert await pool.call(addr, "echo", {"n": n}) == {"n": n}
            assert await closed_by_peer(reader, within=stall + 3.0), "bad connection left open"
            cut_after = time.monotonic() - t0

        for n in range(20, 30):
            assert await pool.call(addr, "echo", {"n": n}) == {"n": n}
        assert pool._conns[addr] is good and not good.closed, "good client was disconnected"
        assert server.stats["connections"] == 2
        assert server.stats["protocol_errors"] == 1
        return server, cut_after


def test_garbage_bytes_close_that_connection_only() -> None:
    run(_good_client_survives(b"\x00\x00\x00\x05\xc1\xc1\xc1\xc1\xc1"))


def test_an_http_request_closes_that_connection_only() -> None:
    run(_good_client_survives(b"GET / HTTP/1.1\r\nHost: sector\r\n\r\n"))


def test_an_oversize_frame_header_closes_that_connection_only() -> None:
    # Refused from the header alone: the server never waits for (or buffers) the body.
    run(_good_client_survives(HEADER.pack(4097), max_frame=4096))


@pytest.mark.parametrize(
    "obj",
    [
        pytest.param({"i": "1", "op": "echo", "a": {}}, id="i-a-string"),
        pytest.param({"i": 1, "op": "echo", "a": [1, 2]}, id="a-a-list"),
        pytest.param(7, id="bare-int"),
    ],
)
def test_a_frame_of_the_wrong_types_closes_that_connection_only(obj: Any) -> None:
    body = msgspec.msgpack.encode(obj)
    run(_good_client_survives(HEADER.pack(len(body)) + body))


def test_a_reply_where_a_request_was_expected_closes_that_connection_only() -> None:
    run(_good_client_survives(codec.reply(1, "unasked")))


def test_a_frame_stalled_half_way_is_cut_after_the_stall_timeout() -> None:
    body = msgspec.msgpack.encode({"i": 1, "op": "echo", "a": {"x": "y" * 100}})
    half = HEADER.pack(len(body)) + body[:10]

    async def main() -> None:
        _, cut_after = await _good_client_survives(half, stall=0.3)
        assert 0.2 < cut_after < 3.0

    run(main())


def test_a_frame_trickled_a_byte_at_a_time_is_cut_too() -> None:
    frame = codec.request(1, "echo", {"x": "y" * 200})

    async def main() -> None:
        async with (
            serving(stall_timeout=0.4) as (server, _, _),
            raw_connect(server.address) as (reader, writer),
        ):
            with contextlib.suppress(ConnectionError, OSError):
                for k in range(15):  # 1.2 s for 15 bytes: three times the 0.4 s allowed
                    writer.write(frame[k : k + 1])
                    await writer.drain()
                    await asyncio.sleep(0.08)
                    if reader.at_eof():
                        break
            assert await closed_by_peer(reader, within=0.05)

    run(main())


def test_an_idle_connection_is_closed_after_the_idle_timeout() -> None:
    async def main() -> None:
        async with serving(idle_timeout=0.3) as (server, _, _):
            async with raw_connect(server.address) as (reader, _):
                assert await closed_by_peer(reader)
            assert server.stats["protocol_errors"] == 0  # idle is not an offence

    run(main())


# -- bulk channels -----------------------------------------------------------------------


async def _up(a: dict[str, Any], chan: BulkChannel) -> Any:
    """Receive a["size"] raw bytes after the header frame; answer with their hash."""
    h = hashlib.sha256()
    left = int(a["size"])
    while left:
        chunk = await chan.read_some(min(left, 1 << 20))
        if not chunk:
            raise ProtocolError("short upload")
        h.update(chunk)
        left -= len(chunk)
    return {"size": a["size"], "sha256": h.hexdigest()}


def _down(path: Path) -> Callable[[dict[str, Any], BulkChannel], Awaitable[Any]]:
    async def down(a: dict[str, Any], chan: BulkChannel) -> Any:
        if not path.exists():
            raise NotFound(f"no blob {path.name}", blob=path.name)
        with open(path, "rb") as f:
            await chan.sendfile(f, a["offset"], a["count"])
        return {"sent": a["count"]}

    return down


def test_bulk_handler_receives_raw_bytes_after_the_header_and_replies() -> None:
    data = os.urandom(3 << 20)

    async def main() -> None:
        async with serving(bulk={"up": _up}) as (server, pool, _):
            chan = await pool.open_bulk(server.address, "up", {"size": len(data)})
            view = memoryview(data)
            for k in range(0, len(data), 1 << 20):
                await chan.write(view[k : k + (1 << 20)])
            reply = await chan.read_reply()
            await chan.close()
            assert reply == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            # Control calls never went through the bulk connection.
            assert await pool.call(server.address, "echo", {"a": 1}) == {"a": 1}

    run(main())


def test_raw_bytes_in_the_same_packet_as_the_header_are_not_lost() -> None:
    data = os.urandom(1000)

    async def main() -> None:
        async with (
            serving(bulk={"up": _up}) as (server, _, _),
            raw_connect(server.address) as (reader, writer),
        ):
            # One write: the server's first read holds the header *and* the raw bytes,
            # which must reach the handler through take_rest.
            writer.write(codec.request(5, "up", {"size": len(data)}) + data)
            env = await read_envelope(reader)
            assert env.i == 5
            assert env.r == {"size": 1000, "sha256": hashlib.sha256(data).hexdigest()}
            assert await closed_by_peer(reader)  # one transfer per bulk connection

    run(main())


def test_a_reset_bulk_stream_is_a_transport_error() -> None:
    seen: list[BaseException] = []
    done = asyncio.Event()

    async def up(a: dict[str, Any], chan: BulkChannel) -> Any:
        try:
            return await chan.read_some()
        except BaseException as exc:
            seen.append(exc)
            raise
        finally:
            done.set()

    async def main() -> None:
        async with serving(bulk={"up": up}) as (server, _, _):
            async with raw_connect(server.address) as (_, writer):
                writer.write(codec.request(1, "up", {}))
                await writer.drain()
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()  # linger 0: the close sends a RST
                await done.wait()
            assert len(seen) == 1
            assert isinstance(seen[0], ConnectError), repr(seen[0])

    run(main())


def test_bulk_errors_come_back_typed(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(bulk={"down": _down(tmp_path / "absent")}) as (server, pool, _):
            chan = await pool.open_bulk(server.address, "down", {"offset": 0, "count": 1})
            with pytest.raises(NotFound, match="no blob absent") as exc:
                await chan.read_reply()
            assert exc.value.data == {"blob": "absent"}
            await chan.close()

    run(main())


def test_a_stalled_bulk_upload_is_dropped() -> None:
    async def main() -> None:
        # The bulk channel's stall limit is three times the server's (0.1 s -> 0.3 s).
        async with serving(bulk={"up": _up}, stall_timeout=0.1) as (server, pool, _):
            chan = await pool.open_bulk(server.address, "up", {"size": 100})
            await chan.write(b"x" * 10)
            t0 = time.monotonic()
            with pytest.raises(ProtocolError, match="ended early"):
                await chan.read_reply()  # the server hangs up without a reply
            assert 0.2 < time.monotonic() - t0 < 3.0
            await chan.close()
            assert await pool.call(server.address, "echo", {}) == {}

    run(main())


@pytest.fixture
def sendfile_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the os.sendfile calls asyncio makes (it looks the function up on os)."""
    calls: list[int] = []
    real = os.sendfile

    def spy(out_fd: int, in_fd: int, offset: int | None, count: int) -> int:
        calls.append(count)
        return real(out_fd, in_fd, offset, count)

    monkeypatch.setattr(os, "sendfile", spy)
    return calls


def test_bulk_download_uses_sendfile(tmp_path: Path, sendfile_calls: list[int]) -> None:
    blob = tmp_path / "blob"
    data = os.urandom(5 << 20)
    blob.write_bytes(data)
    offset, count = 12345, (4 << 20) + 7

    async def main() -> None:
        async with serving(bulk={"down": _down(blob)}) as (server, pool, _):
            chan = await pool.open_bulk(server.address, "down", {"offset": offset, "count": count})
            got = await chan.read_exactly(count)
            assert await chan.read_reply() == {"sent": count}
            await chan.close()
            assert got == data[offset : offset + count]
            # Nothing sent: no sendfile at all, and still a reply.
            chan = await pool.open_bulk(server.address, "down", {"offset": 0, "count": 0})
            assert await chan.read_reply() == {"sent": 0}
            await chan.close()

    run(main())
    assert sendfile_calls, "the kernel copy path (os.sendfile) was not used"


def test_bulk_upload_from_a_file_uses_sendfile(tmp_path: Path, sendfile_calls: list[int]) -> None:
    src = tmp_path / "src"
    data = os.urandom(2 << 20)
    src.write_bytes(data)

    async def main() -> None:
        async with serving(bulk={"up": _up}) as (server, pool, _):
            part = data[100 : 100 + (1 << 20)]
            chan = await pool.open_bulk(server.address, "up", {"size": len(part)})
            with open(src, "rb") as f:
                await chan.sendfile(f, 100, len(part))
            assert await chan.read_reply() == {
                "size": len(part),
                "sha256": hashlib.sha256(part).hexdigest(),
            }
            await chan.close()

    run(main())
    assert sendfile_calls


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            raise ConnectionError("short stream")
        got += k
    return bytes(buf)


async def _raw_up(a: dict[str, Any], chan: BulkChannel) -> Any:
    """Receive the data on the raw-socket fast path, then take what followed it."""
    size = int(a["size"])
    raw = chan.raw_socket()
    assert raw is not None
    try:
        first = chan.take_buffered(size)
        rest = await asyncio.to_thread(_recv_exactly, raw, size - len(first))
        trailer = chan.take_buffered(1 << 20)
    finally:
        raw.close()
    data = first + rest
    return {"sha256": hashlib.sha256(data).hexdigest(), "trailer": trailer}


def test_raw_socket_fast_path_receives_every_byte() -> None:
    data = os.urandom(3 << 20)

    async def main() -> None:
        async with serving(bulk={"up": _raw_up}) as (server, pool, _):
            chan = await pool.open_bulk(server.address, "up", {"size": len(data)})
            await chan.write(data)
            reply = await chan.read_reply()
            await chan.close()
            assert reply == {"sha256": hashlib.sha256(data).hexdigest(), "trailer": b""}

    run(main())


def test_raw_socket_leaves_bytes_past_the_data_in_the_channel() -> None:
    data = os.urandom(1000)

    async def main() -> None:
        async with (
            serving(bulk={"up": _raw_up}) as (server, _, _),
            raw_connect(server.address) as (reader, writer),
        ):
            # Header, data and what follows the data in one packet: all of it is already
            # buffered when the handler switches to the raw socket.
            writer.write(codec.request(2, "up", {"size": len(data)}) + data + b"END")
            env = await read_envelope(reader)
            assert env.r == {"sha256": hashlib.sha256(data).hexdigest(), "trailer": b"END"}

    run(main())


def test_read_frame_refuses_an_oversize_reply() -> None:
    async def big(a: dict[str, Any], chan: BulkChannel) -> Any:
        await chan.write(struct.pack(">I", 1 << 30))
        await asyncio.Event().wait()  # never replies properly

    async def main() -> None:
        async with serving(bulk={"big": big}) as (server, pool, _):
            chan = await pool.open_bulk(server.address, "big", {})
            with pytest.raises(ProtocolError, match="exceeds the limit"):
                await chan.read_reply()
            await chan.close()

    run(main())


def test_a_peer_with_its_byte_budget_in_flight_is_not_read_until_a_request_finishes() -> None:
    async def main() -> None:
        h = Handlers()
        async with serving(h, max_inflight_bytes_per_peer=1 << 20) as (server, pool, _):
            pad = b"x" * (600 << 10)  # two of these exceed the peer's 1 MiB budget
            first = asyncio.create_task(pool.call(server.address, "gate", {"k": "a", "p": pad}))
            await h.some_waiting.wait()
            second = asyncio.create_task(pool.call(server.address, "gate", {"k": "b", "p": pad}))
            small = asyncio.create_task(pool.call(server.address, "echo", {"x": 1}))
            done, _ = await asyncio.wait({second, small}, timeout=0.5)
            assert not done and h.waiting == 1  # held back: nothing behind it was read
            h.gates.setdefault("a", asyncio.Event()).set()
            assert await first == "a"
            assert await small == {"x": 1}
            while h.waiting < 2:  # the second now runs
                await asyncio.sleep(0.01)
            h.gates.setdefault("b", asyncio.Event()).set()
            assert await second == "b"
            assert not server.input.used  # every byte given back

    run(main())


def test_connections_past_the_per_peer_limit_are_closed_and_the_rest_served() -> None:
    async def main() -> None:
        async with serving(max_connections_per_peer=2) as (server, pool, _):
            host, port = server.address.rsplit(":", 1)
            held = [await asyncio.open_connection(host, int(port)) for _ in range(2)]
            r, w = await asyncio.open_connection(host, int(port))
            assert await r.read(1) == b""  # the third from this host: closed at once
            w.close()
            _, hw = held.pop()
            hw.close()
            await hw.wait_closed()
            while len(server.admission) > 1:
                await asyncio.sleep(0.01)
            assert await pool.call(server.address, "echo", {"ok": 1}) == {"ok": 1}
            for _, hw in held:
                hw.close()

    run(main())


def test_a_half_sent_frame_holds_its_bytes_in_the_peers_budget_from_its_header() -> None:
    """Issue 11, point 4: a frame's bytes count from its header on, not once it is
    whole, so half-sent frames cannot pile up past the budget; what comes meanwhile
    is not read until the first frame is done."""

    async def main() -> None:
        async with serving(max_inflight_bytes_per_peer=1 << 20) as (server, _pool, _):
            frame = codec.request(1, "echo", {"p": b"x" * (800 << 10)})
            body = len(frame) - HEADER.size
            async with raw_connect(server.address) as (r1, w1):
                w1.write(frame[: len(frame) // 2])
                await w1.drain()
                await until(lambda: server.input.total == body)
                async with raw_connect(server.address) as (r2, w2):
                    w2.write(frame)  # a whole frame, but the budget is held by the half
                    await w2.drain()
                    with pytest.raises(TimeoutError):
                        await asyncio.wait_for(r2.read(1), 0.5)
                    w1.write(frame[len(frame) // 2 :])
                    assert (await read_envelope(r1)).r["p"] == b"x" * (800 << 10)
                    assert (await read_envelope(r2)).r["p"] == b"x" * (800 << 10)
            await until(lambda: server.input.total == 0 and not server.input.used)

    run(main())


def test_a_stalled_half_frame_gives_its_budget_back_when_it_is_cut_off() -> None:
    async def main() -> None:
        async with serving(max_inflight_bytes_per_peer=1 << 20, stall_timeout=0.5) as (
            server,
            pool,
            _,
        ):
            frame = codec.request(1, "echo", {"p": b"x" * (900 << 10)})
            async with raw_connect(server.address) as (r1, w1):
                w1.write(frame[:-10])
                await w1.drain()
                await until(lambda: server.input.total > 0)
                # A client's request waits for the budget, then runs once the stall is cut.
                assert await pool.call(server.address, "echo", {"x": 1}) == {"x": 1}
                assert await r1.read(1) == b""
            assert server.input.total == 0

    run(main())


def _has_conns(server: Server, n: int) -> bool:
    return len(server._conns) == n


def test_close_ends_connections_whose_peer_keeps_sending() -> None:
    """A cancel that lands as a read completes is not lost: ``close`` returns while
    clients keep the connections busy (3.11's ``wait_for`` around the read lost such
    a cancel, and a node's stop then waited for that connection for ever)."""

    async def flood(addr: str, stop: asyncio.Event) -> None:
        host, port = addr.rsplit(":", 1)
        with contextlib.suppress(ConnectionError, OSError):
            _, writer = await asyncio.open_connection(host, int(port))
            frame = codec.request(1, "echo", {"x": "y" * 64})
            while not stop.is_set():
                writer.write(frame * 4)
                await writer.drain()
                await asyncio.sleep(0)

    async def main() -> None:
        for _ in range(30):
            h = Handlers()
            server = Server(h.table, None)
            await server.start("127.0.0.1", 0)
            stop = asyncio.Event()
            floods = [asyncio.create_task(flood(server.address, stop)) for _ in range(4)]
            await until(functools.partial(_has_conns, server, 4))
            await asyncio.sleep(0.02)
            try:
                await asyncio.wait_for(server.close(), 3.0)
            finally:
                stop.set()
                await asyncio.gather(*floods, return_exceptions=True)

    run(main())
