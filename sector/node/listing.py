"""A directory listed a page at a time (issue 17): ``fs.ls`` with ``limit`` answers
the entries after the name ``after`` in name order, and the name to ask from next, so
a client shows the first page of a huge directory at once instead of waiting for all
of it, and no reply carries a million entries.

The owner of the directory serves the pages from its record. A page's names cost a
bisect in the directory's sorted names, which are kept for the few directories listed
last (``Names``), as long as the record is the same object: a directory changed
between two pages is sorted again, and a name added before the cursor meanwhile is
simply not in this listing, one added after it is (as ``readdir`` over a changing
directory). The entries' records are then fetched with one call per owner
(``Router.get_many``), not one routed call each.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict

from sector.meta import records as rec
from sector.meta.records import DirRecord

__all__ = ["MAX_PAGE", "PAGE", "Names", "page"]

PAGE = 1000  # entries a page, unless the caller asks for another size
MAX_PAGE = 10_000
KEEP_FROM = 2 * PAGE  # directories with fewer names are sorted again on each page
KEEP = 8  # directories whose sorted names are kept


class Names:
    """The sorted live names of the large directories listed last."""

    def __init__(self) -> None:
        self._kept: OrderedDict[str, tuple[DirRecord, list[str]]] = OrderedDict()

    def of(self, d: DirRecord) -> list[str]:
        hit = self._kept.get(d.path)
        if hit is not None and hit[0] is d:
            self._kept.move_to_end(d.path)
            return hit[1]
        names = list(rec.live_children(d))  # sorted by name
        if len(names) >= KEEP_FROM:
            self._kept[d.path] = (d, names)
            self._kept.move_to_end(d.path)
            while len(self._kept) > KEEP:
                self._kept.popitem(last=False)
        return names


def page(names: list[str], after: str | None, limit: int) -> tuple[list[str], str | None]:
    """The names after ``after`` (all from the first if None), at most ``limit``, and
    the cursor for the next page (None: this was the last)."""
    i = bisect.bisect_right(names, after) if after is not None else 0
    part = names[i : i + limit]
    return part, (part[-1] if part and i + limit < len(names) else None)
