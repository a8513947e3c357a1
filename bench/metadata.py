"""Metadata throughput and lookup latency under concurrent clients.

    python bench/metadata.py [--nodes 5] [--clients 4] [--inflight 1,32] [--seconds 5]

A local cluster of ``--nodes`` node processes (``ProcCluster``, metadata replicated on
3 nodes) and ``--clients`` client *processes* (multiprocessing; client k enters through
node k mod N, since there is no central server to enter through). Every phase runs all
clients at once for ``--seconds`` (a barrier starts them together), each client in its
own directory ``/bench-<run>/c<k>`` spread over ``--dirs`` subdirectories ``s<j>``, so
that the figures measure the ring and the stores rather than contention on one parent
directory, and so that the records looked up later live on many different owners:

    mkdir        creates of distinct, new directories            (goal >= 2,000 /s)
    create       puts of 4 KiB files (FILE_BYTES; one fs.put_small
                 call to the path's owner, which writes the R
                 copies and records the file)                    (goal >= 2,000 /s)
    stat         stat of a random entry among all this client
                 has made so far (its subdirectories and every
                 directory and file created, in every mode):
                 thousands of paths, records on every owner      (goal >= 10,000 /s)
    meta.op get  the routed owner lookup behind a stat, of the same spread of paths,
                 called on the entry node directly: the ring routing and record read
                 without the fs layer

The phases run once per ``--inflight`` value (default ``1,32``), one table each:

    1            each client process makes one call at a time on the sync client
                 (``sector.connect``): what one user's script sees, latency-bound
    N > 1        each client process drives ONE ``sector.AsyncClient`` from N
                 coroutines (``asyncio.gather``), so N calls are in flight per
                 process: what the cluster can serve to a high-throughput client

Latency: every call is timed; p50/p99 are given for each loaded phase (under load the
figure includes the wait behind the other calls in flight) and for an unloaded pass
(one sync client, one call at a time, over a sample of the paths created), which is
the latency of a single lookup. Results: rich tables and ``bench/results/metadata.json``.

Errors are counted (a column, and each kind listed under the tables), not fatal.

Everything shares this machine's cores: the nodes, the clients and the benchmark. On a
2-core box the figures are a floor for what the same code does spread over hosts. The
``cpu`` column says where the cores went during each phase: cores used by the node
processes + by the client processes / cores busy on the whole machine (the difference
is other work on the machine, which the figures then do not get).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import multiprocessing as mp
import os
import random
import shutil
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import _etcd
from _common import count_error, cpu_seconds, machine, percentile, timed_async, write_result
from rich.console import Console
from rich.table import Table

import sector
from sector.errors import SectorError
from sector.testing.cluster import ProcCluster

GOALS = {"mkdir": 2000.0, "create": 2000.0, "stat": 10000.0}
PHASES = ("mkdir", "create", "stat", "meta.op get")
FILE_BYTES = 4096  # a created file's size: the small file
SAMPLE = 250  # paths per client handed back for the unloaded latency pass


# -- the client processes -----------------------------------------------------------


def _count(errors: dict[str, int], exc: SectorError) -> None:
    count_error(errors, exc)


def _timed_sync(
    op: Callable[[str, int], None], seconds: float, tag: str, barrier: Any
) -> dict[str, Any]:
    """One call at a time on the sync client for ``seconds``: one user's script."""
    lat: list[float] = []
    errors: dict[str, int] = {}
    barrier.wait(timeout=120)
    cpu0 = time.process_time()
    start = time.perf_counter()
    deadline = start + seconds
    n = 0
    while (t0 := time.perf_counter()) < deadline:
        try:
            op(f"{tag}{n}", n)
        except SectorError as exc:
            _count(errors, exc)
        lat.append(time.perf_counter() - t0)
        n += 1
    return {
        "ops": n,
        "elapsed": time.perf_counter() - start,
        "cpu_s": time.process_time() - cpu0,
        "lat": lat,
        "errors": errors,
    }


