"""Helpers shared by the benchmark scripts: machine facts, page caches, results, units.

Benchmarks are scripts, not tests: they print a table and write a JSON record to
``bench/results/`` so runs on different machines (or commits) can be compared.
Throughput is in MB/s with MB = 10**6 bytes, as disk and network tools report it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
MB = 1_000_000


def drop_caches() -> bool:
    """Flush dirty pages and drop the page cache, so the next phase reads from disk.

    Needs root and a kernel that lets this container write /proc/sys/vm/drop_caches;
    elsewhere it is a no-op and the run records that caches were *not* dropped.
    """
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        return False
    return True


def git_commit() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        if out.returncode == 0:
            return out.stdout.strip()
    return ""


def machine() -> dict[str, Any]:
    """What the figures depend on: cores, memory, Python, kernel, the commit measured."""
    mem = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    return {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "memory_bytes": mem,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "loadavg": list(os.getloadavg()),
        "commit": git_commit(),
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


def write_result(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    return path


def mbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / MB if seconds > 0 else 0.0


def percentile(samples: list[float], q: float) -> float:
    """The q-th percentile (0..100), interpolated between the two nearest ranks."""
    if not samples:
        return 0.0
    s = sorted(samples)
    k = (len(s) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU the processes have used so far (Linux /proc; 0 elsewhere)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def count_error(errors: dict[str, int], exc: BaseException) -> None:
    """Errors are counted, not fatal: the table says how many and the log says which."""
    key = f"{type(exc).__name__}: {exc}"[:120]
    errors[key] = errors.get(key, 0) + 1


async def timed_async(
    op: Callable[[str, int], Awaitable[Any]],
    seconds: float,
    inflight: int,
    tag: str,
    barrier: Any,
    catch: tuple[type[BaseException], ...],
) -> dict[str, Any]:
    """``inflight`` coroutines calling ``op`` for ``seconds`` (after ``barrier``):
    ops, elapsed, CPU of this process, every call's latency, errors (of ``catch``,
    counted, not fatal)."""
    lats: list[list[float]] = [[] for _ in range(inflight)]
    errors: dict[str, int] = {}
    # The barrier blocks the loop, which is idle until the phase starts anyway.
    barrier.wait(timeout=120)
    cpu0 = time.process_time()
    start = time.perf_counter()
    deadline = start + seconds

    async def worker(t: int) -> None:
        lat = lats[t]
        n = 0
        while (t0 := time.perf_counter()) < deadline:
            try:
                await op(f"{tag}{t}-{n}", t + n)
            except catch as exc:
                count_error(errors, exc)
            lat.append(time.perf_counter() - t0)
            n += 1

    await asyncio.gather(*(worker(t) for t in range(inflight)))
    lat = [x for part in lats for x in part]
    return {
        "ops": len(lat),
        "elapsed": time.perf_counter() - start,
        "cpu_s": time.process_time() - cpu0,
        "lat": lat,
        "errors": errors,
    }
