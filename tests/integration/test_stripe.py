"""A large get striped over a file's live replicas, on loopback (issue 15; real nodes):
every holder serves part of it and the file is byte-exact; a holder whose copy is
rotten makes the striped read an error, never a silent bad file, and the get then
reads one replica at a time and still returns the right bytes. (A holder SIGKILLed
mid-read: tests/integration/test_wan.py, where a rate-limited link makes it land.)"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import sector
from sector.client import fetch
from sector.errors import BadRequest, ChecksumMismatch
from sector.storage import pieces
from sector.storage.messages import Get
from sector.testing.cluster import ProcCluster
from sector.transport import stripe
from sector.wire import codec
from sector.wire.messages import to_args

SIZE = 40 << 20  # over wan.STRIPE_MIN


@contextlib.contextmanager
def _three_holders(
    tmp_path: Path, random_file: Callable[[Path, int], Any]
) -> Iterator[tuple[ProcCluster, sector.Client, Path, dict[str, Any]]]:
    """3 nodes, and a client that put a random file of ``SIZE`` bytes as /big on all
    three: (cluster, client, source file, the put's result)."""
    src = tmp_path / "src"
    random_file(src, SIZE)
    with ProcCluster(tmp_path / "c", replicas=3) as cl:
        cl.start(3)
        with sector.connect(cl.address) as c:
            put = c.put(src, "/big")
            assert len(put["replicas"]) == 3
            yield cl, c, src, put


def _flip_byte(p: Path, at: int) -> None:
    with open(p, "r+b") as f:
        f.seek(at)
        b = f.read(1)
        f.seek(at)
        f.write(bytes([b[0] ^ 0xFF]))


def test_a_large_get_is_striped_over_the_replicas_and_a_rotten_one_is_caught(
    tmp_path: Path, random_file: Callable[[Path, int], Any]
) -> None:
    with _three_holders(tmp_path, random_file) as (cl, c, src, put):
        got = c.get("/big", tmp_path / "a")
        assert (tmp_path / "a").read_bytes() == src.read_bytes()
        t = got["transfer"]
        assert t["streams"] == 3 and sorted(t["holders"]) == sorted(cl.addresses()), t
        assert t["failed"] == [] and t["refetched"] == 0
        assert t["checked"] == "pieces"  # as they came, against the record's list

        # One copy rotten where its holder reads it: the third chunk is the third
        # holder stream's first (equally near holders are taken in the order of
        # their addresses, and each stream takes its first chunk in turn).
        st = c.stat("/big")
        holder = next(n for n in cl.nodes if n.address == sorted(cl.addresses())[2])
        at = stripe.ranges(SIZE, 3)[2][0] + 100
        _flip_byte(holder.data / "blobs" / put["blob"][:2] / put["blob"], at)
        with pytest.raises(ChecksumMismatch, match="striped over 3 replicas"):
            c._run(fetch.striped(c._aio.pool, st, tmp_path / "part", None))
        assert not (tmp_path / "part").exists(), "a bad assembled file is not left"
        got = c.get("/big", tmp_path / "b")
        assert (tmp_path / "b").read_bytes() == src.read_bytes()
        assert got["transfer"]["streams"] == 1, got["transfer"]  # one replica at a time


def test_a_piece_list_that_is_not_the_records_is_not_trusted(
    tmp_path: Path, random_file: Callable[[Path, int], Any]
) -> None:
    """Every holder keeps a valid list that is not the file's (its root is not the
    record's): the get does not check the pieces against it, it hashes the file
    whole, and the bytes are right."""
    with _three_holders(tmp_path, random_file) as (cl, c, src, put):
        st = c.stat("/big")
        assert st["pieces"] and st["piece_size"] > 0
        ps = st["piece_size"]
        n = pieces.count(SIZE, ps)
        forged = pieces.PieceList(SIZE, ps, bytes(pieces.DIGEST * n))
        for node in cl.nodes:
            d = node.data / "blobs" / put["blob"][:2]
            (d / (put["blob"] + pieces.SUFFIX)).write_bytes(pieces.encode(forged))
        got = c.get("/big", tmp_path / "a")
        assert got["transfer"]["checked"] == "whole", got["transfer"]
        assert (tmp_path / "a").read_bytes() == src.read_bytes()


def test_a_kept_blob_get_stream_serves_range_after_range_and_refuses_another_op(
    tmp_path: Path, random_file: Callable[[Path, int], Any]
) -> None:
    """``blob.get`` with ``keep`` (a striped read's stream): the ranges asked for one
    after another on one connection, each after its header; another op on that
    stream is refused with an error frame, and the node serves on."""
    random_file(tmp_path / "k", 1 << 20)
    data = (tmp_path / "k").read_bytes()
    with ProcCluster(tmp_path / "c", replicas=1) as cl:
        cl.start(1)
        with sector.connect(cl.address) as c:
            c.put(tmp_path / "k", "/k")
            blob = c.stat("/k")["blob"]
            pool = c._aio.pool

            async def run() -> tuple[list[bytes], str]:
                asks = [(0, 10), (1000, 5000), (len(data) - 7, 100)]
                req = Get(blob=blob, offset=0, length=10, keep=True)
                chan = await pool.open_bulk(cl.address, "blob.get", to_args(req))
                got = []
                try:
                    for off, n in asks[1:]:  # asked ahead, as a long path's stream does
                        nxt = Get(blob=blob, offset=off, length=n, keep=True)
                        await chan.write(codec.request(1, "blob.get", to_args(nxt)))
                    for _ in asks:
                        size = int((await chan.read_reply())["size"])
                        got.append(await chan.read_exactly(size))
                    await chan.write(codec.request(1, "blob.has", {"blob": blob}))
                    with pytest.raises(BadRequest, match=r"'blob\.has' on a blob\.get stream"):
                        await chan.read_reply()
                finally:
                    await chan.close()
                return got, "ok"

            got, _ = c.run(run())
            assert got == [data[:10], data[1000:6000], data[-7:]]
            assert c.read("/k") == data  # the node serves on


def test_a_stream_asks_for_its_next_chunk_ahead_only_at_depth_two(
    tmp_path: Path, random_file: Callable[[Path, int], Any]
) -> None:
    """``stripe.fetch``'s ``depth`` (``wan.chunking``: 2 on long paths): at 2 a stream
    asks for its second chunk before the first one's answer is read, so its holder
    never waits a round trip; at 1 it asks for the next only once the current one is
    in. The calls are the real ``blob.get`` stream's, recorded on the way through."""
    random_file(tmp_path / "f", 24 << 20)
    data = (tmp_path / "f").read_bytes()
    with ProcCluster(tmp_path / "c", replicas=1) as cl:
        cl.start(1)
        with sector.connect(cl.address) as c:
            blob = c.put(tmp_path / "f", "/f")["blob"]

            class Recording(fetch._BlobRanges):
                calls: list[str] = []

                async def open(self, holder: str, offset: int, length: int) -> Any:
                    self.calls.append("open")
                    return await super().open(holder, offset, length)

                async def ask(self, chan: Any, offset: int, length: int) -> None:
                    self.calls.append("ask")
                    await super().ask(chan, offset, length)

                async def head(self, chan: Any) -> int:
                    self.calls.append("head")
                    return await super().head(chan)

            for depth, first in ((2, ["open", "ask", "head"]), (1, ["open", "head", "ask"])):
                rec = Recording(c.aio.pool, blob)
                rec.calls = []
                out = tmp_path / f"out{depth}"
                with open(out, "wb") as f:
                    c.run(
                        stripe.fetch(
                            rec,
                            len(data),
                            f.fileno(),
                            [cl.address],
                            [1],
                            min_chunk=2 << 20,
                            depth=depth,
                        )
                    )
                assert out.read_bytes() == data
                assert rec.calls[:3] == first, (depth, rec.calls)
                assert rec.calls.count("head") >= 4, rec.calls  # several chunks, one stream
                # never more than `depth` asked for and not yet answered
                waiting = 0
                for call in rec.calls:
                    waiting += {"open": 1, "ask": 1, "head": -1}[call]
                    assert 0 <= waiting <= depth, (depth, rec.calls)
