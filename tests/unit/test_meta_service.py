"""Owner-side metadata operations on a one-node ring (the ring itself is tested apart)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from sector.errors import DirectoryNotEmpty, IsADirectory, NotFound
from sector.ids import node_id
from sector.meta import records as rec
from sector.meta.records import DirRecord, FileRecord, Gone
from sector.meta.service import MetaService
from sector.meta.store import MetaStore
from sector.routing.chord import Peer


class OneNodeRing:
    """A ring of one: owns every key, has no replica peers."""

    def __init__(self) -> None:
        self.me = Peer(node_id("solo"), "127.0.0.1:1")

    def responsible_for(self, key: int) -> bool:
        return True

    def predecessor(self) -> Peer | None:
        return None

    def replica_peers(self, k: int) -> list[Peer]:
        return [self.me]

    async def lookup(self, key: int, *, verify: bool = False) -> Peer:
        return self.me

    def failed(self, peer: Peer) -> None:
        raise AssertionError("no peers to fail")

    async def call(
        self, addr: str, op: str, args: dict[str, Any], timeout: float | None = None
    ) -> Any:
        raise AssertionError("no peers to call")


def file_record(path: str, blob: str = "a" * 32) -> dict[str, Any]:
    r = FileRecord(
        path=path,
        v=(0, 0, ""),
        size=1,
        checksum="blake3:00",
        blob=blob,
        replicas=[("x", "y")],
        rf=3,
    )
    return rec.to_builtins(r)


async def service(db: Path, now: float) -> MetaService:
    m = MetaService(MetaStore(str(db)), OneNodeRing(), now=lambda: now)
    await m.start()
    return m


def test_updates_win_even_when_the_wall_clock_stepped_back(tmp_path: Path) -> None:
    async def main() -> None:
        m = await service(tmp_path / "m.db", now=2_000_000.0)
        await m.local("put_file", "/f", {"record": file_record("/f")})
        await m.local("add_child", "/", {"name": "f", "kind": "file"})
        await m.stop()
        m.store.close()
        # Restarted with the clock a long way back: the delete must still win.
        m2 = await service(tmp_path / "m.db", now=1_000.0)
        await m2.local("delete", "/f", {})
        await m2.local("remove_child", "/", {"name": "f"})
        assert isinstance(m2.store.get("/f"), Gone)
        root = m2.store.get("/")
        assert isinstance(root, DirRecord) and rec.live_children(root) == {}
        await m2.stop()
        m2.store.close()

    asyncio.run(main())


def test_directory_rules_at_the_owner(tmp_path: Path) -> None:
    async def main() -> None:
        m = await service(tmp_path / "m.db", now=1_000.0)
        assert (await m.local("mkdir", "/d", {}))["created"]
        assert not (await m.local("mkdir", "/d", {}))["created"]
        with pytest.raises(IsADirectory):
            await m.local("put_file", "/d", {"record": file_record("/d")})
        with pytest.raises(NotFound):
            await m.local("add_child", "/missing", {"name": "x", "kind": "file"})
        await m.local("add_child", "/d", {"name": "x", "kind": "file"})
        with pytest.raises(DirectoryNotEmpty):
            await m.local("delete", "/d", {})
        # Concurrent adds to one directory all survive.
        await asyncio.gather(
            *(m.local("add_child", "/d", {"name": f"n{i}", "kind": "file"}) for i in range(50))
        )
        d = m.store.get("/d")
        assert isinstance(d, DirRecord) and len(rec.live_children(d)) == 51
        await m.stop()
        m.store.close()

    asyncio.run(main())
