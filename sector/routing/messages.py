"""The ring's five RPC messages: wire shapes, validation, and how a node answers each.

Owns the ``chord.*`` ops. Each message is a frozen dataclass with its op name, whether
serving it changes the receiver's state (``mutates``), its arguments as ``to_wire``/``from_wire`` (what travels, declared as msgspec structs; ``from_wire`` raises BadRequest on
anything malformed: every node validates every message), ``serve`` (the answer, from a
``ChordState``: the one place the server side of the protocol lives) and the reply as
``reply_to_wire``/``parse_reply`` (``parse_reply`` raises ValueError on a malformed
reply). Ids travel as 40-digit hex, peers as ``[id_hex, addr]``:

    chord.next_hop  {key, exclude: [id]}        -> [done, peer]
    chord.state     {}                          -> {me, pred, successors}
    chord.notify    {peer}                      -> adopted: bool
    chord.ping      {}                          -> me
    chord.leaving   {peer, pred, successors}    -> None

These shapes are the protocol between nodes of different versions: never change one.

The steps (``steps.py``) speak in these objects and in typed replies (the value of
``serve``), never in wire form: the asyncio driver converts at its edge, and the
simulator (``sector.testing.chordsim``) calls ``serve`` on the target's state directly,
which is what lets it run 100,000 nodes in one process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, NamedTuple

import msgspec

from sector.errors import BadRequest
from sector.ids import to_hex
from sector.routing.chord import ChordState, Peer, parse_id
from sector.wire.messages import Request, decode

__all__ = [
    "MAX_EXCLUDE",
    "MESSAGES",
    "GetState",
    "Leaving",
    "Message",
    "NextHop",
    "NodeState",
    "Notify",
    "Ping",
]

# A lookup may carry this many excluded ids (and a reply this many successors); more is
# a malformed (or hostile) message.
MAX_EXCLUDE = 256

# -- the requests as they travel, decoded by msgspec (BadRequest naming the field) ----
# Ids and peers are then parsed into the domain's ints and ``Peer``s (their hex and
# address rules are ``chord.parse_id`` and ``Peer.from_wire``).

WirePeer = tuple[str, str]  # [id_hex, addr]


class NextHopArgs(Request, frozen=True):
    """chord.next_hop: the key looked up and the ids the lookup already found dead."""

    op: ClassVar[str] = "chord.next_hop"
    key: str
    exclude: Annotated[list[str], msgspec.Meta(max_length=MAX_EXCLUDE)] = []


class NotifyArgs(Request, frozen=True):
    """chord.notify: a peer that thinks it may be our predecessor."""

    op: ClassVar[str] = "chord.notify"
    peer: WirePeer


class LeavingArgs(Request, frozen=True):
    """chord.leaving: a peer leaving, with its predecessor and successors."""

    op: ClassVar[str] = "chord.leaving"
    peer: WirePeer
    pred: WirePeer | None = None
    successors: Annotated[list[WirePeer], msgspec.Meta(max_length=MAX_EXCLUDE)] = []


class NodeState(NamedTuple):
    """The reply to chord.state: who answered, its predecessor and successor list.

    ``me`` is None only from a node too old to say who it is."""

    me: Peer | None
    pred: Peer | None
    successors: list[Peer]


@dataclass(frozen=True, slots=True)
class NextHop:
    """One step of an iterative lookup: ``ChordState.next_hop(key, exclude)``."""

    op: ClassVar[str] = "chord.next_hop"
    mutates: ClassVar[bool] = False
    key: int
    exclude: frozenset[int] = frozenset()

    def to_wire(self) -> dict[str, Any]:
        return {"key": to_hex(self.key), "exclude": [to_hex(x) for x in self.exclude]}

    @classmethod
    def from_wire(cls, args: dict[str, Any]) -> NextHop:
        a = decode(NextHopArgs, args)
        return cls(_parse_id(a.key, "key"), frozenset(_parse_id(x, "exclude") for x in a.exclude))

    def serve(self, st: ChordState) -> tuple[bool, Peer]:
        return st.next_hop(self.key, self.exclude)

    @staticmethod
    def reply_to_wire(reply: tuple[bool, Peer]) -> list[Any]:
        return [reply[0], reply[1].to_wire()]

    @staticmethod
    def parse_reply(raw: Any) -> tuple[bool, Peer]:
        if not isinstance(raw, list | tuple) or len(raw) != 2 or not isinstance(raw[0], bool):
            raise ValueError(f"malformed next_hop reply {raw!r:.80}")
        return raw[0], Peer.from_wire(raw[1])


@dataclass(frozen=True, slots=True)
class GetState:
    """Stabilization's question to a successor: its predecessor and successor list."""

    op: ClassVar[str] = "chord.state"
    mutates: ClassVar[bool] = False

    def to_wire(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_wire(cls, args: dict[str, Any]) -> GetState:
        return cls()

    def serve(self, st: ChordState) -> NodeState:
        return NodeState(st.me, st.predecessor, list(st.successors))

    @staticmethod
    def reply_to_wire(reply: NodeState) -> dict[str, Any]:
        return {
            "me": reply.me.to_wire() if reply.me else None,
            "pred": reply.pred.to_wire() if reply.pred else None,
            "successors": [p.to_wire() for p in reply.successors],
        }

    @staticmethod
    def parse_reply(raw: Any) -> NodeState:
        if not isinstance(raw, dict) or not isinstance(raw.get("successors"), list):
            raise ValueError(f"malformed chord.state reply {raw!r:.80}")
        who = raw.get("me")
        pred = raw.get("pred")
        return NodeState(
            Peer.from_wire(who) if who is not None else None,
            Peer.from_wire(pred) if pred is not None else None,
            [Peer.from_wire(p) for p in raw["successors"][:MAX_EXCLUDE]],
        )


@dataclass(frozen=True, slots=True)
class Notify:
    """``peer`` thinks it may be our predecessor (Chord §5.1)."""

    op: ClassVar[str] = "chord.notify"
    mutates: ClassVar[bool] = True
    peer: Peer

    def to_wire(self) -> dict[str, Any]:
        return {"peer": self.peer.to_wire()}

    @classmethod
    def from_wire(cls, args: dict[str, Any]) -> Notify:
        return cls(_peer(decode(NotifyArgs, args).peer, "peer"))

    def serve(self, st: ChordState) -> bool:
        return st.notify(self.peer)

    @staticmethod
    def reply_to_wire(reply: bool) -> bool:
        return reply

    @staticmethod
    def parse_reply(raw: Any) -> bool:
        return raw is True  # nobody acts on it: any answer means "heard"


@dataclass(frozen=True, slots=True)
class Ping:
    """Are you there, and who are you?"""

    op: ClassVar[str] = "chord.ping"
    mutates: ClassVar[bool] = False

    def to_wire(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_wire(cls, args: dict[str, Any]) -> Ping:
        return cls()

    def serve(self, st: ChordState) -> Peer:
        return st.me

    @staticmethod
    def reply_to_wire(reply: Peer) -> list[Any]:
        return reply.to_wire()

    @staticmethod
    def parse_reply(raw: Any) -> Peer | None:
        # Lenient: None says the answer did not name a peer. Who minds checks the id:
        # the ping that proves a known peer alive (a reused port answers with another
        # id, or none), and a joiner, who needs the bootstrap's id.
        try:
            return Peer.from_wire(raw)
        except ValueError:
            return None


@dataclass(frozen=True, slots=True)
class Leaving:
    """``peer`` leaves gracefully and hands over its predecessor and successors (§5.3)."""

    op: ClassVar[str] = "chord.leaving"
    mutates: ClassVar[bool] = True
    peer: Peer
    pred: Peer | None
    successors: list[Peer]

    def to_wire(self) -> dict[str, Any]:
        return {
            "peer": self.peer.to_wire(),
            "pred": self.pred.to_wire() if self.pred else None,
            "successors": [p.to_wire() for p in self.successors],
        }

    @classmethod
    def from_wire(cls, args: dict[str, Any]) -> Leaving:
        a = decode(LeavingArgs, args)
        return cls(
            _peer(a.peer, "peer"),
            _peer(a.pred, "pred") if a.pred is not None else None,
            [_peer(p, "successors") for p in a.successors],
        )

    def serve(self, st: ChordState) -> None:
        st.on_neighbour_leaving(self.peer, self.pred, self.successors)

    @staticmethod
    def reply_to_wire(reply: None) -> None:
        return None

    @staticmethod
    def parse_reply(raw: Any) -> None:
        return None


Message = NextHop | GetState | Notify | Ping | Leaving
MESSAGES: tuple[type[Message], ...] = (NextHop, GetState, Notify, Ping, Leaving)


# -- argument parsing (BadRequest: the caller sent something malformed) ---------------


def _parse_id(x: Any, what: str) -> int:
    try:
        return parse_id(x)
    except ValueError as exc:
        raise BadRequest(f"{what}: {exc}") from None


def _peer(x: WirePeer, what: str) -> Peer:
    try:
        return Peer.from_wire(x)
    except ValueError as exc:
        raise BadRequest(f"{what}: {exc}") from None
