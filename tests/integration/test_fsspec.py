"""``sector://`` through fsspec, over real node processes (issue 16).

One 2-node cluster per module (per xdist worker), each test in a directory of its own
(fsspec's own suite for implementers runs in test_fsspec_abstract.py). What users do
with it: pandas csv and parquet, a
``pyarrow.dataset`` over a directory, ``dask.dataframe.read_parquet`` with the threaded
and a process (forked) scheduler, gzip round trips, the builtin errors, pickling, and
a ranged read whose bytes on the wire are counted by the nodes (``node.info`` "bulk").
"""

from __future__ import annotations

import errno
import gzip
import importlib.metadata
import multiprocessing
import os
import pickle
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dask
import dask.dataframe as dd
import fsspec
import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from sector.fsspec import SectorFileSystem, WriteOnceError
from sector.testing.cluster import ProcCluster, wait_for

NODE_ARGS = ["--engines", "1"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcCluster]:
    with ProcCluster(tmp_path_factory.mktemp("fsspec"), replicas=2, node_args=NODE_ARGS) as c:
        c.start(2)
        yield c


@pytest.fixture
def sfs(cluster: ProcCluster, monkeypatch: pytest.MonkeyPatch) -> SectorFileSystem:
    """The filesystem of ``sector:///`` URLs: SECTOR_CLUSTER names the test cluster."""
    monkeypatch.setenv("SECTOR_CLUSTER", cluster.address)
    return SectorFileSystem(cluster=cluster.address)


@pytest.fixture
def base(sfs: SectorFileSystem) -> str:
    d = f"/t-{uuid.uuid4().hex[:8]}"
    sfs.mkdir(d)
    return d


def _put_random(sfs: SectorFileSystem, path: str, size: int) -> bytes:
    data = np.random.default_rng(7).integers(0, 256, size, dtype=np.uint8).tobytes()
    sfs.pipe(path, data)
    return data


def _bytes_out(cluster: ProcCluster) -> int:
    """Bytes the nodes have served from their blobs since they started (all nodes)."""
    with cluster.connect() as c:
        return sum(
            int(c.run(c.aio.pool.call(a, "node.info", {}))["bulk"]["bytes_out"])
            for a in cluster.addresses()
        )


# ---------------------------------------------------------------- URLs and options


def test_protocol_is_registered_and_urls_name_the_cluster(
    cluster: ProcCluster, sfs: SectorFileSystem, base: str
) -> None:
    # Registered by the package's entry point (fsspec.specs), not by an import of ours.
    names = [ep.name for ep in importlib.metadata.entry_points(group="fsspec.specs")]
    assert "sector" in names
    assert fsspec.get_filesystem_class("sector") is SectorFileSystem
    sfs.pipe(f"{base}/u.txt", b"url")
    # sector:///path: SECTOR_CLUSTER (set by the sfs fixture).
    fs1, p1 = fsspec.core.url_to_fs(f"sector://{base}/u.txt")
    assert p1 == f"{base}/u.txt" and fs1.cat(p1) == b"url"
    # sector://HOST:PORT/path names the cluster, whatever SECTOR_CLUSTER says; and
    # sector:/// follows SECTOR_CLUSTER (fsspec hands out the same cached instance).
    os.environ["SECTOR_CLUSTER"] = "127.0.0.1:9"
    fs0, p0 = fsspec.core.url_to_fs(f"sector://{base}/u.txt")
    assert fs0 is fs1
    with pytest.raises(ConnectionError, match=re.escape("127.0.0.1:9")):
        fs0.cat(p0)
    fs2, p2 = fsspec.core.url_to_fs(f"sector://{cluster.address}{base}/u.txt")
    assert fs2.cluster == cluster.address and fs2.cat(p2) == b"url"
    with fsspec.open(f"sector://{cluster.address}{base}/u.txt") as f:
        assert f.read() == b"url"
    assert fs2.unstrip_protocol(p2) == f"sector://{cluster.address}{base}/u.txt"