async def _timed_async(
    op: Callable[[str, int], Awaitable[Any]],
    seconds: float,
    inflight: int,
    tag: str,
    barrier: Any,
) -> dict[str, Any]:
    """``inflight`` coroutines on one AsyncClient for ``seconds``: N calls in flight."""
    return await timed_async(op, seconds, inflight, tag, barrier, (SectorError,))


def _client(
    k: int,
    entry: str,
    dirs: list[str],
    scratch: str,
    cmds: Any,
    results: Any,
    barrier: Any,
) -> None:
    """One client process: runs each phase it is told to, in the mode it is told to."""
    rng = random.Random(k)
    small = Path(scratch) / f"small-{k}"
    small.write_bytes(os.urandom(FILE_BYTES))
    # Every path this client has made (its subdirectories to begin with): the lookups
    # pick from all of them, so they hit records on every owner, not one hot record.
    made: list[str] = list(dirs)
    loop = asyncio.new_event_loop()
    sync_c: sector.Client | None = None
    aio_c: sector.AsyncClient | None = None

    def target(name: str, i: int, kind: str) -> str:
        return f"{dirs[i % len(dirs)]}/{kind}{name}"

    # -- one call at a time: the sync client

    def s_mkdir(name: str, i: int) -> None:
        assert sync_c is not None
        p = target(name, i, "d")
        sync_c.mkdir(p)
        made.append(p)

    def s_create(name: str, i: int) -> None:
        assert sync_c is not None
        p = target(name, i, "f")
        sync_c.put(small, p)
        made.append(p)

    def s_stat(name: str, i: int) -> None:
        assert sync_c is not None
        sync_c.stat(rng.choice(made))

    def s_meta_get(name: str, i: int) -> None:
        assert sync_c is not None
        args = {"path": rng.choice(made), "op": "get", "args": {}}
        sync_c._run(sync_c._aio.pool.call(entry, "meta.op", args))

    # -- N in flight: coroutines on one AsyncClient

    async def a_mkdir(name: str, i: int) -> None:
        assert aio_c is not None
        p = target(name, i, "d")
        await aio_c.mkdir(p)
        made.append(p)

    async def a_create(name: str, i: int) -> None:
        assert aio_c is not None
        p = target(name, i, "f")
        await aio_c.put(small, p)
        made.append(p)

    async def a_stat(name: str, i: int) -> None:
        assert aio_c is not None
        await aio_c.stat(rng.choice(made))

    async def a_meta_get(name: str, i: int) -> None:
        assert aio_c is not None
        args = {"path": rng.choice(made), "op": "get", "args": {}}
        await aio_c.pool.call(entry, "meta.op", args)

    sync_ops: dict[str, Callable[[str, int], None]] = {
        "mkdir": s_mkdir,
        "create": s_create,
        "stat": s_stat,
        "meta.op get": s_meta_get,
    }
    aio_ops: dict[str, Callable[[str, int], Awaitable[None]]] = {
        "mkdir": a_mkdir,
        "create": a_create,
        "stat": a_stat,
        "meta.op get": a_meta_get,
    }
    try:
        for run_no in itertools.count():
            if (cmd := cmds.get()) is None:
                break
            phase, seconds, inflight = cmd
            tag = f"r{run_no}-"  # names stay distinct from one phase run to the next
            if inflight == 1:
                if sync_c is None:
                    sync_c = sector.connect(entry)
                res = _timed_sync(sync_ops[phase], seconds, tag, barrier)
            else:
                if aio_c is None:
                    aio_c = sector.AsyncClient(entry)
                    loop.run_until_complete(aio_c.connect())
                res = loop.run_until_complete(
                    _timed_async(aio_ops[phase], seconds, inflight, tag, barrier)
                )
            res["sample"] = rng.sample(made, min(SAMPLE, len(made)))
            results.put((k, phase, res))
    except BaseException:
        results.put((k, "error", traceback.format_exc()))
        barrier.abort()  # the others (and the parent) stop waiting for this one
    finally:
        if sync_c is not None:
            sync_c.close()
        if aio_c is not None:
            loop.run_until_complete(aio_c.close())
        loop.close()


