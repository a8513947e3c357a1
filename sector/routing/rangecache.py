"""A cache of which node owns which arc of the ring (pure).

Every reply from a key's owner carries the arc it owns, ``(predecessor, owner]``.
Keeping those arcs turns most lookups into zero hops: a client or an entry node
sends the request straight to the owner and only falls back to a Chord lookup on a
miss or after a failure (``forget``). A stale entry costs one forwarding hop at most,
because an owner that no longer owns a key routes the request on.
"""

from __future__ import annotations

import bisect

from sector.ids import between_right


class RangeCache:
    def __init__(self, max_entries: int = 4096) -> None:
        self.max_entries = max_entries
        self._ids: list[int] = []  # sorted owner ids
        self._arcs: dict[int, tuple[int | None, str]] = {}  # owner id -> (predecessor id, addr)

    def learn(self, owner: int, addr: str, pred: int | None) -> None:
        if owner not in self._arcs:
            if len(self._ids) >= self.max_entries:
                self.clear()
            bisect.insort(self._ids, owner)
        self._arcs[owner] = (pred, addr)

    def find(self, key: int) -> tuple[int, str] | None:
        """(owner id, addr) if a cached arc covers key."""
        if not self._ids:
            return None
        i = bisect.bisect_left(self._ids, key)
        owner = self._ids[i % len(self._ids)]
        pred, addr = self._arcs[owner]
        if pred is None or between_right(key, pred, owner):
            return owner, addr
        return None

    def forget(self, owner: int) -> None:
        if owner in self._arcs:
            del self._arcs[owner]
            self._ids.remove(owner)

    def forget_addr(self, addr: str) -> None:
        for owner, (_, a) in list(self._arcs.items()):
            if a == addr:
                self.forget(owner)

    def clear(self) -> None:
        self._ids.clear()
        self._arcs.clear()
