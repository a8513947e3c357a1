"""A large get striped over a file's live replicas, on loopback (issue 15; real nodes):
every holder serves part of it and the file is byte-exact; a holder whose copy is
rotten makes the striped read an error, never a silent bad file, and the get then
reads one replica at a time and still returns the right bytes. (A holder SIGKILLed
mid-read: tests/integration/test_wan.py, where a rate-limited link makes it land.)"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import sector
from sector.client import fetch
from sector.errors import ChecksumMismatch
from sector.storage import pieces
from sector.testing.cluster import ProcCluster
from sector.transport import stripe

SIZE = 40 << 20  # over wan.STRIPE_MIN


def _flip_byte(p: Path, at: int) -> None:
    with open(p, "r+b") as f:
        f.seek(at)
        b = f.read(1)
        f.seek(at)
        f.write(bytes([b[0] ^ 0xFF]))


def test_a_large_get_is_striped_over_the_replicas_and_a_rotten_one_is_caught(
    tmp_path: Path, random_file: Callable[[Path, int], Any]
) -> None:
    src = tmp_path / "src"
    random_file(src, SIZE)
    with ProcCluster(tmp_path / "c", replicas=3) as cl:
        cl.start(3)
        with sector.connect(cl.address) as c:
            put = c.put(src, "/big")
            assert len(put["replicas"]) == 3
            got = c.get("/big", tmp_path / "a")
            assert (tmp_path / "a").read_bytes() == src.read_bytes()
            t = got["transfer"]
            assert t["streams"] == 3 and sorted(t["holders"]) == sorted(cl.addresses()), t
            assert t["failed"] == [] and t["refetched"] == 0
            assert t["checked"] == "pieces"  # as they came, against the record's list

            # One copy rotten where its holder reads it: the start of the third span
            # goes to the third holder's stream (equally near holders are taken in the
            # order of their addresses; a steal takes back halves only).
            st = c.stat("/big")
            holder = next(n for n in cl.nodes if n.address == sorted(cl.addresses())[2])
            at = stripe.ranges(SIZE, 3)[2][0] + 100
            _flip_byte(holder.data / "blobs" / put["blob"][:2] / put["blob"], at)
            with pytest.raises(ChecksumMismatch, match="striped over 3 replicas"):
                c._run(fetch.striped(c._aio.pool, st, tmp_path / "part", None))
            assert not (tmp_path / "part").exists(), "a bad assembled file is not left"
            got = c.get("/big", tmp_path / "b")
            assert (tmp_path / "b").read_bytes() == src.read_bytes()
            assert got["transfer"]["streams"] == 1, got["transfer"]  # one replica at a time


def test_a_piece_list_that_is_not_the_records_is_not_trusted(
    tmp_path: Path, random_file: Callable[[Path, int], Any]
) -> None:
    """Every holder keeps a valid list that is not the file's (its root is not the
    record's): the get does not check the pieces against it, it hashes the file
    whole, and the bytes are right."""
    src = tmp_path / "src"
    random_file(src, SIZE)
    with ProcCluster(tmp_path / "c", replicas=3) as cl:
        cl.start(3)
        with sector.connect(cl.address) as c:
            put = c.put(src, "/big")
            st = c.stat("/big")
            assert st["pieces"] and st["piece_size"] > 0
            ps = st["piece_size"]
            n = pieces.count(SIZE, ps)
            forged = pieces.PieceList(SIZE, ps, bytes(pieces.DIGEST * n))
            for node in cl.nodes:
                d = node.data / "blobs" / put["blob"][:2]
                (d / (put["blob"] + pieces.SUFFIX)).write_bytes(pieces.encode(forged))
            got = c.get("/big", tmp_path / "a")
            assert got["transfer"]["checked"] == "whole", got["transfer"]
            assert (tmp_path / "a").read_bytes() == src.read_bytes()
