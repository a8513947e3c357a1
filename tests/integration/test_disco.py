"""Disco programs on a live local cluster (issue 12): ``sector.disco`` jobs run as
Sphere jobs on real node processes -- every classic keyword, chains of jobs, the job
API by name, and the failure cases (a raising map or reduce, a bad input, a kill).

Job functions are module-level or in classes of this module (not installed on the
nodes: they travel by value), or in a module written at test time."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sector.disco import runtime
from sector.disco.compat import bytes_to_str
from sector.disco.core import Disco, Job, JobError, result_iterator
from sector.disco.error import DiscoError
from sector.disco.job import JobChain
from sector.disco.util import kvgroup
from sector.disco.worker.classic import func
from sector.disco.worker.classic.worker import Params, this_partition
from sector.testing.cluster import ProcCluster

TEXT = b"the quick brown fox\njumps over the lazy dog\nthe end"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("disco")
    with ProcCluster(root / "cl", replicas=2, node_args=["--engines", "2"]) as cl:
        cl.start(3)
        with cl.connect() as c:
            src = root / "in.txt"
            for name, data in [
                ("/dt/text/a.txt", TEXT),
                ("/dt/text/b.txt", b"fox dog\nfox\n"),
                ("/dt/text/sub/c.log", b"dog\n"),
            ]:
                src.write_bytes(data)
                c.put(src, name)
        yield cl
    runtime.close_clients()


def wc_map(line: Any, params: Any) -> Any:
    for w in line.split():
        yield w, 1


def wc_reduce(iter: Any, params: Any) -> Any:
    for w, counts in kvgroup(sorted(iter)):
        yield w, sum(counts)


def echo_map(e: Any, params: Any) -> Any:
    yield e, this_partition()


def test_word_count_over_files_dirs_globs_and_urls(cluster: ProcCluster) -> None:
    job = Job(master=cluster.address).run(
        input=["/dt/text", "sector:///dt/text/a.txt", "/dt/text/*.txt"],
        map=wc_map,
        reduce=wc_reduce,
        partitions=3,
    )
    results = job.wait()
    assert len(results) == 3
    assert all(r.startswith(f"sector://{cluster.address}/disco/{job.name}/") for r in results)
    got = dict(result_iterator(results))
    # dir (a, b, sub/c) + a again + glob (a, b): a three times, b twice, c once
    words = (TEXT.split() * 3) + (b"fox dog fox".split() * 2) + [b"dog"]
    want: dict[bytes, int] = {}
    for w in words:
        want[w] = want.get(w, 0) + 1
    assert got == want
    # Each result holds one partition: Disco's md5 partition of its keys.
    for i, url in enumerate(results):
        assert all(func.default_partition(k, 3, None) == i for k, _ in result_iterator([url]))
    assert job.wait() == results  # wait() may be called again
    info = job.jobinfo()
    assert info["active"] == "ready" and info["results"] == results
    job.purge()
    with cluster.connect() as c:
        assert not c.exists(f"/disco/{job.name}")


def test_entries_lines_as_bytes_raw_as_str_one_task_per_input(cluster: ProcCluster) -> None:
    job = Job(master=cluster.address).run(
        input=["/dt/text/b.txt", "/dt/text/b.txt", "raw://hello world", ["/no/such", "raw://r2"]],
        map=echo_map,
        partitions=None,
    )
    got = sorted(result_iterator(job.wait()), key=repr)
    assert got == sorted(
        [
            (b"fox dog\n", 0),
            (b"fox\n", 0),
            (b"fox dog\n", 1),
            (b"fox\n", 1),
            ("hello world", 2),
            ("r2", 3),
        ],
        key=repr,
    )


def test_default_cluster_discovery_and_sector_urls(
    cluster: ProcCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime.close_clients()
    monkeypatch.setenv("SECTOR_CLUSTER", cluster.address)
    try:
        job = Job().run(input=["raw://a b a"], map=wc_map, reduce=func.sum_reduce)
        results = job.wait()
        assert results == [f"sector:///disco/{job.name}/reduce/bucket-00000"]
        assert dict(result_iterator(results)) == {"a": 2, "b": 1}
        assert Disco().wait(job.name) == results
        assert job.name in Disco().joblist()
    finally:
        runtime.close_clients()


def custom_partition(key: Any, n: int, params: Any) -> int:
    return len(key) % n


def counting_combiner(k: Any, v: Any, buf: dict[Any, Any], done: bool, params: Any) -> Any:
    if not done:
        buf[k] = buf.get(k, 0) + v
        return None
    out = [*buf.items(), (f"done-{params.tag}", 1)]
    buf.clear()
    return out


def three_arg_reduce(iter: Any, out: Any, params: Any) -> None:
    for k, vs in kvgroup(iter):
        out.add(k, sum(vs))


def test_partition_combiner_params_sort_and_three_argument_reduce(cluster: ProcCluster) -> None:
    job = Job(master=cluster.address).run(
        input=["raw://aa b ccc aa", "raw://b b dddd"],
        map=wc_map,
        partition=custom_partition,
        partitions=4,
        combiner=counting_combiner,
        reduce=three_arg_reduce,
        sort=True,
        params=Params(tag="x"),
    )
    results = job.wait()
    per = [dict(result_iterator([u])) for u in results]
    # One final (done=True) call per partition buffer of each map task, whose output
    # stays in that buffer's partition: partitions 1, 2, 3 for the first input, 0 and 1
    # for the second.
    assert per == [
        {"dddd": 1, "done-x": 1},
        {"b": 3, "done-x": 2},
        {"aa": 2, "done-x": 1},
        {"ccc": 1, "done-x": 1},
    ]


def skip_first(it: Any, params: Any) -> None:
    next(it)
    params["x"] += 100


def add_x(e: Any, params: Any) -> Any:
    yield e.strip(), params["x"]


def readers_map(e: Any, params: Any) -> Any:
    yield e, 1


def upper_reader(fd: Any, size: Any, url: Any, params: Any) -> Any:
    for line in fd:
        yield line.strip().upper() + params.suffix


def three_arg_reader(fd: Any, size: Any, url: Any) -> Any:
    yield ("whole", fd.read(), size, url)


def test_map_init_readers_and_fresh_params_per_task(cluster: ProcCluster) -> None:
    # Each task gets its own params: 100 is added once per task, never twice.
    job = Job(master=cluster.address).run(
        input=["raw://skip\n1\n2", "raw://skip\n3"],
        map=add_x,
        map_init=skip_first,
        params={"x": 10},
    )
    assert sorted(result_iterator(job.wait())) == [("1", 110), ("2", 110), ("3", 110)]
    job = Job(master=cluster.address).run(
        input=["/dt/text/b.txt"],
        map=readers_map,
        map_reader=upper_reader,
        params=Params(suffix=b"!"),
    )
    assert sorted(result_iterator(job.wait())) == [(b"FOX DOG!", 1), (b"FOX!", 1)]
    job = Job(master=cluster.address).run(
        input=["/dt/text/b.txt"], map=readers_map, map_reader=three_arg_reader
    )
    [(entry, one)] = list(result_iterator(job.wait()))
    # The reader sees the input whole, and its URL as the program named it.
    assert entry == ("whole", b"fox dog\nfox\n", 12, "/dt/text/b.txt") and one == 1


def stream_a(stream: Any, size: Any, url: Any, params: Any) -> Any:
    return io.StringIO("a" + bytes_to_str(stream.read()))


def stream_b(stream: Any, size: Any, url: Any, params: Any) -> Any:
    return io.StringIO("b" + bytes_to_str(stream.read()))


def whole_reader(stream: Any, size: Any, url: Any) -> Any:
    yield stream.read()


class StreamsJob(Job):
    map_input_stream = [func.map_input_stream, stream_a, stream_b]
    reduce_output_stream = [func.reduce_output_stream, func.disco_output_stream]
    map_reader = staticmethod(whole_reader)

    @staticmethod
    def map(e: Any, params: Any) -> Any:
        yield e, ""

    @staticmethod
    def reduce(iter: Any, params: Any) -> Any:
        for k, v in sorted(iter):
            yield "red:" + k, v


def test_input_and_output_streams(cluster: ProcCluster) -> None:
    job = StreamsJob(master=cluster.address).run(input=["raw://apple", "/dt/text/sub/c.log"])
    assert sorted(result_iterator(job.wait())) == [("red:baapple", ""), ("red:badog\n", "")]


class ChainA(Job):
    partitions = 3

    def map(self, e: Any, params: Any) -> Any:
        for w in e.split():
            yield w, self.suffix

    suffix = "-a"


class ChainB(Job):
    map_reader = staticmethod(func.chain_reader)

    @staticmethod
    def map(kv: Any, params: Any) -> Any:
        yield kv[0] + kv[1], this_partition()

    @staticmethod
    def reduce(iter: Any, params: Any) -> Any:
        return sorted(iter)


def per_partition_reduce(iter: Any, params: Any) -> Any:
    keys = sorted({k for k, _v in iter})
    yield tuple(keys), len(keys)


def test_chains_reduce_only_per_partition_and_merge_partitions(cluster: ProcCluster) -> None:
    a = ChainA(master=cluster.address).run(input=["raw://x y z w", "raw://y"])
    a_results = a.wait()
    assert len(a_results) == 3 and all("/map/bucket-" in u for u in a_results)
    b = ChainB(master=cluster.address).run(input=a_results)
    got = list(result_iterator(b.wait()))
    assert sorted(k for k, _ in got) == ["w-a", "x-a", "y-a", "y-a", "z-a"]
    # A reduce-only job over partitioned results: one reduce per partition.
    c = Job(master=cluster.address).run(input=a_results, reduce=per_partition_reduce)
    per = [list(result_iterator([u])) for u in c.wait()]
    assert len(per) == 3
    for i, recs in enumerate(per):
        for keys, _n in recs:
            assert all(func.default_partition(k, 3, None) == i for k in keys)
    assert sorted(k for recs in per for keys, _ in recs for k in keys) == ["w", "x", "y", "z"]
    m = Job(master=cluster.address).run(
        input=a_results, reduce=per_partition_reduce, merge_partitions=True
    )
    assert list(result_iterator(m.wait())) == [(("w", "x", "y", "z"), 4)]
    # JobChain runs jobs as the jobs they read finish.
    ja, jb = ChainA(master=cluster.address), ChainB(master=cluster.address)
    JobChain({ja: ["raw://p q"], jb: ja}).wait()
    assert sorted(k for k, _ in result_iterator(jb.wait())) == ["p-a", "q-a"]


def suffix_map(e: Any, params: Any, extra: str) -> Any:
    yield e + extra, params.f(1)


def suffix_reduce(items: Any, out: Any, params: Any, extra: str) -> None:
    for k, v in items:
        out.add(k + extra, v)


def test_partials_bound_methods_and_a_job_class_from_a_local_module(
    cluster: ProcCluster, tmp_path: Path
) -> None:
    job = Job(master=cluster.address).run(
        input=["raw://k"],
        map=partial(suffix_map, extra="m"),
        reduce=partial(suffix_reduce, extra="r"),
        params=Params(f=partial(max, 5)),
    )
    assert list(result_iterator(job.wait())) == [("kmr", 5)]
    # A module only this process has (the nodes cannot import it): travels by value,
    # with the helper module its functions use.
    (tmp_path / "dsc_helpers.py").write_text("def shout(s):\n    return s.upper() + '!'\n")
    (tmp_path / "dsc_jobs.py").write_text(
        "from sector.disco.core import Job\n"
        "import dsc_helpers\n"
        "class Shout(Job):\n"
        "    def map(self, e, params):\n"
        "        yield dsc_helpers.shout(e), self.name.split('@')[0]\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        import dsc_jobs  # type: ignore[import-not-found]

        job = dsc_jobs.Shout(master=cluster.address, name="shouter").run(input=["raw://hey"])
        assert job.name.startswith("shouter@")
        assert list(result_iterator(job.wait())) == [("HEY!", "shouter")]
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("dsc_jobs", None)
        sys.modules.pop("dsc_helpers", None)


def uses_required(e: Any, params: Any) -> Any:
    # ``dsc_req`` is no import of this module: required_modules makes it a global.
    # ``data.txt`` is a required file, in the task's working directory.
    with open("data.txt") as f:
        yield dsc_req.twice(e), f.read()  # type: ignore[name-defined]  # noqa: F821


def test_required_modules_and_files(cluster: ProcCluster, tmp_path: Path) -> None:
    mod = tmp_path / "dsc_req.py"
    mod.write_text("def twice(s):\n    return s * 2\n")
    job = Job(master=cluster.address).run(
        input=["raw://ab"],
        map=uses_required,
        required_modules=[("dsc_req", str(mod))],
        required_files={"data.txt": b"payload"},
    )
    assert list(result_iterator(job.wait())) == [("abab", "payload")]


def uses_sector_files(e: Any, params: Any) -> Any:
    import dsc_shout  # type: ignore[import-not-found]  # a required file from Sector

    with open("words.txt") as a, open("local.txt") as b:
        yield dsc_shout.shout(e), a.read() + b.read()


def reads_sector_file(iter: Any, params: Any) -> Any:
    with open("words.txt") as f:
        n = len(f.read().split())
    for k, v in iter:
        yield k, (v, n)


def test_required_files_from_sector(cluster: ProcCluster, tmp_path: Path) -> None:
    """``sector://`` entries of ``required_files`` are Sector files the nodes fetch (the
    Sphere job's ``required_files``), beside files shipped from the client; the map and
    the reduce both find them in their working directory."""
    with cluster.connect() as c:
        for name, data in [
            ("words.txt", b"alpha beta\n"),
            ("dsc_shout.py", b"def shout(s):\n    return s.upper()\n"),
        ]:
            (tmp_path / name).write_bytes(data)
            c.put(tmp_path / name, f"/dt/req/{name}")
    (tmp_path / "local.txt").write_text("gamma")
    job = Job(master=cluster.address).run(
        input=["raw://ab"],
        map=uses_sector_files,
        reduce=reads_sector_file,
        required_files=[
            "sector:///dt/req/words.txt",
            f"sector://{cluster.address}/dt/req/dsc_shout.py",
            str(tmp_path / "local.txt"),
        ],
    )
    assert list(result_iterator(job.wait())) == [("AB", ("alpha beta\ngamma", 2))]
    job = Job(master=cluster.address).run(
        input=["raw://ab"], map=uses_sector_files, required_files=["sector:///dt/req/gone.txt"]
    )
    with pytest.raises(JobError, match=r"required file /dt/req/gone\.txt: no such file"):
        job.wait()


def test_disco_api_by_name_empty_input_and_show(
    cluster: ProcCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    d = Disco(cluster.address)
    job = d.new_job("ByName", input=["raw://a"], map=wc_map)
    assert job.name.startswith("ByName@")
    results = d.wait(job.name, show=True)
    out = capsys.readouterr()
    assert out.out == "" and job.name in out.err and "ready" in out.err
    assert d.results(job.name) == ("ready", results)
    assert d.jobinfo(job.name)["active"] == "ready"
    assert any("ready" in msg for _offset, (_when, _host, msg) in job.events())
    assert list(result_iterator(results)) == [("a", 1)]
    empty = Job(master=cluster.address).run(input=[], map=wc_map, reduce=wc_reduce)
    assert empty.wait() == []
    d.purge(job.name)
    assert d.results(job.name)[0] == "unknown job"


_OTHER_PROCESS = """
import json, sys
from sector.disco.core import Disco, JobError
d = Disco(sys.argv[1])
out = {"results": d.wait(sys.argv[2]), "info": d.jobinfo(sys.argv[2])["active"]}
try:
    d.wait(sys.argv[3])
