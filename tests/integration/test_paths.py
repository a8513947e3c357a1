"""Nothing is read or written outside a node's data directory (issue 5), on real node
processes: namespace paths, blob ids, and symlinks planted in a data directory.

- Namespace paths with '..', '.', NUL, control characters, lone surrogates, relative or
  over-long ones are refused with InvalidPath naming the fault: by the client before
  anything is sent, and by the nodes when raw messages bypass the client. Empty
  segments are normalised ("/a//b" is "/a/b"), never a name of their own.
- Blob ids that are not exactly 32 lower-case hex digits ('../../x', '/etc/passwd',
  NUL, a trailing newline, wrong length or type) are refused with BadRequest by every
  ``blob.*`` handler.
- A symlink in a data directory is never followed. One planted where a blob is, aimed
  at a secret file of the same size, reads as a missing copy: reads fail over to
  another replica, ``blob.verify`` and ``stat(verify=True)`` say "missing", and the
  owner's repair replaces the link (not the secret) with a real copy. One planted as
  a fan-out directory (``blobs/ee``) is never written through, read through or
  deleted through. A node whose ``blobs/`` is a symlink refuses to start.
- Around every test, everything next to the data directories (a sentinel directory,
  the secret, a decoy directory) is snapshotted: it must not change.

Sphere's staging paths (job ids with '..', commit paths outside the job's staging
directory) are covered by test_sphere_input.py; here only a job id with a trailing
newline, which its ``^...$`` pattern lets through.

Some tests here are bugs this file found (a delete with one bad id, a job id with a
trailing newline), kept as regression tests now that they are fixed.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import sector
from sector.errors import BadRequest, InvalidPath, NoSpace, NotFound, SectorError
from sector.storage.blobs import checksum_of
from sector.testing.cluster import NodeProc, ProcCluster, wait_for
from sector.transport.rpc import RpcPool

CALL_TIMEOUT = 10.0
# Scrubs and audits only when a test asks: a background pass must not race the checks.
NODE_ARGS = ["--scrub-interval", "3600", "--audit-interval", "3600"]
SECRET = b"TOP SECRET, never to be served by a node\n" * 7000  # 287 KiB: a bulk blob
DECOY_ID = "ee" + "0" * 30  # a valid blob id, of a file outside every data directory
DECOY = b"decoy: outside the data directory\n"


@dataclass(frozen=True)
class Outside:
    """What lies next to the nodes' data directories."""

    root: Path  # the cluster's directory: node-0, node-1, node-2 and the rest
    secret: Path
    decoy_dir: Path


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> Outside:
    root = tmp_path_factory.mktemp("paths")
    (root / "sentinel").mkdir()  # stays empty
    (root / "outside").mkdir()
    secret = root / "outside" / "secret.bin"
    secret.write_bytes(SECRET)
    decoy_dir = root / "outside" / "decoy"
    decoy_dir.mkdir()
    (decoy_dir / DECOY_ID).write_bytes(DECOY)
    return Outside(root, secret, decoy_dir)


@pytest.fixture(scope="module")
def cluster(outside: Outside) -> Iterator[ProcCluster]:
    with ProcCluster(outside.root, replicas=3, node_args=NODE_ARGS) as cl:
        cl.start(3)
        yield cl


@pytest.fixture(scope="module")
def client(cluster: ProcCluster) -> Iterator[sector.Client]:
    with sector.connect(cluster.address) as c:
        yield c


