"""The cost of TLS on bulk throughput: put/get on an open and on a secure cluster.

    python bench/tls.py [--size-mib 1024] [--runs 2] [--dir DIR]

One run, one machine, the same file (random bytes) throughout. Two local clusters of
``--nodes`` node processes on loopback are started the way ``sector up`` starts them
(``sector.node.localcluster.start_cluster``): an *open* one (``--insecure``: plain
TCP) and a *secure* one (the default of ``sector up``: a cluster CA, a certificate per
node, TLS on every connection, the admin credential stored in a private
``$SECTOR_HOME``). Both run side by side and the transfers alternate between them,
so a change in the machine's load during the run hits both alike:

    put R=3    ``Client.put``: a pipelined chain client -> n1 -> n2 -> n3, every
               replica fsyncs before the put returns
    get R=3    ``Client.get`` of that file to a local file (BLAKE3 verified)
    put R=1    ``Client.put(replicas=1)``: only the client -> node link and one disk
    get R=1    ``Client.get`` of that file

each ``--runs`` times (best kept). On an open cluster the bulk bytes bypass asyncio
(``os.sendfile`` out, ``recv_into`` a buffer in a worker thread in); on TLS a worker
thread takes the connection's TLS state over and encrypts or decrypts them
(``transport/tlspump.py``), so the ratio secure/plain is the price of TLS itself.

Two references bound the ratio from above, on the same bytes:

    raw tcp / raw tls          one loopback connection, ``sendall`` of 1 MiB buffers
                               against ``recv_into`` (blocking sockets, the receiver
                               in another process); TLS with sector's own contexts
                               (``pki.server_context`` / ``user_client_context``)
    asyncio tcp / asyncio tls  the same through ``asyncio.open_connection``:
                               ``writer.write`` + ``drain`` against ``reader.read``
    asyncio sendfile tcp / tls ``loop.sendfile`` of the file into that stream, as
                               ``BulkChannel.sendfile`` does (put on the client, get
                               on the node): ``os.sendfile`` on TCP; on TLS asyncio's
                               fallback, 16 KiB blocks each read in an executor thread
    openssl speed              ``openssl speed -evp <cipher>`` on 16 KiB blocks (one
                               TLS record): the crypto alone, one core

Every phase also records the CPU seconds the node processes and this (client)
process spent, per GB moved: where the cores went.
Results: a rich table on stdout and ``bench/results/tls.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from _common import MB, cpu_seconds, drop_caches, machine, mbps, write_result
from rich.console import Console
from rich.table import Table

import sector
from sector.node.localcluster import start_cluster, stop_cluster
from sector.security import pki
from sector.transport.rpc import SOCK_BUF, STREAM_LIMIT

CHUNK = 16 << 20  # writing the source file
BUF = 1 << 20  # one send / recv of the raw references
MODES = ("plain", "secure")
REFERENCES = {"socket": "raw", "asyncio": "asyncio", "sendfile": "asyncio sendfile"}


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


def _tune(sock: socket.socket) -> None:
    """What sector.transport.rpc does to every connection."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCK_BUF)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCK_BUF)


# -- raw references -------------------------------------------------------------------


def _receiver(kind: str, tls_dir: str | None, size: int, pipe: Any) -> None:
    """Child process: accept one connection, read ``size`` bytes, report (bytes, cipher)."""
    ctx = pki.server_context(Path(tls_dir)) if tls_dir else None
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    pipe.send(lsock.getsockname()[1])
    if kind == "socket":
        conn, _ = lsock.accept()
        _tune(conn)
        if ctx is not None:
            conn = ctx.wrap_socket(conn, server_side=True)
        cipher = conn.cipher() if ctx is not None else None  # type: ignore[attr-defined]
        view = memoryview(bytearray(BUF))
        got = 0
        while got < size and (n := conn.recv_into(view)):
            got += n
        pipe.send((got, cipher))
        conn.close()
        lsock.close()
        return

    async def serve() -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            _tune(writer.get_extra_info("socket"))
            sslobj = writer.get_extra_info("ssl_object")
            got = 0
            while got < size and (chunk := await reader.read(BUF)):
                got += len(chunk)
            pipe.send((got, sslobj.cipher() if sslobj is not None else None))
            writer.close()
            done.set_result(None)

        server = await asyncio.start_server(handle, sock=lsock, ssl=ctx, limit=STREAM_LIMIT)
        async with server:
            await done

    asyncio.run(serve())


