"""Who gets a connection slot, and how many bytes of input a server holds: the rules
of ``Server`` (``transport/server.py``), pure (no sockets, no clock, no waiting).

**Slots.** A connection is a *stranger* from its first byte until it proves who it
is (a node's certificate in the TLS handshake, a user's credential in ``auth.hello``);
then it is *identified*. Strangers cost nothing to make, so they get a budget of their
own, far smaller than the node's: ``strangers`` slots in all and ``strangers_per_source``
from one address, counted when the TCP connection is accepted, before any TLS
handshake is paid for. When the strangers' slots (or all slots) are taken, a newcomer
does not wait behind them: the oldest stranger of the address holding the most
strangers makes room. A flood from a few addresses thus evicts itself, and a client or
node that is about to prove itself always finds a slot (it is the newest stranger of an
address with one). Identified connections are refused only when they alone fill the
node, or ``per_source`` of them come from one address.

**Input.** A frame's bytes are reserved when its length is known (at its header, before
its body is read) and given back when its request is answered; a reservation waits
while the sender's address has ``per_peer`` bytes reserved, and while identified
connections hold ``node`` bytes (strangers hold ``strangers``: theirs is a share apart,
so neither kind can starve the other). One
frame larger than a budget still goes through when nothing else is reserved against
it, so no legal frame is refused; a frame whose reservation waits is not read at all
(the server stops reading that connection, and TCP holds the sender back). An
identified peer's small frames (``SMALL``: pings, stats, the ring's upkeep) never wait
for the node-wide budget: a hog can slow big requests, not keep a node from its ring.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

__all__ = ["SMALL", "Admission", "InputBudget", "Refused"]

SMALL = 64 << 10  # bytes: a frame this small is not held back by the node-wide budget


class Refused(Exception):
    """No slot for a new connection; the message says which limit was reached."""


@dataclass(slots=True)
class _Conn:
    source: str
    stranger: bool = True


class Admission:
    """The connection slots of one server. Keys are the server's (any hashable)."""

    def __init__(
        self, *, total: int, per_source: int, strangers: int, strangers_per_source: int
    ) -> None:
        self.total = total
        self.per_source = per_source
        self.strangers = min(strangers, total)
        self.strangers_per_source = strangers_per_source
        self._conns: dict[object, _Conn] = {}
        self._by_source: Counter[str] = Counter()
        # Strangers of each address, oldest first (dicts keep insertion order).
        self._strangers: dict[str, dict[object, None]] = {}
        self.n_strangers = 0
        self.refused = 0
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._conns)

    def admit(self, key: object, source: str) -> object | None:
        """Take a slot for a new connection from ``source`` (a stranger until
        ``identified``). Returns the key of a stranger to close to make room, or None;
        raises ``Refused`` if there is no slot."""
        if self._by_source[source] >= self.per_source:
            self.refused += 1
            raise Refused(f"{self.per_source} connections from {source}")
        mine = self._strangers.get(source, {})
        if len(mine) >= self.strangers_per_source:
            self.refused += 1
            raise Refused(f"{self.strangers_per_source} unidentified connections from {source}")
        victim = None
        if self.n_strangers >= self.strangers or len(self._conns) >= self.total:
            victim = self._oldest_of_busiest()
            if victim is None:
                self.refused += 1
                raise Refused(f"all {self.total} connections are identified")
            self.release(victim)
            self.evicted += 1
        self._conns[key] = _Conn(source)
        self._by_source[source] += 1
        self._strangers.setdefault(source, {})[key] = None
        self.n_strangers += 1
        return victim

    def identified(self, key: object) -> None:
        """The connection proved who it is: it leaves the strangers' budget."""
        conn = self._conns.get(key)
        if conn is None or not conn.stranger:
            return
        conn.stranger = False
        self._drop_stranger(key, conn.source)

    def is_stranger(self, key: object) -> bool:
        conn = self._conns.get(key)
        return conn is not None and conn.stranger

    def release(self, key: object) -> None:
        """The connection is gone (a key already released or evicted is ignored)."""
        conn = self._conns.pop(key, None)
        if conn is None:
            return
        self._by_source[conn.source] -= 1
        if self._by_source[conn.source] <= 0:
            del self._by_source[conn.source]
        if conn.stranger:
            self._drop_stranger(key, conn.source)

    def _drop_stranger(self, key: object, source: str) -> None:
        mine = self._strangers[source]
        del mine[key]
        if not mine:
            del self._strangers[source]
        self.n_strangers -= 1

    def _oldest_of_busiest(self) -> object | None:
        if not self._strangers:
            return None
        busiest = max(self._strangers.values(), key=len)
        return next(iter(busiest))

    def counts(self) -> dict[str, int]:
        return {
            "open": len(self._conns),
            "strangers": self.n_strangers,
            "refused": self.refused,
            "evicted": self.evicted,
        }


class InputBudget:
    """Bytes of requests reserved (being read, or read and not yet answered)."""

    def __init__(self, *, per_peer: int, node: int, strangers: int) -> None:
        self.per_peer = per_peer
        self.node = node
        self.strangers = strangers
        self.used: Counter[str] = Counter()
        self.total = 0
        self.by_strangers = 0

    def fits(self, host: str, n: int, stranger: bool) -> bool:
        """Whether ``n`` more bytes from ``host`` may be reserved now."""

        def room(used: int, limit: int) -> bool:
            return used == 0 or used + n <= limit

        if not room(self.used[host], self.per_peer):
            return False
        if stranger:
            return room(self.by_strangers, self.strangers)
        return n <= SMALL or room(self.total - self.by_strangers, self.node)

    def take(self, host: str, n: int, stranger: bool) -> None:
        self.used[host] += n
        self.total += n
        if stranger:
            self.by_strangers += n

    def give_back(self, host: str, n: int, stranger: bool) -> None:
        self.used[host] -= n
        if self.used[host] <= 0:
            del self.used[host]
        self.total -= n
        if stranger:
            self.by_strangers -= n
