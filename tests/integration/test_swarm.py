"""Swarm distribution on real nodes (issue 14): piece lists, ``sector distribute``,
the cache and gets served from it, nodes serving each other, and the faults (a peer
killed mid-swarm, a corrupt cached piece, a file replaced mid-swarm).

The nodes run with 16 KiB pieces (``--piece-size``), so a file of a few MiB has a few
hundred pieces, and cap their piece uploads (``--swarm-upload-rate``) so a swarm lasts
long enough for peers to serve each other on loopback. Every assertion is on bytes or
on the nodes' counters (``node.info``'s ``swarm``), never on timing.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import blake3
import pytest

from sector.storage import pieces
from sector.testing.cluster import NodeProc, ProcCluster, wait_for

PIECE = 16 << 10
NODE_ARGS = ["--piece-size", "16K", "--swarm-upload-rate", "4M", "--cache-size", "6M"]
DEADLINE = 60.0


def call(c: Any, addr: str, op: str, args: dict[str, Any] | None = None) -> Any:
    return c._run(c._aio.pool.call(addr, op, args or {}))


def swarm(c: Any, addr: str) -> dict[str, Any]:
    info: dict[str, Any] = call(c, addr, "node.info")["swarm"]
    return info


def start_fetch(c: Any, addr: str, path: str) -> str:
    job: str = call(c, addr, "swarm.fetch", {"paths": [path]})["job"]
    return job


def wait_job(c: Any, addr: str, job: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        st: dict[str, Any] = call(c, addr, "swarm.job", {"job": job})
        return st if st["state"] == "done" else None

    return wait_for(done, DEADLINE, interval=0.1, what=f"the fetch job on {addr}")


def cached(n: NodeProc, blob: str) -> Path:
    return n.data / "cache" / blob[:2] / blob


def put_random(c: Any, tmp: Path, path: str, size: int, replicas: int = 1) -> tuple[bytes, Any]:
    data = os.urandom(size)
    src = tmp / "src.bin"
    src.write_bytes(data)
    return data, c.put(str(src), path, replicas=replicas)


def flip_every_piece(p: Path) -> None:
    """One flipped byte in every piece of the file at ``p``."""
    raw = bytearray(p.read_bytes())
    for at in range(0, len(raw), PIECE):
        raw[at] ^= 0xFF
    p.write_bytes(raw)


def by_addr(cl: ProcCluster, addr: str) -> NodeProc:
    return next(n for n in cl.nodes if n.address == addr)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcCluster]:
    root = tmp_path_factory.mktemp("swarm")
    cl = ProcCluster(root, replicas=1, node_args=NODE_ARGS)
    try:
        cl.start(5)
        yield cl
    finally:
        cl.close()


def test_the_piece_list_is_recorded_kept_by_every_holder_and_verified(
    cluster: ProcCluster, tmp_path: Path
) -> None:
    with cluster.connect() as c:
        data, st = put_random(c, tmp_path, "/pl/f.bin", 300_000, replicas=3)
        digests = b"".join(
            blake3.blake3(data[i : i + PIECE]).digest() for i in range(0, len(data), PIECE)
        )
        assert st["piece_size"] == PIECE
        assert st["pieces"] == pieces.root_of(digests)
        holders = [by_addr(cluster, r["address"]) for r in st["replicas"]]

        def side(h: NodeProc) -> Path:
            return h.data / "blobs" / st["blob"][:2] / (st["blob"] + pieces.SUFFIX)

        # The chain's first hop made the list as the bytes came in; the later hops make
        # theirs when first asked, and keep it beside the blob from then on.
        pl = pieces.decode(side(holders[0]).read_bytes())
        assert pl is not None and pl.digests == digests
        for h in holders:
            rep = call(c, h.address, "swarm.pieces", {"blob": st["blob"], "piece_size": 0})
            assert rep["digests"] == digests and rep["piece_size"] == PIECE
            pl = pieces.decode(side(h).read_bytes())
            assert pl is not None and pl.digests == digests
        # A holder's list that is valid but wrong (not the record's root) is refused:
        # the fetch takes another holder's and completes, every piece checked.
        liar = holders[0]
        bad = pieces.PieceList(len(data), PIECE, bytes(len(digests)))
        side(liar).write_bytes(pieces.encode(bad))
        other = next(n for n in cluster.nodes if n not in holders)
        got = wait_job(c, other.address, start_fetch(c, other.address, "/pl/f.bin"))
        assert got["errors"] == [] and got["files"] == 1
        assert cached(other, st["blob"]).read_bytes() == data
        assert "does not match its record" in other.log.read_text()


def test_distribute_fills_every_cache_and_later_gets_are_served_there(
    cluster: ProcCluster, tmp_path: Path, sector_cli: Any
) -> None:
    with cluster.connect() as c:
        data, st = put_random(c, tmp_path, "/dist/a.bin", 1 << 20)
        holder = st["replicas"][0]["address"]
        res = sector_cli("distribute", "/dist", "--json", cluster=cluster.address)
        assert res.returncode == 0, res.stderr
        out = json.loads(res.stdout)
        assert out["files"] == ["/dist/a.bin"]
        assert sorted(n["address"] for n in out["nodes"]) == sorted(cluster.addresses())
        for row in out["nodes"]:
            assert row["error"] is None and row["files"] == 1 and row["bytes"] == len(data)
            n = by_addr(cluster, row["address"])
            if row["address"] != holder:
                assert cached(n, st["blob"]).read_bytes() == data
        status = json.loads(sector_cli("status", "--json", cluster=cluster.address).stdout.decode())
        for m in status["nodes"]:
            if m["address"] != holder:
                assert m["swarm"]["cache_files"] >= 1 and m["swarm"]["fetches"] >= 1
    # A get through each node is served by that node from its cache.
    for n in cluster.nodes:
        if n.address == holder:
            continue
        with cluster.connect(n.address) as c:
            before = swarm(c, n.address)
            c.get("/dist/a.bin", str(tmp_path / "copy.bin"))
            assert (tmp_path / "copy.bin").read_bytes() == data
            after = swarm(c, n.address)
            assert after["local_gets"] == before["local_gets"] + 1
            assert after["cache_hits"] > before["cache_hits"]
            assert after["bytes_fetched"] == before["bytes_fetched"]  # nothing moved


def test_distribute_to_a_topology_prefix_that_matches_nothing_fails(
    cluster: ProcCluster, sector_cli: Any
) -> None:
    res = sector_cli("distribute", "/dist", "--to", "/nowhere", cluster=cluster.address)
    assert res.returncode == 1
    assert res.stderr.decode().startswith("sector: error: no node up matches")
    res = sector_cli("distribute", "/no/such/file", cluster=cluster.address)
    assert res.returncode == 1 and b"no such" in res.stderr


def test_distribute_exits_1_when_a_node_cannot_take_the_file(
    cluster: ProcCluster, tmp_path: Path, sector_cli: Any
) -> None:
    with cluster.connect() as c:
        _, st = put_random(c, tmp_path, "/huge/f.bin", 7 << 20)  # caches hold 6 MiB
    res = sector_cli("distribute", "/huge/f.bin", "--json", cluster=cluster.address)
    assert res.returncode == 1
    assert res.stderr.decode() == "sector: error: 4 of 5 nodes failed\n"
    rows = {n["address"]: n for n in json.loads(res.stdout)["nodes"]}
    assert rows[st["replicas"][0]["address"]]["error"] is None  # the holder has it
    assert sum("larger than this node's cache" in (n["error"] or "") for n in rows.values()) == 4


def test_fetchers_at_once_are_served_partly_by_each_other(
    cluster: ProcCluster, tmp_path: Path
) -> None:
    with cluster.connect() as c:
        data, st = put_random(c, tmp_path, "/crowd/f.bin", 2 << 20)
        holder = st["replicas"][0]["address"]
        others = [n for n in cluster.nodes if n.address != holder]
        before = {n.address: swarm(c, n.address) for n in cluster.nodes}
        jobs = {n.address: start_fetch(c, n.address, "/crowd/f.bin") for n in others}
        for addr, job in jobs.items():
            assert wait_job(c, addr, job)["errors"] == []
        after = {n.address: swarm(c, n.address) for n in cluster.nodes}
        for n in others:
            assert cached(n, st["blob"]).read_bytes() == data

        def grew(addr: str, key: str) -> int:
            return int(after[addr][key] - before[addr][key])

        # Non-holders uploaded pieces to each other, and the holder did not send the
        # file to everyone (4 copies' worth would be 8 MiB).
        assert sum(grew(n.address, "bytes_served_from_cache") for n in others) > 0
        assert sum(grew(n.address, "bytes_from_peers") for n in others) > 0
        assert grew(holder, "bytes_served") < len(others) * len(data)


def test_a_busy_file_is_served_through_the_local_node_with_no_flag(
    cluster: ProcCluster, tmp_path: Path
) -> None:
    def read_by_three(path: str, size: int) -> tuple[list[int], list[NodeProc], Any, bytes]:
        with cluster.connect() as c:
            data, st = put_random(c, tmp_path, path, size)
            holder = st["replicas"][0]["address"]
        readers = [n for n in cluster.nodes if n.address != holder][:3]
        served = []
        for n in readers:  # within the tracker's 10 s window: the third sees two others
            with cluster.connect(n.address) as c:
                before = swarm(c, n.address)["local_gets"]
                c.get(path, str(tmp_path / "out.bin"))
                assert (tmp_path / "out.bin").read_bytes() == data
                served.append(swarm(c, n.address)["local_gets"] - before)
        return served, readers, st, data

    served, readers, st, data = read_by_three("/busy/f.bin", 2 << 20)
    assert served == [0, 0, 1]
    assert cached(readers[2], st["blob"]).read_bytes() == data
    # A small file (under 2 MiB) read by fewer than 4 readers per replica: its replica
    # serves them all.
    served, *_ = read_by_three("/busy/small.bin", 1 << 20)
    assert served == [0, 0, 0]


def test_a_corrupt_cached_piece_is_caught_dropped_and_reported(
    cluster: ProcCluster, tmp_path: Path
) -> None:
    with cluster.connect() as c:
        data, st = put_random(c, tmp_path, "/bad/f.bin", 512 << 10)
        holder = st["replicas"][0]["address"]
        a, b = [n for n in cluster.nodes if n.address != holder][:2]
        assert wait_job(c, a.address, start_fetch(c, a.address, "/bad/f.bin"))["errors"] == []
        copy = cached(a, st["blob"])
        flip_every_piece(copy)
        bad_before = swarm(c, b.address)["bad_pieces"]
        got = wait_job(c, b.address, start_fetch(c, b.address, "/bad/f.bin"))
        assert got["errors"] == []
        assert cached(b, st["blob"]).read_bytes() == data
        assert swarm(c, b.address)["bad_pieces"] > bad_before
        assert "corrupt piece" in b.log.read_text()
        # reported: the tracker had the corrupt copy dropped from a's cache
        wait_for(lambda: not copy.exists(), DEADLINE, what="the corrupt copy dropped")


def test_a_replica_holder_serving_a_corrupt_piece_is_reported_and_repaired(
    cluster: ProcCluster, tmp_path: Path
) -> None:
    with cluster.connect() as c:
        # Four requests' worth (a request asks up to 256 KiB): with one request in
        # flight per holder, both holders serve from the start. (At 256 KiB one holder
        # took the whole file, the good one half the time, and nothing was reported.)
        data, st = put_random(c, tmp_path, "/badholder/f.bin", 1 << 20, replicas=2)
        bad, good = (by_addr(cluster, r["address"]) for r in st["replicas"])
        copy = bad.data / "blobs" / st["blob"][:2] / st["blob"]
        flip_every_piece(copy)
        reader = next(n for n in cluster.nodes if n not in (bad, good))
        got = wait_job(c, reader.address, start_fetch(c, reader.address, "/badholder/f.bin"))
        assert got["errors"] == [] and cached(reader, st["blob"]).read_bytes() == data

        # The tracker (the file's owner) had the bad copy checked and replaced: nothing
        # else here reads it (the scrubber runs once a day).
        def repaired() -> bool:
            reps = {r["address"] for r in c.stat("/badholder/f.bin")["replicas"]}
            if bad.address in reps:
                return copy.exists() and copy.read_bytes() == data
            return len(reps) == 2

        wait_for(repaired, DEADLINE, interval=0.2, what="the corrupt replica repaired")


def test_a_replaced_file_never_yields_a_mix_of_versions(
    cluster: ProcCluster, tmp_path: Path
) -> None:
    size = 2 << 20
    with cluster.connect() as c:
        v1, st1 = put_random(c, tmp_path, "/swap/f.bin", size)
        holder = st1["replicas"][0]["address"]
        others = [n for n in cluster.nodes if n.address != holder]
        jobs = {n.address: start_fetch(c, n.address, "/swap/f.bin") for n in others}
        # Mid-swarm (uploads are capped: 2 MiB to 4 nodes takes seconds): replace it.
        wait_for(
            lambda: any(swarm(c, n.address)["cache_fetching"] for n in others),
            DEADLINE,
            interval=0.02,
            what="a fetch under way",
        )
        v2, st2 = put_random(c, tmp_path, "/swap/f.bin", size)
        assert st2["blob"] != st1["blob"]
        for n in others:
            got = wait_job(c, n.address, jobs[n.address])
            # either it finished v1 before the replace, or it restarted on v2, or it
            # failed cleanly; a cached file is always one whole version
            assert got["files"] == 1 or got["errors"], got
            for blob, want in ((st1["blob"], v1), (st2["blob"], v2)):
                f = cached(n, blob)
                if f.exists():
                    assert f.read_bytes() == want
            assert not list((n.data / "cache" / "tmp").glob("*.part"))
        for n in others:  # the old version leaves every cache
            wait_for(lambda n=n: not cached(n, st1["blob"]).exists(), DEADLINE, what="v1 gone")
            with cluster.connect(n.address) as cn:
                cn.get("/swap/f.bin", str(tmp_path / "out.bin"))
            assert (tmp_path / "out.bin").read_bytes() == v2


def test_the_cache_evicts_beyond_its_limit_and_drops_removed_and_replaced_files(
    cluster: ProcCluster, tmp_path: Path
) -> None:
    size = 2_500_000  # the nodes' caches hold 6 MiB: two of these, not three
    with cluster.connect() as c:
        files = {}
        for i in range(3):
            files[i] = put_random(c, tmp_path, f"/lru/f{i}", size)
        holders = {st["replicas"][0]["address"] for _, st in files.values()}
        n = next(x for x in cluster.nodes if x.address not in holders)
        for i in range(3):
            assert wait_job(c, n.address, start_fetch(c, n.address, f"/lru/f{i}"))["errors"] == []
        s = swarm(c, n.address)
        assert s["cache_bytes"] <= 6 << 20 and s["cache_evicted"] >= 1
        assert not cached(n, files[0][1]["blob"]).exists()  # the least recently used
        assert cached(n, files[2][1]["blob"]).exists()
        # removed: its cached copy goes (the delete tells the file's tracker, which
        # tells the nodes that fetched it)
        c.rm("/lru/f2")
        wait_for(lambda: not cached(n, files[2][1]["blob"]).exists(), DEADLINE, what="f2 dropped")
        # replaced: the old version's copy goes too
        assert cached(n, files[1][1]["blob"]).exists()
        put_random(c, tmp_path, "/lru/f1", 1000)
        wait_for(lambda: not cached(n, files[1][1]["blob"]).exists(), DEADLINE, what="f1 dropped")


def test_a_peer_killed_mid_swarm_costs_the_others_only_its_pieces(tmp_path: Path) -> None:
    with ProcCluster(tmp_path / "kill", replicas=1, node_args=NODE_ARGS) as cl:
        cl.start(6)
        with cl.connect() as c:
            data, st = put_random(c, tmp_path, "/k/f.bin", 3 << 20)
            holder = st["replicas"][0]["address"]
            owner = c._aio._owner("/k/f.bin")  # the file's tracker: kept alive here
            others = [n for n in cl.nodes if n.address != holder]
            victim = next(n for n in others if n.address != owner)
            jobs = {n.address: start_fetch(c, n.address, "/k/f.bin") for n in others}
            # killed once it has served peers some pieces, mid-transfer
            wait_for(
                lambda: swarm(c, victim.address)["bytes_served_from_cache"] > 0,
                DEADLINE,
                interval=0.02,
                what="the victim serving its peers",
            )
            cl.kill(victim)
            for n in others:
                if n is victim:
                    continue
                got = wait_job(c, n.address, jobs[n.address])
                assert got["errors"] == [] and got["files"] == 1
                assert cached(n, st["blob"]).read_bytes() == data


def test_distribute_while_gets_run_is_safe_under_threads(
    cluster: ProcCluster, tmp_path: Path
) -> None:
    """Gets of one file through every node at once: all correct, whichever way each
    was served (replica, swarm, cache)."""
    with cluster.connect() as c:
        data, _ = put_random(c, tmp_path, "/many/f.bin", 1 << 20)
    errors: list[BaseException] = []

    def reader(n: NodeProc, k: int) -> None:
        try:
            with cluster.connect(n.address) as cn:
                out = tmp_path / f"o{n.index}-{k}.bin"
                cn.get("/many/f.bin", str(out))
                assert out.read_bytes() == data
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=reader, args=(n, k)) for n in cluster.nodes for k in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE)
    assert not errors, errors


def test_a_slow_source_is_given_up_and_its_pieces_asked_elsewhere(tmp_path: Path) -> None:
    with ProcCluster(tmp_path / "slow", replicas=1, node_args=["--piece-size", "16K"]) as cl:
        cl.start(2)
        cl.node_args += ["--swarm-upload-rate", "64K"]  # a third node, slow to upload
        slow = cl.add()
        cl.wait_ring()
        with cl.connect() as c:
            for i in range(8):  # a file the slow node does not hold
                data, st = put_random(c, tmp_path, f"/slow/f{i}", 2 << 20)
                if st["replicas"][0]["address"] != slow.address:
                    break
            holder = st["replicas"][0]["address"]
            reader = next(n for n in cl.nodes if n.address not in (holder, slow.address))
            # the slow node is a seed first: a peer, asked before the holder
            assert wait_job(c, slow.address, start_fetch(c, slow.address, st["path"]))["files"] == 1
            got = wait_job(c, reader.address, start_fetch(c, reader.address, st["path"]))
            assert got["errors"] == [] and cached(reader, st["blob"]).read_bytes() == data
            info = swarm(c, reader.address)
            assert info["slow_requests"] >= 1
            assert info["bytes_from_holders"] > 0
