"""Swarm distribution (issue 14): ten hosts want one file at the same moment.

    python bench/swarm.py [--sizes 1M,16M,256M] [--only sector,http,...] [--kill-half]
                          [--scenario file,venv] [--hosts 10] [--dir DIR] [--out swarm.json]

Root only: the testbed is ``--hosts`` (10) network namespaces on one bridge
(``sector.testing.netns.Hosts``), each with a full-duplex link of ``--rate`` (100
Mbit/s): ``tc tbf`` on both ends of its veth (``Hosts.shape``: 32 KB burst, 20 ms of
queue, chosen so one TCP stream gets ~95.7 Mbit/s with no retransmits; iperf3 checks it
between two hosts and the figure is printed and kept). A Sector node runs in every host
(``--host-id hN``, R = 3). Missing software is installed first: iperf3, nginx, aria2 and
opentracker with apt-get, libtorrent (PyPI) with pip; a system whose software is still
missing is skipped with a note.

The file scenario (the default). For each size (M = 2^20 bytes, G = 2^30: the sizes
double; ``--sizes 1M,2M,4M,...,1G`` or ``--sizes all`` for the issue's whole range),
every system in the same run, on the same testbed. In each, one process per host is
started and made ready (imported, listening, seeded), then a barrier releases them all
at once; makespan = from the release to the last host holding the whole file, verified
(size and BLAKE3 of every host's copy). The figure is makespan / (S/R), where S/R is
the time one link needs for the file at R = the iperf3 rate measured on this testbed
(``x_sr``; ``x_sr_nominal`` uses R = --rate, the JSON keeps both):

    sector       ``sector get --cluster <own node> PATH DEST`` on every host, run by the
                 CLI's own ``main`` in a process that imported it before the barrier.
                 Whatever the get does is measured: before swarm distribution each
                 host read one of the file's R = 3 replicas; with it (issue 14) a get
                 of a busy file goes through the reader's node, which joins the
                 file's swarm
    sector-cli   the same as the real command: a ``sector get`` process started on
                 every host at the barrier (interpreter start-up included); only up to
                 ``--cli-up-to`` (16M), above which start-up is lost in the transfer
    sector-kill  (--kill-half) the sector row, and one host holding a replica is
                 SIGKILLed (every process in it: its node and its reader) halfway
                 through (half the sector row's makespan at that size, or S/R); the
                 makespan is that of the survivors. The node is restarted after
    sector-distribute
                 ``sector distribute PATH --to all`` run once from host 0, timed until
                 it returns (every node holds the file then); skipped with a note while
                 the command does not exist
    http         nginx (sendfile on) in host 0; ``curl`` on all ten hosts (host 0 too,
                 from itself): the issue's single-server anchor, nine readers through
                 one link
    aria2        BitTorrent with Debian's aria2c: opentracker in host 0 (a whitelist
                 holding the torrent: Debian builds it private), the seeder in host 0,
                 leechers in the nine others; DHT and LPD off, PEX on, no crypto, no
                 rate limits, peers unlimited, every leecher seeds on when done
                 (aria2's hook gives the time it had the file)
    libtorrent   libtorrent 2.x (PyPI) in a Python process per host, the same tracker
                 and torrent; TCP only (no uTP), no encryption, DHT/LSD/UPnP/NAT-PMP
                 off, no rate limits, every peer unchoked (unchoke_slots_limit -1)
    chain        the pipelined chain, a lower bound without fault tolerance: host 0
                 sends to host 1, which forwards each block to host 2 as it writes it,
                 and so on to host 9 (a small Python relay per host)

The torrent (v1, made with libtorrent, read by both) has libtorrent's own choice of
piece size, what its users get (16 KiB at 1 MiB, 64 KiB at 16 MiB, 256 KiB at 256 MiB,
512 KiB at 1 GiB), unless --piece says otherwise. Measured here at 256 MiB (aria2,
libtorrent): 4 MiB pieces, the low end of the issue's 4-64 MiB production range, gave
1.94x and 1.89x S/R; 1 MiB 2.01x and 1.79x; 256 KiB 1.52x and 1.68x. The BitTorrent
seeder and the chain's source (host 0) hold the file and count as done at the barrier;
Sector's replica holders run their get like every host (a local read), and nginx's host
fetches from itself.

The goals of the issue are marked on the Sector rows: <= 1.15x S/R from 16 MiB up, no
slower than the single HTTP server below 2 MiB, <= 1.3x with one host killed halfway.

The venv scenario (``--scenario venv``): a Python virtual environment with numpy in it
(its ~1,500 files copied from this interpreter's numpy; the interpreter links left out,
every host has the interpreter) is stored in Sector twice: spread (R = 3, written from
outside the hosts) and on one node (R = 1, written from host 0: every copy on host 0).
If ``sector mount`` exists, each host mounts the cluster and runs ``python -S -c
"import numpy"`` with the mounted venv's site-packages on PYTHONPATH, all at once;
otherwise every host runs ``sector get -r`` of the tree at once (the output says which).
Both layouts are timed; the ratio one-node / spread is the gain of spreading the reads.

Clean-up: every process runs inside a host, so closing the hosts ends them; the
namespaces, bridge and qdiscs go in a ``finally``, and a run starts by removing what a
killed run of this script left behind (``Hosts.remove_stale``). Results: a rich table
on stdout and ``bench/results/swarm.json`` (``--out``), with the load average (the
machine's 2 cores are shared) at the start, before each size and at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))  # measure this checkout's Sector (nodes get PYTHONPATH too)

from _common import machine, write_result  # noqa: E402

from sector.node.localcluster import pid_alive  # noqa: E402
from sector.testing.cluster import ProcCluster, wait_for  # noqa: E402
from sector.testing.netns import Hosts  # noqa: E402

CHILD = HERE / "_swarm_child.py"
PREFIX = "swb"  # the hosts' name prefix: remove_stale clears only this script's leftovers
NODE_PORT = 7000
HTTP_PORT = 8080
TRACKER_PORT = 6969
BT_PORT = 6881
RELAY_PORT = 7900
KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
ALL_SIZES = [MIB << k for k in range(11)]  # 1 MiB .. 1 GiB, doubling
SYSTEMS = (
    "sector",
    "sector-cli",
    "sector-kill",
    "sector-distribute",
    "http",
    "aria2",
    "libtorrent",
    "chain",
)
SECTORS = ("sector", "sector-cli", "sector-kill", "sector-distribute")
APT = {"iperf3": "iperf3", "nginx": "nginx-light", "aria2c": "aria2", "opentracker": "opentracker"}
GOALS_LINE = (
    "goals (issue 14): <= 1.15x S/R from 16 MiB up; no slower than the single HTTP server"
    " below 2 MiB; <= 1.3x S/R with one host SIGKILLed halfway"
)


class Skip(Exception):
    """A system that cannot run here (its software is missing): noted, not fatal."""


# -- sizes ------------------------------------------------------------------------------


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+)\s*([kKmMgG]?)(?:i?[bB])?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 1M, 256M, 1G)")
    return int(m.group(1)) * {"": 1, "k": KIB, "m": MIB, "g": GIB}[m.group(2).lower()]


def parse_sizes(text: str) -> list[int]:
    if text.strip() == "all":
        return list(ALL_SIZES)
    return [parse_size(x) for x in text.split(",") if x.strip()]


def show_size(size: int) -> str:
    for unit, scale in (("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size / MIB:.2f} MiB" if size >= MIB else f"{size} B"


# -- software -----------------------------------------------------------------------------


def ensure_software(console: Any, want_mount: bool) -> dict[str, str]:
    """Install what is missing (apt-get, pip); returns {what: why missing} after."""
    missing = [pkg for exe, pkg in APT.items() if shutil.which(exe) is None]
    if want_mount and shutil.which("fusermount3") is None:
        missing.append("fuse3")
    if missing:
        console.log(f"installing {' '.join(missing)} with apt-get")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        lock = ["-o", "DPkg::Lock::Timeout=300"]  # another apt-get may hold the lock
        subprocess.run(["apt-get", *lock, "update", "-qq"], env=env, capture_output=True)
        subprocess.run(
            ["apt-get", *lock, "install", "-y", "-qq", *missing], env=env, capture_output=True
        )
    if importlib.util.find_spec("libtorrent") is None:
        console.log("installing libtorrent (PyPI) with pip")
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "libtorrent"], capture_output=True
        )
        importlib.invalidate_caches()
    gone = {exe: f"{exe} not installed (apt-get {pkg})" for exe, pkg in APT.items()}
    gone = {k: v for k, v in gone.items() if shutil.which(k) is None}
    if importlib.util.find_spec("libtorrent") is None:
        gone["libtorrent"] = "libtorrent not installed (pip install libtorrent)"
    return gone


# -- files ------------------------------------------------------------------------------


def make_file(path: Path, size: int, seed: int) -> str:
    """Random bytes (numpy's generator: ~1 GB/s); returns their BLAKE3 as Sector writes it."""
    import blake3
    import numpy as np

    rng = np.random.default_rng(seed)
    h = blake3.blake3()
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 64 * MIB)
            block = rng.bytes(n)
            f.write(block)
            h.update(block)
            left -= n
    return "blake3:" + h.hexdigest()


