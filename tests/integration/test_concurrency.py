"""Many clients at once against one directory of a 5-node cluster.

Each client is a thread with its own ``sector.connect`` (its own event loop and
connections), entering the cluster through a different node, so the updates of the
one directory record arrive at its owner from every side at the same time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import sector
from sector.testing.cluster import ProcCluster, wait_for

CLIENTS = 20
FILES_EACH = 10


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcCluster]:
    with ProcCluster(tmp_path_factory.mktemp("concurrency-cluster")) as cl:
        cl.start(5)
        yield cl


def run_clients(cluster: ProcCluster, work: Callable[[int, sector.Client], Any]) -> list[Any]:
    """``work(k, client)`` in CLIENTS threads, all released at once; their results."""
    entries = cluster.addresses()
    barrier = threading.Barrier(CLIENTS, timeout=60)

    def one(k: int) -> Any:
        with sector.connect(entries[k % len(entries)]) as c:
            barrier.wait()
            return work(k, c)

    with ThreadPoolExecutor(CLIENTS) as ex:
        futures = [ex.submit(one, k) for k in range(CLIENTS)]
        return [f.result(timeout=300) for f in futures]


def payload(k: int, j: int) -> bytes:
    return f"client {k} file {j}\n".encode() * (k + j + 1)


def test_concurrent_clients_creating_files_in_one_directory_all_appear(
    cluster: ProcCluster, tmp_path: Path
) -> None:
    # The directory does not exist yet: the first puts race to create it as well.
    def work(k: int, c: sector.Client) -> list[str]:
        names = []
        for j in range(FILES_EACH):
            local = tmp_path / f"c{k}-{j}"
            local.write_bytes(payload(k, j))
            name = f"c{k:02d}-f{j}.txt"
            c.put(local, f"/shared/{name}")
            names.append(name)
        return names

    results = run_clients(cluster, work)
    want = {n for names in results for n in names}
    assert len(want) == CLIENTS * FILES_EACH

    # Every entry node gives the whole listing, and every file has its own bytes.
    for addr in cluster.addresses():
        with sector.connect(addr) as c:
            listing = c.ls("/shared")
            names = [e["name"] for e in listing]
            assert len(names) == len(set(names)), f"duplicate entries via {addr}"
            missing = want - set(names)
            assert not missing, (
                f"{len(missing)} files missing from ls via {addr}: {sorted(missing)[:5]}"
            )
            assert set(names) == want
    with sector.connect(cluster.address) as c:
        for k in range(CLIENTS):
            for j in range(FILES_EACH):
                assert c.read(f"/shared/c{k:02d}-f{j}.txt") == payload(k, j)
        assert [e["name"] for e in c.ls("/")].count("shared") == 1


def test_concurrent_mkdir_p_of_one_tree_all_succeed(cluster: ProcCluster) -> None:
    def work(k: int, c: sector.Client) -> None:
        c.mkdir("/race/a/b/c", parents=True)
        c.mkdir(f"/race/a/b/c/mine-{k:02d}", parents=True)

    run_clients(cluster, work)

    with sector.connect(cluster.address) as c:
        assert [e["name"] for e in c.ls("/race")] == ["a"]
        assert [e["name"] for e in c.ls("/race/a")] == ["b"]
        assert [e["name"] for e in c.ls("/race/a/b")] == ["c"]
        kids = sorted(e["name"] for e in c.ls("/race/a/b/c"))
        assert kids == [f"mine-{k:02d}" for k in range(CLIENTS)]
        assert all(e["type"] == "dir" for e in c.ls("/race/a/b/c"))


def test_concurrent_puts_of_one_path_leave_exactly_one_whole_file(
    cluster: ProcCluster, tmp_path: Path
) -> None:
    def work(k: int, c: sector.Client) -> str:
        local = tmp_path / f"same-{k}"
        local.write_bytes(payload(k, 0))
        return str(c.put(local, "/same/file.txt")["blob"])

    blobs = run_clients(cluster, work)

    with sector.connect(cluster.address) as c:
        listing = c.ls("/same")
        assert [e["name"] for e in listing] == ["file.txt"]
        data = c.read("/same/file.txt")
        assert data in {payload(k, 0) for k in range(CLIENTS)}, "a mix of two writers' bytes"
        st = c.stat("/same/file.txt")
        assert st["size"] == len(data)
        assert st["blob"] in blobs

        # The 19 versions that lost are deleted from their nodes: no space leaks.
        losers = set(blobs) - {st["blob"]}
        assert len(losers) == CLIENTS - 1

        def stored_losers() -> set[str]:
            return {
                b
                for addr in cluster.addresses()
                for b in losers
                if c._run(c._aio.pool.call(addr, "blob.has", {"blob": b})) is not None
            }

        wait_for(lambda: not stored_losers(), 15, what="overwritten versions to be deleted")
