"""The jobs as the web page shows them (issue 16), pure: each node's view of the Sphere
jobs it runs attempts of (``job_views``, carried by ``sphere.info`` when asked for
``jobs``), and the cluster-wide view folded from every node's (``merge``).

A Sphere job is driven by its client, not by a node: no node knows the whole job, but
together the nodes know every attempt -- which segments each runs, has done or failed.
"""

from __future__ import annotations

from typing import Any

KEPT = ("ok", "error", "traceback", "bytes_in", "records_out")  # of an acknowledged report
ERRORS_SHOWN = 5  # failed attempts per job the job view carries (the latest)


def acked(res: dict[str, Any]) -> dict[str, Any]:
    """What stays of an attempt's report once its driver has it: no output data."""
    return {k: res[k] for k in KEPT if k in res}


def job_views(jobs: Any, who: str | None, *, trusted: bool) -> list[dict[str, Any]]:
    """What this node runs of each job, for the web page: attempts by state, the
    bytes and records done, and the latest failures with their tracebacks -- those
    only to the job's user, an admin or a node, or to anyone on an open cluster (an
    error can name a private path)."""
    out = []
    for j in jobs:
        counts = {"running": 0, "done": 0, "failed": 0, "cancelled": 0}
        bytes_in = records = 0
        first: float | None = None
        last: float | None = None
        errors = []
        for t in j.attempts.values():
            first = t.started if first is None else min(first, t.started)
            if t.ended is not None:
                last = t.ended if last is None else max(last, t.ended)
            res = t.result or {}
            if t.state != "done":
                counts[t.state if t.state in counts else "running"] += 1
            elif res.get("ok"):
                counts["done"] += 1
                bytes_in += int(res.get("bytes_in") or 0)
                records += int(res.get("records_out") or 0)
            else:
                counts["failed"] += 1
                errors.append(
                    {
                        "attempt": t.id,
                        "seg": t.seg,
                        "at": t.ended,
                        "error": str(res.get("error", "")),
                        "traceback": res.get("traceback"),
                    }
                )
        shown = trusted or j.owner is None or (who is not None and who == j.owner)
        errors.sort(key=lambda e: e["at"] or 0.0)
        out.append(
            {
                "id": j.id,
                "owner": j.owner,
                **counts,
                "bytes_in": bytes_in,
                "records_out": records,
                "started": first,
                "last_done": last,
                "errors": errors[-ERRORS_SHOWN:] if shown else [],
                "errors_hidden": 0 if shown else counts["failed"],
                "segments": j.total,  # the whole job's, as its driver said (0: unknown)
                "stopped": j.stopped,  # why it was cancelled (sphere.stop), or None
            }
        )
    return out


COUNTS = ("running", "done", "failed", "cancelled")


def merge(per_node: list[tuple[str, list[dict[str, Any]] | None]]) -> list[dict[str, Any]]:
    """The cluster's Sphere jobs from each node's ``job_views`` (None: the node did not
    answer): totals, a row per node, the latest errors (naming their node) and the
    throughput over the job's attempts so far, and ``segments``, the job's total (known
    from its first attempt). State: running, idle (nothing runs: done, or between
    stages) or cancelled. Running jobs first, then the newest."""
    jobs: dict[str, dict[str, Any]] = {}
    for addr, views in per_node:
        for v in views or []:
            j = jobs.setdefault(
                v["id"],
                {
                    "id": v["id"],
                    "owner": v.get("owner"),
                    **dict.fromkeys(COUNTS, 0),
                    "bytes_in": 0,
                    "records_out": 0,
                    "started": None,
                    "last_done": None,
                    "errors_hidden": 0,
                    "segments": 0,
                    "stopped": None,
                    "nodes": [],
                    "errors": [],
                },
            )
            j["nodes"].append({"address": addr, **{k: int(v.get(k) or 0) for k in COUNTS}})
            for k in (*COUNTS, "bytes_in", "records_out", "errors_hidden"):
                j[k] += int(v.get(k) or 0)
            for k, pick in (("started", min), ("last_done", max)):
                if v.get(k) is not None:
                    j[k] = v[k] if j[k] is None else pick(j[k], v[k])
            j["segments"] = max(j["segments"], int(v.get("segments") or 0))
            j["stopped"] = j["stopped"] or v.get("stopped")
            j["errors"].extend({**e, "node": addr} for e in v.get("errors") or [])
    out = []
    for j in jobs.values():
        j["nodes"].sort(key=lambda n: n["address"])
        j["errors"].sort(key=lambda e: e.get("at") or 0.0)
        span = (j["last_done"] or 0.0) - (j["started"] or 0.0)
        j["seconds"] = round(span, 3) if j["last_done"] else 0.0
        j["bytes_per_s"] = j["bytes_in"] / span if span > 0 else None
        j["segments_per_s"] = j["done"] / span if span > 0 else None
        j["state"] = "cancelled" if j["stopped"] else "running" if j["running"] else "idle"
        out.append(j)
    out.sort(key=lambda j: (j["state"] != "running", -(j["started"] or 0.0)))
    return out