class Clients:
    """The client processes, driven phase by phase from the parent."""

    def __init__(
        self, count: int, target: Callable[..., None], args_of: Callable[[int], tuple[Any, ...]]
    ) -> None:
        """``count`` processes running ``target(*args_of(k), cmds, results, barrier)``."""
        ctx = mp.get_context("spawn")  # no fork: the parent has threads (rich, clients)
        self.barrier = ctx.Barrier(count + 1)  # the clients and the parent
        self.results = ctx.Queue()
        self.cmds = [ctx.Queue() for _ in range(count)]
        self.procs = [
            ctx.Process(
                target=target,
                args=(*args_of(k), self.cmds[k], self.results, self.barrier),
                name=f"bench-client-{k}",
                daemon=True,
            )
            for k in range(count)
        ]
        for p in self.procs:
            p.start()

    def run(
        self, phase: str, seconds: float, inflight: int, pids: list[int]
    ) -> tuple[list[dict[str, Any]], dict[str, float]]:
        """Run one phase on every client at once; what each measured, and the CPU used.

        The parent passes the same barrier as the clients, so the CPU it reads (of the
        nodes ``pids`` and of the whole machine) covers the phase, not the set-up.
        """
        for q in self.cmds:
            q.put((phase, seconds, inflight))
        try:
            self.barrier.wait(timeout=180)
        except threading.BrokenBarrierError:
            k, tag, payload = self.results.get(timeout=30)
            raise RuntimeError(f"client {k} failed:\n{payload}") from None
        t0, nodes0, busy0 = time.perf_counter(), cpu_seconds(pids), machine_busy_seconds()
        out: list[dict[str, Any]] = []
        while len(out) < len(self.procs):
            k, tag, payload = self.results.get(timeout=seconds + 180)
            if tag == "error":
                raise RuntimeError(f"client {k} failed:\n{payload}")
            out.append(payload)
        wall = time.perf_counter() - t0
        cpu = {
            "nodes": (cpu_seconds(pids) - nodes0) / wall,
            "machine": (machine_busy_seconds() - busy0) / wall,
        }
        return out, cpu

    def close(self) -> None:
        for q in self.cmds:
            q.put(None)
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join()


# -- the parent -----------------------------------------------------------------------


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (all cores, not idle or iowait)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:9]]
        tick = os.sysconf("SC_CLK_TCK")
        return (sum(ticks) - ticks[3] - ticks[4]) / tick  # minus idle and iowait
    return 0.0


def summarize(name: str, per_client: list[dict[str, Any]], cpu: dict[str, float]) -> dict[str, Any]:
    ops = sum(r["ops"] for r in per_client)
    wall = max(r["elapsed"] for r in per_client)
    client_cpu = sum(r["cpu_s"] for r in per_client)
    lat = [x for r in per_client for x in r["lat"]]
    errors: dict[str, int] = {}
    for r in per_client:
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    return {
        "ops": ops,
        "seconds": round(wall, 3),
        "per_s": round(ops / wall, 1) if wall else 0.0,
        "p50_ms": round(percentile(lat, 50) * 1e3, 3),
        "p99_ms": round(percentile(lat, 99) * 1e3, 3),
        "errors": errors,
        "goal_per_s": GOALS.get(name),
        # CPU used during the phase, in cores (CPU seconds per second of the phase):
        # where the machine's cores went, and whether the clients were the bottleneck.
        "cpu_cores_nodes": round(cpu["nodes"], 2),
        "cpu_cores_clients": round(client_cpu / wall, 2) if wall else 0.0,
        "cpu_cores_machine": round(cpu["machine"], 2),
    }