@pytest.fixture(scope="module")
def tree(client: sector.Client, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Files the refused requests must leave alone."""
    local = tmp_path_factory.mktemp("paths-tree") / "x"
    files = {"/paths/f.txt": b"a file\n", "/paths/d/inside.txt": b"keep me\n"}
    for remote, data in files.items():
        local.write_bytes(data)
        client.put(local, remote)
    return files


def snapshot_outside(outside: Outside) -> dict[str, tuple[Any, ...]]:
    """Every entry under the cluster's directory except the data directories: kind,
    size, mtime and content hash (symlinks are not followed)."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(outside.root):
        here = Path(dirpath)
        if here == outside.root:
            dirnames[:] = [d for d in dirnames if not d.startswith("node-")]
        for name in dirnames + filenames:
            p = here / name
            st = p.lstat()
            digest = hashlib.sha256(p.read_bytes()).hexdigest() if stat.S_ISREG(st.st_mode) else ""
            rel = str(p.relative_to(outside.root))
            out[rel] = (stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns, digest)
    return out


@pytest.fixture(autouse=True)
def nothing_changes_outside(outside: Outside) -> Iterator[None]:
    before = snapshot_outside(outside)
    assert "sentinel" in before and "outside/secret.bin" in before
    yield
    assert snapshot_outside(outside) == before, "something changed next to the data dirs"
    assert outside.secret.read_bytes() == SECRET
    assert not any((outside.root / "sentinel").iterdir())


# ---------------------------------------------------------------- helpers


def calls(addr: str, requests: list[tuple[str, dict[str, Any], bytes | None]]) -> list[Any]:
    """Each request on a connection of its own (a node closes one after a BadRequest):
    ``(op, args, None)`` a call, ``(op, args, data)`` a bulk request sending ``data``.
    The reply, or the SectorError it raised."""

    async def one(pool: RpcPool, op: str, args: dict[str, Any], data: bytes | None) -> Any:
        if data is None:
            return await pool.call(addr, op, args)
        chan = await pool.open_bulk(addr, op, args, stall_timeout=CALL_TIMEOUT)
        try:
            if data:
                try:
                    await chan.write(data)
                except SectorError:
                    pass  # refused before the data: the reply says why
            return await chan.read_reply()
        finally:
            await chan.close()

    async def go() -> list[Any]:
        out = []
        for op, args, data in requests:
            pool = RpcPool(timeout=CALL_TIMEOUT)
            try:
                out.append(await one(pool, op, args, data))
            except SectorError as exc:
                out.append(exc)
            finally:
                await pool.close()
        return out

    return asyncio.run(go())


def rpc(addr: str, op: str, args: dict[str, Any], data: bytes | None = None) -> Any:
    (got,) = calls(addr, [(op, args, data)])
    if isinstance(got, SectorError):
        raise got
    return got


def assert_all_refused(
    addr: str,
    requests: list[tuple[str, str, dict[str, Any], bytes | None]],
    want: type[SectorError],
    words: Callable[[str], str] = lambda name: "",
) -> None:
    """Every ``(case, op, args, data)`` fails with exactly ``want``, in one line that
    contains ``words(case)``; reports every case that did not."""
    got = calls(addr, [(op, args, data) for _, op, args, data in requests])
    wrong = []
    for (case, op, _, _), r in zip(requests, got, strict=True):
        if not isinstance(r, SectorError):
            wrong.append(f"[{op} {case}] accepted: {r!r:.200}")
        elif type(r) is not want or "\n" in str(r) or words(case) not in str(r):
            wrong.append(f"[{op} {case}] {type(r).__name__}: {r!s:.200}")
    assert not wrong, f"{len(wrong)} of {len(requests)}:\n" + "\n".join(wrong)


def walk(c: sector.Client, path: str = "/") -> dict[str, tuple[Any, ...]]:
    """The whole namespace under ``path``: type, size and checksum of every entry."""
    out: dict[str, tuple[Any, ...]] = {}
    for e in c.ls(path):
        if e["type"] == "dir":
            out[e["path"]] = ("dir",)
            out.update(walk(c, e["path"]))
        else:
            out[e["path"]] = ("file", e["size"], c.stat(e["path"])["checksum"])
    return out


def blobs_on(n: NodeProc) -> set[str]:
    return {p.name for p in (n.data / "blobs").glob("*/*")}


def parts_on(n: NodeProc) -> set[str]:
    return {p.name for p in (n.data / "tmp").iterdir()}


def node_by_id(cluster: ProcCluster, nid: str) -> NodeProc:
    return next(n for n in cluster.nodes if n.node_id == nid)


# ---------------------------------------------------------------- namespace paths

BAD_PATHS: dict[str, tuple[str, str]] = {
    # case: (path, words of the error)
    "dotdot": ("/paths/../etc/passwd", "'..' segments"),
    "leading dotdot": ("/../../etc/passwd", "'..' segments"),
    "trailing dotdot": ("/paths/d/..", "'..' segments"),
    "dot": ("/paths/./f.txt", "'.' segments"),
    "NUL": ("/paths/f.txt\x00.png", "NUL"),
    "newline": ("/paths/a\nb", "control character"),
    "lone surrogate": ("/paths/\udc80", "surrogate"),
    "relative": ("paths/f.txt", "not absolute"),
    "relative dotdot": ("../../etc/passwd", "not absolute"),
    "empty": ("", "not absolute"),
    "long name": ("/paths/" + "n" * 300, "longer than 255"),
    "long path": ("/" + "/".join(["d" * 200] * 30), "longer than 4096"),
    "huge path": ("/" + "x" * 100_000, "longer than 4096"),
}
BAD_NAMES: dict[str, tuple[str, str]] = {
    "dotdot": ("..", "not allowed"),
    "dot": (".", "not allowed"),
    "slash": ("a/../../b", "contains '/'"),
    "NUL": ("a\x00b", "NUL"),
    "long": ("n" * 300, "longer than 255"),
}


def test_bad_paths_are_refused_by_the_client_before_anything_is_sent(
    client: sector.Client, tree: dict[str, bytes], tmp_path: Path
) -> None:
    local = tmp_path / "local.txt"
    local.write_bytes(b"local\n")
    before = walk(client)
    ops: dict[str, Callable[[str], Any]] = {
        "stat": lambda p: client.stat(p),
        "stat --verify": lambda p: client.stat(p, verify=True),
        "exists": lambda p: client.exists(p),
        "ls": lambda p: client.ls(p),
        "mkdir": lambda p: client.mkdir(p, parents=True),
        "rm": lambda p: client.rm(p, recursive=True),
        "mv from": lambda p: client.mv(p, "/paths/moved"),
        "mv to": lambda p: client.mv("/paths/f.txt", p),
        "put": lambda p: client.put(local, p),
        "get": lambda p: client.get(p, tmp_path / "out"),
        "read": lambda p: client.read(p),
    }
    wrong = []
    for case, (path, words) in BAD_PATHS.items():
        for name, op in ops.items():
            try:
                op(path)
            except InvalidPath as exc:
                if words not in str(exc) or "\n" in str(exc):
                    wrong.append(f"[{name} {case}] {exc}")
                continue
            except Exception as exc:
                wrong.append(f"[{name} {case}] {type(exc).__name__}: {exc!s:.200}")
                continue
            wrong.append(f"[{name} {case}] accepted")
    assert not wrong, "\n".join(wrong)
    assert walk(client) == before
    for path, data in tree.items():
        assert client.read(path) == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["local.txt"]


def test_bad_paths_in_raw_messages_are_refused_by_the_nodes(
    cluster: ProcCluster, client: sector.Client, tree: dict[str, bytes]
) -> None:
    """The same paths with the client's checks bypassed: every node checks them."""
    blob = client.stat("/paths/f.txt")["blob"]
    before = walk(client)
    requests: list[tuple[str, str, dict[str, Any], bytes | None]] = []
    for case, (p, _) in BAD_PATHS.items():
        if case == "lone surrogate":
            continue  # not UTF-8: no msgpack string can carry it (the fuzz test sends such)
        for op, args in [
            ("fs.stat", {"path": p}),
            ("fs.ls", {"path": p}),
            ("fs.mkdir", {"path": p, "parents": True}),
            ("fs.rm", {"path": p, "recursive": True}),
            ("fs.mv", {"src": p, "dst": "/paths/moved"}),
            ("fs.mv", {"src": "/paths/f.txt", "dst": p}),
            ("fs.setrf", {"path": p, "rf": 2}),
            ("fs.begin_put", {"path": p, "size": 3}),
            (
                "fs.commit_put",
                {
                    "path": p,
                    "blob": blob,
                    "size": 7,
                    "checksum": checksum_of(b"a file\n"),
                    "replicas": [[cluster.nodes[0].node_id, cluster.nodes[0].address]],
                },
            ),
        ]:
            requests.append((case, op, args, None))
    for n in cluster.nodes:
        assert_all_refused(n.address, requests, InvalidPath, lambda case: BAD_PATHS[case][1])
    # A put "into /paths" under a bad name (the client's cp form).
    named = [
        (case, "fs.begin_put", {"path": "/paths", "size": 3, "name": name}, None)
        for case, (name, _) in BAD_NAMES.items()
    ]
    assert_all_refused(cluster.address, named, InvalidPath, lambda case: BAD_NAMES[case][1])
    assert walk(client) == before
    for path, data in tree.items():
        assert client.read(path) == data


def test_empty_segments_are_normalised_not_names(
    cluster: ProcCluster, client: sector.Client, tree: dict[str, bytes], tmp_path: Path
) -> None:
    assert client.stat("//paths///f.txt")["path"] == "/paths/f.txt"
    assert client.ls("/paths//d/") == client.ls("/paths/d")
    assert rpc(cluster.address, "fs.stat", {"path": "//paths//f.txt/"})["path"] == "/paths/f.txt"
    client.mkdir("//paths//made//")
    local = tmp_path / "x"
    local.write_bytes(b"normalised\n")
    assert client.put(local, "/paths//made///x.txt")["path"] == "/paths/made/x.txt"
    assert walk(client, "/paths/made") == {
        "/paths/made/x.txt": ("file", 11, checksum_of(b"normalised\n"))
    }
    assert "" not in {e["name"] for e in client.ls("/paths")}
    client.rm("/paths//made", recursive=True)
    assert not client.exists("/paths/made")


# ---------------------------------------------------------------- blob ids

BAD_IDS: dict[str, Any] = {
    "dotdot": "../../x",
    "absolute": "/etc/passwd",
    "fan-out dotdot": "ab/../../..",
    "fan-out slash": "ab/" + "0" * 29,
    "dots": "." * 32,
    "short": "a" * 31,
    "long": "a" * 33,
    "upper case": "A" * 32,
    "NUL": "a" * 31 + "\x00",
    "all NUL": "\x00" * 32,
    "trailing newline": "a" * 32 + "\n",
    "empty": "",
    "int": 5,
    "none": None,
    "bytes": b"a" * 32,
    "list": ["a" * 32],
}


def test_raw_blob_ops_refuse_what_is_not_a_blob_id(
    cluster: ProcCluster, client: sector.Client, tree: dict[str, bytes]
) -> None:
    real = client.stat("/paths/f.txt")
    ids = {**BAD_IDS, "real id then dotdot": real["blob"] + "/../../../etc/passwd"}
    good_sum = checksum_of(b"abc")
    requests: list[tuple[str, str, dict[str, Any], bytes | None]] = []
    for case, b in ids.items():
        requests += [
            (case, "blob.get", {"blob": b}, b""),
            (case, "blob.get", {"blob": b, "offset": 0, "length": 10}, b""),
            # The header alone: refused at once, before the bytes it announces (sending
            # them anyway can meet the node's close as a reset and lose its reply).
            (case, "blob.put", {"blob": b, "size": 3, "checksum": None, "chain": []}, b""),
            (case, "blob.put_small", {"blob": b, "data": b"abc", "checksum": good_sum}, None),
            (case, "blob.verify", {"blob": b, "checksum": good_sum}, None),
            (case, "blob.delete", {"blobs": [b]}, None),
            (case, "blob.delete", {"blobs": [b, real["blob"]], "path": "/paths/f.txt"}, None),
            (case, "blob.has", {"blob": b}, None),
            (case, "blob.missing", {"blobs": [b]}, None),
            (
                case,
                "blob.replicate",
                {"blob": b, "size": 3, "checksum": good_sum, "targets": []},
                None,
            ),
            (case, "blob.alias", {"blob": b, "path": "/paths/f.txt"}, None),
        ]
    before_blobs = {n.index: blobs_on(n) for n in cluster.nodes}
    before_parts = {n.index: parts_on(n) for n in cluster.nodes}
    before = walk(client)
    for n in cluster.nodes:
        assert_all_refused(n.address, requests, BadRequest, lambda case: "invalid blob id")
    assert {n.index: blobs_on(n) for n in cluster.nodes} == before_blobs
    assert {n.index: parts_on(n) for n in cluster.nodes} == before_parts
    assert walk(client) == before
    assert client.read("/paths/f.txt") == tree["/paths/f.txt"]  # "delete" spared it
    for n in cluster.nodes:
        assert n.alive


def test_a_delete_with_one_bad_id_deletes_nothing(
    cluster: ProcCluster, client: sector.Client, tmp_path: Path
) -> None:
    local = tmp_path / "x"
    local.write_bytes(b"one bad id spoils the request\n")
    st = client.put(local, "/paths/del/x.txt")
    holder = node_by_id(cluster, st["replicas"][0]["id"])
    with pytest.raises(BadRequest, match="invalid blob id"):
        rpc(holder.address, "blob.delete", {"blobs": [st["blob"], "../../x"]})
    assert st["blob"] in blobs_on(holder), "the valid id before the bad one was deleted"


# ---------------------------------------------------------------- planted symlinks


def test_a_symlink_where_a_blob_was_is_never_followed(
    cluster: ProcCluster, client: sector.Client, outside: Outside, tmp_path: Path
) -> None:
    data = os.urandom(len(SECRET))  # the same size: only the bytes could tell them apart
    local = tmp_path / "victim.bin"
    local.write_bytes(data)
    st = client.put(local, "/paths/sym/victim.bin")
    blob = st["blob"]
    holder = node_by_id(cluster, st["replicas"][1]["id"])
    copy = holder.data / "blobs" / blob[:2] / blob
    copy.unlink()
    copy.symlink_to(outside.secret)

    # The holder itself: the link is no blob, and its target is never opened.
    with pytest.raises(NotFound):
        rpc(holder.address, "blob.get", {"blob": blob}, b"")
    with pytest.raises(NotFound):
        rpc(holder.address, "blob.get", {"blob": blob, "offset": 100, "length": 50}, b"")
    assert rpc(holder.address, "blob.has", {"blob": blob}) is None
    assert rpc(holder.address, "blob.missing", {"blobs": [blob]}) == {"missing": [blob]}
    assert rpc(holder.address, "blob.verify", {"blob": blob, "checksum": checksum_of(SECRET)}) == {
        "health": "missing"
    }
    scrub = rpc(holder.address, "scrub.now", {})
    assert scrub["progress"] == 100.0 and not scrub["last_error"], scrub
    assert copy.is_symlink() and outside.secret.read_bytes() == SECRET
    with pytest.raises(NotFound):
        rpc(
            holder.address,
            "blob.replicate",
            {
                "blob": blob,
                "size": len(SECRET),
                "checksum": st["checksum"],
                "targets": [[cluster.nodes[0].node_id, cluster.nodes[0].address]],
            },
        )

    # The client: verify names the bad copy (and reports it), reads fail over past it.
    health = {
        r["id"]: r["health"] for r in client.stat("/paths/sym/victim.bin", verify=True)["replicas"]
    }
    assert health == {
        r["id"]: "missing" if r["id"] == holder.node_id else "ok" for r in st["replicas"]
    }
    for _ in range(6):
        assert client.read("/paths/sym/victim.bin") == data
    client.get("/paths/sym/victim.bin", tmp_path / "got.bin")
    assert (tmp_path / "got.bin").read_bytes() == data

    # The owner's repair puts a real copy back on the holder: in place of the link, not
    # through it.
    def healed() -> bool:
        now = client.stat("/paths/sym/victim.bin")
        ids = {r["id"] for r in now["replicas"] if r["state"] == "up"}
        return (
            holder.node_id in ids
            and len(ids) == 3
            and not copy.is_symlink()
            and copy.read_bytes() == data
        )

    wait_for(healed, 60, interval=0.3, what="the linked copy replaced by a real one")
    assert outside.secret.read_bytes() == SECRET
    assert client.stat("/paths/sym/victim.bin", verify=True)["under_replicated"] is False
    log = holder.log.read_text(errors="replace")
    assert "treated as missing" in log
    assert "Traceback" not in log, log[-3000:]


def test_a_symlinked_fanout_dir_is_never_read_written_or_deleted_through(
    cluster: ProcCluster, client: sector.Client, outside: Outside, tmp_path: Path
) -> None:
    holder, other = cluster.nodes[2], cluster.nodes[0]
    fanout = holder.data / "blobs" / "ee"
    aside = holder.data / "ee.aside"
    if fanout.exists():  # a blob of another test landed there: keep it, out of the way
        fanout.rename(aside)
    fanout.symlink_to(outside.decoy_dir, target_is_directory=True)
    new = "ee" + uuid.uuid4().hex[2:]
    data = b"must not land outside\n" * 100
    try:
        # The decoy outside, named like a blob under the linked directory: not served,
        # not verified, not deleted.
        with pytest.raises(NotFound):
            rpc(holder.address, "blob.get", {"blob": DECOY_ID}, b"")
        assert rpc(holder.address, "blob.has", {"blob": DECOY_ID}) is None
        verify = {"blob": DECOY_ID, "checksum": checksum_of(DECOY)}
        assert rpc(holder.address, "blob.verify", verify) == {"health": "missing"}
        assert rpc(holder.address, "blob.delete", {"blobs": [DECOY_ID]}) == 0
        # New blobs under the linked directory are refused, small and bulk.
        with pytest.raises(NoSpace, match="not a directory"):
            small = {"blob": new, "data": data, "checksum": checksum_of(data), "chain": []}
            rpc(holder.address, "blob.put_small", small)
        with pytest.raises(NoSpace, match="not a directory"):
            args = {"blob": new, "size": len(data), "checksum": None, "chain": []}
            rpc(holder.address, "blob.put", args, data)
        assert not any(p.name.startswith(new) for p in (holder.data / "tmp").iterdir())
        # A chain through the holder goes on without it.
        chained = {
            "blob": new,
            "data": data,
            "checksum": checksum_of(data),
            "chain": [[holder.node_id, holder.address]],
        }
        rep = rpc(other.address, "blob.put_small", chained)
        assert rep["stored"] == [[other.node_id, other.address]]
        assert rpc(other.address, "blob.delete", {"blobs": [new]}) == 1  # the orphan
        assert sorted(p.name for p in outside.decoy_dir.iterdir()) == [DECOY_ID]
        log = holder.log.read_text(errors="replace")
        assert "no blob is written through it" in log
        assert "Traceback" not in log, log[-3000:]
    finally:
        fanout.unlink()
        if aside.exists():
            aside.rename(fanout)
    # The node goes on as before once its directory is its own again.
    local = tmp_path / "after.bin"
    local.write_bytes(data)
    client.put(local, "/paths/after-fanout.bin")
    assert client.read("/paths/after-fanout.bin") == data
    client.rm("/paths/after-fanout.bin")


def test_a_node_whose_blob_dir_is_a_symlink_refuses_to_start(
    outside: Outside, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "blobs").symlink_to(outside.root / "sentinel", target_is_directory=True)
    r = subprocess.run(
        [sys.executable, "-m", "sector", "node", "--data", str(data), "--listen", "127.0.0.1:0"],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )
    out = (r.stdout + r.stderr).decode(errors="replace")
    assert r.returncode == 1, out
    assert "Traceback" not in out
    assert "cannot start node" in out and "not a symlink" in out, out
    assert not (data / "node.json").exists()


def test_a_job_id_with_a_trailing_newline_is_refused(cluster: ProcCluster) -> None:
    job = "abcdef0123456789\n"
    assert_all_refused(
        cluster.address,
        [
            ("poll", "sphere.poll", {"job": job, "ack": [], "wait": 0}, None),
            ("cleanup", "sphere.cleanup", {"job": job}, None),
        ],
        BadRequest,
        lambda case: "job",
    )
