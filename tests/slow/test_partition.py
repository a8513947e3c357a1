"""Partitions, Jepsen style: 5 hosts (network namespaces), one node each, R = 3, and
workload clients on both sides of each cut, recording every op. Not in the default
suite: `make test-slow` (``pytest -m slow``).

Per seed: 10 s healthy, then three faults of ``SECTOR_PARTITION_FAULT_SECONDS``
(default 20) each, each healed and followed by a wait until no node reports a split:
(1) {h1,h2} | {h3,h4,h5}; (2) {h1} | the rest; (3) one way: h1 and h2 cannot open
connections to h3-h5. Each fault is checked in place (the cut pairs of hosts cannot
connect, the others can, the test process reaches every host) and gone after its
heal. The client processes (``python -m sector.testing.jepsen workload``, on h1 and
h5, three workers each, 10 s per-op timeout) run throughout. Then the clients stop,
the cluster settles, every path ever touched is read through every node, and
``sector.testing.jepsen.check`` lists the violations of the model: writes are taken
only on a side reaching a majority, and after the heal every acknowledged op stands.
A heal the cluster does not converge from within ``CONVERGE_DEADLINE`` is a
violation, and ends the schedule early (the later faults would prove nothing).

``SECTOR_PARTITION_SEEDS`` (comma-separated) picks the seeds. A summary per seed
(availability per side during each fault, violations, time to converge after each
heal) is printed and written as ``summary.json`` in the test's tmp dir, next to the
history (``c*.jsonl``) and the nodes' logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sector.testing import jepsen
from sector.testing.cluster import ProcCluster, wait_for
from sector.testing.netns import Hosts

pytestmark = pytest.mark.slow

R = 3
N = 5
PORT = 7000
SEEDS = [int(s) for s in os.environ.get("SECTOR_PARTITION_SEEDS", "1311,2718").split(",") if s]
FAULT_SECONDS = float(os.environ.get("SECTOR_PARTITION_FAULT_SECONDS", "20"))
HEALTHY_SECONDS = 10.0
OP_TIMEOUT = 10.0
CONVERGE_DEADLINE = 45.0  # seconds after a heal for every node to report no split
SETTLE_DEADLINE = 60.0  # seconds at the end for repair to bring files back to R copies
CLIENTS = [("c1", 0), ("c2", 4)]  # (name, host index): h1 is in the minority of every cut
ALL_PAIRS = {(i, j) for i in range(N) for j in range(N) if i != j}


def host(i: int) -> str:
    return f"h{i + 1}"


def cut_between(groups: list[list[int]]) -> set[tuple[int, int]]:
    side = {i: k for k, g in enumerate(groups) for i in g}
    return {(i, j) for i, j in ALL_PAIRS if side[i] != side[j]}


def side_names(groups: list[list[int]]) -> dict[int, str]:
    out = {}
    for g in groups:
        label = "+".join(host(i) for i in g) + (" (majority)" if len(g) > N // 2 else "")
        out.update(dict.fromkeys(g, label))
    return out


# (name, apply, pairs that must not connect, side of each host)
Fault = tuple[str, Callable[[Hosts], None], set[tuple[int, int]], dict[int, str]]
FAULTS: list[Fault] = [
    (
        "h1,h2 | h3,h4,h5",
        lambda h: h.partition([[0, 1], [2, 3, 4]]),
        cut_between([[0, 1], [2, 3, 4]]),
        side_names([[0, 1], [2, 3, 4]]),
    ),
    (
        "h1 | rest",
        lambda h: h.partition([[0], [1, 2, 3, 4]]),
        cut_between([[0], [1, 2, 3, 4]]),
        side_names([[0], [1, 2, 3, 4]]),
    ),
    (
        "one-way h1,h2 -/-> h3,h4,h5",
        lambda h: h.one_way([0, 1], [2, 3, 4]),
        {(i, j) for i in (0, 1) for j in (2, 3, 4)},
        {0: "h1+h2 (no new conns out)", 1: "h1+h2 (no new conns out)"}
        | dict.fromkeys((2, 3, 4), "h3+h4+h5 (majority)"),
    ),
]


def check_reachability(hosts: Hosts, cut: set[tuple[int, int]]) -> None:
    """The fault is exactly what it claims: the cut pairs cannot connect, every other
    pair can, and the test process (the bridge) still reaches every host."""
    reach = hosts.probe(PORT)
    assert reach == ALL_PAIRS - cut, (
        f"connections that should fail: {sorted(reach & cut)}; "
        f"that should work: {sorted((ALL_PAIRS - cut) - reach)}"
    )
    for ip in hosts.ips:
        socket.create_connection((ip, PORT), timeout=2).close()


def wait_converged(addrs: list[str]) -> tuple[float | None, list[str]]:
    """Seconds until no node reports a split (None past the deadline, with why)."""
    t0 = time.monotonic()
    last: dict[str, Any] = {}

    def whole() -> bool:
        last.update(asyncio.run(jepsen.cluster_split(addrs)))
        return not last["split"]

    try:
        wait_for(whole, CONVERGE_DEADLINE, interval=0.5, what="no split on any node")
    except TimeoutError:
        return None, list(last.get("why", []))
    return round(time.monotonic() - t0, 1), []


def wait_settled(cl: ProcCluster) -> dict[str, Any]:
    """Until no node knows of an under-replicated file or a queued repair: the seconds
    it took (None past the deadline) and the last counts seen."""
    t0 = time.monotonic()
    last: dict[str, Any] = {}

    def quiet() -> bool:
        st = cl.status()
        last.update(under_replicated=st["under_replicated"], repair_queue=st["repair_queue"])
        return st["under_replicated"] == 0 and st["repair_queue"] == 0

    try:
        wait_for(quiet, SETTLE_DEADLINE, interval=1.0, what="repair to settle")
    except TimeoutError:
        return {"seconds": None, **last}
    return {"seconds": round(time.monotonic() - t0, 1)}


def start_clients(hosts: Hosts, cl: ProcCluster, seed: int, tmp: Path) -> list[Any]:
    procs = []
    for k, (name, i) in enumerate(CLIENTS):
        cmd = [
            *hosts.wrap(i),
            sys.executable,
            "-m",
            "sector.testing.jepsen",
            "workload",
            *("--entry", cl.nodes[i].address, "--client", name),
            *("--seed", str(seed * 100 + k), "--out", str(tmp / f"{name}.jsonl")),
            *("--stop", str(tmp / "stop"), "--dir", str(tmp / "work")),
            *("--op-timeout", str(OP_TIMEOUT)),
        ]
        log = open(tmp / f"{name}.log", "wb")  # noqa: SIM115 - handed to the child
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        procs.append(
            subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        )
        log.close()
    return procs


def stop_clients(procs: list[Any], tmp: Path) -> None:
    (tmp / "stop").touch()
    for p in procs:
        try:
            p.wait(OP_TIMEOUT + 30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)
    for (name, _), p in zip(CLIENTS, procs, strict=True):
        assert p.returncode == 0, f"client {name} failed: {(tmp / f'{name}.log').read_text()}"


def run_seed(seed: int, tmp: Path) -> dict[str, Any]:
    t_begin = time.monotonic()
    phases: list[dict[str, Any]] = []
    heals: list[dict[str, Any]] = []
    procs: list[Any] = []
    with Hosts(N) as hosts, ProcCluster(tmp / "cl", replicas=R) as cl:
        try:
            for i in range(N):
                cl.node_args = ["--host-id", host(i)]  # read when the node is spawned
                cl.add(listen=f"{hosts.ips[i]}:{PORT}", wrap=hosts.wrap(i))
            cl.node_args = []
            cl.wait_ring(60)
            addrs = [n.address for n in cl.nodes]
            took, why = wait_converged(addrs)
            assert took is not None, f"the healthy cluster reports a split: {why}"
            check_reachability(hosts, set())

            procs = start_clients(hosts, cl, seed, tmp)
            t0 = time.time()
            time.sleep(HEALTHY_SECONDS)
            everyone = {name: "all" for name, _ in CLIENTS}
            phases.append({"name": "healthy", "start": t0, "end": time.time(), "sides": everyone})
            for name, apply, cut, sides in FAULTS:
                t0 = time.time()
                apply(hosts)
                check_reachability(hosts, cut)
                time.sleep(max(0.0, FAULT_SECONDS - (time.time() - t0)))
                t1 = time.time()
                hosts.heal()
                check_reachability(hosts, set())
                took, why = wait_converged(addrs)
                t2 = time.time()
                heals.append({"fault": name, "converge_seconds": took, "split": why})
                client_sides = {c: sides[i] for c, i in CLIENTS}
                phases.append({"name": name, "start": t0, "end": t1, "sides": client_sides})
                phases.append(
                    {"name": f"heal after {name}", "start": t1, "end": t2, "sides": everyone}
                )
                if took is None:
                    # A cluster that stays split makes every later fault moot (and the
                    # run long): check what it holds now.
                    skipped = [f[0] for f in FAULTS[len(heals) :]]
                    heals += [
                        {"fault": f, "converge_seconds": None, "skipped": True} for f in skipped
                    ]
                    break
            stop_clients(procs, tmp)
            final_converge, why = wait_converged(addrs)
            settle = wait_settled(cl) if final_converge is not None else {"skipped": "split"}

            ops = jepsen.load_history(tmp / f"{c}.jsonl" for c, _ in CLIENTS)
            paths = jepsen.touched_paths(ops)
            t_read = time.monotonic()
            seen = asyncio.run(jepsen.read_everywhere(addrs, paths))
            names = {a: host(i) for i, a in enumerate(addrs)}
            finals = {p: {names[a]: v for a, v in hv.items()} for p, hv in seen.items()}
            present = sorted(
                p
                for p, hv in finals.items()
                if any(v not in (jepsen.ABSENT, "dir") for v in hv.values())
            )
            copies = asyncio.run(jepsen.good_copies(addrs[-1], present))
            read_seconds = round(time.monotonic() - t_read, 1)
            # A copy that a record lists but its holder lacks is what reads and the
            # audit report: each verify pass above reports it to the owner, whose
            # repair replaces it (self-healing, as the thrash test waits for too).
            # Only a file still short of R good copies at the deadline is a violation.
            t_heal = time.monotonic()
            while any(n < R for n in copies.values()) and time.monotonic() - t_heal < 120:
                time.sleep(2.0)
                short = [p for p, n in copies.items() if n < R]
                copies.update(asyncio.run(jepsen.good_copies(addrs[-1], short)))
            copies_healed = round(time.monotonic() - t_heal, 1)
            dead = [host(n.index) for n in cl.nodes if not n.alive]
            violations = jepsen.check(ops, finals, copies, dead, replicas=R)
            violations += [
                {"kind": "not_converged", "path": "", "detail": h}
                for h in heals
                if h["converge_seconds"] is None and not h.get("skipped")
            ]
            if final_converge is None:
                violations.append({"kind": "not_converged", "path": "", "detail": why})
        finally:
            (tmp / "stop").touch()
            for p in procs:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait(10)
            with contextlib.suppress(Exception):
                hosts.heal()
    by_kind = Counter(v["kind"] for v in violations)
    examples: dict[str, list[Any]] = {}
    for v in violations:
        if len(examples.setdefault(v["kind"], [])) < 5:
            examples[v["kind"]].append({"path": v["path"], "detail": v["detail"]})
    return {
        "seed": seed,
        "ops": len(ops),
        "outcomes": dict(Counter(f"{o.op}:{o.outcome}" for o in ops)),
        "paths": len(paths),
        "availability": jepsen.availability(ops, phases),
        "heals": heals,
        "final_converge_seconds": final_converge,
        "settle": settle,
        "copies_healed_seconds": copies_healed,
        "final_read_seconds": read_seconds,
        "violations": sum(by_kind.values()),
        "violations_by_kind": dict(by_kind),
        "examples": examples,
        "dead_nodes": dead,
        "seconds": round(time.monotonic() - t_begin, 1),
    }


@pytest.mark.timeout(420)
@pytest.mark.parametrize("seed", SEEDS)
def test_partition(seed: int, tmp_path: Path) -> None:
    summary = run_seed(seed, tmp_path)
    text = json.dumps(summary, indent=1, default=str)
    (tmp_path / "summary.json").write_text(text)
    print(f"\npartition seed {seed} ({tmp_path}):\n{text}")
    assert summary["violations"] == 0, (
        f"{summary['violations']} violations: {summary['violations_by_kind']} "
        f"(details in {tmp_path / 'summary.json'})"
    )
