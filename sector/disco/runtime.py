"""The client side of Disco jobs on Sector: connections, the jobs this process runs,
and how one Disco job becomes one Sphere job.

Disco had a master that kept every job; Sector has none, and a Sphere job is driven by
the client that started it. So ``Job.run`` hands the job to a driver thread of this
process and returns; the driver

1. makes the job's directory ``/disco/<name>`` and its record ``.jobinfo`` (status
   "active"; a small JSON file any client can read),
2. resolves the inputs (``inputs.resolve``: a missing one fails the job, naming it)
   and stores ``raw://`` inputs as files under ``/disco/<name>/.input`` (every task is
   then a Sphere segment, on a node holding its input),
3. runs one Sphere job: the map (``tasks.map_udf``; or ``read_udf`` for a reduce-only
   job) over the inputs as whole files, into ``partitions`` buckets, with the classic
   reduce (``tasks.reduce_udf``) as the Sphere reduce of each bucket; its output is
   ``/disco/<name>/reduce`` (``/map`` for a job without a reduce),
4. records the outcome in ``.jobinfo``: "ready" with the result URLs, or "dead" with
   the error and the failing task's traceback.

``wait`` blocks on the driver (or, for a job of another process, polls its
``.jobinfo``); ``kill`` of a job of another process leaves a marker the driver obeys
(see ``KILL_POLL``). A ``Job`` object holds no connection: the clients are this module's,
one per cluster address, opened on first use and closed at exit.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import os
import secrets
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from sector.disco import inputs as inp
from sector.disco.error import DiscoError, JobError
from sector.disco.ship import pack, sector_files
from sector.disco.worker.classic import tasks
from sector.errors import JobFailed, NotFound, SectorError

__all__ = ["Run", "adopt_client", "client", "close_clients", "master_address", "submit"]

_lock = threading.Lock()
_clients: dict[str | None, Any] = {}
_runs: dict[str, Run] = {}


def master_address(master: Any) -> str | None:
    """The cluster address of a ``master`` argument: None (the usual discovery:
    SECTOR_CLUSTER, then the local cluster), ``host:port``, ``sector://host:port``."""
    if master is None:
        return None
    if not isinstance(master, str):
        master = getattr(master, "master", None)
        return master_address(master)
    for scheme in ("sector://", "disco://", "http://"):
        if master.startswith(scheme):
            master = master[len(scheme) :]
    return master.strip("/") or None


def client(master: str | None) -> Any:
    """This process's client of the cluster at ``master`` (None: the default one)."""
    with _lock:
        c = _clients.get(master)
        if c is None:
            from sector.client import connect

            try:
                c = _clients[master] = connect(master)
            except SectorError as exc:
                where = master or "the default cluster (SECTOR_CLUSTER or `sector up`)"
                raise DiscoError(f"cannot connect to {where}: {exc}") from None
        return c


def adopt_client(master: str | None, c: Any) -> None:
    """Use ``c`` (a sync client the caller opened, e.g. with its own credentials) for
    the cluster at ``master``; it is closed with the others."""
    with _lock:
        _clients[master] = c


@atexit.register
def close_clients() -> None:
    """Close this process's clients (they open again on next use)."""
    with _lock:
        for c in _clients.values():
            with contextlib.suppress(Exception):
                c.close()
        _clients.clear()


def job_dir(name: str) -> str:
    return f"{inp.ROOT}/{name}"


def new_name(prefix: str) -> str:
    """A unique job name from its prefix, as Disco's master made them."""
    clean = "".join(ch if ch.isprintable() and ch not in "/\\" else "_" for ch in prefix)
    return f"{clean or 'Job'}@{int(time.time() * 1000):x}-{secrets.token_hex(3)}"


