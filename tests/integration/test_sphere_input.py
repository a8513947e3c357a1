"""Sphere's input checks on real node processes (issue 4; "validate every message a
node receives").

- Every ``sphere.*`` handler, given malformed messages over a raw RPC connection,
  answers a typed error (BadRequest, NotFound, InvalidPath, NoSpace), starts no
  attempt, stores nothing, and the node goes on: it answers ``node.ping``, runs an
  attempt sent to it directly and a job sent through a client.
- records="idx": a job gets exactly the indexed records, in order; a bad index fails
  the job with one line naming the index, before any attempt runs.
- Glob and list inputs; an input without files is NotFound.
- API misuse: UsageError at once with nothing started, or JobFailed naming the fault.
- The CLI: bad usage is one line on stderr and exit 1 or 2, never a traceback.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import struct
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import sector
from sector.errors import (
    BadRequest,
    InvalidPath,
    JobFailed,
    NoSpace,
    NotFound,
    SectorError,
    UsageError,
)
from sector.sphere.driver import pickle_udf
from sector.testing.cluster import NodeProc, ProcCluster, wait_for
from sector.transport.rpc import RpcPool

CALL_TIMEOUT = 10.0
STALL_TIMEOUT = 1.5  # --stall-timeout of the nodes (the default is 10 s)
BULK_STALL = 3 * STALL_TIMEOUT  # a bulk stream may pause this long


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcCluster]:
    root = tmp_path_factory.mktemp("sphere-input")
    # One engine a node: these tests run beside others on a 2-core machine.
    with ProcCluster(
        root / "cl", replicas=2, node_args=["--engines", "1", "--stall-timeout", str(STALL_TIMEOUT)]
    ) as cl:
        cl.start(2)
        yield cl


@pytest.fixture(scope="module")
def target(cluster: ProcCluster) -> NodeProc:
    return cluster.nodes[1]


# UDFs. Module-level: pickled by value (this test module is not installed on the nodes).


def double(seg: Any) -> Any:
    return str(seg.param * 2)


def to_two_buckets(seg: Any) -> Any:
    return [b"a", b"bb"], [0, 1]


def idx_records(seg: Any) -> Any:
    """Each record length-prefixed, after the segment's first record number."""
    o = seg.offsets
    out = [struct.pack("<qq", seg.first, len(seg))]
    for i in range(len(seg)):
        rec = bytes(seg.data[o[i] : o[i + 1]])
        out.append(struct.pack("<q", len(rec)) + rec)
    return b"".join(out)


def path_of(seg: Any) -> Any:
    return seg.path.encode()


def returns_a_dict(seg: Any) -> Any:
    return {"records": 1}


def bucket_out_of_range(seg: Any) -> Any:
    return [b"a", b"b", b"c"], [0, 7, 1]


def one_bucket_out_of_range(seg: Any) -> Any:
    return b"abc", 2


# ---------------------------------------------------------------- raw RPC helpers


def rpc(addr: str, op: str, args: dict[str, Any]) -> Any:
    """One call on a connection of its own (a node closes it after a BadRequest)."""

    async def go() -> Any:
        pool = RpcPool(timeout=CALL_TIMEOUT)
        try:
            return await pool.call(addr, op, args)
        finally:
            await pool.close()

    return asyncio.run(go())


def bulk(addr: str, op: str, args: dict[str, Any], data: bytes = b"") -> Any:
    """A bulk request: header, ``data``, then its one reply frame."""

    async def go() -> Any:
        pool = RpcPool(timeout=CALL_TIMEOUT)
        chan = await pool.open_bulk(addr, op, args, stall_timeout=CALL_TIMEOUT)
        try:
            if data:
                await chan.write(data)
            return await chan.read_reply()
        finally:
            await chan.close()
            await pool.close()

    return asyncio.run(go())


Case = tuple[str, dict[str, Any], type[SectorError]]


def assert_refused(addr: str, op: str, cases: list[Case]) -> None:
    """Each case gets an error reply of its type, in one line (not a RemoteError of a
    handler that fell over, not a dropped connection). Reports every case that did not."""
    wrong: list[str] = []
    for name, args, want in cases:
        try:
            got = rpc(addr, op, args)
        except SectorError as exc:
            if type(exc) is not want or "\n" in str(exc):
                wrong.append(f"[{name}] {type(exc).__name__}: {exc!s:.200}")
            continue
        wrong.append(f"[{name}] accepted: {got!r:.200}")
    assert not wrong, f"{op}, {len(wrong)} of {len(cases)} cases:\n" + "\n".join(wrong)


def attempts_on(node: NodeProc) -> int:
    return int(rpc(node.address, "sphere.info", {})["attempts"])


def job_dirs(node: NodeProc) -> set[str]:
    """The jobs staged on a node (``<data>/sphere/open/<job>`` on an open cluster,
    ``<data>/sphere/u/<user>/<job>`` on a secure one)."""
    root = node.data / "sphere"
    return {p.name for p in [*root.glob("open/*"), *root.glob("u/*/*")]}


