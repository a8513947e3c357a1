"""Sector over long fat links (issue 15): LLPR of get and put against iperf3, one run.

    python bench/wan.py [--rtts 0,20,100,200] [--losses 0,0.1,1] [--size 2G]
                        [--rate-mbit 1000] [--seconds 10] [--tcp-max host|256M]
                        [--dir DIR] [--no-before] [--no-fair]

Needs root, iperf3 and ``../shared/wanem`` (``sector.testing.wan``). For every cell
(RTT, loss) of the matrix one emulated link (``WanLink``: two namespaces, a 1 Gbit/s
link each way, one-way delay RTT/2, Bernoulli loss both ways, drop-tail queue of
max(256 KB, BDP)), one node in side b (R = 1) and the clients in side a:

    put              ``sector put`` of the file, a -> b (one stream; BBR, big buffers)
    get              ``sector get`` of it, b -> a (striped over ``wan.STREAMS`` streams
                     on a long link), BLAKE3 verified
    get before       the same get as Sector did before issue 15: the node pinned to
                     cubic (``--bulk-cc cubic``), one stream; stopped after ``--seconds``
                     and rated by the bytes it had (cubic at 1 % loss moves ~1 Mbit/s)
    iperf3 cubic/1, bbr/1, bbr/8   ``--seconds`` each, a -> b, received rate
    fair: cubic      an iperf3 cubic flow b -> a (``-R``) for ``--seconds`` while a
                     ``sector get`` shares the link: its rate, and the get's

LLPR of a row in a cell = its rate there / its rate in the 0 ms cell with the same loss
(else the 0 ms, 0 % cell): the same hardware, the distance only. The namespaces keep
the host's TCP buffer maxima unless ``--tcp-max`` raises them (``wanem`` raises them to
256M for its ``ANCHORS.md``). Files live under ``--dir`` (default /dev/shm if it has
room: the link, not a shared disk, is measured). Results: a table on stdout and
``bench/results/wan.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import machine, write_result

from sector.cli.args import parse_size
from sector.testing import wan
from sector.testing.cluster import ProcCluster, wait_for
from sector.transport import wan as bulk_wan

PORT = 7000
IPERF = [("iperf3 cubic/1", "cubic", 1), ("iperf3 bbr/1", "bbr", 1), ("iperf3 bbr/8", "bbr", 8)]


def _floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x]


def _get_for(link: wan.WanLink, addr: str, dst: Path, seconds: float, env: dict[str, str]) -> float:
    """A ``sector get`` on side a stopped after ``seconds``: bytes/s it made."""
    tmp = dst.with_name(f".{dst.name}.sector-part")
    cmd = [*link.wrap("a"), sys.executable, "-m", "sector", "get", "/bench/f", str(dst)]
    cmd += ["--cluster", addr, "--json"]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=subprocess.DEVNULL)
    with contextlib.suppress(TimeoutError):
        wait_for(lambda: proc.poll() is not None, seconds, interval=0.2, what="the get")
    took = time.monotonic() - t0
    # Blocks, not st_size: a striped get writes its ranges at their offsets (sparse).
    part = tmp.stat().st_blocks * 512 if tmp.exists() else 0
    got = dst.stat().st_size if proc.poll() == 0 else part
    proc.kill()
    proc.wait(10)
    with contextlib.suppress(OSError):
        tmp.unlink()
    with contextlib.suppress(OSError):
        dst.unlink()
    return got / took


def cell(
    args: argparse.Namespace, rtt: float, loss: float, src: Path, work: Path
) -> dict[str, Any]:
    rates: dict[str, float] = {}
    extra: dict[str, Any] = {}
    tcp_max = None if args.tcp_max == "host" else parse_size(args.tcp_max)
    with contextlib.ExitStack() as stack:
        link = stack.enter_context(
            wan.WanLink(rtt, args.rate_mbit, loss, seed=args.seed, tcp_max=tcp_max)
        )
        root = Path(tempfile.mkdtemp(dir=work))
        stack.callback(shutil.rmtree, root, True)
        env = {"SECTOR_HOME": str(root / "home")}
        (root / "home").mkdir()
        os.environ.update(env)
        now = stack.enter_context(ProcCluster(root / "now", replicas=1, env=env))
        now.add(listen=f"{link.ip('b')}:{PORT}", wrap=link.wrap("b"))
        addr = now.nodes[0].address
        put = link.sector("a", addr, "put", str(src), "/bench/f")["files"][0]
        rates["sector put"] = put["transfer"]["rate"]
        dst = root / "got"
        got = link.sector("a", addr, "get", "/bench/f", str(dst))["files"][0]
        rates["sector get"] = got["transfer"]["rate"]
        extra["get streams"] = got["transfer"]["streams"]
        dst.unlink()
        if not args.no_before:
            old = stack.enter_context(
                ProcCluster(root / "old", replicas=1, env=env, node_args=["--bulk-cc", "cubic"])
            )
            old.add(listen=f"{link.ip('b')}:{PORT + 1}", wrap=link.wrap("b"))
            link.sector("a", old.nodes[0].address, "put", str(src), "/bench/f")
            pin = {"SECTOR_BULK_STREAMS": "1", "SECTOR_BULK_CC": "cubic"}
            rates["sector get before (cubic/1)"] = _get_for(
                link, old.nodes[0].address, dst, args.seconds, pin
            )
        for name, cc, streams in IPERF:
            r = link.iperf(args.seconds, cc=cc, streams=streams)
            rates[name] = r["bits_per_second"] / 8
        if not args.no_fair:
            srv = link.iperf_server("b", 5202)
            try:
                cmd = [*link.wrap("a"), "iperf3", "-J", "-R", "-c", link.ip("b"), "-p", "5202"]
                cmd += ["-t", f"{args.seconds:g}", "-C", "cubic"]
                wait_for(
                    lambda: subprocess.run(
                        [*link.wrap("b"), "ss", "-ltn", f"sport = :{5202}"],
                        capture_output=True,
                        text=True,
                        check=False,
                    ).stdout.count("LISTEN"),
                    10,
                    what="iperf3 server",
                )
                flow = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
                shared = _get_for(link, addr, dst, args.seconds, {})
                out, _ = flow.communicate(timeout=args.seconds + 60)
                end = json.loads(out)["end"]
                rates["fair: iperf3 cubic beside a get"] = (
                    float(end["sum_received"]["bits_per_second"]) / 8
                )
                rates["fair: sector get beside it"] = shared
            finally:
                srv.kill()
                srv.wait(10)
        extra["emulator"] = link.stats()
    return {"rtt_ms": rtt, "loss_pct": loss, "rates": rates, **extra}


def llpr(cells: list[dict[str, Any]]) -> None:
    """Each cell's rates over the 0 ms cell's with the same loss (else 0 ms, 0 %)."""
    base = {c["loss_pct"]: c for c in cells if c["rtt_ms"] == 0}
    for c in cells:
        ref = base.get(c["loss_pct"]) or base.get(0.0)
        if ref is None:
            continue
        c["llpr"] = {
            k: round(v / ref["rates"][k], 3) if ref["rates"].get(k) else None
            for k, v in c["rates"].items()
        }


def table(cells: list[dict[str, Any]]) -> str:
    rows = list(dict.fromkeys(k for c in cells for k in c["rates"]))
    head = ["", *(f"{c['rtt_ms']:g} ms {c['loss_pct']:g} %" for c in cells)]
    lines = [head]
    for r in rows:
        line = [r]
        for c in cells:
            v = c["rates"].get(r)
            lp = (c.get("llpr") or {}).get(r)
            cellv = "-" if v is None else f"{v * 8 / 1e6:.0f}"
            line.append(cellv + (f" ({lp:.2f})" if lp is not None else ""))
        lines.append(line)
    widths = [max(len(x[i]) for x in lines) for i in range(len(head))]
    return "\n".join("  ".join(x.ljust(w) for x, w in zip(ln, widths, strict=True)) for ln in lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rtts", type=_floats, default=_floats("0,20,100,200"))
    ap.add_argument("--losses", type=_floats, default=_floats("0,0.1,1"))
    ap.add_argument("--size", type=parse_size, default=parse_size("2G"))
    ap.add_argument("--rate-mbit", type=float, default=1000.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--tcp-max", default="host", help="host, or a size such as 256M")
    ap.add_argument("--seed", type=int, default=12345)
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--no-before", action="store_true", help="skip the cubic/1-stream get")
    ap.add_argument("--no-fair", action="store_true", help="skip the fairness row")
    args = ap.parse_args()
    why = wan.available()
    if why or shutil.which("iperf3") is None:
        print(f"bench/wan.py: cannot run: {why or 'iperf3 not installed'}", file=sys.stderr)
        return 1
    wan.WanLink.remove_stale()
    shm = Path("/dev/shm")
    if args.dir is None:
        roomy = shm.is_dir() and shutil.disk_usage(shm).free > 4 * args.size
        args.dir = shm if roomy else Path(tempfile.gettempdir())
    work = Path(tempfile.mkdtemp(prefix="sector-wan-", dir=args.dir))
    try:
        src = work / "f"
        with open(src, "wb") as f:
            left = args.size
            while left:
                n = min(left, 64 << 20)
                f.write(os.urandom(n))
                left -= n
        cells = []
        for loss in args.losses:
            for rtt in args.rtts:
                print(f"cell {rtt:g} ms, {loss:g} % ...", file=sys.stderr, flush=True)
                cells.append(cell(args, rtt, loss, src, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    llpr(cells)
    print(f"Mbit/s (LLPR), {args.size / 2**30:g} GiB file, {args.rate_mbit:g} Mbit/s link")
    print(table(cells))
    out = {
        "machine": machine(),
        "size": args.size,
        "rate_mbit": args.rate_mbit,
        "seconds": args.seconds,
        "tcp_max": args.tcp_max,
        "bulk": bulk_wan.describe(),
        "cells": cells,
    }
    print(f"written: {write_result('wan.json', out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
