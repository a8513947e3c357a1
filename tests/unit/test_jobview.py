"""The web page's job view (``sector.node.jobview``): each node's attempts by state,
an acknowledged report keeps what the page shows, errors go only to who may see them,
and the cluster's view sums the nodes' and names where each error happened."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from sector.node.jobview import acked, job_views, merge


def attempt(aid: int, state: str, result: dict[str, Any] | None, t: float) -> Any:
    return SimpleNamespace(
        id=aid, seg=aid, state=state, result=result, started=t, ended=t + 1 if result else None
    )


def job(owner: str | None, total: int = 9, stopped: str | None = None) -> Any:
    ok = {"ok": True, "bytes_in": 100, "records_out": 3, "data": b"x" * 50}
    bad = {"error": "ValueError: no", "traceback": "Traceback ...\nValueError: no\n"}
    return SimpleNamespace(
        id="j1",
        owner=owner,
        total=total,
        stopped=stopped,
        attempts={
            1: attempt(1, "done", ok, 10.0),
            2: attempt(2, "done", {**acked(ok), "acked": True}, 11.0),
            3: attempt(3, "done", bad, 12.0),
            4: attempt(4, "running", None, 13.0),
            5: attempt(5, "cancelled", None, 14.0),
        },
    )


def test_a_nodes_view_counts_attempts_and_keeps_acknowledged_figures() -> None:
    [v] = job_views([job(None)], None, trusted=False)
    assert (v["done"], v["failed"], v["running"], v["cancelled"]) == (2, 1, 1, 1)
    assert (v["bytes_in"], v["records_out"]) == (200, 6)
    assert v["errors"][0]["traceback"].startswith("Traceback")
    assert (v["started"], v["last_done"]) == (10.0, 13.0)
    assert "data" not in acked({"ok": True, "data": b"big"})


def test_errors_are_shown_to_the_jobs_user_an_admin_or_on_an_open_cluster() -> None:
    assert job_views([job("ann")], None, trusted=False)[0]["errors"] == []
    assert job_views([job("ann")], None, trusted=False)[0]["errors_hidden"] == 1
    assert job_views([job("ann")], "bob", trusted=False)[0]["errors"] == []
    assert job_views([job("ann")], "ann", trusted=False)[0]["errors"]
    assert job_views([job("ann")], None, trusted=True)[0]["errors"]


def test_the_cluster_view_sums_the_nodes_and_names_each_errors_node() -> None:
    a = job_views([job(None)], None, trusted=False)
    b = job_views([job(None)], None, trusted=False)
    [j] = merge([("n1:1", a), ("n2:1", b), ("n3:1", None)])
    assert (j["done"], j["failed"], j["running"], j["state"]) == (4, 2, 2, "running")
    assert [n["address"] for n in j["nodes"]] == ["n1:1", "n2:1"]
    assert {e["node"] for e in j["errors"]} == {"n1:1", "n2:1"}
    assert j["bytes_per_s"] == 400 / 3.0 and j["segments_per_s"] == 4 / 3.0
    assert merge([]) == []


def test_the_total_is_the_drivers_and_a_cancel_on_any_node_cancels_the_job() -> None:
    a = job_views([job(None, total=9)], None, trusted=False)
    b = job_views([job(None, total=0)], None, trusted=False)  # a bucket node: no runs
    [j] = merge([("n1:1", a), ("n2:1", b)])
    assert (j["segments"], j["state"], j["stopped"]) == (9, "running", None)
    c = job_views([job(None, stopped="job j1 was cancelled by ann")], None, trusted=False)
    [j] = merge([("n1:1", a), ("n2:1", c)])
    assert (j["state"], j["stopped"]) == ("cancelled", "job j1 was cancelled by ann")
