"""Self-healing, parts 2-3 (issue 3): the scrubber and reads find corrupt copies and
the owners replace them; the collector removes what no record claims, on real nodes.

The nodes run with a short gc grace (``GRACE`` s) and a scrub interval longer than
any test, so each test triggers the scrubber itself with ``scrub.now``.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import blake3
import pytest

import sector
from sector.errors import NotFound
from sector.testing.cluster import NodeProc, ProcCluster, wait_for

GRACE = 3.0
NODE_ARGS = ["--gc-grace", str(GRACE), "--gc-interval", "1", "--scrub-interval", "3600"]
DEADLINE = 60.0


def _blob_file(n: NodeProc, blob: str) -> Path:
    return n.data / "blobs" / blob[:2] / blob


def _blobs_on(n: NodeProc) -> set[str]:
    # Blob files only: each has its piece list beside it (``<blob>.pieces``, issue 14).
    return {p.name for p in (n.data / "blobs").glob("*/" + "[0-9a-f]" * 32)}


def _call(c: Any, addr: str, op: str, args: dict[str, Any] | None = None) -> Any:
    return c._run(c._aio.pool.call(addr, op, args or {}))


def _flip_byte(p: Path, at: int = 100) -> None:
    with open(p, "r+b") as f:
        f.seek(at)
        b = f.read(1)
        f.seek(at)
        f.write(bytes([b[0] ^ 0xFF]))


def _worker(c: Any, n: NodeProc, name: str) -> dict[str, Any]:
    info = _call(c, n.address, "node.info")
    return next(w for w in info["workers"] if w["name"] == name)


def _healthy(cl: ProcCluster, c: Any, path: str, data: bytes, bad: str | None = None) -> bool:
    """Three replicas up, ``bad`` not among them, each holder's file byte-exact."""
    st = c.stat(path)
    ids = [r["id"] for r in st["replicas"]]
    if len(set(ids)) != 3 or bad in ids or any(r["state"] != "up" for r in st["replicas"]):
        return False
    by_id = {n.node_id: n for n in cl.nodes}
    return all(_blob_file(by_id[i], st["blob"]).read_bytes() == data for i in ids)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcCluster]:
    with ProcCluster(tmp_path_factory.mktemp("scrubgc"), replicas=3, node_args=NODE_ARGS) as cl:
        cl.start(4)
        yield cl


def test_scrubber_finds_a_flipped_byte_and_the_copy_is_replaced(
    cluster: ProcCluster, tmp_path: Path
) -> None:
    cl = cluster
    data = bytes(range(256)) * 1600  # 400 KiB: a bulk put
    src = tmp_path / "f.bin"
    src.write_bytes(data)
    with sector.connect(cl.address) as c:
        st = c.put(src, "/scrub/f.bin")
        holder = next(n for n in cl.nodes if n.node_id == st["replicas"][1]["id"])
        _flip_byte(_blob_file(holder, st["blob"]))
        t0 = time.monotonic()
        res = _call(c, holder.address, "scrub.now")
        assert res["corrupt"] >= 1 and res["progress"] == 100.0
        assert not _blob_file(holder, st["blob"]).exists()  # removed once reported
        wait_for(
            lambda: _healthy(cl, c, "/scrub/f.bin", data, bad=holder.node_id),
            DEADLINE,
            interval=0.3,
            what="the corrupt copy replaced",
        )
        print(f"scrub: corrupt copy replaced in {time.monotonic() - t0:.1f} s")
        assert c.read("/scrub/f.bin") == data


