"""``sector sphere stream``: each segment piped through a shell command on its node.

The original's ``sphere_stream``: the command reads the segment on stdin and writes
lines on stdout. With buckets, each output line starts with its bucket id and a space
or tab; the id is cut off and the rest of the line goes to that bucket. The id parse is
vectorised (numpy over all lines at once), not a Python loop per line.
"""

from __future__ import annotations

import subprocess
from typing import Any

import numpy as np

from sector.sphere.batch import Batch, Output

MAX_DIGITS = 9


def stream_udf(seg: Batch) -> Any:
    p = seg.param
    proc = subprocess.run(
        p["command"], shell=True, input=bytes(seg.data), capture_output=True, check=False
    )
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError(
            f"command exited with {proc.returncode}" + (f": {err[-1]}" if err else "")
        )
    out = proc.stdout
    if not p.get("buckets"):
        return out
    return bucket_lines(out)


def bucket_lines(out: bytes) -> Output:
    """Split ``"<bucket> rest\\n"`` lines into (records without the id, bucket ids)."""
    if out and not out.endswith(b"\n"):
        out += b"\n"
    a = np.frombuffer(out, dtype=np.uint8)
    ends = np.flatnonzero(a == 10) + 1
    starts = np.concatenate(([0], ends[:-1])).astype(np.int64)
    n = len(starts)
    if n == 0:
        return Output(b"", np.zeros(1, dtype=np.int64), 0, np.zeros(0, dtype=np.int64))
    # Up to MAX_DIGITS+1 bytes of every line, padded with a non-digit.
    pad = np.concatenate((a, np.full(MAX_DIGITS + 1, 10, dtype=np.uint8)))
    window = pad[starts[:, None] + np.arange(MAX_DIGITS + 1)]
    isdig = (window >= 48) & (window <= 57)
    ndig = np.argmin(isdig, axis=1)  # first non-digit
    if (ndig == 0).any() or (ndig > MAX_DIGITS).any():
        bad = int(np.flatnonzero((ndig == 0) | (ndig > MAX_DIGITS))[0])
        line = out[starts[bad] : ends[bad]][:40]
        raise ValueError(f"with buckets, every line must start with a bucket id: {line!r}")
    sep = window[np.arange(n), ndig]
    if not np.isin(sep, (32, 9)).all():
        raise ValueError("with buckets, the bucket id must be followed by a space or a tab")
    digits = np.where(isdig & (np.arange(MAX_DIGITS + 1) < ndig[:, None]), window - 48, 0)
    exp = ndig[:, None] - 1 - np.arange(MAX_DIGITS + 1)
    powers = np.where(exp >= 0, 10 ** np.clip(exp, 0, None), 0)
    ids = (digits.astype(np.int64) * powers).sum(axis=1).astype(np.int64)
    body_starts = starts + ndig + 1
    lengths = ends - body_starts
    # Gather the bodies into one buffer (vectorised) and return them as variable records.
    idx = np.repeat(body_starts - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
    idx += np.arange(int(lengths.sum()))
    body = a[idx].tobytes()
    cuts = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
    return Output(body, cuts, 0, ids)
