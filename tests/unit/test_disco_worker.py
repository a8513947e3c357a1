"""sector.disco without a cluster: the record format, Disco's helpers, and the classic
worker's map and reduce tasks run in-process (what the nodes run inside Sphere)."""

from __future__ import annotations

import io
import pickle
from functools import partial
from hashlib import md5
from typing import Any

import pytest

from sector.disco.compat import bytes_to_str, persistent_hash, str_to_bytes
from sector.disco.core import Job
from sector.disco.error import DataError, DiscoError, JobError
from sector.disco.inputs import job_of, label_of, to_path
from sector.disco.ship import Unpacked, local_modules, pack
from sector.disco.util import argcount, kvgroup, shuffled
from sector.disco.worker import Params
from sector.disco.worker.classic import func
from sector.disco.worker.classic.worker import Worker
from sector.disco.worker.task_io import DiscoOutputStream, chain_reader
from sector.errors import SectorError


def _records(data: bytes) -> list[Any]:
    return list(chain_reader(io.BytesIO(data), len(data), "test://"))


def test_record_format_round_trip_keeps_types_across_hunks() -> None:
    sink = io.BytesIO()
    out = DiscoOutputStream(sink, hunk=3)
    recs = [(b"a", 1), ("b", 2.5), ((1, 2), None), (7, [b"x"]), (b"", {"k": 1})]
    for k, v in recs:
        out.add(k, v)
    out.close()
    assert _records(sink.getvalue()) == recs
    # Two streams one after the other are one stream (how a bucket is made).
    assert _records(sink.getvalue() * 2) == recs * 2
    assert _records(b"") == []


def test_chain_reader_refuses_what_is_not_job_output() -> None:
    with pytest.raises(DataError, match="Corrupted"):
        _records(b"plain text\n")
    whole = pickle.dumps([(1, 2)])
    with pytest.raises(DataError, match=r"Truncated|Corrupted"):
        _records(whole[:-3])


def test_default_partition_is_disco_md5_of_the_key() -> None:
    for key in (b"word", "word", "ünï"):
        want = int(md5(str_to_bytes(key)).hexdigest(), 16) % 7
        assert func.default_partition(key, 7, None) == want
    assert persistent_hash(b"x") == persistent_hash("x")
    assert bytes_to_str(b"\xc3\xa9") == "é" and str_to_bytes("é") == b"\xc3\xa9"


def test_helpers() -> None:
    assert [(k, list(vs)) for k, vs in kvgroup([(1, "a"), (1, "b"), (2, "c")])] == [
        (1, ["a", "b"]),
        (2, ["c"]),
    ]
    assert sorted(shuffled(range(10))) == list(range(10))

    def reader4(fd: Any, size: Any, url: Any, params: Any) -> Any:
        return fd

    def reader_extra(fd: Any, size: Any, url: Any, extra: Any) -> Any:
        return fd

    assert argcount(reader4) == 4
    assert argcount(partial(reader_extra, extra=1)) == 3
    assert argcount(func.nop_reduce) == 3 and argcount(func.sum_reduce) == 2


def test_inputs_names() -> None:
    assert to_path("/a/b") == "/a/b"
    assert to_path("sector:///a/b") == "/a/b"
    assert to_path("sector://10.0.0.1:6000/a/b") == "/a/b"
    assert to_path("raw://hello") is None
    with pytest.raises(DiscoError, match="http://"):
        to_path("http://example.com/x")
    assert label_of("/disco/J@1/map/bucket-00003") == 3
    assert label_of("/disco/J@1/reduce/bucket-00003") is None
    assert job_of("sector:///disco/J@1/reduce/bucket-00000") == "J@1"


def test_errors_are_disco_shaped_and_in_sectors_tree() -> None:
    e = JobError("WordCount@1", "boom")
    assert str(e) == "Job WordCount@1 failed: boom" and e.message == "boom"
    assert isinstance(e, DiscoError) and isinstance(e, SectorError)
    assert pickle.loads(pickle.dumps(e)).message == "boom"
    d = DataError("gone", "/x")
    assert "/x" in str(d) and pickle.loads(pickle.dumps(d)).url == "/x"


# The classic worker's tasks, in-process.


def words(line: Any, params: Any) -> Any:
    for w in line.split():
        yield w, 1


def _run_map(w: Worker, data: bytes) -> dict[int, list[Any]]:
    parts = w.map_task(io.BytesIO(data), len(data), "sector:///t")
    return {p: _records(b) for p, b in parts.items()}


