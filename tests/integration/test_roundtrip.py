"""Round trips through a 5-node cluster of real node processes.

Bytes come back exactly as they went in (0 B to 200 MiB), each file sits on 3 distinct
nodes, names keep their Unicode and spaces, the namespace commands of the CLI do what
they say, file objects read ranges, and ``--json`` outputs carry the contract fields.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import sector
from sector.testing.cluster import ProcCluster, wait_for

MiB = 1 << 20
NODES = 5


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcCluster]:
    with ProcCluster(tmp_path_factory.mktemp("roundtrip-cluster")) as cl:
        cl.start(NODES)
        yield cl


@pytest.fixture(scope="module")
def client(cluster: ProcCluster) -> Iterator[sector.Client]:
    with sector.connect(cluster.address) as c:
        yield c


def ok(r: Any) -> bytes:
    """The stdout of a CLI run that must have succeeded."""
    assert r.returncode == 0, f"exit {r.returncode}: {r.stderr.decode(errors='replace')}"
    assert b"Traceback" not in r.stderr
    return bytes(r.stdout)


def lines(out: bytes) -> list[str]:
    return out.decode("utf-8").splitlines()


def holders(client: sector.Client, cluster: ProcCluster, blob: str) -> set[str]:
    """Addresses of the live nodes whose blob store holds ``blob`` (asked one by one)."""
    found = set()
    for addr in cluster.addresses():
        size = client._run(client._aio.pool.call(addr, "blob.has", {"blob": blob}))
        if size is not None:
            found.add(addr)
    return found


# ---------------------------------------------------------------- bytes


@pytest.mark.parametrize("size", [0, 1, MiB, 200 * MiB], ids=["0B", "1B", "1MiB", "200MiB"])
def test_put_get_round_trip_is_byte_exact(
    cluster: ProcCluster,
    client: sector.Client,
    sector_cli: Callable[..., Any],
    random_file: Callable[..., Any],
    file_sha256: Callable[[Path], str],
    tmp_path: Path,
    size: int,
) -> None:
    src = tmp_path / "src.bin"
    want = random_file(src, size)
    remote = f"/sizes/{size}.bin"

    ok(sector_cli("put", str(src), remote, cluster=cluster.address))
    src.unlink()  # the bytes that come back can only come from the cluster
    dst = tmp_path / "dst.bin"
    ok(sector_cli("get", remote, str(dst), cluster=cluster.address))

    assert dst.stat().st_size == size
    assert file_sha256(dst) == want.sha256
    st = client.stat(remote)
    assert st["type"] == "file"
    assert st["size"] == size
    assert st["checksum"] == want.blake3  # the end-to-end checksum is of the bytes we sent
    assert not list(tmp_path.glob(".*sector-part")), "a temp file of the get was left behind"


def test_tiny_files_round_trip_byte_exact_every_time(client: sector.Client, tmp_path: Path) -> None:
    """Many gets of 0-3 byte files: the data and the node's final reply frame arrive in
    one segment there, so a download that reads past the file's size would show up."""
    bad = []
    for i in range(24):
        data = os.urandom(i % 4)
        src = tmp_path / f"t{i}"
        src.write_bytes(data)
        client.put(src, f"/tiny/t{i}")
        dst = tmp_path / f"back{i}"
        try:
            client.get(f"/tiny/t{i}", dst)
        except sector.SectorError as exc:
            bad.append(f"{len(data)} B: {exc}")
            continue
        if dst.read_bytes() != data:
            bad.append(f"{len(data)} B: got {dst.read_bytes()!r}, want {data!r}")
    assert not bad, f"{len(bad)} of 24 tiny gets failed, first: {bad[0]}"


def test_stat_shows_three_replicas_on_three_distinct_nodes(
    cluster: ProcCluster, client: sector.Client, random_file: Callable[..., Any], tmp_path: Path
) -> None:
    src = tmp_path / "r.bin"
    random_file(src, MiB)
    client.put(src, "/replicas/r.bin")

    st = client.stat("/replicas/r.bin")
    reps = st["replicas"]
    assert st["rf"] == 3
    assert st["under_replicated"] is False
    assert len(reps) == 3
    assert len({r["id"] for r in reps}) == 3
    assert len({r["address"] for r in reps}) == 3
    by_addr = {n.address: n.node_id for n in cluster.nodes if n.alive}
    for r in reps:
        assert r["state"] == "up"
        assert by_addr.get(r["address"]) == r["id"], f"{r} is not a node of the cluster"
    # What stat says is what the nodes hold: the blob is on exactly those three nodes.
    assert holders(client, cluster, st["blob"]) == {r["address"] for r in reps}


