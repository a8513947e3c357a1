"""The swarm's requests (``sector.wire.messages``), served by ``node/swarm.py``.

To the tracker (the node owning the file's record; nodes only):
``swarm.announce`` (join, progress, done; failed and bad sources), ``swarm.leave``,
``swarm.interest`` (is this blob busy?), ``swarm.forget`` (the file's version is gone:
drop its swarm and the cached copies).
Between nodes: ``swarm.pieces`` (a blob's piece list), ``swarm.piece`` (bulk: pieces
of a blob from a holder's store or a cache), ``cache.drop``.
From clients: ``swarm.want`` (would the entry node serve this get from its cache or
the swarm?), ``swarm.get`` (bulk: the file, from the cache the node fills through the
swarm), ``swarm.fetch`` (``sector distribute``: fetch files into this node's cache, a
job), ``swarm.job`` (its progress).
"""

from __future__ import annotations

from typing import Annotated, Any

from msgspec import Meta

from sector.storage.pieces import MAX_PIECES
from sector.wire.messages import Request

__all__ = [
    "Announce",
    "CacheDrop",
    "Fetch",
    "Forget",
    "Interest",
    "Job",
    "Leave",
    "PieceList",
    "Pieces",
    "SwarmGet",
    "Want",
]

Path = Annotated[str, Meta(max_length=4096)]
BlobId = Any  # storage.blobs.check_blob_id: "invalid blob id", whatever the type
NodeId = Annotated[str, Meta(max_length=64)]
# [node id, address, topology]: a node as the tracker names it
NodeRef = Annotated[list[Annotated[str, Meta(max_length=4096)]], Meta(min_length=2, max_length=3)]
Bits = Annotated[bytes, Meta(max_length=(MAX_PIECES + 7) // 8)]  # a have-set
PieceCount = Annotated[int, Meta(ge=0, le=MAX_PIECES)]
MAX_BATCH = 64  # pieces of one swarm.piece request
MAX_FETCH = 10_000  # paths of one swarm.fetch


class Announce(Request, frozen=True):
    """swarm.announce: ``me`` has ``have`` of the blob's ``pieces``; ``holders``: the
    record's replicas; ``failed`` / ``bad``: sources found unreachable / corrupt.
    Reply: ``{"sources": [[id, address, have bytes | None, holder]]}``."""

    op = "swarm.announce"
    path: Path
    pieces: PieceCount
    have: Bits
    me: NodeRef
    blob: BlobId = None
    holders: Annotated[list[NodeRef], Meta(max_length=16)] = []
    failed: Annotated[list[NodeId], Meta(max_length=64)] = []
    bad: Annotated[list[NodeId], Meta(max_length=64)] = []


class Leave(Request, frozen=True):
    """swarm.leave: ``peer`` stopped fetching the blob."""

    op = "swarm.leave"
    peer: NodeId
    blob: BlobId = None


class Interest(Request, frozen=True):
    """swarm.interest: ``reader`` wants the blob; reply ``{"others": n}``, how many
    others are reading or fetching it now."""

    op = "swarm.interest"
    reader: Annotated[str, Meta(max_length=200)]
    blob: BlobId = None


class Forget(Request, frozen=True):
    """swarm.forget: the blob of ``path`` is no longer its file's (replaced, removed)."""

    op = "swarm.forget"
    path: Path
    blob: BlobId = None


class PieceList(Request, frozen=True):
    """swarm.pieces: the blob's piece list (of ``piece_size``; 0: as stored).
    Reply: ``{"size", "piece_size", "digests"}``."""

    op = "swarm.pieces"
    piece_size: Annotated[int, Meta(ge=0)] = 0
    blob: BlobId = None


class Pieces(Request, frozen=True):
    """swarm.piece (bulk): these pieces of the blob, as many as the node has. Header
    ``{"pieces": [the ones that follow, in order]}``, then their bytes. With ``keep``,
    the stream stays open for the next request frame (any blob) after the bytes."""

    op = "swarm.piece"
    piece_size: Annotated[int, Meta(gt=0)]
    size: Annotated[int, Meta(ge=0)]
    pieces: Annotated[list[Annotated[int, Meta(ge=0, lt=MAX_PIECES)]], Meta(max_length=MAX_BATCH)]
    blob: BlobId = None
    keep: bool = False  # a link: more requests follow on this stream (``node/swarm_links``)


class CacheDrop(Request, frozen=True):
    """cache.drop: remove these blobs from the node's cache (their files changed, or a
    copy here served a corrupt piece)."""

    op = "cache.drop"
    blobs: Annotated[list[BlobId], Meta(max_length=1024)]


class Want(Request, frozen=True):
    """swarm.want: would this node serve a get of ``path`` (at ``blob``)? Reply
    ``{"serve": bool, "why": "cached" | "busy" | "large" | "holder" | "quiet"}``."""

    op = "swarm.want"
    path: Path
    reader: Annotated[str, Meta(max_length=64)]
    blob: BlobId = None
    size: Annotated[int, Meta(ge=0)] | None = None  # the file's, as the client's stat says
    replicas: Annotated[int, Meta(ge=0, le=64)] | None = None  # ... and its replicas


class SwarmGet(Request, frozen=True):
    """swarm.get (bulk): the file ``path`` at ``blob`` (or ``length`` bytes of it from
    ``offset``), fetched into this node's cache through the swarm if it is not there
    and sent as its pieces arrive; header ``{"size"}``, then its bytes."""

    op = "swarm.get"
    path: Path
    blob: BlobId = None
    offset: Annotated[int, Meta(ge=0)] = 0  # a range of it (the FUSE mount's reads)
    length: Annotated[int, Meta(ge=0)] | None = None


class Fetch(Request, frozen=True):
    """swarm.fetch: fetch these files into this node's cache (a job); reply
    ``{"job": id}``."""

    op = "swarm.fetch"
    paths: Annotated[list[Path], Meta(max_length=MAX_FETCH)]


class Job(Request, frozen=True):
    """swarm.job: a fetch job's progress and, once done, its outcome."""

    op = "swarm.job"
    job: Annotated[str, Meta(max_length=64)]
