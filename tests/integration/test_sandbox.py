"""The UDF sandbox on real node processes (issue 11): what a user with the compute right
can no longer do on a node, and the limits that stop a runaway UDF.

One secure one-node cluster for the module (two engines, so two users' tasks run side
by side), with tight limits so each is reached in a moment: 512 MiB of memory, 1 CPU
second per task, 64 processes of the UDF user. The node runs as root (the suite
does), so its engines run in the ``full`` sandbox as ``sector-udf``.

Each test would pass on a node started with ``--udf-sandbox none`` only if the hole it
checks were still open: ``SECTOR_TEST_SANDBOX=none`` starts the module's node so, to
see them fail without the sandbox (the fork bomb is bounded in time and count).
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import sector
from sector.errors import JobFailed
from sector.sphere.stream import stream_udf
from sector.testing.cluster import ProcCluster, wait_for

MODE = os.environ.get("SECTOR_TEST_SANDBOX", "auto")
LIMITS = ["--udf-memory", "512M", "--udf-cpu-seconds", "1", "--udf-nproc", "64"]
NODE_ARGS = ["--engines", "2", "--udf-sandbox", MODE, *LIMITS]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the full sandbox needs a root node")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcCluster]:
    root = tmp_path_factory.mktemp("sandbox")
    with ProcCluster(root / "cl", replicas=1, secure=True, node_args=NODE_ARGS) as cl:
        cl.start(1)
        yield cl


@pytest.fixture(scope="module")
def admin(cluster: ProcCluster) -> Iterator[sector.Client]:
    with cluster.connect() as c:
        yield c


def user(cluster: ProcCluster, name: str) -> sector.Client:
    return sector.connect(
        cluster.address, token=cluster.token(name, write=[f"/{name}"], compute=True)
    )


# UDFs. Module-level: pickled by value (this test module is not installed on the nodes).


def try_read(seg: Any) -> Any:
    """What opening each path gave: its first bytes, or the error's name."""
    out = {}
    for p in seg.param:
        try:
            with open(p, "rb") as f:
                out[p] = "read:" + f.read(40).hex()
        except OSError as exc:
            out[p] = type(exc).__name__
    return json.dumps(out).encode()


def _overwrite(p: str) -> None:
    with open(p, "r+b") as f:
        f.write(b"EVIL")


def try_write(seg: Any) -> Any:
    """Every way a UDF might change a blob file; what each gave."""
    out = {}
    for p in seg.param:
        for what, fn in (
            ("write", _overwrite),
            ("truncate", lambda p: os.truncate(p, 0)),
            ("chmod", lambda p: os.chmod(p, 0o666)),
            ("unlink", os.unlink),
            ("rename", lambda p: os.rename(p, p + ".x")),
        ):
            try:
                fn(p)
                out[f"{what} {p}"] = "done"
            except OSError as exc:
                out[f"{what} {p}"] = type(exc).__name__
    return json.dumps(out).encode()


def who(seg: Any) -> Any:
    with open("/proc/self/status") as f:
        caps = [ln.split()[1] for ln in f if ln.startswith("CapEff")]
    return json.dumps(
        {"uid": os.getuid(), "euid": os.geteuid(), "groups": os.getgroups(), "caps": caps}
    ).encode()


def stay(seg: Any) -> Any:
    """gil's task: leave a secret in its own attempt directory (where its engine sees
    it, or, unsandboxed, on the node's disk), then wait (bounded) for the test to say
    go (a file the test makes there)."""
    import glob
    import time

    (mine,) = glob.glob("/tmp/sector/stage/*/a*/") or glob.glob(seg.param)
    with open(mine + "secret", "w") as f:
        f.write("GIL-SECRET")
    deadline = time.monotonic() + 60
    while not os.path.exists(mine + "go") and time.monotonic() < deadline:
        time.sleep(0.05)
    return b"done\n"


