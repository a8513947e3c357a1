"""Reads of a replica held by the node a Sphere UDF runs on (issue 16): the same
``SectorFileSystem`` a UDF opens reads the node's blob file directly, not over the
network, when its node holds the file.

An engine is told where it sees its node's blob files (read-only) by the environment
variable ``sector.sphere.sandbox.NODE_BLOBS``; nothing else sets it. The file of the
version being read (its ``blob``) is used only if it checks out as the node itself
would serve it: a regular file reached without following a link, of the record's size,
and -- for a whole-file read -- of the record's checksum (the network path verifies
whole reads the same way). Anything else (no such file here, another size, a checksum
that differs, an error) is a miss, and the read goes over the network as before.
"""

from __future__ import annotations

import os
from typing import Any

from sector.errors import BadRequest
from sector.sphere.sandbox import NODE_BLOBS
from sector.storage.blobs import checksum_of, open_nofollow, rel_path

__all__ = ["LocalReplicas"]


class LocalReplicas:
    """The local-replica reads of one file system object, and its counters (``reads``,
    ``bytes``: served from the node's files; ``misses``: a local file that did not
    check out)."""

    def __init__(self) -> None:
        self.reads = 0
        self.bytes = 0
        self.misses = 0

    @staticmethod
    def root() -> str | None:
        """Where this process sees its node's blob files, if it runs in an engine."""
        return os.environ.get(NODE_BLOBS) or None

    def read(self, st: dict[str, Any], start: int, end: int) -> bytes | None:
        """Bytes [start, end) of the version ``st`` names from the node's own replica,
        or None (then read it over the network). Blocking: call it on a thread."""
        root, blob = self.root(), st.get("blob")
        if root is None or not isinstance(blob, str):
            return None
        try:
            fd = open_nofollow(os.path.join(root, rel_path(blob)))
        except (OSError, BadRequest):
            return None  # not held here (or not readable): no miss, just remote
        size = int(st["size"])
        with open(fd, "rb", buffering=0) as f:
            try:
                if os.fstat(f.fileno()).st_size != size:
                    data = None
                elif start == 0 and end >= size:
                    data = f.read()
                    if checksum_of(data) != st.get("checksum"):
                        data = None
                else:
                    data = os.pread(f.fileno(), end - start, start)
                    if len(data) != end - start:
                        data = None
            except OSError:
                data = None
        if data is None:
            self.misses += 1
            return None
        self.reads += 1
        self.bytes += len(data)
        return data
