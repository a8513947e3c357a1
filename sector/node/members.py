"""Cluster membership by gossip (pure: ``now`` is passed in).

Chord only gives each node its neighbours; placement, status and clients need the
whole list of nodes with their topology and free space. Each node keeps a table of
``Member`` entries and, every gossip interval, swaps the table with one random peer
(push-pull anti-entropy, as in Demers et al. 1987): a change reaches every node in
O(log N) rounds with one message per node per round.

Rules:
- an entry is owned by its node: only that node bumps its heartbeat ``hb``; a
  restarted node starts a new ``incarnation`` (a counter persisted in its data
  directory), which beats any hb of an older incarnation; a node that hears of an
  entry of its own with an incarnation as high as its own re-announces above it;
- an entry replaces ours only if (incarnation, hb) is newer; we note *when* we last
  saw it advance, by our own clock, so clocks of different hosts never compare;
- a member whose heartbeat has not advanced for ``dead_after`` seconds is "down";
  one that announced a graceful leave is "left"; after ``forget_after`` it is dropped;
- a member that announced "draining" (``sector node drain``) is "draining" while its
  heartbeat advances and "down" when it stops, like an "up" one: it still serves
  reads, metadata and gossip, but takes no new replicas (``alive`` leaves it out,
  ``reachable`` keeps it);
- ``suspect(id)`` (a failed RPC, Chord dropping a successor) marks a member down at
  once, until a newer heartbeat proves it alive. A call that only timed out is not
  held against a member heard from within a grace (``heard_within``, the node's
  ``quorum.py``): an overloaded peer is slow, not gone.

Quorum and ownership (the partition rules, see README "Consistency"):
- the *voters* are the members that have not left (up, draining or down): a member
  seen down is still one of the cluster, possibly alive on the far side of a
  partition. Only a graceful leave, or ``forget_down_after`` (a day) without a word,
  takes a member off the roll;
- this node *has quorum* while it reaches (itself included) a strict majority of the
  voters. Two sides of a partition can never both have it, so at most one side
  accepts writes;
- ``owner_of(key)`` is the successor of key among the members this node reaches: what
  the ring must also say once it has converged. A node writes a key only when the
  ring and this view agree that it owns it;
- the table is saved in the data directory (``load``): a restarted node knows its
  cluster before it hears from anyone, so alone it has no quorum, and it knows whom
  to look for to merge its ring back (every loaded entry starts "down").
"""

from __future__ import annotations

import bisect

import msgspec

from sector.wire.messages import Request


class Member(msgspec.Struct, frozen=True):
    id: str
    addr: str
    host: str
    topology: str
    pid: int
    incarnation: int
    hb: int
    state: str = "up"  # "up" | "draining" | "leaving" | "left"
    used: int = 0
    free: int = 0
    files: int = 0
    data: str = ""


def members_from_wire(obj: object) -> list[Member]:
    """Validated entries from a gossip message (raises ValueError on bad input)."""
    try:
        return msgspec.convert(obj, list[Member])
    except msgspec.ValidationError as exc:
        raise ValueError(f"bad membership entries: {exc}") from None


# The requests of node.gossip and node.drain (served by ``server.py``).


class Gossip(Request, frozen=True):
    """node.gossip: the sender's member table, to merge (the reply is ours)."""

    op = "node.gossip"
    entries: list[Member]


class Drain(Request, frozen=True):
    """node.drain: start draining this node, or stop (``cancel``)."""

    op = "node.drain"
    cancel: bool = False


