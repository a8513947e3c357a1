"""Chord at scale in one process: 100,000 simulated nodes, churn, stabilization, lookups.

    python bench/chord_sim.py [--nodes 100000] [--churn 0.01] [--events-per-round N]
                              [--lookups 20000] [--seed 1]

No cluster and no sockets: ``sector.testing.chordsim.ChordSim`` holds every node's
``ChordState`` and executes the production steps (``sector.routing.steps``, the objects
the asyncio driver runs over RPC) on an in-process network, one round at a time (a
round is one stabilize interval: every node checks its predecessor, stabilizes, fixes
one finger, and every fourth round probes for a ring to merge). The phases:

    build      a converged ring of --nodes from the oracle (set-up, not protocol)
    churn      --churn x N joins, as many graceful leaves and as many crashes, shuffled,
               with a round after every --events-per-round events (default N / 200);
               never a victim whose loss leaves a node without a live successor
    converge   rounds until every node has its true predecessor and successor list and
               no dead finger
    lookups    --lookups lookups of random keys from random nodes: rate, hops, and
               whether every answer is the true owner

The figures are the simulator's cost on this machine (one core, CPython), not a
network's: a "call" is a method call on another node's state. Peak RSS is the
process's high-water mark (``resource.getrusage``) after each phase. Results: a rich
table on stdout and ``bench/results/chord_sim.json``.
"""

from __future__ import annotations

import argparse
import math
import resource
import sys
import time
from pathlib import Path
from typing import Any

from _common import machine, write_result
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sector.ids import BITS
from sector.testing.chordsim import ChordSim

KINDS = ("join", "leave", "crash")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def churn(sim: ChordSim, per_kind: int, events_per_round: int) -> dict[str, int]:
    events = [kind for kind in KINDS for _ in range(per_kind)]
    sim.rng.shuffle(events)
    done = dict.fromkeys(KINDS, 0)
    rounds = 0
    for i, kind in enumerate(events):
        if kind == "join":
            sim.join()
        else:
            victim = next(
                (v for v in (sim.random_live() for _ in range(100)) if sim.safe_to_remove(v)),
                None,
            )
            if victim is None:
                continue  # nobody can go safely (not seen in practice): skip the event
            (sim.leave if kind == "leave" else sim.crash)(victim)
        done[kind] += 1
        if i % events_per_round == events_per_round - 1:
            sim.round()
            rounds += 1
    return {**done, "rounds": rounds}