def namespace(c: sector.Client) -> list[str]:
    """The top of the namespace, and every file staged under /.sphere (whose per-user
    directories a job makes and may leave, empty)."""
    names = sorted(e["path"] for e in c.ls("/") if e["path"] != "/.sphere")
    return names + sorted(_files_under(c, "/.sphere"))


def _files_under(c: sector.Client, d: str) -> list[str]:
    if not c.exists(d):
        return []
    out: list[str] = []
    for e in c.ls(d):
        out += _files_under(c, e["path"]) if e["type"] == "dir" else [e["path"]]
    return out


def new_job() -> str:
    return uuid.uuid4().hex[:16]


def udf_args(fn: Callable[..., Any]) -> dict[str, Any]:
    """The udf and digest fields of a sphere.run (an engine caches UDFs by digest)."""
    udf = pickle_udf(fn, None)
    return {"udf": udf, "digest": hashlib.blake2b(udf, digest_size=16).hexdigest()}


def run_args(job: str, attempt: int = 0, **kw: Any) -> dict[str, Any]:
    """A well-formed sphere.run of a generator task (the UDF doubles its parameter)."""
    import cloudpickle

    a: dict[str, Any] = {
        "job": job,
        "attempt": attempt,
        "seg": {"id": 0, "kind": "task", "param": cloudpickle.dumps(21)},
        **udf_args(double),
        "mode": "client",
        "nbuckets": 0,
        "buckets": {},
    }
    a.update(kw)
    return a


def run_to_end(node: NodeProc, args: dict[str, Any]) -> dict[str, Any]:
    """Start one attempt on ``node`` and poll it to its end; its result."""
    assert rpc(node.address, "sphere.run", args)["accepted"]
    got: dict[str, Any] = {}

    def done() -> bool:
        rep = rpc(node.address, "sphere.poll", {"job": args["job"], "wait": 1.0})
        for r in rep["done"]:
            if r["attempt"] == args["attempt"]:
                got.update(r)
        return bool(got)

    wait_for(done, 30, interval=0.05, what=f"attempt {args['attempt']} of {args['job']}")
    return got


@dataclass(frozen=True)
class Before:
    """What bad messages must not change: attempts started, job directories on the
    node, the namespace."""

    attempts: int
    dirs: set[str]
    names: list[str]


def snapshot(cluster: ProcCluster, node: NodeProc) -> Before:
    with sector.connect(cluster.address) as c:
        return Before(attempts_on(node), job_dirs(node), namespace(c))


def assert_unharmed(cluster: ProcCluster, node: NodeProc, before: Before) -> None:
    """Alive, answering, nothing started or stored by the bad calls, and still working."""
    assert node.alive, "the node process died"
    assert rpc(node.address, "node.ping", {})["address"] == node.address
    assert attempts_on(node) == before.attempts, "a malformed sphere.run started an attempt"
    assert job_dirs(node) == before.dirs, "a malformed message left a job directory"
    with sector.connect(cluster.address) as c:
        assert namespace(c) == before.names, "a malformed message stored a file"
    # No handler fell over into "handler failed" (logged with a traceback).
    assert "Traceback" not in node.log.read_text(errors="replace"), node.log.read_text()[-3000:]
    job = new_job()
    r = run_to_end(node, run_args(job))
    assert r["ok"] and r["data"] == b"42", r
    rpc(node.address, "sphere.cleanup", {"job": job})
    with sector.connect(cluster.address) as c:
        assert c.sphere.run(double, tasks=[1, 2, 3]).results() == [b"2", b"4", b"6"]