def test_bad_urls_and_unknown_clusters_fail_fast_in_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for url in ("sector://not-a-cluster/x", "sector://h:port/x", "sector://a:1:2/x"):
        with pytest.raises(ValueError, match="bad Sector URL") as e:
            fsspec.core.url_to_fs(url)
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="HOST:PORT"):
        fsspec.filesystem("sector", cluster="nonsense")
    # A port nothing listens on: refused at once, a one-line ConnectionError.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(ConnectionError, match="cannot reach a Sector cluster") as e:
        fsspec.filesystem("sector", cluster=f"127.0.0.1:{port}").ls("/")
    assert time.monotonic() - t0 < 15 and "\n" not in str(e.value)
    # Something listens there but never answers: bounded by connect_timeout.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        mute = f"127.0.0.1:{s.getsockname()[1]}"
        t0 = time.monotonic()
        with pytest.raises(ConnectionError, match="no answer within 1 s"):
            fsspec.filesystem("sector", cluster=mute, connect_timeout=1.0).ls("/")
        assert time.monotonic() - t0 < 10
    # No cluster at all: says how to name one.
    monkeypatch.delenv("SECTOR_CLUSTER", raising=False)
    with pytest.raises(ValueError, match="no Sector cluster given"):
        fsspec.filesystem("sector", skip_instance_cache=True).ls("/")


# ---------------------------------------------------------------- fsspec semantics


def test_info_ls_and_the_builtin_errors(sfs: SectorFileSystem, base: str) -> None:
    sfs.pipe(f"{base}/d/a.txt", b"alpha")
    info = sfs.info(f"{base}/d/a.txt")
    assert info["name"] == f"{base}/d/a.txt" and info["type"] == "file"
    assert info["size"] == 5 and info["checksum"].startswith("blake3:")
    (entry,) = sfs.ls(f"{base}/d", detail=True)
    assert {k: entry[k] for k in ("name", "size", "type", "checksum")} == {
        k: info[k] for k in ("name", "size", "type", "checksum")
    }
    assert sfs.info(f"{base}/d")["type"] == "directory"
    assert sfs.ls(f"{base}", detail=False) == [f"{base}/d"]
    # checksum/ukey: the content's, the same from a listing's info as from a stat's;
    # an overwrite changes them.
    key, ck = sfs.ukey(f"{base}/d/a.txt"), sfs.checksum(f"{base}/d/a.txt")
    assert key == entry["checksum"].partition(":")[2]
    sfs.pipe(f"{base}/d/a.txt", b"beta")
    assert sfs.ukey(f"{base}/d/a.txt") != key and sfs.checksum(f"{base}/d/a.txt") != ck

    missing = f"{base}/nope"
    for call in (
        lambda: sfs.info(missing),
        lambda: sfs.ls(missing),
        lambda: sfs.cat(missing),
        lambda: sfs.open(missing, "rb"),
        lambda: sfs.rm(missing),
        lambda: sfs.mv(missing, f"{base}/z"),
    ):
        with pytest.raises(FileNotFoundError):
            call()
    assert not sfs.exists(missing) and not sfs.isdir(missing)
    with pytest.raises(FileExistsError):
        sfs.mkdir(f"{base}/d")
    with pytest.raises(FileExistsError):
        sfs.makedirs(f"{base}/d")
    sfs.makedirs(f"{base}/d", exist_ok=True)
    with pytest.raises(FileExistsError):
        sfs.makedirs(f"{base}/d/a.txt", exist_ok=True)  # a file is there
    with pytest.raises(FileNotFoundError):
        sfs.mkdir(f"{base}/p/q", create_parents=False)
    for call in (
        lambda: sfs.open(f"{base}/d", "wb"),
        lambda: sfs.pipe(f"{base}/d", b"x"),
        lambda: sfs.open(f"{base}/d", "rb"),
        lambda: sfs.cat_file(f"{base}/d"),
    ):
        with pytest.raises(IsADirectoryError):
            call()
    for call in (
        lambda: sfs.mkdir(f"{base}/d/a.txt/x"),
        lambda: sfs.pipe(f"{base}/d/a.txt/x", b"x"),
    ):
        with pytest.raises(NotADirectoryError):
            call()
    with pytest.raises(OSError) as e:
        sfs.rm(f"{base}/d")  # not empty, not recursive
    assert e.value.errno == errno.ENOTEMPTY
    for mode in ("ab", "r+b", "a"):
        with pytest.raises(WriteOnceError, match="write-once") as we:
            sfs.open(f"{base}/d/a.txt", mode)
        assert isinstance(we.value, ValueError | NotImplementedError | OSError)
    with pytest.raises(ValueError):
        sfs.info(f"{base}/../etc")


