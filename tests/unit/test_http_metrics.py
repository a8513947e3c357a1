"""The pure parts of the HTTP face (issue 16): per-op request counters with cumulative
latency buckets, and where ``--http`` serves."""

from __future__ import annotations

import pytest

from sector.node.http import http_address
from sector.transport.opstats import BUCKETS, OpStats


def test_opstats_counts_by_op_and_outcome_with_cumulative_buckets() -> None:
    s = OpStats()
    s.record("fs.stat", "ok", 0.0005)
    s.record("fs.stat", "ok", 0.3)
    s.record("fs.stat", "error", 100.0)
    s.record("unknown", "bad_request", 0.002)
    assert s.outcomes == {
        ("fs.stat", "ok"): 2,
        ("fs.stat", "error"): 1,
        ("unknown", "bad_request"): 1,
    }
    cum = s.cumulative("fs.stat")
    assert len(cum) == len(BUCKETS) + 1 and cum[-1] == ("+Inf", 3)
    assert cum[0] == ("0.001", 1)  # 0.5 ms is in the first bucket
    assert dict(cum)["0.5"] == 2  # 300 ms by 0.5 s; 100 s only in +Inf
    assert [n for _, n in cum] == sorted(n for _, n in cum)  # cumulative: never decreases
    assert s.latency["fs.stat"].count == 3 and s.latency["fs.stat"].total == pytest.approx(100.3005)


def test_http_address() -> None:
    assert http_address("", "10.0.0.5:9000") == ("10.0.0.5", 0)
    assert http_address("off", "10.0.0.5:9000") is None
    assert http_address("127.0.0.1:8080", "10.0.0.5:9000") == ("127.0.0.1", 8080)
