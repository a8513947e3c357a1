"""The bulk module on real sockets: ``send_file`` and ``recv`` over plain TCP and TLS,
with a hasher, progress, and a next hop that takes a copy (or fails part-way); on TLS
the bytes go through a worker thread that takes the connection's TLS state over
(``tlspump``), and a frame right behind them still reaches the loop; and
``first_live``, the one loop over a chain's targets.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from sector.errors import ConnectError, NotFound, SectorError, TransportError
from sector.security.pki import ClusterCA, server_context, user_client_context
from sector.transport import bulk
from sector.transport.bulk import BulkChannel
from sector.transport.chain import first_live
from sector.transport.rpc import BulkHandler, RpcPool, Server
from sector.transport.tlspump import TlsPump
from sector.wire import codec

DEADLINE = 20.0
SIZE = (9 << 20) + 123  # more than one receive buffer, not a multiple of it


class Sink:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: memoryview) -> None:
        self.data += data


class Stores:
    """Bulk handlers that keep what they receive: ``up`` (optionally forwarding to the
    address in ``next``) and ``short`` (reads a little, then hangs up)."""

    def __init__(self, pool: RpcPool) -> None:
        self.pool = pool
        self.got: dict[str, bytes] = {}
        self.failed: list[BaseException] = []
        self.progress: list[tuple[int, int]] = []
        self.table: dict[str, BulkHandler] = {
            "up": self.up,
            "short": self.short,
            "then": self.then,
            "parts": self.parts,
        }
        self.pumped: list[bool] = []  # per TLS receive: could a worker thread take it?

    async def up(self, a: dict[str, Any], chan: BulkChannel) -> Any:
        size = int(a["size"])
        down = None
        if a.get("next"):
            down = await self.pool.open_bulk(a["next"], a.get("op", "up"), {"size": size})
        sink, h = Sink(), hashlib.sha256()
        try:
            forwarded = await bulk.recv(
                chan, size, sink, hasher=h, forward=down, progress=self._progress
            )
            if down is not None and forwarded:
                await down.read_reply()
        except BaseException as exc:
            self.failed.append(exc)
            raise
        finally:
            if down is not None:
                await down.close()
        self.got[a.get("name", chan.peer)] = bytes(sink.data)
        return {"sha256": h.hexdigest(), "forwarded": forwarded}

    async def then(self, a: dict[str, Any], chan: BulkChannel) -> Any:
        """The bytes, then a frame the sender wrote right behind them."""
        size = int(a["size"])
        self.pumped.append(TlsPump.of(chan.writer.transport) is not None)
        sink = Sink()
        await bulk.recv(chan, size, sink)
        env = await chan.read_frame()
        return {"sha256": hashlib.sha256(sink.data).hexdigest(), "then": env.a}

    async def parts(self, a: dict[str, Any], chan: BulkChannel) -> Any:
        """Several files right behind each other, each received on its own."""
        out = []
        for size in a["sizes"]:
            sink = Sink()
            await bulk.recv(chan, size, sink)
            out.append(hashlib.sha256(sink.data).hexdigest())
        return out

    async def short(self, a: dict[str, Any], chan: BulkChannel) -> Any:
        await chan.read_exactly(1000)
        await chan.close()

    def _progress(self, done: int, total: int) -> None:
        self.progress.append((done, total))


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tls")
    ClusterCA.create("test").issue_node("n1").save(d)
    return d


Body = Callable[[list[Server], RpcPool, Stores], Awaitable[None]]


def on_nodes(n: int, tls: Path | None, body: Body) -> None:
    """Run ``body`` against ``n`` servers sharing one handler table and a pool that
    speaks to them (TLS with the node certificate in ``tls``), within a deadline."""

    async def main() -> None:
        pool = RpcPool(
            timeout=5.0, connect_timeout=2.0, ssl=user_client_context() if tls else None, tls="on"
        )
        stores = Stores(pool)
        servers: list[Server] = []
        try:
            for _ in range(n):
                s = Server({}, stores.table, ssl=server_context(tls) if tls else None)
                await s.start("127.0.0.1", 0)
                servers.append(s)
            await asyncio.wait_for(body(servers, pool, stores), DEADLINE)
        finally:
            await pool.close()
            for s in servers:
                await s.close()

    asyncio.run(main())
    gc.collect()  # a leaked socket warns on the test that leaked it


async def _upload(pool: RpcPool, addr: str, src: Path, args: dict[str, Any]) -> Any:
    sent: list[tuple[int, int]] = []
    chan = await pool.open_bulk(addr, "up", {"size": SIZE, **args})
    try:
        with open(src, "rb") as f:
            await bulk.send_file(chan, f, 0, SIZE, progress=lambda d, t: sent.append((d, t)))
        rep = await chan.read_reply()
    finally:
        await chan.close()
    assert sent[-1] == (SIZE, SIZE)
    return rep


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_a_chain_of_two_receives_every_byte(tmp_path: Path, tls: bool, tls_dir: Path) -> None:
    data = os.urandom(SIZE)
    src = tmp_path / "src"
    src.write_bytes(data)

    async def body(servers: list[Server], pool: RpcPool, stores: Stores) -> None:
        a, b = servers
        rep = await _upload(pool, a.address, src, {"name": "a", "next": b.address})
        assert rep == {"sha256": hashlib.sha256(data).hexdigest(), "forwarded": True}
        assert stores.got["a"] == data
        assert [v for k, v in stores.got.items() if k != "a"] == [data]  # the next hop's
        assert stores.progress[-1] == (SIZE, SIZE)
        steps = [d for d, _ in stores.progress]
        assert steps == sorted(steps)

    on_nodes(2, tls_dir if tls else None, body)


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_a_frame_right_behind_the_bytes_reaches_the_loop(tls: bool, tls_dir: Path) -> None:
    """Sent in one write with the bytes, the frame's records may be read off the socket
    by the receiving thread; they must still reach the handler (tlspump rule 3)."""
    data = os.urandom(SIZE)
    frame = codec.encode(codec.Envelope(i=7, op="more", a={"n": 42}))

    async def body(servers: list[Server], pool: RpcPool, stores: Stores) -> None:
        for _ in range(3):
            chan = await pool.open_bulk(servers[0].address, "then", {"size": SIZE})
            try:
                await chan.write(data + frame)
                rep = await chan.read_reply()
            finally:
                await chan.close()
            assert rep == {"sha256": hashlib.sha256(data).hexdigest(), "then": {"n": 42}}
        assert stores.pumped == ([True] * 3 if tls else [False] * 3)

    on_nodes(1, tls_dir if tls else None, body)


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_several_files_down_one_stream_each_arrive_whole(
    tmp_path: Path, tls: bool, tls_dir: Path
) -> None:
    """A send or a receive leaves the stream as it found it for the next one (on TLS,
    the transport's flow control too: a second send once hung in its drain)."""
    sizes = [SIZE, 1000, 0, (3 << 20) + 7]
    files = []
    for i, n in enumerate(sizes):
        files.append(tmp_path / f"f{i}")
        files[-1].write_bytes(os.urandom(n))

    async def body(servers: list[Server], pool: RpcPool, stores: Stores) -> None:
        chan = await pool.open_bulk(servers[0].address, "parts", {"sizes": sizes})
        try:
            for f, n in zip(files, sizes, strict=True):
                with open(f, "rb") as fh:
                    await chan.sendfile(fh, 0, n)
            rep = await chan.read_reply()
        finally:
            await chan.close()
        assert rep == [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]

    on_nodes(1, tls_dir if tls else None, body)


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_a_next_hop_that_fails_ends_only_the_forwarding(
    tmp_path: Path, tls: bool, tls_dir: Path
) -> None:
    data = os.urandom(SIZE)
    src = tmp_path / "src"
    src.write_bytes(data)

    async def body(servers: list[Server], pool: RpcPool, stores: Stores) -> None:
        a, b = servers
        args = {"name": "a", "next": b.address, "op": "short"}
        rep = await _upload(pool, a.address, src, args)
        assert rep == {"sha256": hashlib.sha256(data).hexdigest(), "forwarded": False}
        assert stores.got["a"] == data

    on_nodes(2, tls_dir if tls else None, body)


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_a_stream_cut_off_raises_a_transport_error(tls: bool, tls_dir: Path) -> None:
    async def body(servers: list[Server], pool: RpcPool, stores: Stores) -> None:
        chan = await pool.open_bulk(servers[0].address, "up", {"size": 1 << 20})
        await chan.write(b"x" * 1000)
        await chan.close()
        while not stores.failed:
            await asyncio.sleep(0.01)
        assert isinstance(stores.failed[0], TransportError)
        assert not stores.got

    on_nodes(1, tls_dir if tls else None, body)


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_writing_to_a_stream_closed_under_its_handler_is_a_lost_stream(
    tmp_path: Path, tls: bool, tls_dir: Path
) -> None:
    """The peer hangs up and the server closes the stream too (as a bad request on the
    same connection does) while a handler still holds it: writing is a ConnectError,
    not an AttributeError from a TLS transport closed twice."""
    src = tmp_path / "src"
    src.write_bytes(b"y" * 1000)
    seen: list[BaseException] = []

    async def late(a: dict[str, Any], chan: BulkChannel) -> Any:
        while await chan.read_some():
            pass
        if chan.tls:  # a TLS transport closes itself on the peer's EOF
            while not chan.writer.is_closing():
                await asyncio.sleep(0.01)
        chan.writer.close()
        with open(src, "rb") as f:
            for step in (chan.write(b"x"), bulk.send_file(chan, f, 0, 1000)):
                try:
                    await step
                except Exception as exc:
                    seen.append(exc)

    async def body(servers: list[Server], pool: RpcPool, stores: Stores) -> None:
        servers[0].bulk_handlers["late"] = late
        chan = await pool.open_bulk(servers[0].address, "late", {})
        await chan.close()
        while len(seen) < 2:
            await asyncio.sleep(0.01)
        assert [type(e) for e in seen] == [ConnectError, ConnectError], seen

    on_nodes(1, tls_dir if tls else None, body)


def test_first_live_skips_dead_targets_and_passes_the_rest_of_the_chain() -> None:
    chain = [["n1", "a1"], ["n2", "a2"], ["n3", "a3"]]
    tried: list[tuple[str, list[list[str]]]] = []
    skipped: list[tuple[str, str]] = []

    async def attempt(addr: str, rest: list[list[str]]) -> str:
        tried.append((addr, rest))
        if addr != "a3":
            raise ConnectError(f"{addr} is down")
        return "ok"

    def on_skip(nid: str, addr: str, exc: SectorError) -> None:
        skipped.append((nid, addr))

    assert asyncio.run(first_live(chain, attempt, on_skip=on_skip)) == "ok"
    assert tried == [("a1", [["n2", "a2"], ["n3", "a3"]]), ("a2", [["n3", "a3"]]), ("a3", [])]
    assert skipped == [("n1", "a1"), ("n2", "a2")]


def test_first_live_raises_the_last_error_and_stops_at_any_other() -> None:
    async def down(addr: str, rest: list[list[str]]) -> None:
        raise ConnectError(f"{addr} is down")

    with pytest.raises(ConnectError, match="a2 is down"):
        asyncio.run(first_live([("n1", "a1"), ("n2", "a2")], down))
    with pytest.raises(ConnectError, match="no target"):
        asyncio.run(first_live([], down))

    async def missing(addr: str, rest: list[list[str]]) -> None:
        raise NotFound("gone")

    with pytest.raises(NotFound):
        asyncio.run(first_live([("n1", "a1"), ("n2", "a2")], missing))
