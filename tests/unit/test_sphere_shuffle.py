"""The shuffle's bucket writers (``sector/node/sphere_shuffle.py``): one stream per
node, at most as many streams in flight as their shared room allows, all writers
together, the rest wait their turn (back-pressure); a failed or unaddressed part is
reported and kept; a delivered part is deleted from its mapper; a part for this node
is linked, not copied."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import cast

from sector.errors import ConnectError
from sector.node.sphere_shuffle import BucketWriter, Part, Sink, received
from sector.transport.rpc import RpcPool

ME = "127.0.0.1:7000"


class GatedSink:
    """Holds every stream until the test opens the gate; counts what is in flight."""

    def __init__(self, fail: set[int]) -> None:
        self.fail = fail
        self.gate = asyncio.Event()
        self.in_flight = 0
        self.most = 0
        self.started = 0
        self.streams: list[list[int]] = []  # the buckets of each stream, as started

    async def deliver(self, parts: list[Part]) -> None:
        self.in_flight += 1
        self.started += 1
        self.most = max(self.most, self.in_flight)
        self.streams.append([p.bucket for p in parts])
        try:
            await self.gate.wait()
            if any(p.bucket in self.fail for p in parts):
                raise ConnectError("the node went away")
        finally:
            self.in_flight -= 1


def new_stats() -> dict[str, int]:
    return {"pushed": 0, "streams": 0, "streams_peak": 0}


class GatedWriter(BucketWriter):
    def __init__(
        self, jdir: Path, stats: dict[str, int], sink: GatedSink, room: asyncio.Semaphore
    ) -> None:
        super().__init__(ME, cast(RpcPool, None), jdir, stats, room)
        self.net = sink

    def sink(self, addr: str) -> Sink:
        return self.disk if addr == self.me else self.net


def test_writers_share_the_nodes_bound_and_report_and_keep_failures(tmp_path: Path) -> None:
    """Each writer sends one stream per node; the node's room bounds the streams of all
    writers together; a failed stream fails (and keeps) all its parts."""
    sink = GatedSink(fail={3})
    stats = new_stats()
    for b in range(12):
        (tmp_path / f"b{b}").write_bytes(b"x")
    parts = [Part("j", 7, b, 100 + b, tmp_path / f"b{b}") for b in range(12)]
    # Buckets on 3 other nodes, bucket 11 on none.
    buckets = {b: f"127.0.0.1:{7001 + b % 3}" for b in range(11)}

    async def main() -> list[list[int]]:
        room = asyncio.Semaphore(2)  # the node's: two writers (two attempts) share it
        w1, w2 = (GatedWriter(tmp_path, stats, sink, room) for _ in range(2))
        writing = [
            asyncio.create_task(w1.write(parts[:6], buckets)),
            asyncio.create_task(w2.write(parts[6:], buckets)),
        ]
        for _ in range(20):
            await asyncio.sleep(0)
        # Two streams are out between the writers; their other four wait.
        assert (sink.in_flight, sink.started, stats["streams"]) == (2, 2, 2)
        sink.gate.set()
        return list(await asyncio.gather(*writing))

    # w1: buckets 0..5 in three streams ({0,3}, {1,4}, {2,5}); the one with 3 fails.
    assert asyncio.run(main()) == [[0, 3], [11]]
    assert sorted(sink.streams) == [[0, 3], [1, 4], [2, 5], [6, 9], [7, 10], [8]]
    assert sink.most == 2 and stats["streams_peak"] == 2
    assert stats["pushed"] == sum(100 + b for b in range(11) if b not in (0, 3))
    # Delivered parts are gone from the mapper; the failed and the unaddressed stay.
    assert sorted(p.name for p in tmp_path.glob("b*")) == ["b0", "b11", "b3"]


def test_a_part_for_this_node_is_moved_into_recv(tmp_path: Path) -> None:
    staged = tmp_path / "a3"
    staged.mkdir()
    (staged / "b2").write_bytes(b"records")
    inode = (staged / "b2").stat().st_ino
    stats = new_stats()
    part = Part("j", 3, 2, 7, staged / "b2")
    w = BucketWriter(ME, cast(RpcPool, None), tmp_path, stats, asyncio.Semaphore(1))
    assert asyncio.run(w.write([part], {2: ME})) == []
    got = received(tmp_path, 2, 3)
    assert got.read_bytes() == b"records"
    assert got.stat().st_ino == inode and got.stat().st_nlink == 1  # moved: one copy
    assert not (staged / "b2").exists()
    assert stats["pushed"] == 7
