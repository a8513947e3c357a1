"""TeraSort: Sector against the disk's floor, numpy, GNU sort, Dask and PySpark.

    python bench/terasort.py [--sizes 1G,4G,16G] [--only sector,numpy,...] [--nodes 3]
                             [--dir DIR] [--gen-replicas 1] [--out terasort.json]

One run, one machine, one disk. For each size, every system sorts the same gensort
records -- rows [0, N) of ``gen_records(0, N, seed=0)``, N = size / 100 -- by their
10-byte key, and writes them back durably. In the order they run:

    sector     ``sector up -n NODES --insecure`` (plain TCP, as the peers' shuffles);
               ``sector terasort gen --replicas 1`` makes the records on the nodes
               (not timed; one copy, as the peers have); the clock runs over ``sector
               terasort sort`` (one Sphere job: buckets by key range, each bucket
               sorted on its node by the job's reduce), run by ``tsjob.sort`` in a
               client process that is connected before the clock starts (the CLI's
               interpreter start-up, ~0.3 s, is in the JSON as ``process_seconds``)
    sector-tls the same on a cluster as ``sector up`` makes it by default: every
               connection TLS, the shuffle included (its ratio to ``sector`` is the
               price of encryption)
    floor      not a sort: what this disk allows one. The page cache dropped, the
               numpy input file read sequentially (8 MiB blocks), then as many bytes
               written sequentially to a new file and fsynced (then deleted); floor
               seconds = read + write (both in the JSON). Always run: every other row
               is measured against it
    numpy      one process: read the file, ``sort_records``, write it back, fsync
    dask       ``LocalCluster(n_workers=2, threads_per_worker=1)``: the file read in
               partitions into a dask.dataframe (key columns + the record's other bytes
               as integer columns), ``sort_values``, each partition written, fsync
    spark      PySpark ``local[2]`` DataFrame: partitions read with ``mapInArrow``,
               ``orderBy("key")`` (Spark's range-partitioned sort in the JVM), each
               partition written by ``mapInArrow``, fsync
    spark-rdd  (only with --only) PySpark RDD: ``binaryRecords``, ``sortByKey``, each
               partition written: the per-record Python path
    gnusort    ``LC_ALL=C sort --parallel=2 -S 50% -T WORKDIR`` of the records as gensort
               ``-a`` lines, GNU sort's best input form: 100 bytes of printable ASCII a
               line (the key's first 8 bytes as 10 base-95 digits, order preserving;
               the row number; filler; CRLF), each made from the same binary record;
               written just before GNU sort (not timed) and deleted right after; the
               output fsynced

The peers run in child processes of this script (``--child``). Not timed: cluster and
session start-up (in the JSON as ``setup_seconds``) and a warm-up run of the same job on
20,000 records (imports, JIT, worker pools: Sector's nodes are warm from ``gen`` too).
The page cache is dropped just before the clock starts, where the kernel allows it
(root and a writable /proc/sys/vm/drop_caches; the table says whether it was). Every
output is validated with the kernels of ``sector.sphere.terasort``: globally sorted,
the same record count and the same order-independent checksum as the input (GNU sort's
lines are 100 bytes too, keyed by their first 10: checked against the summary of the
ASCII input, taken as it is written). Peak RSS is the largest sum of the resident sets
of a system's whole process tree during the timed run (Sector: its nodes with their
engines, and the CLI client), sampled every 0.1 s with psutil; without psutil, the
largest single process, from wait4. For Sector the table also gives the largest node
(a node with its engines), to show how a node's memory grows with the size.

The table's columns, per system and size (and each run's fields in the JSON):

    s/GB               seconds per 10^9 bytes sorted (``seconds_per_gb``)
    x s/GB @ smallest  s/GB over the same system's s/GB at the smallest size of the
                       run (``per_gb_growth``): 1 is linear
    x floor            seconds over the floor's at this size (``x_floor``)
    x Sector           seconds over Sector's (``x_sector``): for a peer, how many times
                       faster Sector is; for sector-tls, the price of TLS

The goals (issue 13, and issue 4 for the peers), marked met or missed in the table and
in each run's ``goals_met``: Sector and sector-tls linear, s/GB growth <= 1.2x, and
<= 1.5x the floor; sector-tls <= 1.15x sector; Sector >= 3x faster than Dask, >= 4x
than Spark, >= 1x than GNU sort.

Disk: a size's steps never share the disk. Each system's output is deleted once it is
validated, Sector's cluster is torn down (``sector down``) and its directory, data and
all, removed before the next system runs; the binary input is written just before the
first system that reads it and deleted after the last (GNU sort, last, has only its
ASCII file). The most on the disk at once is Sector's cluster, ~4x the size at its peak
(measured at 200 MB: its input, the shuffle's staged and received parts, the output),
so 16G needs ~66 GB free; GNU sort's ASCII input, temporary runs and output ~3x; the
others 2x-3x. Free space is checked (``DISK_FACTOR``) before the run for its largest
size, before each size and before each step; a run that cannot fit stops with one line
saying so, the rows measured so far kept.
Results: a rich table on stdout and ``bench/results/terasort.json`` (``--out``).
MB = 10^6 bytes, 1G = 10^9 bytes.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import itertools
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from _common import MB, drop_caches, machine, mbps, write_result

from sector.sphere import terasort as ts

# In the order they run: Sector first, before anyone has written the input file; then
# the floor and the peers that read it; GNU sort last, on its own ASCII file, once the
# binary input is deleted (so the two are never on the disk together).
SYSTEMS = ("sector", "sector-tls", "floor", "numpy", "dask", "spark", "spark-rdd", "gnusort")
DEFAULT = ("sector", "sector-tls", "floor", "numpy", "dask", "spark", "gnusort")
SECTORS = ("sector", "sector-tls")
READERS = ("floor", "numpy", "dask", "spark", "spark-rdd")  # they read the binary input
# The goals, per system: (figure, "<=" or ">=", bound). x_floor: seconds over the
# floor's; per_gb_growth: s/GB over s/GB at the smallest size of the run (1 = linear);
# x_sector: seconds over Sector's (for a peer, how many times faster Sector is).
GOALS: dict[str, dict[str, tuple[str, float]]] = {
    "sector": {"x_floor": ("<=", 1.5), "per_gb_growth": ("<=", 1.2)},
    "sector-tls": {
        "x_floor": ("<=", 1.5),
        "per_gb_growth": ("<=", 1.2),
        "x_sector": ("<=", 1.15),
    },
    "dask": {"x_sector": (">=", 3.0)},
    "spark": {"x_sector": (">=", 4.0)},
    "spark-rdd": {"x_sector": (">=", 4.0)},
    "gnusort": {"x_sector": (">=", 1.0)},
}
GOALS_LINE = (
    "goals: Sector and sector-tls <= 1.5x floor and <= 1.2x s/GB growth (linear);"
    " sector-tls <= 1.15x sector; Sector >= 3x faster than Dask, >= 4x Spark, >= 1x GNU sort"
)
GEN_BATCH = 1 << 20  # records per generated / validated chunk: 100 MB
FILE_BYTES = 256 * MB  # Sector: about this much per generated file, a multiple of nodes


class NotInstalled(Exception):
    """A peer whose software is missing: reported, not fatal."""


# -- sizes, files, validation -----------------------------------------------------------


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)[bB]?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 100M, 1G)")
    scale = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}[m.group(2).lower()]
    size = int(float(m.group(1)) * scale)
    if size < ts.RECORD:
        raise argparse.ArgumentTypeError(f"{text!r} is less than one record")
    return size


def show_size(size: int) -> str:
    for unit, scale in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6)):
        if size >= scale:
            return f"{size / scale:g} {unit}"
    return f"{size} B"


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_input(path: Path, nrecords: int) -> dict[str, Any]:
    """Write the records to ``path`` (fsynced) and return their merged summary."""
    parts = []
    with open(path, "wb") as f:
        for start in range(0, nrecords, GEN_BATCH):
            recs = ts.gen_records(start, min(GEN_BATCH, nrecords - start), seed=0)
            parts.append(ts.summary(recs))
            f.write(recs.data.cast("B"))
        f.flush()
        os.fsync(f.fileno())
    return ts.merge_summaries(parts)


def input_checksum(nrecords: int) -> dict[str, Any]:
    """The summary of the input without writing it (when only Sector runs)."""
    return ts.merge_summaries(
        [
            ts.summary(ts.gen_records(s, min(GEN_BATCH, nrecords - s), seed=0))
            for s in range(0, nrecords, GEN_BATCH)
        ]
    )


# The gensort ``-a`` form, GNU sort's best input: 100-byte lines of printable ASCII,
#     0..10   key: the record's first 8 key bytes (a big-endian uint64) as 10 base-95
#             digits, chars 32..126 (95^10 > 2^64, so line order is the key's order)
#     10..12  two spaces
#     12..44  the row number as 32 hex digits (the record's bytes 12..44)
#     44..46  two spaces
#     46..98  filler: the record's bytes 10..36 as 52 hex digits
#     98..100 "\r\n"
# Each line is made from the same binary record, row i of ``gen_records``, so its sorted
# order is the records'; lines are 100 bytes, so the kernels of ``sector.sphere.terasort``
# validate them as records (sorted by their first 10 bytes, count, checksum).
_HEX_DIGITS = np.frombuffer(b"0123456789ABCDEF", dtype=np.uint8)
# A byte's two hex digits as one uint16 (its memory is the two digits, in either byte
# order): one gather per byte rather than one per digit.
_HEX_PAIRS = (
    np.stack([_HEX_DIGITS[np.arange(256) >> 4], _HEX_DIGITS[np.arange(256) & 15]], axis=1)
    .copy()
    .view(np.uint16)
    .ravel()
)


def ascii_lines(records: np.ndarray) -> np.ndarray:
    """The gensort ``-a`` lines of a batch of records: (n, 100) uint8, vectorised."""
    recs = ts.as_records(records)
    n = len(recs)
    out = np.empty((n, ts.RECORD), dtype=np.uint8)
    key = np.ascontiguousarray(recs[:, :8]).view(">u8").ravel().astype(np.uint64)
    digits = np.empty((ts.KEY, n), dtype=np.uint8)  # a row per digit: contiguous writes
    for j in range(ts.KEY - 1, -1, -1):  # the least significant digit first
        key, digit = np.divmod(key, np.uint64(95))
        digits[j] = digit
    digits += 32
    out[:, : ts.KEY] = digits.T
    out[:, 10:12] = ord(" ")
    out[:, 12:44] = recs[:, 12:44]
    out[:, 44:46] = ord(" ")
    out[:, 46:98] = _HEX_PAIRS[recs[:, 10:36]].view(np.uint8).reshape(n, 52)
    out[:, 98] = ord("\r")
    out[:, 99] = ord("\n")
    return out


def make_ascii(path: Path, nrecords: int) -> dict[str, Any]:
    """Write rows [0, nrecords) as gensort ``-a`` lines (fsynced); the lines' summary."""
    parts = []
    with open(path, "wb") as f:
        for start in range(0, nrecords, GEN_BATCH):
            lines = ascii_lines(ts.gen_records(start, min(GEN_BATCH, nrecords - start), seed=0))
            parts.append(ts.summary(lines))
            f.write(lines.tobytes())
        f.flush()
        os.fsync(f.fileno())
    return ts.merge_summaries(parts)


