"""Owner-side metadata operations on a one-node ring (the ring itself is tested apart)."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path
from typing import Any

import msgspec
import pytest

from sector.errors import (
    BadRequest,
    ConnectError,
    DirectoryNotEmpty,
    InvalidPath,
    IsADirectory,
    NotFound,
    Unavailable,
)
from sector.ids import node_id
from sector.meta import records as rec
from sector.meta.records import Child, DirRecord, FileRecord, Gone
from sector.meta.service import CACHE_RECORDS, MetaService
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

    def owner_hint(self, key: int) -> Peer | None:
        return None

    def write_refusal(self, key: int) -> str | None:
        return None

    def voters(self) -> int:
        return 1

    def view_successors(self, key: int, n: int) -> list[Peer]:
        return [self.me]

    def view_state(self) -> tuple[bool, bool]:
        return (True, True)

    async def lookup(self, key: int, *, verify: bool = False) -> Peer:
        return self.me

    def failed(self, peer: Peer, exc: BaseException | None = None) -> None:
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
        # A brief get (a put asking what its parent is) answers the directory without
        # its entries; a plain one with all of them.
        brief = rec.from_builtins(await m.local("get", "/d", {"brief": True}))
        assert isinstance(brief, DirRecord) and brief.children == {} and brief.v == d.v
        full = rec.from_builtins(await m.local("get", "/d", {}))
        assert isinstance(full, DirRecord) and len(rec.live_children(full)) == 51
        await m.stop()
        m.store.close()

    asyncio.run(main())


def test_an_entry_added_at_a_given_stamp_keeps_it_and_loses_to_a_later_removal(
    tmp_path: Path,
) -> None:
    """``add_child`` with ``at`` (a node linking a directory it made, at the directory's
    own stamp): the entry carries that stamp, a later removal of the name still wins,
    and a malformed stamp is refused."""

    async def main() -> None:
        m = await service(tmp_path / "m.db", now=1_000.0)
        await m.local("mkdir", "/d", {})
        old = [5, 0, "ab"]
        await m.local("add_child", "/d", {"name": "a", "kind": "dir", "at": old})
        d = m.store.get("/d")
        assert isinstance(d, DirRecord) and d.children["a"].v == tuple(old)
        await m.local("add_child", "/d", {"name": "b", "kind": "dir"})
        await m.local("remove_child", "/d", {"name": "b"})
        await m.local("add_child", "/d", {"name": "b", "kind": "dir", "at": old})
        d = m.store.get("/d")
        assert isinstance(d, DirRecord) and rec.live_children(d) == {"a": "dir"}
        for bad in ([5, 0], ["5", 0, "x"], "5.0@ab", [5, 0, 1]):
            with pytest.raises(BadRequest):
                await m.local("add_child", "/d", {"name": "c", "kind": "dir", "at": bad})
        await m.stop()
        m.store.close()

    asyncio.run(main())


def test_remove_children_takes_many_entries_out_in_one_update(tmp_path: Path) -> None:
    """rm -r's batch (issue 17): the named entries go in one commit, each buried by a
    later "gone" entry; others (a create made meanwhile) stay; names not there and bad
    arguments change nothing; the directory can then go."""

    async def main() -> None:
        m = await service(tmp_path / "m.db", now=1_000.0)
        await m.local("mkdir", "/d", {})
        for i in range(20):
            await m.local("add_child", "/d", {"name": f"n{i}", "kind": "file"})
        gone = [f"n{i}" for i in range(19)] + ["never-there"]
        assert await m.local("remove_children", "/d", {"names": gone}) == {"removed": 19}
        d = m.store.get("/d")
        assert isinstance(d, DirRecord) and rec.live_children(d) == {"n19": "file"}
        assert d.children["n0"].kind == "gone"  # a tombstone entry, for the merge rules
        assert await m.local("remove_children", "/d", {"names": ["n0"]}) == {"removed": 1}
        assert await m.local("remove_children", "/missing", {"names": ["x"]}) == {"removed": 0}
        for bad in ([], ["a/b"], "n19", [1]):
            with pytest.raises((BadRequest, InvalidPath)):
                await m.local("remove_children", "/d", {"names": bad})
        with pytest.raises(DirectoryNotEmpty):
            await m.local("delete", "/d", {})
        await m.local("remove_children", "/d", {"names": ["n19"]})
        await m.local("delete", "/d", {})
        assert isinstance(m.store.get("/d"), Gone)
        await m.stop()
        m.store.close()

    asyncio.run(main())


def test_creates_in_a_big_directory_update_its_entries_in_place(tmp_path: Path) -> None:
    """At the directory's owner, an entry added to a large directory does not copy its
    entries (after the first, into a dict the service made for itself), and a record
    read before is a snapshot the updates never touch."""

    async def main() -> None:
        m = await service(tmp_path / "m.db", now=1_000.0)
        m.store.put_many(
            [
                DirRecord(
                    "/d", (1, 0, "a"), {f"e{i}": Child((2, i, "a"), "file") for i in range(2000)}
                )
            ]
        )
        before = await m.read("/d")
        await m.local("add_child", "/d", {"name": "x1", "kind": "file"})
        one = await m.read("/d")
        await m.local("add_child", "/d", {"name": "x2", "kind": "dir"})
        await m.local("remove_child", "/d", {"name": "e7"})
        two = await m.read("/d")
        assert isinstance(before, DirRecord) and isinstance(one, DirRecord)
        assert isinstance(two, DirRecord)
        assert len(before.children) == 2000 and "x1" not in before.children
        assert two.children is one.children  # no copy per create
        assert two.children["x2"].kind == "dir" and two.children["e7"].kind == "gone"
        await m.stop()
        assert m.store.get("/d") == two
        m.store.close()

    asyncio.run(main())


def test_a_listing_does_not_push_the_directory_out_of_the_cache(tmp_path: Path) -> None:
    """A page of a listing's records (``read_many``) is read without caching them, so a
    listing longer than the cache leaves a large directory's decoded copy in place for
    its next create (which would otherwise decode every entry again)."""

    async def main() -> None:
        m = await service(tmp_path / "m.db", now=1_000.0)
        n = CACHE_RECORDS + 100
        kids = {f"f{i}": Child((2, i, "a"), "file") for i in range(n)}
        files = [rec.from_builtins(file_record(f"/d/f{i}")) for i in range(n)]
        m.store.put_many([DirRecord("/d", (1, 0, "a"), kids), *files])
        d = await m.read("/d")
        got = await m.read_many([f"/d/f{i}" for i in range(n)])
        assert all(isinstance(got[f"/d/f{i}"], FileRecord) for i in range(n))
        assert await m.read("/d") is d
        await m.stop()
        m.store.close()

    asyncio.run(main())


# --------------------------------------------------------------------------- partitions


class ThreeReplicaRing(OneNodeRing):
    """Owns every key, with two replica peers that answer or not as the test says."""

    def __init__(self, answering: set[str], *, refusal: str | None = None) -> None:
        super().__init__()
        self.peers = [Peer(node_id("p1"), "127.0.0.1:2"), Peer(node_id("p2"), "127.0.0.1:3")]
        self.answering = answering
        self.refusal = refusal
        self.failed_peers: list[Peer] = []

    def replica_peers(self, k: int) -> list[Peer]:
        return [self.me, *self.peers][:k]

    def write_refusal(self, key: int) -> str | None:
        return self.refusal

    def voters(self) -> int:
        return 5

    def failed(self, peer: Peer, exc: BaseException | None = None) -> None:
        self.failed_peers.append(peer)

    async def call(
        self, addr: str, op: str, args: dict[str, Any], timeout: float | None = None
    ) -> Any:
        if addr not in self.answering:
            raise ConnectError(f"{addr} is unreachable", node=addr)
        return len(args.get("records", []))


def test_an_update_is_acknowledged_only_on_a_majority_of_its_replicas(tmp_path: Path) -> None:
    async def main() -> None:
        ring = ThreeReplicaRing(answering={"127.0.0.1:2"})
        m = MetaService(MetaStore(str(tmp_path / "m.db")), ring, now=lambda: 1_000.0)
        await m.start()
        # 2 of 3 durable (here and one peer): acknowledged.
        await m.local("put_file", "/a", {"record": file_record("/a")})
        # Cut off from both peers, as a node alone on the minority side: refused,
        # naming how many copies answered, although the record is durable here.
        ring.answering = set()
        with pytest.raises(Unavailable, match=r"1 of 3 replicas answered \(a write needs 2\)"):
            await m.local("put_file", "/b", {"record": file_record("/b")})
        with pytest.raises(Unavailable, match="1 of 3"):
            await m.local("mkdir", "/d", {})
        assert {p.addr for p in ring.failed_peers} == {"127.0.0.1:2", "127.0.0.1:3"}
        await m.stop()
        m.store.close()

    asyncio.run(main())


def test_a_node_without_quorum_refuses_writes_but_serves_reads(tmp_path: Path) -> None:
    async def main() -> None:
        ring = ThreeReplicaRing(answering={"127.0.0.1:2", "127.0.0.1:3"})
        m = MetaService(MetaStore(str(tmp_path / "m.db")), ring, now=lambda: 1_000.0)
        await m.start()
        await m.local("put_file", "/a", {"record": file_record("/a")})
        ring.refusal = "no quorum: this node reaches 2 of 5 members"
        for op, args in [
            ("put_file", {"record": file_record("/a", blob="b" * 32)}),
            ("delete", {}),
            ("mkdir", {}),
            ("set_rf", {"rf": 2}),
        ]:
            with pytest.raises(Unavailable, match="no quorum"):
                await m.local(op, "/a", args)
        got = await m.local("get", "/a", {})
        assert got is not None and got["blob"] == "a" * 32  # unchanged, and readable
        await m.stop()
        m.store.close()

    asyncio.run(main())


def test_set_replicas_keeps_the_version_so_a_later_overwrite_still_wins(tmp_path: Path) -> None:
    async def main() -> None:
        m = await service(tmp_path / "m.db", now=1_000.0)
        first = rec.from_builtins(
            (await m.local("put_file", "/f", {"record": file_record("/f")}))["record"]
        )
        assert isinstance(first, FileRecord)
        rep = await m.local(
            "set_replicas", "/f", {"blob": first.blob, "replicas": [["n1", "h:1"], ["n2", "h:2"]]}
        )
        repaired = rec.from_builtins(rep["record"])
        assert isinstance(repaired, FileRecord)
        assert repaired.v == first.v and repaired.rv is not None and repaired.rv > first.v
        # An overwrite made elsewhere before the repair (an older stamp than the
        # repair's rv, a newer one than the version repaired) still wins the merge.
        over = FileRecord(
            **{
                **msgspec.structs.asdict(first),
                "blob": "c" * 32,
                "v": (first.v[0], first.v[1] + 1, "zz"),
            }
        )
        assert rec.merge(repaired, over) == over and rec.merge(over, repaired) == over
        await m.stop()
        m.store.close()

    asyncio.run(main())


class HealingRing(OneNodeRing):
    """The owner of every key, cut off (no quorum) and then healed; one other member,
    which served the keys meanwhile, answers fetches with what it holds."""

    def __init__(self, theirs: dict[str, Any]) -> None:
        super().__init__()
        self.other = Peer(node_id("majority-owner"), "127.0.0.1:9")
        self.theirs = theirs
        self.quorum = False
        self.fetched: list[str] = []

    def view_successors(self, key: int, n: int) -> list[Peer]:
        return [self.me, self.other][:n]

    def view_state(self) -> tuple[bool, bool]:
        return (self.quorum, self.quorum)

    async def call(
        self, addr: str, op: str, args: dict[str, Any], timeout: float | None = None
    ) -> Any:
        assert addr == self.other.addr and op == "meta.fetch"
        self.fetched += args["paths"]
        return [self.theirs[p] for p in args["paths"] if p in self.theirs]


def test_a_node_that_regains_quorum_reads_what_the_majority_wrote_meanwhile(
    tmp_path: Path,
) -> None:
    """Seen in the partition test: a node cut off alone kept owning its keys in its own
    ring; the majority side's owner took an overwrite of one; right after the heal the
    old owner, its predecessor unchanged, answered (and built a rename on) the version
    from before the split. A heal must make its reads merge with whoever served the
    key meanwhile."""

    async def main() -> None:
        clock = [1_000.0]
        newer = rec.from_builtins(file_record("/f", blob="b" * 32))
        assert isinstance(newer, FileRecord)
        theirs = rec.to_builtins(msgspec.structs.replace(newer, v=(2_000_000, 0, "m")))
        ring = HealingRing({"/f": theirs})
        m = MetaService(MetaStore(str(tmp_path / "m.db")), ring, now=lambda: clock[0])
        await m.start()
        await m.local("put_file", "/f", {"record": file_record("/f")})  # before the split
        ring.quorum = False
        clock[0] += 1
        assert (await m.local("get", "/f", {}))["blob"] == "a" * 32
        assert ring.fetched == []  # no view change yet: local reads only
        ring.quorum = True  # the heal
        clock[0] += 1
        got = await m.local("get", "/f", {})
        assert got["blob"] == "b" * 32 and ring.fetched == ["/f"]
        # Merged in for good: after the warm period the local copy is the new one.
        clock[0] += 60
        ring.fetched.clear()
        assert (await m.local("get", "/f", {}))["blob"] == "b" * 32 and ring.fetched == []
        await m.stop()
        m.store.close()

    asyncio.run(main())


class HangingReplicaRing(ThreeReplicaRing):
    """Replica peers whose calls wait for ``release``, then fail as unreachable."""

    def __init__(self) -> None:
        super().__init__(answering=set())
        self.release = asyncio.Event()
        self.calls = 0

    async def call(
        self, addr: str, op: str, args: dict[str, Any], timeout: float | None = None
    ) -> Any:
        self.calls += 1
        await self.release.wait()
        raise ConnectError(f"{addr} is unreachable", node=addr)


def test_an_update_cancelled_while_it_replicates_leaves_no_error_unseen(tmp_path: Path) -> None:
    """Found by the fuzz flood (tests/slow/test_fuzz_flood.py): a handler cancelled
    (its client hung up) while its update waited for the replicas left their failures
    in futures nobody looked at; asyncio logged "Future exception was never retrieved"
    with a traceback, and the failed peers went unnoticed."""

    async def main() -> list[dict[str, Any]]:
        unseen: list[dict[str, Any]] = []
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: unseen.append(ctx))
        ring = HangingReplicaRing()
        m = MetaService(MetaStore(str(tmp_path / "m.db")), ring, now=lambda: 1_000.0)
        await m.start()
        update = asyncio.create_task(m.local("mkdir", "/d", {}))
        while ring.calls < 2:
            await asyncio.sleep(0.01)
        update.cancel()
        with pytest.raises(asyncio.CancelledError):
            await update
        del update
        ring.release.set()
        deadline = asyncio.get_running_loop().time() + 2.0
        while len(ring.failed_peers) < 2 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)  # the peers' failures reach the service
        await m.stop()
        m.store.close()
        gc.collect()
        await asyncio.sleep(0)
        assert {p.addr for p in ring.failed_peers} == {"127.0.0.1:2", "127.0.0.1:3"}
        return unseen

    unseen = asyncio.run(asyncio.wait_for(main(), 10))
    gc.collect()
    assert not unseen, [ctx.get("message") for ctx in unseen]


class RecoveringRing(ThreeReplicaRing):
    """Replica peers unreachable for the first ``down`` replication calls, then fine."""

    def __init__(self, down: int) -> None:
        super().__init__(answering={"127.0.0.1:2", "127.0.0.1:3"})
        self.down = down

    async def call(
        self, addr: str, op: str, args: dict[str, Any], timeout: float | None = None
    ) -> Any:
        if self.down > 0:
            self.down -= 1
            raise ConnectError(f"{addr} is unreachable", node=addr)
        return await super().call(addr, op, args, timeout)


def test_a_retried_delete_that_took_effect_the_first_time_is_done_not_not_found(
    tmp_path: Path,
) -> None:
    """Seen in the partition test: an rm's delete removed the file at its owner but
    missed its quorum (the cut was healing); the router tried again, the owner found
    the tombstone of that very delete and answered "no such file". The client was told
    there had been nothing to remove, while its rm had removed a file another client's
    acknowledged rename had put there. The retry must be answered as done."""

    async def main() -> None:
        ring = RecoveringRing(down=0)
        m = MetaService(MetaStore(str(tmp_path / "m.db")), ring, now=lambda: 1_000.0)
        await m.start()
        # No background sync: under load its pushes took one of the failures below.
        await m.handoff.stop()
        await m.call("/f", "put_file", {"record": file_record("/f")})
        ring.down = 2  # the first attempt's replication fails on both peers
        res = await m.call("/f", "delete")
        assert ring.down == 0 and len(ring.failed_peers) == 2  # it was retried
        assert res == {"old": None, "repeat": True}
        gone = m.store.get("/f")
        assert isinstance(gone, Gone) and gone.token
        # A second, separate delete of the same path is still told there is nothing.
        with pytest.raises(NotFound):
            await m.call("/f", "delete")
        await m.stop()
        m.store.close()

    asyncio.run(asyncio.wait_for(main(), 20))
