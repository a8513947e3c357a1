"""Nodes come and go under load, and no file is lost.

Each test owns its cluster (they change its membership). A writer thread keeps putting
files while a node joins and another leaves gracefully (SIGTERM: handoff, then exit);
then every file written is read back byte-exact and every directory lists in full. A
SIGKILL of one node of five skips the handoff: every file must still be readable at
once (three replicas of data and of metadata), and every listing complete.
"""

from __future__ import annotations

import os
import posixpath
import threading
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import pytest

import sector
from sector.testing.cluster import NodeProc, ProcCluster, wait_for

DIRS = 4


class Writer(threading.Thread):
    """Puts files one after another through one client until stopped.

    ``written`` holds only files whose put returned (path -> bytes); a put that raised
    is recorded in ``errors``, with the exception, and the writer goes on.
    """

    def __init__(self, address: str, scratch: Path) -> None:
        super().__init__(name="churn-writer", daemon=True)
        self.address = address
        self.scratch = scratch
        self.written: dict[str, bytes] = {}
        self.errors: list[tuple[str, BaseException]] = []
        self._halt = threading.Event()
        self._progress = threading.Condition()
        self.count = 0

    def run(self) -> None:
        i = 0
        with sector.connect(self.address, timeout=30) as c:
            while not self._halt.is_set():
                path = f"/churn/d{i % DIRS}/f{i:04d}.bin"
                data = os.urandom(1 + (i * 7919) % (64 << 10))
                local = self.scratch / f"w{i}"
                local.write_bytes(data)
                try:
                    c.put(local, path)
                except Exception as exc:
                    self.errors.append((path, exc))
                else:
                    self.written[path] = data
                finally:
                    local.unlink()
                i += 1
                with self._progress:
                    self.count = i
                    self._progress.notify_all()

    def wait_more(self, n: int, timeout: float = 60.0) -> None:
        """Until ``n`` more puts have been attempted than now."""
        with self._progress:
            target = self.count + n
            ok = self._progress.wait_for(
                lambda: self.count >= target or not self.is_alive(), timeout
            )
        assert ok and self.count >= target, f"writer stuck at {self.count} puts"

    def __enter__(self) -> Writer:
        self.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._halt.set()
        self.join(60)
        assert not self.is_alive(), "the writer did not stop"


def listing_by_dir(files: dict[str, bytes]) -> dict[str, set[str]]:
    """Every directory that should exist -> the names it should list."""
    want: dict[str, set[str]] = defaultdict(set)
    for path in files:
        child = path
        while child != "/":
            parent = posixpath.dirname(child)
            want[parent].add(posixpath.basename(child))
            child = parent
    return want


def unreadable(c: sector.Client, files: dict[str, bytes]) -> list[str]:
    """Each file read once, no retry: the paths that failed or came back different."""
    bad = []
    for path, data in sorted(files.items()):
        try:
            got = c.read(path)
        except sector.SectorError as exc:
            bad.append(f"{path}: {type(exc).__name__}: {exc}")
            continue
        if got != data:
            bad.append(f"{path}: {len(got)} bytes differ from the {len(data)} written")
    return bad


def incomplete_listings(c: sector.Client, files: dict[str, bytes]) -> list[str]:
    bad = []
    for d, names in sorted(listing_by_dir(files).items()):
        try:
            got = {e["name"] for e in c.ls(d)}
        except sector.SectorError as exc:
            bad.append(f"{d}: {type(exc).__name__}: {exc}")
            continue
        if not names <= got:
            bad.append(f"{d}: missing {sorted(names - got)[:5]} ({len(names - got)} in all)")
    return bad


def blob_count(c: sector.Client, node: NodeProc) -> int:
    info = c._run(c._aio.pool.call(node.address, "node.info", {}))
    return int(info["blobs"])


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ProcCluster]:
    with ProcCluster(tmp_path / "cluster") as cl:
        cl.start(5)
        yield cl


def test_join_and_graceful_leave_mid_workload_lose_nothing(
    cluster: ProcCluster, tmp_path: Path
) -> None:
    entry = cluster.nodes[0]
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with Writer(entry.address, scratch) as w:
        w.wait_more(15)

        before = w.count
        joined = cluster.add()  # joins while the writer keeps going
        cluster.wait_ring()
        assert w.count > before, "no put overlapped the join"
        w.wait_more(25)

        with sector.connect(entry.address) as c:
            # The newcomer takes part: it stores replicas of files written since.
            assert blob_count(c, joined) > 0, "the joined node received no data"
            # Leave with the node that holds most data (not the writer's entry point).
            others = [n for n in cluster.nodes if n.alive and n not in (entry, joined)]
            leaving = max(others, key=lambda n: blob_count(c, n))
        # SIGTERM: handoff, then exit; returns when it has exited (the deadline is generous:
        # beside the Sphere tests on 2 cores, a handoff of every record can take a while).
        cluster.stop(leaving, timeout=90)
        assert leaving.proc is not None and leaving.proc.returncode == 0
        w.wait_more(15)

    assert not w.errors, f"{len(w.errors)} puts failed during churn, first: {w.errors[0]}"
    assert len(w.written) >= 55

    # Read through a node that was neither the writer's entry nor the one that left.
    reader = next(n for n in cluster.nodes if n.alive and n is not entry)
    with sector.connect(reader.address) as c:
        assert not unreadable(c, w.written)
        assert not incomplete_listings(c, w.written)
        gone = {m["address"]: m["state"] for m in c.status()["nodes"]}.get(leaving.address)
        assert gone != "up", "the node that left is still reported up"