def run(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    sim = ChordSim(args.seed, succ_list_len=args.r, fingers_per_round=args.fingers_per_round)
    phases: dict[str, dict[str, Any]] = {}

    def phase(name: str, t0: float, calls0: int, **extra: Any) -> None:
        seconds = time.perf_counter() - t0
        phases[name] = {
            "seconds": round(seconds, 2),
            "calls": sim.calls - calls0,
            "nodes": len(sim.nodes),
            "peak_rss_mib": round(peak_rss_mib(), 1),
            **extra,
        }
        console.log(f"{name}: {seconds:.1f} s, {len(sim.nodes):,} nodes")

    t0 = time.perf_counter()
    sim.build(args.nodes)
    phase("build", t0, 0)

    per_kind = round(args.churn * args.nodes)
    every = args.events_per_round or max(1, args.nodes // 200)
    t0, c0 = time.perf_counter(), sim.calls
    done = churn(sim, per_kind, every)
    phase("churn", t0, c0, **done)

    t0, c0 = time.perf_counter(), sim.calls
    rounds = 0
    converged = sim.converged()
    while not converged and rounds < args.max_rounds:
        sim.round()
        rounds += 1
        converged = sim.converged()
    phase("converge", t0, c0, rounds=rounds, converged=converged)

    keys = [sim.rng.getrandbits(BITS) for _ in range(args.lookups)]
    origins = [sim.random_live() for _ in range(args.lookups)]
    t0, c0 = time.perf_counter(), sim.calls
    ok, total, hops = sim.lookup_stats(keys, origins)
    seconds = time.perf_counter() - t0
    n = len(sim.nodes)
    phase(
        "lookups",
        t0,
        c0,
        lookups=total,
        correct=ok,
        lookups_per_s=round(total / seconds, 1) if seconds else 0.0,
        mean_hops=round(sum(hops) / total, 3) if total else 0.0,
        max_hops=max(hops, default=0),
        hop_bound=round(0.5 * math.log2(n) + 1, 3),
    )
    sim_rounds = phases["churn"]["rounds"] + rounds
    round_seconds = phases["churn"]["seconds"] + phases["converge"]["seconds"]
    return {
        "benchmark": "chord_sim",
        "nodes": args.nodes,
        "seed": args.seed,
        "succ_list_len": args.r,
        "fingers_per_round": args.fingers_per_round,
        "churn_per_kind": per_kind,
        "events_per_round": every,
        "phases": phases,
        "seconds_per_round": round(round_seconds / sim_rounds, 2) if sim_rounds else 0.0,
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "machine": machine(),
    }


def show(res: dict[str, Any], console: Console) -> None:
    p = res["phases"]
    ch, cv, lk = p["churn"], p["converge"], p["lookups"]
    t = Table(
        title=f"Chord simulation: {res['nodes']:,} nodes, r={res['succ_list_len']},"
        f" seed {res['seed']} (one process; a call is a method call)"
    )
    t.add_column("phase")
    t.add_column("seconds", justify="right")
    t.add_column("calls", justify="right")
    t.add_column("peak RSS MiB", justify="right")
    t.add_column("what")
    t.add_row("build", f"{p['build']['seconds']:.1f}", "", f"{p['build']['peak_rss_mib']:,.0f}", "")
    t.add_row(
        "churn",
        f"{ch['seconds']:.1f}",
        f"{ch['calls']:,}",
        f"{ch['peak_rss_mib']:,.0f}",
        f"{ch['join']:,} joins, {ch['leave']:,} leaves, {ch['crash']:,} crashes;"
        f" {ch['rounds']} rounds",
    )
    t.add_row(
        "converge",
        f"{cv['seconds']:.1f}",
        f"{cv['calls']:,}",
        f"{cv['peak_rss_mib']:,.0f}",
        f"{cv['rounds']} rounds" + ("" if cv["converged"] else " (NOT converged)"),
    )
    t.add_row(
        "lookups",
        f"{lk['seconds']:.1f}",
        f"{lk['calls']:,}",
        f"{lk['peak_rss_mib']:,.0f}",
        f"{lk['lookups_per_s']:,.0f} lookups/s; hops mean {lk['mean_hops']:.2f}"
        f" (bound {lk['hop_bound']:.2f}), max {lk['max_hops']};"
        f" {lk['correct']:,} of {lk['lookups']:,} correct",
    )
    console.print(t)
    console.print(
        f"{res['seconds_per_round']:.2f} s per round of {res['nodes']:,} nodes;"
        f" peak RSS {res['peak_rss_mib']:,.0f} MiB"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--nodes", type=int, default=100_000, help="ring size (100000)")
    ap.add_argument(
        "--churn",
        type=float,
        default=0.01,
        help="joins, leaves, crashes: each this fraction of --nodes (0.01)",
    )
    ap.add_argument(
        "--events-per-round",
        type=int,
        default=0,
        help="churn events between rounds (--nodes / 200)",
    )
    ap.add_argument("--lookups", type=int, default=20_000, help="lookups timed at the end (20000)")
    ap.add_argument(
        "--max-rounds",
        type=int,
        default=100,
        help="give up converging after this many rounds (100)",
    )
    ap.add_argument("--r", type=int, default=8, help="successor list length (8)")
    ap.add_argument(
        "--fingers-per-round",
        type=int,
        default=1,
        help="fingers each node refreshes a round (1, as the driver)",
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default="chord_sim.json", help="file name under bench/results/")
    args = ap.parse_args(argv)
    if args.nodes < 2 or not 0 <= args.churn < 0.3 or args.lookups < 1:
        ap.error("need --nodes >= 2, 0 <= --churn < 0.3 and --lookups >= 1")
    console = Console()
    res = run(args, console)
    show(res, console)
    console.print(f"results: {write_result(args.out, res)}")
    lk, cv = res["phases"]["lookups"], res["phases"]["converge"]
    return 0 if cv["converged"] and lk["correct"] == lk["lookups"] else 1


if __name__ == "__main__":
    sys.exit(main())
