"""160-bit identifiers and ring interval arithmetic (Chord §3, pure).

Node ids and keys live on the same ring of size 2**160, as in the Chord paper: a key
is SHA-1 of its name, a node id is SHA-1 of the persistent node UUID kept in the node's
data directory, so a restarted node keeps its place on the ring.

Intervals on the ring wrap around zero. ``between(x, a, b)`` is the open interval
(a, b); ``between_right(x, a, b)`` is the half-open (a, b], the form Chord uses for
"key k belongs to successor s": k in (predecessor, s]. When a == b the interval is the
whole ring (minus a, for the open form), which is what a one-node ring needs.
"""

from __future__ import annotations

import hashlib

BITS = 160
RING = 1 << BITS
MASK = RING - 1


def key_id(name: str | bytes) -> int:
    """The ring position of a key (a path, usually)."""
    data = name.encode("utf-8") if isinstance(name, str) else name
    return int.from_bytes(hashlib.sha1(data).digest(), "big")


def node_id(node_uuid: str) -> int:
    """The ring position of a node, derived from its persistent UUID."""
    return key_id("node:" + node_uuid)


def between(x: int, a: int, b: int) -> bool:
    """x in the open ring interval (a, b)."""
    if a < b:
        return a < x < b
    if a > b:
        return x > a or x < b
    return x != a


def between_right(x: int, a: int, b: int) -> bool:
    """x in the half-open ring interval (a, b]."""
    if a < b:
        return a < x <= b
    if a > b:
        return x > a or x <= b
    return True


def distance(a: int, b: int) -> int:
    """Clockwise distance from a to b."""
    return (b - a) & MASK


def finger_start(n: int, i: int) -> int:
    """Start of finger i (0-based) of node n: n + 2**i mod 2**160."""
    return (n + (1 << i)) & MASK


def to_hex(x: int) -> str:
    return f"{x:040x}"


def from_hex(s: str) -> int:
    if len(s) != 40:
        raise ValueError(f"not a 160-bit hex id: {s!r}")
    return int(s, 16)


def short(x: int) -> str:
    """A short form for logs and tables (first 8 hex digits)."""
    return to_hex(x)[:8]
