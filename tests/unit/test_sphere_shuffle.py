"""The shuffle's bucket writers (``sector/node/sphere_shuffle.py``): at most as many
parts in flight as their shared room allows, all writers together, the rest wait
their turn (back-pressure); a failed or unaddressed part is reported and kept; a
delivered part is deleted from its mapper; a part for this node is linked, not copied."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import cast

from sector.errors import ConnectError
from sector.node.sphere_shuffle import BucketWriter, Part, Sink, received
from sector.transport.rpc import RpcPool

ME = "127.0.0.1:7000"


class GatedSink:
    """Holds every delivery until the test opens the gate; counts what is in flight."""

    def __init__(self, fail: set[int]) -> None:
        self.fail = fail
        self.gate = asyncio.Event()
        self.in_flight = 0
        self.most = 0
        self.started = 0

    async def deliver(self, part: Part) -> None:
        self.in_flight += 1
        self.started += 1
        self.most = max(self.most, self.in_flight)
        try:
            await self.gate.wait()
            if part.bucket in self.fail:
                raise ConnectError(f"bucket {part.bucket}: the node went away")
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
    sink = GatedSink(fail={4})
    stats = new_stats()
    for b in range(10):
        (tmp_path / f"b{b}").write_bytes(b"x")
    parts = [Part("j", 7, b, 100 + b, tmp_path / f"b{b}") for b in range(10)]
    buckets = {b: "127.0.0.1:7001" for b in range(9)}  # bucket 9 has no node

    async def main() -> list[list[int]]:
        room = asyncio.Semaphore(3)  # the node's: two writers (two attempts) share it
        w1, w2 = (GatedWriter(tmp_path, stats, sink, room) for _ in range(2))
        writing = [
            asyncio.create_task(w1.write(parts[:5], buckets)),
            asyncio.create_task(w2.write(parts[5:], buckets)),
        ]
        for _ in range(20):
            await asyncio.sleep(0)
        # The writers wait: three parts are out between them, the others have not started.
        assert (sink.in_flight, sink.started, stats["streams"]) == (3, 3, 3)
        sink.gate.set()
        return list(await asyncio.gather(*writing))

    assert asyncio.run(main()) == [[4], [9]]
    assert sink.most == 3 and sink.started == 9 and stats["streams_peak"] == 3
    assert stats["pushed"] == sum(100 + b for b in range(9) if b != 4)
    # Delivered parts are gone from the mapper; the failed and the unaddressed stay.
    assert sorted(p.name for p in tmp_path.glob("b*")) == ["b4", "b9"]


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