def snoop(seg: Any) -> Any:
    """hal's task: look for gil's staging every way it can think of."""
    secret, staging = seg.param
    seen = []
    for d, _dirs, files in os.walk("/tmp/sector"):
        seen += [os.path.join(d, f) for f in files]
    got = {}
    for p in (secret, staging):
        try:
            got[p] = os.listdir(p) if os.path.isdir(p) else Path(p).read_text()
        except OSError as exc:
            got[p] = type(exc).__name__
    pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    roots = {}
    for pid in pids:
        try:
            roots[pid] = os.listdir(f"/proc/{pid}/root/tmp/sector/stage")
        except OSError as exc:
            roots[pid] = type(exc).__name__
    return json.dumps({"seen": seen, "got": got, "pids": pids, "roots": roots}).encode()


def hog(seg: Any) -> Any:
    got = bytearray(1 << 30)  # 1 GiB, twice the limit (zero pages: nothing is touched)
    return b"%d\n" % len(got)


def fork_bomb(seg: Any) -> Any:
    """Start up to 10,000 processes (for at most 1.5 s; each ends by itself in 3 s)."""
    import time

    started = 0
    t0 = time.monotonic()
    while started < 10_000 and time.monotonic() - t0 < 1.5:
        if os.fork() == 0:
            time.sleep(3)
            os._exit(0)
        started += 1
    return f"started {started}\n".encode()


def spin(seg: Any) -> Any:
    import time

    t0 = time.monotonic()
    while time.monotonic() - t0 < 30:  # (bounded: a node without the limit ends it)
        pass
    return b"spun\n"


def echo(seg: Any) -> Any:
    return f"{seg.param}\n".encode()


# ---------------------------------------------------------------- helpers


def secrets_of(cluster: ProcCluster) -> list[Path]:
    """The node's key and databases: what no UDF may read."""
    data = cluster.nodes[0].data
    found = [data / "tls" / "node.key", *data.glob("*.sqlite3")]
    assert (data / "tls" / "node.key").read_bytes().startswith(b"-----BEGIN")
    return found


def served(c: sector.Client) -> None:
    """The node is up and runs jobs."""
    assert c.sphere.run(echo, tasks=[1, 2, 3]).results() == [b"1\n", b"2\n", b"3\n"]


