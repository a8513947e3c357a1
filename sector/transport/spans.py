"""The schedule of a read striped over several holders (issue 15): pure, no I/O, no clock.

A file of ``size`` bytes is cut into one contiguous span per stream; each stream (a
bulk read from one holder) takes a span and writes its bytes in order. A stream that
finishes its span takes more work, as from a queue:

1. a span nobody reads (left by a holder that failed) first, lowest offset first;
2. else it **steals** the back half of the span with the most bytes left, if that is
   at least ``2 * min_split``: the span's end moves back to the cut (``ALIGN``ed) and
   its stream stops there (its writer sees ``claim`` give less, then nothing).

So a faster (nearer) holder's streams end their spans sooner and steal more: the
nearest holder reads the most without anyone measuring rates, and the tail of a
slow holder is taken over. New spans are opened as new streams: on a long link each
costs a connection's start, hence few large spans rather than many small ones.

A stream whose holder fails mid-span hands back only what it had not written
(``failed``): the span's ``[pos, end)`` is pending again, for another holder's stream,
and that holder takes nothing more. ``claim`` is called from a writer thread while
the event loop steals: both under ``lock``.

``allot(rtts, streams)``: how many streams each holder gets, nearest most.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

ALIGN = 1 << 20  # span boundaries fall on MiB multiples (page-aligned writes)
MIN_SPLIT = 8 << 20  # a steal leaves both halves at least this long
_RTT_FLOOR = 0.001  # s: holders closer than this count as equally near


@dataclass(eq=False)
class Span:
    """Bytes ``[start, end)`` of the file; ``[start, pos)`` claimed by its writer."""

    start: int
    end: int
    pos: int
    holder: str | None = None

    @property
    def left(self) -> int:
        return self.end - self.pos


def allot(rtts: Sequence[float | None], streams: int) -> list[int]:
    """Streams per holder (same order): each at least one, ``max(streams, holders)`` in
    all, the rest one by one to the holder with the most weight per stream, weight
    1/RTT (an unknown RTT counts as the farthest known); ties to the earlier."""
    if not rtts:
        return []
    known = [r for r in rtts if r is not None]
    far = max(known, default=_RTT_FLOOR)
    weight = [1.0 / max(_RTT_FLOOR, far if r is None else r) for r in rtts]
    counts = [1] * len(rtts)
    for _ in range(max(streams, len(rtts)) - len(rtts)):
        best = max(range(len(rtts)), key=lambda i: (weight[i] / counts[i], -i))
        counts[best] += 1
    return counts


class Plan:
    """Who reads which bytes of one striped read (see the module's text)."""

    def __init__(
        self,
        size: int,
        holders: Sequence[str],
        spans: int,
        *,
        min_split: int = MIN_SPLIT,
        align: int = ALIGN,
    ) -> None:
        self.size = size
        self.live = list(holders)
        self.dead: list[str] = []
        self.served: dict[str, int] = {h: 0 for h in holders}  # bytes claimed per holder
        self.refetched = 0  # bytes handed back by failed holders
        self.steals = 0
        self.min_split, self.align = max(1, min_split), max(1, align)
        self.lock = threading.Lock()
        step = -(-max(size, 1) // max(1, spans))
        step = -(-step // self.align) * self.align
        self.spans = [Span(o, min(o + step, size), o) for o in range(0, size, step)]

    @property
    def done(self) -> bool:
        return all(s.left == 0 for s in self.spans)

    @property
    def stuck(self) -> bool:
        """Bytes are left and no holder is left to read them."""
        return not self.live and not self.done

    def take(self, holder: str) -> Span | None:
        """The next span for a stream from ``holder``, or None (nothing to take now)."""
        with self.lock:
            if holder not in self.live:
                return None
            free = [s for s in self.spans if s.holder is None and s.left > 0]
            if free:
                span = min(free, key=lambda s: s.start)
                span.holder = holder
                return span
            busy = [s for s in self.spans if s.holder is not None and s.left > 0]
            if not busy:
                return None
            victim = max(busy, key=lambda s: (s.left, -s.start))
            if victim.left < 2 * self.min_split:
                return None
            cut = victim.pos + victim.left // 2
            cut = -(-cut // self.align) * self.align
            if cut - victim.pos < self.min_split or victim.end - cut < self.min_split:
                return None
            span = Span(cut, victim.end, cut, holder)
            victim.end = cut
            self.spans.append(span)
            self.steals += 1
            return span

    def claim(self, span: Span, n: int) -> tuple[int, int]:
        """A writer has ``n`` more bytes of ``span``: ``(offset, k)``, the first ``k`` of
        them to write at ``offset`` (``k < n``: the span was cut short by a steal)."""
        with self.lock:
            k = max(0, min(n, span.left))
            at = span.pos
            span.pos += k
            if span.holder is not None:
                self.served[span.holder] = self.served.get(span.holder, 0) + k
            return at, k

    def failed(self, span: Span | None, holder: str) -> None:
        """``holder``'s stream broke (on ``span``, if it had one): what it did not write
        is pending again, and the holder takes nothing more."""
        with self.lock:
            if holder in self.live:
                self.live.remove(holder)
                self.dead.append(holder)
            if span is not None and span.holder == holder:
                span.holder = None
                self.refetched += span.left

    def stop(self) -> None:
        """The read is abandoned: every writer's next ``claim`` gets nothing."""
        with self.lock:
            for s in self.spans:
                s.end = s.pos

    def claimed(self) -> int:
        """Bytes claimed so far (written, or being written): the read's progress."""
        return sum(s.pos - s.start for s in self.spans)