class Members:
    def __init__(
        self,
        me: Member,
        *,
        dead_after: float = 4.0,
        forget_after: float = 600.0,
        forget_down_after: float = 86400.0,
    ) -> None:
        self.me_id = me.id
        self.dead_after = dead_after
        self.forget_after = forget_after
        self.forget_down_after = forget_down_after
        # (when computed, sorted ids, entries) of the reachable members: owner_of.
        self._owners: tuple[float, list[int], list[tuple[str, str]]] | None = None
        self._table: dict[str, Member] = {me.id: me}
        self._seen: dict[str, float] = {}
        # id -> (incarnation, hb) at the time of suspicion: a newer heartbeat, or any
        # heartbeat of a newer incarnation (a restart), proves the member alive.
        self._suspect: dict[str, tuple[int, int]] = {}

    @property
    def me(self) -> Member:
        return self._table[self.me_id]

    def update_self(self, now: float, **changes: object) -> Member:
        """Bump our heartbeat (and apply changes such as free space or state)."""
        me = msgspec.structs.replace(self.me, hb=self.me.hb + 1, **changes)
        self._table[self.me_id] = me
        self._seen[self.me_id] = now
        return me

    def merge(self, entries: list[Member], now: float) -> bool:
        changed = False
        for e in entries:
            if e.id == self.me_id:
                me = self.me
                if e.incarnation >= me.incarnation:
                    # Someone holds a newer-looking entry of ours (a stale or forged
                    # one): re-announce above it, or we would look dead for ever.
                    self._table[self.me_id] = msgspec.structs.replace(
                        me, incarnation=e.incarnation + 1, hb=0
                    )
                continue
            cur = self._table.get(e.id)
            if cur is None or (e.incarnation, e.hb) > (cur.incarnation, cur.hb):
                self._table[e.id] = e
                self._seen[e.id] = now
                if e.id in self._suspect and (e.incarnation, e.hb) > self._suspect[e.id]:
                    del self._suspect[e.id]
                changed = changed or cur is None or cur.addr != e.addr or cur.state != e.state
        if changed:
            self._owners = None
        return changed

    def suspect(self, member_id: str, addr: str | None = None) -> bool:
        """Down until it beats again; with ``addr``, only if that is still its address
        (a call to the address it had before a restart says nothing of it now). True
        if it was not suspected before."""
        m = self._table.get(member_id)
        if m is None or member_id == self.me_id or addr not in (None, m.addr):
            return False
        new = member_id not in self._suspect
        self._suspect[member_id] = (m.incarnation, m.hb)
        self._owners = None
        return new

    def heard_within(self, member_id: str, seconds: float, now: float) -> bool:
        """Its heartbeat advanced within ``seconds`` (by our clock) and no failure has
        been held against it since: alive, whatever one slow call says."""
        seen = self._seen.get(member_id)
        return member_id not in self._suspect and seen is not None and now - seen <= seconds

    def load(self, entries: list[Member], now: float) -> None:
        """Entries saved by an earlier run: known, but down until they prove alive."""
        for e in entries:
            if e.id == self.me_id or e.id in self._table or e.state == "left":
                continue
            self._table[e.id] = e
            self._seen[e.id] = now
            self._suspect[e.id] = (e.incarnation, e.hb)
        self._owners = None

    # -- quorum and ownership -------------------------------------------------------

    def voters(self) -> list[Member]:
        """Members that count for a majority: all but those that left."""
        return [m for m in self._table.values() if m.state not in ("leaving", "left")]

    def quorum(self, now: float) -> tuple[int, int]:
        """(voters this node reaches, itself included; voters)."""
        voters = self.voters()
        up = sum(
            1 for m in voters if m.id == self.me_id or self.state_of(m, now) in ("up", "draining")
        )
        return up, len(voters)

    def has_quorum(self, now: float) -> bool:
        up, n = self.quorum(now)
        return 2 * up > n

    def owner_of(self, key: int, now: float) -> tuple[str, str] | None:
        """(id, address) of successor(key) among the members this node reaches."""
        got = self.successors_of(key, 1, now)
        return got[0] if got else None

    def successors_of(self, key: int, n: int, now: float) -> list[tuple[str, str]]:
        """(id, address) of the first ``n`` members at or after ``key`` on the ring,
        among those this node reaches: the key's owner and its successors as the
        member view has them."""
        cached = self._owners
        if cached is None or now - cached[0] > 0.25:
            live = sorted(
                (int(m.id, 16), (m.id, m.addr))
                for m in self._table.values()
                if m.id == self.me_id or self.state_of(m, now) in ("up", "draining")
            )
            cached = self._owners = (now, [i for i, _ in live], [e for _, e in live])
        ids, addrs = cached[1], cached[2]
        i = bisect.bisect_left(ids, key)
        return [addrs[(i + j) % len(ids)] for j in range(min(n, len(ids)))]

    def state_of(self, m: Member, now: float) -> str:
        if m.id == self.me_id:
            return m.state
        if m.state not in ("up", "draining"):
            return m.state
        if m.id in self._suspect:
            return "down"
        if now - self._seen.get(m.id, now) > self.dead_after:
            return "down"
        return m.state

    def entries(self) -> list[Member]:
        return list(self._table.values())

    def get(self, member_id: str) -> Member | None:
        return self._table.get(member_id)

    def by_addr(self, addr: str) -> Member | None:
        for m in self._table.values():
            if m.addr == addr:
                return m
        return None

    def alive(self, now: float) -> list[Member]:
        """Members that are up and take new replicas."""
        return [m for m in self._table.values() if self.state_of(m, now) == "up"]

    def reachable(self, now: float) -> list[Member]:
        """Members that answer: the alive ones and the draining ones."""
        return [m for m in self._table.values() if self.state_of(m, now) in ("up", "draining")]

    def view(self, now: float) -> list[tuple[Member, str]]:
        """Every known member with its state as seen from here, sorted by address."""
        return sorted(
            ((m, self.state_of(m, now)) for m in self._table.values()), key=lambda x: x[0].addr
        )

    def expire(self, now: float) -> None:
        for mid, seen in list(self._seen.items()):
            m = self._table.get(mid)
            left = m is not None and m.state in ("leaving", "left")
            limit = self.forget_after if left else self.forget_down_after
            if mid != self.me_id and now - seen > limit:
                self._table.pop(mid, None)
                self._seen.pop(mid, None)
                self._suspect.pop(mid, None)
