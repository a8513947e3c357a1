"""What a file needs to get back to its replica target (pure policy: no I/O, no clock).

Rules
-----
1. A replica is *good* when its node is up (as the deciding node sees it) and nobody
   reported its copy bad; *dead* when its node is down, has left, or is unknown; *bad*
   when reported (by a failed read or, later, the scrubber), up or not.
2. A file needs ``rf - good`` new copies. New targets come from ``placement.choose``
   with the good holders as the existing copies (so the spread rules hold for the
   repaired set), never on a node that is already listed for the file: a dead node may
   come back with its copy, and a bad copy's node would refuse the same blob id
   (blobs are write-once). 2b: only when no other node can take one, a bad copy is
   re-made on its own node (the write replaces bytes that fail the checksum).
3. The record never names fewer good copies than before a repair. Dead and bad
   replicas are dropped only once the good ones reach ``rf``: until then a dead node
   may still return with its copy, and a "bad" report is not proof (a bad copy is the
   last resort of a file that has no other).
4. More good copies than ``rf``: keep the ``rf`` that placement would pick among them
   (spread first, then the rendezvous rank of the blob: every owner decides the same),
   trim the rest. The record is updated first and the copies deleted after, so a crash
   in between leaves an orphan (collected later), never a record naming a lost copy.
5. A copy on a *draining* node is *moving*: a valid source for new copies (its node is
   up and its bytes are good) but not counted toward ``rf``, and never a target. Once
   the good copies reach ``rf`` the moving ones are dropped and deleted, which is how a
   drain empties a node; until then they stay listed (rule 3: never fewer copies).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, field

from sector.storage import placement
from sector.storage.placement import Candidate

__all__ = ["Plan", "after_copy", "plan", "targets"]

Replica = tuple[str, str]  # (node id hex, address)


@dataclass(frozen=True, slots=True)
class Plan:
    """The state of one file's copies and what to do about it."""

    rf: int
    good: list[Replica]  # up and not reported bad, in record order
    dead: list[Replica] = field(default_factory=list)
    bad: list[Replica] = field(default_factory=list)
    moving: list[Replica] = field(default_factory=list)  # on draining nodes (rule 5)
    need: int = 0  # new copies to make
    trim: list[Replica] = field(default_factory=list)  # good copies beyond rf

    @property
    def ok(self) -> bool:
        """Nothing to do: rf good copies, nothing dead, bad, moving or extra listed."""
        return not (self.need or self.dead or self.bad or self.moving or self.trim)

    @property
    def sources(self) -> list[Replica]:
        """Copies a repair may read from: the good ones, then the moving ones."""
        return self.good + self.moving

    def keep(self) -> list[Replica]:
        """The replica list after trimming (and dropping what rule 3 allows)."""
        trimmed = [r for r in self.good if r not in self.trim]
        if len(trimmed) >= self.rf:
            return trimmed
        return trimmed + self.moving + self.dead + self.bad


def plan(
    replicas: Sequence[Replica],
    rf: int,
    live: Mapping[str, Candidate],
    *,
    bad: Set[str] = frozenset(),
    draining: Set[str] = frozenset(),
    seed: str = "",
) -> Plan:
    """Classify a file's replicas (rule 1) and decide copies (rule 2) and trims (rule 4).

    ``live``: the members that are up, by node id, with their current address (a node
    restarted on another port is still the same node). ``bad``: node ids whose copy
    was reported bad. ``draining``: node ids being drained (rule 5); they are in
    ``live`` too, since they still serve their copies.
    """
    good: list[Replica] = []
    dead: list[Replica] = []
    bad_reps: list[Replica] = []
    moving: list[Replica] = []
    seen: set[str] = set()
    for nid, addr in replicas:
        if nid in seen:
            continue
        seen.add(nid)
        if nid in bad:
            bad_reps.append((nid, live[nid].addr if nid in live else addr))
        elif nid in live and nid in draining:
            moving.append((nid, live[nid].addr))
        elif nid in live:
            good.append((nid, live[nid].addr))
        else:
            dead.append((nid, addr))
    trim: list[Replica] = []
    if len(good) > rf:
        chosen = placement.choose([live[nid] for nid, _ in good], rf, size=0, seed=seed)
        kept = {c.node_id for c in chosen}
        trim = [r for r in good if r[0] not in kept]
    return Plan(
        rf=rf,
        good=good,
        dead=dead,
        bad=bad_reps,
        moving=moving,
        need=max(0, rf - len(good)),
        trim=trim,
    )


def targets(
    p: Plan,
    replicas: Sequence[Replica],
    live: Mapping[str, Candidate],
    *,
    size: int,
    seed: str,
    min_free: int = 0,
    draining: Set[str] = frozenset(),
) -> list[Candidate]:
    """New nodes for the ``p.need`` missing copies (rules 2 and 5); fewer if none fit."""
    if p.need <= 0:
        return []
    listed = {nid for nid, _ in replicas}
    cands = [c for nid, c in live.items() if nid not in listed and nid not in draining]
    existing = [live[nid] for nid, _ in p.good]
    out = placement.choose(cands, p.rf, size=size, existing=existing, seed=seed, min_free=min_free)
    if len(out) < p.need:
        # Rule 2b: no unlisted node can take a copy (a 3-node cluster at rf 3): re-make
        # a bad copy in place. Its node accepts the blob id again because the bytes
        # match the record's checksum (``BlobWriter.commit`` replaces a rotten copy).
        again = [live[nid] for nid, _ in p.bad if nid in live and nid not in draining]
        out += placement.choose(
            again, p.rf, size=size, existing=existing + out, seed=seed, min_free=min_free
        )
    return out


def after_copy(p: Plan, stored: Sequence[Replica]) -> tuple[list[Replica], list[Replica]]:
    """The new replica list once ``stored`` copies were made, and copies to delete.

    Only bad and moving copies are deleted here (dead nodes cannot be reached; their
    copies are orphans for the collector). Rule 3: nothing is dropped while good
    copies < rf.
    """
    have = {nid for nid, _ in p.good}
    new = [r for r in stored if r[0] not in have]
    good = p.good + new
    if len(good) >= p.rf:
        return good, list(p.bad) + list(p.moving)
    return good + p.moving + p.dead + p.bad, []
