"""A node's partition rules (README "Consistency"): quorum, who owns a key by the member
view, whether the ring has converged, the split seen from here, and the saved member
table. The node composes one ``Quorum`` and answers the metadata layer's ``Ring``
questions (``owner_hint``, ``write_refusal``, ``voters``) through it.

The rules themselves are ``members.py``'s (quorum over the members that have not left;
``owner_of`` as the successor among the reachable ones); this module joins them with
the ring's state: a node may write a key only when it has quorum and both its ring and
its member view name it the owner; "converged" means every member in reach and the
ring's successor the one the member view implies. ``split`` reads the cluster's status
from every node's report.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from sector.errors import Timeout
from sector.ids import MASK
from sector.node.members import Member, Members
from sector.routing.chord import ChordState, Peer

log = logging.getLogger("sector.node")

MEMBERS_FILE = "members.json"  # the member table, for a restart (members.py rules)
# A call to a member that timed out is not held against it if its heartbeat advanced
# this recently: under a flood a node answers late, and taking it for gone dropped it
# from the ring and cost the cluster its quorum (a stop-24 CI failure). A partitioned
# member is still down within dead_after; a refused connection (a killed node) at once.
SLOW_GRACE = 2.0


class Quorum:
    def __init__(
        self,
        members: Members,
        state: ChordState,
        responsible_for: Callable[[int], bool],
        data: Path,
    ) -> None:
        self.members = members
        self.state = state
        self.responsible_for = responsible_for
        self.data = data
        self._saved: list[tuple[str, str, str]] = []

    # ------------------------------------------------------------------ ownership

    def owner_hint(self, key: int) -> Peer | None:
        """successor(key) among the members this node reaches (None: no view yet)."""
        found = self.members.owner_of(key, time.monotonic())
        return Peer(int(found[0], 16), found[1]) if found is not None else None

    def voters(self) -> int:
        return len(self.members.voters())

    def view_successors(self, key: int, n: int) -> list[Peer]:
        """successor(key) and the next members after it, as the member view has them:
        who may have served the key while the ring was split."""
        got = self.members.successors_of(key, n, time.monotonic())
        return [Peer(int(i, 16), a) for i, a in got]

    def view_state(self) -> tuple[bool, bool]:
        """(a majority is reachable, the cluster is whole and the ring agrees)."""
        return self.refusal() is None, self.converged()

    def refusal(self) -> str | None:
        """Why this node may not accept writes now (no majority reachable), or None."""
        up, n = self.members.quorum(time.monotonic())
        if 2 * up > n:
            return None
        return (
            f"no quorum: this node reaches {up} of {n} members and writes need "
            f"{n // 2 + 1} (a network partition?)"
        )

    def write_refusal(self, key: int) -> str | None:
        """Why this node may not write key now, or None (meta.service module rules)."""
        refusal = self.refusal()
        if refusal is not None:
            return refusal
        if not self.responsible_for(key):
            return "this node does not own it (the ring is converging)"
        hint = self.owner_hint(key)
        if hint is not None and hint.id != self.state.me.id:
            return f"the members name {hint.addr} as its owner (the ring is converging)"
        return None

    def suspect(self, member_id: str, addr: str, exc: BaseException | None = None) -> bool:
        """A call to ``member_id`` at ``addr`` failed with ``exc``: mark it down until it
        beats again, unless the failure was a timeout and it was heard from within
        ``SLOW_GRACE``. True if the failure counts (the caller drops the address from
        its tables too); False if the member is only slow."""
        now = time.monotonic()
        if isinstance(exc, Timeout) and self.members.heard_within(member_id, SLOW_GRACE, now):
            log.debug("%s at %s is slow, not gone: %s", member_id[:8], addr, exc)
            return False
        if self.members.suspect(member_id, addr):
            log.info("suspecting %s at %s down: %s", member_id[:8], addr, exc or "failed")
        return True

    def converged(self) -> bool:
        """Every voter reachable and the ring's successor the one the member view implies."""
        up, n = self.members.quorum(time.monotonic())
        if up < n:
            return False
        me = self.state.me
        succ = self.owner_hint((me.id + 1) & MASK)
        if succ is not None and succ.id != self.state.successor.id:
            return False
        return self.state.predecessor is not None or self.state.successor.id == me.id

    def probe_targets(self) -> list[Peer]:
        """Members the ring's merge probe may look through (all but those that left)."""
        return [Peer(int(m.id, 16), m.addr) for m in self.members.voters()]

    def view(self) -> dict[str, Any]:
        """This node's view of a split: whom it reaches, quorum, whether the ring agrees."""
        now = time.monotonic()
        up, n = self.members.quorum(now)
        expected = self.owner_hint((self.state.me.id + 1) & MASK)
        return {
            "reachable": up,
            "members": n,
            "quorum": 2 * up > n,
            "unreachable": sorted(
                m.addr
                for m in self.members.voters()
                if m.id != self.members.me_id and self.members.state_of(m, now) == "down"
            ),
            # The successor the ring uses, and the one the member view implies: two
            # rings after a partition, until the merge probes join them, differ here.
            "successor": self.state.successor.addr,
            "expected_successor": expected.addr if expected is not None else None,
            "converged": self.converged(),
        }

    # ------------------------------------------------------------------ the saved table

    def load(self) -> None:
        """Take in the member table an earlier run saved (its entries start "down")."""
        try:
            raw = (self.data / MEMBERS_FILE).read_bytes()
            self.members.load(msgspec.json.decode(raw, type=list[Member]), time.monotonic())
        except FileNotFoundError:
            pass
        except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("ignoring unreadable %s: %s", MEMBERS_FILE, exc)
        self._saved = self._roll()

    def _roll(self) -> list[tuple[str, str, str]]:
        return sorted((m.id, m.addr, m.state) for m in self.members.entries())

    def save(self) -> None:
        """Write the member table when its roll (ids, addresses, states) changed."""
        roll = self._roll()
        if roll == self._saved:
            return
        tmp = self.data / (MEMBERS_FILE + ".tmp")
        try:
            tmp.write_bytes(msgspec.json.encode(self.members.entries()))
            os.replace(tmp, self.data / MEMBERS_FILE)
        except OSError as exc:
            log.warning("cannot save %s: %s", MEMBERS_FILE, exc)
            return
        self._saved = roll
