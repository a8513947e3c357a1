"""fsspec's own suite for implementers (``fsspec.tests.abstract``) against ``sector://``.

Copy, get, put, open and pipe, as fsspec runs them against its memory and local file
systems (137 tests), here against one real node process: the suite makes thousands of
tiny files, each an fsync'd put, so the node keeps its data in RAM (``/dev/shm``, where
there is one) and is alone (what a second node changes -- replicas, records owned
elsewhere -- is covered by test_fsspec.py): ~25 s instead of ~2 min. Each test works in
a directory of its own, removed afterwards.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec.tests.abstract as abstract
import pytest

from sector.fsspec import SectorFileSystem
from sector.testing.cluster import ProcCluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[ProcCluster]:
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    root = Path(tempfile.mkdtemp(prefix="sector-fsspec-", dir=shm))
    try:
        with ProcCluster(root, replicas=1, node_args=["--engines", "1"]) as c:
            c.start(1)
            yield c
    finally:
        shutil.rmtree(root, ignore_errors=True)


class SectorFixtures(abstract.AbstractFixtures):  # type: ignore[misc]
    @pytest.fixture
    def fs(self, cluster: ProcCluster) -> SectorFileSystem:
        return SectorFileSystem(cluster=cluster.address)

    @pytest.fixture
    def fs_join(self):  # type: ignore[no-untyped-def]
        return lambda *parts: "/".join(parts)

    @pytest.fixture
    def fs_path(self, fs: SectorFileSystem) -> Iterator[str]:
        d = f"/abstract-{uuid.uuid4().hex[:8]}"
        yield d
        if fs.exists(d):
            fs.rm(d, recursive=True)


class TestSectorCopy(abstract.AbstractCopyTests, SectorFixtures):  # type: ignore[misc]
    pass


class TestSectorGet(abstract.AbstractGetTests, SectorFixtures):  # type: ignore[misc]
    pass


class TestSectorPut(abstract.AbstractPutTests, SectorFixtures):  # type: ignore[misc]
    pass


class TestSectorOpen(abstract.AbstractOpenTests, SectorFixtures):  # type: ignore[misc]
    pass


class TestSectorPipe(abstract.AbstractPipeTests, SectorFixtures):  # type: ignore[misc]
    pass
