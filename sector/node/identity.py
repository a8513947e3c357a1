"""A node's identity, kept in its data directory: the UUID its ring id derives from (so a
restarted node is the same node, in the same place on the ring), and the incarnation
counter bumped at every start (what makes a restarted node's gossip win over what its
previous life said). Both are written atomically (temp file, rename).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def next_incarnation(data: Path) -> int:
    """A counter bumped at every start: what makes a restarted node's gossip win."""
    p = data / "incarnation"
    try:
        n = int(p.read_text().strip())
    except (OSError, ValueError):
        n = 0
    n += 1
    tmp = p.with_suffix(".tmp")
    tmp.write_text(f"{n}\n")
    os.replace(tmp, p)
    return n


def load_uuid(data: Path) -> str:
    p = data / "node.uuid"
    try:
        u = p.read_text().strip()
        uuid.UUID(u)
        return u
    except (OSError, ValueError):
        u = str(uuid.uuid4())
        tmp = p.with_suffix(".tmp")
        tmp.write_text(u + "\n")
        os.replace(tmp, p)
        return u
