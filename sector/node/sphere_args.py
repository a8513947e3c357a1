"""Checks of Sphere's messages to a node (``sphere.*``) that their types cannot express.

A node validates every message (DESIGN "Security"). The messages are declared in
``sector.sphere.wire`` and decoded at the handler table, which checks their types,
ranges and the job id's form; what is left is here, raising ``BadRequest`` saying
what is wrong: bucket maps (ids and addresses), a data segment's range within its file
(and its records), a reduce of fixed-size records without a size.
"""

from __future__ import annotations

import numpy as np
from msgspec import UnsetType

from sector.errors import BadRequest
from sector.sphere.wire import MAX_BUCKETS, DataSegment, FixedSegment, IdxSegment, Reduce
from sector.transport.rpc import split_addr

__all__ = ["bucket_map", "check_range", "reduce_spec"]


def bucket_map(v: dict[str, str]) -> dict[int, str]:
    """``{"<bucket id>": "host:port"}`` from a message, checked."""
    out: dict[int, str] = {}
    for k, addr in v.items():
        if not k.isdigit() or len(k) > 6 or int(k) >= MAX_BUCKETS:
            raise BadRequest(f"bucket id {k!r:.40} is not a number from 0 to {MAX_BUCKETS - 1}")
        try:
            split_addr(addr)
        except (TypeError, ValueError, AttributeError):
            raise BadRequest(f"bucket address {addr!r:.60} is not HOST:PORT") from None
        out[int(k)] = addr
    return out


def check_range(seg: DataSegment) -> None:
    """A data segment's byte range (and records) must lie within its file."""
    offset, length, size = seg.offset, seg.length, seg.size
    if offset + length > size:
        raise BadRequest(f"segment range {offset}+{length} is past the file's {size} bytes")
    if isinstance(seg, FixedSegment):
        rs = seg.record_size
        if rs < 1:
            raise BadRequest(f"record_size must be an integer from 1 to {1 << 30}")
        if length % rs:
            raise BadRequest(f"segment length {length} is not a whole number of {rs}-byte records")
    elif isinstance(seg, IdxSegment):
        raw = seg.index
        if isinstance(raw, UnsetType) or not raw or len(raw) % 8:
            raise BadRequest("an idx segment needs its index as int64 offsets")
        idx = np.frombuffer(raw, dtype=np.int64)
        if idx[0] != 0 or idx[-1] != length or bool(np.any(idx[1:] < idx[:-1])):
            raise BadRequest(f"the segment's index must run from 0 up to its length {length}")


def reduce_spec(r: Reduce | UnsetType | None) -> Reduce | None:
    """A commit's reduce, checked, or None."""
    if r is None or isinstance(r, UnsetType):
        return None
    if r.kind == "fixed" and r.record_size < 1:
        raise BadRequest("a fixed-size reduce needs record_size >= 1")
    return r