@pytest.fixture(scope="module")
def stored(cluster: ProcCluster, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A stored file: stat of ``/in/data.txt`` (lines of text)."""
    local = tmp_path_factory.mktemp("stored") / "data.txt"
    local.write_bytes(b"".join(b"line %d\n" % i for i in range(1000)))
    with sector.connect(cluster.address) as c:
        c.put(local, "/in/data.txt")
        return c.stat("/in/data.txt")


def file_seg(st: dict[str, Any], **kw: Any) -> dict[str, Any]:
    seg = {
        "id": 0,
        "kind": "file",
        "path": st["path"],
        "blob": st["blob"],
        "offset": 0,
        "length": st["size"],
        "size": st["size"],
        "checksum": st["checksum"],
        "holders": [r["address"] for r in st["replicas"]],
    }
    seg.update(kw)
    return {k: v for k, v in seg.items() if v is not DROP}


DROP = object()  # a field left out of a message


def without(a: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in a.items() if k != key}


# ---------------------------------------------------------------- sphere.run


def test_sphere_run_refuses_malformed_messages(
    cluster: ProcCluster, target: NodeProc, stored: dict[str, Any]
) -> None:
    addr = target.address
    other = cluster.nodes[0].address
    job = new_job()
    base = run_args(job)
    st = stored
    size = st["size"]
    idx7 = b"\x00" * 7
    short_idx = np.array([0, 5], dtype=np.int64).tobytes()
    backwards = np.array([0, 9, 4, size], dtype=np.int64).tobytes()

    def seg(**kw: Any) -> dict[str, Any]:
        return {**base, "seg": file_seg(st, **kw)}

    def bucket_job(nbuckets: int, buckets: Any) -> dict[str, Any]:
        return {**base, "mode": "buckets", "nbuckets": nbuckets, "buckets": buckets}

    cases: list[Case] = [
        ("no job", without(base, "job"), BadRequest),
        ("job not a string", {**base, "job": 12345678}, BadRequest),
        ("job traversal", {**base, "job": "../../etc"}, BadRequest),
        ("job too long", {**base, "job": "a" * 64}, BadRequest),
        ("job NUL", {**base, "job": "abcdef01\x00"}, BadRequest),
        ("no attempt", without(base, "attempt"), BadRequest),
        ("attempt negative", {**base, "attempt": -1}, BadRequest),
        ("attempt huge", {**base, "attempt": 1 << 62}, BadRequest),
        ("attempt a string", {**base, "attempt": "1"}, BadRequest),
        ("attempt a bool", {**base, "attempt": True}, BadRequest),
        ("attempt a float", {**base, "attempt": 1.0}, BadRequest),
        ("no seg", without(base, "seg"), BadRequest),
        ("seg a list", {**base, "seg": [0, "task"]}, BadRequest),
        ("seg kind unknown", {**base, "seg": {"id": 0, "kind": "bogus"}}, BadRequest),
        ("seg kind missing", {**base, "seg": {"id": 0}}, BadRequest),
        ("seg id negative", {**base, "seg": {"id": -1, "kind": "task"}}, BadRequest),
        ("seg id a string", {**base, "seg": {"id": "0", "kind": "task"}}, BadRequest),
        ("no udf", without(base, "udf"), BadRequest),
        ("udf a string", {**base, "udf": "def f(): pass"}, BadRequest),
        ("digest an int", {**base, "digest": 5}, BadRequest),
        ("digest huge", {**base, "digest": "d" * 100_000}, BadRequest),
        ("mode unknown", {**base, "mode": "bogus"}, BadRequest),
        ("no mode", without(base, "mode"), BadRequest),
        ("nbuckets negative", {**base, "nbuckets": -1}, BadRequest),
        ("nbuckets huge", {**base, "nbuckets": 1 << 40}, BadRequest),
        ("nbuckets a string", {**base, "nbuckets": "2"}, BadRequest),
        ("buckets a list", {**base, "buckets": [addr]}, BadRequest),
        ("bucket map too small", bucket_job(3, {"0": addr}), BadRequest),
        ("bucket map too big", bucket_job(1, {"0": addr, "1": addr}), BadRequest),
        ("bucket map a list", bucket_job(1, [addr]), BadRequest),
        ("no buckets", bucket_job(0, {}), BadRequest),
        ("bucket ids not numbers", bucket_job(2, {"a": addr, "b": addr}), BadRequest),
        ("bucket ids out of range", bucket_job(2, {"5": addr, "7": addr}), BadRequest),
        ("bucket id negative", bucket_job(2, {"-1": addr, "0": addr}), BadRequest),
        ("bucket address an int", bucket_job(2, {"0": addr, "1": 5}), BadRequest),
        ("bucket address no port", bucket_job(2, {"0": addr, "1": "nohost"}), BadRequest),
        ("blob not a blob id", seg(blob="not-a-blob"), BadRequest),
        ("blob traversal", seg(blob="../../etc/passwd"), BadRequest),
        ("blob an int", seg(blob=7), BadRequest),
        ("no blob", seg(blob=DROP), BadRequest),
        ("path traversal", seg(path="../../etc/passwd"), InvalidPath),
        ("path dotdot", seg(path="/in/../../etc/passwd"), InvalidPath),
        ("path NUL", seg(path="/in/da\x00ta.txt"), InvalidPath),
        ("path an int", seg(path=5), BadRequest),
        ("offset negative", seg(offset=-1), BadRequest),
        ("length huge", seg(kind="lines", length=1 << 62), BadRequest),
        ("range past the end", seg(kind="lines", offset=size - 1, length=10), BadRequest),
        ("size negative", seg(size=-1), BadRequest),
        ("size a string", seg(size="12"), BadRequest),
        ("holders not a list", seg(holders=5), BadRequest),
        ("holders a string", seg(holders=other), BadRequest),
        ("checksum an int", seg(checksum=5), BadRequest),
        ("fixed without a size", seg(kind="fixed", record_size=0), BadRequest),
        ("fixed torn record", seg(kind="fixed", record_size=7, length=10), BadRequest),
        ("idx without index", seg(kind="idx"), BadRequest),
        ("idx index of 7 bytes", seg(kind="idx", index=idx7), BadRequest),
        ("idx index not covering", seg(kind="idx", index=short_idx), BadRequest),
        ("idx index backwards", seg(kind="idx", index=backwards), BadRequest),
    ]
    before = snapshot(cluster, target)
    assert_refused(addr, "sphere.run", cases)
    assert_unharmed(cluster, target, before)


# ---------------------------------------------------------------- sphere.poll / info / cleanup


def test_sphere_poll_info_cleanup_refuse_malformed_messages(
    cluster: ProcCluster, target: NodeProc
) -> None:
    addr = target.address
    job = new_job()
    base = {"job": job, "ack": [], "wait": 0.0}
    cases: list[Case] = [
        ("no job", without(base, "job"), BadRequest),
        ("job an int", {**base, "job": 5}, BadRequest),
        ("job traversal", {**base, "job": "../../x"}, BadRequest),
        ("wait negative", {**base, "wait": -1}, BadRequest),
        ("wait too long", {**base, "wait": 31}, BadRequest),
        ("wait a string", {**base, "wait": "1"}, BadRequest),
        ("wait NaN", {**base, "wait": math.nan}, BadRequest),
        ("wait infinite", {**base, "wait": math.inf}, BadRequest),
        ("ack a string", {**base, "ack": "1"}, BadRequest),
        ("ack a map", {**base, "ack": {"1": 1}}, BadRequest),
    ]
    before = snapshot(cluster, target)
    assert_refused(addr, "sphere.poll", cases)
    assert_refused(
        addr,
        "sphere.cleanup",
        [
            ("no job", {}, BadRequest),
            ("job a list", {"job": [job]}, BadRequest),
            ("job traversal", {"job": "../../etc"}, BadRequest),
        ],
    )
    # A well-formed id the node never saw: nothing to report, nothing to clean, and
    # neither call makes the job exist.
    assert rpc(addr, "sphere.poll", base) == {"done": [], "running": []}
    assert rpc(addr, "sphere.cleanup", {"job": job}) == {"ok": True}
    # info takes no arguments: junk ones are ignored.
    assert rpc(addr, "sphere.info", {"job": [1], "x": None})["engines"] == 1
    assert_unharmed(cluster, target, before)


# ---------------------------------------------------------------- sphere.push


def recv_files(node: NodeProc, job: str) -> list[str]:
    d = node.data / "sphere" / "open" / job / "recv"
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def test_sphere_push_refuses_malformed_headers(cluster: ProcCluster, target: NodeProc) -> None:
    addr = target.address
    job = new_job()
    base = {"job": job, "bucket": 0, "attempt": 0, "size": 3}
    cases: list[Case] = [
        ("no job", without(base, "job"), BadRequest),
        ("job traversal", {**base, "job": "../../etc"}, BadRequest),
        ("bucket negative", {**base, "bucket": -1}, BadRequest),
        ("bucket huge", {**base, "bucket": 1 << 40}, BadRequest),
        ("bucket a string", {**base, "bucket": "0"}, BadRequest),
        ("attempt a string", {**base, "attempt": "0"}, BadRequest),
        ("attempt negative", {**base, "attempt": -5}, BadRequest),
        ("no size", without(base, "size"), BadRequest),
        ("size negative", {**base, "size": -1}, BadRequest),
        ("size bigger than the disk", {**base, "size": 1 << 62}, NoSpace),
        ("more not a list", {**base, "more": 5}, BadRequest),
        ("more a bucket negative", {**base, "more": [[-1, 3]]}, BadRequest),
        ("more a size negative", {**base, "more": [[1, -3]]}, BadRequest),
        ("more not pairs", {**base, "more": [[1, 3, 4]]}, BadRequest),
        ("more too long", {**base, "more": [[1, 0]] * 70_000}, BadRequest),
        ("more past the disk", {**base, "more": [[1, 1 << 62]]}, NoSpace),
    ]
    before = snapshot(cluster, target)
    for name, args, want in cases:
        with pytest.raises(SectorError) as ei:
            bulk(addr, "sphere.push", args, b"abc")
        assert type(ei.value) is want, f"[{name}]: {type(ei.value).__name__}: {ei.value}"
    assert_unharmed(cluster, target, before)


def test_sphere_push_of_several_parts_keeps_each_in_its_file(
    cluster: ProcCluster, target: NodeProc
) -> None:
    """One stream, three parts right behind each other: each lands in its own file."""
    job = new_job()
    args = {"job": job, "bucket": 2, "attempt": 5, "size": 3, "more": [[0, 0], [7, 4]]}
    bulk(target.address, "sphere.push", args, b"abc" + b"wxyz")
    jdir = target.data / "sphere" / "open" / job
    assert recv_files(target, job) == ["b0.a5", "b2.a5", "b7.a5"]
    got = [(jdir / "recv" / n).read_bytes() for n in ("b2.a5", "b0.a5", "b7.a5")]
    assert got == [b"abc", b"", b"wxyz"]
    rpc(target.address, "sphere.cleanup", {"job": job})


@pytest.mark.parametrize("how", ["hangs up", "goes silent"])
def test_sphere_push_cut_off_leaves_no_part(
    cluster: ProcCluster, target: NodeProc, how: str
) -> None:
    """A push that promises 1 MiB, sends 1000 bytes, then hangs up or sends nothing
    more: no part is kept, not even a temp file, and the node goes on."""
    job = new_job()
    args = {"job": job, "bucket": 3, "attempt": 0, "size": 1 << 20}
    before = snapshot(cluster, target)
    tag = ""

    async def cut() -> None:
        nonlocal tag
        pool = RpcPool(timeout=CALL_TIMEOUT)
        chan = await pool.open_bulk(target.address, "sphere.push", args)
        try:
            host, port = chan.writer.get_extra_info("sockname")[:2]
            tag = f"('{host}', {port})"  # how the node's log names this connection
            await chan.write(b"x" * 1000)
            # The receiver is writing its temp file before we hang up on it.
            await asyncio.to_thread(
                wait_for, lambda: recv_files(target, job), 10, 0.02, "the push to start"
            )
            if how == "goes silent":
                # The node gives up on its own after the bulk stall timeout.
                await asyncio.to_thread(
                    wait_for,
                    lambda: not recv_files(target, job),
                    BULK_STALL + 10,
                    0.05,
                    "the stalled part to be removed",
                )
        finally:
            await chan.close()
            await pool.close()

    asyncio.run(cut())
    wait_for(lambda: not recv_files(target, job), 10, what="the cut-off part to be removed")
    wait_for(
        lambda: [
            ln
            for ln in target.log.read_text().splitlines()
            if tag in ln and "sphere.push" in ln and "failed" in ln
        ],
        10,
        what="a log line about the cut-off push",
    )
    rpc(target.address, "sphere.cleanup", {"job": job})
    assert_unharmed(cluster, target, before)


# ---------------------------------------------------------------- sphere.resend / commit


@pytest.fixture
def finished(target: NodeProc) -> Iterator[tuple[str, NodeProc]]:
    """A job on ``target`` with a finished bucket attempt (0: parts of buckets 0 and 1,
    delivered to the node itself) and a finished files attempt (1)."""
    job = new_job()
    addr = target.address
    r = run_to_end(
        target,
        run_args(
            job,
            0,
            **udf_args(to_two_buckets),
            mode="buckets",
            nbuckets=2,
            buckets={"0": addr, "1": addr},
        ),
    )
    assert r["ok"] and r["undelivered"] == [] and r["parts"] == {"0": 1, "1": 2}, r
    r = run_to_end(target, run_args(job, 1, mode="files"))
    assert r["ok"], r
    yield job, target
    rpc(addr, "sphere.cleanup", {"job": job})


def test_sphere_resend_refuses_malformed_messages(
    cluster: ProcCluster, finished: tuple[str, NodeProc]
) -> None:
    job, target = finished
    addr = target.address
    base = {"job": job, "attempt": 0, "buckets": {"1": addr}}
    cases: list[Case] = [
        ("no job", without(base, "job"), BadRequest),
        ("job traversal", {**base, "job": "../x"}, BadRequest),
        ("unknown job", {**base, "job": new_job()}, NotFound),
        ("unknown attempt", {**base, "attempt": 999}, NotFound),
        ("attempt negative", {**base, "attempt": -1}, BadRequest),
        ("attempt a string", {**base, "attempt": "0"}, BadRequest),
        ("no buckets", without(base, "buckets"), BadRequest),
        ("buckets a list", {**base, "buckets": [addr]}, BadRequest),
        ("bucket id not a number", {**base, "buckets": {"x": addr}}, BadRequest),
        ("bucket id negative", {**base, "buckets": {"-1": addr}}, BadRequest),
        ("bucket id huge", {**base, "buckets": {str(1 << 70): addr}}, BadRequest),
        ("bucket address an int", {**base, "buckets": {"1": 5}}, BadRequest),
        ("bucket address no port", {**base, "buckets": {"1": "nohost"}}, BadRequest),
    ]
    before = snapshot(cluster, target)
    assert_refused(addr, "sphere.resend", cases)
    # The well-formed one is answered: its part was delivered, so it left this node.
    with pytest.raises(NotFound, match=r"parts of buckets \[1\] were delivered"):
        rpc(addr, "sphere.resend", base)
    assert_unharmed(cluster, target, before)


def test_sphere_commit_refuses_malformed_messages_and_stores_nothing(
    cluster: ProcCluster, finished: tuple[str, NodeProc]
) -> None:
    job, target = finished
    addr = target.address
    stage = f"/.sphere/_/{job}"
    good = {"path": f"{stage}/bucket-00000", "bucket": 0, "attempts": [0]}

    def items(*its: Any) -> dict[str, Any]:
        return {"job": job, "items": list(its)}

    def reduce_of(**kw: Any) -> dict[str, Any]:
        spec = {"udf": b"not a pickle", "digest": "d0", "kind": "file", **kw}
        return {k: v for k, v in spec.items() if v is not None}

    cases: list[Case] = [
        ("no job", {"items": [good]}, BadRequest),
        ("job an int", {"job": 1, "items": [good]}, BadRequest),
        ("unknown job", {"job": new_job(), "items": [good]}, NotFound),
        ("no items", {"job": job}, BadRequest),
        ("items a map", {"job": job, "items": {"0": good}}, BadRequest),
        ("item an int", items(5), BadRequest),
        ("item without a path", items({"bucket": 0, "attempts": [0]}), BadRequest),
        ("path an int", items({**good, "path": 5}), BadRequest),
        ("path traversal", items({**good, "path": "../../etc/passwd"}), InvalidPath),
        ("path dotdot", items({**good, "path": f"{stage}/../../etc/passwd"}), InvalidPath),
        ("path NUL", items({**good, "path": f"{stage}/a\x00b"}), InvalidPath),
        ("path outside the job", items({**good, "path": "/evil"}), BadRequest),
        ("path of another job", items({**good, "path": f"/.sphere/_/{new_job()}/x"}), BadRequest),
        ("path is the stage", items({**good, "path": stage}), BadRequest),
        ("bucket negative", items({**good, "bucket": -1}), BadRequest),
        ("bucket a string", items({**good, "bucket": "0"}), BadRequest),
        ("attempts a string", items({**good, "attempts": "0"}), BadRequest),
        ("attempts of strings", items({**good, "attempts": ["0"]}), BadRequest),
        ("attempts negative", items({**good, "attempts": [-1]}), BadRequest),
        ("attempts that do not exist", items({**good, "attempts": [0, 999]}), NotFound),
        ("bucket with no part", items({**good, "bucket": 7}), NotFound),
        (
            "files attempt that does not exist",
            items({"path": f"{stage}/p", "attempt": 999}),
            NotFound,
        ),
        ("files attempt negative", items({"path": f"{stage}/p", "attempt": -1}), BadRequest),
        ("files item without an attempt", items({"path": f"{stage}/p"}), BadRequest),
        (
            "good item then a bad one",
            items(good, {**good, "path": f"{stage}/b1", "attempts": [5]}),
            NotFound,
        ),
        ("one path twice", items(good, {**good, "bucket": 1}), BadRequest),
        ("rf zero", {**items(good), "rf": 0}, BadRequest),
        ("rf huge", {**items(good), "rf": 17}, BadRequest),
        ("rf a string", {**items(good), "rf": "2"}, BadRequest),
        ("durable a string", {**items(good), "durable": "no"}, BadRequest),
        ("reduce a string", {**items(good), "reduce": "sort"}, BadRequest),
        ("reduce without udf", {**items(good), "reduce": reduce_of(udf=None)}, BadRequest),
        ("reduce udf a string", {**items(good), "reduce": reduce_of(udf="f")}, BadRequest),
        ("reduce digest huge", {**items(good), "reduce": reduce_of(digest="d" * 200)}, BadRequest),
        ("reduce kind idx", {**items(good), "reduce": reduce_of(kind="idx")}, BadRequest),
        ("reduce fixed, no size", {**items(good), "reduce": reduce_of(kind="fixed")}, BadRequest),
        (
            "reduce size negative",
            {**items(good), "reduce": reduce_of(kind="fixed", record_size=-1)},
            BadRequest,
        ),
        # Well-formed but not a pickled function: the engine says so, the job fails.
        ("reduce not a UDF", {**items(good), "reduce": reduce_of()}, JobFailed),
    ]
    before = snapshot(cluster, target)
    with sector.connect(cluster.address) as c:
        assert_refused(addr, "sphere.commit", cases)
        assert namespace(c) == before.names, "a refused commit stored a file"
        assert not c.exists(stage)
        assert not c.exists("/evil")
        # The same job's well-formed commit works after all that: both modes.
        rep = rpc(
            addr,
            "sphere.commit",
            items(good, {"path": f"{stage}/part-00000", "attempt": 1}),
        )
        assert sorted(f["path"] for f in rep["files"]) == [
            f"{stage}/bucket-00000",
            f"{stage}/part-00000",
        ]
        assert c.read(f"{stage}/bucket-00000") == b"a"
        assert c.read(f"{stage}/part-00000") == b"42"
        c.rm(stage, recursive=True)
    assert_unharmed(cluster, target, before)


# ---------------------------------------------------------------- records="idx"


def _put(c: sector.Client, tmp: Path, path: str, data: bytes) -> None:
    f = tmp / "up.bin"
    f.write_bytes(data)
    c.put(f, path)


def _decode_idx_output(outs: list[bytes]) -> tuple[list[int], list[bytes]]:
    firsts: list[int] = []
    recs: list[bytes] = []
    for out in outs:
        first, n = struct.unpack_from("<qq", out)
        firsts.append(first)
        pos = 16
        for _ in range(n):
            (k,) = struct.unpack_from("<q", out, pos)
            recs.append(out[pos + 8 : pos + 8 + k])
            pos += 8 + k
        assert pos == len(out)
    return firsts, recs


def test_idx_records_reach_the_udf_exactly_and_in_order(
    cluster: ProcCluster, tmp_path: Path
) -> None:
    rng = np.random.default_rng(3)
    recs = [
        b"r%d:" % i + bytes(rng.integers(0, 256, int(rng.integers(0, 200)), np.uint8))
        for i in range(3000)
    ]
    recs[10] = b""  # an empty record is a record too
    offsets = np.zeros(len(recs) + 1, dtype=np.int64)
    np.cumsum([len(r) for r in recs], out=offsets[1:])
    with sector.connect(cluster.address) as c:
        _put(c, tmp_path, "/idx/ok/d.bin", b"".join(recs))
        _put(c, tmp_path, "/idx/ok/d.bin.idx", offsets.tobytes())
        # The directory as input: the .idx file is not an input file of its own.
        outs = c.sphere.run(
            idx_records, "/idx/ok", records="idx", min_unit=16 << 10, max_unit=16 << 10
        ).results()
    firsts, got = _decode_idx_output(outs)
    assert len(outs) > 5  # ~300 KB in segments of <= 16 KiB (whole records)
    assert firsts[0] == 0 and firsts == sorted(firsts)
    assert got == recs


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("not from 0", "must start at 0"),
        ("not to the end", "ends at"),
        ("backwards", "goes backwards"),
        ("torn offset", "not a whole number of 8-byte offsets"),
        ("empty", "index is empty"),
        ("missing", "no index file"),
    ],
)
def test_bad_idx_fails_the_job_before_anything_runs(
    cluster: ProcCluster, tmp_path: Path, case: str, words: str
) -> None:
    data = b"aaaa" + b"bb" + b"cccccc"
    good = np.array([0, 4, 6, 12], dtype=np.int64)
    index = {
        "not from 0": (good + np.array([1, 0, 0, 0])).tobytes(),
        "not to the end": np.array([0, 4, 6, 11], dtype=np.int64).tobytes(),
        "backwards": np.array([0, 6, 4, 12], dtype=np.int64).tobytes(),
        "torn offset": good.tobytes() + b"\x01\x02\x03",
        "empty": b"",
        "missing": None,
    }[case]
    d = f"/idx/bad-{uuid.uuid4().hex[:8]}"
    with sector.connect(cluster.address) as c:
        _put(c, tmp_path, f"{d}/d.bin", data)
        if index is not None:
            _put(c, tmp_path, f"{d}/d.bin.idx", index)
        attempts = [attempts_on(n) for n in cluster.nodes]
        with pytest.raises(UsageError) as ei:
            c.sphere.run(idx_records, d, records="idx", output=f"{d}-out").wait()
        msg = str(ei.value)
        assert words in msg and "index" in msg and f"{d}/d.bin" in msg, msg
        assert "\n" not in msg
        assert [attempts_on(n) for n in cluster.nodes] == attempts, "an attempt ran"
        assert not c.exists(f"{d}-out")


# ---------------------------------------------------------------- glob and list inputs


def test_glob_list_and_empty_inputs(cluster: ProcCluster, tmp_path: Path) -> None:
    root = f"/g-{uuid.uuid4().hex[:8]}"
    with sector.connect(cluster.address) as c:
        for name in ("a.txt", "b.txt", "c.csv", "sub/d.txt", "x/e.txt", "y/f.txt", "y/g.txt"):
            _put(c, tmp_path, f"{root}/{name}", name.encode())
        c.mkdir(f"{root}/empty")

        def paths(spec: Any) -> list[bytes]:
            return c.sphere.run(path_of, spec).results()

        # "*" stays within one directory level, like a shell glob.
        assert paths(f"{root}/*.txt") == [f"{root}/a.txt".encode(), f"{root}/b.txt".encode()]
        assert paths(f"{root}/?.csv") == [f"{root}/c.csv".encode()]
        assert paths(f"{root}/*/*.txt") == [
            f"{root}/{n}".encode() for n in ("sub/d.txt", "x/e.txt", "y/f.txt", "y/g.txt")
        ]
        # A list of directories: their files, in the order given.
        assert paths([f"{root}/y", f"{root}/x"]) == [
            f"{root}/{n}".encode() for n in ("y/f.txt", "y/g.txt", "x/e.txt")
        ]
        attempts = [attempts_on(n) for n in cluster.nodes]
        for spec in (f"{root}/empty", f"{root}/*.nothing", [f"{root}/empty"], f"{root}/nope"):
            with pytest.raises(NotFound):
                c.sphere.run(path_of, spec).wait()
        assert [attempts_on(n) for n in cluster.nodes] == attempts


# ---------------------------------------------------------------- API misuse


def test_api_misuse_is_a_usage_error_and_starts_nothing(
    cluster: ProcCluster, stored: dict[str, Any]
) -> None:
    import threading

    lock = threading.Lock()
    with sector.connect(cluster.address) as c:
        attempts = [attempts_on(n) for n in cluster.nodes]
        before = namespace(c)
        misuse: list[tuple[Callable[[], Any], str]] = [
            (lambda: c.sphere.run(double, "/in", buckets=2), "needs an output"),
            (lambda: c.sphere.run(double, "/in", tasks=[1]), "not both"),
            (lambda: c.sphere.run(double), "needs an input"),
            (lambda: c.sphere.run(42, tasks=[1]), "must be a function"),  # type: ignore[arg-type]
            (lambda: c.sphere.run(lambda s: lock.locked(), tasks=[1]), "cannot pickle"),
            (lambda: c.sphere.run(double, tasks=[1], param=lock), "cannot pickle"),
            (lambda: c.sphere.run(double, "/in", output="/o", buckets=-1), "buckets"),
            (lambda: c.sphere.run(double, "/in", output="/o", buckets=1 << 20), "buckets"),
            (lambda: c.sphere.run(double, "/in", output="/o", buckets=True), "buckets"),
            (lambda: c.sphere.run(double, "/in", records="bogus"), "records must be"),
            (lambda: c.sphere.run(double, "/in", records=0), "record size"),
            (lambda: c.sphere.run(double, "/in", min_unit=0), "min_unit"),
        ]
        for start, words in misuse:
            with pytest.raises(UsageError, match=words) as ei:
                start().wait()
            assert words in str(ei.value), str(ei.value)
            assert "\n" not in str(ei.value)
        assert [attempts_on(n) for n in cluster.nodes] == attempts
        assert namespace(c) == before


def test_udf_output_errors_fail_the_job_naming_the_fault(cluster: ProcCluster) -> None:
    with sector.connect(cluster.address) as c:
        before = namespace(c)
        with pytest.raises(JobFailed) as ei:
            c.sphere.run(returns_a_dict, tasks=[1]).wait()
        assert "None, bytes, str, a numpy array, a list of bytes" in str(ei.value)
        assert "got dict" in str(ei.value)

        with pytest.raises(JobFailed) as ei:
            c.sphere.run(bucket_out_of_range, tasks=[1], output="/bo", buckets=4).wait()
        assert "bucket id 7 (record 1) is outside [0, 4)" in str(ei.value)

        with pytest.raises(JobFailed) as ei:
            c.sphere.run(one_bucket_out_of_range, tasks=[1], output="/bo", buckets=2).wait()
        assert "bucket id 2 is outside [0, 2)" in str(ei.value)
        assert not c.exists("/bo")
        assert namespace(c) == before


# ---------------------------------------------------------------- the CLI


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["nocolon", "/in"], b"MODULE:FUNCTION"),
        ([":f", "/in"], b"MODULE:FUNCTION"),
        (["json:", "/in"], b"MODULE:FUNCTION"),
        (["json:no_such_function", "/in"], b"no function no_such_function"),
        (["json:dumps", "/in", "--records", "bogus"], b"--records"),
        (["json:dumps", "/in", "--records", "0"], b"--records"),
        (["json:dumps", "/in", "--param", "{bad json"], b"--param: not JSON"),
        (["json:dumps", "/in", "--buckets", "-3"], b"--buckets"),
        (["json:dumps", "/in", "--records", "9" * 400], b"--records"),
        (["json:dumps", "/in", "--max-unit", "9" * 400 + "P"], b"--max-unit"),
    ],
    ids=[
        "no-colon",
        "no-module",
        "no-function",
        "unknown-function",
        "records-bogus",
        "records-zero",
        "param-bad-json",
        "buckets-negative",
        "records-overflow",
        "max-unit-overflow",
    ],
)
def test_cli_sphere_run_bad_usage_is_one_line(
    cluster: ProcCluster, sector_cli: Any, args: list[str], words: bytes
) -> None:
    r = sector_cli("sphere", "run", *args, cluster=cluster.address, timeout=60)
    assert r.returncode in (1, 2), r
    assert b"Traceback" not in r.stderr
    assert r.stderr.count(b"\n") == 1, r.stderr
    assert words in r.stderr, r.stderr
    assert r.stdout == b""
