"""Issue 10 on real node processes: the driver acts on every scheduler instruction.

- A speculative attempt that loses its segment is cancelled on its node
  (``sphere.cancel``): its engine process is killed and replaced, free again within a
  second of the winner's commit -- while the job still runs, not at its cleanup.
- ``sphere.cancel`` answers only to the job's user, discards the attempt's staged
  output, and a cancel that overtakes its ``sphere.run`` stops that run from starting.
- A UDF that ends its engine process fails only its own attempt (retried); the node
  starts another engine in its place.
- The driver sleeps until the scheduler's next deadline (``wake_at``) or an event: no
  fixed tick, so a job waiting on a long attempt wakes only to start its backup.
- The scheduler measures "near" with placement's ``topo_distance`` (hosts, racks,
  unknown topology = FAR), fed by the nodes' own host and topology.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

import sector
from sector.errors import BadRequest, NotFound, PermissionDenied
from sector.sphere.driver import AsyncJob
from sector.sphere.schedule import Scheduler, Start
from sector.sphere.udf import pickle_udf
from sector.storage.placement import FAR, Candidate, topo_distance
from sector.testing.cluster import NodeProc, ProcCluster, wait_for
from sector.transport.rpc import RpcPool

ONE = ["--engines", "1"]
SHARED_HOST = [*ONE, "--host-id", "box-a"]  # two nodes on one (pretend) machine
MARKS = "marks"  # UDFs of the module's cluster leave marks there (``--udf-bind``)
FREED_WITHIN = 1.0  # seconds from the winner's commit to the loser's engine being free


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcCluster]:
    """Three nodes of one engine each: n0 on /dc1/r1 and n2 (topology unknown) share a
    host; n1 is on /dc1/r2, a host of its own. Their UDFs may write ``root/MARKS``
    (sandboxed UDFs see nothing else of the test's files)."""
    root = tmp_path_factory.mktemp("sphere-cancel")
    (root / MARKS).mkdir(mode=0o1777)
    (root / MARKS).chmod(0o1777)  # (mkdir's mode is cut by the umask)
    shared = ["--udf-bind", str(root / MARKS)]
    with ProcCluster(root / "cl", replicas=1, node_args=[*SHARED_HOST, *shared]) as cl:
        first = cl.add(topology="/dc1/r1")
        cl.node_args = [*ONE, *shared]
        cl.add(join=first.address, topology="/dc1/r2")
        cl.node_args = [*SHARED_HOST, *shared]
        cl.add(join=first.address)
        cl.node_args = [*ONE, *shared]
        cl.wait_ring()
        yield cl


@pytest.fixture
def marks(cluster: ProcCluster, request: pytest.FixtureRequest) -> Path:
    """A directory of the test's own where its UDFs may leave marks (on any node)."""
    d = cluster.root.parent / MARKS / request.node.name
    d.mkdir(mode=0o777)
    d.chmod(0o777)
    return d


# UDFs. Module-level: pickled by value (this test module is not installed on the nodes).


def slow_on_victim(seg: Any) -> Any:
    victim, _i = seg.param
    if seg.node == victim:
        time.sleep(120)
    return b"ok"


def slow_first_attempt(seg: Any) -> Any:
    """Task 1's first attempt sleeps; a later one (the backup) finds its mark and ends."""
    where, i = seg.param
    mark = Path(where) / f"started-{i}"
    if i == 1 and not mark.exists():
        mark.touch()
        time.sleep(120)
    return b"ok"


def exits_once(seg: Any) -> Any:
    """The first attempt ends its engine process; the retry finds its mark and ends."""
    mark = Path(seg.param) / "exited"
    if not mark.exists():
        mark.touch()
        os._exit(3)
    return b"ok"


def echo(seg: Any) -> Any:
    return str(seg.param).encode()


def quick_to_files(seg: Any) -> Any:
    return b"some output\n"


# ---------------------------------------------------------------- helpers


def rpc(addr: str, op: str, args: dict[str, Any]) -> Any:
    async def go() -> Any:
        pool = RpcPool(timeout=10)
        try:
            return await pool.call(addr, op, args)
        finally:
            await pool.close()

    return asyncio.run(go())


def engine_pids(node: NodeProc) -> set[int]:
    """The node's engine processes (spawned children running ``spawn_main``)."""
    assert node.proc is not None
    out = set()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = (d / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == node.proc.pid and b"spawn_main" in cmd:
            out.add(int(d.name))
    return out


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def hold_cleanup(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Jobs of this test keep their nodes' state until the returned event is set: the
    cleanup at a job's end also stops its attempts, and must not be what frees an
    engine here."""
    gate = threading.Event()
    real = AsyncJob._cleanup

    async def held(self: AsyncJob, staged: bool) -> None:
        await asyncio.to_thread(gate.wait, 120)
        await real(self, staged)

    monkeypatch.setattr(AsyncJob, "_cleanup", held)
    return gate


# ---------------------------------------------------------------- cancel


def test_losing_speculative_attempt_is_cancelled_and_frees_its_engine(
    cluster: ProcCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    victim = cluster.nodes[1]
    gate = hold_cleanup(monkeypatch)
    with sector.connect(cluster.address) as c:
        job = c.sphere.run(slow_on_victim, tasks=[(victim.node_id, i) for i in range(6)])
        try:
            # The victim's one engine sleeps in a task; its backup elsewhere will win.
            wait_for(
                lambda: rpc(victim.address, "sphere.info", {})["engines_busy"] == 1,
                30,
                interval=0.05,
                what="the victim's engine to be busy",
            )
            stuck = engine_pids(victim)
            assert len(stuck) == 1, stuck
            won_at: float = wait_for(
                lambda: job.progress()["speculative_won"] >= 1 and time.monotonic(),
                60,
                interval=0.01,
                what="a backup to win",
            )
            info: dict[str, Any] = {}
            freed_at = None
            while time.monotonic() < won_at + FREED_WITHIN:
                info = rpc(victim.address, "sphere.info", {})
                if info["engines_busy"] == 0 and not any(alive(p) for p in stuck):
                    freed_at = time.monotonic()
                    break
                time.sleep(0.02)
            assert freed_at is not None, f"engine not freed {FREED_WITHIN} s after the win: {info}"
            assert not job.done(), "freed by the job's cleanup, not by a cancel"
            assert info["cancelled"] >= 1 and info["running"] == 0, info
            print(f"loser's engine free {freed_at - won_at:.3f} s after the winner's commit")
        finally:
            gate.set()
        res = job.wait(timeout=60)
        assert res["results"] == [b"ok"] * 6
        assert res["speculative"] >= 1
        # A fresh engine took the killed one's place, and runs the next task.
        assert c.sphere.run(echo, tasks=["again"], engines=1).results() == [b"again"]


def task_args(
    job: str, attempt: int, fn: Callable[..., Any], mode: str = "client"
) -> dict[str, Any]:
    udf = pickle_udf(fn, None)
    return {
        "job": job,
        "attempt": attempt,
        "seg": {"id": attempt, "kind": "task", "param": cloudpickle.dumps(attempt)},
        "udf": udf,
        "digest": hashlib.blake2b(udf, digest_size=16).hexdigest(),
        "mode": mode,
        "nbuckets": 0,
        "buckets": {},
    }


def sleepy(seg: Any) -> Any:
    time.sleep(120)
    return b""


def test_sphere_cancel_is_the_jobs_users_and_discards_output(tmp_path: Path) -> None:
    with ProcCluster(tmp_path / "cl", replicas=1, node_args=ONE, secure=True) as cl:
        cl.start(1)
        node = cl.nodes[0]
        addr = node.address
        gil = cl.token("gil", compute=True)
        hal = cl.token("hal", compute=True)
        with (
            cl.connect(token=gil) as g,
            cl.connect(token=hal) as h,
            cl.connect(anonymous=True) as anon,
        ):

            def call(c: sector.Client, op: str, args: dict[str, Any]) -> Any:
                return c._run(c._aio.pool.call(addr, op, args))

            def busy() -> int:
                return int(call(g, "sphere.info", {})["engines_busy"])

            job = uuid.uuid4().hex[:16]
            for bad in (
                {},
                {"job": "../x", "attempt": 0},
                {"job": job},
                {"job": job, "attempt": -1},
            ):
                # A node hangs up after a BadRequest: a connection of its own for each.
                with cl.connect(token=gil) as once, pytest.raises(BadRequest):
                    call(once, "sphere.cancel", bad)
            staging = node.data / "sphere" / "u" / "gil"  # gil's jobs on this node
            assert not (staging / job).exists()  # nor made the job exist
            assert call(g, "sphere.run", task_args(job, 0, sleepy))["accepted"]
            wait_for(lambda: busy() == 1, 30, interval=0.05, what="the attempt to run")
            for who in (h, anon):
                with pytest.raises(PermissionDenied):
                    call(who, "sphere.cancel", {"job": job, "attempt": 0})
            assert busy() == 1  # refused: still running
            t0 = time.monotonic()
            assert call(g, "sphere.cancel", {"job": job, "attempt": 0}) == {"cancelled": True}
            wait_for(lambda: busy() == 0, FREED_WITHIN, interval=0.02, what="the engine freed")
            print(f"cancel to free engine: {time.monotonic() - t0:.3f} s")
            rep = call(g, "sphere.poll", {"job": job, "wait": 0})
            assert rep == {"done": [], "running": []}  # cancelled: neither running nor done

            # A finished attempt's staged output goes with its cancel.
            assert call(g, "sphere.run", task_args(job, 1, quick_to_files, "files"))["accepted"]

            def finished() -> bool:
                return any(r["attempt"] == 1 for r in call(g, "sphere.poll", {"job": job})["done"])

            wait_for(finished, 30, interval=0.05, what="attempt 1 to finish")
            staged = staging / job / "a1"
            assert (staged / "out").exists()
            assert call(g, "sphere.cancel", {"job": job, "attempt": 1}) == {"cancelled": False}
            assert not staged.exists()
            item = {"path": f"/.sphere/gil/{job}/part-00001", "attempt": 1}
            with pytest.raises(NotFound):
                call(g, "sphere.commit", {"job": job, "items": [item]})

            # A cancel that overtakes its run: the run is refused, nothing starts.
            started = int(call(g, "sphere.info", {})["attempts"])
            assert call(g, "sphere.cancel", {"job": job, "attempt": 2}) == {"cancelled": False}
            assert call(g, "sphere.run", task_args(job, 2, sleepy)).get("duplicate")
            assert int(call(g, "sphere.info", {})["attempts"]) == started
            assert busy() == 0
            call(g, "sphere.cleanup", {"job": job})


def test_udf_that_ends_its_engine_fails_only_its_attempt(cluster: ProcCluster, marks: Path) -> None:
    with sector.connect(cluster.address) as c:
        job = c.sphere.run(exits_once, tasks=[str(marks)])
        res = job.wait(timeout=60)
        assert res["results"] == [b"ok"]
        assert res["failed_attempts"] == 1
        # The node that lost an engine has a fresh one in its place: jobs run on.
        want = [str(i).encode() for i in range(6)]
        assert c.sphere.run(echo, tasks=list(range(6))).results() == want


# ---------------------------------------------------------------- no tick


def test_driver_sleeps_until_the_schedulers_next_deadline(
    cluster: ProcCluster, marks: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each schedule() call with what it started and the next deadline it leaves (asked
    # here, so the record does not depend on the driver asking).
    calls: list[tuple[float, list[Start], float | None]] = []
    wins: list[float] = []
    real_schedule, real_won = Scheduler.schedule, Scheduler.succeeded

    def schedule(self: Scheduler, now: float) -> list[Start]:
        out = real_schedule(self, now)
        calls.append((now, out, self.wake_at(now)))
        return out

    def succeeded(self: Scheduler, attempt: int, now: float) -> Any:
        got = real_won(self, attempt, now)
        if got[0]:
            wins.append(now)
        return got

    monkeypatch.setattr(Scheduler, "schedule", schedule)
    monkeypatch.setattr(Scheduler, "succeeded", succeeded)
    with sector.connect(cluster.address) as c:
        t0 = time.monotonic()
        res = c.sphere.run(slow_first_attempt, tasks=[(str(marks), 0), (str(marks), 1)])
        assert res.results() == [b"ok", b"ok"]
        took = time.monotonic() - t0
    assert res.progress()["speculative"] == 1
    spec_at = next(now for now, out, _ in calls if any(s.speculative for s in out))
    deadline = [t for now, _, t in calls if now < spec_at][-1]
    assert deadline is not None
    idle = [now for now, _, _ in calls if wins[0] + 0.5 < now < deadline - 0.05]
    print(
        f"job {took:.2f} s; backup {spec_at - deadline:+.3f} s after its deadline; "
        f"{len(calls)} schedule() calls, {len(idle)} while idle "
        f"({deadline - wins[0] - 0.55:.2f} s)"
    )
    # The old driver ticked every 0.5 s (and woke on every empty poll reply): some 8
    # calls in this ~4 s wait. Now only the deadline wakes it.
    assert len(idle) <= 1, [round(t - wins[0], 3) for t in idle]
    assert deadline - wins[0] > 2.5  # (the wait was long enough to tell)
    assert 0 <= spec_at - deadline < 0.25


# ---------------------------------------------------------------- one distance


def test_scheduler_uses_placements_topology_distance(
    cluster: ProcCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    got: dict[str, Any] = {}
    real_init = Scheduler.__init__

    def init(self: Scheduler, work: Any, engines: Any, **kw: Any) -> None:
        got.update(kw, engines=dict(engines))
        real_init(self, work, engines, **kw)

    monkeypatch.setattr(Scheduler, "__init__", init)
    with sector.connect(cluster.address) as c:
        assert c.sphere.run(echo, tasks=[1]).results() == [b"1"]
        members = {m["id"]: m for m in c.status()["nodes"]}
    where = {
        nid: Candidate(nid, m["address"], m["host"], m["topology"], 0) for nid, m in members.items()
    }
    n0, n1, n2 = (n.node_id for n in cluster.nodes)
    assert set(got["engines"]) == {n0, n1, n2}
    distance = got["distance"]
    for a in (n0, n1, n2):
        for b in (n0, n1, n2):
            assert distance(a, b) == topo_distance(where[a], where[b]), (a, b)
    # What that means here: one host, another rack, unknown topology is far.
    assert (distance(n0, n2), distance(n0, n1), distance(n1, n2)) == (0, 2, FAR)
