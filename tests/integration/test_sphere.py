"""Sphere on real node processes: UDFs over segments, output modes, buckets, multi-stage
jobs, several jobs at once, a UDF that raises, a node killed mid-stage, a straggler
finished by speculation, and TeraSort end to end (issue 4)."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import sector
from sector.errors import AlreadyExists, JobFailed, UsageError
from sector.sphere import terasort as ts
from sector.sphere import tsjob
from sector.testing.cluster import ProcCluster

# Two engines a node: these tests run beside others on a 2-core machine.
ENGINES = ["--engines", "2"]


def _put(c: Any, tmp: Path, path: str, data: bytes, replicas: int | None = None) -> None:
    f = tmp / "up.bin"
    f.write_bytes(data)
    c.put(f, path, replicas=replicas)


# UDFs. Module-level: pickled by value (this test module is not installed on the nodes).


def count_words(seg: Any) -> Any:
    words = Counter(bytes(seg.data).split())
    lines = [b"%s %d\n" % (w, n) for w, n in sorted(words.items())]
    return lines, [hash(w) % seg.param for w in sorted(words)]


def sum_words(seg: Any) -> Any:
    total: Counter[bytes] = Counter()
    for line in bytes(seg.data).splitlines():
        w, n = line.rsplit(b" ", 1)
        total[w] += int(n)
    return b"".join(b"%s %d\n" % (w, n) for w, n in sorted(total.items()))


def record_sums(seg: Any) -> Any:
    recs = seg.records.astype(np.int64)
    return np.array([recs.sum(), len(recs)], dtype=np.int64)


def echo_lines(seg: Any) -> Any:
    return bytes(seg.data)


def where_am_i(seg: Any) -> Any:
    return f"{seg.segment} {seg.node} {seg.param}\n"


def boom(seg: Any) -> Any:
    raise ValueError(f"bad record in segment {seg.segment}")


def sum_words_sorted(seg: Any) -> Any:
    """A reduce: the whole bucket (every segment's part) in one batch, counts summed."""
    assert seg.kind == "lines" and seg.path.endswith(f"bucket-{seg.segment:05d}")
    total: Counter[bytes] = Counter()
    for line in seg.lines():
        w, n = line.rsplit(b" ", 1)
        total[w] += int(n)
    return [b"%s %d\n" % (w, n) for w, n in sorted(total.items())]


def reduce_boom(seg: Any) -> Any:
    if seg.segment == 1:
        raise KeyError(f"bucket {seg.segment} is cursed")
    return bytes(seg.data)


def first_byte_buckets(seg: Any) -> Any:
    return seg.records, seg.records[:, 0].astype(np.int64) % seg.param


def sort_fixed(seg: Any) -> Any:
    recs = seg.records  # reduce_records=16: fixed-size records of the bucket
    return recs[np.lexsort(recs.T[::-1])]


def first_byte_of_n(seg: Any) -> Any:
    n, _victim = seg.param
    return seg.records, seg.records[:, 0].astype(np.int64) % n


def sort_slow_on_victim(seg: Any) -> Any:
    # Still reducing on the victim when it is killed, however late the kill comes.
    time.sleep(120 if seg.node == seg.param[1] else 0.2)
    recs = seg.records
    return recs[np.lexsort(recs.T[::-1])]


def slow_on(seg: Any) -> Any:
    if seg.node == seg.param:
        time.sleep(60)
    return bytes(seg.data)[:10]


def slow_everywhere(seg: Any) -> Any:
    time.sleep(1.5)
    return seg.records, seg.records[:, 0].astype(np.int64) % 4


def rows_in_batches_of_4000(seg: Any) -> Any:
    if len(seg.data) > 4000:
        raise ValueError(f"a batch of {len(seg.data)} bytes")
    recs = seg.records
    rows = np.ascontiguousarray(recs[:, :4]).view("<u4").ravel()
    if not (rows == np.arange(seg.first, seg.first + len(recs))).all():
        raise ValueError(f"seg.first {seg.first} is not the batch's first row {rows[0]}")
    return recs, rows.astype(np.int64) % 3


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("sphere")
    with ProcCluster(root / "cl", replicas=2, node_args=ENGINES) as cl:
        cl.start(3)
        yield cl


def test_word_count_two_stages_with_buckets(cluster: ProcCluster, tmp_path: Path) -> None:
    text = b"".join(
        b"the quick brown fox %d jumps over the lazy dog\n" % (i % 50) for i in range(20000)
    )
    with sector.connect(cluster.address) as c:
        _put(c, tmp_path, "/wc/in/a.txt", text)
        _put(c, tmp_path, "/wc/in/b.txt", text[: len(text) // 3])
        s1 = c.sphere.run(
            count_words,
            "/wc/in",
            records="lines",
            output="/wc/mid",
            buckets=4,
            param=4,
            min_unit=64 << 10,
            max_unit=128 << 10,
        ).wait()
        assert s1["segments"] > 2  # lines segments of <= 128 KiB
        assert sorted(f["path"] for f in s1["files"]) == [
            f"/wc/mid/bucket-{b:05d}" for b in range(4)
        ]
        s2 = c.sphere.run(sum_words, "/wc/mid", output="/wc/out").wait()
        got: Counter[bytes] = Counter()
        for f in s2["files"]:
            for line in c.read(f["path"]).splitlines():
                w, n = line.rsplit(b" ", 1)
                got[w] += int(n)
    want = Counter((text + text[: len(text) // 3]).split())
    assert got == want


def test_reduce_runs_on_each_whole_bucket_without_intermediate_files(
    cluster: ProcCluster, tmp_path: Path
) -> None:
    text = b"".join(b"alpha beta %d gamma %d\n" % (i % 40, i % 7) for i in range(30000))
    with sector.connect(cluster.address) as c:
        _put(c, tmp_path, "/rd/in/a.txt", text)
        _put(c, tmp_path, "/rd/in/b.txt", text[: len(text) // 2])
        res = c.sphere.run(
            count_words,
            "/rd/in",
            records="lines",
            output="/rd/out",
            buckets=4,
            param=4,
            reduce=sum_words_sorted,
            reduce_records="lines",
            min_unit=64 << 10,
            max_unit=128 << 10,
        ).wait()
        assert res["segments"] > 4  # several parts per bucket, merged by the reduce
        assert "reducing" in res["phases"]
        assert sorted(f["path"] for f in res["files"]) == [
            f"/rd/out/bucket-{b:05d}" for b in range(4)
        ]
        got: Counter[bytes] = Counter()
        for f in res["files"]:
            lines = c.read(f["path"]).splitlines()
            words = [line.rsplit(b" ", 1)[0] for line in lines]
            assert words == sorted(set(words))  # one line per word: the whole bucket
            for line in lines:
                w, n = line.rsplit(b" ", 1)
                got[w] += int(n)
        assert not c.exists("/.sphere") or not c.ls("/.sphere")

        # Fixed-size records: the reduce sees the bucket as records of that size.
        recs = np.random.default_rng(5).integers(0, 255, size=(20000, 16), dtype=np.uint8)
        _put(c, tmp_path, "/rd/fx.bin", recs.tobytes())
        fx = c.sphere.run(
            first_byte_buckets,
            "/rd/fx.bin",
            records=16,
            output="/rd/fx-out",
            buckets=3,
            param=3,
            reduce=sort_fixed,
            reduce_records=16,
            min_unit=32_000,
            max_unit=32_000,
        ).wait()
        for b, f in enumerate(sorted(fx["files"], key=lambda f: f["path"])):
            mine = recs[recs[:, 0] % 3 == b]
            want = mine[np.lexsort(mine.T[::-1])]
            assert c.read(f["path"]) == want.tobytes()
    assert got == Counter((text + text[: len(text) // 2]).split())


def test_reduce_that_raises_fails_the_job_with_its_traceback_and_leaves_nothing(
    cluster: ProcCluster, tmp_path: Path
) -> None:
    with sector.connect(cluster.address) as c:
        _put(c, tmp_path, "/rb/in.txt", b"x y z\n" * 3000)
        with pytest.raises(JobFailed) as ei:
            c.sphere.run(
                count_words,
                "/rb/in.txt",
                records="lines",
                output="/rb/out",
                buckets=3,
                param=3,
                reduce=reduce_boom,
            ).wait()
        assert "KeyError" in str(ei.value) and "bucket 1 is cursed" in str(ei.value)
        assert "Traceback" in ei.value.data["traceback"]
        assert "reduce_boom" in ei.value.data["traceback"]
        assert not c.exists("/rb/out")
        assert not c.exists("/.sphere") or not c.ls("/.sphere")
        # Misuse is a usage error before anything runs.
        with pytest.raises(UsageError, match="reduce needs buckets"):
            c.sphere.run(echo_lines, "/rb/in.txt", output="/rb/o2", reduce=echo_lines)
        with pytest.raises(UsageError, match="reduce_records"):
            c.sphere.run(
                count_words,
                "/rb/in.txt",
                output="/rb/o2",
                buckets=2,
                reduce=echo_lines,
                reduce_records="idx",
            )
        assert not c.exists("/rb/o2")


def test_fixed_records_to_client_in_segment_order(cluster: ProcCluster, tmp_path: Path) -> None:
    recs = np.random.default_rng(1).integers(0, 255, size=(30000, 20), dtype=np.uint8)
    with sector.connect(cluster.address) as c:
        _put(c, tmp_path, "/fx/r.bin", recs.tobytes())
        job = c.sphere.run(record_sums, "/fx/r.bin", records=20, min_unit=100_000, max_unit=100_000)
        outs = job.results()
    pairs = np.frombuffer(b"".join(outs), dtype=np.int64).reshape(-1, 2)
    assert len(pairs) == 6  # 600,000 bytes in 100,000-byte segments
    assert pairs[:, 1].sum() == 30000
    assert pairs[:, 0].sum() == recs.astype(np.int64).sum()


def test_map_batch_runs_the_udf_on_batches_and_appends_their_parts(
    cluster: ProcCluster, tmp_path: Path
) -> None:
    """``map_batch``: each segment's records reach the UDF in batches of at most that
    many bytes (the UDF refuses more), each with its own ``first`` row, and the
    outputs of a segment's batches are appended: every bucket holds its records once,
    in input order. The same job without it fails (one call per 100 kB segment)."""
    recs = np.random.default_rng(7).integers(0, 255, size=(20000, 16), dtype=np.uint8)
    recs[:, :4] = np.arange(20000, dtype="<u4").view(np.uint8).reshape(-1, 4)
    opts: dict[str, Any] = {
        "records": 16,
        "buckets": 3,
        "min_unit": 100_000,
        "max_unit": 100_000,
    }
    with sector.connect(cluster.address) as c:
        _put(c, tmp_path, "/mb/r.bin", recs.tobytes())
        res = c.sphere.run(
            rows_in_batches_of_4000, "/mb/r.bin", output="/mb/out", map_batch=4000, **opts
        ).wait()
        assert res["records_out"] == 20000
        for b, f in enumerate(sorted(res["files"], key=lambda f: f["path"])):
            assert c.read(f["path"]) == recs[np.arange(20000) % 3 == b].tobytes()
        with pytest.raises(JobFailed, match=r"a batch of \d{5,} bytes"):
            c.sphere.run(rows_in_batches_of_4000, "/mb/r.bin", output="/mb/out2", **opts).wait()
        with pytest.raises(UsageError, match="map_batch needs fixed-size records"):
            c.sphere.run(echo_lines, "/mb/r.bin", output="/mb/o3", map_batch=4000)


def sort_stream(seg: Any) -> Any:
    recs = np.frombuffer(b"".join(bytes(v) for v in seg.parts()), np.uint8).reshape(-1, 16)
    return recs[np.lexsort(recs.T[::-1])]


def test_shuffle_compress_moves_fewer_bytes_and_reduces_the_same_records(
    cluster: ProcCluster, tmp_path: Path
) -> None:
    """``shuffle_compress``: the parts are written and moved as zstd frames (the job's
    ``shuffle_bytes`` is a fraction of the records' bytes on compressible records),
    and each reduce -- whole-bucket, lines or stream -- sees exactly the records it
    sees without it, over several batches (frames) per part."""
    rng = np.random.default_rng(11)
    recs = np.zeros((40000, 16), np.uint8)
    recs[:, :3] = rng.integers(0, 255, size=(40000, 3), dtype=np.uint8)  # the rest: zeros
    opts: dict[str, Any] = {
        "records": 16,
        "output": "/sc/out",
        "buckets": 3,
        "param": 3,
        "min_unit": 160_000,
        "max_unit": 160_000,
        "map_batch": 40_000,
    }
    with sector.connect(cluster.address) as c:
        _put(c, tmp_path, "/sc/r.bin", recs.tobytes())
        want = {}
        for b in range(3):
            mine = recs[recs[:, 0] % 3 == b]
            want[b] = mine[np.lexsort(mine.T[::-1])].tobytes()
        for reduce, kind in ((sort_fixed, 16), (sort_stream, "stream")):
            for on in (True, False):
                out = f"/sc/{kind}-{on}"
                res = c.sphere.run(
                    first_byte_buckets,
                    "/sc/r.bin",
                    **{**opts, "output": out},
                    reduce=reduce,
                    reduce_records=kind,
                    shuffle_compress=on,
                ).wait()
                assert res["segments"] == 4  # several parts a bucket, 4 frames each
                if on:
                    assert 0 < res["shuffle_bytes"] < len(recs.tobytes()) // 4
                else:
                    assert res["shuffle_bytes"] == len(recs.tobytes())
                files = sorted(res["files"], key=lambda f: f["path"])
                assert [c.read(f["path"]) for f in files] == [want[b] for b in range(3)]
        # Lines: a word count whose reduce reads the decompressed lines.
        text = b"".join(b"w%d x\n" % (i % 50) for i in range(20000))
        _put(c, tmp_path, "/sc/t.txt", text)
        wc = c.sphere.run(
            count_words,
            "/sc/t.txt",
            records="lines",
            output="/sc/wc",
            buckets=2,
            param=2,
            reduce=sum_words_sorted,
            reduce_records="lines",
            shuffle_compress=True,
            min_unit=64 << 10,
            max_unit=64 << 10,
        ).wait()
        got: Counter[bytes] = Counter()
        for f in wc["files"]:
            for line in c.read(f["path"]).splitlines():
                w, n = line.rsplit(b" ", 1)
                got[w] += int(n)
        assert got == Counter(text.split())
        with pytest.raises(UsageError, match="shuffle_compress needs a reduce"):
            c.sphere.run(first_byte_buckets, "/sc/r.bin", **opts, shuffle_compress=True)


def test_lines_segments_cover_every_line_once(cluster: ProcCluster, tmp_path: Path) -> None:
    text = b"".join(b"line %06d %s\n" % (i, b"x" * (i % 97)) for i in range(40000))
    with sector.connect(cluster.address) as c:
        _put(c, tmp_path, "/ln/t.txt", text)
        outs = c.sphere.run(
            echo_lines, "/ln/t.txt", records="lines", min_unit=1 << 16, max_unit=1 << 16
        ).results()
    assert len(outs) > 10
    assert b"".join(outs) == text


def test_generator_tasks_run_on_every_node_and_output_is_local(cluster: ProcCluster) -> None:
    with sector.connect(cluster.address) as c:
        job = c.sphere.run(where_am_i, tasks=list(range(12)), output="/gen/out", replicas=1)
        res = job.wait()
        assert len(res["files"]) == 12
        # The live view, per node: what each one did (every node pulled work).
        p = job.progress()
        assert p["phase"] == "done" and p["done"] == 12 and p["segments"] == 12
        assert sorted(p["nodes"]) == sorted(cluster.addresses())
        assert sum(n["done"] for n in p["nodes"].values()) >= 12
        assert all(n["done"] > 0 and n["running"] == 0 for n in p["nodes"].values())
        ran_on = set()
        for f in res["files"]:
            seg, node, param = c.read(f["path"]).split()
            ran_on.add(node.decode())
            # Output is written where the UDF ran: its one replica is that node.
            assert [r["id"] for r in c.stat(f["path"])["replicas"]] == [node.decode()]
            assert int(seg) == int(param)
    assert len(ran_on) == 3  # pulled by every node's engines


def test_output_must_not_exist_and_failed_job_leaves_nothing(
    cluster: ProcCluster, tmp_path: Path
) -> None:
    with sector.connect(cluster.address) as c:
        _put(c, tmp_path, "/bad/in.txt", b"a\nb\nc\n" * 1000)
        with pytest.raises(JobFailed) as ei:
            c.sphere.run(boom, "/bad/in.txt", output="/bad/out").wait()
        assert "ValueError: bad record in segment 0" in str(ei.value)
        assert "Traceback" in ei.value.data["traceback"]
        assert not c.exists("/bad/out")
        # No staging left behind by the failed job.
        assert not c.exists("/.sphere") or not c.ls("/.sphere")
        # The engines lived through it: the next job runs.
        assert c.sphere.run(echo_lines, "/bad/in.txt").results() == [b"a\nb\nc\n" * 1000]
        with pytest.raises(AlreadyExists):
            c.sphere.run(echo_lines, "/bad/in.txt", output="/bad").wait()


def test_several_jobs_from_one_client_at_once(cluster: ProcCluster, tmp_path: Path) -> None:
    with sector.connect(cluster.address) as c:
        _put(c, tmp_path, "/many/x.txt", b"hello\n" * 100)
        jobs = [c.sphere.run(where_am_i, tasks=[i], param=i) for i in range(4)]
        for i, j in enumerate(jobs):
            assert j.results()[0].split()[2] == str(i).encode()


def test_terasort_round_trip(cluster: ProcCluster) -> None:
    n = 60_000
    with sector.connect(cluster.address) as c:
        g = tsjob.gen(c, "/ts/in", n, files=3, progress=False)
        assert len(g["files"]) == 3
        for stages in (1, 2):  # the sort as the bucket job's reduce, or a second job
            out = f"/ts/out{stages}"
            res = tsjob.sort(c, "/ts/in", out, buckets=5, stages=stages, progress=False)
            assert res["records"] == n and len(res["stages"]) == stages
            v = tsjob.validate(c, out, input="/ts/in", progress=False)
            assert v["ok"] and v["sorted"] and v["same_records"], v
            assert v["records"] == n and v["files"] == 5
            assert int(v["checksum"], 16) == ts.checksum(ts.gen_records(0, n, 0))
            assert not c.exists("/.sphere") or not c.ls("/.sphere")


def test_straggler_is_finished_by_speculation(tmp_path: Path) -> None:
    with ProcCluster(tmp_path / "cl", replicas=3, node_args=["--engines", "1"]) as cl:
        cl.start(3)
        slow = cl.nodes[1].node_id
        with sector.connect(cl.address) as c:
            for i in range(6):
                _put(c, tmp_path, f"/sp/f{i}", os.urandom(1000))
            t0 = time.monotonic()
            res = c.sphere.run(slow_on, "/sp", param=slow).wait()
            took = time.monotonic() - t0
        assert took < 30, took  # the slow attempt sleeps 60 s; its backup won
        assert res["speculative"] >= 1
        assert len(res["results"]) == 6
        # The backups show in the nodes' /metrics (issue 16).
        assert sum(_metric(n, "sector_sphere_segments_speculated_total") for n in cl.nodes) >= 1


def _metric(node: Any, name: str) -> float:
    """One sample of a node's /metrics, parsed with prometheus_client's parser."""
    import json
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    url = json.loads((node.data / "node.json").read_text())["http"] + "metrics"
    with urllib.request.urlopen(url, timeout=30) as r:
        text = r.read().decode()
    return sum(
        s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == name
    )


def test_job_survives_sigkill_of_a_node_mid_stage(tmp_path: Path) -> None:
    with ProcCluster(tmp_path / "cl", replicas=2, node_args=ENGINES) as cl:
        cl.start(4)
        recs = np.random.default_rng(7).integers(0, 255, size=(24 * 1000, 100), dtype=np.uint8)
        with sector.connect(cl.address) as c:
            for i in range(24):
                _put(c, tmp_path, f"/k/in/f{i:02d}", recs[i * 1000 : (i + 1) * 1000].tobytes())
            job = c.sphere.run(
                slow_everywhere, "/k/in", records=100, output="/k/out", buckets=4, replicas=2
            )
            # Kill a node (not the entry) once the job is under way.
            victim = cl.nodes[2]
            deadline = time.monotonic() + 30
            while job.progress()["done"] < 3 and time.monotonic() < deadline:
                time.sleep(0.1)
            os.kill(victim.proc.pid, signal.SIGKILL)
            res = job.wait(timeout=180)
            assert victim.address in res["lost_nodes"]
            got = b"".join(c.read(f"/k/out/bucket-{b:05d}") for b in range(4))
        out = np.frombuffer(got, dtype=np.uint8).reshape(-1, 100)
        assert len(out) == len(recs)
        # Same multiset of records: nothing lost, nothing doubled.
        assert ts.checksum(out) == ts.checksum(recs)


def test_job_survives_sigkill_of_a_bucket_node_while_reducing(tmp_path: Path) -> None:
    with ProcCluster(tmp_path / "cl", replicas=2, node_args=ENGINES) as cl:
        cl.start(4)
        recs = np.random.default_rng(8).integers(0, 255, size=(8 * 1000, 100), dtype=np.uint8)
        with sector.connect(cl.address) as c:
            for i in range(8):
                _put(c, tmp_path, f"/kr/in/f{i:02d}", recs[i * 1000 : (i + 1) * 1000].tobytes())
            victim = cl.nodes[3]  # not the entry node
            job = c.sphere.run(
                first_byte_of_n,
                "/kr/in",
                records=100,
                output="/kr/out",
                buckets=8,
                param=(8, victim.node_id),
                reduce=sort_slow_on_victim,
                reduce_records=100,
                replicas=2,
            )
            deadline = time.monotonic() + 60
            while job.progress()["phase"] != "reducing" and time.monotonic() < deadline:
                time.sleep(0.05)
            assert job.progress()["phase"] == "reducing"
            os.kill(victim.proc.pid, signal.SIGKILL)
            res = job.wait(timeout=180)
            assert victim.address in res["lost_nodes"]
            files = sorted(f["path"] for f in res["files"])
            assert files == [f"/kr/out/bucket-{b:05d}" for b in range(8)]
            for b, path in enumerate(files):
                mine = recs[recs[:, 0] % 8 == b]
                want = mine[np.lexsort(mine.T[::-1])]
                assert c.read(path) == want.tobytes(), path
            assert not c.exists("/.sphere") or not c.ls("/.sphere")


def _children(pid: int) -> set[int]:
    out = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.add(int(d.name))
    return out


def _running(pid: int) -> bool:
    """Alive and not a zombie (a container's init may never reap an orphan)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_engines_end_when_their_node_is_killed(tmp_path: Path) -> None:
    with ProcCluster(tmp_path / "cl", replicas=1, node_args=ENGINES) as cl:
        cl.start(1)
        node = cl.nodes[0]
        with sector.connect(cl.address) as c:
            assert len(c.sphere.run(where_am_i, tasks=[1, 2, 3, 4]).results()) == 4
        assert node.proc is not None
        engines = _children(node.proc.pid)
        assert len(engines) >= 2  # the engines that ran the tasks
        os.kill(node.proc.pid, signal.SIGKILL)
        node.proc.wait(10)
        deadline = time.monotonic() + 15
        while any(_running(p) for p in engines) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in engines if _running(p)], "engines outlived their node"


# ---- the command line -------------------------------------------------------------


UDF_MODULE = """
def upper(seg):
    return bytes(seg.data).upper()

def by_first_digit(seg):
    lines = seg.lines()
    return [ln + b"\\n" for ln in lines], [int(ln[:1]) for ln in lines]

def sort_lines(seg):
    return b"".join(sorted(bytes(seg.data).splitlines(keepends=True)))
"""


def test_cli_sphere_run_stream_and_terasort(
    cluster: ProcCluster, tmp_path: Path, sector_cli: Any
) -> None:
    addr = cluster.address
    text = b"".join(b"%d word%d\n" % (i % 3, i) for i in range(3000))
    (tmp_path / "in.txt").write_bytes(text)
    assert sector_cli("put", str(tmp_path / "in.txt"), "/cli/in.txt", cluster=addr).returncode == 0

    # sphere run MODULE:FUNCTION, output to stdout (module from the current directory)
    (tmp_path / "myudfs.py").write_text(UDF_MODULE)
    env = {"PYTHONPATH": str(tmp_path)}
    r = sector_cli("sphere", "run", "myudfs:upper", "/cli/in.txt", cluster=addr, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout == text.upper()

    # sphere run with buckets and a reduce: each bucket sorted on its node
    r = sector_cli(
        "sphere",
        "run",
        "myudfs:by_first_digit",
        "/cli/in.txt",
        "--records",
        "lines",
        "-b",
        "3",
        "--reduce",
        "myudfs:sort_lines",
        "-o",
        "/cli/rd",
        cluster=addr,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    for b in range(3):
        got = sector_cli("cat", f"/cli/rd/bucket-{b:05d}", cluster=addr).stdout
        assert got == b"".join(sorted(ln for ln in text.splitlines(True) if ln[:1] == b"%d" % b))
    r = sector_cli(
        "sphere",
        "run",
        "myudfs:upper",
        "/cli/in.txt",
        "--reduce",
        "myudfs:sort_lines",
        cluster=addr,
        env=env,
    )
    assert r.returncode == 1 and b"reduce needs buckets" in r.stderr
    assert r.stderr.count(b"\n") == 1

    # sphere stream with buckets: the first token of each line is its bucket
    r = sector_cli(
        "sphere",
        "stream",
        "-c",
        "cat",
        "-b",
        "3",
        "/cli/in.txt",
        "-o",
        "/cli/st",
        "--json",
        cluster=addr,
    )
    assert r.returncode == 0, r.stderr
    import json

    res = json.loads(r.stdout)
    assert len(res["files"]) == 3
    for b in range(3):
        got = sector_cli("cat", f"/cli/st/bucket-{b:05d}", cluster=addr).stdout
        want = b"".join(
            line.split(b" ", 1)[1] + b"\n"
            for line in text.splitlines()
            if line.startswith(b"%d " % b)
        )
        assert got == want

    # a failing shell command: one clear line, exit 1
    r = sector_cli("sphere", "stream", "-c", "exit 3", "/cli/in.txt", cluster=addr)
    assert r.returncode == 1
    assert r.stderr.count(b"\n") == 1 and b"command exited with 3" in r.stderr

    # bad usage: exit 2 / 1 with one line, no traceback
    r = sector_cli("sphere", "run", "nosuchmodule:f", "/cli/in.txt", cluster=addr)
    assert r.returncode == 1 and b"cannot import nosuchmodule" in r.stderr
    assert b"Traceback" not in r.stderr

    # terasort gen / sort / validate through the CLI, with --json
    assert (
        sector_cli(
            "terasort", "gen", "--records", "20000", "--files", "2", "/cli/ts", cluster=addr
        ).returncode
        == 0
    )
    r = sector_cli("terasort", "sort", "/cli/ts", "/cli/tsout", "--json", cluster=addr)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["records"] == 20000
    r = sector_cli(
        "terasort", "validate", "/cli/tsout", "--input", "/cli/ts", "--json", cluster=addr
    )
    assert r.returncode == 0, r.stderr
    v = json.loads(r.stdout)
    assert v["sorted"] and v["same_records"] and v["records"] == 20000
    # validate of unsorted data fails with exit 1
    r = sector_cli("terasort", "validate", "/cli/ts", cluster=addr)
    assert r.returncode == 1 and b"not sorted" in r.stderr