# ---------------------------------------------------------------- names


def test_unicode_and_spaces_in_names_survive_every_command(
    cluster: ProcCluster, sector_cli: Callable[..., Any], tmp_path: Path
) -> None:
    addr = cluster.address
    remote_dir = "/données/été 2026"
    name = "naïve file ✓.txt"
    remote = f"{remote_dir}/{name}"
    data = "Ünïcödé ✓ contents\n".encode() + os.urandom(1000)
    src = tmp_path / "plain.txt"
    src.write_bytes(data)

    ok(sector_cli("put", str(src), remote, cluster=addr))

    assert lines(ok(sector_cli("ls", "/données", cluster=addr))) == ["été 2026/"]
    assert lines(ok(sector_cli("ls", remote_dir, cluster=addr))) == [name]
    assert ok(sector_cli("cat", remote, cluster=addr)) == data
    st = json.loads(ok(sector_cli("stat", "--json", remote, cluster=addr)))
    assert st["path"] == remote
    assert st["size"] == len(data)

    # Into a local directory: the local file takes the remote name, unchanged.
    out = tmp_path / "out"
    out.mkdir()
    ok(sector_cli("get", remote, str(out), cluster=addr))
    assert (out / name).read_bytes() == data


def test_cat_writes_the_exact_bytes(
    cluster: ProcCluster, client: sector.Client, sector_cli: Callable[..., Any], tmp_path: Path
) -> None:
    data = os.urandom(3 * MiB + 7)  # several chunks of `cat`, not a multiple of any
    src = tmp_path / "c.bin"
    src.write_bytes(data)
    client.put(src, "/cat/c.bin")
    assert ok(sector_cli("cat", "/cat/c.bin", cluster=cluster.address)) == data


# ---------------------------------------------------------------- namespace


def test_mkdir_p_creates_every_level_and_is_idempotent(
    cluster: ProcCluster, client: sector.Client, sector_cli: Callable[..., Any]
) -> None:
    addr = cluster.address
    ok(sector_cli("mkdir", "-p", "/mk/a/b/c", cluster=addr))
    ok(sector_cli("mkdir", "-p", "/mk/a/b/c", cluster=addr))  # exists: no error
    assert lines(ok(sector_cli("ls", "/mk", cluster=addr))) == ["a/"]
    assert lines(ok(sector_cli("ls", "/mk/a", cluster=addr))) == ["b/"]
    assert lines(ok(sector_cli("ls", "/mk/a/b", cluster=addr))) == ["c/"]
    assert lines(ok(sector_cli("ls", "/mk/a/b/c", cluster=addr))) == []
    assert client.stat("/mk/a/b/c")["type"] == "dir"
    ok(sector_cli("mkdir", "/mk/single", cluster=addr))
    assert sorted(lines(ok(sector_cli("ls", "/mk", cluster=addr)))) == ["a/", "single/"]


def test_ls_lists_files_and_directories(
    cluster: ProcCluster, client: sector.Client, tmp_path: Path, sector_cli: Callable[..., Any]
) -> None:
    addr = cluster.address
    src = tmp_path / "f"
    src.write_bytes(b"12345")
    for n in ("b.txt", "a.txt", "c d.txt"):
        client.put(src, f"/lsdir/{n}")
    client.mkdir("/lsdir/sub")
    assert lines(ok(sector_cli("ls", "/lsdir", cluster=addr))) == [
        "a.txt",
        "b.txt",
        "c d.txt",
        "sub/",
    ]
    long = lines(ok(sector_cli("ls", "-l", "/lsdir", cluster=addr)))
    assert len(long) == 4
    assert long[0].endswith(" a.txt") and "5 B" in long[0] and "3/3" in long[0]
    assert long[3].startswith("d") and long[3].endswith(" sub/")
    # `ls FILE` lists the file itself, like ls(1).
    assert lines(ok(sector_cli("ls", "/lsdir/a.txt", cluster=addr))) == ["a.txt"]