def summarize_files(paths: Sequence[Path]) -> dict[str, Any]:
    """Merged summary of output files read in order, in chunks (bounded memory).

    Binary records and gensort ``-a`` lines alike: both are 100 bytes, key first.
    """
    parts = []
    for p in paths:
        with open(p, "rb") as f:
            while buf := f.read(GEN_BATCH * ts.RECORD):
                if len(buf) % ts.RECORD:
                    raise ValueError(f"{p}: {len(buf) % ts.RECORD} stray bytes at the end")
                parts.append(ts.summary(ts.as_records(buf)))
    return ts.merge_summaries(parts)


def verdict(got: dict[str, Any], want: dict[str, Any]) -> str:
    """'ok' or what is wrong with an output's merged summary against the input's."""
    problems = []
    if not got.get("sorted"):
        problems.append(f"not sorted ({got.get('error')})")
    if int(got["records"]) != int(want["records"]):
        problems.append(f"{got['records']} records, input has {want['records']}")
    elif _as_int(got["checksum"]) != int(want["checksum"]):
        problems.append("checksum differs from the input's")
    return "; ".join(problems) or "ok"


def _as_int(value: Any) -> int:
    # Sector's validate prints the checksum as 16 hex digits; the kernels give an int.
    return int(value, 16) if isinstance(value, str) else int(value)


