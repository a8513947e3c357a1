"""An iterative Chord lookup as a pure object (Chord §4.3, §5.2; no I/O).

The origin drives it: it asks ``next_peer`` for its ``next_hop(key, exclude)`` and feeds
the answer to ``on_reply``, or reports ``on_failure`` if the peer did not answer, until
``done``. Iterative rather than recursive lookups (the origin talks to every hop itself)
because the origin then sees every failure, can route around it and can bound the
work; a recursive lookup hides a dead hop inside someone else's timeout.

Failure handling: the dead peer goes into ``exclude`` (sent along with every later
query, so no hop routes to it again) and the lookup backs up to the previous hop and
asks it again. With no previous hop it needs the origin's own routing table again:
``next_peer`` becomes None and the caller passes ``state.next_hop(key, exclude)`` to
``restart``. Every answer must make progress (the next hop lies strictly between the
asked peer and the key, rule 2 of ``chord.py``); an answer that does not is treated like
a failure of the peer that gave it, so a confused or lying node cannot make a lookup
loop. ``max_hops`` bounds the work in any case; running out leaves ``result`` None.

Hop count: every remote query made, answered or not (a dead peer costs a timeout,
which is what a user waits for).
"""

from __future__ import annotations

from sector.ids import MASK, between
from sector.routing.chord import Peer

__all__ = ["Lookup"]


class Lookup:
    """State of one iterative lookup for ``key``."""

    __slots__ = ("_path", "done", "exclude", "hops", "key", "max_hops", "next_peer", "result")

    def __init__(self, key: int, first: tuple[bool, Peer], *, max_hops: int = 64) -> None:
        self.key = key & MASK
        self.max_hops = max_hops
        self.hops = 0
        self.exclude: frozenset[int] = frozenset()
        self.done = False
        self.result: Peer | None = None
        self.next_peer: Peer | None = None
        # Peers that answered with a further hop, most recent last: where to back up to.
        self._path: list[Peer] = []
        self._take(*first)

    def __repr__(self) -> str:
        state = f"result={self.result}" if self.done else f"next={self.next_peer}"
        return f"<Lookup key={self.key:040x} hops={self.hops} {state}>"

    @property
    def failed(self) -> bool:
        """Finished without an answer (hop budget exhausted)."""
        return self.done and self.result is None

    @property
    def needs_origin(self) -> bool:
        """The caller must consult its own table again: call ``restart``."""
        return not self.done and self.next_peer is None

    def on_reply(self, done: bool, peer: Peer) -> None:
        """The answer of ``next_peer`` to next_hop(key, exclude)."""
        asked = self._asked()
        self.hops += 1
        if not done and (peer.id in self.exclude or not between(peer.id, asked.id, self.key)):
            # No progress: asked pointed backwards, at itself or at a known-dead peer.
            self._back_up(asked)
        else:
            self._path.append(asked)
            self._take(done, peer)
        self._check_budget()

    def on_failure(self, peer: Peer) -> None:
        """``next_peer`` (== peer) did not answer.

        Also accepted after ``done`` for the ``result`` itself: the caller found the
        answer dead (hops that have not yet noticed a crash still name it), so the
        lookup reopens, excludes it and asks the hop that named it again, which then
        answers with the next live successor.
        """
        if self.done and self.result is not None and peer.id == self.result.id:
            self.done, self.result = False, None
            bad = peer
        else:
            bad = self._asked()
            if peer.id != bad.id:
                raise ValueError(f"failure of {peer}, but the lookup was waiting on {bad}")
        self.hops += 1
        self._back_up(bad)
        self._check_budget()

    def restart(self, first: tuple[bool, Peer]) -> None:
        """Continue from the origin's own answer, ``state.next_hop(key, exclude)``."""
        if not self.needs_origin:
            raise RuntimeError("restart() is only for a lookup that needs_origin")
        self._take(*first)

    def _asked(self) -> Peer:
        if self.done or self.next_peer is None:
            raise RuntimeError("this lookup is not waiting on a peer")
        return self.next_peer

    def _take(self, done: bool, peer: Peer) -> None:
        if done:
            self.done, self.result, self.next_peer = True, peer, None
        else:
            self.next_peer = peer

    def _back_up(self, bad: Peer) -> None:
        self.exclude = self.exclude | {bad.id}
        # Back up past hops that are themselves excluded by now (a peer can be on the
        # path twice after earlier back-ups).
        while self._path and self._path[-1].id in self.exclude:
            self._path.pop()
        self.next_peer = self._path.pop() if self._path else None

    def _check_budget(self) -> None:
        if not self.done and self.hops >= self.max_hops:
            self.done, self.result, self.next_peer = True, None, None