def test_a_read_of_a_corrupt_copy_fails_over_and_triggers_its_repair(
    cluster: ProcCluster, tmp_path: Path
) -> None:
    cl = cluster
    data = b"sector read path " * 4000
    src = tmp_path / "r.bin"
    src.write_bytes(data)
    with sector.connect(cl.address) as c:
        st = c.put(src, "/scrub/r.bin")
        holder = next(n for n in cl.nodes if n.node_id == st["replicas"][0]["id"])
        before = _worker(c, holder, "scrub")["corrupt"]
        _flip_byte(_blob_file(holder, st["blob"]))
        t0 = time.monotonic()

        def healed() -> bool:
            # Replicas are tried in random order: read until one read hits the bad copy.
            assert c.read("/scrub/r.bin") == data  # every read is transparent
            return _healthy(cl, c, "/scrub/r.bin", data, bad=holder.node_id)

        wait_for(healed, DEADLINE, interval=0.1, what="the read-reported copy replaced")
        print(f"read: corrupt copy replaced in {time.monotonic() - t0:.1f} s")
        assert _worker(c, holder, "scrub")["corrupt"] == before  # the read found it


def test_stat_verify_shows_each_replicas_health_and_a_corrupt_one_is_replaced(
    cluster: ProcCluster, tmp_path: Path, sector_cli: Any
) -> None:
    cl = cluster
    data = b"health check " * 5000
    src = tmp_path / "h.bin"
    src.write_bytes(data)
    with sector.connect(cl.address) as c:
        st = c.put(src, "/scrub/h.bin")
        healthy = c.stat("/scrub/h.bin", verify=True)
        assert [r["health"] for r in healthy["replicas"]] == ["ok", "ok", "ok"]
        holder = next(n for n in cl.nodes if n.node_id == st["replicas"][2]["id"])
        _flip_byte(_blob_file(holder, st["blob"]))
        r = sector_cli("stat", "--verify", "--json", "/scrub/h.bin", cluster=cl.address)
        assert r.returncode == 0, r.stderr
        import json

        health = {x["id"]: x["health"] for x in json.loads(r.stdout)["replicas"]}
        assert health[holder.node_id] == "corrupt"
        assert sorted(health.values()) == ["corrupt", "ok", "ok"]
        # The verify reported the bad copy to the owner, which replaces it.
        wait_for(
            lambda: _healthy(cl, c, "/scrub/h.bin", data, bad=holder.node_id),
            DEADLINE,
            interval=0.3,
            what="the copy found corrupt by stat --verify replaced",
        )
        r = sector_cli("stat", "--verify", "/scrub/h.bin", cluster=cl.address)
        assert r.returncode == 0 and r.stdout.count(b" ok") == 3, r.stdout


def test_audit_finds_a_copy_deleted_behind_the_metadatas_back(
    cluster: ProcCluster, tmp_path: Path
) -> None:
    """No read meets it and the scrubber cannot see what is not there: the owners'
    audit (holders asked for the blobs their records list) finds it."""
    cl = cluster
    data = b"audited " * 3000
    src = tmp_path / "a.bin"
    src.write_bytes(data)
    with sector.connect(cl.address) as c:
        st = c.put(src, "/scrub/a.bin")
        holder = next(n for n in cl.nodes if n.node_id == st["replicas"][1]["id"])
        _blob_file(holder, st["blob"]).unlink()
        found = sum(_call(c, n.address, "repair.audit")["missing"] for n in cl.nodes)
        assert found == 1  # exactly one owner lists it, and says so once
        wait_for(
            lambda: _healthy(cl, c, "/scrub/a.bin", data, bad=holder.node_id),
            DEADLINE,
            interval=0.3,
            what="the missing copy re-made elsewhere",
        )


