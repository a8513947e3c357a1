"""``disco.job`` on Sector: ``Job``, and ``JobChain`` (jobs that feed each other).

    job = Job().run(input=["/data/text"], map=fun_map, reduce=fun_reduce)
    results = job.wait()

``Job(name=None, master=None, worker=None, settings=None)``: ``name`` is a prefix of the
unique name ``run()`` gives the job (default: the class name), ``master`` a cluster
address or a ``Disco`` (default: SECTOR_CLUSTER, then the local cluster). A ``Job``
subclass may set any setting of the classic worker (``map``, ``reduce``,
``partitions``, ``params``, ...) as a class attribute; ``run()``'s keywords win over
them. ``run()`` returns at once with the job running; ``wait()``, ``results()``,
``jobinfo()``, ``kill()`` and ``purge()`` are ``Disco``'s, for this job.

``Job`` is defined in ``core`` (beside ``Disco``, which it uses) and is the same
class here. A ``Job`` holds no connection (only its cluster's address), so a job instance -- and its
bound methods, which are often its map and reduce -- travel to the nodes as they are.
"""

from __future__ import annotations

import time
from typing import Any

from sector.disco import util
from sector.disco.core import Job
from sector.disco.error import JobError

__all__ = ["Job", "JobChain"]


class SimpleJob(Job):
    """Disco's simple worker is not available on Sector: use the classic ``Job``."""

    def run(self, **jobargs: Any) -> Job:
        raise NotImplementedError("SimpleJob (Disco's simple worker) is not supported on Sector")


class JobChain(dict):
    """Jobs and their inputs, ``{job: input}``, where an input may name other jobs of
    the chain (their results become its input): ``JobChain({a: [...], b: a}).wait()``
    runs each job once the jobs it reads are ready."""

    def wait(self, poll_interval: float = 0.2) -> JobChain:
        while sum(self.walk()) < len(self):
            time.sleep(poll_interval)
        return self

    def walk(self) -> Any:
        for job in self:
            status, _results = _status(job)
            if status == "unknown job":
                inputs = list(self.inputs(job))
                if not any(i is None for i in inputs):
                    job.run(input=util.chainify(inputs))
            elif status == "ready":
                yield 1
            elif status != "active":
                job.wait()  # raises the job's error
                raise JobError(job, f"Status {status}")

    def inputs(self, job: Any) -> Any:
        for item in util.iterify(self[job]):
            if isinstance(item, Job):
                status, results = _status(item)
                if status in ("unknown job", "active"):
                    yield None
                elif status == "ready":
                    yield results
                else:
                    item.wait()
                    raise JobError(item, f"Status {status}")
            else:
                yield [item]

    def purge(self) -> None:
        for job in self:
            job.purge()


def _status(job: Job) -> tuple[str, list[str]]:
    from sector.disco import runtime

    if runtime.registered(job.name) is None and "@" not in job.name:
        return "unknown job", []
    return job.results(timeout=0)
