"""The persisted repair queue: survives a restart, honours backoff, keeps re-queued work."""

from __future__ import annotations

from pathlib import Path

from sector.storage.repair_queue import BACKOFF_CAP, RepairQueue, backoff


def test_backoff_doubles_up_to_the_cap() -> None:
    assert [backoff(n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    assert backoff(30) == BACKOFF_CAP == 60.0


def test_entries_survive_a_restart_with_their_backoff(tmp_path: Path) -> None:
    db = str(tmp_path / "repair.sqlite3")
    q = RepairQueue(db)
    q.enqueue("/a", "lost node", 100.0)
    q.enqueue("/b", "reported", 100.0, bad="ab12")
    [e] = q.due(100.0, 1)  # earliest first; both due, one asked for
    assert e.path in {"/a", "/b"}
    a = q.get("/a")
    assert a is not None
    assert q.failed(a, 101.0, "no target") == 102.0
    q.close()

    q = RepairQueue(db)  # "the node restarted"
    assert len(q) == 2
    assert [e.path for e in q.due(101.5, 10)] == ["/b"]  # /a is backing off
    b = q.get("/b")
    assert b is not None and b.bad == frozenset({"ab12"}) and b.reason == "reported"
    a = q.get("/a")
    assert a is not None and a.attempts == 1 and a.error == "no target"
    assert {e.path for e in q.due(102.0, 10)} == {"/a", "/b"}
    q.close()


def test_a_scan_does_not_cut_a_backoff_short_but_a_lost_node_does(tmp_path: Path) -> None:
    q = RepairQueue(str(tmp_path / "q.sqlite3"))
    q.enqueue("/a", "scan", 0.0)
    a = q.get("/a")
    assert a is not None
    for _ in range(10):
        q.failed(a, 0.0, "x")
        a = q.get("/a")
        assert a is not None
    assert a.due == 60.0  # capped
    q.enqueue("/a", "scan", 30.0)
    assert q.due(30.0, 10) == []
    q.enqueue("/a", "lost node", 30.0, urgent=True)
    assert [e.path for e in q.due(30.0, 10)] == ["/a"]


def test_done_keeps_a_path_queued_again_meanwhile(tmp_path: Path) -> None:
    q = RepairQueue(str(tmp_path / "q.sqlite3"))
    q.enqueue("/a", "scan", 0.0)
    [taken] = q.due(0.0, 1)
    q.enqueue("/a", "reported", 1.0, bad="cd34")  # while the repair ran
    assert q.done(taken) is False and len(q) == 1
    again = q.get("/a")
    assert again is not None and again.bad == frozenset({"cd34"})
    assert q.done(again) is True and len(q) == 0
    assert q.next_due() is None


def test_due_skips_paths_in_flight(tmp_path: Path) -> None:
    q = RepairQueue(str(tmp_path / "q.sqlite3"))
    q.enqueue_many([f"/f{i}" for i in range(5)], "scan", 0.0)
    got = q.due(0.0, 2, skip={"/f0", "/f1"})
    assert len(got) == 2 and not {e.path for e in got} & {"/f0", "/f1"}