def test_map_task_partitions_and_combines_with_a_final_done_call() -> None:
    calls: list[bool] = []

    def combiner(k: Any, v: Any, buf: dict[Any, Any], done: bool, params: Any) -> Any:
        calls.append(done)
        return func.sum_combiner(k, v, buf, done, params)

    w = Worker().resolve(None, {"map": words, "partitions": 3, "combiner": combiner})
    got = _run_map(w, b"a b a\nc a\n")
    flat = {k: v for recs in got.values() for k, v in recs}
    assert flat == {b"a": 3, b"b": 1, b"c": 1}
    for p, recs in got.items():
        assert all(func.default_partition(k, 3, None) == p for k, _ in recs)
    assert calls.count(True) == len(got)  # one final call per partition buffer


@pytest.mark.parametrize("nparts", [0, 1, 3])
def test_sum_combiner_fast_path_gives_the_records_of_the_general_one(nparts: int) -> None:
    def wrapped(k: Any, v: Any, buf: dict[Any, Any], done: bool, params: Any) -> Any:
        return func.sum_combiner(k, v, buf, done, params)  # not func.sum_combiner itself

    data = b"a b a\nc a d\n\nd e f a\n" * 50
    jobargs: dict[str, Any] = {"map": words, "partitions": nparts}
    fast = _run_map(Worker().resolve(None, {**jobargs, "combiner": func.sum_combiner}), data)
    slow = _run_map(Worker().resolve(None, {**jobargs, "combiner": wrapped}), data)
    assert {p: sorted(r) for p, r in fast.items()} == {p: sorted(r) for p, r in slow.items()}
    assert dict(kv for r in fast.values() for kv in r)[b"a"] == 200


def test_map_task_lines_keep_their_newline_and_map_init_shares_the_iterator() -> None:
    seen: list[Any] = []

    def init(it: Any, params: Any) -> None:
        next(it)  # skip a header
        params.skipped = True

    def m(e: Any, params: Any) -> Any:
        seen.append(e)
        yield e, params.skipped

    w = Worker().resolve(None, {"map": m, "map_init": init, "params": Params(skipped=False)})
    _run_map(w, b"header\none\ntwo")
    assert seen == [b"one\n", b"two"]


def test_reduce_task_forms_sort_and_readers() -> None:
    sink = io.BytesIO()
    out = DiscoOutputStream(sink)
    for k in (b"b", b"a", b"c", b"a"):
        out.add(k, 1)
    out.close()
    data = sink.getvalue()

    def two(it: Any, params: Any) -> Any:
        return [(k, v) for k, v in it]

    w = Worker().resolve(None, {"reduce": two, "sort": True})
    res = _records(w.reduce_task(io.BytesIO(data), len(data), "u", read=True))
    assert [k for k, _ in res] == [b"a", b"a", b"b", b"c"]
    w = Worker().resolve(None, {"reduce": func.nop_reduce})
    res = _records(w.reduce_task(io.BytesIO(data), len(data), "u", read=True))
    assert [k for k, _ in res] == [b"b", b"a", b"c", b"a"]

    def reader(fd: Any, size: Any, url: Any, params: Any) -> Any:
        for k, v in chain_reader(fd, size, url):
            yield k + params.suffix, v

    w = Worker().resolve(
        None, {"reduce": func.sum_reduce, "reduce_reader": reader, "params": Params(suffix=b"!")}
    )
    res = _records(w.reduce_task(io.BytesIO(data), len(data), "u", read=True))
    assert dict(res) == {b"a!": 2, b"b!": 1, b"c!": 1}


class AttrJob(Job):
    partitions = 2
    sort = True

    def map(self, e: Any, params: Any) -> Any:
        yield e, self.name


def test_settings_resolve_from_run_keywords_then_job_attributes_then_defaults() -> None:
    job = AttrJob(master="127.0.0.1:1")
    w = job.worker.resolve(job, {"sort": False})
    assert w["partitions"] == 2 and w["sort"] is False
    assert w["map"].__self__ is job and w["reduce"] is None
    assert w["partition"] is func.default_partition


def test_a_packed_job_unpacks_with_a_fresh_params_per_task() -> None:
    job = AttrJob(master="127.0.0.1:1")
    w = job.worker.resolve(job, {"params": {"n": 1}})
    blob = pack(w, {"name": "J", "inputs": {}})
    with Unpacked(blob) as (w1, meta):
        w1["params"]["n"] += 1
        assert meta["name"] == "J"
    with Unpacked(blob) as (w2, _meta):
        assert w2["params"] == {"n": 1}
        assert w2["map"].__self__.disco.master == "127.0.0.1:1"
    # This test module is not installed: the job's class travels by value.
    assert local_modules(w) == {AttrJob.__module__}