def file_digest(path: Path) -> str:
    import blake3

    h = blake3.blake3(max_threads=blake3.blake3.AUTO)
    h.update_mmap(path)
    return "blake3:" + h.hexdigest()


def tree_summary(root: Path) -> tuple[int, int]:
    """(regular files, bytes) under root."""
    files = nbytes = 0
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            if os.path.isfile(p) and not os.path.islink(p):
                files += 1
                nbytes += os.path.getsize(p)
    return files, nbytes


# -- the barrier ----------------------------------------------------------------------------


class Barrier:
    """One process per host, started, made ready, released at once, and heard back from
    over a Unix socket (see bench/_swarm_child.py for the protocol)."""

    def __init__(self, hosts: Hosts, workdir: Path, env: dict[str, str]) -> None:
        self.hosts = hosts
        self.env = env
        self.path = str(workdir / "control.sock")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(self.path)
        self.server.listen(64)
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.conns: dict[int, socket.socket] = {}
        self.buffers: dict[int, bytes] = {}
        self.results: dict[int, dict[str, Any]] = {}
        self.logdir = workdir

    def start(self, specs: dict[int, dict[str, Any]], tag: str) -> None:
        for i, spec in specs.items():
            log = open(self.logdir / f"{tag}-h{i}.log", "ab")  # noqa: SIM115 - to the child
            cmd = [*self.hosts.wrap(i), sys.executable, str(CHILD), self.path]
            self.procs[i] = subprocess.Popen(
                [*cmd, json.dumps({"host": i, **spec})],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )
            log.close()

    def _lines(self, conn: socket.socket, host: int) -> Iterator[dict[str, Any]]:
        data = conn.recv(65536)
        if not data:
            raise EOFError
        buf = self.buffers.get(host, b"") + data
        *lines, rest = buf.split(b"\n")
        self.buffers[host] = rest
        for line in lines:
            if line.strip():
                yield json.loads(line)

    def ready(self, timeout: float) -> None:
        """Until every child has said it is ready (or has failed: its result stands)."""
        deadline = time.monotonic() + timeout
        pending: dict[socket.socket, int | None] = {}
        ready: set[int] = set()
        sel = selectors.DefaultSelector()
        sel.register(self.server, selectors.EVENT_READ)
        try:
            while len(ready | set(self.results)) < len(self.procs):
                left = deadline - time.monotonic()
                dead = [i for i, p in self.procs.items() if p.poll() is not None]
                dead = [i for i in dead if i not in ready and i not in self.results]
                for i in dead:
                    self.results[i] = {"ok": False, "error": "exited before it was ready"}
                if left <= 0:
                    late = sorted(set(self.procs) - ready - set(self.results))
                    raise TimeoutError(f"hosts {late} not ready after {timeout:g} s")
                for key, _ in sel.select(min(left, 0.5)):
                    if key.fileobj is self.server:
                        conn, _ = self.server.accept()
                        pending[conn] = None
                        sel.register(conn, selectors.EVENT_READ)
                        continue
                    conn = cast(socket.socket, key.fileobj)
                    try:
                        msgs = list(self._lines(conn, id(conn)))
                    except EOFError:
                        sel.unregister(conn)
                        continue
                    for msg in msgs:
                        host = int(msg["host"])
                        self.conns[host] = conn
                        self.buffers[host] = self.buffers.pop(id(conn), b"")
                        if msg.get("ready"):
                            ready.add(host)
                        else:
                            self.results[host] = msg
        finally:
            sel.close()

    def release(self) -> float:
        t = time.time()
        for conn in self.conns.values():
            with contextlib.suppress(OSError):
                conn.sendall(b'{"go": true}\n')
        return t

    def collect(
        self, timeout: float, at: tuple[float, Callable[[], None]] | None = None
    ) -> dict[int, dict[str, Any]]:
        """Every host's result (a host whose process died without one: "gone").
        ``at``: (time.time() moment, action) run once during the wait (the kill)."""
        deadline = time.time() + timeout
        sel = selectors.DefaultSelector()
        waiting = {h for h in self.procs if h not in self.results}
        for h in waiting:
            if h in self.conns:
                sel.register(self.conns[h], selectors.EVENT_READ, h)
            else:
                self.results[h] = {"ok": False, "error": "never connected"}
        waiting = {h for h in self.procs if h not in self.results}
        try:
            while waiting and time.time() < deadline:
                wake = deadline
                if at is not None:
                    if time.time() >= at[0]:
                        at[1]()
                        at = None
                        continue
                    wake = min(wake, at[0])
                for key, _ in sel.select(max(0.0, wake - time.time())):
                    h = key.data
                    try:
                        for msg in self._lines(cast(socket.socket, key.fileobj), h):
                            self.results[h] = msg
                    except EOFError:
                        self.results.setdefault(
                            h, {"ok": False, "error": "gone (killed?)", "gone": True}
                        )
                    if h in self.results:
                        sel.unregister(key.fileobj)
                        waiting.discard(h)
        finally:
            sel.close()
        for h in waiting:
            self.results[h] = {"ok": False, "error": f"no result after {timeout:.0f} s"}
        return self.results

    def close(self) -> None:
        """Stop: closing a child's socket tells seeders and relays to exit."""
        for conn in self.conns.values():
            with contextlib.suppress(OSError):
                conn.close()
        for p in self.procs.values():
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
        self.server.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