def part_ranges(nrecords: int, nparts: int) -> list[tuple[int, int]]:
    """[(first record, count)] of nparts nearly equal consecutive ranges."""
    cuts = [nrecords * i // nparts for i in range(nparts + 1)]
    return [(a, b - a) for a, b in itertools.pairwise(cuts) if b > a]


# -- the floor: what this disk allows a sort, and disk space --------------------------------

FLOOR_BLOCK = 8 << 20  # 8 MiB reads and writes, as ``dd bs=8M``


def run_floor(inp: Path, workdir: Path) -> dict[str, Any]:
    """The disk's floor for sorting ``inp``: read it cold, then write as many bytes durably.

    Any sort of a file on this disk reads every byte once and writes every byte once:
    the page cache is dropped, ``inp`` read sequentially in 8 MiB blocks, then the same
    number of bytes written to a new file in ``workdir`` (the blocks are the input's
    last one, not zeros), fsynced, deleted. The floor is the two times added.
    """
    view = memoryview(bytearray(FLOOR_BLOCK))
    dropped = drop_caches()
    t0 = time.perf_counter()
    nread = 0
    with open(inp, "rb", buffering=0) as f:
        while got := f.readinto(view):
            nread += got
    read_s = time.perf_counter() - t0
    out = workdir / "floor-write.bin"
    t0 = time.perf_counter()
    written = 0
    with open(out, "wb", buffering=0) as f:
        while written < nread:
            written += f.write(view[: min(FLOOR_BLOCK, nread - written)])
        os.fsync(f.fileno())
    write_s = time.perf_counter() - t0
    out.unlink()
    size = inp.stat().st_size
    ok = nread == written == size
    return {
        "seconds": read_s + write_s,
        "read_seconds": round(read_s, 3),
        "write_seconds": round(write_s, 3),
        "read_mb_s": round(mbps(nread, read_s), 1),
        "write_mb_s": round(mbps(written, write_s), 1),
        "caches_dropped": dropped,
        "validation": "ok" if ok else f"read {nread} and wrote {written} of {size} bytes",
        "setup_seconds": 0.0,
        "how": "cold sequential read of the input (8 MiB blocks) + sequential write, fsync",
    }


class DiskSpace(Exception):
    """Not enough free disk for the next step: the run stops with this one line."""


# What a step needs on the disk beyond the input file it reads, in multiples of the size.
# Sector: its input (once per replica) and 3 more, as measured at 200 MB (1 replica: a
# peak of 4.0x the size in its cluster dir, in the reduce phase: the input, the shuffle's
# staged and received parts, the output). Dask and Spark: the shuffle spilled and the
# output (1.1x and 1.3x measured at 100 MB, where little spills; 2x allowed). GNU sort:
# its ASCII input, its temporary runs and its output. numpy and the floor: the output.
DISK_FACTOR = {
    "input": 1.0,
    "floor": 1.0,
    "numpy": 1.0,
    "dask": 2.0,
    "spark": 2.0,
    "spark-rdd": 2.5,
    "gnusort": 3.0,
}
DISK_SLACK = 10**9  # and this much more (logs, metadata, the JVM's and Dask's own files)


def disk_need(step: str, size: int, args: argparse.Namespace, *, with_input: bool) -> int:
    """Free bytes ``step`` needs at ``size`` (with_input: the binary input not yet written)."""
    factor = args.gen_replicas + 3 if step in SECTORS else DISK_FACTOR[step]
    if with_input and step in READERS:
        factor += 1
    return math.ceil(1.02 * factor * size) + DISK_SLACK


def size_need(size: int, args: argparse.Namespace) -> int:
    """The most any step of one size needs (each step's files are gone before the next)."""
    return max(disk_need(s, size, args, with_input=True) for s in args.only)


def check_disk(where: Path, need: int, what: str) -> None:
    free = shutil.disk_usage(where).free
    if free < need:
        raise DiskSpace(
            f"not enough disk for {what}: it needs {need / 1e9:.1f} GB free in {where},"
            f" there are {free / 1e9:.1f} GB (free some, or use --dir on a bigger disk)"
        )


def clear(path: Path, keep: bool) -> None:
    """Delete a step's directory; with ``keep``, only its data (logs and JSON stay)."""
    if not keep:
        shutil.rmtree(path, ignore_errors=True)
        return
    for dirpath, _, names in os.walk(path):
        for name in names:
            if not name.endswith((".log", ".json")):
                Path(dirpath, name).unlink(missing_ok=True)


# -- running a system's processes, with their peak memory ----------------------------------


class RssSampler:
    """Peak summed RSS of some process trees, polled every 0.1 s with psutil.

    ``peak_total`` is the largest sum over all trees at one instant, ``peak_by_root``
    the largest sum of each tree (a Sector node with its engines), ``peak_proc`` the
    largest single process.
    """

    def __init__(self, roots: Callable[[], list[int]]) -> None:
        self._roots = roots
        self.peak_total = 0
        self.peak_proc = 0
        self.peak_by_root: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    @staticmethod
    def available() -> bool:
        return importlib.util.find_spec("psutil") is not None

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        import psutil

        while True:
            total = 0
            for pid in self._roots():
                tree = 0
                try:
                    root = psutil.Process(pid)
                    procs = [root, *root.children(recursive=True)]
                except psutil.Error:
                    continue
                for p in procs:
                    with contextlib.suppress(psutil.Error):
                        rss = int(p.memory_info().rss)
                        tree += rss
                        self.peak_proc = max(self.peak_proc, rss)
                self.peak_by_root[pid] = max(self.peak_by_root.get(pid, 0), tree)
                total += tree
            self.peak_total = max(self.peak_total, total)
            if self._stop.wait(0.1):
                return


def run_measured(
    cmd: list[str],
    log: Path,
    timeout: float,
    *,
    env: dict[str, str] | None = None,
    also: Sequence[int] = (),
) -> dict[str, Any]:
    """Run cmd to the end: wall seconds, exit code, peak RSS of its tree (and of ``also``)."""
    roots: list[int] = list(also)
    sampler = RssSampler(lambda: roots[:]) if RssSampler.available() else None
    killed: list[bool] = []
    with open(log, "ab") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        roots.append(proc.pid)
        timer = threading.Timer(timeout, lambda: killed.append(_kill_group(proc.pid)))
        timer.start()
        try:
            with sampler or contextlib.nullcontext():
                # wait4 rather than wait: it also gives this child's own rusage.
                _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    # Whatever the child left behind in its group (a stray worker) goes with it.
    _kill_group(proc.pid)
    res: dict[str, Any] = {
        "seconds": seconds,
        "returncode": proc.returncode,
        "timed_out": bool(killed),
    }
    if sampler:
        res |= {
            "peak_rss_bytes": sampler.peak_total,
            "peak_rss_proc_bytes": sampler.peak_proc,
            "peak_rss_by_root": sampler.peak_by_root,
            "rss_method": "psutil: summed RSS of the process tree, sampled every 0.1 s",
        }
    else:
        res |= {
            "peak_rss_bytes": usage.ru_maxrss * 1024,
            "peak_rss_proc_bytes": usage.ru_maxrss * 1024,
            "rss_method": "wait4 ru_maxrss: the largest single process (no psutil)",
        }
    return res


def _kill_group(pid: int) -> bool:
    # The group of a child this script started (start_new_session): its workers too.
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def tail(log: Path, lines: int = 3) -> str:
    try:
        text = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    useful = [ln.strip() for ln in text if ln.strip()]
    return " | ".join(useful[-lines:])[-300:]


# -- Sector ---------------------------------------------------------------------------


def sector_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "sector"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "sector.cli.main"]


def _sector(args: list[str], log: Path, timeout: float = 600.0) -> str:
    """Run one ``sector`` command; its stdout, or RuntimeError with its last stderr line."""
    with open(log, "ab") as err:
        proc = subprocess.run(
            sector_cmd() + args, stdout=subprocess.PIPE, stderr=err, timeout=timeout, check=False
        )
    out = proc.stdout.decode(errors="replace")
    if proc.returncode != 0:
        what = " ".join(a for a in args if not a.startswith("/"))[:60]
        raise RuntimeError(f"sector {what}: exit {proc.returncode}: {tail(log, 1)}")
    return out


