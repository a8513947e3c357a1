"""Jepsen-style partition testing: a workload client that records a history, and a
checker of that history against what the cluster holds after the faults are healed.

The workload (``python -m sector.testing.jepsen workload ...``) runs inside a host's
network namespace against its local node until a stop file appears, doing a seeded
random mix of creates, overwrites, writes to keys shared with the other clients,
deletes, renames (only of its own paths whose content it knows) and reads. Every
operation becomes one JSON line: client, op, path(s), value id (the BLAKE3 hex of the
content, which is also the checksum Sector records, or "absent"), invoke and complete
times (``time.time()``: one clock for every namespace of one machine), outcome (ok,
fail, unknown: past the per-op timeout) and the error text.

The checker is pure: ``legal_final_values`` says what a path may hold once every
fault is healed, and ``check`` turns a history plus what every host reads into a list
of violations. The cluster helpers at the end (``cluster_split``, ``read_everywhere``,
``good_copies``) talk to nodes from the test process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import blake3

from sector.errors import NotFound, SectorError, Timeout

ABSENT = "absent"
WRITES = ("put", "rm", "mv")
SHARED_DIR = "/j/shared"


def value_id(data: bytes) -> str:
    """What identifies a content: its BLAKE3 hex (Sector's checksum, without "blake3:")."""
    return blake3.blake3(data).hexdigest()


@dataclass
class Op:
    """One operation of a history.

    ``op``: put, rm, mv or read. ``path``: the path (a rename's source); ``path2``: a
    rename's destination. ``value``: a put's content id, a rename's content (what the
    client knew ``path`` held), "absent" for a delete, what a read saw. ``outcome``:
    ok, fail (an error came back: it may still have taken effect) or unknown (no
    answer within the per-op timeout)."""

    client: str
    op: str
    path: str
    value: str | None
    invoke: float
    complete: float
    outcome: str
    error: str = ""
    path2: str | None = None
    kind: str = ""  # create, overwrite, shared, ... (for reports only)

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Op:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def load_history(paths: Iterable[Path]) -> list[Op]:
    ops = []
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            for line in p.read_text().splitlines():
                if line.strip():
                    ops.append(Op.from_dict(json.loads(line)))
    return sorted(ops, key=lambda o: o.invoke)


# ---------------------------------------------------------------------------- checker


@dataclass(frozen=True)
class Effect:
    """What a write op would leave at one path, had it taken effect."""

    value: str
    invoke: float
    complete: float  # +inf unless the op completed ok: its effect may land any time
    ok: bool
    op: Op = field(compare=False)


def effects(ops: Iterable[Op], path: str) -> list[Effect]:
    """The write effects on ``path``: a put gives its content, a delete and a rename's
    source give "absent", a rename's destination the content the renamer knew."""
    out = []
    for o in ops:
        if o.op not in WRITES:
            continue
        if o.path == path:
            v = o.value if o.op == "put" else ABSENT
        elif o.op == "mv" and o.path2 == path:
            v = o.value
        else:
            continue
        done = o.complete if o.ok else math.inf
        out.append(Effect(v or ABSENT, o.invoke, done, o.ok, o))
    return out


def legal_final_values(ops: Iterable[Op], path: str) -> set[str]:
    """The values ``path`` may hold once every fault is healed and all is quiet.

    Candidates are the values of the write effects on the path (see ``effects``) and
    the initial state, "absent". A candidate W is legal unless an op that completed
    ok was *invoked after W completed*: such an op is strictly later in real time, so
    an acknowledged op always stands (W is superseded). Ops that failed or timed out
    are candidates (they may have taken effect) but supersede nothing; and since a
    request the client gave up on may still be applied later (a forwarded request,
    a retransmitted segment after a heal), their completion is taken as never, so
    they are never superseded either. The initial "absent" completed before time
    began: any ok write supersedes it (it stays legal only through deletes or
    renames away, or while no write on the path completed ok).
    """
    effs = effects(ops, path)
    last_ok_invoke = max((e.invoke for e in effs if e.ok), default=-math.inf)
    legal = {e.value for e in effs if not last_ok_invoke > e.complete}
    if last_ok_invoke == -math.inf:
        legal.add(ABSENT)
    return legal


def classify(ops: Sequence[Op], path: str, value: str) -> str:
    """Why ``value`` (not in ``legal_final_values``) at ``path`` is wrong."""
    effs = effects(ops, path)
    if value == ABSENT:
        if any(e.ok and e.op.op == "mv" and e.op.path2 == path for e in effs):
            return "rename_new_missing"
        return "lost_write"  # an acknowledged write, unreadable after the heal
    writers = [e for e in effs if e.value == value]
    if not writers:
        return "phantom_value"  # nobody ever wrote this here
    last = max(writers, key=lambda e: e.complete)
    later = [e for e in effs if e.ok and e.invoke > last.complete]
    if any(e.op.op == "mv" and e.op.path == path and e.op.value == value for e in later):
        return "rename_old_visible"
    if any(e.value == ABSENT for e in later):
        return "undone_delete"
    return "reverted_overwrite"


def check_reads(ops: Sequence[Op]) -> list[dict[str, Any]]:
    """Reads during the run: a read may be stale (the model restricts writes, not
    reads), but must never see content nobody had begun to write at that path."""
    written: dict[str, list[tuple[str, float]]] = {}
    for o in ops:
        if o.op == "put":
            written.setdefault(o.path, []).append((o.value or ABSENT, o.invoke))
        elif o.op == "mv" and o.path2 is not None:
            written.setdefault(o.path2, []).append((o.value or ABSENT, o.invoke))
    out = []
    for o in ops:
        if o.op != "read" or not o.ok or o.value in (None, ABSENT):
            continue
        if not any(v == o.value and t < o.complete for v, t in written.get(o.path, [])):
            out.append(
                {"kind": "phantom_read", "path": o.path, "detail": f"{o.client} read {o.value}"}
            )
    return out


def touched_paths(ops: Iterable[Op]) -> list[str]:
    paths = set()
    for o in ops:
        paths.add(o.path)
        if o.path2:
            paths.add(o.path2)
    return sorted(paths)


def check(
    ops: Sequence[Op],
    finals: dict[str, dict[str, str]],
    copies: dict[str, int] | None = None,
    dead: Iterable[str] = (),
    replicas: int = 3,
) -> list[dict[str, Any]]:
    """Every violation of the model: ``finals`` maps each touched path to what each
    host read after the heal (a value id, "absent", or "error: ..."); ``copies`` maps
    a present file to its count of good copies; ``dead``: node processes that died."""
    by_path: dict[str, list[Op]] = {}
    for o in ops:
        by_path.setdefault(o.path, []).append(o)
        if o.path2 and o.path2 != o.path:
            by_path.setdefault(o.path2, []).append(o)
    out = check_reads(ops)
    for path in touched_paths(ops):
        seen = finals.get(path)
        if not seen:
            out.append({"kind": "read_error_after_heal", "path": path, "detail": "not read"})
            continue
        values = {}
        for host, v in sorted(seen.items()):
            if v.startswith("error"):
                out.append(
                    {"kind": "read_error_after_heal", "path": path, "detail": f"{host}: {v}"}
                )
            else:
                values[host] = v
        if len(set(values.values())) > 1:
            out.append({"kind": "hosts_disagree", "path": path, "detail": values})
        legal = legal_final_values(by_path[path], path)
        for v in sorted(set(values.values())):
            if v not in legal:
                why = classify(by_path[path], path, v)
                hosts = sorted(h for h, x in values.items() if x == v)
                out.append(
                    {
                        "kind": why,
                        "path": path,
                        "detail": {"value": v, "legal": sorted(legal), "hosts": hosts},
                    }
                )
    for path, n in sorted((copies or {}).items()):
        if n < replicas:
            out.append({"kind": "under_replicated", "path": path, "detail": f"{n} good copies"})
    for node in dead:
        out.append({"kind": "node_died", "path": "", "detail": node})
    return out


def availability(ops: Sequence[Op], phases: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per phase ({name, start, end, sides: {client: side}}), per client process (a
    worker "c1/0" belongs to "c1"): the ops that *completed* in it, by outcome, writes
    and reads apart, and "stuck": ops invoked in it that were still waiting at its end."""
    out = []
    for ph in phases:
        per: dict[str, dict[str, Any]] = {}
        for o in ops:
            proc = o.client.split("/")[0]
            if ph["start"] <= o.complete < ph["end"]:
                key = f"{'writes' if o.op in WRITES else 'reads'}_{o.outcome}"
            elif ph["start"] <= o.invoke < ph["end"] <= o.complete:
                key = "stuck"
            else:
                continue
            d = per.setdefault(proc, {"side": ph.get("sides", {}).get(proc, "")})
            d[key] = d.get(key, 0) + 1
        out.append({"phase": ph["name"], "seconds": round(ph["end"] - ph["start"], 1), **per})
    return out


# ---------------------------------------------------------------------------- workload


class Workload:
    """One logical client (one op in flight at a time): its own paths, its own RNG."""

    def __init__(self, a: argparse.Namespace, name: str, seed: int, out: Any) -> None:
        self.a = a
        self.rng = random.Random(seed)
        self.name = name
        self.src = Path(a.dir) / f"{name.replace('/', '-')}.bin"
        self.out = out
        self.n = 0
        self.own: list[str] = []  # every own path ever used
        self.known: dict[str, str] = {}  # own path -> its content, while certain
        self.tainted: set[str] = set()  # own paths an op with no clear outcome touched
        self.shared = [f"{SHARED_DIR}/s{k}" for k in range(a.shared)]
        self.client: Any = None

    def fresh(self) -> str:
        self.n += 1
        p = f"/j/{self.name}/f{self.n}"
        self.own.append(p)
        return p

    async def reconnect(self) -> None:
        from sector.client.aio import AsyncClient

        if self.client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.client.close(), 5)
        self.client = AsyncClient(self.a.entry, timeout=self.a.op_timeout)

    async def attempt(self, op: Op, coro: Any) -> Any:
        """Run one op under the timeout; fill in its outcome and completion time."""
        res = None
        try:
            res = await asyncio.wait_for(coro, self.a.op_timeout)
            op.outcome = "ok"
        except (TimeoutError, Timeout) as exc:
            op.outcome, op.error = "unknown", f"{type(exc).__name__}: {exc}"
        except NotFound as exc:
            op.outcome, op.error = "fail", f"NotFound: {exc}"
        except (SectorError, OSError) as exc:
            op.outcome, op.error = "fail", f"{type(exc).__name__}: {exc}"
        op.complete = time.time()
        if op.outcome == "unknown":
            await self.reconnect()  # a cancelled call may leave a connection half-used
        return res

    def log(self, op: Op) -> None:
        self.out.write(op.to_json() + "\n")
        self.out.flush()

    def new_op(
        self, op: str, path: str, value: str | None, kind: str, path2: str | None = None
    ) -> Op:
        return Op(self.name, op, path, value, time.time(), 0.0, "", "", path2, kind)

    async def put(self, path: str, kind: str) -> None:
        rng = self.rng
        size = rng.choice([0, rng.randint(1, 1000), rng.randint(1000, 200_000)])
        data = rng.randbytes(size)
        self.src.write_bytes(data)
        op = self.new_op("put", path, value_id(data), kind)
        await self.attempt(op, self.client.put(self.src, path))
        self.log(op)
        self.settle_own(path, op.value if op.ok else None)

    def settle_own(self, path: str, value: str | None) -> None:
        """After a write on ``path``: its content if certain, else it is tainted."""
        if not path.startswith(f"/j/{self.name}/"):
            return
        if value is None:
            self.tainted.add(path)
            self.known.pop(path, None)
        elif path not in self.tainted:
            self.known[path] = value

    async def rm(self, path: str, kind: str) -> None:
        op = self.new_op("rm", path, ABSENT, kind)
        await self.attempt(op, self.client.rm(path))
        if op.error.startswith("NotFound"):
            # Nothing was there to delete: what it did is what a read seeing absent does.
            op.op, op.outcome, op.error = "read", "ok", "rm found nothing"
        self.log(op)
        self.settle_own(path, ABSENT if op.ok else None)

    async def mv(self) -> None:
        cands = sorted(p for p, v in self.known.items() if v != ABSENT)
        if not cands:
            await self.put(self.fresh(), "create")
            return
        src = self.rng.choice(cands)
        dst = self.fresh()
        op = self.new_op("mv", src, self.known[src], "rename", dst)
        await self.attempt(op, self.client.mv(src, dst))
        self.log(op)
        self.settle_own(src, ABSENT if op.ok else None)
        self.settle_own(dst, op.value if op.ok else None)

    async def read(self, path: str, kind: str) -> None:
        op = self.new_op("read", path, None, kind)
        data = await self.attempt(op, self.client.read(path))
        if op.ok:
            op.value = value_id(data)
        elif op.error.startswith("NotFound"):
            op.outcome, op.value = "ok", ABSENT
        self.log(op)

    async def step(self) -> None:
        r, rng = self.rng.random(), self.rng
        if r < 0.22 or not self.own:
            await self.put(self.fresh(), "create")
        elif r < 0.34:
            await self.put(rng.choice(self.own), "overwrite")
        elif r < 0.56:
            await self.put(rng.choice(self.shared), "shared")
        elif r < 0.66:
            own = rng.random() < 0.5
            await self.rm(rng.choice(self.own if own else self.shared), "own" if own else "shared")
        elif r < 0.76:
            await self.mv()
        else:
            own = rng.random() < 0.5
            await self.read(
                rng.choice(self.own if own else self.shared), "own" if own else "shared"
            )

    async def run(self) -> None:
        stop = Path(self.a.stop)
        end = time.monotonic() + self.a.max_seconds
        await self.reconnect()
        try:
            while not stop.exists() and time.monotonic() < end:
                await self.step()
                await asyncio.sleep(self.rng.uniform(0, self.a.pause))
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.client.close(), 5)


async def run_workload(a: argparse.Namespace) -> None:
    """``--workers`` logical clients at once, named CLIENT/0, CLIENT/1, ...: one
    history file, seeds derived from ``--seed``."""
    Path(a.dir).mkdir(parents=True, exist_ok=True)
    with open(a.out, "a") as out:
        ws = [Workload(a, f"{a.client}/{k}", a.seed * 1000 + k, out) for k in range(a.workers)]
        await asyncio.gather(*(w.run() for w in ws))


# ---------------------------------------------------------------------------- cluster


def one_ring(successor: dict[str, str | None]) -> bool:
    """Whether following each node's first successor from any node visits them all."""
    if not successor:
        return True
    start = next(iter(successor))
    seen, cur = set(), start
    while cur in successor and cur not in seen:
        seen.add(cur)
        cur = successor[cur] or ""
    return seen == set(successor)


async def cluster_split(addresses: Sequence[str], timeout: float = 5.0) -> dict[str, Any]:
    """Ask every node for its status: ``{"split": bool, "why": [...]}``. A node's
    ``split`` key is taken at its word; without one (older nodes), "no split" needs
    every node up in every node's view and one ring through all of them. A node that
    does not answer is a split."""
    from sector.client.aio import AsyncClient

    why: list[str] = []
    successor: dict[str, str | None] = {}
    c = AsyncClient(addresses[0], timeout=timeout)

    async def one(addr: str) -> None:
        try:
            st = await c.pool.call(addr, "fs.status", {}, timeout=timeout)
        except SectorError as exc:
            why.append(f"{addr}: no status ({exc})")
            return
        if "split" in st:
            if st["split"] or st.get("quorum") is False:
                odd = {
                    n["address"]: n.get("partition") or n["state"]
                    for n in st.get("nodes", [])
                    if n["state"] != "up" or not (n.get("partition") or {}).get("converged", 1)
                }
                why.append(f"{addr}: split={st['split']} quorum={st.get('quorum')} {odd}")
            return
        states = {n["address"]: n["state"] for n in st.get("nodes", [])}
        if states != dict.fromkeys(addresses, "up"):
            bad = {a: s for a, s in states.items() if s != "up"}
            missing = sorted(set(addresses) - set(states))
            why.append(f"{addr}: sees {bad or ''} missing {missing or ''}")
        try:
            info = await c.pool.call(addr, "node.info", {}, timeout=timeout)
            successor[addr] = (info["ring"]["successors"] or [None])[0]
        except (SectorError, KeyError, TypeError) as exc:
            why.append(f"{addr}: no ring info ({exc})")

    try:
        await asyncio.gather(*(one(a) for a in addresses))
    finally:
        await c.close()
    if not one_ring(successor):
        why.append(f"two rings: successors {successor}")
    return {"split": bool(why), "why": sorted(why)}


async def read_everywhere(
    addresses: Sequence[str], paths: Sequence[str], concurrency: int = 16
) -> dict[str, dict[str, str]]:
    """What each path holds as seen through each node: ``{path: {address: value}}``,
    the value a content id, "absent", "dir" or "error: ...". The record is looked up
    through that node; the bytes it names are fetched (once per blob) and hashed."""
    from sector.client.aio import AsyncClient

    c = AsyncClient(addresses[0], timeout=30.0)
    sem = asyncio.Semaphore(concurrency)
    blobs: dict[tuple[str, str], asyncio.Task[str]] = {}
    out: dict[str, dict[str, str]] = {p: {} for p in paths}

    async def content(st: dict[str, Any]) -> str:
        try:
            data = await c.read_range(st, 0, None)
        except SectorError as exc:
            return f"error: {type(exc).__name__}: {exc}"
        v = value_id(data)
        return v if "blake3:" + v == st["checksum"] else f"error: bytes {v} != {st['checksum']}"

    async def one(path: str, addr: str) -> None:
        async with sem:
            for _ in range(3):  # a few tries: a read error must be lasting to count
                try:
                    st = await c.pool.call(addr, "fs.stat", {"path": path})
                except NotFound:
                    out[path][addr] = ABSENT
                    return
                except SectorError as exc:
                    out[path][addr] = f"error: stat: {type(exc).__name__}: {exc}"
                    await asyncio.sleep(1.0)
                    continue
                if st["type"] == "dir":
                    out[path][addr] = "dir"
                    return
                key = (st["blob"], st["checksum"])
                if key not in blobs:
                    blobs[key] = asyncio.ensure_future(content(st))
                out[path][addr] = v = await blobs[key]
                if not v.startswith("error"):
                    return
                blobs.pop(key, None)
                await asyncio.sleep(1.0)

    try:
        await asyncio.gather(*(one(p, a) for p in paths for a in addresses))
    finally:
        await c.close()
    return out


async def good_copies(address: str, paths: Sequence[str], concurrency: int = 8) -> dict[str, int]:
    """For each file: how many distinct replicas hold a copy whose hash matches its
    record (``stat --verify``); a path that is not a file is left out."""
    from sector.client.aio import AsyncClient

    c = AsyncClient(address, timeout=60.0)
    sem = asyncio.Semaphore(concurrency)
    out: dict[str, int] = {}

    async def one(path: str) -> None:
        async with sem:
            try:
                st = await c.stat(path, verify=True)
            except SectorError:
                return
            if st["type"] == "file":
                out[path] = len({r["id"] for r in st["replicas"] if r.get("health") == "ok"})

    try:
        await asyncio.gather(*(one(p) for p in paths))
    finally:
        await c.close()
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m sector.testing.jepsen")
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("workload", help="run a recorded random workload until --stop exists")
    w.add_argument("--entry", required=True, help="HOST:PORT of the local node")
    w.add_argument("--client", required=True, help="this client's name (own paths /j/NAME/K/)")
    w.add_argument("--workers", type=int, default=3, help="ops in flight at once")
    w.add_argument("--seed", type=int, required=True)
    w.add_argument("--out", required=True, help="history file (JSON lines, appended)")
    w.add_argument("--stop", required=True, help="stop when this file exists")
    w.add_argument("--dir", required=True, help="scratch directory")
    w.add_argument("--shared", type=int, default=8, help="number of shared keys")
    w.add_argument("--op-timeout", type=float, default=10.0)
    w.add_argument("--pause", type=float, default=0.05, help="max seconds between ops")
    w.add_argument("--max-seconds", type=float, default=900.0)
    a = ap.parse_args(argv)
    if a.cmd == "workload":
        asyncio.run(run_workload(a))


if __name__ == "__main__":
    main(sys.argv[1:])