def raw_transfer(kind: str, tls_dir: Path | None, size: int, src: Path) -> tuple[float, Any]:
    """Seconds to move ``size`` bytes over one loopback connection, and the TLS cipher.

    ``kind``: "socket" (blocking sockets on both sides), "asyncio" (streams, 1 MiB
    writes) or "sendfile" (``loop.sendfile`` of ``src`` into an asyncio stream)."""
    mpc = mp.get_context("spawn")  # no fork: the parent has threads (clients, rich)
    ours, theirs = mpc.Pipe()
    rkind = "socket" if kind == "socket" else "asyncio"
    child = mpc.Process(
        target=_receiver, args=(rkind, str(tls_dir) if tls_dir else None, size, theirs)
    )
    child.start()
    try:
        if not ours.poll(30):
            raise RuntimeError("the receiver did not start")
        port = ours.recv()
        buf = memoryview(random.Random(3).randbytes(BUF))
        ctx = pki.user_client_context() if tls_dir else None
        t0 = time.perf_counter()
        if kind == "socket":
            with socket.create_connection(("127.0.0.1", port)) as s:
                _tune(s)
                conn = ctx.wrap_socket(s) if ctx is not None else s
                left = size
                while left:
                    n = min(BUF, left)
                    conn.sendall(buf[:n])
                    left -= n
                got, cipher = ours.recv()
                conn.close()
        else:

            async def send() -> Any:
                _, writer = await asyncio.open_connection(
                    "127.0.0.1", port, ssl=ctx, limit=STREAM_LIMIT
                )
                _tune(writer.get_extra_info("socket"))
                if kind == "sendfile":
                    # what BulkChannel.sendfile does: os.sendfile on TCP; on TLS asyncio
                    # falls back to reading and writing 16 KiB blocks
                    with open(src, "rb") as f:
                        await asyncio.get_running_loop().sendfile(writer.transport, f, 0, size)
                left = size if kind != "sendfile" else 0
                while left:
                    n = min(BUF, left)
                    writer.write(buf[:n])
                    await writer.drain()
                    left -= n
                res = await asyncio.get_running_loop().run_in_executor(None, ours.recv)
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
                return res

            got, cipher = asyncio.run(send())
        seconds = time.perf_counter() - t0
    finally:
        child.join(30)
        if child.is_alive():
            child.kill()
            child.join()
    if got != size:
        raise RuntimeError(f"{kind} reference moved {got} bytes, expected {size}")
    return seconds, cipher


def openssl_speed(cipher: str, seconds: int = 3) -> dict[str, Any] | None:
    """``openssl speed -evp`` of the negotiated AEAD on 16 KiB blocks; None without openssl."""
    exe = shutil.which("openssl")
    m = re.match(r"TLS_(AES_\d+_GCM|CHACHA20_POLY1305)", cipher) or re.search(
        r"(AES\d+-GCM|CHACHA20-POLY1305)", cipher
    )
    if exe is None or m is None:
        return None
    name = m.group(1).lower().replace("_", "-")
    name = re.sub(r"^aes-?(\d+)-gcm$", r"aes-\1-gcm", name)
    cmd = [exe, "speed", "-evp", name, "-bytes", "16384", "-seconds", str(seconds)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=60)
    # the last line: "<name>  <k bytes per second>k", in units of 1000 bytes
    for line in reversed(proc.stdout.splitlines()):
        if (hit := re.search(r"([\d.]+)k\s*$", line)) and not line.startswith("type"):
            return {"cipher": name, "mb_s": round(float(hit.group(1)) * 1000 / MB, 1)}
    return None


# -- clusters -------------------------------------------------------------------------


@contextlib.contextmanager
def cluster(directory: Path, nodes: int, secure: bool) -> Iterator[dict[str, Any]]:
    """A local cluster as ``sector up`` starts it (``--insecure`` when not secure)."""
    info = start_cluster(directory, nodes, 3, secure=secure)
    try:
        yield info
    finally:
        stop_cluster(directory)


# -- the run --------------------------------------------------------------------------