# -- the testbed ------------------------------------------------------------------------------


class Bed:
    """The hosts, their links, a Sector node in each, and where files go."""

    def __init__(self, args: argparse.Namespace, root: Path, console: Any) -> None:
        self.args = args
        self.root = root
        self.console = console
        self.n = args.hosts
        self.hosts: Hosts | None = None
        self.cluster: ProcCluster | None = None
        self.link: dict[str, Any] = {}
        home = root / "home"
        home.mkdir()
        self.env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "PYTHONUNBUFFERED": "1",
            "SECTOR_HOME": str(home),  # no credential of the user's own is picked up
        }

    def __enter__(self) -> Bed:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cluster is not None:
            self.cluster.close()
        if self.hosts is not None:
            self.hosts.unshape()
            self.hosts.close()

    @property
    def net(self) -> Hosts:
        assert self.hosts is not None, "build() first"
        return self.hosts

    @property
    def cl(self) -> ProcCluster:
        assert self.cluster is not None, "build() first"
        return self.cluster

    @property
    def ips(self) -> list[str]:
        return self.net.ips

    def build(self) -> None:
        t0 = time.monotonic()
        self.hosts = Hosts(self.n, prefix=PREFIX)
        self.hosts.shape(self.args.rate)
        self.console.log(
            f"{self.n} hosts on bridge {self.hosts.bridge}, each a {self.args.rate / 1e6:g}"
            " Mbit/s full-duplex link (tc tbf on both ends of its veth)"
        )
        if shutil.which("iperf3"):
            best: dict[str, float] = {}
            for _ in range(2):  # the better of two: a busy moment of the machine is not the link
                got = self.hosts.iperf(1, 2, seconds=self.args.iperf_seconds)
                if got["bits_per_second"] > best.get("bits_per_second", 0):
                    best = got
            self.link = {**best, "measured_with": "iperf3"}
            self.console.log(
                f"link check: iperf3 h1 -> h2, one TCP stream, {best['seconds']:.0f} s:"
                f" {best['bits_per_second'] / 1e6:.1f} Mbit/s"
                f" ({best['bits_per_second'] / self.args.rate:.1%} of the"
                f" {self.args.rate / 1e6:g} Mbit/s tbf rate), {best['retransmits']:.0f} retransmits"
            )
        else:
            self.link = {"bits_per_second": self.args.rate, "measured_with": "nominal"}
            self.console.log("[yellow]no iperf3: S/R uses the nominal rate")
        self.cluster = ProcCluster(self.root / "cluster", replicas=self.args.replicas, env=self.env)
        for i in range(self.n):
            # read when each node is spawned; one engine each: no Sphere job runs here
            self.cluster.node_args = ["--host-id", f"h{i}", "--engines", "1"]
            self.cluster.add(listen=f"{self.ips[i]}:{NODE_PORT}", wrap=self.hosts.wrap(i))
        self.cluster.node_args = []
        self.cluster.wait_ring(120)
        self.console.log(
            f"{self.n} Sector nodes up, R = {self.args.replicas}"
            f" ({time.monotonic() - t0:.0f} s to build the testbed)"
        )

    @property
    def rate(self) -> float:
        """Bytes/s of one link: what S/R divides by."""
        return self.link["bits_per_second"] / 8

    def node(self, i: int) -> str:
        return f"{self.ips[i]}:{NODE_PORT}"

    def barrier(self) -> Barrier:
        return Barrier(self.net, self.root, self.env)

    def sector_cli(self, *words: str) -> list[str]:
        return [sys.executable, "-m", "sector", *words]

    def has_command(self, *words: str) -> bool:
        """Does this checkout's `sector` know the command (``sector WORDS --help``)?"""
        proc = subprocess.run(
            [*self.sector_cli(*words), "--help"], capture_output=True, env=self.env, check=False
        )
        return proc.returncode == 0

    def put(self, local: Path, remote: str, replicas: int | None = None) -> dict[str, Any]:
        """Upload from outside the hosts (the bridge's address: no node there, so the
        replicas spread by placement); not timed."""
        with self.cl.connect(self.node(0)) as c:
            c.mkdir(str(Path(remote).parent), parents=True)
            return c.put(local, remote, replicas=replicas)

    def restart_node(self, i: int) -> None:
        self.cl.restart(self.cl.nodes[i])
        self.cl.wait_ring(120)


@contextlib.contextmanager
def serving(
    argv: list[str], log: Path, env: dict[str, str], ready: Callable[[], bool], what: str
) -> Iterator[subprocess.Popen[bytes]]:
    """A server process (nginx, opentracker) until the block ends; ``ready`` polled."""
    with open(log, "ab") as f:
        proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, env=env)
    try:

        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited: {log.read_text(errors='replace')[-500:]}")
            return ready()

        wait_for(up, 30, interval=0.05, what=what)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return bool(r.status < 500)
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except OSError:
        return False


# -- one timed run ------------------------------------------------------------------------------


