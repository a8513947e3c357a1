"""Big metadata shards for tests and ``bench/shard.py`` (issue 17): a node's store
filled offline, in big batches, with file records in directories of ``per_dir``
entries whose one replica is that node (so nothing is under-replicated)."""

from __future__ import annotations

import time
from pathlib import Path

from sector.ids import node_id, to_hex
from sector.meta.records import Child, DirRecord, FileRecord, Record
from sector.meta.store import MetaStore
from sector.node.identity import load_uuid

BATCH = 50_000


def node_hex(data: Path) -> str:
    """The id of the node of data directory ``data`` (made now if it has none yet)."""
    data.mkdir(parents=True, exist_ok=True)
    return to_hex(node_id(load_uuid(data)))


def file_record(path: str, holder: str, *, v: int | None = None) -> FileRecord:
    """A 4 KiB file record held by node ``holder`` (rf 1)."""
    stamp = (int(time.time() * 1000) if v is None else v, 0, holder)
    return FileRecord(
        path,
        stamp,
        size=4096,
        checksum="blake3:" + "0" * 64,
        blob="0" * 64,
        replicas=[(holder, "127.0.0.1:1")],
        rf=1,
    )


def build(data: Path, n: int, *, per_dir: int = 1000, top: str = "/d") -> int:
    """Fill the store of ``data`` with ``n`` file records under ``top``NNNNN/ and their
    directories (and "/"); returns how many rows it wrote."""
    nid = node_hex(data)
    v = (int(time.time() * 1000), 0, nid)
    ndirs = (n + per_dir - 1) // per_dir
    names = [f"{top[1:]}{d:05d}" for d in range(ndirs)]
    rows = 0
    with MetaStore(str(data / "meta.sqlite3")) as st:
        batch: list[Record] = [DirRecord("/", v, children={m: Child(v, "dir") for m in names})]
        for d, dname in enumerate(names):
            files = [f"f{i:06d}" for i in range(d * per_dir, min(n, (d + 1) * per_dir))]
            batch.append(DirRecord(f"/{dname}", v, children={m: Child(v, "file") for m in files}))
            batch += [file_record(f"/{dname}/{m}", nid, v=v[0]) for m in files]
            if len(batch) >= BATCH:
                st.put_many(batch)
                rows += len(batch)
                batch = []
        st.put_many(batch)
        rows += len(batch)
    return rows