def test_sigkill_of_one_node_of_five_loses_nothing(cluster: ProcCluster, tmp_path: Path) -> None:
    files: dict[str, bytes] = {}
    entry = cluster.nodes[0]
    with sector.connect(entry.address) as c:
        for i in range(60):
            size = (4 << 20) + i if i % 20 == 0 else 1 + (i * 104729) % (128 << 10)
            path = f"/crash/d{i % 5}/{'sub/' if i % 3 == 0 else ''}f{i:03d}.bin"
            files[path] = os.urandom(size)
            local = tmp_path / "f"
            local.write_bytes(files[path])
            c.put(local, path)
        c.mkdir("/crash/empty")
        victim = max(cluster.nodes[1:], key=lambda n: blob_count(c, n))
        assert blob_count(c, victim) > 0
        on_victim = sum(
            1 for p in files if victim.node_id in {r["id"] for r in c.stat(p)["replicas"]}
        )

        cluster.kill(victim)  # SIGKILL: no goodbye, no handoff
        assert not victim.alive

        # Through the client that was already connected, at once, with no retry.
        assert not unreadable(c, files)

    # And through a fresh client entering at another survivor.
    other = next(n for n in cluster.nodes if n.alive and n is not entry)
    with sector.connect(other.address) as c:
        assert not unreadable(c, files)
        want = listing_by_dir(files)
        want["/crash"].add("empty")
        # Listings may take until the ring has noticed the crash; a deadline, not a sleep.
        wait_for(
            lambda: not incomplete_listings(c, files),
            timeout=30,
            what="every directory to list in full",
        )
        assert {e["name"] for e in c.ls("/crash")} == want["/crash"]
        assert c.ls("/crash/empty") == []
        # Status tells: the node is down; the files that lost a copy on it are copied
        # back to their target by their owners (issue 3), and nothing names it.
        wait_for(
            lambda: (
                c.status()["under_replicated"] == 0
                and not any(
                    victim.node_id in {r["id"] for r in c.stat(p)["replicas"]} for p in files
                )
            ),
            timeout=60,
            what=f"the {on_victim} files that lost a copy to be repaired",
        )

        # "unreachable" (the members' view still holds it up, but it does not answer)
        # until its heartbeat has been still for dead_after: repair can be quicker.
        def victim_state() -> str:
            return str({m["id"]: m["state"] for m in c.status()["nodes"]}[victim.node_id])

        wait_for(lambda: victim_state() == "down", timeout=60, what="the victim to show as down")
        assert victim_state() == "down"
        assert not unreadable(c, files)


def states_of(node: NodeProc, cluster: ProcCluster) -> dict[str, str]:
    """How every other live node sees ``node``: their address -> its state."""
    seen = {}
    for n in cluster.nodes:
        if n.alive and n is not node:
            with sector.connect(n.address) as c:
                st = c.status()
            seen[n.address] = next(
                (m["state"] for m in st["nodes"] if m["id"] == node.node_id), "absent"
            )
    return seen


def test_killed_node_that_restarts_is_seen_up_again(cluster: ProcCluster, tmp_path: Path) -> None:
    victim = cluster.nodes[3]
    data = os.urandom(50_000)
    (tmp_path / "f").write_bytes(data)
    with sector.connect(victim.address) as c:
        # Age the node: each status served bumps its gossip heartbeat, as minutes of
        # uptime would (one beat per 0.5 s gossip round).
        for _ in range(300):
            c.status()
        for i in range(10):
            c.put(tmp_path / "f", f"/restart/f{i}")

    cluster.kill(victim)
    wait_for(
        lambda: set(states_of(victim, cluster).values()) == {"down"},
        20,
        what="every node to see the crash",
    )

    cluster.restart(victim)  # same data directory and node id, a new port
    try:
        wait_for(
            lambda: set(states_of(victim, cluster).values()) == {"up"},
            20,
            what="every node to see the restarted node up",
        )
    except TimeoutError:
        raise AssertionError(
            f"restarted node still not up after 20 s: {states_of(victim, cluster)}"
        ) from None
    cluster.wait_ring()
    with sector.connect(cluster.nodes[0].address) as c:
        for i in range(10):
            assert c.read(f"/restart/f{i}") == data
        assert c.status()["under_replicated"] == 0
