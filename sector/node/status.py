"""The cluster status a client sees (``fs.status``), summed from every node's report
(pure: the entry node gathers the ``node.info`` answers, this folds them).

What it decides: counts over the nodes that answered (each owner counts its own
records, so the sums count each file once); a member that should answer and did not is
"unreachable"; a draining node is "drained" once no owner's record lists it and every
reachable node answered; the cluster is *split* while a member is out of reach, a
node's ring has not converged, or the nodes' successors do not make one cycle (README
"Consistency": a partition is never shown as "all up"); strangers (not a node, not an
admin) see the cluster's shape, not its hosts' insides.
"""

from __future__ import annotations

from typing import Any


def hide_insides(info: dict[str, Any]) -> dict[str, Any]:
    """A node's info as a stranger may see it (changed in place): no data directory,
    no pid, no connection counts, and no worker's last error (which can name private paths)."""
    info.pop("data", None)
    info.pop("pid", None)
    info.pop("connections", None)
    for w in info.get("workers") or []:
        if isinstance(w, dict):
            w.pop("last_error", None)
    return info


def summarize(
    view: list[dict[str, Any]], infos: list[dict[str, Any] | None], *, stranger: bool
) -> dict[str, Any]:
    """``view``: the entry's member rows (changed in place); ``infos``: each member's
    ``node.info`` or None."""
    files = under = size = queued = 0
    held: dict[str, int] = {}
    answered = True
    split = split_of(view, infos)
    for m, inf in zip(view, infos, strict=True):
        if inf is None:
            m["files"] = None
            if m["state"] in ("up", "draining"):
                m["state"] = "unreachable"
                answered = False
            continue
        m["workers"] = inf.get("workers", [])
        m["http"] = inf.get("http")  # the node's web page and /metrics (issue 16)
        m["load"] = inf.get("load")
        m["tls"] = bool((inf.get("security") or {}).get("tls"))
        m["sandbox"] = inf.get("sandbox")
        if isinstance(inf.get("bulk"), dict):
            m["bulk"] = inf["bulk"]  # congestion control of bulk streams (issue 15)
        if isinstance(inf.get("swarm"), dict):
            m["swarm"] = inf["swarm"]  # cache and piece counters (issue 14)
        for nid, n in (inf.get("draining_held") or {}).items():
            held[nid] = held.get(nid, 0) + int(n)
        m["files"] = inf.get("blobs", 0)
        m["bytes_used"] = inf.get("bytes_used", m["bytes_used"])
        m["bytes_free"] = inf.get("bytes_free", m["bytes_free"])
        files += int(inf.get("files", 0))
        under += int(inf.get("under_replicated", 0))
        size += int(inf.get("bytes", 0))
        m["repair_queue"] = int(inf.get("repair_queue", 0))
        queued += m["repair_queue"]
    for m in view:
        if m["state"] != "draining":
            continue
        # Drained = no owner's record lists the node any more (every copy it had is
        # at rf elsewhere). Only claimed when every reachable node answered: a
        # missing answer may be the owner still listing it.
        m["drain_remaining"] = held.get(m["id"])
        if answered and m["id"] in held and held[m["id"]] == 0:
            m["state"] = "drained"
    if stranger:
        for m in view:
            hide_insides(m)
    return {
        "nodes": view,
        "files": files,
        "under_replicated": under,
        "bytes": size,
        "repair_queue": queued,
        "split": split,
    }


def split_of(view: list[dict[str, Any]], infos: list[dict[str, Any] | None]) -> bool:
    """Whether the cluster is split; each node's ``partition`` report goes into its row."""
    out = False
    succ: dict[str, str] = {}
    for m, inf in zip(view, infos, strict=True):
        if m["state"] in ("leaving", "left"):
            continue
        if inf is None:
            out = True  # down or unreachable from here
            continue
        part = inf.get("partition")
        if isinstance(part, dict):
            m["partition"] = part
            out = out or not part.get("converged", True)
            succ[m["address"]] = str(part.get("successor"))
    if succ and not out:
        # Two rings: following successors from one node must visit every answering node.
        start = next(iter(succ))
        seen: set[str] = set()
        cur = start
        while cur in succ and cur not in seen:
            seen.add(cur)
            cur = succ[cur]
        out = seen != set(succ)
    return out