def unloaded(c: Any, entry: str, paths: list[str], count: int) -> dict[str, dict[str, Any]]:
    """One sync client, one call at a time: the latency of a single lookup."""
    pool = c._aio.pool
    rng = random.Random(0)
    out: dict[str, dict[str, Any]] = {}
    for name, call in (
        ("stat", lambda p: c.stat(p)),
        ("meta.op get", lambda p: c._run(pool.call(entry, "meta.op", {"path": p, "op": "get"}))),
    ):
        lat = []
        errors: dict[str, int] = {}
        for _ in range(count):
            p = rng.choice(paths)
            t0 = time.perf_counter()
            try:
                call(p)
            except SectorError as exc:
                _count(errors, exc)
            lat.append(time.perf_counter() - t0)
        out[name] = {
            "calls": count,
            "paths": len(paths),
            "p50_ms": round(percentile(lat, 50) * 1e3, 3),
            "p99_ms": round(percentile(lat, 99) * 1e3, 3),
            "errors": errors,
        }
    return out


def client_kind(inflight: int) -> str:
    if inflight == 1:
        return "sync client (sector.connect), one call at a time"
    return f"one sector.AsyncClient, {inflight} coroutines (asyncio.gather)"


def run(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    base = Path(args.dir) if args.dir else Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="sector-bench-meta-", dir=base))
    run_id = uuid.uuid4().hex[:8]
    top = f"/bench-{run_id}"
    dirs = [[f"{top}/c{k}/s{j}" for j in range(args.dirs)] for k in range(args.clients)]
    modes: list[dict[str, Any]] = []
    sample: list[str] = []
    t_start = time.perf_counter()
    load_before = list(os.getloadavg())
    try:
        console.log(f"starting {args.nodes} nodes under {root}")
        with ProcCluster(root / "cluster", replicas=args.replicas) as cluster:
            cluster.start(args.nodes)
            entries = cluster.addresses()
            pids = [n.proc.pid for n in cluster.nodes if n.proc is not None]
            if args.settle > 0:
                # For ``warm_period`` (10 s) after its predecessor changes (as the ring
                # forms), an owner merges every read with its successors' copies
                # (sector/meta/service.py): the figures are of the steady state after it.
                console.log(f"settling for {args.settle:g} s (the owners' warm period)")
                time.sleep(args.settle)
            with sector.connect(entries[0]) as c:
                for d in (d for ds in dirs for d in ds):
                    c.mkdir(d, parents=True)
                clients = Clients(
                    len(dirs),
                    _client,
                    lambda k: (k, entries[k % len(entries)], dirs[k], str(root)),
                )
                try:
                    for inflight in args.inflight:
                        phases: dict[str, dict[str, Any]] = {}
                        for name in args.phases:
                            console.log(
                                f"{name}: {args.clients} clients x {inflight} in flight"
                                f" for {args.seconds:g} s"
                            )
                            per_client, cpu = clients.run(name, args.seconds, inflight, pids)
                            phases[name] = p = summarize(name, per_client, cpu)
                            sample = [x for r in per_client for x in r["sample"]]
                            console.log(
                                f"{name}: {p['per_s']:,.0f}/s, p50 {p['p50_ms']:.2f} ms,"
                                f" p99 {p['p99_ms']:.2f} ms, {sum(p['errors'].values())} errors,"
                                f" cpu nodes {p['cpu_cores_nodes']:.2f}"
                                f" + clients {p['cpu_cores_clients']:.2f}"
                                f" of {p['cpu_cores_machine']:.2f} cores busy"
                            )
                        modes.append(
                            {
                                "inflight_per_client": inflight,
                                "callers": args.clients * inflight,
                                "client_kind": client_kind(inflight),
                                "phases": phases,
                            }
                        )
                finally:
                    clients.close()
                console.log(
                    f"unloaded latency: {args.latency_calls} calls, one client, {len(sample)} paths"
                )
                latency = unloaded(c, entries[0], sample or [dirs[0][0]], args.latency_calls)
    finally:
        if args.keep:
            console.log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    etcd = run_etcd(args, console, base) if args.etcd else None
    return {
        "benchmark": "metadata",
        "etcd": etcd,
        "nodes": args.nodes,
        "replicas": args.replicas,
        "clients": args.clients,
        "dirs_per_client": args.dirs,
        "file_bytes": FILE_BYTES,
        "client_processes": "multiprocessing (spawn), client k enters at node k mod N",
        "seconds_per_phase": args.seconds,
        "settle_seconds": args.settle,
        "modes": modes,
        "unloaded_latency": latency,
        "goals_per_s": GOALS,
        "wall_seconds": round(time.perf_counter() - t_start, 1),
        "loadavg_before": load_before,
        "machine": machine(),
    }