def test_namespace_operations(
    cluster: ProcCluster, sfs: SectorFileSystem, base: str, tmp_path: Path
) -> None:
    sfs.pipe({f"{base}/s/a.csv": b"1\n", f"{base}/s/b.csv": b"22\n", f"{base}/s/n/c.txt": b"3"})
    assert sfs.glob(f"{base}/s/*.csv") == [f"{base}/s/a.csv", f"{base}/s/b.csv"]
    assert sfs.find(f"{base}/s") == [f"{base}/s/a.csv", f"{base}/s/b.csv", f"{base}/s/n/c.txt"]
    assert sfs.du(f"{base}/s") == 6 and sfs.isdir(f"{base}/s/n")
    # mv is a rename on the cluster; onto an existing file it replaces it.
    replaced = sfs.info(f"{base}/s/b.csv")
    sfs.mv(f"{base}/s/a.csv", f"{base}/s/b.csv")
    assert sfs.cat(f"{base}/s/b.csv") == b"1\n" and not sfs.exists(f"{base}/s/a.csv")
    # ... and the replaced version's copies are deleted, as an overwrite's are.
    with cluster.connect() as c:

        def gone(addr: str) -> bool:
            args = {"blob": replaced["blob"], "checksum": replaced["checksum"]}
            rep = c.run(c.aio.pool.call(addr, "blob.verify", args))
            return bool(rep["health"] == "missing")

        wait_for(lambda: all(gone(a) for a in replaced["locations"]), 20, what="old copies gone")
    sfs.mv(f"{base}/s/n", f"{base}/m")
    assert sfs.cat(f"{base}/m/c.txt") == b"3"
    sfs.cp(f"{base}/s/b.csv", f"{base}/c/copy.csv")
    assert sfs.cat(f"{base}/c/copy.csv") == b"1\n"
    sfs.get(f"{base}/s/", str(tmp_path / "got"), recursive=True)
    assert (tmp_path / "got" / "b.csv").read_bytes() == b"1\n"
    (tmp_path / "up").mkdir()
    (tmp_path / "up" / "x.bin").write_bytes(b"\0" * 1000)
    sfs.put(str(tmp_path / "up"), f"{base}/up", recursive=True)
    assert sfs.info(f"{base}/up/x.bin")["size"] == 1000
    sfs.mkdir(f"{base}/empty")
    sfs.rmdir(f"{base}/empty")
    sfs.rm(f"{base}/s", recursive=True)
    assert not sfs.exists(f"{base}/s")
    assert sfs.modified(f"{base}/m/c.txt").year >= 2024


def test_a_written_file_appears_whole_on_close(sfs: SectorFileSystem, base: str) -> None:
    path = f"{base}/w.bin"
    with sfs.open(path, "wb", block_size=1 << 16) as f:
        for _ in range(8):
            f.write(b"x" * (1 << 16))  # past block_size: spooled, not sent
        assert not sfs.exists(path)
    assert sfs.cat(path) == b"x" * (8 << 16)
    # A failure while writing publishes nothing: the old version stays.
    with pytest.raises(RuntimeError), sfs.open(path, "wb") as f:
        f.write(b"half")
        raise RuntimeError("boom")
    assert sfs.info(path)["size"] == 8 << 16
    with pytest.raises(RuntimeError), sfs.open(f"{base}/never.bin", "wb") as f:
        f.write(b"half")
        raise RuntimeError("boom")
    assert not sfs.exists(f"{base}/never.bin")
    with pytest.raises(FileExistsError):
        sfs.open(path, "xb")


