"""What a node keeps of a Sphere job while it runs attempts of it (``node/sphere``):
the job, its attempts, and what the web page's job view (``jobview``) reads of them.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Attempt", "JobState"]


@dataclass(slots=True)
class Attempt:
    id: int
    seg: int
    state: str = "running"  # running | done | cancelled
    result: dict[str, Any] | None = None
    task: asyncio.Task[None] | None = None
    parts: dict[int, int] = field(default_factory=dict)  # bucket -> bytes (staged here)
    started: float = field(default_factory=time.time)  # wall clock: the web page shows it
    ended: float | None = None


@dataclass(slots=True)
class JobState:
    id: str
    dir: Path
    attempts: dict[int, Attempt] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    touched: float = field(default_factory=time.monotonic)
    owner: str | None = None  # the user whose driver runs the job (secure clusters)
    # Its required files, fetched once for all its tasks here (``sphere_files``).
    files: asyncio.Task[Path] | None = None
    total: int = 0  # its segments, as its driver says with each run (the web page's)
    stopped: str | None = None  # why the whole job was cancelled (``sphere.stop``)
    commits: set[asyncio.Task[Any]] = field(default_factory=set)  # (a cancel stops them)
