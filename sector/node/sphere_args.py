"""Checks of the arguments of Sphere's messages to a node (``sphere.*``).

A node validates every message (DESIGN "Security"): these turn the loose values of a
request into checked ones, or raise ``BadRequest`` saying what is wrong. The limits
are the node's: how many buckets a job may have, which segment kinds and output
modes it knows.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from sector.errors import BadRequest
from sector.sphere.wire import KINDS, MAX_BUCKETS, MODES
from sector.transport.rpc import split_addr

__all__ = [
    "KINDS",
    "MAX_BUCKETS",
    "MAX_ID",
    "MODES",
    "bucket_map",
    "check_range",
    "int_arg",
    "job_arg",
    "reduce_spec",
]

JOB_RE = re.compile(r"^[0-9a-f]{8,32}$")
MAX_ID = 1 << 40  # attempt and segment ids


def int_arg(a: dict[str, Any], name: str, lo: int = 0, hi: int = 1 << 62) -> int:
    v = a.get(name)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise BadRequest(f"{name} must be an integer from {lo} to {hi}")
    return v


def job_arg(a: dict[str, Any]) -> str:
    j = a.get("job")
    if not isinstance(j, str) or not JOB_RE.fullmatch(j):
        raise BadRequest("job must be a hex job id")
    return j


def bucket_map(v: Any) -> dict[int, str]:
    """``{"<bucket id>": "host:port"}`` from a message, checked."""
    if not isinstance(v, dict):
        raise BadRequest("buckets must map bucket ids to addresses")
    out: dict[int, str] = {}
    for k, addr in v.items():
        if not isinstance(k, str) or not k.isdigit() or len(k) > 6 or int(k) >= MAX_BUCKETS:
            raise BadRequest(f"bucket id {k!r:.40} is not a number from 0 to {MAX_BUCKETS - 1}")
        try:
            split_addr(addr)
        except (TypeError, ValueError, AttributeError):
            raise BadRequest(f"bucket address {addr!r:.60} is not HOST:PORT") from None
        out[int(k)] = addr
    return out


def check_range(seg: dict[str, Any], kind: str) -> None:
    """A data segment's byte range (and records) must lie within its file."""
    offset, length, size = int_arg(seg, "offset"), int_arg(seg, "length"), int_arg(seg, "size")
    if offset + length > size:
        raise BadRequest(f"segment range {offset}+{length} is past the file's {size} bytes")
    if not isinstance(seg.get("path"), str):
        raise BadRequest("a data segment needs the path of its file")
    if kind == "fixed":
        rs = int_arg(seg, "record_size", 1, 1 << 30)
        if length % rs:
            raise BadRequest(f"segment length {length} is not a whole number of {rs}-byte records")
    elif kind == "idx":
        raw = seg.get("index")
        if not isinstance(raw, bytes) or not raw or len(raw) % 8:
            raise BadRequest("an idx segment needs its index as int64 offsets")
        idx = np.frombuffer(raw, dtype=np.int64)
        if idx[0] != 0 or idx[-1] != length or bool(np.any(idx[1:] < idx[:-1])):
            raise BadRequest(f"the segment's index must run from 0 up to its length {length}")


def reduce_spec(raw: Any) -> dict[str, Any] | None:
    """A commit's ``reduce``: {udf, digest, kind, record_size}, checked, or None."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise BadRequest("reduce must be a map")
    udf, digest, kind = raw.get("udf"), raw.get("digest"), raw.get("kind")
    if not isinstance(udf, bytes) or not isinstance(digest, str) or len(digest) > 128:
        raise BadRequest("reduce needs udf (bytes) and digest (a short string)")
    if kind not in ("file", "lines", "fixed"):
        raise BadRequest("reduce kind must be file, lines or fixed")
    size = int_arg(raw, "record_size", 0, 1 << 30) if "record_size" in raw else 0
    if kind == "fixed" and size < 1:
        raise BadRequest("a fixed-size reduce needs record_size >= 1")
    return {"udf": udf, "digest": digest, "kind": kind, "record_size": size}
