"""Requests served, by operation and outcome, with latency histograms (pure counters;
the node's ``/metrics`` turns them into Prometheus families at scrape time).

Labels stay few: an operation the handler table does not know counts as "unknown",
so a stranger sending random names cannot grow the table.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

# Seconds; Prometheus' default buckets stretched to cover bulk transfers.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(slots=True)
class OpLatency:
    buckets: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))  # last: +Inf
    count: int = 0
    total: float = 0.0


class OpStats:
    def __init__(self) -> None:
        self.outcomes: dict[tuple[str, str], int] = {}  # (op, ok|error|bad_request) -> count
        self.latency: dict[str, OpLatency] = {}

    def record(self, op: str, outcome: str, seconds: float) -> None:
        key = (op, outcome)
        self.outcomes[key] = self.outcomes.get(key, 0) + 1
        lat = self.latency.get(op)
        if lat is None:
            lat = self.latency[op] = OpLatency()
        lat.buckets[bisect.bisect_left(BUCKETS, seconds)] += 1
        lat.count += 1
        lat.total += seconds

    def cumulative(self, op: str) -> list[tuple[str, int]]:
        """Prometheus' cumulative ``le`` buckets of ``op``, "+Inf" last."""
        lat = self.latency[op]
        out, run = [], 0
        for le, n in zip([*map(str, BUCKETS), "+Inf"], lat.buckets, strict=True):
            run += n
            out.append((le, run))
        return out
