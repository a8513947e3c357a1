"""A Sphere job's ``required_files`` on real nodes (issue 14): every engine sees them as
local files (a data file, an importable module, a package directory), each node fetches
them once per job through its swarm and cache (not once per engine), the cached copies
are not replicas, a UDF cannot write through to them, and a missing file fails the job
before anything runs. (A private file of another user: ``test_security``; a Disco job
with a ``sector://`` required file: ``test_disco``.)

Every assertion is on bytes or on the nodes' counters (``node.info``: the swarm's and
the Sphere service's), never on timing.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sector.errors import NotFound
from sector.testing.cluster import ProcCluster

DATA = os.urandom(300_000)
HELPER = b"LOADS = [1]\n\ndef tag(x):\n    return f'helper-v1:{x}'\n"
PKG = b"NAME = 'pkg-v1'\n"
REQUIRED = ["/req/data.bin", "/req/helper.py", "/req/pkg"]
TASKS = 12


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcCluster]:
    root = tmp_path_factory.mktemp("required")
    with ProcCluster(root / "cl", replicas=1, node_args=["--engines", "2"]) as cl:
        cl.start(3)
        with cl.connect() as c:
            for path, data in [
                ("/req/data.bin", DATA),
                ("/req/helper.py", HELPER),
                ("/req/pkg/__init__.py", PKG),
                ("/req/pkg/empty.py", b""),
            ]:
                src = root / "src.bin"
                src.write_bytes(data)
                c.put(src, path, replicas=1)
        yield cl


def info(c: Any, addr: str) -> dict[str, Any]:
    got: dict[str, Any] = c._run(c._aio.pool.call(addr, "node.info", {}))
    return got


def counters(c: Any, addrs: list[str]) -> dict[str, dict[str, int]]:
    """Per node: its swarm fetches and cache hits, the required files it laid out for
    jobs, and the attempts it ran."""
    out = {}
    for a in addrs:
        i = info(c, a)
        sphere = next(w for w in i["workers"] if w["name"] == "sphere")
        out[a] = {
            "fetches": i["swarm"]["fetches"],
            "cache_hits": i["swarm"]["cache_hits"],
            "cache_files": i["swarm"]["cache_files"],
            "required_files": sphere["required_files"],
            "attempts": sphere["attempts"],
        }
    return out


def reads_required(seg: Any) -> bytes:
    """Reads the required files as local files: by name in its working directory, by
    ``seg.required``, and by import."""
    import helper  # type: ignore[import-not-found]
    import pkg  # type: ignore[import-not-found]
    import pkg.empty  # type: ignore[import-not-found]  # an empty file of the package

    with open("data.bin", "rb") as f:
        data = f.read()
    with open(seg.required["/req/data.bin"], "rb") as f:
        same = f.read() == data
    out = {
        "node": seg.node,
        "pid": os.getpid(),
        "sha": hashlib.sha256(data).hexdigest(),
        "same": same,
        "helper": helper.tag(seg.param),
        "pkg": pkg.NAME,
        "dirs": sorted(seg.required),
        # A copy of its own: no link to the cache or a replica (one name, a plain file).
        "links": os.stat("data.bin").st_nlink,
        "plain": os.path.isfile("data.bin") and not os.path.islink("data.bin"),
    }
    return json.dumps(out).encode()


def writes_required(seg: Any) -> bytes:
    """Tries to overwrite its required file, by name and by its local path."""
    wrote = []
    for name in ("data.bin", seg.required["/req/data.bin"]):
        try:
            with open(name, "r+b") as f:
                f.write(b"X" * 100)
            wrote.append(name)
        except OSError:
            pass
    return json.dumps(wrote).encode()


def node_ids(c: Any, addrs: list[str]) -> dict[str, str]:
    return {info(c, a)["id"]: a for a in addrs}


def test_every_engine_sees_the_files_fetched_once_per_node_and_job(
    cluster: ProcCluster,
) -> None:
    addrs = [n.address for n in cluster.nodes]
    with cluster.connect() as c:
        stats = {p: c.stat(p) for p in ["/req/data.bin", "/req/helper.py"]}
        holders = {p: [r["address"] for r in st["replicas"]] for p, st in stats.items()}
        ids = node_ids(c, addrs)
        before = counters(c, addrs)

        job = c.sphere.run(reads_required, tasks=list(range(TASKS)), required_files=REQUIRED)
        outs = [json.loads(r) for r in job.results()]
        after = counters(c, addrs)

        assert len(outs) == TASKS
        for o in outs:
            assert o["sha"] == hashlib.sha256(DATA).hexdigest() and o["same"]
            assert o["links"] == 1 and o["plain"]
            assert o["helper"].startswith("helper-v1:") and o["pkg"] == "pkg-v1"
            assert o["dirs"] == sorted(
                [
                    "/req/data.bin",
                    "/req/helper.py",
                    "/req/pkg",
                    "/req/pkg/__init__.py",
                    "/req/pkg/empty.py",
                ]
            )
        ran = {ids[o["node"]] for o in outs}
        assert len(ran) >= 2, "the tasks spread over the nodes"
        # Once per node and job: 4 files (data, helper, pkg/__init__, pkg/empty) on each
        # node that ran tasks, however many tasks and engines ran there ...
        for a in addrs:
            laid = after[a]["required_files"] - before[a]["required_files"]
            ran_here = after[a]["attempts"] - before[a]["attempts"]
            assert laid == (4 if ran_here else 0), (a, laid, ran_here)
        assert max(sum(1 for o in outs if ids[o["node"]] == a) for a in ran) >= 2
        # ... and fetched through the swarm into the cache only where no replica is.
        for a in ran:
            files = [*holders, "/req/pkg/__init__.py", "/req/pkg/empty.py"]
            need = sum(1 for p in files if a not in _holders(c, p))
            assert after[a]["fetches"] - before[a]["fetches"] == need, a
            assert after[a]["cache_files"] == need, a

        # A second job: the cached copies serve it, nothing is fetched again. Its UDF
        # writes to its copy of the file: read-only to it (unless unsandboxed as root).
        again = c.sphere.run(writes_required, tasks=list(range(TASKS)), required_files=REQUIRED)
        wrote = [json.loads(r) for r in again.results()]
        if all(info(c, a)["sandbox"] != "none" for a in addrs):
            assert wrote == [[]] * TASKS
        third = counters(c, addrs)
        for a in addrs:
            assert third[a]["fetches"] == after[a]["fetches"], a
        assert sum(third[a]["cache_hits"] - after[a]["cache_hits"] for a in addrs) >= 1

        # Cached copies are not replicas: the records (R, holders) are unchanged, and
        # whatever a UDF wrote went to its job's copy, not to a replica or the cache.
        for p, st in stats.items():
            now = c.stat(p)
            assert now["rf"] == st["rf"] == 1 and len(now["replicas"]) == 1
            assert [r["address"] for r in now["replicas"]] == holders[p]
        assert c.read("/req/data.bin") == DATA
        for n in cluster.nodes:
            for f in (n.data / "cache").glob("[0-9a-f][0-9a-f]/*"):
                if f.name == stats["/req/data.bin"]["blob"]:
                    assert f.read_bytes() == DATA, f


def _holders(c: Any, path: str) -> list[str]:
    return [r["address"] for r in c.stat(path)["replicas"]]


def test_a_missing_required_file_fails_the_job_before_anything_runs(
    cluster: ProcCluster,
) -> None:
    addrs = [n.address for n in cluster.nodes]
    with cluster.connect() as c:
        before = counters(c, addrs)
        t0 = time.monotonic()
        job = c.sphere.run(reads_required, tasks=[1, 2], required_files=["/req/nope.bin"])
        with pytest.raises(NotFound, match=r"required file /req/nope\.bin: no such file"):
            job.wait(progress=False)
        assert time.monotonic() - t0 < 10
        after = counters(c, addrs)
        assert all(after[a]["attempts"] == before[a]["attempts"] for a in addrs)


def test_the_cli_takes_required_files(
    cluster: ProcCluster, sector_cli: Any, tmp_path: Path
) -> None:
    (tmp_path / "req_udf.py").write_text(
        "def head(seg):\n"
        "    import helper\n"
        "    with open('data.bin', 'rb') as f:\n"
        "        return helper.tag(len(f.read())).encode()\n"
    )
    env = {
        "PYTHONPATH": os.pathsep.join(
            [str(tmp_path), *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
        )
    }

    def run(*required: str) -> Any:
        flags = [x for p in required for x in ("--required-file", p)]
        args = ["sphere", "run", "req_udf:head", "/req/helper.py", *flags]
        return sector_cli(*args, cluster=cluster.address, env=env)

    r = run("/req/data.bin", "/req/helper.py")
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"helper-v1:{len(DATA)}".encode()
    r = run("/req/gone")
    assert r.returncode != 0
    assert r.stderr.decode().strip().splitlines() == [
        "sector: error: required file /req/gone: no such file or directory"
    ]