def test_mv_renames_a_file(
    cluster: ProcCluster, client: sector.Client, sector_cli: Callable[..., Any], tmp_path: Path
) -> None:
    addr = cluster.address
    data = os.urandom(4096)
    src = tmp_path / "f"
    src.write_bytes(data)
    client.put(src, "/mvf/old name.bin")
    client.mkdir("/mvf/into")

    ok(sector_cli("mv", "/mvf/old name.bin", "/mvf/new name.bin", cluster=addr))
    assert not client.exists("/mvf/old name.bin")
    assert ok(sector_cli("cat", "/mvf/new name.bin", cluster=addr)) == data

    # Onto an existing directory: moved into it, like mv(1).
    ok(sector_cli("mv", "/mvf/new name.bin", "/mvf/into", cluster=addr))
    assert not client.exists("/mvf/new name.bin")
    assert lines(ok(sector_cli("ls", "/mvf/into", cluster=addr))) == ["new name.bin"]
    assert client.read("/mvf/into/new name.bin") == data
    assert lines(ok(sector_cli("ls", "/mvf", cluster=addr))) == ["into/"]


def test_mv_moves_a_directory_with_its_contents(
    cluster: ProcCluster, client: sector.Client, sector_cli: Callable[..., Any], tmp_path: Path
) -> None:
    addr = cluster.address
    contents = {}
    for rel in ("top.txt", "sub/one.txt", "sub/deeper/two.txt"):
        data = os.urandom(2000)
        p = tmp_path / rel.replace("/", "_")
        p.write_bytes(data)
        client.put(p, f"/mvd/src/{rel}")
        contents[rel] = data

    ok(sector_cli("mv", "/mvd/src", "/mvd/dst", cluster=addr))

    assert not client.exists("/mvd/src")
    assert not client.exists("/mvd/src/sub/one.txt")
    assert lines(ok(sector_cli("ls", "/mvd", cluster=addr))) == ["dst/"]
    assert lines(ok(sector_cli("ls", "/mvd/dst", cluster=addr))) == ["sub/", "top.txt"]
    assert lines(ok(sector_cli("ls", "/mvd/dst/sub", cluster=addr))) == ["deeper/", "one.txt"]
    for rel, data in contents.items():
        assert client.read(f"/mvd/dst/{rel}") == data


def test_rm_removes_a_file_and_its_replicas(
    cluster: ProcCluster, client: sector.Client, sector_cli: Callable[..., Any], tmp_path: Path
) -> None:
    addr = cluster.address
    src = tmp_path / "f"
    src.write_bytes(os.urandom(1000))
    client.put(src, "/rmf/gone.bin")
    client.put(src, "/rmf/kept.bin")
    blob = client.stat("/rmf/gone.bin")["blob"]

    ok(sector_cli("rm", "/rmf/gone.bin", cluster=addr))

    assert not client.exists("/rmf/gone.bin")
    assert lines(ok(sector_cli("ls", "/rmf", cluster=addr))) == ["kept.bin"]
    # The space comes back: the replicas drop the blob (in the background).
    wait_for(lambda: not holders(client, cluster, blob), 15, what="replicas to drop the blob")
    assert client.read("/rmf/kept.bin") == src.read_bytes()


def test_rm_of_a_renamed_file_drops_its_replicas_at_once(
    cluster: ProcCluster, client: sector.Client, tmp_path: Path
) -> None:
    """A renamed file's holders know its blob by the new name alone once the rename is
    done, so removing it deletes the copies now, not after the collector's grace
    (600 s here): a job's output, renamed out of staging, used to linger on disk."""
    src = tmp_path / "f"
    src.write_bytes(os.urandom(5000))
    client.put(src, "/rmmv/a.bin")
    client.mv("/rmmv/a.bin", "/rmmv/b.bin")
    client.mkdir("/rmmv/d")
    client.mv("/rmmv/b.bin", "/rmmv/d/c.bin")  # twice, the second into a directory
    client.mv("/rmmv/d", "/rmmv/e")  # and with its directory
    st = client.stat("/rmmv/e/c.bin")
    assert holders(client, cluster, st["blob"]) == {r["address"] for r in st["replicas"]}
    client.rm("/rmmv", recursive=True)
    wait_for(lambda: not holders(client, cluster, st["blob"]), 15, what="replicas to drop the blob")


