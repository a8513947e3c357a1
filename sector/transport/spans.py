"""The schedule of a read striped over several holders (issue 15): pure, no I/O, no clock.

A file of ``size`` bytes is read as a queue of *chunks*; each stream (a bulk read from
one holder, kept open from chunk to chunk) takes the next chunk when it has fewer than
two asked for, so it asks for the next before the current one has arrived and its
holder sends without a pause. A chunk is a share of what is left, not a fixed size
(guided self-scheduling): ``left / (2 * streams)``, between ``min_chunk`` and
``max_chunk``, on ``align`` boundaries. So the first chunks are large (few requests)
and the last small, and the streams end together: no stream sits idle at the end
while another still has a long span to read, and none is cut short, since every
chunk asked for is read whole.

So a faster (nearer) holder's streams come back for more sooner and read the most
without anyone measuring rates. Keeping a stream open keeps its congestion window: on
a long link a new connection would start again from slow start (the earlier design
cut a slow stream's span in half and opened a new stream for the back half; on a
200 ms link each such start cost about a second of the link).

A stream whose holder fails hands back what it had not written (``failed``): the
rest of its current chunk and the chunks it had asked for are pending again, for
another holder's stream (lowest offset first), and that holder takes nothing more.
``claim`` is called from a writer thread while the event loop takes: both under
``lock``.

``allot(rtts, streams)``: how many streams each holder gets, nearest most.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

ALIGN = 1 << 20  # chunk boundaries fall on MiB multiples (page-aligned writes)
MIN_CHUNK = 8 << 20  # the least a chunk holds (the last one may hold less)
MAX_CHUNK = 256 << 20
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
        streams: int,
        *,
        min_chunk: int = MIN_CHUNK,
        max_chunk: int = MAX_CHUNK,
        align: int = ALIGN,
    ) -> None:
        self.size = size
        self.streams = max(1, streams)
        self.live = list(holders)
        self.dead: list[str] = []
        self.served: dict[str, int] = {h: 0 for h in holders}  # bytes claimed per holder
        self.refetched = 0  # bytes handed back by failed holders
        self.align = max(1, align)
        self.min_chunk = max(self.align, min_chunk)
        self.max_chunk = max(self.min_chunk, max_chunk)
        self.lock = threading.Lock()
        self.next = 0  # bytes from here on are in no chunk yet
        self.spans: list[Span] = []

    @property
    def done(self) -> bool:
        return self.next >= self.size and all(s.left == 0 for s in self.spans)

    @property
    def stuck(self) -> bool:
        """Bytes are left and no holder is left to read them."""
        return not self.live and not self.done

    def chunk_len(self, left: int) -> int:
        """The next chunk's length when ``left`` bytes are in no chunk yet."""
        want = -(-left // (2 * self.streams))
        want = -(-want // self.align) * self.align
        return min(left, max(self.min_chunk, min(self.max_chunk, want)))

    def take(self, holder: str) -> Span | None:
        """The next chunk for a stream from ``holder``, or None (nothing to take now)."""
        with self.lock:
            if holder not in self.live:
                return None
            free = [s for s in self.spans if s.holder is None and s.left > 0]
            if free:  # handed back by a failed holder
                span = min(free, key=lambda s: s.pos)
                span.holder = holder
                return span
            if self.next >= self.size:
                return None
            n = self.chunk_len(self.size - self.next)
            span = Span(self.next, self.next + n, self.next, holder)
            self.next += n
            self.spans.append(span)
            return span

    def claim(self, span: Span, n: int) -> tuple[int, int]:
        """A writer has ``n`` more bytes of ``span``: ``(offset, k)``, the first ``k`` of
        them to write at ``offset`` (``k < n``: the read was stopped)."""
        with self.lock:
            k = max(0, min(n, span.left))
            at = span.pos
            span.pos += k
            if span.holder is not None:
                self.served[span.holder] = self.served.get(span.holder, 0) + k
            return at, k

    def failed(self, spans: Sequence[Span], holder: str) -> None:
        """``holder``'s stream broke (with ``spans`` asked for and not all written):
        what it did not write is pending again, and the holder takes nothing more."""
        with self.lock:
            if holder in self.live:
                self.live.remove(holder)
                self.dead.append(holder)
            for span in spans:
                if span.holder == holder:
                    span.holder = None
                    self.refetched += span.left

    def stop(self) -> None:
        """The read is abandoned: every writer's next ``claim`` gets nothing."""
        with self.lock:
            self.next = self.size
            for s in self.spans:
                s.end = s.pos

    def claimed(self) -> int:
        """Bytes claimed so far (written, or being written): the read's progress."""
        return sum(s.pos - s.start for s in self.spans)