def _node_pids(cluster_dir: Path, addr: str, log: Path) -> list[int]:
    """The node processes of a local cluster: cluster.json, else ``sector status --json``."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        info = json.loads((cluster_dir / "cluster.json").read_text())
        pids = [n["pid"] for n in info.get("nodes", []) if isinstance(n.get("pid"), int)]
        if pids:
            return pids
    with contextlib.suppress(RuntimeError, ValueError, AttributeError, subprocess.SubprocessError):
        st = json.loads(_sector(["--cluster", addr, "status", "--json"], log))
        return [n["pid"] for n in st.get("nodes", []) if isinstance(n.get("pid"), int)]
    return []


def run_sector(
    size_bytes: int,
    workdir: Path,
    nodes: int,
    *,
    files: int | None = None,
    expect: dict[str, Any] | None = None,
    timeout: float = 3600.0,
    secure: bool = False,
    replicas: int = 1,
) -> dict[str, Any]:
    """TeraSort on a local Sector cluster, through the ``sector`` CLI.

    ``secure``: a cluster as ``sector up`` makes it by default, every connection TLS
    (the shuffle included); otherwise ``sector up --insecure``, plain TCP like the
    peers' own shuffles. ``replicas``: the input's replica target (``terasort gen
    --replicas``; the peers have one copy of their input; the output has one too).

    ``sector up``; ``terasort gen`` (not timed); drop the page cache; time ``terasort
    sort``; ``terasort validate --json`` checked against the input's summary (``expect``,
    else computed here); ``sector down``. Raises on any failure, for the caller to
    report. Returns seconds, validated (bool) and validation ('ok' or what is wrong),
    generation throughput and peak memory (nodes with their engines, and the CLI client).
    """
    nrecords = size_bytes // ts.RECORD
    files = files or nodes * max(1, math.ceil(size_bytes / (nodes * FILE_BYTES)))
    cdir = workdir / "sector"
    log = workdir / "sector.log"
    up_args = ["up", "-n", str(nodes), "--dir", str(cdir)] + ([] if secure else ["--insecure"])
    up = _sector(up_args, log, timeout=300)
    found = re.findall(r"[\w.\-\[\]:]+:\d+", up)
    if not found:
        raise RuntimeError(f"sector up printed no address: {up.strip()[:200]!r}")
    a = ["--cluster", found[-1]]
    try:
        gen = [*a, "terasort", "gen", "--records", str(nrecords), "--files", str(files)]
        gen += ["--replicas", str(replicas), "/ts/in"]
        t0 = time.perf_counter()
        _sector(gen, log, timeout=timeout)
        gen_s = time.perf_counter() - t0
        pids = _node_pids(cdir, found[-1], log)
        # The sort runs in a client process of its own that connects first and then
        # times ``tsjob.sort`` (what ``sector terasort sort`` runs), as each peer's
        # child times its job after its session is up; the process's whole life (the
        # interpreter start-up a CLI run adds) is in the JSON as process_seconds.
        result = workdir / "sector-child.json"
        child = [sys.executable, str(Path(__file__).resolve()), "--child", "sector"]
        child += ["--cluster", found[-1], "--input", "/ts/in", "--outdir", "/ts/out"]
        child += ["--result", str(result)]
        sort = run_measured(child, log, timeout, also=pids)
        if sort["returncode"] != 0 or not result.exists():
            raise RuntimeError(f"terasort sort: exit {sort['returncode']}: {tail(log, 1)}")
        timed = json.loads(result.read_text())
        sort["process_seconds"] = round(sort["seconds"], 3)
        sort["seconds"] = timed["seconds"]
        dropped = timed["caches_dropped"]
        proc = subprocess.run(
            [*sector_cmd(), *a, "terasort", "validate", "/ts/out", "--json"],
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        try:
            got = json.loads(proc.stdout)
        except ValueError:
            err = proc.stderr.decode(errors="replace").strip()[-200:]
            raise RuntimeError(f"terasort validate: exit {proc.returncode}: {err}") from None
        check = verdict(got, expect or input_checksum(nrecords))
        by_root = sort.get("peak_rss_by_root", {})
        per_node = [by_root[p] for p in pids if p in by_root]
        return {
            "seconds": sort["seconds"],
            "process_seconds": sort["process_seconds"],
            "stages": timed["stages"],
            "validated": check == "ok",
            "validation": check,
            "caches_dropped": dropped,
            "files": files,
            "input_replicas": replicas,
            "gen_seconds": round(gen_s, 3),
            "gen_mb_s_per_node": round(mbps(size_bytes, gen_s) / nodes, 1),
            "peak_rss_bytes": sort["peak_rss_bytes"],
            "peak_rss_proc_bytes": sort["peak_rss_proc_bytes"],
            "peak_rss_per_node_bytes": per_node,
            "peak_rss_node_max_bytes": max(per_node, default=0),
            "rss_method": sort["rss_method"] + " (the nodes and the CLI client)",
        }
    finally:
        with contextlib.suppress(Exception):
            _sector(["down", "--dir", str(cdir)], log, timeout=120)


# -- the peers, parent side -------------------------------------------------------------


def _have(*modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise NotInstalled(", ".join(missing))


def run_child(
    system: str, inp: Path, workdir: Path, nrecords: int, args: argparse.Namespace
) -> dict[str, Any]:
    """Run one peer in a child process of this script; its figures and output files."""
    outdir = workdir / f"out-{system}"
    outdir.mkdir()
    result = workdir / f"{system}.json"
    log = workdir / f"{system}.log"
    opts = {
        "--child": system,
        "--input": inp,
        "--outdir": outdir,
        "--records": nrecords,
        "--result": result,
        "--part-mb": args.part_mb,
        "--spark-memory": args.spark_memory,
    }
    cmd = [sys.executable, str(Path(__file__).resolve())]
    cmd += [str(x) for kv in opts.items() for x in kv]
    # The Spark workers must be this Python, with this venv's packages.
    env = {
        **os.environ,
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        "SPARK_LOCAL_IP": "127.0.0.1",
    }
    run = run_measured(cmd, log, args.timeout, env=env)
    if run["timed_out"]:
        raise RuntimeError(f"timed out after {args.timeout:.0f} s")
    if run["returncode"] != 0 or not result.exists():
        raise RuntimeError(f"exit {run['returncode']}: {tail(log)}")
    child = json.loads(result.read_text())
    return {**run, **child, "outputs": [Path(p) for p in child["outputs"]]}


def run_gnusort(text: Path, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    sort = shutil.which("sort")
    if sort is None:
        raise NotInstalled("sort")
    out = workdir / "out-gnusort.txt"
    tmp = workdir / "gnusort-tmp"
    tmp.mkdir()
    cmd = [sort, "--parallel=2", "-S", "50%", "-T", str(tmp), "-o", str(out), str(text)]
    dropped = drop_caches()
    env = {**os.environ, "LC_ALL": "C"}
    t0 = time.perf_counter()
    run = run_measured(cmd, workdir / "gnusort.log", args.timeout, env=env)
    if run["returncode"] != 0:
        raise RuntimeError(f"exit {run['returncode']}: {tail(workdir / 'gnusort.log')}")
    fsync_path(out)
    run["seconds"] = time.perf_counter() - t0
    how = "LC_ALL=C sort --parallel=2 -S 50% of gensort -a lines (100 bytes each), fsync"
    return {**run, "caches_dropped": dropped, "outputs": [out], "setup_seconds": 0.0, "how": how}


PEER_NEEDS = {
    "numpy": (),
    "dask": ("dask", "distributed", "pandas", "pyarrow"),
    "spark": ("pyspark", "pyarrow", "pandas"),
    "spark-rdd": ("pyspark",),
}


def run_peer(
    system: str, inp: Path, text: Path | None, workdir: Path, n: int, args: argparse.Namespace
) -> dict[str, Any]:
    if system == "gnusort":
        assert text is not None
        return run_gnusort(text, workdir, args)
    _have(*PEER_NEEDS[system])
    if (
        system.startswith("spark")
        and shutil.which("java") is None
        and not os.environ.get("JAVA_HOME")
    ):
        raise NotInstalled("java")
    return run_child(system, inp, workdir, n, args)


# -- the peers, child side (python bench/terasort.py --child SYSTEM ...) ---------------------


def _read_range(path: str, start: int, count: int) -> np.ndarray:
    with open(path, "rb") as f:
        f.seek(start * ts.RECORD)
        buf = bytearray(count * ts.RECORD)
        got = f.readinto(buf)
    if got != len(buf):
        raise OSError(f"{path}: short read at record {start}")
    return ts.as_records(np.frombuffer(buf, dtype=np.uint8))


def _write_durably(path: str, chunks: Any) -> int:
    n = 0
    with open(path, "wb") as f:
        for recs in chunks:
            f.write(np.ascontiguousarray(recs).data.cast("B"))
            n += len(recs)
        f.flush()
        os.fsync(f.fileno())
    return n


WARM_RECORDS = 20_000  # a warm-up run of the same job first: imports, JIT, worker pools


def _nparts(nrecords: int, part_mb: int) -> int:
    return max(2, math.ceil(nrecords * ts.RECORD / (part_mb * MB)))


def _timed(a: argparse.Namespace, job: Callable[[int, str], dict[str, Any]]) -> dict[str, Any]:
    """Run ``job`` untimed on a few records, drop the page cache, then time it on all.

    The warm-up makes the timed run start where a long-running service would be: code
    imported and compiled (Python and JVM), workers up; only the data is cold.
    ``job(n, outdir)`` sorts the first n records of the input into files in outdir.
    """
    warm = os.path.join(os.path.dirname(a.outdir), "warm-up")
    os.makedirs(warm)
    job(min(a.records, WARM_RECORDS), warm)
    shutil.rmtree(warm, ignore_errors=True)
    dropped = drop_caches()
    t0 = time.perf_counter()
    res = job(a.records, a.outdir)
    return {"seconds": time.perf_counter() - t0, "caches_dropped": dropped, **res}


def child_numpy(a: argparse.Namespace) -> dict[str, Any]:
    def job(n: int, outdir: str) -> dict[str, Any]:
        out = os.path.join(outdir, "part-00000.bin")
        written = _write_durably(out, [ts.sort_records(_read_range(a.input, 0, n))])
        return {"outputs": [out], "records_written": written}

    return _timed(a, job) | {"setup_seconds": 0.0, "how": "read, sort_records, write, fsync"}


# Dask: a record as a pandas row of integer columns -- the key's first 8 and last 2 bytes
# as big-endian integers (so numeric order is memcmp order) and the other 90 bytes as 11
# uint64 and one uint16 -- since pandas has no fixed-size bytes type that sorts and
# shuffles without a Python object per record.
_BODY = [f"b{i}" for i in range(11)]


def _frame_of(recs: np.ndarray) -> Any:
    import pandas as pd

    n = len(recs)
    body = np.ascontiguousarray(recs[:, 10:98]).view("<u8").reshape(n, 11)
    cols: dict[str, Any] = {
        "k8": np.ascontiguousarray(recs[:, :8]).view(">u8").ravel().astype(np.uint64),
        "k2": np.ascontiguousarray(recs[:, 8:10]).view(">u2").ravel().astype(np.uint16),
    }
    cols |= {name: body[:, i] for i, name in enumerate(_BODY)}
    cols["tail"] = np.ascontiguousarray(recs[:, 98:]).view("<u2").ravel()
    return pd.DataFrame(cols)


def _records_of(df: Any) -> np.ndarray:
    n = len(df)
    out = np.empty((n, ts.RECORD), dtype=np.uint8)
    out[:, :8] = df["k8"].to_numpy(np.uint64).astype(">u8").view(np.uint8).reshape(n, 8)
    out[:, 8:10] = df["k2"].to_numpy(np.uint16).astype(">u2").view(np.uint8).reshape(n, 2)
    body = np.stack([df[c].to_numpy(np.uint64) for c in _BODY], axis=1).astype("<u8")
    out[:, 10:98] = body.view(np.uint8).reshape(n, 88)
    out[:, 98:] = df["tail"].to_numpy(np.uint16).astype("<u2").view(np.uint8).reshape(n, 2)
    return out


def _dask_read(rng: tuple[int, int], path: str) -> Any:
    return _frame_of(_read_range(path, *rng))


def _dask_write(df: Any, path: str) -> int:
    return _write_durably(path, [_records_of(df)])


def child_dask(a: argparse.Namespace) -> dict[str, Any]:
    import logging

    import dask
    import dask.dataframe as dd
    from dask.distributed import Client, LocalCluster

    def job(n: int, outdir: str) -> dict[str, Any]:
        ranges = part_ranges(n, _nparts(n, a.part_mb))
        meta = _frame_of(np.empty((0, ts.RECORD), dtype=np.uint8))
        ddf = dd.from_map(_dask_read, ranges, path=a.input, meta=meta, enforce_metadata=False)
        parts = ddf.sort_values(["k8", "k2"]).to_delayed()
        outs = [os.path.join(outdir, f"part-{i:05d}.bin") for i in range(len(parts))]
        writes = [dask.delayed(_dask_write)(p, o) for p, o in zip(parts, outs, strict=True)]
        counts = dask.compute(*writes)
        return {"outputs": outs, "partitions": len(ranges), "records_written": int(sum(counts))}

    t0 = time.perf_counter()
    cluster = LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        local_directory=os.path.join(os.path.dirname(a.outdir), "dask-local"),
        silence_logs=logging.ERROR,
    )
    with cluster, Client(cluster) as client:
        client.wait_for_workers(2)
        setup = time.perf_counter() - t0
        res = _timed(a, job)
    how = "dask.dataframe.from_map -> sort_values(['k8', 'k2']) -> to_delayed writes"
    return res | {"setup_seconds": setup, "how": how}


def _spark_session(a: argparse.Namespace) -> Any:
    from pyspark.sql import SparkSession

    local = os.path.join(os.path.dirname(a.outdir), "spark-local")
    os.makedirs(local, exist_ok=True)
    spark = (
        SparkSession.builder.master("local[2]")
        .appName("terasort-bench")
        .config("spark.driver.memory", a.spark_memory)
        .config("spark.local.dir", local)
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", str(_nparts(a.records, a.part_mb)))
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", str(_ARROW_BATCH))
        .config("spark.driver.extraJavaOptions", f"-Djava.io.tmpdir={local}")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    return spark


_ARROW_BATCH = 1 << 16  # records per Arrow batch


def _binary_column(data: np.ndarray) -> Any:
    """An Arrow binary array over an (n, w) uint8 array: w bytes per value, no Python loop."""
    import pyarrow as pa

    n, w = data.shape
    offsets = np.arange(0, (n + 1) * w, w, dtype=np.int32)
    bufs = [None, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(data))]
    return pa.Array.from_buffers(pa.binary(), n, bufs)


def _column_bytes(col: Any, width: int) -> np.ndarray:
    """(n, width) uint8 of an Arrow binary array whose values are all ``width`` bytes."""
    n = len(col)
    _, offsets_buf, data_buf = col.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int32)[col.offset : col.offset + n + 1]
    if n and not (np.diff(offsets) == width).all():
        raise ValueError(f"a value is not {width} bytes")
    data = np.frombuffer(data_buf, dtype=np.uint8)[offsets[0] : offsets[0] + n * width]
    return data.reshape(n, width)


def _spark_arrow_read(path: str) -> Callable[[Any], Any]:
    def read(batches: Any) -> Any:
        import pyarrow as pa

        for batch in batches:
            starts = batch.column("start").to_pylist()
            for start, count in zip(starts, batch.column("count").to_pylist(), strict=True):
                for s in range(start, start + count, _ARROW_BATCH):
                    recs = _read_range(path, s, min(_ARROW_BATCH, start + count - s))
                    cols = [_binary_column(recs[:, : ts.KEY]), _binary_column(recs[:, ts.KEY :])]
                    yield pa.RecordBatch.from_arrays(cols, names=["key", "value"])

    return read


def _spark_arrow_write(outdir: str) -> Callable[[Any], Any]:
    def write(batches: Any) -> Any:
        import pyarrow as pa
        from pyspark import TaskContext

        ctx = TaskContext.get()
        part = ctx.partitionId() if ctx else 0
        out = os.path.join(outdir, f"part-{part:05d}.bin")

        def chunks() -> Any:
            for batch in batches:
                recs = np.empty((batch.num_rows, ts.RECORD), dtype=np.uint8)
                recs[:, : ts.KEY] = _column_bytes(batch.column("key"), ts.KEY)
                recs[:, ts.KEY :] = _column_bytes(batch.column("value"), ts.RECORD - ts.KEY)
                yield recs

        n = _write_durably(out, chunks())
        yield pa.RecordBatch.from_arrays(
            [pa.array([part], pa.int32()), pa.array([n], pa.int64())], names=["part", "n"]
        )

    return write


def _spark_parts(rows: Any, outdir: str, nparts: int) -> dict[str, Any]:
    parts = sorted((int(r[0]), int(r[1])) for r in rows)
    return {
        "outputs": [os.path.join(outdir, f"part-{p:05d}.bin") for p, _ in parts],
        "partitions": nparts,
        "records_written": sum(n for _, n in parts),
    }


def child_spark(a: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    spark = _spark_session(a)
    setup = time.perf_counter() - t0

    def job(n: int, outdir: str) -> dict[str, Any]:
        ranges = part_ranges(n, _nparts(n, a.part_mb))
        src = spark.sparkContext.parallelize(ranges, len(ranges)).toDF("start long, count long")
        df = src.mapInArrow(_spark_arrow_read(a.input), "key binary, value binary")
        rows = df.orderBy("key").mapInArrow(_spark_arrow_write(outdir), "part int, n long")
        return _spark_parts(rows.collect(), outdir, len(ranges))

    res = _timed(a, job)
    spark.stop()
    how = "mapInArrow read -> orderBy('key') -> mapInArrow write (Arrow batches)"
    return res | {"setup_seconds": setup, "how": how}


def child_spark_rdd(a: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    spark = _spark_session(a)
    setup = time.perf_counter() - t0

    def job(n: int, outdir: str) -> dict[str, Any]:
        def write(part: int, items: Any) -> Any:
            out = os.path.join(outdir, f"part-{part:05d}.bin")
            batch: list[bytes] = []
            count = 0
            with open(out, "wb") as f:
                for _, rec in items:
                    batch.append(rec)
                    if len(batch) >= _ARROW_BATCH:
                        count += f.write(b"".join(batch)) // ts.RECORD
                        batch.clear()
                count += f.write(b"".join(batch)) // ts.RECORD
                f.flush()
                os.fsync(f.fileno())
            yield part, count

        nparts = _nparts(n, a.part_mb)
        path = a.input
        if n < a.records:  # the warm-up: its own file of the first n records
            path = os.path.join(outdir, "input.bin")
            _write_durably(path, [_read_range(a.input, 0, n)])
        rdd = spark.sparkContext.binaryRecords(path, ts.RECORD)
        pairs = rdd.map(lambda r: (bytes(r[: ts.KEY]), bytes(r))).sortByKey(numPartitions=nparts)
        return _spark_parts(pairs.mapPartitionsWithIndex(write).collect(), outdir, nparts)

    res = _timed(a, job)
    spark.stop()
    how = "binaryRecords -> map (key, record) -> sortByKey -> mapPartitionsWithIndex write"
    return res | {"setup_seconds": setup, "how": how}


def child_sector(a: argparse.Namespace) -> dict[str, Any]:
    """``tsjob.sort`` of Sector path ``--input`` into ``--outdir`` on ``--cluster``."""
    import sector
    from sector.sphere import tsjob

    with sector.connect(a.cluster) as c:
        c.whoami()  # connected (TLS and credential checked) before the clock starts
        dropped = drop_caches()
        t0 = time.perf_counter()
        res = tsjob.sort(c, a.input, a.outdir, progress=False)
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, "caches_dropped": dropped, "stages": res["stages"]}


CHILDREN: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "sector": child_sector,
    "numpy": child_numpy,
    "dask": child_dask,
    "spark": child_spark,
    "spark-rdd": child_spark_rdd,
}


def child_main(a: argparse.Namespace) -> int:
    res = CHILDREN[a.child](a)
    Path(a.result).write_text(json.dumps(res))
    return 0


# -- the run --------------------------------------------------------------------------


def _ram_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def run_one(
    system: str,
    size: int,
    inputs: tuple[Path, Path | None, dict[str, Any]],
    wdir: Path,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """One system at one size, as a row of the results; failures are rows too."""
    inp, text, want = inputs
    n = size // ts.RECORD
    row: dict[str, Any] = {"system": system, "size_bytes": size, "records": n}
    try:
        if system in SECTORS:
            res = run_sector(
                size,
                wdir,
                args.nodes,
                files=args.files,
                expect=want,
                timeout=args.timeout,
                secure=system == "sector-tls",
                replicas=args.gen_replicas,
            )
        elif system == "floor":
            res = run_floor(inp, wdir)
        elif system == "numpy" and 2 * size > (ram := _ram_bytes()):
            # One process holding the records and their sorted copy: past RAM it is
            # not a contender but the OOM killer's next victim (and maybe a node's).
            return row | {
                "status": f"skipped: an in-memory sort needs 2 x {show_size(size)}, "
                f"more than this machine's {ram / 1e9:.1f} GB of RAM"
            }
        else:
            res = run_peer(system, inp, text, wdir, n, args)
            outputs = res.pop("outputs")
            res["validation"] = verdict(summarize_files(outputs), want)
            res["output_files"] = len(outputs)
            for p in outputs:  # validated: off the disk before the next system runs
                p.unlink(missing_ok=True)
    except NotInstalled as exc:
        return row | {"status": f"not installed ({exc})"}
    except Exception as exc:
        return row | {"status": f"failed: {' '.join(str(exc).split())[:200]}"}
    for key in ("returncode", "timed_out", "peak_rss_by_root"):
        res.pop(key, None)
    if "setup_seconds" in res:
        res["setup_seconds"] = round(res["setup_seconds"], 3)
    return (
        row
        | res
        | {
            "validated": res["validation"] == "ok",
            "status": "ok" if res["validation"] == "ok" else "invalid",
            "seconds": round(res["seconds"], 3),
            "mb_s": round(mbps(size, res["seconds"]), 1),
        }
    )


def run_size(
    size: int, root: Path, args: argparse.Namespace, console: Any, runs: list[dict[str, Any]]
) -> None:
    """Every chosen system at one size, each row appended to ``runs`` as it is done.

    Each step's files are deleted before the next starts: a system's output once it is
    validated, its work dir (Sector's whole cluster with its data, after ``sector
    down``) when it is done, the binary input after the last system that reads it, the
    ASCII input right after GNU sort. Free space is checked before each step.
    """
    n = size // ts.RECORD
    sdir = root / f"size-{size}"
    sdir.mkdir()
    inp = sdir / "input.bin"
    want: dict[str, Any] | None = None  # the binary input's summary
    try:
        for i, system in enumerate(args.only):
            if inp.exists() and not any(s in READERS for s in args.only[i:]):
                inp.unlink()
            # Inputs are written just before the first system that reads them, so no
            # run starts right after gigabytes of someone else's writes (the host's
            # disk cache is still draining them: Sector, run first, measured 53.6 s at
            # 4 GB after 8 GB of GNU sort's old text form, 33.4 s without it).
            if system in READERS and not inp.exists():
                need = disk_need("input", size, args, with_input=False)
                check_disk(root.parent, need, f"the {show_size(size)} input")
                console.log(f"{show_size(size)}: writing {n:,} records to {inp}")
                t0 = time.perf_counter()
                want = make_input(inp, n)
                console.log(f"  {mbps(size, time.perf_counter() - t0):,.0f} MB/s (one core)")
            if system in SECTORS and want is None:
                want = input_checksum(n)
            check_disk(
                root.parent,
                disk_need(system, size, args, with_input=False),
                f"{system} at {show_size(size)}",
            )
            mine, text = want, None
            if system == "gnusort":
                # Written just before GNU sort and deleted right after it; validated
                # against the lines' own summary (the same records, as ASCII).
                text = sdir / "input.txt"
                console.log(f"{show_size(size)}: writing the gensort -a lines for GNU sort")
                mine = make_ascii(text, n)
            assert mine is not None
            console.log(f"{show_size(size)}: {system} ...")
            wdir = sdir / system
            wdir.mkdir()
            try:
                runs.append(run_one(system, size, (inp, text, mine), wdir, args))
            finally:
                if text is not None:
                    text.unlink(missing_ok=True)
                clear(wdir, args.keep)
            console.log(f"  {_line(runs[-1])}")
    finally:
        inp.unlink(missing_ok=True)
        clear(sdir, args.keep)


def _meets(value: float, op: str, bound: float) -> bool:
    return value <= bound if op == "<=" else value >= bound


def derive(runs: list[dict[str, Any]], smallest: int) -> None:
    """Each run's s/GB, its growth, x floor, x Sector and the goals it meets (in place).

    Ratios are between validated runs only; a figure that cannot be had is None.
    """
    ok = {(r["system"], r["size_bytes"]): r for r in runs if r.get("status") == "ok"}
    for r in runs:
        r["seconds_per_gb"] = (
            round(r["seconds"] / (r["size_bytes"] / 1e9), 3) if "seconds" in r else None
        )
    for r in runs:
        system, size = r["system"], r["size_bytes"]
        figs: dict[str, float | None] = dict.fromkeys(("per_gb_growth", "x_floor", "x_sector"))
        if r.get("status") == "ok":
            base = ok.get((system, smallest))
            floor = ok.get(("floor", size))
            sector = ok.get(("sector", size))
            if base and base["seconds_per_gb"] > 0:
                figs["per_gb_growth"] = r["seconds_per_gb"] / base["seconds_per_gb"]
            if floor and floor["seconds"] > 0:
                figs["x_floor"] = r["seconds"] / floor["seconds"]
            if sector and sector["seconds"] > 0 and system != "floor":
                figs["x_sector"] = r["seconds"] / sector["seconds"]
        r |= {k: None if v is None else round(v, 3) for k, v in figs.items()}
        goals = GOALS.get(system, {})
        met = {f: _meets(r[f], *goals[f]) for f in goals if r.get(f) is not None}
        if met:
            r["goals_met"] = met


def run(args: argparse.Namespace, console: Any) -> dict[str, Any]:
    base = Path(args.dir) if args.dir else Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="sector-bench-terasort-", dir=base))
    runs: list[dict[str, Any]] = []
    stopped = None
    try:
        # The largest size first, so a run that cannot finish fails before it starts.
        big = max(args.sizes, key=lambda s: size_need(s, args))
        check_disk(base, size_need(big, args), f"the {show_size(big)} runs (before any run)")
        for size in args.sizes:
            check_disk(base, size_need(size, args), f"the {show_size(size)} runs")
            run_size(size, root, args, console, runs)
    except DiskSpace as exc:
        stopped = str(exc)
    finally:
        if args.keep:
            console.log(f"kept {root} (the logs; the data is deleted as the run goes)")
        else:
            shutil.rmtree(root, ignore_errors=True)
    derive(runs, min(args.sizes))
    dropped = [bool(r.get("caches_dropped")) for r in runs if "seconds" in r]
    goals = {s: {f: f"{op} {b:g}" for f, (op, b) in g.items()} for s, g in GOALS.items()}
    return {
        "benchmark": "terasort",
        "mb": MB,
        "sizes": args.sizes,
        "systems": args.only,
        "nodes": args.nodes,
        "sector_input_replicas": args.gen_replicas,
        "caches_dropped": bool(dropped) and all(dropped),
        "goals": goals,
        "stopped": stopped,
        "runs": runs,
        "machine": machine(),
    }


def _line(row: dict[str, Any]) -> str:
    if "seconds" not in row:
        return str(row["status"])
    return f"{row['seconds']:.2f} s, {row['mb_s']:,.1f} MB/s, {row['validation']}"


def _mb(value: Any) -> str:
    return f"{value / MB:,.0f}" if isinstance(value, int) and value else ""


def _fig(row: dict[str, Any], fig: str) -> str:
    """A ratio cell: the figure, then a mark when the system has a goal for it."""
    value = row.get(fig)
    if value is None:
        return "-"
    met = (row.get("goals_met") or {}).get(fig)
    return f"{value:.2f}" + ("" if met is None else " ✓" if met else " ✗")


def show(res: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    sizes = res["sizes"]
    smallest = show_size(min(sizes))
    t = Table(
        title=f"TeraSort: Sector ({res['nodes']} nodes), the disk's floor and the peers\n"
        + GOALS_LINE,
        caption=f"s/GB: seconds per 10^9 bytes; x s/GB @ {smallest}: s/GB over the"
        f" system's s/GB at {smallest} (1 = linear); x floor, x Sector: seconds over the"
        " floor's, over Sector's; ✓ goal met, ✗ missed. MB = 10^6 bytes; page caches"
        f" dropped: {'yes' if res['caches_dropped'] else 'NO'}",
    )
    for col in (
        "system",
        "size",
        "seconds",
        "s/GB",
        f"x s/GB @ {smallest}",
        "x floor",
        "x Sector",
        "peak RSS MB",
        "peak RSS/node MB",
        "validated",
    ):
        t.add_column(col, justify="left" if col in ("system", "validated") else "right")
    # The floor heads each size; the systems follow in the order they ran.
    rows = sorted(res["runs"], key=lambda r: (sizes.index(r["size_bytes"]), r["system"] != "floor"))
    last = None
    for r in rows:
        if last is not None and r["size_bytes"] != last:
            t.add_section()
        last = r["size_bytes"]
        if "seconds" in r:
            cells = [f"{r['seconds']:.2f}", f"{r['seconds_per_gb']:.2f}"]
            cells += [_fig(r, f) for f in ("per_gb_growth", "x_floor", "x_sector")]
            valid = r["validation"]
        else:
            cells = ["", "", "", "", ""]
            valid = r["status"]
        t.add_row(
            r["system"],
            show_size(r["size_bytes"]),
            *cells,
            _mb(r.get("peak_rss_bytes")),
            _mb(r.get("peak_rss_node_max_bytes")),
            valid,
        )
    console.print(t)
    for r in rows:
        if r["system"] == "floor" and "read_seconds" in r:
            console.print(
                f"floor {show_size(r['size_bytes'])}: cold read {r['read_seconds']:.2f} s"
                f" ({r['read_mb_s']:,.0f} MB/s) + durable write {r['write_seconds']:.2f} s"
                f" ({r['write_mb_s']:,.0f} MB/s)"
            )
    tls = [r for r in rows if r["system"] == "sector-tls" and r.get("x_sector") is not None]
    if tls:
        each = ", ".join(f"{show_size(r['size_bytes'])} {_fig(r, 'x_sector')}" for r in tls)
        console.print(f"sector-tls / sector seconds (goal <= 1.15): {each}")
    for r in rows:
        if r["system"] in SECTORS and "gen_mb_s_per_node" in r:
            per_node = ", ".join(_mb(b) for b in r.get("peak_rss_per_node_bytes") or [])
            console.print(
                f"{r['system']} {show_size(r['size_bytes'])}: generation"
                f" {r['gen_mb_s_per_node']:,.1f} MB/s per node ({r['files']} files,"
                f" {r['input_replicas']} replica(s)); peak RSS per node (MB): {per_node or '?'}"
            )
    if not res["caches_dropped"]:
        console.print("page caches were NOT dropped (needs root and a writable drop_caches)")
    load = ", ".join(f"{x:.1f}" for x in res["machine"]["loadavg"])
    console.print(f"load average at the end: {load} on {res['machine']['cpus']} cores")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument(
        "--sizes",
        default="1G",
        type=lambda s: [parse_size(x) for x in s.split(",") if x.strip()],
        help="comma-separated sizes, 10^n units (1G)",
    )
    ap.add_argument(
        "--only",
        default=",".join(DEFAULT),
        help=f"systems, of {','.join(SYSTEMS)} (the floor runs always)",
    )
    ap.add_argument("--nodes", type=int, default=3, help="Sector node processes (3)")
    ap.add_argument(
        "--files",
        type=int,
        default=None,
        help="Sector input files (a multiple of nodes, about 256 MB each)",
    )
    ap.add_argument(
        "--gen-replicas",
        type=int,
        default=1,
        help="replicas of Sector's generated input (1: one copy, as the peers have)",
    )
    ap.add_argument(
        "--part-mb", type=int, default=64, help="Dask/Spark input partition size, MB (64)"
    )
    ap.add_argument("--spark-memory", default="6g", help="spark.driver.memory for local[2] (6g)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds allowed per system")
    ap.add_argument("--dir", help="where to put the temp dir (default: the system temp dir)")
    ap.add_argument(
        "--keep", action="store_true", help="keep the temp dir's logs (the data goes as usual)"
    )
    ap.add_argument("--out", default="terasort.json", help="file name under bench/results/")
    # Child mode: one peer's timed run, started by the parent (not for direct use).
    ap.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    ap.add_argument("--input", help=argparse.SUPPRESS)
    ap.add_argument("--outdir", help=argparse.SUPPRESS)
    ap.add_argument("--records", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--cluster", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child_main(args)
    chosen = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = sorted(chosen - set(SYSTEMS))
    if unknown or not chosen:
        ap.error(f"unknown systems {unknown}; choose from {', '.join(SYSTEMS)}")
    # In SYSTEMS' order (the order of the steps), with the floor: every x floor needs it.
    args.only = [s for s in SYSTEMS if s in chosen | {"floor"}]
    if not args.sizes or args.nodes < 1 or args.gen_replicas < 1:
        ap.error("need --sizes, --nodes >= 1 and --gen-replicas >= 1")

    from rich.console import Console

    console = Console() if sys.stdout.isatty() else Console(width=130)
    res = run(args, console)
    if res["runs"]:
        show(res, console)
        console.print(f"results: {write_result(args.out, res)}")
    if res["stopped"]:
        console.print(f"[red]terasort stopped: {res['stopped']}[/red]", soft_wrap=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
