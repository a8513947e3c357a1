"""The metadata service's requests (``sector.wire.messages``): ``meta.op`` (routed to
a key's owner, ``route.py``) and the replica-side ``meta.replicate``, ``meta.fetch`` and
``meta.absorb`` (``service.py``).

The owner-side ops that ``meta.op`` carries keep their arguments as a map (``args``),
read by each op (``service.py``, ``fileops.py``). Records travel as
``records.to_builtins`` maps, each decoded and checked by ``records.from_builtins``
(whose semantic checks msgspec's types cannot express: normalised paths, stamps, names).
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from sector.meta.batch import BATCH
from sector.wire.messages import Request

__all__ = ["Absorb", "Digests", "Fetch", "MetaOp", "Replicate"]


class MetaOp(Request, frozen=True, rename={"name": "op"}):
    """meta.op: run the owner-side op ``name`` (``op`` on the wire) on ``path``'s record,
    routed; ``hops``: how many times the request was forwarded already."""

    op = "meta.op"
    path: str
    name: str
    args: dict[str, Any] | None = None
    hops: int = 0


# At most ten batches of records in one message (senders send one at a time).
Records = Annotated[list[Any], msgspec.Meta(max_length=10 * BATCH)]


class Replicate(Request, frozen=True):
    """meta.replicate: the owner's new records, to merge as one of their replicas."""

    op = "meta.replicate"
    records: Records


class Fetch(Request, frozen=True):
    """meta.fetch: the records of these paths held here (a warm read's question)."""

    op = "meta.fetch"
    paths: list[str]


class Absorb(Request, frozen=True):
    """meta.absorb: records handed to this node as their owner by ``sender``."""

    op = "meta.absorb"
    records: Records
    sender: str


HexKey = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{40}$")]
BucketDigest = tuple[Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{1,8}$")], int, int, int]


class Digests(Request, frozen=True):
    """meta.digest: the sender's digests of the buckets of the arc (lo, hi]
    (``digest.py``); the answer names the buckets where this node's differ, the arc
    this node owns and whether ``sender`` is among its replica peers. Without
    ``buckets`` only the last two are asked."""

    op = "meta.digest"
    lo: HexKey
    hi: HexKey
    buckets: Annotated[list[BucketDigest], msgspec.Meta(max_length=1 << 16)] | None = None
    sender: HexKey | None = None
