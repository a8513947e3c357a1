"""Reduces over buckets larger than an engine's memory (issue 13): the stream mode
(``reduce_records="stream"``) over a bucket 4x the engine's limit gives the in-memory
answer with the engine's peak memory under the limit; a whole-bucket mode over the same
bucket fails at once with an error that says why; a node killed in its merge costs a
re-run of the segments that fed it (their mappers deleted the parts it held), and the
job's answer is still right.

The engines run with ``--udf-memory 256M``, the smallest the sandbox allows (an engine
with numpy imported needs ~100 MiB before any UDF), so the bucket is 1 GiB: generated
on the nodes by 16 generator tasks, never sent from the client.
"""

from __future__ import annotations

import heapq
import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import sector
from sector.errors import JobFailed
from sector.testing.cluster import ProcCluster

LIMIT = 256 << 20
TASKS = 16
WORDS = (64 << 20) // 8  # uint64 per task: 16 x 64 MiB = a 1 GiB bucket
NODE_ARGS = ["--engines", "2", "--udf-memory", "256M"]


def _words(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 1 << 63, size=WORDS, dtype=np.uint64)


# UDFs. Module-level: pickled by value (this test module is not installed on the nodes).


def generate(seg: Any) -> Any:
    return _words(seg.param), 0  # every record to bucket 0


def _stats() -> tuple[int, int, int]:
    """This process's peak resident memory (VmHWM), in bytes, and its RLIMIT_DATA."""
    import resource

    hwm = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) << 10
    soft, _ = resource.getrlimit(resource.RLIMIT_DATA)
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10
    return hwm, maxrss, soft


def stream_stats(seg: Any) -> Any:
    """Sum (mod 2**64), xor and a histogram of the top byte of every word of the bucket,
    a window at a time; yields its answer and the engine's memory figures."""
    # The engine is reused: its peak so far may be a map's. "5" resets VmHWM (Linux).
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        reset = True
    except OSError:
        reset = False
    total = xor = 0
    hist = np.zeros(256, dtype=np.int64)
    n = 0
    spill = seg.spill_dir / "probe"  # the spill directory is writable
    spill.write_bytes(b"x")
    for view in seg.parts(chunk=8 << 20):
        a = np.frombuffer(view, np.uint64)
        total = (total + int(a.sum(dtype=np.uint64))) % (1 << 64)
        xor ^= int(np.bitwise_xor.reduce(a))
        hist += np.bincount((a >> np.uint64(56)).astype(np.int64), minlength=256)
        n += len(a)
        del a
    hwm, maxrss, limit = _stats()
    yield f"{n} {int(total)} {int(xor)} {seg.nbytes}\n"
    yield f"{hwm} {maxrss} {limit} {int(reset)}\n"
    yield hist.astype("<i8")  # 256 records of 8 bytes


def whole_stats(seg: Any) -> Any:
    a = seg.array(np.uint64)
    return f"{len(a)} {int(a.sum(dtype=np.uint64))}\n"


def first_byte_of_n(seg: Any) -> Any:
    return seg.records, seg.records[:, 0].astype(np.int64) % seg.param[0]


def _run(path: Path) -> Any:
    with open(path, "rb") as f:
        while rec := f.read(100):
            yield rec


def merge_sort_slow_on_victim(seg: Any) -> Any:
    """An external merge sort of 100-byte records: each part sorted and spilled as a
    run, the runs merged; on the victim, it sleeps in the merge (to be killed there)."""
    runs = []
    for i, view in enumerate(seg.parts()):
        recs = np.frombuffer(view, np.uint8).reshape(-1, 100)
        path = seg.spill_dir / f"run{i}"
        path.write_bytes(recs[np.lexsort(recs.T[::-1])].tobytes())
        runs.append(path)
        del recs
    out = []
    for rec in heapq.merge(*(_run(p) for p in runs)):
        out.append(rec)
        if len(out) == 50:
            yield out
            out = []
            if seg.node == seg.param[1]:
                (seg.spill_dir / "merging").write_bytes(b"")  # the test waits for it
                time.sleep(120)  # merging on the victim when it is killed
    yield out


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("stream")
    with ProcCluster(root / "cl", replicas=1, node_args=NODE_ARGS) as cl:
        cl.start(2)
        yield cl


def _reference() -> tuple[int, int, int, np.ndarray]:
    total = xor = n = 0
    hist = np.zeros(256, dtype=np.int64)
    for seed in range(TASKS):
        a = _words(seed)
        total = (total + int(a.sum(dtype=np.uint64))) % (1 << 64)
        xor ^= int(np.bitwise_xor.reduce(a))
        hist += np.bincount((a >> np.uint64(56)).astype(np.int64), minlength=256)
        n += len(a)
    return n, total, xor, hist