def test_rm_r_removes_a_whole_tree(
    cluster: ProcCluster, client: sector.Client, sector_cli: Callable[..., Any], tmp_path: Path
) -> None:
    addr = cluster.address
    src = tmp_path / "f"
    src.write_bytes(b"x" * 100)
    for rel in ("a.txt", "d1/b.txt", "d1/d2/c.txt"):
        client.put(src, f"/rmr/tree/{rel}")
    client.mkdir("/rmr/tree/empty")
    client.mkdir("/rmr/other")

    ok(sector_cli("rm", "-r", "/rmr/tree", cluster=addr))

    for p in ("/rmr/tree", "/rmr/tree/a.txt", "/rmr/tree/d1", "/rmr/tree/d1/d2/c.txt"):
        assert not client.exists(p), f"{p} survived rm -r"
    assert lines(ok(sector_cli("ls", "/rmr", cluster=addr))) == ["other/"]
    # The name is free again, as a file or as a directory.
    client.put(src, "/rmr/tree/a.txt")
    assert client.read("/rmr/tree/a.txt") == src.read_bytes()


def test_a_tree_of_small_files_goes_up_comes_back_and_goes(
    cluster: ProcCluster, client: sector.Client, sector_cli: Callable[..., Any], tmp_path: Path
) -> None:
    """put -r / get -r / rm -r of many small files (issue 17): pipelined, every file
    and empty directory there, byte for byte, small files read inline; rm -r empties
    each directory in batches and leaves nothing, not even an entry."""
    addr = cluster.address
    src = tmp_path / "tree"
    want: dict[str, bytes] = {}
    for i in range(240):
        rel = f"d{i % 3}/s{i % 2}/f{i:03d}" if i % 4 else f"top{i:03d}"
        want[rel] = os.urandom(i * 37 % 5000)
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(want[rel])
    (src / "empty" / "deeper").mkdir(parents=True)

    out = json.loads(
        ok(sector_cli("put", "-r", "-j", "16", "--json", str(src), "/many", cluster=addr))
    )
    assert len(out["files"]) == len(want)
    assert {f["path"] for f in out["files"]} == {f"/many/{r}" for r in want}
    assert client.stat("/many/empty/deeper")["type"] == "dir"

    got = json.loads(
        ok(sector_cli("get", "-r", "--json", "/many", str(tmp_path / "back"), cluster=addr))
    )
    assert len(got["files"]) == len(want)
    assert all(f["transfer"].get("inline") for f in got["files"])  # blob.get_small
    for rel, data in want.items():
        assert (tmp_path / "back" / rel).read_bytes() == data, rel
    assert (tmp_path / "back" / "empty" / "deeper").is_dir()

    blob = client.stat("/many/d1/s1/f001")["blob"]
    assert json.loads(ok(sector_cli("rm", "-r", "--json", "/many", cluster=addr)))["removed"] == (
        len(want) + 12  # and the directories: /many, d0-2, their 6 s0-1, empty, deeper
    )
    assert not client.exists("/many")
    assert "many" not in {e["name"] for e in client.ls("/")}
    wait_for(lambda: not holders(client, cluster, blob), 15, what="replicas to drop a blob")


# ---------------------------------------------------------------- file objects


def test_open_reads_ranges(client: sector.Client, tmp_path: Path) -> None:
    data = os.urandom(9 * MiB + 123)  # past the 4 MiB read-ahead, more than once
    src = tmp_path / "ranges.bin"
    src.write_bytes(data)
    client.put(src, "/ranges/r.bin")

    with client.open("/ranges/r.bin", "rb") as f:
        assert f.read(10) == data[:10]
        assert f.tell() == 10
        for off, n in [(0, 1), (4 * MiB - 5, 10), (5 * MiB, 3 * MiB), (len(data) - 7, 100)]:
            f.seek(off)
            assert f.read(n) == data[off : off + n], (off, n)
        f.seek(-50, io.SEEK_END)
        assert f.read() == data[-50:]
        assert f.read(10) == b""  # at end of file
        f.seek(len(data) + 10)
        assert f.read(5) == b""  # past the end of file
        f.seek(0)
        assert f.read() == data

    assert client.read("/ranges/r.bin", 1000, 5000) == data[1000:6000]
    assert client.read("/ranges/r.bin", len(data) - 3, 100) == data[-3:]


