"""The client side of the RPC (``RpcPool``) when the far end goes away mid-call, on real
sockets (127.0.0.1, port 0): the caller gets a typed error and nothing is left behind.

Found by the fuzz flood (tests/slow/test_fuzz_flood.py), where nodes' handlers are
cancelled and their pooled links close all the time: a call whose connection closed
while it was still writing its request left a failed future nobody looked at, and
asyncio logged "Future exception was never retrieved" with a traceback on the node.
"""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest

from sector.errors import ConnectError, Timeout
from sector.transport.pool import UPKEEP
from sector.transport.rpc import RpcPool, Server

DEADLINE = 10.0


def test_a_call_whose_connection_closes_while_it_writes_leaves_no_unretrieved_error() -> None:
    async def main() -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        unhandled: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, ctx: unhandled.append(ctx))
        accepted = asyncio.Event()
        cut = asyncio.Event()

        async def deaf(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            # Reads nothing, so the caller's request fills the socket buffers and its
            # drain waits; then the connection is reset under it.
            accepted.set()
            await cut.wait()
            writer.transport.abort()

        server = await asyncio.start_server(deaf, "127.0.0.1", 0)
        addr = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
        pool = RpcPool(timeout=5.0, connect_timeout=2.0)
        try:
            call = asyncio.create_task(pool.call(addr, "echo", {"data": b"x" * (64 << 20)}))
            await accepted.wait()
            while not call.done() and not pool._conns:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)  # the call is in its drain: buffers full
            cut.set()
            with pytest.raises(ConnectError):
                await call
            del call
        finally:
            await pool.close()
            server.close()
            await server.wait_closed()
        gc.collect()
        await asyncio.sleep(0)
        return unhandled

    unhandled = asyncio.run(asyncio.wait_for(main(), DEADLINE))
    gc.collect()
    assert not unhandled, [ctx.get("message") for ctx in unhandled]


def test_upkeep_is_answered_while_the_shared_connection_is_backed_up() -> None:
    """A server reads at most ``max_inflight_per_conn`` requests of a connection at a
    time: with that many slow requests in flight to a peer, the ring's and the
    membership's requests (``UPKEEP``) still get through, on a connection of their own,
    while any other request waits its turn."""

    async def main() -> None:
        release = asyncio.Event()

        async def slow(args: dict[str, Any]) -> str:
            await release.wait()
            return "slow"

        async def ping(args: dict[str, Any]) -> str:
            return "pong"

        handlers = {"x.slow": slow, "chord.ping": ping, "node.gossip": ping, "x.ping": ping}
        server = Server(handlers, max_inflight_per_conn=2)
        addr = await server.start("127.0.0.1", 0)
        pool = RpcPool(timeout=5.0, connect_timeout=2.0)
        try:
            backlog = [asyncio.create_task(pool.call(addr, "x.slow", {})) for _ in range(4)]
            while server.stats["requests"] < 2:  # the server holds two; reads no more
                await asyncio.sleep(0.01)
            assert "chord.ping" in UPKEEP and "node.gossip" in UPKEEP
            assert await pool.call(addr, "chord.ping", {}, timeout=1.0) == "pong"
            assert await pool.call(addr, "node.gossip", {}, timeout=1.0) == "pong"
            with pytest.raises(Timeout):  # the same request on the shared lane waits
                await pool.call(addr, "x.ping", {}, timeout=0.5)
            release.set()
            assert await asyncio.gather(*backlog) == ["slow"] * 4
            pool.forget(addr)  # both lanes: the next calls open new connections
            assert not pool._conns
            assert await pool.call(addr, "chord.ping", {}, timeout=1.0) == "pong"
        finally:
            await pool.close()
            await server.close()

    asyncio.run(asyncio.wait_for(main(), DEADLINE))