def test_stream_reduce_over_a_bucket_4x_the_engine_memory(cluster: ProcCluster) -> None:
    with sector.connect(cluster.address) as c:
        t0 = time.monotonic()
        res = c.sphere.run(
            generate,
            tasks=list(range(TASKS)),
            output="/st/out",
            buckets=1,
            reduce=stream_stats,
            reduce_records="stream",
            replicas=1,
            durable=False,
        ).wait(timeout=600)
        seconds = time.monotonic() - t0
        (f,) = res["files"]
        raw = c.read(f["path"])
    head, mem, rest = raw.split(b"\n", 2)
    n, total, xor, nbytes = (int(x) for x in head.split())
    hwm, maxrss, limit, reset = (int(x) for x in mem.split())
    hist = np.frombuffer(rest, "<i8")
    print(
        f"\nstream reduce: bucket {nbytes >> 20} MiB, engine limit {limit >> 20} MiB, "
        f"reduce's peak RSS {hwm / (1 << 20):.1f} MiB (reset: {bool(reset)}), engine's "
        f"lifetime peak {maxrss / (1 << 20):.1f} MiB, job {seconds:.1f} s"
    )
    assert limit == LIMIT  # the engines run under the limit this test is about
    assert nbytes == TASKS * WORDS * 8 >= 4 * LIMIT
    want = _reference()
    assert (n, total, xor) == want[:3]
    assert np.array_equal(hist, want[3])
    assert hwm < LIMIT and maxrss < LIMIT


def test_whole_bucket_reduce_over_it_fails_at_once_saying_why(cluster: ProcCluster) -> None:
    with sector.connect(cluster.address) as c:
        job = c.sphere.run(
            generate,
            tasks=list(range(TASKS)),
            output="/st/whole",
            buckets=1,
            reduce=whole_stats,
            reduce_records=8,
            replicas=1,
            durable=False,
        )
        with pytest.raises(JobFailed) as err:
            job.wait(timeout=600)
        msg = str(err.value)
        assert "bucket 0 is 1024.0 MiB, more than this engine's memory allows" in msg
        assert "(limit 256.0 MiB): use reduce_records='stream'" in msg
        assert "failed_attempts" not in msg
        assert not c.exists("/st/whole")


def _glob(d: Path, pattern: str) -> list[Path]:
    """``rglob`` over a staging tree the nodes change meanwhile: a directory removed
    while it is walked (a reduce's spill directory) means walk again."""
    for _ in range(50):
        try:
            return list(d.rglob(pattern))
        except FileNotFoundError:
            continue
    return list(d.rglob(pattern))


def test_stream_reduce_survives_sigkill_of_a_node_while_it_merges(tmp_path: Path) -> None:
    with ProcCluster(tmp_path / "cl", replicas=2, node_args=["--engines", "2"]) as cl:
        cl.start(4)
        recs = np.random.default_rng(9).integers(0, 255, size=(8 * 1000, 100), dtype=np.uint8)
        with sector.connect(cl.address) as c:
            for i in range(8):
                f = tmp_path / "up.bin"
                f.write_bytes(recs[i * 1000 : (i + 1) * 1000].tobytes())
                c.put(f, f"/km/in/f{i:02d}")
            victim = cl.nodes[3]  # not the entry node
            job = c.sphere.run(
                first_byte_of_n,
                "/km/in",
                records=100,
                output="/km/out",
                buckets=8,
                param=(8, victim.node_id),
                reduce=merge_sort_slow_on_victim,
                reduce_records="stream",
                replicas=2,
            )
            staging = [n.data / "sphere" for n in cl.nodes]
            deadline = time.monotonic() + 60
            while not _glob(staging[3], "merging") and time.monotonic() < deadline:
                time.sleep(0.05)
            assert _glob(staging[3], "merging"), "the victim never reached its merge"
            # One copy of the intermediate data: every part is in its bucket node's
            # recv/, none is left in a mapper's attempt directory (a<attempt>/b<bucket>).
            recv = [p for d in staging for p in _glob(d, "recv/b*")]
            mapper = [p for d in staging for p in _glob(d, "a*/b*")]
            assert len(recv) >= 8 and mapper == []
            os.kill(victim.proc.pid, signal.SIGKILL)
            res = job.wait(timeout=180)
            assert victim.address in res["lost_nodes"]
            files = sorted(f["path"] for f in res["files"])
            assert files == [f"/km/out/bucket-{b:05d}" for b in range(8)]
            for b, path in enumerate(files):
                mine = recs[recs[:, 0] % 8 == b]
                want = mine[np.lexsort(mine.T[::-1])]
                assert c.read(path) == want.tobytes(), path
            assert not c.exists("/.sphere") or not c.ls("/.sphere")
