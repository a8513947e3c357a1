"""The owner-arc cache used by clients and entry nodes."""

from __future__ import annotations

from sector.ids import RING
from sector.routing.rangecache import RangeCache


def test_finds_owner_of_cached_arcs_including_wraparound() -> None:
    c = RangeCache()
    c.learn(100, "a", pred=50)
    c.learn(50, "b", pred=RING - 10)  # arc wraps around zero
    assert c.find(75) == (100, "a")
    assert c.find(100) == (100, "a")
    assert c.find(5) == (50, "b")
    assert c.find(RING - 5) == (50, "b")
    assert c.find(150) is None  # nobody cached covers (100, ...]


def test_forget_by_id_and_by_address() -> None:
    c = RangeCache()
    c.learn(100, "a", pred=50)
    c.learn(200, "b", pred=100)
    c.forget(100)
    assert c.find(75) is None and c.find(150) == (200, "b")
    c.forget_addr("b")
    assert c.find(150) is None


def test_bounded_size() -> None:
    c = RangeCache(max_entries=4)
    for i in range(10):
        c.learn(i * 10 + 10, f"n{i}", pred=i * 10)
    assert c.find(95) == (100, "n9")
