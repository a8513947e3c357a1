"""`sector disco run|jobs|wait|results|kill|purge`: Disco's `disco` command on Sector.

``disco run MODULE:JOBCLASS [INPUT...]`` imports a ``sector.disco`` ``Job`` subclass
from a module (the current directory is on the path, as for ``python -m``) and runs it.
Sector has no master to keep a job once the command returns: a job is driven by a
process (``sector.disco.runtime``). So without ``--wait`` the command starts a
*detached driver* -- the same command with ``--wait`` in a new session, its output to
nowhere once it has said the job's name -- prints the name and returns; the driver
runs the job to its end and exits. With ``--wait`` the command drives the job itself
and prints its records.

The other commands act on jobs by name, through their records under ``/disco``, from
any process: ``jobs`` lists them, ``wait`` waits for one and prints its result URLs,
``results`` prints a ready job's records, ``kill`` asks a job's driver to stop it (and
waits until it has; see ``runtime.KILL_POLL``), ``purge`` kills it if it runs and
deletes its results and record.

JSON shapes (``--json``; every field always present):

    run         {"name": str, "status": "active"}               (without --wait)
    run --wait  {"name", "status": "ready", "results": [url], "records": [[key, value]]}
    jobs        {"jobs": [{"name", "status", "timestamp", "results": int,
                           "driver": {"host", "pid"} | null, "orphaned": bool}]}
    wait        {"name", "status": "ready", "results": [url]}
    results     {"name", "status": "ready", "results": [url], "records": [[key, value]]}
    kill        {"name", "status": "dead" | "ready", "killed": bool}
    purge       {"name", "purged": true}

Records print as ``key<TAB>value``; in JSON, bytes are decoded as UTF-8 (invalid bytes
as ``\\xNN`` escapes), and values that are not JSON types are given as their ``repr``.
A job that failed, an unknown job, a bad ``MODULE:JOBCLASS``: one error line, exit 1.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from sector.cli import output
from sector.cli.args import arg_type, import_named
from sector.errors import UsageError

DETACHED = "--detached-driver"  # the flag of the driver process `run` starts


def add_parsers(cmd: Callable[[str, str], argparse.ArgumentParser], common: Any) -> None:
    s = cmd("disco", "Disco jobs (sector.disco) on the cluster: run, list, wait, kill")
    sub = s.add_subparsers(dest="action", metavar="ACTION", required=True)

    r = sub.add_parser(
        "run",
        help="run a Job subclass from a module; print the job's name",
        description="run a Job subclass from a module; print the job's name",
        parents=[common],
    )
    r.add_argument("jobclass", metavar="MODULE:JOBCLASS")
    r.add_argument(
        "input",
        nargs="*",
        metavar="INPUT",
        help="Sector paths, directories, globs, sector:// or raw:// URLs (default: the "
        "class's own input)",
    )
    r.add_argument("--name", default=None, help="prefix of the job's name (default: the class)")
    r.add_argument(
        "--partitions", type=arg_type(_partitions), default=None, metavar="P", help="reduce tasks"
    )
    r.add_argument(
        "--param",
        action="append",
        type=arg_type(_param),
        default=[],
        metavar="K=V",
        help="a job parameter (params.K); V is JSON if it parses, else a string",
    )
    r.add_argument("--wait", action="store_true", help="wait for the job and print its records")
    r.add_argument(DETACHED, action="store_true", help=argparse.SUPPRESS)

    sub.add_parser("jobs", help="the jobs under /disco and their status", parents=[common])

    w = sub.add_parser("wait", help="wait for a job; print its result URLs", parents=[common])
    w.add_argument("job", metavar="JOBNAME")
    w.add_argument(
        "--timeout", type=float, default=None, metavar="SECONDS", help="give up (exit 1) after"
    )
    res = sub.add_parser("results", help="print a ready job's records", parents=[common])
    res.add_argument("job", metavar="JOBNAME")
    k = sub.add_parser("kill", help="stop a job (whichever process drives it)", parents=[common])
    k.add_argument("job", metavar="JOBNAME")
    k.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long to wait for the job's driver to stop it (default 30)",
    )
    p = sub.add_parser("purge", help="kill a job; delete its results and record", parents=[common])
    p.add_argument("job", metavar="JOBNAME")


def _partitions(text: str) -> int:
    n = int(text) if text.isdigit() else -1
    if n < 0:
        raise ValueError(f"must be a number of partitions (0: not partitioned), not {text!r}")
    return n


def _param(text: str) -> tuple[str, Any]:
    k, sep, v = text.partition("=")
    if not sep or not k.isidentifier():
        raise ValueError(f"expected KEY=VALUE with KEY a name, not {text!r}")
    try:
        return k, json.loads(v)
    except ValueError:
        return k, v


def load_job_class(spec: str) -> type:
    """The ``Job`` subclass ``MODULE:JOBCLASS`` names (``UsageError`` otherwise)."""
    from sector.disco.core import Job

    mod_name, cls_name, cls = import_named(spec, "job", "JOBCLASS")
    if not (isinstance(cls, type) and issubclass(cls, Job)):
        raise UsageError(f"{mod_name}.{cls_name} is not a sector.disco Job class")
    return cls


def run(c: Any, args: argparse.Namespace) -> None:
    from sector.disco import runtime

    # The job API opens its own clients by address; give it this one (the CLI's
    # credentials), under the key the Disco(...) of these commands uses.
    master = runtime.master_address(args.cluster)
    runtime.adopt_client(master, c)
    act = args.action
    if act == "run":
        if args.wait or args.detached_driver:
            _run_here(args, master)
        else:
            _run_detached(args)
    elif act == "jobs":
        _jobs(master, args)
    elif act == "wait":
        urls = _wait(args.job, master, args.timeout)
        if args.json:
            output.emit_json({"name": args.job, "status": "ready", "results": urls})
        else:
            for u in urls:
                output.echo(u)
    elif act == "results":
        info = _info(args.job, master)
        if info["active"] == "active":
            raise UsageError(f"job {args.job} is still active (`sector disco wait {args.job}`)")
        urls = _wait(args.job, master, 0)
        _print_records(args.job, urls, master, args.json)
    elif act == "kill":
        info = runtime.kill(args.job, master, args.timeout)
        killed = info["active"] == "dead" and str(info.get("error") or "").startswith("killed")
        if args.json:
            output.emit_json({"name": args.job, "status": info["active"], "killed": killed})
        else:
            output.echo(f"{args.job}: {'killed' if killed else info['active']}")
    elif act == "purge":
        runtime.purge(args.job, master, missing_ok=False)
        if args.json:
            output.emit_json({"name": args.job, "purged": True})
        else:
            output.echo(f"purged {args.job}")


def _info(name: str, master: str | None) -> dict[str, Any]:
    from sector.disco import runtime
    from sector.disco.error import DiscoError

    try:
        return runtime.jobinfo(name, master)
    except DiscoError:
        raise UsageError(f"unknown job {name}") from None


def _wait(name: str, master: str | None, timeout: float | None) -> list[str]:
    """The job's result URLs; a failure is one line (the first of the task's error)."""
    from sector.disco import runtime
    from sector.disco.error import DiscoError, JobError

    try:
        return runtime.wait(name, master, timeout, None, 0.5)
    except JobError as exc:
        first = exc.message.strip().splitlines()[0] if exc.message.strip() else "dead"
        if first == "unknown job":
            raise UsageError(f"unknown job {name}") from None
        if first == "Timeout":
            raise DiscoError(f"job {name} still active after {timeout:g} s") from None
        raise DiscoError(f"job {name} failed: {first}") from None


def _make_job(args: argparse.Namespace, master: str | None) -> tuple[Any, dict[str, Any]]:
    from sector.disco.worker import Params

    cls = load_job_class(args.jobclass)
    job = cls(name=args.name, master=master)
    jobargs: dict[str, Any] = {}
    if args.input:
        jobargs["input"] = list(args.input)
    if args.partitions is not None:
        jobargs["partitions"] = args.partitions
    if args.param:
        base = job.worker.getitem("params", job, {})
        fields = dict(vars(base)) if isinstance(base, Params) else {}
        jobargs["params"] = Params(**{**fields, **dict(args.param)})
    return job, jobargs


def _run_here(args: argparse.Namespace, master: str | None) -> None:
    job, jobargs = _make_job(args, master)
    job.run(**jobargs)
    if args.detached_driver:
        # Tell the parent the name, then speak no more: its pipes are its own.
        sys.stdout.write(job.name + "\n")
        sys.stdout.flush()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        from contextlib import suppress

        from sector.disco import runtime

        with suppress(Exception):  # the outcome is in the job's record
            runtime.wait(job.name, master, None, None, 1.0)
        return
    if not args.json:
        output.echo(job.name)
        output.flush_stdout()
    urls = _wait(job.name, master, None)
    _print_records(job.name, urls, master, args.json)


def _run_detached(args: argparse.Namespace) -> None:
    """Start a driver process for the job; print its name once it runs."""
    load_job_class(args.jobclass)  # a bad MODULE:JOBCLASS fails here, in the foreground
    argv = [a for a in args.argv if a != "--json"]
    if args.cluster and "--cluster" not in argv:
        argv = ["--cluster", args.cluster, *argv]
    argv.append(DETACHED)
    proc = subprocess.Popen(
        [sys.executable, "-m", "sector", *argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # Ctrl-C at the terminal does not reach it
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    name = proc.stdout.readline().strip()
    if not name:
        err = proc.stderr.read().strip().splitlines()
        proc.wait()
        last = err[-1] if err else f"the job's driver exited ({proc.returncode})"
        raise UsageError(last.removeprefix("sector: error: "))
    proc.stdout.close()
    proc.stderr.close()
    if args.json:
        output.emit_json({"name": name, "status": "active"})
    else:
        output.echo(name)


def _jobs(master: str | None, args: argparse.Namespace) -> None:
    from sector.disco import runtime

    rows = runtime.statuses(master)
    if args.json:
        output.emit_json({"jobs": rows})
        return
    table = [("NAME", "STATUS", "STARTED", "RESULTS")]
    for r in rows:
        status = r["status"] + (" (driver gone)" if r["orphaned"] else "")
        table.append((r["name"], status, str(r["timestamp"] or "-"), str(r["results"])))
    for line in output.columns(table, right=frozenset({3})):
        output.echo(line)


def _print_records(name: str, urls: list[str], master: str | None, as_json: bool) -> None:
    from sector.disco.core import result_iterator
    from sector.disco.util import kvify

    records = (kvify(r) for r in result_iterator(urls, ddfs=master))
    if as_json:
        out = [[_jsonable(k), _jsonable(v)] for k, v in records]
        output.emit_json({"name": name, "status": "ready", "results": urls, "records": out})
        return
    for k, v in records:
        output.echo(f"{_text(k)}\t{_text(v)}")


def _text(x: Any) -> str:
    if isinstance(x, bytes):
        return x.decode("utf-8", "backslashreplace")
    return x if isinstance(x, str) else repr(x)


def _jsonable(x: Any) -> Any:
    if isinstance(x, bytes):
        return x.decode("utf-8", "backslashreplace")
    if x is None or isinstance(x, str | int | float | bool):
        return x
    if isinstance(x, list | tuple):
        return [_jsonable(i) for i in x]
    if isinstance(x, dict) and all(isinstance(k, str) for k in x):
        return {k: _jsonable(v) for k, v in x.items()}
    return repr(x)
