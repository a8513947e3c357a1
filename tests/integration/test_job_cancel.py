"""Cancelling a running Sphere job (issue 16) on a secure cluster of real nodes: over
HTTP (``POST /api/jobs/{id}/cancel``) anonymous gets 401 and another user 403; an
admin's cancel ends the job in its own client with ``JobCancelled`` within seconds (no
retry elsewhere), the job shows as cancelled, its staged files are gone and the
engines run the next job. The job's user cancels with ``sector sphere cancel``."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sector.errors import JobCancelled
from sector.testing import browser
from sector.testing.cluster import ProcCluster, metric_total, wait_for

CANCEL_WITHIN = 10.0  # seconds from the cancel to the driver's error


def sleepy(seg: Any) -> Any:
    import time

    time.sleep(float(seg.param))
    return b"late"


def quick(seg: Any) -> Any:
    return str(seg.param).encode()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcCluster]:
    with ProcCluster(
        tmp_path_factory.mktemp("cancel"), replicas=1, secure=True, node_args=["--engines", "1"]
    ) as c:
        c.start(2)
        c.wait_ring()
        yield c


def base_of(cl: ProcCluster) -> str:
    return str(json.loads((cl.nodes[0].data / "node.json").read_text())["http"])


def job_row(base: str, job: str) -> dict[str, Any] | None:
    with urllib.request.urlopen(base + "api/jobs", timeout=30) as r:
        jobs = json.loads(r.read())["sphere"]
    return next((j for j in jobs if j["id"] == job), None)


def cancelled_jobs(cl: ProcCluster) -> float:
    """``sector_sphere_jobs{state="cancelled"}`` summed over the nodes' /metrics."""
    return metric_total(cl.nodes, "sector_sphere_jobs", state="cancelled")


def staged(cl: ProcCluster, job: str) -> list[Path]:
    """The job's staging directories left on the nodes' disks."""
    return [p for n in cl.nodes for p in (n.data / "sphere").glob(f"*/*/{job}")]


def engines_busy(c: Any, cl: ProcCluster) -> int:
    def busy(addr: str) -> int:
        return int(c._run(c._aio.pool.call(addr, "sphere.info", {}, timeout=5))["engines_busy"])

    return sum(busy(n.address) for n in cl.nodes)


def test_an_admin_cancels_a_running_job_over_http(cluster: ProcCluster) -> None:
    base = base_of(cluster)
    ann = cluster.token("ann", write=["/ann"], compute=True)
    bob = cluster.token("bob", write=["/bob"], compute=True)
    with cluster.connect(token=ann) as c:
        # 4 segments of 60 s on 2 engines: only a cancel ends it within the test.
        job = c.sphere.run(sleepy, tasks=[60] * 4, speculate=False)
        wait_for(
            lambda: (r := job_row(base, job.id)) and r["running"] == 2 and r,
            20,
            what="the job running on both engines",
        )
        assert staged(cluster, job.id), "a running job stages on its nodes"
        url = f"{base}api/jobs/{job.id}/cancel"
        assert browser.post(url, b"", None)[0] == 401
        code, err = browser.post(url, b"", bob)
        assert code == 403 and "not bob" in err["error"], err
        assert browser.post(f"{base}api/jobs/{'0' * 16}/cancel", b"", cluster.admin_token)[0] == 404
        assert browser.post(f"{base}api/jobs/not-a-job/cancel", b"", cluster.admin_token)[0] == 400
        assert not job.done(), "a refused cancel must leave the job running"
        t0 = time.monotonic()
        code, rep = browser.post(url, b"", cluster.admin_token)
        assert code == 200 and rep["cancelled"], rep
        assert rep["attempts_stopped"] >= 1 and rep["unanswered"] == [], rep
        with pytest.raises(JobCancelled, match="cancelled by admin"):
            job.wait(timeout=CANCEL_WITHIN)
        took = time.monotonic() - t0
        print(f"\ncancel to JobCancelled in the client: {took:.2f} s")
        # Every node lists it cancelled: those the cancel reached first, and those that
        # heard of it from the driver's cleanup (which may come first).
        after = wait_for(
            lambda: (r := job_row(base, job.id)) and r["cancelled"] == 2 and r,
            10,
            what="every running attempt shown cancelled",
        )
        assert after["state"] == "cancelled" and after["running"] == 0, after
        assert "cancelled by admin" in after["stopped"], after
        assert cancelled_jobs(cluster) >= 2  # held (listed) by both nodes
        assert staged(cluster, job.id) == []
        # The engines are free: a job after it runs at once on them.
        wait_for(lambda: engines_busy(c, cluster) == 0, 10, what="the engines free")
        res = c.sphere.run(quick, tasks=[1, 2, 3, 4]).wait(timeout=30)
        assert sorted(res["results"]) == [b"1", b"2", b"3", b"4"]


