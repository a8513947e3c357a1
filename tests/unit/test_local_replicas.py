"""A UDF's local-replica reads (``sector.fsspec.local``) take the node's blob file only
as the node would serve it: of the record's size, and for a whole read of its checksum;
a link, a short file or a corrupt one is a miss (the read then goes to the network)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sector.fsspec.local import LocalReplicas
from sector.sphere.sandbox import NODE_BLOBS
from sector.storage.blobs import checksum_of, new_blob_id, rel_path


def stored(root: Path, data: bytes) -> dict[str, object]:
    blob = new_blob_id()
    p = root / rel_path(blob)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return {"blob": blob, "size": len(data), "checksum": checksum_of(data)}


def test_reads_come_from_the_blob_file_only_when_it_checks_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(10000)
    st = stored(tmp_path, data)
    loc = LocalReplicas()
    assert loc.read(st, 0, len(data)) is None  # not in an engine: never local
    monkeypatch.setenv(NODE_BLOBS, str(tmp_path))
    assert loc.read(st, 0, len(data)) == data
    assert loc.read(st, 100, 200) == data[100:200]
    assert (loc.reads, loc.bytes, loc.misses) == (2, 10100, 0)
    assert loc.read({**st, "blob": new_blob_id()}, 0, 10) is None  # not held here
    assert loc.misses == 0
    assert loc.read({**st, "size": 9999}, 0, 9999) is None  # another size
    bad = {**st, "checksum": checksum_of(b"other")}
    assert loc.read(bad, 0, len(data)) is None  # a whole read is checksum-checked
    assert loc.read({**st, "blob": "../../etc/passwd"}, 0, 10) is None
    assert loc.misses == 2


def test_a_link_in_place_of_the_blob_file_is_not_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(NODE_BLOBS, str(tmp_path / "blobs"))
    target = tmp_path / "elsewhere"
    target.write_bytes(b"x" * 10)
    st = {"blob": new_blob_id(), "size": 10, "checksum": checksum_of(b"x" * 10)}
    p = tmp_path / "blobs" / rel_path(str(st["blob"]))
    p.parent.mkdir(parents=True)
    p.symlink_to(target)
    assert LocalReplicas().read(st, 0, 10) is None