def run_etcd(args: argparse.Namespace, console: Console, base: Path) -> dict[str, Any] | None:
    """The same phases through a 3-member etcd cluster (``_etcd.py``), after Sector's
    nodes are gone, at the same client concurrency."""
    why = _etcd.available()
    if why is not None:
        console.log(f"etcd comparison skipped: {why}")
        return {"skipped": why}
    phases = [p for p in args.phases if p in _etcd.PHASES]
    modes: list[dict[str, Any]] = []
    console.log(f"etcd: {_etcd.MEMBERS} members on loopback")
    with _etcd.EtcdCluster(base) as cluster:
        clients = Clients(
            args.clients, _etcd.client, lambda k: (k, cluster.urls[k % len(cluster.urls)])
        )
        try:
            for inflight in args.inflight:
                out: dict[str, dict[str, Any]] = {}
                for name in phases:
                    per_client, cpu = clients.run(name, args.seconds, inflight, cluster.pids())
                    out[name] = p = summarize(name, per_client, cpu)
                    console.log(
                        f"etcd {name} x {inflight}: {p['per_s']:,.0f}/s, p50 {p['p50_ms']:.2f} ms,"
                        f" {sum(p['errors'].values())} errors, cpu {p['cpu_cores_nodes']:.2f}"
                    )
                modes.append({"inflight_per_client": inflight, "phases": out})
        finally:
            clients.close()
    return {"members": _etcd.MEMBERS, **_etcd.environment(), "modes": modes}


def _etcd_phases(res: dict[str, Any], inflight: int) -> dict[str, Any]:
    etcd = res.get("etcd") or {}
    for m in etcd.get("modes", []):
        if m["inflight_per_client"] == inflight:
            return dict(m["phases"])
    return {}


def _table(title: str) -> Table:
    t = Table(
        title=title,
        caption="cpu: cores used by the nodes + the clients / busy on the whole machine",
    )
    t.add_column("operation")
    t.add_column("callers", justify="right")
    t.add_column("ops/s", justify="right")
    t.add_column("goal", justify="right")
    t.add_column("p50 ms", justify="right")
    t.add_column("p99 ms", justify="right")
    t.add_column("errors", justify="right")
    t.add_column("cpu", justify="right")
    t.add_column("etcd ops/s", justify="right")
    t.add_column("ratio", justify="right")
    return t