@dataclass
class Run:
    """A job driven by this process."""

    name: str
    master: str | None
    has_map: bool
    has_reduce: bool
    inputs: list[Any]
    status: str = "active"  # active | ready | dead
    results: list[str] = field(default_factory=list)
    error: str | None = None
    traceback: str | None = None
    started: float = field(default_factory=time.time)
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (time, host, msg)
    done: threading.Event = field(default_factory=threading.Event)
    handle: Any = None  # the Sphere job, once started
    killed: bool = False
    thread: threading.Thread | None = None

    def event(self, msg: str) -> None:
        now = time.strftime("%Y/%m/%d %H:%M:%S")
        self.events.append((now, "client", f"{self.name}: {msg}"))

    def info(self) -> dict[str, Any]:
        p: dict[str, Any] = {}
        if self.handle is not None:
            with contextlib.suppress(Exception):
                p = self.handle.progress()
        tasks_ = [
            int(p.get("pending", 0)),
            int(p.get("running", 0)),
            int(p.get("done", 0)),
            int(p.get("failed_attempts", 0)),
        ]
        return {
            "name": self.name,
            "active": self.status,
            "timestamp": time.strftime("%Y/%m/%d %H:%M:%S", time.localtime(self.started)),
            "map": self.has_map,
            "reduce": self.has_reduce,
            "mapi": tasks_,
            "redi": [0, 0, 0, 0],
            "inputs": self.inputs,
            "results": list(self.results),
            "phase": p.get("phase", "starting" if self.status == "active" else self.status),
            "error": self.error,
            "traceback": self.traceback,
            "driver": {"host": os.uname().nodename, "pid": os.getpid()},
        }


def registered(name: str) -> Run | None:
    with _lock:
        return _runs.get(name)


def forget(name: str) -> None:
    with _lock:
        _runs.pop(name, None)


def submit(job: Any, worker: Any, jobargs: dict[str, Any]) -> str:
    """Start a job (resolved ``worker``) in the background; its unique name."""
    master = master_address(job.disco)
    name = new_name(str(worker.getitem("name", job, jobargs) or type(job).__name__))
    resolved = worker.resolve(job, jobargs)
    job_input = worker.getitem("input", job, jobargs, [])
    if (
        job_input is None
        or isinstance(job_input, str | bytes)
        or not hasattr(job_input, "__iter__")
    ):
        raise DiscoError(
            f"Job 'input' is not a list of input locations, or a list of such lists: {job_input!r}"
        )
    job_input = [list(i) if isinstance(i, list | tuple) else i for i in job_input]
    has_map, has_reduce = bool(resolved["map"]), bool(resolved["reduce"])
    if not has_map and not has_reduce:
        raise DiscoError("a job needs a map or a reduce function")
    nparts = int(resolved["partitions"] or 0)
    if nparts < 0 or nparts > 1 << 16:
        raise DiscoError(f"partitions must be from 0 to 65536, not {nparts}")
    meta = {"name": name, "master": master, "has_map": has_map, "merge": False}
    blob = pack(resolved, {**meta, "inputs": {}, "labels": {}})  # fails here if it cannot travel
    sector_files(resolved.get("required_files"))  # a bad sector:// URL fails here too
    run = Run(name, master, has_map, has_reduce, job_input)
    with _lock:
        _runs[name] = run
    run.event("submitted")
    run.thread = threading.Thread(
        target=_drive,
        args=(run, resolved, meta, blob, nparts),
        name=f"disco-{name}",
        daemon=True,
    )
    run.thread.start()
    return name