def test_a_rename_cut_short_leaves_both_names_and_removing_one_keeps_the_other(
    cluster: ProcCluster, tmp_path: Path
) -> None:
    """A rename is: holders learn the new path, the new record, then the old one goes.
    Cut after the new record (the entry node killed), two records name one blob;
    removing the old name must not take the new one's bytes -- now or when the
    collector looks after its grace."""
    from sector.meta import records as rec
    from sector.meta.records import FileRecord

    cl = cluster
    data = b"renamed but cut short " * 2000
    src = tmp_path / "m.bin"
    src.write_bytes(data)
    with sector.connect(cl.address) as c:
        st = c.put(src, "/scrub/m1.bin")
        # The first two steps of a rename, by hand (what fs.mv does before the delete).
        for r in st["replicas"]:
            _call(c, r["address"], "blob.alias", {"blob": st["blob"], "path": "/scrub/m2.bin"})
        moved = FileRecord(
            path="/scrub/m2.bin",
            v=(0, 0, ""),
            size=st["size"],
            checksum=st["checksum"],
            blob=st["blob"],
            replicas=[(r["id"], r["address"]) for r in st["replicas"]],
            rf=st["rf"],
            ctime=st["ctime"],
            mtime=st["mtime"],
        )
        args = {
            "path": "/scrub/m2.bin",
            "op": "put_file",
            "args": {"record": rec.to_builtins(moved)},
        }
        _call(c, cl.address, "meta.op", args)
        _call(
            c,
            cl.address,
            "meta.op",
            {"path": "/scrub", "op": "add_child", "args": {"name": "m2.bin", "kind": "file"}},
        )
        assert c.read("/scrub/m2.bin") == data
        c.rm("/scrub/m1.bin")
        assert c.read("/scrub/m2.bin") == data
        # Past the collector's grace (and two confirming passes), still there.
        by_id = {n.node_id: n for n in cl.nodes}
        holders = [by_id[r["id"]] for r in st["replicas"]]
        passes = {n.index: _worker(c, n, "gc")["passes"] for n in holders}
        wait_for(
            lambda: all(_worker(c, n, "gc")["passes"] >= passes[n.index] + 3 for n in holders),
            DEADLINE,
            interval=0.5,
            what="three collector passes on every holder",
        )
        assert all(_blob_file(n, st["blob"]).is_file() for n in holders)
        assert c.read("/scrub/m2.bin") == data