def show(res: dict[str, Any], console: Console) -> None:
    clients = res["clients"]
    for i, mode in enumerate(res["modes"]):
        inflight = mode["inflight_per_client"]
        how = (
            "1 call at a time (sync client)"
            if inflight == 1
            else f"{inflight} in flight (AsyncClient)"
        )
        t = _table(
            f"Sector metadata: {res['nodes']} nodes, {clients} client processes x {how},"
            f" {res['seconds_per_phase']:g} s per phase"
        )
        callers = f"{clients}" + (f" x {inflight}" if inflight > 1 else "")
        etcd = _etcd_phases(res, inflight)
        for name, p in mode["phases"].items():
            e = etcd.get(name)
            ratio = f"{p['per_s'] / e['per_s']:.2f}x" if e and e["per_s"] else ""
            goal = p.get("goal_per_s")
            goal_txt = ""
            if goal:
                ok = "[green]met[/]" if p["per_s"] >= goal else "[red]not met[/]"
                goal_txt = f">= {goal:,.0f} {ok}"
            t.add_row(
                name,
                callers,
                f"{p['per_s']:,.0f}",
                goal_txt,
                f"{p['p50_ms']:.2f}",
                f"{p['p99_ms']:.2f}",
                str(sum(p["errors"].values())),
                f"{p['cpu_cores_nodes']:.2f}+{p['cpu_cores_clients']:.2f}"
                f" / {p['cpu_cores_machine']:.2f}",
                f"{e['per_s']:,.0f}" if e else "",
                ratio,
            )
        if i == len(res["modes"]) - 1:
            t.add_section()
            for name, p in res["unloaded_latency"].items():
                t.add_row(
                    f"{name}, unloaded",
                    "1",
                    "",
                    "",
                    f"{p['p50_ms']:.2f}",
                    f"{p['p99_ms']:.2f}",
                    str(sum(p["errors"].values())),
                    "",
                    "",
                    "",
                )
        console.print(t)
    for mode in res["modes"]:
        for name, p in mode["phases"].items():
            for err, n in p["errors"].items():
                console.print(f"[yellow]{name} x {mode['inflight_per_client']}: {n} x {err}")
    for name, p in res["unloaded_latency"].items():
        for err, n in p["errors"].items():
            console.print(f"[yellow]{name}, unloaded: {n} x {err}")


def _inflight(text: str) -> list[int]:
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError("need one or more counts >= 1")
    return vals


def _phases(text: str) -> list[str]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    bad = [n for n in names if n not in PHASES]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"phases are {', '.join(PHASES)}; not {bad}")
    return names


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--nodes", type=int, default=5, help="node processes (5)")
    ap.add_argument("--replicas", type=int, default=3, help="replicas per record and file (3)")
    ap.add_argument("--clients", type=int, default=4, help="client processes (4)")
    ap.add_argument(
        "--inflight",
        type=_inflight,
        default=[1, 32],
        help="calls in flight per client process, one run of the phases per value:"
        " 1 = sync client, one call at a time; N > 1 = one AsyncClient, N coroutines"
        " (1,32)",
    )
    ap.add_argument(
        "--phases",
        type=_phases,
        default=list(PHASES),
        help=f"phases to run, in order (default: {','.join(PHASES)})",
    )
    ap.add_argument("--dirs", type=int, default=8, help="directories per client (8)")
    ap.add_argument("--seconds", type=float, default=5.0, help="length of each phase (5)")
    ap.add_argument(
        "--settle",
        type=float,
        default=12.0,
        help="seconds to wait after the ring forms, past the owners' warm period (12)",
    )
    ap.add_argument(
        "--etcd",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the same phases through a 3-member etcd cluster, with a ratio column (on;"
        " skipped, saying why, where etcd is not installed)",
    )
    ap.add_argument("--latency-calls", type=int, default=500, help="unloaded calls (500)")
    ap.add_argument("--dir", help="where to put the temp dir (default: the system temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    ap.add_argument("--out", default="metadata.json", help="file name under bench/results/")
    args = ap.parse_args(argv)
    if args.nodes < 1 or args.clients < 1 or args.dirs < 1 or args.seconds <= 0:
        ap.error("need at least one node, client and directory, and a positive --seconds")
    # A terminal gets its own width; a pipe or a log file gets room for the tables.
    console = Console() if sys.stdout.isatty() else Console(width=110)
    res = run(args, console)
    show(res, console)
    console.print(f"results: {write_result(args.out, res)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
