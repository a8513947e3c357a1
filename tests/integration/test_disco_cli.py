"""`sector disco ...` through the real command (issue 12, phase 2): a Job class from a
module in the current directory run with and without --wait, jobs listed, waited for,
their records read, killed while another process drives them, purged; and the errors
(a bad MODULE:JOBCLASS, an unknown job) as one line and exit 1.

Every command is ``python -m sector`` in a subprocess whose working directory holds
the job module (``dcli_jobs.py``, not installed anywhere: it travels by value)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sector.testing.cluster import ProcCluster

JOBS = """
import time
from sector.disco.core import Job
from sector.disco.util import kvgroup


class WordCount(Job):
    partitions = 2

    @staticmethod
    def map(line, params):
        for w in line.split():
            yield w.upper() if getattr(params, "upper", False) else w, 1

    @staticmethod
    def reduce(iter, params):
        for w, counts in kvgroup(sorted(iter)):
            yield w, sum(counts) * getattr(params, "times", 1)


class Slow(Job):
    input = ["raw://" + str(i) for i in range(40)]

    @staticmethod
    def map(e, params):
        time.sleep(1)
        yield e, 1


class Boom(Job):
    @staticmethod
    def map(e, params):
        raise ValueError("no good")


NotAJob = 3
"""

TEXT = b"the quick brown fox\njumps over the lazy dog\nthe end\n"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcCluster]:
    root = tmp_path_factory.mktemp("disco-cli")
    with ProcCluster(root / "cl", replicas=2, node_args=["--engines", "2"]) as cl:
        cl.start(3)
        src = root / "words.txt"
        src.write_bytes(TEXT)
        with cl.connect() as c:
            c.put(src, "/dcli/words.txt")
        yield cl


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("dcli-cwd")
    (d / "dcli_jobs.py").write_text(JOBS)
    return d


def cli(
    cluster: ProcCluster, cwd: Path, *args: str, timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sector", "--cluster", cluster.address, "disco", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
        timeout=timeout,
        check=False,
    )


def ok(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 0, f"exit {r.returncode}: {r.stderr!r}"
    return r.stdout


def one_error(r: subprocess.CompletedProcess[str], *words: str) -> str:
    assert r.returncode == 1, f"exit {r.returncode}: {r.stderr!r} {r.stdout!r}"
    assert "Traceback" not in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("sector: error: "), r.stderr
    for w in words:
        assert w in r.stderr, r.stderr
    return r.stderr


def counts(records: list[Any]) -> dict[str, int]:
    return {k: v for k, v in records}


def test_run_wait_prints_the_records(cluster: ProcCluster, workdir: Path) -> None:
    r = cli(
        cluster,
        workdir,
        "run",
        "dcli_jobs:WordCount",
        "/dcli/words.txt",
        "--param",
        "times=10",
        "--param",
        "upper=true",
        "--partitions",
        "3",
        "--name",
        "wc",
        "--wait",
        "--json",
    )
    got = json.loads(ok(r))
    assert got["name"].startswith("wc@") and got["status"] == "ready"
    assert len(got["results"]) == 3  # --partitions won over the class's 2
    assert counts(got["records"]) == {
        "THE": 30, "QUICK": 10, "BROWN": 10, "FOX": 10, "JUMPS": 10,
        "OVER": 10, "LAZY": 10, "DOG": 10, "END": 10,
    }  # fmt: skip
    # The plain form: the name, then key<TAB>value lines.
    r = cli(cluster, workdir, "run", "dcli_jobs:WordCount", "/dcli/words.txt", "--wait")
    lines = ok(r).splitlines()
    assert lines[0].startswith("WordCount@")
    assert dict(line.split("\t") for line in lines[1:])["the"] == "3"
    assert ok(cli(cluster, workdir, "purge", lines[0])) == f"purged {lines[0]}\n"
    assert ok(cli(cluster, workdir, "purge", got["name"], "--json"))


def test_run_detached_then_jobs_wait_results_purge(cluster: ProcCluster, workdir: Path) -> None:
    r = cli(cluster, workdir, "run", "dcli_jobs:WordCount", "/dcli/words.txt", "--json")
    started = json.loads(ok(r))
    name = started["name"]
    assert started == {"name": name, "status": "active"}  # the command did not wait
    waited = json.loads(ok(cli(cluster, workdir, "wait", name, "--json")))
    assert waited["status"] == "ready" and len(waited["results"]) == 2
    assert all(u.startswith(f"sector://{cluster.address}/disco/{name}/") for u in waited["results"])
    listed = json.loads(ok(cli(cluster, workdir, "jobs", "--json")))["jobs"]
    mine = [j for j in listed if j["name"] == name]
    assert mine and mine[0]["status"] == "ready" and mine[0]["results"] == 2
    assert set(mine[0]) == {"name", "status", "timestamp", "results", "driver", "orphaned"}
    assert name in ok(cli(cluster, workdir, "jobs"))
    assert ok(cli(cluster, workdir, "wait", name)).split() == waited["results"]
    res = json.loads(ok(cli(cluster, workdir, "results", name, "--json")))
    assert counts(res["records"])["the"] == 3
    assert "fox\t1" in ok(cli(cluster, workdir, "results", name)).splitlines()
    assert json.loads(ok(cli(cluster, workdir, "purge", name, "--json"))) == {
        "name": name,
        "purged": True,
    }
    one_error(cli(cluster, workdir, "results", name), "unknown job", name)
    assert name not in ok(cli(cluster, workdir, "jobs"))


def test_kill_a_job_another_process_drives(cluster: ProcCluster, workdir: Path) -> None:
    name = ok(cli(cluster, workdir, "run", "dcli_jobs:Slow")).strip()
    t = time.monotonic()
    got = json.loads(ok(cli(cluster, workdir, "kill", name, "--json")))
    assert got == {"name": name, "status": "dead", "killed": True}
    assert time.monotonic() - t < 20  # 40 one-second maps on 6 engines would take longer
    one_error(cli(cluster, workdir, "wait", name), f"job {name} failed: killed")
    # Killing it again, or a finished job, says what it is.
    assert ok(cli(cluster, workdir, "kill", name)) == f"{name}: killed\n"
    ok(cli(cluster, workdir, "purge", name))


def test_a_job_whose_driver_exited_can_be_killed(cluster: ProcCluster, workdir: Path) -> None:
    # A driver that dies (here: os._exit right after submitting) cannot obey; `wait`
    # says so and `kill` records the job dead itself instead of waiting in vain.
    script = (
        "import os, sys, time\n"
        "from dcli_jobs import Slow\n"
        f"job = Slow(master={cluster.address!r}).run()\n"
        "from sector.disco import runtime\n"
        "c = runtime.client(job.disco.master)\n"
        "while runtime.read_info(c, job.name) is None: time.sleep(0.1)\n"
        "print(job.name, flush=True)\n"
        "os._exit(0)\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", script], cwd=workdir, capture_output=True, text=True, timeout=60
    )
    name = p.stdout.strip()
    assert p.returncode == 0 and name, p.stderr
    one_error(cli(cluster, workdir, "wait", name), "its driver", "exited")
    listed = json.loads(ok(cli(cluster, workdir, "jobs", "--json")))["jobs"]
    assert [j["orphaned"] for j in listed if j["name"] == name] == [True]
    got = json.loads(ok(cli(cluster, workdir, "kill", name, "--json")))
    assert got == {"name": name, "status": "dead", "killed": True}
    ok(cli(cluster, workdir, "purge", name))


def test_errors_are_one_line(cluster: ProcCluster, workdir: Path) -> None:
    one_error(cli(cluster, workdir, "run", "dcli_jobs", "/x"), "MODULE:JOBCLASS")
    one_error(cli(cluster, workdir, "run", "no_such_mod:Job", "/x"), "cannot import no_such_mod")
    one_error(cli(cluster, workdir, "run", "dcli_jobs:NotAJob", "/x"), "not a sector.disco Job")
    one_error(cli(cluster, workdir, "run", "dcli_jobs:Nope", "/x", "--wait"), "dcli_jobs.Nope")
    for action in ("wait", "results", "kill", "purge"):
        one_error(cli(cluster, workdir, action, "Nobody@1-abc"), "unknown job Nobody@1-abc")
    # A job that fails: run --wait names the task's error in one line.
    r = cli(cluster, workdir, "run", "dcli_jobs:Boom", "raw://x", "--wait")
    assert r.stdout.startswith("Boom@")
    one_error(r, "failed", "ValueError", "no good")
    # A missing input fails the job, naming the path; usage errors exit 2.
    r = cli(cluster, workdir, "run", "dcli_jobs:WordCount", "/dcli/missing.txt", "--wait")
    one_error(r, "/dcli/missing.txt")
    assert cli(cluster, workdir, "run", "dcli_jobs:WordCount", "--param", "x").returncode == 2