def udf_descendants(pid: int, uid: int) -> list[int]:
    """Processes of ``uid`` below ``pid`` (the node)."""
    parent: dict[int, int] = {}
    owner: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
                parent[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
                owner[int(d.name)] = d.stat().st_uid
            except (OSError, ValueError, IndexError):
                continue
    out = []
    for p in parent:
        q = p
        while q in parent and q != pid and q > 1:
            q = parent[q]
        if q == pid and owner.get(p) == uid:
            out.append(p)
    return out


# ---------------------------------------------------------------- what a UDF cannot see


def test_a_udf_cannot_read_the_nodes_key_or_databases(cluster: ProcCluster) -> None:
    node = cluster.nodes[0]
    assert node.proc is not None
    paths = [str(p) for p in secrets_of(cluster)]
    key = str(node.data / "tls" / "node.key")
    paths += [
        f"/proc/{node.proc.pid}/root{key}",  # through the node's own root
        f"/proc/{node.proc.pid}/cwd/{os.path.relpath(key)}",
        os.path.relpath(key),  # from the working directory the node gave its engines
    ]
    with user(cluster, "ana") as c:
        (got,) = c.sphere.run(try_read, tasks=[paths]).results()
        res = json.loads(got)
        assert not [p for p, v in res.items() if v.startswith("read:")], res
        assert set(res.values()) <= {"FileNotFoundError", "PermissionError"}, res
        # The shell way: `sphere stream -c "head -c 40 .../node.key"`.
        f = Path(cluster.root) / "in.txt"
        f.write_bytes(b"line\n")
        c.put(f, "/ana/in.txt")
        cmd = f"head -c 40 {key} 2>&1; head -c 40 /proc/{node.proc.pid}/root{key} 2>&1; true"
        out = b"".join(
            c.sphere.run(
                stream_udf, "/ana/in.txt", records="lines", param={"command": cmd}
            ).results()
        )
        assert b"PRIVATE KEY" not in out and b"BEGIN" not in out, out
        assert b"No such file or directory" in out, out


def test_a_udf_runs_as_an_unprivileged_user_without_capabilities(
    cluster: ProcCluster, admin: sector.Client
) -> None:
    udf_uid = pwd.getpwnam("sector-udf").pw_uid
    with user(cluster, "bea") as c:
        (got,) = c.sphere.run(who, tasks=[0]).results()
    res = json.loads(got)
    assert res["uid"] == res["euid"] == udf_uid != os.getuid(), res
    assert res["groups"] == [] and res["caps"] == ["0000000000000000"], res
    (row,) = admin.status()["nodes"]
    assert row["sandbox"] == "full"


def test_a_udf_cannot_change_a_blob(cluster: ProcCluster, admin: sector.Client) -> None:
    data = os.urandom(4096)
    f = Path(cluster.root) / "blob.bin"
    f.write_bytes(data)
    admin.put(f, "/pub/blob.bin")
    blob = admin.stat("/pub/blob.bin")["blob"]
    disk = cluster.nodes[0].data / "blobs" / blob[:2] / blob
    inside = f"/tmp/sector/blobs/{blob[:2]}/{blob}"  # where the engine reads it
    with user(cluster, "cai") as c:
        (got,) = c.sphere.run(try_write, tasks=[[str(disk), inside]]).results()
        res = json.loads(got)
        assert "done" not in res.values(), res
        # The segment itself is readable: a job over the file sees its bytes.
        (seg,) = c.sphere.run(lambda s: bytes(s.data), "/pub/blob.bin").results()
        assert seg == data
    assert hashlib.sha256(disk.read_bytes()).digest() == hashlib.sha256(data).digest()
    assert admin.read("/pub/blob.bin") == data


def test_a_udf_cannot_reach_another_users_staging(cluster: ProcCluster) -> None:
    data = cluster.nodes[0].data
    with user(cluster, "gil") as g, user(cluster, "hal") as h:
        job = g.sphere.run(stay, tasks=[f"{data}/sphere/u/gil/*/a*/"], output="/gil/out")
        try:
            secret = wait_for(
                lambda: next(iter(data.glob("sphere/u/gil/*/a*/secret")), None),
                30,
                what="gil's task to stage its secret",
            )
            assert secret.read_text() == "GIL-SECRET"
            param = [str(secret), str(data / "sphere" / "u" / "gil")]
            (got,) = h.sphere.run(snoop, tasks=[param]).results()
            res = json.loads(got)
            assert not any("secret" in p for p in res["seen"]), res
            assert all(v == "FileNotFoundError" for v in res["got"].values()), res
            assert len(res["pids"]) <= 3, res  # pid 1, the engine, its walk: no other's
            assert job.id not in json.dumps([res["seen"], res["roots"]]), res
        finally:
            for d in data.glob("sphere/u/gil/*/a*/"):
                (d / "go").touch()
        assert job.wait(timeout=60)["files"]
        assert g.read("/gil/out/part-00000") == b"done\n"


# ---------------------------------------------------------------- limits


def test_a_memory_hog_fails_its_attempt_and_the_node_serves_on(
    cluster: ProcCluster,
) -> None:
    with user(cluster, "dan") as c:
        with pytest.raises(JobFailed, match=r"UDF exceeded its memory limit \(512\.0 MiB\)"):
            c.sphere.run(hog, tasks=[0]).results()
        served(c)
    assert cluster.nodes[0].alive


def test_a_fork_bomb_hits_the_process_limit_and_leaves_nothing(cluster: ProcCluster) -> None:
    node = cluster.nodes[0]
    assert node.proc is not None
    udf_uid = pwd.getpwnam("sector-udf").pw_uid
    with user(cluster, "eve") as c:
        with pytest.raises(JobFailed, match=r"its user may have only 64 \(--udf-nproc\)"):
            c.sphere.run(fork_bomb, tasks=[0]).results()
        # Every process the bomb started is gone at once (killed when its task ended),
        # not in 3 s: only the engines themselves are left.
        assert len(udf_descendants(node.proc.pid, udf_uid)) <= 2
        served(c)
    assert node.alive


def test_a_udf_past_its_cpu_time_fails_its_attempt(cluster: ProcCluster) -> None:
    with user(cluster, "fay") as c:
        with pytest.raises(JobFailed, match=r"UDF exceeded its CPU time limit \(1 s\)"):
            c.sphere.run(spin, tasks=[0]).results()
        served(c)
    assert cluster.nodes[0].alive