except JobError as exc:
    out["error"] = str(exc)
    out["traceback"] = exc.traceback
print(json.dumps(out))
"""


def test_another_process_waits_by_name(cluster: ProcCluster) -> None:
    good = Job(master=cluster.address).run(input=["raw://a b"], map=wc_map)
    bad = Job(master=cluster.address).run(input=["raw://x"], map=bad_map)
    results = good.wait()
    with pytest.raises(JobError):
        bad.wait()
    proc = subprocess.run(
        [sys.executable, "-c", _OTHER_PROCESS, cluster.address, good.name, bad.name],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["results"] == results and out["info"] == "ready"
    assert "cannot map 'x'" in out["error"] and "bad_map" in out["traceback"]


def slow_map(e: Any, params: Any) -> Any:
    time.sleep(60)
    yield e, 1


def test_kill(cluster: ProcCluster) -> None:
    job = Job(master=cluster.address).run(input=["raw://a"], map=slow_map)
    time.sleep(1.0)
    t0 = time.monotonic()
    job.kill()
    assert job.jobinfo()["active"] == "dead"
    with pytest.raises(JobError, match="killed"):
        job.wait()
    assert time.monotonic() - t0 < 30
    job.purge()


def bad_map(e: Any, params: Any) -> Any:
    raise ValueError(f"cannot map {e!r}")


def bad_reduce(iter: Any, params: Any) -> Any:
    for k, _v in iter:
        raise KeyError(f"reduce refuses {k}")
    return []


def test_failures_reach_wait_with_message_and_traceback(cluster: ProcCluster) -> None:
    t0 = time.monotonic()
    job = Job(master=cluster.address).run(input=["raw://x"], map=bad_map)
    with pytest.raises(JobError) as ei:
        job.wait()
    assert time.monotonic() - t0 < 10
    assert "cannot map 'x'" in str(ei.value) and "bad_map" in (ei.value.traceback or "")
    assert "Traceback" in ei.value.message
    assert job.jobinfo()["active"] == "dead"
    job = Job(master=cluster.address).run(input=["raw://x"], map=wc_map, reduce=bad_reduce)
    with pytest.raises(JobError, match="reduce refuses x") as ei:
        job.wait()
    assert "bad_reduce" in (ei.value.traceback or "")
    with pytest.raises(JobError, match=r"/dt/missing\.txt"):
        Job(master=cluster.address).run(input=["/dt/missing.txt"], map=wc_map).wait()
    with pytest.raises(JobError, match="http://"):
        Job(master=cluster.address).run(input=["http://example.com/x"], map=wc_map).wait()
    with pytest.raises(DiscoError, match="map or a reduce"):
        Job(master=cluster.address).run(input=["raw://x"])
    with pytest.raises(DiscoError, match="input"):
        Job(master=cluster.address).run(input="raw://x", map=wc_map)


# A random small job gives on the cluster what a single-process run of the same
# functions gives, by Disco's semantics (the reference below is written from them, not
# from sector.disco's code).


def words_map(line: Any, params: Any) -> Any:
    for w in bytes_to_str(line).split():
        yield w, len(w)


def sum_reduce3(iter: Any, out: Any, params: Any) -> None:
    total: dict[Any, int] = {}
    for k, v in iter:
        total[k] = total.get(k, 0) + v
    for k, v in total.items():
        out.add(k, v)


def list_reduce(iter: Any, params: Any) -> Any:
    return list(iter)


class _ListOut:
    def __init__(self) -> None:
        self.records: list[Any] = []

    def add(self, k: Any, v: Any) -> None:
        self.records.append((k, v))


def reference(
    inputs: list[str | bytes], partitions: int | None, combiner: Any, reduce: Any, sort: bool
) -> list[list[Any]]:
    buckets: list[list[Any]] = [[] for _ in range(partitions or 1)]
    for data in inputs:  # one map task per input, in input order
        outs: dict[int, list[Any]] = {}
        bufs: dict[int, dict[Any, Any]] = {}
        for line in io.BytesIO(data) if isinstance(data, bytes) else io.StringIO(data):
            for k, v in words_map(line, None):
                p = func.default_partition(k, partitions, None) if partitions else 0
                if combiner is None:
                    outs.setdefault(p, []).append((k, v))
                else:
                    buf = bufs.setdefault(p, {})
                    outs.setdefault(p, []).extend(combiner(k, v, buf, False, None) or ())
        for p, buf in bufs.items():
            outs.setdefault(p, []).extend(combiner(None, None, buf, True, None) or ())
        for p in sorted(outs):
            buckets[p].extend(outs[p])
    if reduce is None:
        return buckets
    out = []
    for b in buckets:
        recs = sorted(b, key=lambda kv: kv[0]) if sort else b
        if reduce is sum_reduce3:
            sink = _ListOut()
            reduce(iter(recs), sink, None)
            out.append(sink.records)
        else:
            out.append(list(reduce(iter(recs), None)))
    return out


_counter = iter(range(1_000_000))

line_st = st.lists(st.sampled_from(["a", "bb", "a bb", "ccc d", "é", ""]), max_size=4).map(
    lambda ws: "\n".join(ws)
)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    inputs=st.lists(st.tuples(st.booleans(), line_st), min_size=1, max_size=3),
    partitions=st.sampled_from([None, 1, 2, 3]),
    combiner=st.sampled_from([None, func.sum_combiner]),
    reduce=st.sampled_from([None, func.sum_reduce, sum_reduce3, list_reduce]),
    sort=st.booleans(),
)
def test_random_job_matches_a_single_process_run(
    cluster: ProcCluster,
    inputs: list[tuple[bool, str]],
    partitions: int | None,
    combiner: Any,
    reduce: Any,
    sort: bool,
) -> None:
    urls: list[str] = []
    datas: list[str | bytes] = []
    with cluster.connect() as c:
        for as_file, text in inputs:
            if as_file:
                path = f"/dt/prop/{next(_counter)}.txt"
                with tempfile.NamedTemporaryFile() as f:
                    f.write(text.encode())
                    f.flush()
                    c.put(f.name, path)
                urls.append(path)
                datas.append(text.encode())
            else:
                urls.append("raw://" + text)
                datas.append(text)
    job = Job(master=cluster.address).run(
        input=urls,
        map=words_map,
        partitions=partitions,
        combiner=combiner,
        reduce=reduce,
        sort=sort,
    )
    results = job.wait()
    got = [list(result_iterator([u])) for u in results]
    assert got == reference(datas, partitions, combiner, reduce, sort)
    job.purge()


def slow_wc_map(line: Any, params: Any) -> Any:
    time.sleep(0.02)  # 25 lines a file: each map task takes ~0.5 s
    for w in line.split():
        yield w, 1


def test_a_node_killed_mid_job_still_gives_the_whole_result(tmp_path: Path) -> None:
    """Issue 12: a node SIGKILLed while the job's maps run; Sphere re-runs what it held
    and the Disco job ends with every count right."""
    import os
    import signal

    lines = [f"w{i % 7} w{i % 5} common\n" for i in range(25)]
    text = "".join(lines).encode()
    with ProcCluster(tmp_path / "cl", replicas=2, node_args=["--engines", "1"]) as cl:
        cl.start(4)
        with cl.connect() as c:
            src = tmp_path / "in.txt"
            src.write_bytes(text)
            for i in range(16):
                c.put(src, f"/kill/in/f{i:02d}.txt")
        job = Job(master=cl.address).run(
            input=[f"/kill/in/f{i:02d}.txt" for i in range(16)],
            map=slow_wc_map,
            reduce=wc_reduce,
            partitions=4,
        )
        victim = cl.nodes[2]
        assert victim.proc is not None
        deadline = time.monotonic() + 60
        while job.jobinfo()["mapi"][2] < 3:  # three maps done: the job is under way
            assert time.monotonic() < deadline, job.jobinfo()
            time.sleep(0.05)
        assert job.jobinfo()["mapi"][2] < 16  # not done yet: the kill comes mid-job
        os.kill(victim.proc.pid, signal.SIGKILL)
        got = dict(result_iterator(job.wait()))
        want: dict[str, int] = {}
        for line in lines * 16:
            for w in line.split():
                want[w] = want.get(w, 0) + 1
        assert {bytes_to_str(k): v for k, v in got.items()} == want
    runtime.close_clients()
