"""A replica chain as it travels: ``[[node id, address], ...]``, first target first,
and the one loop that tries its targets in turn (DESIGN "Replication").

A chain write goes to the first target, which passes the rest of the chain on. When
a target is down the next one takes its place with the chain behind it: the client
starting a put, a node forwarding a put to the next hop, and a holder pushing a
repair copy all do the same thing, here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from sector.errors import ConnectError, SectorError, TransportError

T = TypeVar("T")
Chain = Sequence[Sequence[str]]
Skipped = Callable[[str, str, SectorError], None]  # (node id, address, why)


async def first_live(
    chain: Chain,
    attempt: Callable[[str, list[list[str]]], Awaitable[T]],
    *,
    skip: type[SectorError] | tuple[type[SectorError], ...] = TransportError,
    on_skip: Skipped | None = None,
) -> T:
    """``attempt(address, rest of the chain)`` on each target in turn: the first that
    does not raise ``skip`` (by default a transport error: the target is down or the
    stream broke) gives the result; each target skipped is told to ``on_skip``.

    Raises the last error if every target was skipped (``ConnectError`` if the chain
    is empty); any other error of an attempt at once.
    """
    last: SectorError | None = None
    for i, (nid, addr) in enumerate(chain):
        try:
            return await attempt(addr, [list(c) for c in chain[i + 1 :]])
        except skip as exc:
            last = exc
            if on_skip is not None:
                on_skip(nid, addr, exc)
    raise last or ConnectError("no target node for the upload")