def to_bucket_0(seg: Any) -> Any:
    import numpy as np

    return seg.records, np.zeros(len(seg.records), dtype=np.int64)


def slow_reduce(seg: Any) -> Any:
    import time

    time.sleep(60)
    return bytes(seg.data)


def test_a_job_cancelled_in_its_reduce_stops_there(cluster: ProcCluster, tmp_path: Path) -> None:
    """A cancel while the nodes commit (a reduce running in an engine) stops the reduce
    too: the driver fails at once, the engine is free, no output appears."""
    base = base_of(cluster)
    ann = cluster.token("ann", write=["/ann"], compute=True)
    src = tmp_path / "in.bin"
    src.write_bytes(bytes(range(256)) * 10)
    with cluster.connect(token=ann) as c:
        c.put(str(src), "/ann/in.bin")
        job = c.sphere.run(
            to_bucket_0,
            "/ann/in.bin",
            records=16,
            output="/ann/out",
            buckets=1,
            reduce=slow_reduce,
            speculate=False,
        )
        wait_for(
            lambda: job.progress()["phase"] == "reducing" and engines_busy(c, cluster) == 1,
            30,
            what="the reduce running",
        )
        code, rep = browser.post(f"{base}api/jobs/{job.id}/cancel", b"", cluster.admin_token)
        assert code == 200, rep
        with pytest.raises(JobCancelled):
            job.wait(timeout=CANCEL_WITHIN)
        wait_for(lambda: engines_busy(c, cluster) == 0, 10, what="the reduce's engine free")
        assert not c.exists("/ann/out")
        assert staged(cluster, job.id) == []


def test_the_jobs_user_cancels_it_with_the_cli(cluster: ProcCluster, sector_cli: Any) -> None:
    ann = cluster.token("ann", write=["/ann"], compute=True)
    base = base_of(cluster)
    with cluster.connect(token=ann) as c:
        job = c.sphere.run(sleepy, tasks=[60] * 2, speculate=False)
        wait_for(lambda: (r := job_row(base, job.id)) and r["running"], 20, what="job running")
        env = {"SECTOR_TOKEN": ann}
        r = sector_cli("sphere", "cancel", job.id, "--json", cluster=cluster.address, env=env)
        assert r.returncode == 0, r.stderr
        rep = json.loads(r.stdout)
        assert rep["job"] == job.id and rep["cancelled"] and rep["nodes"] >= 1, rep
        with pytest.raises(JobCancelled, match="cancelled by ann"):
            job.wait(timeout=CANCEL_WITHIN)
        r = sector_cli("sphere", "cancel", "zz", cluster=cluster.address, env=env)
        assert r.returncode != 0 and b"Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def slow_map(line: Any, params: Any) -> Any:
    import time

    time.sleep(60)
    yield line, 1


def test_a_disco_job_whose_sphere_job_is_cancelled_ends_dead(tmp_path: Path) -> None:
    """A Disco job is driven through Sphere: cancelling its Sphere job (here on an open
    cluster, where anyone may, by Python) makes its ``wait()`` raise the cancel."""
    from sector.disco import runtime
    from sector.disco.core import Job, JobError

    with ProcCluster(tmp_path, replicas=1, node_args=["--engines", "1"]) as cl:
        cl.start(1)
        base = base_of(cl)
        src = tmp_path / "in.txt"
        src.write_bytes(b"a\nb\n")
        try:
            with cl.connect() as c:
                c.put(str(src), "/dc/in.txt")
                job = Job(master=cl.address).run(input=["/dc/in.txt"], map=slow_map)

                def running() -> str | None:
                    with urllib.request.urlopen(base + "api/jobs", timeout=30) as r:
                        got = json.loads(r.read())["sphere"]
                    return next((j["id"] for j in got if j["state"] == "running"), None)

                sphere_id = wait_for(running, 30, what="the Disco job's Sphere job running")
                assert c.sphere.cancel(sphere_id)["cancelled"]
                t0 = time.monotonic()
                with pytest.raises(JobError, match="cancelled"):
                    job.wait(timeout=CANCEL_WITHIN)
                assert time.monotonic() - t0 < CANCEL_WITHIN
        finally:
            runtime.close_clients()