UPLOADER = textwrap.dedent(
    """
    import asyncio, os, sys
    from sector.transport.rpc import RpcPool

    async def main(addr, blob):
        pool = RpcPool(timeout=30)
        args = {"blob": blob, "size": 64 << 20, "checksum": None, "chain": [], "path": "/cut"}
        chan = await pool.open_bulk(addr, "blob.put", args)
        await chan.write(os.urandom(8 << 20))
        print("sent", flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


def test_writer_killed_mid_upload_leaves_no_file_and_no_orphan_bytes(
    cluster: ProcCluster, tmp_path: Path
) -> None:
    cl = cluster
    target = cl.nodes[2]
    cut_blob = "c0" * 16
    proc = subprocess.Popen(
        [sys.executable, "-c", UPLOADER, target.address, cut_blob], stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"sent"
        wait_for(
            lambda: list((target.data / "tmp").glob(f"{cut_blob}*.part")),
            DEADLINE,
            what="the upload's temp file",
        )
    finally:
        proc.kill()  # SIGKILL: the writer dies mid-stream
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
    with sector.connect(cl.address) as c:
        # A writer whose blobs are sealed but who died before committing the record.
        st = c._run(c._aio._call("fs.begin_put", {"path": "/orphan.bin", "size": 5}))
        data = b"hello"
        first, *rest = st["targets"]
        args = {
            "blob": st["blob"],
            "data": data,
            "checksum": "blake3:" + blake3.blake3(data).hexdigest(),
            "chain": rest,
            "path": "/orphan.bin",
        }
        c._run(c._aio.pool.call(first[1], "blob.put_small", args))
        orphan = st["blob"]
        assert any(_blob_file(n, orphan).exists() for n in cl.nodes)
        for path in ("/cut", "/orphan.bin"):
            with pytest.raises(NotFound):
                c.stat(path)
        t0 = time.monotonic()

        def clean() -> bool:
            for n in cl.nodes:
                if list((n.data / "tmp").glob("*.part")) or _blob_file(n, orphan).exists():
                    return False
                if _blob_file(n, cut_blob).exists():
                    raise AssertionError("a cut-off upload was sealed")
            return True

        wait_for(clean, GRACE + DEADLINE, interval=0.3, what="no orphan bytes")
        print(f"gc: orphans collected {time.monotonic() - t0:.1f} s after the writer died")
        assert sum(_worker(c, n, "gc")["collected"] for n in cl.nodes) >= 1


def test_node_back_after_deletes_and_adds_is_reconciled(tmp_path: Path) -> None:
    with ProcCluster(tmp_path / "cl", replicas=3, node_args=NODE_ARGS) as cl:
        cl.start(4)
        files: dict[str, bytes] = {}
        with sector.connect(cl.nodes[0].address) as c:
            for i in range(12):
                data = f"file {i} ".encode() * (50 + i)
                (tmp_path / "x").write_bytes(data)
                files[c.put(tmp_path / "x", f"/rec/f{i:02d}")["path"]] = data
            stats = {p: c.stat(p) for p in files}

        def held_by(n: NodeProc) -> list[str]:
            return [p for p, st in stats.items() if n.node_id in {r["id"] for r in st["replicas"]}]

        # The node holding most (placement spreads 36 copies over 4 nodes, not evenly).
        victim = max(cl.nodes[1:], key=lambda n: len(held_by(n)))
        held = held_by(victim)
        assert len(held) >= 4
        cl.kill(victim)
        with sector.connect(cl.nodes[0].address) as c:
            deleted = held[:2]
            for p in deleted:
                c.rm(p)
                del files[p]
            over = held[2]
            files[over] = b"overwritten while the node was away" * 10
            (tmp_path / "x").write_bytes(files[over])
            c.put(tmp_path / "x", over)
            for i in range(5):
                data = f"new {i} ".encode() * 70
                (tmp_path / "x").write_bytes(data)
                files[c.put(tmp_path / "x", f"/rec/new{i}")["path"]] = data

            def repaired() -> bool:
                return all(
                    victim.node_id not in {r["id"] for r in c.stat(p)["replicas"]}
                    and len(c.stat(p)["replicas"]) == 3
                    for p in files
                )

            wait_for(repaired, DEADLINE, interval=0.5, what="repair while the node is down")
        stale = _blobs_on(victim)
        assert stale
        cl.restart(victim)
        t0 = time.monotonic()
        with sector.connect(cl.nodes[0].address) as c:

            def reconciled() -> bool:
                claimed = {
                    c.stat(p)["blob"]
                    for p in files
                    if victim.node_id in {r["id"] for r in c.stat(p)["replicas"]}
                }
                return _blobs_on(victim) <= claimed

            wait_for(reconciled, GRACE + DEADLINE, interval=0.5, what="stale copies collected")
            print(
                f"reconcile: {len(stale)} stale copies collected in {time.monotonic() - t0:.1f} s"
            )
            for p in deleted:
                with pytest.raises(NotFound):
                    c.stat(p)
            for p, data in files.items():
                assert c.read(p) == data
                assert len(c.stat(p)["replicas"]) == 3


def test_a_holder_that_missed_a_rename_keeps_its_copy(tmp_path: Path) -> None:
    """Three nodes, R = 3: with one down there is nowhere to re-replicate, so the record
    keeps naming the down holder. A rename meanwhile must not make the returning
    holder's copy look orphaned: the old name's tombstone points to the new one."""
    with ProcCluster(tmp_path / "cl", replicas=3, node_args=NODE_ARGS) as cl:
        cl.start(3)
        data = b"renamed while a holder was away " * 100
        (tmp_path / "x").write_bytes(data)
        with sector.connect(cl.nodes[0].address) as c:
            blob = c.put(tmp_path / "x", "/mv/old.bin")["blob"]
        victim = cl.nodes[2]
        assert blob in _blobs_on(victim)
        cl.kill(victim)
        with sector.connect(cl.nodes[0].address) as c:
            c.mv("/mv/old.bin", "/mv/new.bin")
            assert victim.node_id in {r["id"] for r in c.stat("/mv/new.bin")["replicas"]}
        cl.restart(victim)
        with sector.connect(cl.nodes[0].address) as c:
            wait_for(
                lambda: _worker(c, victim, "gc")["passes"] >= 3,
                GRACE + DEADLINE,
                interval=0.5,
                what="collector passes on the returning node",
            )
            assert blob in _blobs_on(victim)
            assert _blob_file(victim, blob).read_bytes() == data
            assert c.read("/mv/new.bin") == data