# ---------------------------------------------------------------- --json contract


def test_json_outputs_carry_the_contract_fields(
    cluster: ProcCluster, client: sector.Client, sector_cli: Callable[..., Any], tmp_path: Path
) -> None:
    addr = cluster.address
    src = tmp_path / "j.bin"
    src.write_bytes(os.urandom(777))
    client.put(src, "/jsn/j.bin")
    client.mkdir("/jsn/sub")

    entries = json.loads(ok(sector_cli("ls", "--json", "/jsn", cluster=addr)))
    assert isinstance(entries, list)
    by_name = {e["name"]: e for e in entries}
    assert set(by_name) == {"j.bin", "sub"}
    assert by_name["j.bin"]["path"] == "/jsn/j.bin"
    assert by_name["j.bin"]["type"] == "file"
    assert by_name["j.bin"]["size"] == 777
    assert by_name["sub"]["path"] == "/jsn/sub"
    assert by_name["sub"]["type"] == "dir"
    assert isinstance(by_name["sub"]["size"], int)
    # --json before the command means the same.
    assert json.loads(ok(sector_cli("--json", "ls", "/jsn", cluster=addr))) == entries

    st = json.loads(ok(sector_cli("stat", "--json", "/jsn/j.bin", cluster=addr)))
    assert st["path"] == "/jsn/j.bin"
    assert st["type"] == "file"
    assert st["size"] == 777
    assert st["checksum"] == client.stat("/jsn/j.bin")["checksum"]
    assert st["checksum"].startswith("blake3:")
    assert isinstance(st["replicas"], list) and len(st["replicas"]) == 3
    for r in st["replicas"]:
        assert {"id", "address", "state"} <= set(r)
    dst = json.loads(ok(sector_cli("stat", "--json", "/jsn/sub", cluster=addr)))
    assert dst["path"] == "/jsn/sub" and dst["type"] == "dir"

    status = json.loads(ok(sector_cli("status", "--json", cluster=addr)))
    procs = {n.address: n for n in cluster.nodes if n.alive}
    assert {n["address"] for n in status["nodes"]} == set(procs)
    for n in status["nodes"]:
        proc = procs[n["address"]]
        assert n["id"] == proc.node_id
        assert proc.proc is not None and n["pid"] == proc.proc.pid
        assert n["state"] == "up"
        assert isinstance(n["topology"], str)
        assert isinstance(n["bytes_used"], int) and n["bytes_used"] >= 0
        assert isinstance(n["bytes_free"], int) and n["bytes_free"] > 0
    assert isinstance(status["files"], int) and status["files"] >= 1
    assert status["under_replicated"] == 0


# ---------------------------------------------------------------- background workers

LOOPS = {
    "repair",
    "repair-scan",
    "repair-audit",
    "scrub",
    "gc",
    "sphere",
    "meta-sync",
    "chord.stabilize",
    "chord.fix-fingers",
    "chord.check-predecessor",
    "chord.merge-probe",
    "gossip",
    "tombstones",
}


def test_status_workers_lists_every_loop_of_every_node(
    cluster: ProcCluster, sector_cli: Any
) -> None:
    """Every background loop of a node reports in one shape: name, state, runs, errors,
    last error (issue 10); the ring's and gossip's loops visibly run."""
    addr = cluster.address

    def every_loop_ran() -> bool:
        st = json.loads(ok(sector_cli("status", "--workers", "--json", cluster=addr)))
        for n in st["nodes"]:
            ws = {w["name"]: w for w in n["workers"]}
            assert set(ws) >= LOOPS, LOOPS - set(ws)
            for w in ws.values():
                assert {"state", "runs", "errors", "last_error"} <= set(w), w
            if min(ws[x]["runs"] for x in ("chord.stabilize", "gossip", "meta-sync")) < 1:
                return False
        return len(st["nodes"]) == NODES

    wait_for(every_loop_ran, 30, what="every node's ring, gossip and sync loops to run")
    text = ok(sector_cli("status", "--workers", cluster=addr)).decode()
    for name in LOOPS:
        assert f" {name}: " in text, name