def timed_run(
    bed: Bed,
    specs: dict[int, dict[str, Any]],
    tag: str,
    timeout: float,
    before_release: Callable[[], None] | None = None,
    kill: tuple[int, float] | None = None,
) -> tuple[float, dict[int, dict[str, Any]], dict[str, Any]]:
    """Start ``specs`` (host -> child spec), wait until all are ready, release them at
    once and collect: (release time, results per host, facts). ``kill``: (host, seconds
    after the release) to SIGKILL every process of that host."""
    facts: dict[str, Any] = {"loadavg": [round(x, 2) for x in os.getloadavg()]}
    b = bed.barrier()
    try:
        b.start(specs, tag)
        b.ready(timeout=180)
        if before_release is not None:
            before_release()
        t0 = b.release()
        at = None
        if kill is not None:
            victim, after = kill

            def do_kill() -> None:
                facts["killed"] = {
                    "host": victim,
                    "at_s": round(time.time() - t0, 3),
                    "pids": bed.net.kill(victim),
                }

            at = (t0 + after, do_kill)
        results = b.collect(timeout, at=at)
    finally:
        b.close()
    return t0, results, facts


def summarize(
    system: str,
    size: int,
    t0: float,
    results: dict[int, dict[str, Any]],
    facts: dict[str, Any],
    rate: float,
    nominal: float,
) -> dict[str, Any]:
    """A row: makespan over the hosts that lived, x S/R, each host's time."""
    victim = (facts.get("killed") or {}).get("host")
    done: dict[int, float | None] = {}
    errors = []
    for h in sorted(results):
        r = results[h]
        if h == victim:
            done[h] = None
            continue
        if not r.get("ok"):
            errors.append(f"h{h}: {r.get('error') or 'failed'}")
            done[h] = None
            continue
        done[h] = round(float(r["end"]) - t0, 4)
    row: dict[str, Any] = {
        "system": system,
        "size_bytes": size,
        "hosts_done_s": [done[h] for h in sorted(done)],
        "seeds": sorted(h for h, r in results.items() if r.get("seed")),
        **facts,
    }
    if errors:
        row["status"] = "failed: " + "; ".join(errors)[:600]
        return row
    makespan = max(v for v in done.values() if v is not None)
    timed = sorted(v for h, v in done.items() if v is not None and h not in row["seeds"])
    row.update(
        makespan_s=round(makespan, 4),
        first_s=round(timed[0], 4) if timed else None,
        median_s=round(timed[len(timed) // 2], 4) if timed else None,
    )
    if size:
        row.update(
            sr_s=round(size / rate, 4),
            x_sr=round(makespan / (size / rate), 3),
            x_sr_nominal=round(makespan / (size / nominal), 3),
        )
    return row


def verify(row: dict[str, Any], dests: dict[int, Path], digest: str) -> None:
    """Every host that got the file (not the seeds, not a killed host) has it whole."""
    if "makespan_s" not in row:
        return
    bad = []
    checked = 0
    victim = (row.get("killed") or {}).get("host")
    for h, path in dests.items():
        if h in row["seeds"] or h == victim:
            continue
        if not path.exists():
            bad.append(f"h{h}: no file")
        elif file_digest(path) != digest:
            bad.append(f"h{h}: wrong bytes ({path.stat().st_size} bytes)")
        checked += 1
    row["verified"] = f"{checked - len(bad)}/{checked} BLAKE3"
    if bad:
        row["status"] = "failed verification: " + "; ".join(bad)
        row.pop("makespan_s", None)


def dest_dirs(bed: Bed, system: str, size: int) -> dict[int, Path]:
    base = bed.root / "dl" / f"{system}-{size}"
    out = {}
    for i in range(bed.n):
        d = base / f"h{i}"
        d.mkdir(parents=True, exist_ok=True)
        out[i] = d
    return out


def clear(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


# -- the systems ---------------------------------------------------------------------------------


class FileRun:
    """The file scenario at one size: the source file and the torrent, shared by the peers."""

    def __init__(self, bed: Bed, size: int, seed: int) -> None:
        self.bed = bed
        self.size = size
        self.dir = bed.root / "src" / str(size)
        self.dir.mkdir(parents=True)
        self.name = "file.bin"
        self.src = self.dir / self.name
        self.digest = make_file(self.src, size, seed)
        self.seed = seed
        self.torrent: Path | None = None
        self.info_hash = ""
        self.piece = 0  # the torrent's, once made
        self.sector_makespan: float | None = None  # the sector row's, for --kill-half

    @property
    def timeout(self) -> float:
        return 120 + 25 * self.size / self.bed.rate

    def close(self) -> None:
        clear(self.dir)

    # -- sector ----------------------------------------------------------------------

    def sector(self, system: str) -> dict[str, Any]:
        bed = self.bed
        # A file of its own per row (fresh random bytes): no cache or swarm state of an
        # earlier row can serve it.
        local = bed.root / "src" / f"{system}-{self.size}.bin"
        digest = make_file(local, self.size, self.seed + SYSTEMS.index(system) + 1)
        remote = f"/swarm/{system}-{self.size}.bin"
        st = bed.put(local, remote)
        local.unlink()
        if st.get("checksum") != digest:
            raise RuntimeError(f"{remote}: stored checksum {st.get('checksum')} != {digest}")
        holders = sorted(
            {bed.ips.index(r["address"].rsplit(":", 1)[0]) for r in st.get("replicas") or []}
        )
        dests = {i: d / self.name for i, d in dest_dirs(bed, system, self.size).items()}
        facts: dict[str, Any] = {"replica_hosts": holders}
        if system == "sector-distribute":
            specs = {
                0: {
                    "kind": "cmd",
                    "argv": bed.sector_cli(
                        "distribute", remote, "--to", "all", "--cluster", bed.node(0)
                    ),
                }
            }
        elif system == "sector-cli":
            specs = {
                i: {
                    "kind": "cmd",
                    "argv": bed.sector_cli("get", "--cluster", bed.node(i), remote, str(dests[i])),
                }
                for i in range(bed.n)
            }
        else:
            specs = {
                i: {
                    "kind": "sector",
                    "argv": ["get", "--cluster", bed.node(i), remote, str(dests[i])],
                    "stderr": str(bed.root / f"{system}-{self.size}-h{i}.err"),
                }
                for i in range(bed.n)
            }
        kill = None
        if system == "sector-kill":
            half = (self.sector_makespan or self.size / bed.rate) / 2
            # a host that holds a replica: its readers must go elsewhere mid-file
            kill = (holders[0] if holders else 1, half)
            facts["kill_after_s"] = round(half, 3)
        t0, results, run_facts = timed_run(
            bed, specs, f"{system}-{self.size}", self.timeout, kill=kill
        )
        row = summarize(
            system, self.size, t0, results, {**facts, **run_facts}, bed.rate, bed.args.rate / 8
        )
        if system == "sector-distribute":
            row["note"] = "timed until `sector distribute --to all` returns"
        else:
            verify(row, {i: p for i, p in dests.items() if i in results}, digest)
        if system == "sector" and "makespan_s" in row:
            self.sector_makespan = row["makespan_s"]
        if kill is not None:
            bed.console.log(f"restarting the node of h{kill[0]} (killed)")
            bed.restart_node(kill[0])
        with contextlib.suppress(Exception), bed.cl.connect(bed.node(1)) as c:
            c.rm(remote)
        clear(bed.root / "dl" / f"{system}-{self.size}")
        return row

    # -- http --------------------------------------------------------------------------

    def http(self) -> dict[str, Any]:
        bed = self.bed
        conf_dir = bed.root / "nginx"
        (conf_dir / "tmp").mkdir(parents=True, exist_ok=True)
        conf = conf_dir / "nginx.conf"
        tmp = conf_dir / "tmp"
        conf.write_text(
            "user root;\nworker_processes 2;\ndaemon off;\n"
            f"pid {conf_dir}/nginx.pid;\nerror_log {conf_dir}/error.log;\n"
            "events { worker_connections 1024; }\n"
            "http {\n  sendfile on;\n  tcp_nopush on;\n  access_log off;\n"
            f"  client_body_temp_path {tmp}/body;\n  proxy_temp_path {tmp}/proxy;\n"
            f"  fastcgi_temp_path {tmp}/fastcgi;\n  uwsgi_temp_path {tmp}/uwsgi;\n"
            f"  scgi_temp_path {tmp}/scgi;\n"
            f"  server {{ listen {bed.ips[0]}:{HTTP_PORT}; root {self.dir}; }}\n}}\n"
        )
        url = f"http://{bed.ips[0]}:{HTTP_PORT}/{self.name}"
        dests = {i: d / self.name for i, d in dest_dirs(bed, "http", self.size).items()}
        specs = {
            i: {"kind": "cmd", "argv": ["curl", "-sS", "-f", "-o", str(dests[i]), url]}
            for i in range(bed.n)
        }
        argv = [*bed.net.wrap(0), "nginx", "-c", str(conf), "-e", f"{conf_dir}/error.log"]
        with serving(argv, conf_dir / "nginx.out", bed.env, lambda: http_ok(url), "nginx"):
            t0, results, facts = timed_run(bed, specs, f"http-{self.size}", self.timeout)
        row = summarize("http", self.size, t0, results, facts, bed.rate, bed.args.rate / 8)
        verify(row, dests, self.digest)
        clear(bed.root / "dl" / f"http-{self.size}")
        return row

    # -- BitTorrent --------------------------------------------------------------------

    def make_torrent(self) -> None:
        import libtorrent as lt

        bed = self.bed
        files = lt.list_files(str(self.src))
        # piece size 0: libtorrent chooses, as for any of its users
        t = lt.create_torrent(files, bed.args.piece, lt.create_torrent.v1_only)
        self.piece = t.piece_length()
        t.add_tracker(f"http://{bed.ips[0]}:{TRACKER_PORT}/announce")
        t.set_creator("bench/swarm.py")
        lt.set_piece_hashes(t, str(self.dir))
        self.torrent = bed.root / "bt" / f"{self.size}.torrent"
        self.torrent.parent.mkdir(exist_ok=True)
        self.torrent.write_bytes(lt.bencode(t.generate()))
        info = lt.torrent_info(str(self.torrent))
        self.info_hash = str(info.info_hash())

    @contextlib.contextmanager
    def tracker(self) -> Iterator[None]:
        """A fresh opentracker in host 0 for one system (no peers left from another).
        Debian builds it private: the torrent's info hash goes on its whitelist, read
        from its chroot after it drops root for nobody."""
        bed = self.bed
        if self.torrent is None:
            self.make_torrent()
        chroot = bed.root / "bt" / "chroot"
        chroot.mkdir(parents=True, exist_ok=True)
        chroot.chmod(0o755)
        (chroot / "whitelist").write_text(self.info_hash + "\n")
        (chroot / "whitelist").chmod(0o644)
        conf = bed.root / "bt" / "opentracker.conf"
        conf.write_text(
            f"listen.tcp_udp {bed.ips[0]}:{TRACKER_PORT}\ntracker.rootdir {chroot}\n"
            "tracker.user nobody\naccess.whitelist /whitelist\n"
        )
        argv = [*bed.net.wrap(0), "opentracker", "-f", str(conf)]
        with serving(
            argv,
            bed.root / "bt" / "opentracker.log",
            bed.env,
            lambda: self.scrape() >= 0,
            "tracker",
        ):
            yield

    def scrape(self) -> int:
        """Seeders the tracker knows of (-1: no answer)."""
        ih = urllib.parse.quote(bytes.fromhex(self.info_hash))
        url = f"http://{self.bed.ips[0]}:{TRACKER_PORT}/scrape?info_hash={ih}"
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                body = r.read()
        except OSError:
            return -1
        m = re.search(rb"8:completei(\d+)e", body)
        return int(m.group(1)) if m else 0

    def aria2(self) -> dict[str, Any]:
        bed = self.bed
        if self.torrent is None:
            self.make_torrent()
        dests = dest_dirs(bed, "aria2", self.size)
        common = [
            "aria2c",
            f"--listen-port={BT_PORT}",
            "--enable-dht=false",
            "--enable-dht6=false",
            "--bt-enable-lpd=false",
            "--enable-peer-exchange=true",
            "--seed-ratio=0.0",  # seed on, whatever the ratio
            "--bt-max-peers=0",
            "--max-overall-upload-limit=0",
            "--max-upload-limit=0",
            "--bt-min-crypto-level=plain",
            "--bt-require-crypto=false",
            "--file-allocation=falloc",
            "--check-integrity=false",
            "--disable-ipv6=true",
            "--summary-interval=0",
            "--console-log-level=warn",
            "--auto-save-interval=0",
        ]
        specs: dict[int, dict[str, Any]] = {}
        for i in range(bed.n):
            log = str(bed.root / f"aria2-{self.size}-h{i}.aria2.log")
            if i == 0:
                argv = [
                    *common,
                    f"--dir={self.dir}",
                    "--bt-seed-unverified=true",
                    str(self.torrent),
                ]
                specs[i] = {"kind": "aria2", "seed": True, "argv": argv, "log": log}
                continue
            done = bed.root / f"aria2-{self.size}-h{i}.done"
            hook = bed.root / f"aria2-{self.size}-h{i}.hook"
            hook.write_text(f"#!/bin/sh\ndate +%s.%N > {done}.tmp && mv {done}.tmp {done}\n")
            hook.chmod(0o755)
            argv = [*common, f"--dir={dests[i]}", f"--on-bt-download-complete={hook}"]
            specs[i] = {
                "kind": "aria2",
                "argv": [*argv, str(self.torrent)],
                "log": log,
                "done": str(done),
                "timeout": self.timeout,
            }

        def seeder_announced() -> None:
            wait_for(lambda: self.scrape() >= 1, 30, interval=0.05, what="the aria2 seeder")

        with self.tracker():
            t0, results, facts = timed_run(
                bed, specs, f"aria2-{self.size}", self.timeout, before_release=seeder_announced
            )
        row = summarize("aria2", self.size, t0, results, facts, bed.rate, bed.args.rate / 8)
        row["piece_bytes"] = self.piece
        verify(row, {i: d / self.name for i, d in dests.items()}, self.digest)
        clear(bed.root / "dl" / f"aria2-{self.size}")
        return row

    def libtorrent(self) -> dict[str, Any]:
        bed = self.bed
        if self.torrent is None:
            self.make_torrent()
        dests = dest_dirs(bed, "libtorrent", self.size)
        with self.tracker():
            specs = {
                i: {
                    "kind": "lt",
                    "seed": i == 0,
                    "ip": bed.ips[i],
                    "port": BT_PORT,
                    "torrent": str(self.torrent),
                    "save": str(self.dir if i == 0 else dests[i]),
                    "timeout": self.timeout,
                }
                for i in range(bed.n)
            }
            t0, results, facts = timed_run(bed, specs, f"libtorrent-{self.size}", self.timeout)
        row = summarize("libtorrent", self.size, t0, results, facts, bed.rate, bed.args.rate / 8)
        row["piece_bytes"] = self.piece
        verify(row, {i: d / self.name for i, d in dests.items()}, self.digest)
        clear(bed.root / "dl" / f"libtorrent-{self.size}")
        return row

    # -- the chain ---------------------------------------------------------------------

    def chain(self) -> dict[str, Any]:
        bed = self.bed
        dests = {i: d / self.name for i, d in dest_dirs(bed, "chain", self.size).items()}
        specs: dict[int, dict[str, Any]] = {}
        for i in range(bed.n):
            nxt = f"{bed.ips[i + 1]}:{RELAY_PORT}" if i + 1 < bed.n else None
            if i == 0:
                specs[i] = {"kind": "relay", "source": True, "file": str(self.src), "next": nxt}
            else:
                specs[i] = {
                    "kind": "relay",
                    "ip": bed.ips[i],
                    "port": RELAY_PORT,
                    "dest": str(dests[i]),
                    "next": nxt,
                }
        t0, results, facts = timed_run(bed, specs, f"chain-{self.size}", self.timeout)
        row = summarize("chain", self.size, t0, results, facts, bed.rate, bed.args.rate / 8)
        verify(row, dests, self.digest)
        clear(bed.root / "dl" / f"chain-{self.size}")
        return row


# -- the venv scenario ----------------------------------------------------------------------------


def build_venv(root: Path) -> Path:
    """A venv with numpy: the interpreter's numpy copied in; its links to the
    interpreter removed (Sector stores files; every host has the interpreter)."""
    import venv

    import numpy

    d = root / "venv-src" / "venv"
    venv.EnvBuilder(with_pip=False, symlinks=True).create(d)
    site = next((d / "lib").glob("python*/site-packages"))
    have = Path(numpy.__file__).resolve().parent.parent
    for p in [have / "numpy", have / "numpy.libs", *have.glob("numpy-*.dist-info")]:
        if p.is_dir():
            shutil.copytree(p, site / p.name, symlinks=False)
    for dirpath, dirnames, filenames in os.walk(d):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            if p.is_symlink():
                p.unlink()
    return d


def run_venv(bed: Bed, console: Any) -> tuple[list[dict[str, Any]], list[str]]:
    notes: list[str] = []
    src = build_venv(bed.root)
    files, nbytes = tree_summary(src)
    site_rel = next((src / "lib").glob("python*/site-packages")).relative_to(src)
    console.log(f"venv with numpy: {files:,} files, {nbytes / 1e6:,.1f} MB; storing it twice")
    layouts = {"spread": "/venvs/spread", "one node": "/venvs/one"}
    t = time.monotonic()
    put = [*bed.sector_cli("put", "-r", "--cluster", bed.node(0)), str(src), layouts["spread"]]
    subprocess.run(put, env=bed.env, check=True, capture_output=True)
    took_spread = time.monotonic() - t
    # From host 0 with R = 1: placement puts the first copy on the writer's own node.
    one = bed.sector_cli(
        "put", "-r", "--replicas", "1", "--cluster", bed.node(0), str(src), layouts["one node"]
    )
    t = time.monotonic()
    subprocess.run([*bed.net.wrap(0), *one], env=bed.env, check=True, capture_output=True)
    took_one = time.monotonic() - t
    with bed.cl.connect(bed.node(1)) as c:
        probe = f"{layouts['one node']}/{site_rel}/numpy/__init__.py"
        where = {r["address"] for r in c.stat(probe).get("replicas") or []}
    if where != {bed.node(0)}:
        notes.append(f"venv 'one node' copy of {probe} is on {sorted(where)}, not only h0")
    notes.append(
        f"venv stored in {took_spread:.0f} s (spread, R=3) and {took_one:.0f} s (one node, R=1)"
        " with `sector put -r`"
    )
    mount = bed.has_command("mount")
    mode = "mount + import numpy" if mount else "get -r"
    if not mount:
        notes.append(
            "`sector mount` does not exist yet (issue 14, branch wt-fuse): the venv rows time"
            " `sector get -r` of the tree on every host at once instead of a mount and"
            " `import numpy`"
        )
    rows: list[dict[str, Any]] = []
    importer = [sys.executable, "-S", "-c", "import numpy; print(numpy.__file__)"]
    # The floor: every host imports numpy from the local copy (page cache warm).
    specs: dict[int, dict[str, Any]] = {
        i: {"kind": "cmd", "argv": ["env", f"PYTHONPATH={src / site_rel}", *importer]}
        for i in range(bed.n)
    }
    t0, results, facts = timed_run(bed, specs, "venv-local", 300)
    row = summarize("venv local import", 0, t0, results, facts, 1.0, 1.0)
    rows.append(_venv_row(row, "local disk", "import numpy"))
    for layout, remote in layouts.items():
        dests = dest_dirs(bed, f"venv-{layout.replace(' ', '')}", 0)
        if mount:
            specs = {}
            for i in range(bed.n):
                mnt = bed.root / "mnt" / f"h{i}"
                env = {**bed.env, "PYTHONPATH": f"{mnt}{remote}/{site_rel}"}
                specs[i] = {
                    "kind": "mount",
                    "mountpoint": str(mnt),
                    "mount_argv": bed.sector_cli("mount", str(mnt), "--cluster", bed.node(i)),
                    "umount_argv": ["fusermount3", "-u", str(mnt)],
                    "argv": importer,
                    "env": env,
                    "log": str(bed.root / f"mount-h{i}.log"),
                }
        else:
            specs = {
                i: {
                    "kind": "sector",
                    "argv": ["get", "-r", "--cluster", bed.node(i), remote, str(dests[i] / "venv")],
                    "stderr": str(bed.root / f"venv-{i}.err"),
                }
                for i in range(bed.n)
            }
        t0, results, facts = timed_run(bed, specs, f"venv-{layout.replace(' ', '')}", 900)
        row = summarize(f"venv {mode}", 0, t0, results, facts, 1.0, 1.0)
        if mount and "makespan_s" in row:
            row["verified"] = f"{bed.n}/{bed.n} imported numpy from their mount"
        if not mount and "makespan_s" in row:
            bad = [i for i in range(bed.n) if tree_summary(dests[i] / "venv") != (files, nbytes)]
            row["verified"] = f"{bed.n - len(bad)}/{bed.n} trees ({files} files, {nbytes} bytes)"
            if bad:
                row["status"] = f"failed verification: hosts {bad} differ from the source tree"
                row.pop("makespan_s")
        rows.append(_venv_row(row, layout, mode))
        clear(bed.root / "dl" / f"venv-{layout.replace(' ', '')}-0")
    notes.append(f"venv: its bytes take {nbytes / bed.rate:.1f} s on one link (S/R)")
    spread, single = rows[1].get("makespan_s"), rows[2].get("makespan_s")
    if spread and single:
        notes.append(f"venv: every host from one node takes {single / spread:.2f}x the spread copy")
    return rows, notes


def _venv_row(row: dict[str, Any], layout: str, mode: str) -> dict[str, Any]:
    for k in ("sr_s", "x_sr", "x_sr_nominal", "size_bytes"):
        row.pop(k, None)
    return {**row, "layout": layout, "mode": mode}


# -- goals, table -------------------------------------------------------------------------------


def mark_goals(runs: list[dict[str, Any]]) -> None:
    http = {r["size_bytes"]: r.get("makespan_s") for r in runs if r["system"] == "http"}
    for r in runs:
        if "makespan_s" not in r:
            continue
        goals: dict[str, bool] = {}
        if r["system"] in ("sector", "sector-cli"):
            if r["size_bytes"] >= 16 * MIB:
                goals["<= 1.15x S/R"] = r["x_sr"] <= 1.15
            if r["size_bytes"] < 2 * MIB and http.get(r["size_bytes"]):
                goals["<= http"] = r["makespan_s"] <= http[r["size_bytes"]]
        elif r["system"] == "sector-kill":
            goals["<= 1.3x S/R"] = r["x_sr"] <= 1.3
        if goals:
            r["goals_met"] = goals


def _goal_cell(r: dict[str, Any]) -> str:
    g = r.get("goals_met") or {}
    return ", ".join(f"{k} {'✓' if v else '✗'}" for k, v in g.items())


def _note_cell(r: dict[str, Any]) -> str:
    bits = []
    if "status" in r:
        bits.append(r["status"])
    if r.get("verified"):
        bits.append(r["verified"])
    if r.get("killed"):
        bits.append(f"h{r['killed']['host']} killed at {r['killed']['at_s']:.2f} s")
    if r.get("replica_hosts") is not None and r["system"] in SECTORS:
        bits.append("replicas on " + ",".join(f"h{h}" for h in r["replica_hosts"]))
    if r.get("piece_bytes"):
        bits.append(f"piece {show_size(r['piece_bytes'])}")
    if r.get("note"):
        bits.append(r["note"])
    if r.get("loadavg"):
        bits.append(f"load {r['loadavg'][0]:.1f}")
    return "; ".join(bits)


def show(res: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    link = res["link"]
    r_mbit = link["bits_per_second"] / 1e6
    t = Table(
        title=f"Swarm: {res['hosts']} hosts want one file at once, each on a"
        f" {res['rate_bits'] / 1e6:g} Mbit/s link\n{GOALS_LINE}",
        caption=f"makespan: barrier release to the last host holding the whole file"
        f" (verified); x S/R: makespan over the time one link needs for the file at"
        f" R = {r_mbit:.1f} Mbit/s ({link['measured_with']}, one TCP stream h1 -> h2);"
        " first / median: the first and median host to finish, seeds left out."
        " ✓ goal met, ✗ missed",
        caption_justify="left",
    )
    for col in ("system", "size", "makespan s", "x S/R", "first / median s", "goal", "notes"):
        t.add_column(col, justify="right" if col not in ("system", "goal", "notes") else "left")
    last = None
    for r in res["runs"]:
        if last is not None and r["size_bytes"] != last:
            t.add_section()
        last = r["size_bytes"]
        if "makespan_s" in r:
            fm = f"{r['first_s']:.2f} / {r['median_s']:.2f}" if r.get("first_s") else ""
            cells = [f"{r['makespan_s']:.2f}", f"{r['x_sr']:.2f}", fm]
        else:
            cells = ["", "", ""]
        t.add_row(r["system"], show_size(r["size_bytes"]), *cells, _goal_cell(r), _note_cell(r))
    if res["runs"]:
        console.print(t)
    if res.get("venv"):
        v = Table(title="venv with numpy on every host at once (--scenario venv)")
        for col in ("what", "stored", "makespan s", "first / median s", "notes"):
            v.add_column(col, justify="right" if "s" in col.split()[-1:] else "left")
        for r in res["venv"]:
            ok = "makespan_s" in r
            fm = f"{r['first_s']:.2f} / {r['median_s']:.2f}" if r.get("first_s") else ""
            v.add_row(
                r["mode"], r["layout"], f"{r['makespan_s']:.2f}" if ok else "", fm, _note_cell(r)
            )
        console.print(v)
    for n in res["notes"]:
        console.print(f"note: {n}", soft_wrap=True)
    console.print(
        f"link: {r_mbit:.1f} Mbit/s measured ({link.get('retransmits', 0):.0f} retransmits);"
        f" tbf rate {res['rate_bits'] / 1e6:g} Mbit/s, burst {res['tbf']['burst_bytes']} B,"
        f" queue {res['tbf']['latency_s'] * 1000:g} ms"
    )
    load = ", ".join(f"{x:.2f}" for x in res["loadavg_start"])
    end = ", ".join(f"{x:.2f}" for x in res["machine"]["loadavg"])
    console.print(
        f"load average (1, 5, 15 min) at the start: {load}; at the end: {end};"
        f" {res['machine']['cpus']} cores shared with other work"
    )


# -- the run ----------------------------------------------------------------------------------------


def run(args: argparse.Namespace, console: Any) -> dict[str, Any]:
    from sector.testing import netns

    base = Path(args.dir) if args.dir else Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    for old in base.glob("sector-bench-swarm-*-*"):
        # a killed run's files (its pid in the name), unless kept on purpose
        m = re.match(r"sector-bench-swarm-(\d+)-", old.name)
        if m and not pid_alive(int(m.group(1))) and not (old / "KEEP").exists():
            shutil.rmtree(old, ignore_errors=True)
    root = Path(tempfile.mkdtemp(prefix=f"sector-bench-swarm-{os.getpid()}-", dir=base))
    load_start = [round(x, 2) for x in os.getloadavg()]
    runs: list[dict[str, Any]] = []
    venv_rows: list[dict[str, Any]] = []
    notes: list[str] = []
    link: dict[str, Any] = {}
    stale = Hosts.remove_stale(PREFIX)
    if stale:
        console.log(f"removed what a killed run left: {', '.join(stale)}")
    want_mount = "venv" in args.scenario
    missing = ensure_software(console, want_mount)
    need = {"http": ["nginx"], "aria2": ["aria2c", "opentracker"]}
    need["libtorrent"] = ["libtorrent", "opentracker"]
    try:
        with Bed(args, root, console) as bed:
            bed.build()
            link = bed.link
            have_distribute = bed.has_command("distribute")
            systems = [s for s in args.only if s != "sector-distribute" or have_distribute]
            if "sector-distribute" in args.only and not have_distribute and "file" in args.scenario:
                notes.append(
                    "sector-distribute skipped: `sector distribute` does not exist yet"
                    " (issue 14, branch wt-swarm); it runs once it does"
                )
            for s, exes in need.items():
                why = [missing[e] for e in exes if e in missing]
                if s in systems and why:
                    systems.remove(s)
                    notes.append(f"{s} skipped: {'; '.join(why)}")
            for k, size in enumerate(args.sizes if "file" in args.scenario else []):
                console.log(
                    f"[bold]{show_size(size)}[/bold]: S/R = {size / bed.rate:.2f} s;"
                    f" load average {os.getloadavg()[0]:.2f}"
                )
                fr = FileRun(bed, size, seed=1000 * (k + 1))
                try:
                    for system in systems:
                        if system == "sector-cli" and size > args.cli_up_to:
                            continue
                        console.log(f"{system} {show_size(size)} ...")
                        try:
                            row = fr.sector(system) if system in SECTORS else getattr(fr, system)()
                        except Exception as exc:  # one system's failure is a row, not the end
                            row = {"system": system, "size_bytes": size, "status": f"error: {exc}"}
                        runs.append(row)
                        console.log(f"  {_line(row)}")
                finally:
                    fr.close()
            if "venv" in args.scenario:
                try:
                    venv_rows, vnotes = run_venv(bed, console)
                    notes += vnotes
                except Exception as exc:
                    notes.append(f"venv scenario failed: {exc}")
    finally:
        if args.keep:
            (root / "KEEP").touch()
            console.log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    mark_goals(runs)
    return {
        "benchmark": "swarm",
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "hosts": args.hosts,
        "replicas": args.replicas,
        "rate_bits": args.rate,
        "tbf": {"burst_bytes": netns.TBF_BURST, "latency_s": netns.TBF_LATENCY},
        "link": link,
        "sr_rate": "measured (iperf3, one TCP stream)"
        if link.get("measured_with") == "iperf3"
        else "nominal",
        "sizes": args.sizes,
        "systems": args.only,
        "scenario": args.scenario,
        "runs": runs,
        "venv": venv_rows,
        "notes": notes,
        "loadavg_start": load_start,
        "machine": machine(),
    }


def _line(row: dict[str, Any]) -> str:
    if "makespan_s" not in row:
        return str(row.get("status"))
    return (
        f"makespan {row['makespan_s']:.2f} s = {row['x_sr']:.2f}x S/R"
        f" (hosts: {', '.join('-' if v is None else f'{v:.2f}' for v in row['hosts_done_s'])})"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument(
        "--sizes",
        default="1M,16M,256M",
        type=parse_sizes,
        help="comma-separated sizes, M = 2^20 bytes (1M,16M,256M); 'all' = 1M,2M,...,1G",
    )
    ap.add_argument(
        "--only",
        default=None,
        help=f"systems, of {','.join(SYSTEMS)} (default: all; sector-kill with --kill-half)",
    )
    ap.add_argument(
        "--kill-half",
        action="store_true",
        help="add sector-kill: one replica host SIGKILLed halfway through",
    )
    ap.add_argument(
        "--scenario", default="file", help="file, venv or file,venv (file: the table above)"
    )
    ap.add_argument("--hosts", type=int, default=10, help="hosts (network namespaces), 10")
    ap.add_argument("--rate", type=float, default=100e6, help="link rate, bits/s (100e6)")
    ap.add_argument("--replicas", type=int, default=3, help="Sector's R (3)")
    ap.add_argument(
        "--piece", type=parse_size, default=0, help="torrent piece size (libtorrent's choice)"
    )
    ap.add_argument(
        "--cli-up-to",
        type=parse_size,
        default=16 * MIB,
        help="largest size the sector-cli row runs at (16M)",
    )
    ap.add_argument("--iperf-seconds", type=float, default=4.0, help="link check length (4)")
    ap.add_argument("--dir", help="where to put the temp dir (default: the system temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    ap.add_argument("--out", default="swarm.json", help="file name under bench/results/")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        ap.error("needs root: the hosts are network namespaces with shaped links")
    chosen = set(SYSTEMS) - {"sector-kill"} if args.only is None else set(args.only.split(","))
    if args.kill_half:
        chosen.add("sector-kill")
    unknown = sorted(chosen - set(SYSTEMS))
    if unknown or not chosen:
        ap.error(f"unknown systems {unknown}; choose from {', '.join(SYSTEMS)}")
    args.only = [s for s in SYSTEMS if s in chosen]
    args.scenario = [s.strip() for s in args.scenario.split(",") if s.strip()]
    if not set(args.scenario) <= {"file", "venv"} or not args.scenario:
        ap.error("--scenario: file, venv or file,venv")
    if not args.sizes or args.hosts < 3 or min(args.sizes) < 1:
        ap.error("need --sizes and --hosts >= 3")

    from rich.console import Console

    console = Console() if sys.stdout.isatty() else Console(width=160)
    res = run(args, console)
    show(res, console)
    console.print(f"results: {write_result(args.out, res)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
