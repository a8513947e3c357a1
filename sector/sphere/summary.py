"""The result of a finished Sphere stage (``driver``): what it read and wrote, how it
went (backups, failed attempts, lost nodes, time per phase) and its output."""

from __future__ import annotations

from typing import Any

from sector.sphere.machine import JobMachine

__all__ = ["summary"]


def summary(
    job: str,
    m: JobMachine,
    opts: dict[str, Any],
    seconds: float,
    phases: dict[str, float],
    files: list[dict[str, Any]],
) -> dict[str, Any]:
    ordered = m.ordered()
    res: dict[str, Any] = {
        "job": job,
        "output": opts.get("output"),
        "segments": len(m.segments),
        "seconds": round(seconds, 3),
        "records_out": sum(int(r.get("records_out", 0)) for r in ordered),
        "bytes_in": sum(int(r.get("bytes_in", 0)) for r in ordered),
        "bytes_out": sum(int(r.get("bytes_out", 0)) for r in ordered),
        "speculative": m.speculative,
        "failed_attempts": m.sched.progress()["failed_attempts"],
        "lost_nodes": sorted(m.addr.get(n, n) for n in m.lost),
        "phases": dict(phases),
        "files": files,
    }
    if opts.get("mode") == "client":
        res["results"] = [r.get("data", b"") for r in ordered]
    if opts.get("mode") == "buckets":
        # The bytes the winning attempts' parts hold, as written and moved (less
        # than bytes_out with shuffle_compress)
        res["shuffle_bytes"] = sum(
            sum(int(n) for n in (r.get("parts") or {}).values()) for r in ordered
        )
    return res