def _put_bytes(c: Any, data: bytes, path: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix="sector-disco-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        c.put(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def write_info(c: Any, info: dict[str, Any]) -> None:
    _put_bytes(c, json.dumps(info, default=str).encode(), f"{job_dir(info['name'])}/.jobinfo")


def read_info(c: Any, name: str) -> dict[str, Any] | None:
    try:
        return dict(json.loads(c.read(f"{job_dir(name)}/.jobinfo")))
    except NotFound:
        return None


def _drive(run: Run, worker: Any, meta: dict[str, Any], blob: bytes, nparts: int) -> None:
    c = None
    try:
        c = client(run.master)
        jdir = job_dir(run.name)
        c.mkdir(jdir, parents=True)
        write_info(c, run.info())
        found = inp.resolve(c, run.inputs, run.master)
        if not found:
            run.event("no inputs: no results")
            _finish(c, run, [])
            return
        paths, table, labels = _stage(c, run, found)
        merge = bool(worker["merge_partitions"])
        if run.has_map:
            nbuckets = 1 if merge or not nparts else nparts
            udf = tasks.map_udf
        else:
            found_labels = [i.label for i in found]
            partitioned = all(lb is not None for lb in found_labels) and not merge
            nbuckets = 1 + max(int(lb or 0) for lb in found_labels) if partitioned else 1
            labels = {p: lb for p, lb in labels.items()} if partitioned else {}
            udf = tasks.read_udf
        meta = {**meta, "merge": merge, "inputs": table, "labels": labels}
        blob = pack(worker, meta)
        out = f"{jdir}/reduce" if run.has_reduce else f"{jdir}/map"
        opts: dict[str, Any] = {"records": "file", "output": out, "buckets": nbuckets}
        required = sector_files(worker.get("required_files"))
        if required:
            opts["required_files"] = required  # fetched by the nodes (``ship``)
        if run.has_reduce:
            opts["reduce"] = functools.partial(tasks.reduce_udf, blob)
            opts["reduce_records"] = "stream"  # a partition larger than memory works
        if run.killed or kill_requested(c, run.name):
            raise _Killed()
        run.handle = c.sphere.run(functools.partial(udf, blob), paths, name=run.name, **opts)
        run.event(f"running {len(paths)} map task(s) into {nbuckets} partition(s)")
        while True:
            try:
                res = run.handle.wait(progress=False, timeout=KILL_POLL)
                break
            except TimeoutError:
                if kill_requested(c, run.name):
                    run.event("kill requested by another process")
                    run.killed = True
                    run.handle.cancel()
                    raise _Killed() from None
        files = sorted(f["path"] for f in res.get("files", []))
        _finish(c, run, [inp.url_of(p, run.master) for p in files])
    except BaseException as exc:
        _fail(c, run, exc)


def _stage(c: Any, run: Run, found: list[Any]) -> tuple[list[str], dict[str, Any], dict[str, Any]]:
    """The Sphere input paths (raw inputs stored as files), and per path its URL and
    whether it is raw data, and its partition label."""
    paths: list[str] = []
    table: dict[str, Any] = {}
    labels: dict[str, Any] = {}
    for i, item in enumerate(found):
        if item.raw is not None:
            path = f"{job_dir(run.name)}/.input/raw-{i:05d}"
            _put_bytes(c, item.raw.encode("utf-8"), path)
            table[path] = (item.url, True)
        else:
            path = item.path
            table.setdefault(path, (item.url, False))
            labels[path] = item.label
        paths.append(path)
    return paths, table, labels


def _finish(c: Any, run: Run, results: list[str]) -> None:
    run.results = results
    run.status = "ready"
    run.event(f"ready: {len(results)} result(s)")
    with contextlib.suppress(Exception):
        write_info(c, run.info())
    run.done.set()


def _fail(c: Any, run: Run, exc: BaseException) -> None:
    if run.killed or isinstance(exc, _Killed):
        run.error = "killed"
    elif isinstance(exc, JobFailed):
        tb = exc.data.get("traceback") or None
        run.error = str(exc)
        run.traceback = str(tb) if tb else None
    elif isinstance(exc, SectorError):  # DiscoError, DataError and Sector's own
        run.error = str(exc)
    else:
        run.error = f"{type(exc).__name__}: {exc}"
    run.status = "dead"
    run.event(f"dead: {run.error.splitlines()[0] if run.error else ''}")
    if c is not None:
        with contextlib.suppress(Exception):
            write_info(c, run.info())
    run.done.set()


class _Killed(Exception):
    pass


def wait(name: str, master: str | None, timeout: float | None, show: Any, poll: float) -> list[str]:
    """The results of a job once it is ready; ``JobError`` if it failed or ``timeout``
    seconds pass first. ``show``: its events go to stderr as they happen."""
    deadline = None if timeout is None else time.monotonic() + timeout
    run = registered(name)
    if run is not None:
        shown = 0
        while not run.done.wait(0.2 if show else _left(deadline, 3600)):
            if show:
                shown = _show(run, shown)
            if deadline is not None and time.monotonic() >= deadline:
                raise JobError(name, "Timeout")
        if show:
            _show(run, shown)
        if run.status != "ready":
            raise JobError(name, _message(run.error, run.traceback), run.traceback)
        return list(run.results)
    c = client(master)
    while True:
        info = read_info(c, name)
        if info is None:
            raise JobError(name, "unknown job")
        if info["active"] == "ready":
            return list(info["results"])
        if info["active"] != "active":
            tb = info.get("traceback")
            raise JobError(name, _message(info.get("error"), tb), tb)
        if driver_gone(info):
            raise JobError(name, f"its driver ({_who(info)}) exited before the job ended")
        if deadline is not None and time.monotonic() >= deadline:
            raise JobError(name, "Timeout")
        time.sleep(min(poll, _left(deadline, poll)))


def _left(deadline: float | None, default: float) -> float:
    return default if deadline is None else max(0.0, deadline - time.monotonic())


def _message(error: str | None, tb: str | None) -> str:
    msg = error or "Status dead"
    if tb and tb not in msg:
        msg = f"{msg}\n{tb}"
    return msg


def _show(run: Run, shown: int) -> int:
    events = list(run.events)
    for when, _host, msg in events[shown:]:
        print(f"{when.split()[-1]} {msg}", file=sys.stderr, flush=True)
    return len(events)


# Killing a job of another process. A job is driven by the process that started it
# (there is no master to ask), so ``kill`` cannot stop it directly: it leaves a marker
# file, ``/disco/<name>/.kill``, which the driver looks for every ``KILL_POLL`` seconds
# while the Sphere job runs (and once before starting it); the driver then cancels its
# Sphere job and records the job "dead" with the error "killed", and ``kill`` waits
# for that record. A separate file, not a flag in ``.jobinfo``: the driver rewrites
# ``.jobinfo`` whole, and a flag written there by another process could be lost.
# A driver that has exited (its process is gone from this host) can obey nothing:
# ``kill`` then records the job dead itself. A driver on another host that does not
# answer within the timeout is reported, not guessed at.
KILL_POLL = 1.0  # seconds between the driver's looks at the kill marker
KILL_WAIT = 30.0  # seconds ``kill`` waits for the driver to obey


def _kill_path(name: str) -> str:
    return f"{job_dir(name)}/.kill"


def kill_requested(c: Any, name: str) -> bool:
    """Has some process asked (``kill``) that this job stop?"""
    try:
        c.stat(_kill_path(name))
    except NotFound:
        return False
    return True


def driver_gone(info: dict[str, Any]) -> bool:
    """Is the job's driver a process of this host that no longer runs? (False when it
    runs, or when it is on another host: that cannot be seen from here.)"""
    drv = info.get("driver") or {}
    if drv.get("host") != os.uname().nodename or not isinstance(drv.get("pid"), int):
        return False
    pid = int(drv["pid"])
    if pid == os.getpid():
        return registered(str(info.get("name"))) is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:  # a zombie no one has reaped yet has exited too
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def kill(name: str, master: str | None, timeout: float = KILL_WAIT) -> dict[str, Any]:
    """Stop a job; its record afterwards. A job of this process is cancelled at once;
    a job of another process is asked to stop (see ``KILL_POLL``) and this waits up to
    ``timeout`` seconds for it to be dead. A job already done is left as it is.

    Raises ``DiscoError`` for an unknown job, or a driver that did not obey in time."""
    run = registered(name)
    if run is not None:
        if not run.done.is_set():
            run.killed = True
            if run.handle is not None:
                with contextlib.suppress(Exception):
                    run.handle.cancel()
            run.done.wait(timeout)
        return run.info()
    c = client(master)
    info = read_info(c, name)
    if info is None:
        raise DiscoError(f"unknown job {name}")
    if info["active"] != "active":
        return info
    _put_bytes(c, json.dumps({"by": _me(), "time": time.time()}).encode(), _kill_path(name))
    deadline = time.monotonic() + timeout
    while True:
        info = read_info(c, name)
        if info is None:  # purged meanwhile
            raise DiscoError(f"unknown job {name}")
        if info["active"] != "active":
            return info
        if driver_gone(info):
            drv = info.get("driver") or {}
            info = {
                **info,
                "active": "dead",
                "error": f"killed (its driver, pid {drv.get('pid')} on {drv.get('host')}, "
                "had exited)",
            }
            write_info(c, info)
            return info
        if time.monotonic() >= deadline:
            raise DiscoError(
                f"job {name}: kill requested, but its driver ({_who(info)}) has not "
                f"stopped it within {timeout:g} s"
            )
        time.sleep(min(0.2, _left(deadline, 0.2)))


def _me() -> dict[str, Any]:
    return {"host": os.uname().nodename, "pid": os.getpid()}


def _who(info: dict[str, Any]) -> str:
    drv = info.get("driver") or {}
    return f"pid {drv.get('pid')} on {drv.get('host')}"


def purge(
    name: str, master: str | None, timeout: float = KILL_WAIT, missing_ok: bool = True
) -> None:
    """Kill the job if it runs, and delete its directory (results and record).

    Raises ``DiscoError`` for a driver that will not stop, and for an unknown job
    unless ``missing_ok``."""
    run = registered(name)
    c = client(master)
    if run is not None:
        kill(name, master, timeout)
        if run.thread is not None:
            run.thread.join(timeout)
    else:
        info = read_info(c, name)
        if info is not None and info["active"] == "active":
            kill(name, master, timeout)
        elif info is None and not missing_ok and not _exists(c, job_dir(name)):
            raise DiscoError(f"unknown job {name}")
    with contextlib.suppress(NotFound):
        c.rm(job_dir(name), recursive=True)
    forget(name)


def _exists(c: Any, path: str) -> bool:
    try:
        c.stat(path)
    except NotFound:
        return False
    return True


def jobinfo(name: str, master: str | None) -> dict[str, Any]:
    run = registered(name)
    if run is not None:
        return run.info()
    info = read_info(client(master), name)
    if info is None:
        raise DiscoError(f"unknown job {name}")
    return info


def statuses(master: str | None) -> list[dict[str, Any]]:
    """Every job under /disco, newest first: ``name``, ``status`` ("active", "ready",
    "dead"; "unknown" for a directory without a record), ``timestamp``, ``results``
    (how many), ``driver`` and ``orphaned`` (active, but its driver has exited)."""
    c = client(master)
    out = []
    for name in jobs(master):
        run = registered(name)
        info = run.info() if run is not None else read_info(c, name)
        if info is None:
            out.append(
                {
                    "name": name,
                    "status": "unknown",
                    "timestamp": None,
                    "results": 0,
                    "driver": None,
                    "orphaned": False,
                }
            )
            continue
        out.append(
            {
                "name": name,
                "status": info["active"],
                "timestamp": info.get("timestamp"),
                "results": len(info.get("results") or []),
                "driver": info.get("driver"),
                "orphaned": info["active"] == "active" and driver_gone(info),
            }
        )
    return out


def jobs(master: str | None) -> list[str]:
    """Names of the jobs with a directory under /disco, newest first."""
    try:
        entries = client(master).ls(inp.ROOT)
    except NotFound:
        return []
    names = [e["name"] for e in entries if e["type"] == "dir"]
    return sorted(names, key=lambda n: n.rsplit("@", 1)[-1], reverse=True)
