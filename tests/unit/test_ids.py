"""Ring identifiers and interval arithmetic (sector.ids), edge cases first."""

from __future__ import annotations

import hashlib

import pytest

from sector.ids import (
    BITS,
    MASK,
    RING,
    between,
    between_right,
    distance,
    finger_start,
    from_hex,
    key_id,
    node_id,
    short,
    to_hex,
)

TOP = MASK  # the largest id, 2**160 - 1: the last point before the ring wraps to 0


def test_ring_size() -> None:
    assert BITS == 160
    assert RING == 2**160
    assert MASK == RING - 1


def test_key_id_is_sha1_of_the_name() -> None:
    want = int.from_bytes(hashlib.sha1(b"/a/b").digest(), "big")
    assert key_id("/a/b") == want
    assert key_id(b"/a/b") == want
    assert 0 <= key_id("") <= MASK


def test_key_id_encodes_str_as_utf8() -> None:
    assert key_id("é") == key_id("é".encode())


def test_node_id_is_not_the_key_of_the_same_string() -> None:
    # Node ids are namespaced so a node whose uuid equals some path does not collide.
    assert node_id("x") != key_id("x")
    assert node_id("x") == node_id("x")
    assert 0 <= node_id("x") <= MASK


@pytest.mark.parametrize(
    ("x", "a", "b", "want"),
    [
        (5, 1, 10, True),
        (1, 1, 10, False),  # open at a
        (10, 1, 10, False),  # open at b
        (0, 1, 10, False),
        (11, 1, 10, False),
        # wraparound: (TOP-1, 2) contains TOP, 0 and 1
        (TOP, TOP - 1, 2, True),
        (0, TOP - 1, 2, True),
        (1, TOP - 1, 2, True),
        (2, TOP - 1, 2, False),
        (TOP - 1, TOP - 1, 2, False),
        (5, TOP - 1, 2, False),
        # a == b: the whole ring except a itself
        (7, 3, 3, True),
        (3, 3, 3, False),
        (0, 0, 0, False),
        (TOP, 0, 0, True),
        # adjacent ends: nothing strictly between
        (4, 3, 4, False),
        (0, TOP, 0, False),
    ],
)
def test_between_open(x: int, a: int, b: int, want: bool) -> None:
    assert between(x, a, b) is want


@pytest.mark.parametrize(
    ("x", "a", "b", "want"),
    [
        (10, 1, 10, True),  # closed at b
        (1, 1, 10, False),  # open at a
        (5, 1, 10, True),
        (11, 1, 10, False),
        (2, TOP - 1, 2, True),
        (0, TOP - 1, 2, True),
        (TOP - 1, TOP - 1, 2, False),
        (3, TOP - 1, 2, False),
        # a == b: the whole ring (a ring of one node owns every key, its own id too)
        (3, 3, 3, True),
        (4, 3, 3, True),
        (0, 0, 0, True),
        (0, TOP, 0, True),
        (TOP, TOP, 0, False),
    ],
)
def test_between_right_half_open(x: int, a: int, b: int, want: bool) -> None:
    assert between_right(x, a, b) is want


def test_between_and_between_right_differ_only_at_b() -> None:
    pts = [0, 1, 2, 100, TOP - 1, TOP]
    for a in pts:
        for b in pts:
            for x in pts:
                if x == b:
                    assert between_right(x, a, b)
                else:
                    assert between(x, a, b) == between_right(x, a, b)


def test_every_point_but_the_ends_is_on_exactly_one_side() -> None:
    # (a, b) and (b, a) partition the ring minus {a, b} when a != b.
    pts = [0, 1, 5, TOP // 2, TOP - 1, TOP]
    for a in pts:
        for b in pts:
            if a == b:
                continue
            for x in pts:
                if x in (a, b):
                    continue
                assert between(x, a, b) != between(x, b, a)


@pytest.mark.parametrize(
    ("a", "b", "want"),
    [(0, 0, 0), (3, 10, 7), (10, 3, RING - 7), (TOP, 0, 1), (0, TOP, TOP), (5, 5, 0)],
)
def test_distance_is_clockwise(a: int, b: int, want: int) -> None:
    assert distance(a, b) == want


def test_finger_start_wraps() -> None:
    assert finger_start(0, 0) == 1
    assert finger_start(0, BITS - 1) == 2 ** (BITS - 1)
    assert finger_start(TOP, 0) == 0
    assert finger_start(TOP, 3) == 7
    assert finger_start(2**159, BITS - 1) == 0


def test_hex_round_trip_and_fixed_width() -> None:
    for x in (0, 1, 0xABC, TOP):
        h = to_hex(x)
        assert len(h) == 40
        assert from_hex(h) == x
    assert to_hex(1) == "0" * 39 + "1"


@pytest.mark.parametrize("bad", ["", "abc", "0" * 39, "0" * 41, "g" * 40])
def test_from_hex_rejects_bad_input(bad: str) -> None:
    with pytest.raises(ValueError):
        from_hex(bad)


def test_short_is_the_first_8_hex_digits() -> None:
    assert short(TOP) == "ffffffff"
    assert short(1) == "00000000"
    assert short(0xDEADBEEF << 128) == "deadbeef"