def run(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    size = args.size_mib << 20
    base = Path(args.dir) if args.dir else Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="sector-bench-tls-", dir=base))
    load_start = list(os.getloadavg())
    old_home = os.environ.get("SECTOR_HOME")
    # The secure cluster's admin credential goes here, not into the user's own home.
    os.environ["SECTOR_HOME"] = str(root / "home")
    runs: dict[str, list[dict[str, Any]]] = {}
    refs: dict[str, dict[str, Any]] = {}
    dropped: list[bool] = []
    ciphers: dict[str, Any] = {}

    def record(name: str, seconds: float, cpu: dict[str, float] | None = None) -> None:
        entry: dict[str, Any] = {
            "seconds": round(seconds, 4),
            "mb_s": round(mbps(size, seconds), 1),
        }
        if cpu is not None:
            gb = size / 1e9
            entry["cpu_s_per_gb"] = {k: round(v / gb, 2) for k, v in cpu.items()}
        runs.setdefault(name, []).append(entry)
        extra = ""
        if cpu is not None:
            extra = f", cpu s/GB nodes {cpu['nodes'] / (size / 1e9):.2f}"
            extra += f" client {cpu['client'] / (size / 1e9):.2f}"
        console.log(f"{name}: {mbps(size, seconds):,.1f} MB/s ({seconds:.2f} s{extra})")

    try:
        src = root / "source.bin"
        console.log(f"writing a {args.size_mib} MiB random source file under {root}")
        make_source(src, size)

        # The references: blocking sockets and asyncio streams, plain and TLS, with a
        # node certificate of a throwaway CA (sector's own server/client contexts).
        ca = pki.ClusterCA.create("bench")
        tls_dir = root / "ref-tls"
        ca.issue_node("ref", ips=["127.0.0.1"]).save(tls_dir)
        for _ in range(args.runs):
            for kind, label in REFERENCES.items():
                for tls in (False, True):
                    name = f"{label} {'tls' if tls else 'tcp'}"
                    seconds, cipher = raw_transfer(kind, tls_dir if tls else None, size, src)
                    if cipher:
                        ciphers[name] = list(cipher)
                    record(name, seconds)
        cipher_name = next(iter(ciphers.values()))[0] if ciphers else ""
        console.log(f"negotiated cipher: {ciphers.get('raw tls')}")
        speed = openssl_speed(cipher_name) if cipher_name else None
        if speed is not None:
            refs["openssl speed"] = speed
            console.log(f"openssl speed -evp {speed['cipher']} (16 KiB): {speed['mb_s']:,.1f} MB/s")

        console.log(f"starting two clusters of {args.nodes} nodes: open and secure (TLS)")
        with contextlib.ExitStack() as stack:
            infos = {
                mode: stack.enter_context(cluster(root / mode, args.nodes, mode == "secure"))
                for mode in MODES
            }
            clients = {
                mode: stack.enter_context(sector.connect(infos[mode]["address"])) for mode in MODES
            }
            pids = {mode: [int(n["pid"]) for n in infos[mode]["nodes"]] for mode in MODES}
            for mode, c in clients.items():
                c.mkdir("/bench", parents=True)
                who = c.whoami()
                if who["tls"] != (mode == "secure"):
                    raise RuntimeError(f"the {mode} cluster's client has tls={who['tls']}")
                if mode == "secure" and who["user"] != "admin":
                    raise RuntimeError(f"the secure cluster takes the client for {who['user']}")

            def timed(
                mode: str, fn: Any, *a: Any, **kw: Any
            ) -> tuple[float, dict[str, float], Any]:
                """Run fn(*a, **kw) after dropping caches: seconds, CPU (nodes, client), result."""
                dropped.append(drop_caches())
                n0, c0 = cpu_seconds(pids[mode]), time.process_time()
                t0 = time.perf_counter()
                out = fn(*a, **kw)
                dt = time.perf_counter() - t0
                cpu = {
                    "nodes": cpu_seconds(pids[mode]) - n0,
                    "client": time.process_time() - c0,
                }
                return dt, cpu, out

            copies: dict[str, list[int]] = {}
            dst = root / "got.bin"
            for i in range(args.runs):
                # alternate which cluster goes first, so neither always follows the other
                order = MODES if i % 2 == 0 else MODES[::-1]
                for r in (3, 1):
                    for mode in order:
                        c = clients[mode]
                        remote = f"/bench/r{r}-{i}.bin"
                        seconds, cpu, st = timed(mode, c.put, src, remote, replicas=r)
                        record(f"{mode} put R={r}", seconds, cpu)
                        stored = len(st.get("replicas") or [])
                        copies.setdefault(f"{mode} R={r}", []).append(stored)
                        if stored < r:
                            console.log(f"[yellow]{mode}: only {stored} of {r} replicas stored")

                        seconds, cpu, _ = timed(mode, c.get, remote, dst)
                        if dst.stat().st_size != size:
                            raise RuntimeError(f"get returned {dst.stat().st_size} bytes")
                        dst.unlink()
                        record(f"{mode} get R={r}", seconds, cpu)
                        c.rm(remote)
    finally:
        if old_home is None:
            os.environ.pop("SECTOR_HOME", None)
        else:
            os.environ["SECTOR_HOME"] = old_home
        if args.keep:
            console.log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    best = {name: max(rs, key=lambda e: e["mb_s"]) for name, rs in runs.items()}
    pairs = {
        "put R=3": ("plain put R=3", "secure put R=3"),
        "get R=3": ("plain get R=3", "secure get R=3"),
        "put R=1": ("plain put R=1", "secure put R=1"),
        "get R=1": ("plain get R=1", "secure get R=1"),
        "raw socket": ("raw tcp", "raw tls"),
        "asyncio stream": ("asyncio tcp", "asyncio tls"),
        "asyncio sendfile": ("asyncio sendfile tcp", "asyncio sendfile tls"),
    }
    ratios = {
        k: round(best[s]["mb_s"] / best[p]["mb_s"], 3) if best[p]["mb_s"] else 0.0
        for k, (p, s) in pairs.items()
    }
    return {
        "benchmark": "tls",
        "size_bytes": size,
        "nodes": args.nodes,
        "runs": args.runs,
        "mb": MB,
        "caches_dropped": all(dropped) if dropped else False,
        "cipher": ciphers.get("raw tls"),
        "best": best,
        "all_runs": runs,
        "replicas_stored": copies,
        "references": refs,
        "ratios_secure_over_plain": ratios,
        "loadavg_start": load_start,
        "machine": machine(),
    }


