"""The shuffle's bucket writer (``sector/node/sphere_shuffle.py``): at most ``streams``
parts in flight, the rest wait their turn (back-pressure); a failed or unaddressed
part is reported, not lost; a part for this node is linked, not copied."""

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


class GatedWriter(BucketWriter):
    def __init__(self, jdir: Path, stats: dict[str, int], sink: GatedSink) -> None:
        super().__init__(ME, cast(RpcPool, None), jdir, stats, streams=3)
        self.net = sink

    def sink(self, addr: str) -> Sink:
        return self.disk if addr == self.me else self.net


def test_writer_bounds_parts_in_flight_and_reports_failures(tmp_path: Path) -> None:
    sink = GatedSink(fail={4})
    stats = {"pushed": 0}
    parts = [Part("j", 7, b, 100 + b, tmp_path / f"b{b}") for b in range(10)]
    buckets = {b: "127.0.0.1:7001" for b in range(9)}  # bucket 9 has no node

    async def main() -> list[int]:
        w = GatedWriter(tmp_path, stats, sink)
        writing = asyncio.create_task(w.write(parts, buckets))
        for _ in range(20):
            await asyncio.sleep(0)
        # The writer waits: three parts are out, the others have not started.
        assert (sink.in_flight, sink.started) == (3, 3)
        sink.gate.set()
        return await writing

    assert asyncio.run(main()) == [4, 9]
    assert sink.most == 3 and sink.started == 9
    assert stats["pushed"] == sum(100 + b for b in range(9) if b != 4)


def test_a_part_for_this_node_is_linked_into_recv(tmp_path: Path) -> None:
    staged = tmp_path / "a3"
    staged.mkdir()
    (staged / "b2").write_bytes(b"records")
    stats = {"pushed": 0}
    part = Part("j", 3, 2, 7, staged / "b2")
    w = BucketWriter(ME, cast(RpcPool, None), tmp_path, stats)
    assert asyncio.run(w.write([part], {2: ME})) == []
    got = received(tmp_path, 2, 3)
    assert got.read_bytes() == b"records"
    assert got.stat().st_ino == (staged / "b2").stat().st_ino  # a link, not a copy
    assert stats["pushed"] == 7
