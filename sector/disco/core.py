"""``disco.core`` on Sector: ``Disco`` (jobs by name), ``result_iterator``, and the
names programs import from here (``Job``, ``JobError``).

``Disco(master=None)`` stands for a Sector cluster: ``master`` is its address
(``host:port`` or ``sector://host:port``), or None for the usual discovery
(SECTOR_CLUSTER, then the local cluster of ``sector up``). It holds no connection: the
clients are shared by the process (``runtime``). Its methods take a job's name:
``wait``, ``results``, ``jobinfo``, ``kill``, ``purge``, ``new_job``.

``result_iterator(results)`` yields the records of a job's results, reading them from
Sector in ranges (a result file need not fit in memory).
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from typing import Any

from sector.disco import inputs as inp
from sector.disco import runtime, util
from sector.disco.error import DataError, DiscoError, JobError
from sector.disco.worker.classic import func
from sector.disco.worker.classic.worker import Worker
from sector.disco.worker.task_io import StreamCombiner, chain_reader
from sector.errors import NotFound, SectorError

__all__ = ["Disco", "DiscoError", "Job", "JobError", "result_iterator"]


class Job:
    """A Disco job (see ``sector.disco.job``)."""

    Worker = Worker

    def __init__(
        self, name: str | None = None, master: Any = None, worker: Any = None, settings: Any = None
    ) -> None:
        self.name = name or type(self).__name__
        self.disco = master if isinstance(master, Disco) else Disco(master)
        self.worker = worker or self.Worker()
        self.settings = settings or {}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

    def run(self, **jobargs: Any) -> Job:
        """Start the job with the classic worker's settings as keywords (``input``,
        ``map``, ``reduce``, ``partitions``, ...); returns the job, now named uniquely."""
        self.name = runtime.submit(self, self.worker, jobargs)
        return self

    # Disco's proxy functions: Disco's methods for this job.
    def wait(
        self,
        poll_interval: float = 2,
        timeout: float | None = None,
        clean: bool = False,
        show: Any = None,
    ) -> list[str]:
        return self.disco.wait(self.name, poll_interval, timeout, clean, show)

    def results(self, timeout: int = 2000) -> Any:
        return self.disco.results(self.name, timeout)

    def jobinfo(self) -> dict[str, Any]:
        return self.disco.jobinfo(self.name)

    def kill(self) -> None:
        self.disco.kill(self.name)

    def purge(self) -> None:
        self.disco.purge(self.name)

    def clean(self) -> None:
        self.disco.clean(self.name)

    def events(self, offset: int = 0) -> Any:
        return self.disco.events(self.name, offset)


class Disco:
    """A Sector cluster, as Disco's master was to Disco programs (see the module doc)."""

    def __init__(self, master: Any = None, settings: Any = None, proxy: Any = None) -> None:
        self.master = runtime.master_address(master)
        self.settings = settings or {}

    def __repr__(self) -> str:
        return f"Disco master at {self.master or 'the default Sector cluster'}"

    def __getstate__(self) -> dict[str, Any]:
        return {"master": self.master, "settings": {}}

    def new_job(self, name: str, **jobargs: Any) -> Job:
        """Start a new job (``Job(name, master=self).run(**jobargs)``)."""
        return Job(name=name, master=self).run(**jobargs)

    def wait(
        self,
        jobname: str,
        poll_interval: float = 2,
        timeout: float | None = None,
        clean: bool = False,
        show: Any = None,
    ) -> list[str]:
        """Block until the job is done; its result URLs. ``JobError`` if it failed (with
        the failing task's message and traceback) or ``timeout`` seconds passed.
        ``show``: print the job's events to stderr meanwhile."""
        return runtime.wait(jobname, self.master, timeout, show, poll_interval)

    def results(self, jobspec: Any, timeout: int = 2000) -> Any:
        """``(status, results)`` of one job (a ``Job`` or a name) -- status "active",
        "ready", "dead" or "unknown job" -- after waiting up to ``timeout`` ms for it to
        finish; for a list of jobs, ``(others, active)``: lists of ``(name, (status,
        results))``, waiting until one is done or the timeout passes."""
        single = isinstance(jobspec, Job | str)
        names = [_name(j) for j in util.iterify(jobspec)]
        out = [(n, self._status(n, timeout / 1000.0 / max(1, len(names)))) for n in names]
        if single:
            return out[0][1]
        others = [x for x in out if x[1][0] != "active"]
        active = [x for x in out if x[1][0] == "active"]
        return others, active

    def _status(self, name: str, timeout: float) -> tuple[str, list[str]]:
        try:
            results = runtime.wait(name, self.master, timeout, None, 0.2)
        except JobError as exc:
            if exc.message == "Timeout":
                return "active", []
            if exc.message == "unknown job":
                return "unknown job", []
            return "dead", []
        return "ready", results

    def jobinfo(self, jobname: str) -> dict[str, Any]:
        """The job's record: ``active`` ("active", "ready" or "dead"), ``results``,
        ``inputs``, ``mapi`` (tasks pending, running, done, failed), ``error``..."""
        return runtime.jobinfo(jobname, self.master)

    def kill(self, jobname: str) -> None:
        """Stop the job. A job another process drives is asked to stop (a marker its
        driver looks for every second) and this waits up to 30 s for it to be dead."""
        runtime.kill(jobname, self.master)

    def purge(self, jobname: str) -> None:
        """Stop the job if it runs and delete its results and record."""
        runtime.purge(jobname, self.master)

    def clean(self, jobname: str) -> None:
        """Forget the job in this process (its results stay until purged)."""
        runtime.forget(jobname)

    def joblist(self) -> list[str]:
        """Names of the jobs that have results or records on the cluster."""
        return runtime.jobs(self.master)

    def events(self, jobname: str, offset: int = 0) -> Iterator[tuple[int, Any]]:
        """The job's events so far (jobs of this process), as Disco gave them:
        ``(offset, (time, host, message))``."""
        run = runtime.registered(jobname)
        events = list(run.events) if run is not None else []
        yield from enumerate(events[offset:], start=offset + 1)

    def result_iterator(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        kwargs["ddfs"] = self.master
        return result_iterator(*args, **kwargs)


def _name(job: Any) -> str:
    if isinstance(job, Job):
        return job.name
    if isinstance(job, str):
        return job
    return str(job[0])


def result_iterator(
    urls: Any,
    reader: Any = chain_reader,
    input_stream: Sequence[Any] = (func.map_input_stream,),
    notifier: Any = None,
    params: Any = None,
    ddfs: Any = None,
) -> Iterator[Any]:
    """The records of ``urls`` (a job's results, or any inputs), read through
    ``input_stream`` and ``reader`` (``chain_reader``: the records of a job).

    ``ddfs``: the cluster to read from when a URL does not name one."""
    default = runtime.master_address(ddfs)
    streams = [*input_stream, *([reader] if reader else [])]
    for item in util.iterify(urls):
        replicas = [item] if isinstance(item, str) else list(item)
        if notifier is not None:
            notifier(replicas)
        yield from _read_one(replicas, streams, params, default)


def _read_one(
    replicas: list[str], streams: list[Any], params: Any, default: str | None
) -> Iterator[Any]:
    errors = []
    for url in replicas:
        try:
            fd, size = _open(url, default)
        except (DataError, SectorError) as exc:
            errors.append(f"{url}: {exc}")
            continue
        combined = StreamCombiner(url, streams, params, fd=fd, size=size)
        try:
            yield from combined
        finally:
            combined.close()
        return
    raise DataError("Exhausted all available replicas: " + "; ".join(errors), replicas)


def _open(url: str, default: str | None) -> tuple[Any, int]:
    if url.startswith("raw://"):
        text = url[len("raw://") :]
        return io.StringIO(text), len(text)
    path = inp.to_path(url)
    assert path is not None
    master = default
    if url.startswith("sector://") and not url.startswith("sector:///"):
        master = runtime.master_address(url.split("/")[2])
    c = runtime.client(master)
    try:
        size = int(c.stat(path)["size"])
        return c.open(path), size
    except NotFound:
        raise DataError("no such file", url) from None