def show(res: dict[str, Any], console: Console) -> None:
    size_mib = res["size_bytes"] >> 20
    cipher = res["cipher"][0] if res["cipher"] else "?"
    t = Table(
        title=f"TLS cost: {size_mib} MiB, {res['nodes']} nodes, best of {res['runs']}"
        f" (MB = 10^6 bytes; cipher {cipher}; page caches dropped:"
        f" {'yes' if res['caches_dropped'] else 'no'})",
        caption="cpu: CPU seconds per GB moved, node processes + client process",
        caption_justify="left",
    )
    t.add_column("what")
    t.add_column("plain MB/s", justify="right")
    t.add_column("TLS MB/s", justify="right")
    t.add_column("TLS / plain", justify="right")
    t.add_column("cpu plain", justify="right")
    t.add_column("cpu TLS", justify="right")
    best, ratios = res["best"], res["ratios_secure_over_plain"]

    def cpu(name: str) -> str:
        c = best[name].get("cpu_s_per_gb")
        return f"{c['nodes']:.1f}+{c['client']:.1f}" if c else ""

    for what in ("put R=3", "get R=3", "put R=1", "get R=1"):
        p, s = f"plain {what}", f"secure {what}"
        t.add_row(
            what,
            f"{best[p]['mb_s']:,.1f}",
            f"{best[s]['mb_s']:,.1f}",
            f"{ratios[what]:.2f}",
            cpu(p),
            cpu(s),
        )
    t.add_section()
    for what, (p, s) in {
        "raw socket": ("raw tcp", "raw tls"),
        "asyncio stream": ("asyncio tcp", "asyncio tls"),
        "asyncio sendfile": ("asyncio sendfile tcp", "asyncio sendfile tls"),
    }.items():
        t.add_row(what, f"{best[p]['mb_s']:,.1f}", f"{best[s]['mb_s']:,.1f}", f"{ratios[what]:.2f}")
    if sp := res["references"].get("openssl speed"):
        t.add_row(f"openssl speed {sp['cipher']} (16 KiB)", "", f"{sp['mb_s']:,.1f}", "")
    console.print(t)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--size-mib", type=int, default=1024, help="file size in MiB (1024)")
    ap.add_argument("--nodes", type=int, default=3, help="node processes per cluster (3)")
    ap.add_argument("--runs", type=int, default=2, help="runs of each transfer, best kept (2)")
    ap.add_argument("--dir", help="where to put the temp dir (default: the system temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    ap.add_argument("--out", default="tls.json", help="file name under bench/results/")
    args = ap.parse_args(argv)
    if args.size_mib <= 0 or args.nodes < 3 or args.runs < 1:
        ap.error("need --size-mib > 0, --nodes >= 3 and --runs >= 1")
    console = Console()
    res = run(args, console)
    show(res, console)
    console.print(f"results: {write_result(args.out, res)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
