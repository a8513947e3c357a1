"""The partition test's checker (sector.testing.jepsen): legal final values and the
kinds of violation it reports, on hand-made histories."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from sector.testing.jepsen import (
    ABSENT,
    Op,
    availability,
    check,
    check_reads,
    classify,
    legal_final_values,
    load_history,
    one_ring,
    touched_paths,
    value_id,
)

P = "/j/c1/f1"


def op(
    kind: str,
    t0: float,
    t1: float,
    value: str | None = None,
    outcome: str = "ok",
    path: str = P,
    path2: str | None = None,
    client: str = "c1",
) -> Op:
    return Op(client, kind, path, value, t0, t1, outcome, "", path2)


def put(t0: float, t1: float, v: str, outcome: str = "ok", path: str = P) -> Op:
    return op("put", t0, t1, v, outcome, path)


def rm(t0: float, t1: float, outcome: str = "ok", path: str = P) -> Op:
    return op("rm", t0, t1, ABSENT, outcome, path)


def mv(t0: float, t1: float, v: str, src: str, dst: str, outcome: str = "ok") -> Op:
    return op("mv", t0, t1, v, outcome, src, dst)


def kinds(violations: list[dict]) -> Counter[str]:
    return Counter(v["kind"] for v in violations)


def test_no_ops_leaves_only_absent() -> None:
    assert legal_final_values([], P) == {ABSENT}


def test_an_acknowledged_write_supersedes_the_initial_absent() -> None:
    assert legal_final_values([put(1, 2, "a")], P) == {"a"}


def test_sequential_acknowledged_writes_leave_only_the_last() -> None:
    ops = [put(1, 2, "a"), put(3, 4, "b"), rm(5, 6), put(7, 8, "c")]
    assert legal_final_values(ops, P) == {"c"}
    assert legal_final_values(ops[:3], P) == {ABSENT}


def test_concurrent_acknowledged_writes_may_each_win() -> None:
    # b is invoked before a completes, and a before b completes: either order is legal.
    ops = [put(1, 5, "a"), put(2, 6, "b")]
    assert legal_final_values(ops, P) == {"a", "b"}
    # c is invoked after both completed: only c.
    assert legal_final_values([*ops, put(7, 8, "c")], P) == {"c"}


def test_failed_and_unknown_writes_are_candidates_that_supersede_nothing() -> None:
    ops = [put(1, 2, "a"), put(3, 4, "b", "fail"), put(5, 6, "c", "unknown")]
    assert legal_final_values(ops, P) == {"a", "b", "c"}
    # A failed delete does not supersede "a" either, but makes absent possible.
    assert legal_final_values([put(1, 2, "a"), rm(3, 4, "fail")], P) == {"a", ABSENT}


def test_a_failed_write_may_land_late_so_it_is_never_superseded() -> None:
    # The failed put of b may be applied after the acknowledged put of c (a request
    # retransmitted after the heal): b stays legal.
    ops = [put(1, 2, "b", "fail"), put(3, 4, "c")]
    assert legal_final_values(ops, P) == {"b", "c"}


def test_only_failed_writes_keep_absent_legal() -> None:
    assert legal_final_values([put(1, 2, "a", "unknown")], P) == {"a", ABSENT}


def test_rename_moves_the_known_value() -> None:
    d = "/j/c1/f2"
    ops = [put(1, 2, "a"), mv(3, 4, "a", P, d)]
    assert legal_final_values(ops, P) == {ABSENT}
    assert legal_final_values(ops, d) == {"a"}
    # Unknown rename: both names may hold either outcome.
    ops = [put(1, 2, "a"), mv(3, 4, "a", P, d, "unknown")]
    assert legal_final_values(ops, P) == {"a", ABSENT}
    assert legal_final_values(ops, d) == {"a", ABSENT}


def test_reads_do_not_count_as_writes() -> None:
    ops = [put(1, 2, "a"), op("read", 3, 4, "zzz")]
    assert legal_final_values(ops, P) == {"a"}


def test_classify() -> None:
    d = "/j/c1/f2"
    assert classify([put(1, 2, "a")], P, ABSENT) == "lost_write"
    assert classify([put(1, 2, "a"), put(3, 4, "b")], P, "a") == "reverted_overwrite"
    assert classify([put(1, 2, "a"), rm(3, 4)], P, "a") == "undone_delete"
    assert classify([put(1, 2, "a")], P, "q") == "phantom_value"
    ops = [put(1, 2, "a"), mv(3, 4, "a", P, d)]
    assert classify(ops, P, "a") == "rename_old_visible"
    assert classify(ops, d, ABSENT) == "rename_new_missing"


def test_check_passes_a_clean_run() -> None:
    d = "/j/c1/f2"
    ops = [put(1, 2, "a"), mv(3, 4, "a", P, d), put(5, 6, "s", path="/j/shared/s0")]
    finals = {
        P: {"h1": ABSENT, "h2": ABSENT},
        d: {"h1": "a", "h2": "a"},
        "/j/shared/s0": {"h1": "s", "h2": "s"},
    }
    assert check(ops, finals, copies={d: 3, "/j/shared/s0": 3}) == []


def test_check_reports_every_kind() -> None:
    d = "/j/c1/f2"
    ops = [
        put(1, 2, "a"),
        mv(3, 4, "a", P, d),  # old name visible, new name missing below
        put(1, 2, "x", path="/p/lost"),
        put(1, 2, "x", path="/p/rev"),
        put(3, 4, "y", path="/p/rev"),
        put(1, 2, "x", path="/p/del"),
        rm(3, 4, path="/p/del"),
        put(1, 2, "x", path="/p/split"),
        put(1, 2, "x", path="/p/err"),
        op("read", 5, 6, "never", path="/p/rev"),
    ]
    finals = {
        P: {"h1": "a"},
        d: {"h1": ABSENT},
        "/p/lost": {"h1": ABSENT, "h2": ABSENT},
        "/p/rev": {"h1": "x"},
        "/p/del": {"h1": "x"},
        "/p/split": {"h1": "x", "h2": ABSENT},
        "/p/err": {"h1": "x", "h2": "error: boom"},
    }
    got = kinds(check(ops, finals, copies={"/p/rev": 2, "/p/err": 3}, dead=["h4"]))
    assert got == {
        "rename_old_visible": 1,
        "rename_new_missing": 1,
        "lost_write": 2,  # /p/lost everywhere, /p/split on h2
        "reverted_overwrite": 1,
        "undone_delete": 1,
        "hosts_disagree": 1,
        "read_error_after_heal": 1,
        "phantom_read": 1,
        "under_replicated": 1,
        "node_died": 1,
    }


def test_check_reads_allows_stale_but_not_unwritten_values() -> None:
    ops = [
        put(1, 2, "a"),
        put(3, 4, "b"),
        op("read", 5, 6, "a"),  # stale: allowed
        op("read", 2.5, 3.5, "b"),  # concurrent with b's put: allowed
        op("read", 0, 0.5, "b"),  # before b was even invoked: phantom
        op("read", 5, 6, ABSENT),
    ]
    assert [v["kind"] for v in check_reads(ops)] == ["phantom_read"]


def test_history_round_trip_and_availability(tmp_path: Path) -> None:
    ops = [
        put(1, 2, value_id(b"x")),
        put(9, 12, "b", "unknown", path="/q"),
        put(11, 12, "b", "fail", path="/q"),
        op("read", 12, 13, ABSENT, client="c2/1"),
    ]
    f = tmp_path / "h.jsonl"
    f.write_text("".join(o.to_json() + "\n" for o in reversed(ops)))
    back = load_history([f, tmp_path / "missing.jsonl"])
    assert back == ops
    assert touched_paths(back) == ["/j/c1/f1", "/q"]
    # A worker "c2/1" counts for its process c2; an op counts where it completed.
    assert json.loads(ops[0].to_json())["value"] == value_id(b"x")
    phases = [
        {"name": "healthy", "start": 0, "end": 10, "sides": {"c1": "all"}},
        {"name": "cut", "start": 10, "end": 20, "sides": {"c1": "minority", "c2": "majority"}},
    ]
    av = availability(back, phases)
    assert av[0]["c1"] == {"side": "all", "writes_ok": 1, "stuck": 1}
    assert av[1]["c1"] == {"side": "minority", "writes_fail": 1, "writes_unknown": 1}
    assert av[1]["c2"] == {"side": "majority", "reads_ok": 1}


def test_one_ring() -> None:
    assert one_ring({})
    assert one_ring({"a": "b", "b": "c", "c": "a"})
    assert not one_ring({"a": "b", "b": "a", "c": "d", "d": "c"})  # two rings
    assert not one_ring({"a": None, "b": "a"})
