"""Storage throughput: Sector put/get of one big file against the disk and the network.

    python bench/storage.py [--size-mib 1024] [--nodes 3] [--replicas 3] [--dir DIR]

One run, one machine, one disk. A local cluster of ``--nodes`` node processes on
loopback (``ProcCluster``) keeps its data in a temp dir on the same disk as the
source file. The same file (random bytes) then goes through five phases:

    disk write   dd-like: the bytes written from memory to a new file, then fsync
    cp           ``cp`` of the file to a new file on the same disk, then fsync
    tcp          the bytes over a loopback TCP socket (iperf3 if installed, otherwise a
                 Python sender using sendfile and a receiver using recv_into)
    put          ``Client.put`` with R replicas (a pipelined chain client -> n1 -> n2 ->
                 n3; every replica fsyncs before the put returns)
    get          ``Client.get`` to a local file (checksum verified), then fsync

What the ratios mean. A get moves the bytes over TCP once and writes them to disk once,
so it cannot beat the slower of ``cp`` and ``tcp``: ``get / min(cp, tcp)`` says how much
of that ceiling Sector reaches (1.0 = all of it). A put writes R copies on this one
disk, so its ceiling is a third of the disk's write rate for R = 3:
``put / (disk write / R)``. On a real cluster each replica has its own disk and the
put ceiling is one disk's rate; on one machine the disk is shared.

Page caches are dropped between phases where the kernel allows it (root, and a
container that lets /proc/sys/vm/drop_caches be written); the JSON says whether it did.
Results: a rich table on stdout and ``bench/results/storage.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _common import MB, drop_caches, machine, mbps, write_result
from rich.console import Console
from rich.table import Table

import sector
from sector.testing.cluster import ProcCluster

CHUNK = 16 << 20
SOCK_BUF = 4 << 20  # what sector.transport.rpc asks of its bulk sockets


def make_source(path: Path, size: int, seed: int = 1) -> None:
    rnd = random.Random(seed)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(CHUNK, left)
            f.write(rnd.randbytes(n))
            left -= n
        f.flush()
        os.fsync(f.fileno())


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- baselines ------------------------------------------------------------------------


def disk_write(path: Path, size: int) -> float:
    """dd if=<memory> of=path bs=16M conv=fsync: seconds to write size bytes durably."""
    buf = random.Random(2).randbytes(CHUNK)
    view = memoryview(buf)
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        left = size
        while left:
            n = os.write(fd, view[: min(CHUNK, left)])
            left -= n
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - t0


def copy_file(src: Path, dst: Path) -> tuple[float, str]:
    """cp src dst, then fsync dst: seconds, and the tool used."""
    cp = shutil.which("cp")
    t0 = time.perf_counter()
    if cp:
        subprocess.run([cp, str(src), str(dst)], check=True)
        tool = "cp + fsync"
    else:
        shutil.copyfile(src, dst)
        tool = "shutil.copyfile + fsync"
    fsync_path(dst)
    return time.perf_counter() - t0, tool


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tcp_iperf3(iperf3: str, src: Path, size: int) -> float:
    """Seconds to move size bytes of src over loopback with iperf3 (-F reads the file)."""
    port = _free_port()
    server = subprocess.Popen(
        [iperf3, "-s", "-1", "-p", str(port), "-B", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        out = ""
        for _ in range(50):  # the server needs a moment to listen
            proc = subprocess.run(
                [iperf3, "-c", "127.0.0.1", "-p", str(port), "-n", str(size), "-F", str(src), "-J"],
                capture_output=True,
                text=True,
                check=False,
            )
            out = proc.stdout
            if proc.returncode == 0:
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"iperf3 failed: {out[-500:]}")
        res = json.loads(out)
        end = res.get("end") or {}
        total = end.get("sum_received") or end.get("sum_sent")
        if not total:  # iperf3 answered with an error in its JSON
            raise RuntimeError(f"iperf3 gave no result: {res.get('error', out[-300:])}")
        return size * 8 / float(total["bits_per_second"])
    finally:
        with contextlib.suppress(Exception):
            server.wait(5)
        if server.poll() is None:
            server.kill()
            server.wait()


def tcp_python(src: Path, size: int) -> float:
    """Seconds to move src over loopback: sendfile on one side, recv_into on the other."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    got = [0]
    failed: list[BaseException] = []

    def receive() -> None:
        try:
            conn, _ = lsock.accept()
            with conn:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCK_BUF)
                buf = bytearray(4 << 20)
                view = memoryview(buf)
                while n := conn.recv_into(view):
                    got[0] += n
        except BaseException as exc:
            failed.append(exc)

    rx = threading.Thread(target=receive, name="tcp-receiver")
    rx.start()
    t0 = time.perf_counter()
    with socket.create_connection(lsock.getsockname()) as s, open(src, "rb") as f:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCK_BUF)
        s.sendfile(f, 0, size)
        s.shutdown(socket.SHUT_WR)
        rx.join()
    dt = time.perf_counter() - t0
    lsock.close()
    if failed:
        raise failed[0]
    if got[0] != size:
        raise RuntimeError(f"tcp baseline moved {got[0]} bytes, expected {size}")
    return dt


# -- the run --------------------------------------------------------------------------


