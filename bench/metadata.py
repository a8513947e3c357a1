"""Metadata throughput and lookup latency under concurrent clients.

    python bench/metadata.py [--nodes 5] [--clients 4] [--seconds 5]

A local cluster of ``--nodes`` node processes (``ProcCluster``, metadata replicated on
3 nodes) and ``--clients`` client *processes* (multiprocessing, each with its own sync
client ``sector.connect``; client k enters through node k mod N, since there is no
central server to enter through). Every phase runs all clients at once for
``--seconds`` (a barrier starts them together), each in its own directory
``/bench-<run>/c<k>`` so that the figures measure the ring and the stores rather than
contention on one parent directory:

    mkdir        creates of distinct, new directories          (goal >= 2,000 /s)
    create       zero-byte file puts (begin_put, an empty bulk
                 stream to the first replica, commit_put)        (goal >= 2,000 /s)
    stat         stat of random existing entries                 (goal >= 10,000 /s)
    meta.op get  the routed owner lookup behind a stat, called on the entry node
                 directly: the ring routing and record read without the fs layer

Latency: every call is timed; p50/p99 are given for the loaded phases above (all
clients running) and for an unloaded pass (one client, one call at a time), which is
the latency of a single lookup. Results: a rich table and ``bench/results/metadata.json``.

Everything shares this machine's cores: the nodes, the clients and the benchmark. On a
2-core box the figures are a floor for what the same code does spread over hosts.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import random
import shutil
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import machine, percentile, write_result
from rich.console import Console
from rich.table import Table

import sector
from sector.errors import SectorError
from sector.testing.cluster import ProcCluster

GOALS = {"mkdir": 2000.0, "create": 2000.0, "stat": 10000.0}
PHASES = ("mkdir", "create", "stat", "meta.op get")


# -- the client processes -----------------------------------------------------------


def _client(
    k: int,
    entry: str,
    home: str,
    scratch: str,
    inflight: int,
    cmds: Any,
    results: Any,
    barrier: Any,
) -> None:
    """One client process: runs each phase it is told to, for the time it is told."""
    rng = random.Random(k)
    empty = Path(scratch) / f"empty-{k}"
    empty.write_bytes(b"")
    made: list[str] = []  # every path this client created, for the lookups
    try:
        c = sector.connect(entry)
    except BaseException:
        results.put((k, "error", traceback.format_exc()))
        return
    with c:
        pool = c._aio.pool  # the raw RPC pool: meta.op is a node-to-node call

        def mkdir(name: str) -> None:
            c.mkdir(f"{home}/d{name}")
            made.append(f"{home}/d{name}")

        def create(name: str) -> None:
            c.put(empty, f"{home}/f{name}")
            made.append(f"{home}/f{name}")

        def stat(name: str) -> None:
            c.stat(rng.choice(made or [home]))

        def meta_get(name: str) -> None:
            args = {"path": rng.choice(made or [home]), "op": "get", "args": {}}
            c._run(pool.call(entry, "meta.op", args))

        ops: dict[str, Callable[[str], None]] = {
            "mkdir": mkdir,
            "create": create,
            "stat": stat,
            "meta.op get": meta_get,
        }
        try:
            while (cmd := cmds.get()) is not None:
                phase, seconds = cmd
                results.put((k, phase, _timed(ops[phase], seconds, inflight, barrier)))
        except BaseException:
            results.put((k, "error", traceback.format_exc()))


def _timed(
    op: Callable[[str], None], seconds: float, inflight: int, barrier: Any
) -> dict[str, Any]:
    """Call op on fresh names from ``inflight`` threads for ``seconds``, all clients at once.

    With inflight = 1 (the default) this is one user's script: a call, then the next.
    More threads share the process's one client and keep that many calls in flight,
    which measures what the cluster can serve rather than one caller's latency.
    """
    lats: list[list[float]] = [[] for _ in range(inflight)]
    errors: dict[str, int] = {}
    deadline = 0.0

    def loop(t: int) -> None:
        lat = lats[t]
        n = 0
        while (t0 := time.perf_counter()) < deadline:
            try:
                op(f"{t}-{n}")
            except SectorError as exc:  # counted, not fatal: the table says how many
                key = f"{type(exc).__name__}: {exc}"[:120]
                errors[key] = errors.get(key, 0) + 1
            lat.append(time.perf_counter() - t0)
            n += 1

    barrier.wait(timeout=120)
    start = time.perf_counter()
    deadline = start + seconds
    threads = [threading.Thread(target=loop, args=(t,)) for t in range(1, inflight)]
    for th in threads:
        th.start()
    loop(0)
    for th in threads:
        th.join()
    lat = [x for part in lats for x in part]
    return {"ops": len(lat), "elapsed": time.perf_counter() - start, "lat": lat, "errors": errors}


class Clients:
    """The client processes, driven phase by phase from the parent."""

    def __init__(
        self, entries: list[str], root: str, scratch: Path, count: int, inflight: int
    ) -> None:
        ctx = mp.get_context("spawn")  # no fork: the parent has threads (rich, clients)
        self.barrier = ctx.Barrier(count)
        self.results = ctx.Queue()
        self.cmds = [ctx.Queue() for _ in range(count)]
        self.procs = [
            ctx.Process(
                target=_client,
                args=(
                    k,
                    entries[k % len(entries)],
                    f"{root}/c{k}",
                    str(scratch),
                    inflight,
                    self.cmds[k],
                    self.results,
                    self.barrier,
                ),
                name=f"bench-client-{k}",
                daemon=True,
            )
            for k in range(count)
        ]
        for p in self.procs:
            p.start()

    def run(self, phase: str, seconds: float) -> list[dict[str, Any]]:
        """Run one phase on every client at once and collect what each measured."""
        for q in self.cmds:
            q.put((phase, seconds))
        out: list[dict[str, Any]] = []
        while len(out) < len(self.procs):
            k, tag, payload = self.results.get(timeout=seconds + 180)
            if tag == "error":
                raise RuntimeError(f"client {k} failed:\n{payload}")
            out.append(payload)
        return out

    def close(self) -> None:
        for q in self.cmds:
            q.put(None)
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join()


# -- the parent -----------------------------------------------------------------------


def summarize(name: str, per_client: list[dict[str, Any]]) -> dict[str, Any]:
    ops = sum(r["ops"] for r in per_client)
    wall = max(r["elapsed"] for r in per_client)
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
    }


def unloaded(c: Any, entry: str, paths: list[str], count: int) -> dict[str, dict[str, Any]]:
    """One client, one call at a time: the latency of a single lookup."""
    pool = c._aio.pool
    rng = random.Random(0)
    out: dict[str, dict[str, Any]] = {}
    for name, call in (
        ("stat", lambda p: c.stat(p)),
        ("meta.op get", lambda p: c._run(pool.call(entry, "meta.op", {"path": p, "op": "get"}))),
    ):
        lat = []
        for _ in range(count):
            p = rng.choice(paths)
            t0 = time.perf_counter()
            call(p)
            lat.append(time.perf_counter() - t0)
        out[name] = {
            "calls": count,
            "p50_ms": round(percentile(lat, 50) * 1e3, 3),
            "p99_ms": round(percentile(lat, 99) * 1e3, 3),
        }
    return out


def run(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    base = Path(args.dir) if args.dir else Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="sector-bench-meta-", dir=base))
    run_id = uuid.uuid4().hex[:8]
    top = f"/bench-{run_id}"
    phases: dict[str, dict[str, Any]] = {}
    try:
        console.log(f"starting {args.nodes} nodes under {root}")
        with ProcCluster(root / "cluster", replicas=args.replicas) as cluster:
            cluster.start(args.nodes)
            entries = cluster.addresses()
            with sector.connect(entries[0]) as c:
                for k in range(args.clients):
                    c.mkdir(f"{top}/c{k}", parents=True)
                clients = Clients(entries, top, root, args.clients, args.inflight)
                try:
                    for name in PHASES:
                        console.log(f"{name}: {args.clients} clients for {args.seconds:g} s")
                        phases[name] = summarize(name, clients.run(name, args.seconds))
                        p = phases[name]
                        console.log(
                            f"{name}: {p['per_s']:,.0f}/s, p50 {p['p50_ms']:.2f} ms,"
                            f" p99 {p['p99_ms']:.2f} ms, {sum(p['errors'].values())} errors"
                        )
                finally:
                    clients.close()
                console.log(f"unloaded latency: {args.latency_calls} calls, one client")
                paths = [e["path"] for e in c.ls(f"{top}/c0")] or [f"{top}/c0"]
                latency = unloaded(c, entries[0], paths, args.latency_calls)
    finally:
        if args.keep:
            console.log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return {
        "benchmark": "metadata",
        "nodes": args.nodes,
        "replicas": args.replicas,
        "clients": args.clients,
        "inflight_per_client": args.inflight,
        "client_kind": "processes, sync client each, client k enters at node k mod N",
        "seconds_per_phase": args.seconds,
        "phases": phases,
        "unloaded_latency": latency,
        "goals_per_s": GOALS,
        "machine": machine(),
    }


def show(res: dict[str, Any], console: Console) -> None:
    inflight = res["inflight_per_client"]
    callers = f"{res['clients']}" + (f" x {inflight}" if inflight > 1 else "")
    t = Table(
        title=f"Sector metadata: {res['nodes']} nodes, {res['clients']} client processes"
        + (f" x {inflight} in flight" if inflight > 1 else "")
        + f", {res['seconds_per_phase']:g} s per phase"
    )
    t.add_column("operation")
    t.add_column("callers", justify="right")
    t.add_column("ops/s", justify="right")
    t.add_column("goal", justify="right")
    t.add_column("p50 ms", justify="right")
    t.add_column("p99 ms", justify="right")
    t.add_column("errors", justify="right")
    for name, p in res["phases"].items():
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
        )
    t.add_section()
    for name, p in res["unloaded_latency"].items():
        t.add_row(name, "1", "", "", f"{p['p50_ms']:.2f}", f"{p['p99_ms']:.2f}", "")
    console.print(t)
    for name, p in res["phases"].items():
        for err, n in p["errors"].items():
            console.print(f"[yellow]{name}: {n} x {err}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--nodes", type=int, default=5, help="node processes (5)")
    ap.add_argument("--replicas", type=int, default=3, help="replicas per record and file (3)")
    ap.add_argument("--clients", type=int, default=4, help="client processes (4)")
    ap.add_argument(
        "--inflight", type=int, default=1, help="calls in flight per client process (1)"
    )
    ap.add_argument("--seconds", type=float, default=5.0, help="length of each phase (5)")
    ap.add_argument("--latency-calls", type=int, default=500, help="unloaded calls (500)")
    ap.add_argument("--dir", help="where to put the temp dir (default: the system temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    ap.add_argument("--out", default="metadata.json", help="file name under bench/results/")
    args = ap.parse_args(argv)
    if args.nodes < 1 or args.clients < 1 or args.inflight < 1 or args.seconds <= 0:
        ap.error("need at least one node, one client and a positive --seconds")
    console = Console()
    res = run(args, console)
    show(res, console)
    console.print(f"results: {write_result(args.out, res)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