def test_a_file_replaced_while_open_is_stale_not_mixed(
    cluster: ProcCluster, sfs: SectorFileSystem, base: str
) -> None:
    path = f"{base}/v.bin"
    sfs.pipe(path, b"1" * (3 << 20))
    with sfs.open(path, "rb", block_size=1 << 20, cache_type="none") as f:
        assert f.read(10) == b"1" * 10
        old = sfs.info(path)
        sfs.pipe(path, b"2" * (3 << 20))  # the old version's copies are deleted now
        with cluster.connect() as c:
            args = {"blob": old["blob"], "checksum": old["checksum"]}
            wait_for(
                lambda: all(
                    c.run(c.aio.pool.call(a, "blob.verify", args))["health"] == "missing"
                    for a in old["locations"]
                ),
                20,
                what="old copies gone",
            )
        f.seek(2 << 20)
        with pytest.raises(OSError, match="replaced while open") as e:
            f.read(10)
        assert e.value.errno == errno.ESTALE
    with sfs.open(path, "rb") as f:
        f.seek(2 << 20)
        assert f.read(10) == b"2" * 10


# ---------------------------------------------------------------- what users do with it


def test_pandas_csv_parquet_and_gzip(sfs: SectorFileSystem, base: str) -> None:
    df = pd.DataFrame({"k": np.arange(5000), "v": np.linspace(0, 1, 5000), "s": ["ab"] * 5000})
    df.to_csv(f"sector://{base}/x.csv", index=False)
    pd.testing.assert_frame_equal(pd.read_csv(f"sector://{base}/x.csv"), df)
    df.to_parquet(f"sector://{base}/t/part.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(f"sector://{base}/t/part.parquet"), df)
    df.to_csv(f"sector://{base}/x.csv.gz", index=False, compression="gzip")
    pd.testing.assert_frame_equal(pd.read_csv(f"sector://{base}/x.csv.gz"), df)
    with fsspec.open(f"sector://{base}/l.txt.gz", "wt", compression="gzip") as f:
        f.write("line\n" * 1000)
    assert gzip.decompress(sfs.cat(f"{base}/l.txt.gz")) == b"line\n" * 1000
    with fsspec.open(f"sector://{base}/l.txt.gz", "rt", compression="infer") as f:
        assert f.read() == "line\n" * 1000


def _parts(sfs: SectorFileSystem, d: str, n: int = 3, rows: int = 1000) -> pd.DataFrame:
    frames = []
    for i in range(n):
        part = pd.DataFrame({"k": np.arange(rows) + i * rows, "p": i})
        part.to_parquet(f"sector://{d}/part.{i}.parquet", index=False)
        frames.append(part)
    return pd.concat(frames, ignore_index=True)


def test_pyarrow_dataset_over_a_directory(sfs: SectorFileSystem, base: str) -> None:
    want = _parts(sfs, f"{base}/ds")
    table = ds.dataset(f"{base}/ds", filesystem=sfs, format="parquet").to_table()
    assert table.num_rows == len(want)
    assert sorted(table.column("k").to_pylist()) == want["k"].tolist()


# dask's own code trips a pandas deprecation (dask's business, not ours).
@pytest.mark.filterwarnings("ignore:The inplace keyword in DataFrame.reset_index")
@pytest.mark.parametrize("scheduler", ["threads", "processes"])
def test_dask_read_parquet(sfs: SectorFileSystem, base: str, scheduler: str) -> None:
    want = _parts(sfs, f"{base}/dk")
    # "processes": forked workers (the filesystem travels pickled, reconnects there).
    with dask.config.set({"multiprocessing.context": "fork"}):
        ddf = dd.read_parquet(f"sector://{base}/dk/")
        assert ddf.npartitions == 3
        got = ddf.compute(scheduler=scheduler, num_workers=2)
    assert sorted(got["k"].tolist()) == want["k"].tolist()


def _child_reads(path: str) -> bytes:
    return _FORKED.cat(path)  # the parent's object, not a pickled copy


_FORKED: SectorFileSystem


def test_a_filesystem_pickles_without_its_connection_and_survives_fork(
    sfs: SectorFileSystem, base: str
) -> None:
    global _FORKED
    sfs.pipe(f"{base}/f.txt", b"forked")
    assert sfs.cat(f"{base}/f.txt") == b"forked"  # the parent now holds a connection
    blob = pickle.dumps(sfs)
    assert b"AsyncClient" not in blob and len(blob) < 2000
    # A fresh interpreter rebuilds it from its options alone.
    code = "import pickle,sys; fs=pickle.loads(sys.stdin.buffer.read()); print(fs.cat(sys.argv[1]))"
    res = subprocess.run(
        [sys.executable, "-c", code, f"{base}/f.txt"],
        input=blob,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0 and res.stdout.strip() == b"b'forked'", res.stderr
    # A forked child using the very object of its parent gets a connection of its own.
    _FORKED = sfs
    with multiprocessing.get_context("fork").Pool(1) as pool:
        # (bounded: a child stuck on its parent's dead loop must fail, not hang)
        assert pool.apply_async(_child_reads, (f"{base}/f.txt",)).get(60) == b"forked"
    assert sfs.cat(f"{base}/f.txt") == b"forked"  # and the parent's still works


# ---------------------------------------------------------------- ranged reads


def test_random_access_moves_the_range_not_the_file(
    cluster: ProcCluster, sfs: SectorFileSystem, base: str
) -> None:
    size = 48 << 20
    data = _put_random(sfs, f"{base}/big.bin", size)
    mib = 1 << 20
    with sfs.open(f"{base}/big.bin", "rb") as f:
        before = _bytes_out(cluster)
        f.seek(size // 2)
        assert f.read(mib) == data[size // 2 : size // 2 + mib]
        moved = _bytes_out(cluster) - before
    # The megabyte and at most one block of readahead, not the 48 MiB file.
    assert mib <= moved <= mib + f.blocksize + mib, moved

    # A parquet footer read fetches the footer, not the row groups.
    rng = np.random.default_rng(1)
    pd.DataFrame({"x": rng.random(3_000_000)}).to_parquet(
        f"sector://{base}/wide.parquet", row_group_size=500_000
    )
    psize = sfs.info(f"{base}/wide.parquet")["size"]
    assert psize > 20 << 20
    before = _bytes_out(cluster)
    with sfs.open(f"{base}/wide.parquet", "rb") as f:
        meta = pq.ParquetFile(f).metadata
    moved = _bytes_out(cluster) - before
    assert meta.num_row_groups == 6 and meta.num_rows == 3_000_000
    assert moved < 1 << 20, moved


def test_the_readme_example_runs(sfs: SectorFileSystem, capsys: pytest.CaptureFixture[str]) -> None:
    readme = Path(__file__).resolve().parents[2] / "README.md"
    m = re.search(r"## pandas, pyarrow and dask.*?```python\n(.*?)```", readme.read_text(), re.S)
    assert m is not None
    with dask.config.set(scheduler="threads"):
        exec(compile(m.group(1), "README.md", "exec"), {})  # sector:/// = SECTOR_CLUSTER
    out = capsys.readouterr().out
    assert "Kyoto" in out and "1491.0" in out and "'/demo/log.txt.gz'" in out
    assert out.rstrip().endswith("9")  # the dataset's rows


def test_credentials_come_from_sector_login_or_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sector_cli: Callable[..., Any]
) -> None:
    with ProcCluster(tmp_path / "secure", secure=True, node_args=NODE_ARGS) as sc:
        sc.start(1)
        alice = sc.token("alice", write=["/alice"])
        monkeypatch.setenv("SECTOR_HOME", str(tmp_path / "home"))
        res = sector_cli("login", alice, cluster=sc.address)
        assert res.returncode == 0, res.stderr
        # No token given: the one `sector login` stored for this cluster.
        fs = SectorFileSystem(cluster=sc.address)
        fs.pipe("/alice/a.txt", b"mine")
        assert fs.cat("/alice/a.txt") == b"mine"
        with pytest.raises(PermissionError):
            fs.pipe("/bob/b.txt", b"not mine")
        # anonymous: reads what is public, writes nothing.
        anon = SectorFileSystem(cluster=sc.address, anonymous=True)
        assert anon.cat("/alice/a.txt") == b"mine"
        with pytest.raises(PermissionError):
            anon.pipe("/alice/b.txt", b"x")
        # token=: that user's rights.
        bob = SectorFileSystem(cluster=sc.address, token=sc.token("bob", write=["/bob"]))
        bob.pipe("/bob/b.txt", b"bob's")
        with pytest.raises(PermissionError):
            bob.rm("/alice/a.txt")