def run(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    size = args.size_mib << 20
    base = Path(args.dir) if args.dir else Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="sector-bench-storage-", dir=base))
    phases: dict[str, dict[str, Any]] = {}
    dropped: list[bool] = []

    def phase(name: str, seconds: float, **extra: Any) -> None:
        phases[name] = {
            "seconds": round(seconds, 4),
            "mb_s": round(mbps(size, seconds), 1),
            **extra,
        }
        console.log(f"{name}: {mbps(size, seconds):,.1f} MB/s ({seconds:.2f} s)")

    try:
        src = root / "source.bin"
        console.log(f"writing a {args.size_mib} MiB random source file under {root}")
        make_source(src, size)

        dropped.append(drop_caches())
        phase("disk write", disk_write(root / "dd.bin", size), tool="os.write 16 MiB + fsync")
        (root / "dd.bin").unlink()

        dropped.append(drop_caches())
        seconds, tool = copy_file(src, root / "cp.bin")
        phase("cp", seconds, tool=tool)
        (root / "cp.bin").unlink()

        dropped.append(drop_caches())
        iperf3 = shutil.which("iperf3")
        tcp: tuple[float, str] | None = None
        if iperf3 and not args.python_tcp:
            try:
                tcp = tcp_iperf3(iperf3, src, size), "iperf3 -F"
            except RuntimeError as exc:
                console.log(f"iperf3: {exc}; the Python sender instead")
        if tcp is None:
            tcp = tcp_python(src, size), "python sendfile -> recv_into"
        phase("tcp", tcp[0], tool=tcp[1])

        console.log(f"starting {args.nodes} nodes (R={args.replicas})")
        with ProcCluster(root / "cluster", replicas=args.replicas) as cluster:
            cluster.start(args.nodes)
            with sector.connect(cluster.address) as c:
                c.mkdir("/bench", parents=True)
                dropped.append(drop_caches())
                t0 = time.perf_counter()
                st = c.put(src, "/bench/blob.bin")
                put_s = time.perf_counter() - t0
                copies = len(st.get("replicas") or [])
                phase("put", put_s, replicas=copies, tool=f"Client.put, R={args.replicas}")
                if copies < args.replicas:
                    console.log(f"[yellow]only {copies} of {args.replicas} replicas stored")

                dropped.append(drop_caches())
                dst = root / "got.bin"
                t0 = time.perf_counter()
                c.get("/bench/blob.bin", dst)
                get_s = time.perf_counter() - t0
                fsync_path(dst)
                get_fsync_s = time.perf_counter() - t0
                if dst.stat().st_size != size:
                    raise RuntimeError(f"get returned {dst.stat().st_size} bytes, not {size}")
                phase("get", get_s, tool="Client.get (verified), no fsync")
                phase("get + fsync", get_fsync_s, tool="Client.get, then fsync")
    finally:
        if args.keep:
            console.log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    mb = {k: v["mb_s"] for k, v in phases.items()}
    ceiling_get = min(mb["cp"], mb["tcp"])
    ceiling_put = mb["disk write"] / args.replicas
    ratios = {
        "get / min(cp, tcp)": round(mb["get + fsync"] / ceiling_get, 3) if ceiling_get else 0.0,
        f"put / (disk write / {args.replicas})": (
            round(mb["put"] / ceiling_put, 3) if ceiling_put else 0.0
        ),
    }
    return {
        "benchmark": "storage",
        "size_bytes": size,
        "nodes": args.nodes,
        "replicas": args.replicas,
        "mb": MB,
        "caches_dropped": all(dropped) if dropped else False,
        "phases": phases,
        "ratios": ratios,
        "machine": machine(),
    }


def show(res: dict[str, Any], console: Console) -> None:
    size_mib = res["size_bytes"] >> 20
    t = Table(
        title=f"Sector storage: {size_mib} MiB, {res['nodes']} nodes, R={res['replicas']}"
        f" (MB = 10^6 bytes; page caches dropped: {'yes' if res['caches_dropped'] else 'no'})"
    )
    t.add_column("phase")
    t.add_column("MB/s", justify="right")
    t.add_column("seconds", justify="right")
    t.add_column("how")
    for name, p in res["phases"].items():
        t.add_row(name, f"{p['mb_s']:,.1f}", f"{p['seconds']:.2f}", p.get("tool", ""))
    t.add_section()
    for name, r in res["ratios"].items():
        note = "get + fsync vs the slower" if name.startswith("get") else "R copies, one disk"
        t.add_row(name, f"{r:.2f}", "", note)
    console.print(t)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--size-mib", type=int, default=1024, help="file size in MiB (1024)")
    ap.add_argument("--nodes", type=int, default=3, help="node processes (3)")
    ap.add_argument("--replicas", type=int, default=3, help="replicas per file (3)")
    ap.add_argument("--dir", help="where to put the temp dir (default: the system temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    ap.add_argument("--python-tcp", action="store_true", help="skip iperf3 even if installed")
    ap.add_argument("--out", default="storage.json", help="file name under bench/results/")
    args = ap.parse_args(argv)
    if args.size_mib <= 0 or args.nodes < args.replicas:
        ap.error("need --size-mib > 0 and --nodes >= --replicas")
    console = Console()
    res = run(args, console)
    show(res, console)
    console.print(f"results: {write_result(args.out, res)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
