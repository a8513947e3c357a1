"""`sector mount` with the real kernel FUSE module over real node processes.

One 2-node cluster per module (per xdist worker) and one mount of it, started with the
real command (`sector mount`, which returns once the mount is usable); each test works
under a directory of its own. Programs act on the mount point as on any directory
(``cp``, ``cmp``, ``ls``, ``mv``, ``rm -r``, ``tar``, ``df``, ``python``), and what
they did is checked through the Sector client too. The fault tests use clusters and
mounts of their own: a cluster SIGKILLed under a mount (EIO in bounded time, then
recovery when its node comes back on the same port) and a mount process SIGKILLed or
SIGTERMed (the mount point is released, waited for with a deadline).

Needs /dev/fuse and fusermount3 (`make test` installs fuse3 when it is missing).
"""

from __future__ import annotations

import contextlib
import errno
import filecmp
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import sector
from sector.mount.daemon import mounts
from sector.testing.cluster import ProcCluster, wait_for

pytestmark = pytest.mark.skipif(
    not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None,
    reason="needs /dev/fuse and fusermount3 (apt-get install fuse3; `make test` does)",
)

NODE_ARGS = ["--engines", "1"]


@dataclass
class Mount:
    path: Path
    pid: int
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _mounted(path: Path) -> bool:
    return str(path) in mounts()


def do_mount(address: str, mp: Path, *args: str, env: dict[str, str] | None = None) -> Mount:
    mp.mkdir(parents=True, exist_ok=True)
    cache = mp.parent / f"{mp.name}.cache"
    cmd = [sys.executable, "-m", "sector", "--cluster", address, "--json", "mount", str(mp)]
    res = subprocess.run(
        [*cmd, "--cache", str(cache), *args],
        capture_output=True,
        text=True,
        timeout=90,
        env={**os.environ, **(env or {})},
        check=False,
    )
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert _mounted(mp)  # `sector mount` returned: the mount is there, and usable
    return Mount(mp, int(info["pid"]), Path(info["log"]))


def do_umount(m: Mount) -> None:
    if _mounted(m.path):
        subprocess.run(["fusermount3", "-uz", str(m.path)], capture_output=True, check=False)
    with contextlib.suppress(TimeoutError):
        wait_for(lambda: _gone(m.pid), 10, what="the mount process to exit")
    if not _gone(m.pid):
        os.kill(m.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcCluster]:
    with ProcCluster(tmp_path_factory.mktemp("mount-cl"), replicas=2, node_args=NODE_ARGS) as cl:
        cl.start(2)
        yield cl


@pytest.fixture(scope="module")
def client(cluster: ProcCluster) -> Iterator[sector.Client]:
    with cluster.connect() as c:
        yield c


@pytest.fixture(scope="module")
def mnt(cluster: ProcCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mount]:
    m = do_mount(cluster.address, tmp_path_factory.mktemp("mnt") / "sector")
    yield m
    do_umount(m)


@pytest.fixture
def area(mnt: Mount, client: sector.Client, request: pytest.FixtureRequest) -> tuple[Path, str]:
    """A directory of this test's own: (its path in the mount, its Sector path)."""
    remote = "/" + request.node.name.replace("[", "_").replace("]", "")
    client.mkdir(remote, parents=True)
    return mnt.path / remote[1:], remote


def run(*cmd: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False, **kw)  # type: ignore[call-overload, no-any-return]


# ---------------------------------------------------------------- round trips


def test_cp_in_cmp_out_ls_mv_rm(
    area: tuple[Path, str], client: sector.Client, tmp_path: Path, random_file: Callable
) -> None:
    d, remote = area
    src = tmp_path / "data.bin"
    random_file(src, 9 << 20)  # a few blocks of the cache, and a partial last one
    assert run("cp", str(src), str(d / "data.bin")).returncode == 0
    assert run("cmp", str(src), str(d / "data.bin")).returncode == 0
    # It is a Sector file: the client reads the same bytes.
    assert client.read(f"{remote}/data.bin") == src.read_bytes()
    ls = run("ls", "-l", str(d))
    assert ls.returncode == 0 and "data.bin" in ls.stdout and str(9 << 20) in ls.stdout

    assert run("mv", str(d / "data.bin"), str(d / "moved.bin")).returncode == 0
    assert not (d / "data.bin").exists()
    assert client.exists(f"{remote}/moved.bin") and not client.exists(f"{remote}/data.bin")
    assert run("cmp", str(src), str(d / "moved.bin")).returncode == 0

    tree = d / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    for i, sub in enumerate(("", "a", "a/b")):
        (tree / sub / f"f{i}.txt").write_text(f"file {i}\n" * 100)
    assert run("cp", "-r", str(tree), str(d / "tree2")).returncode == 0
    assert (d / "tree2" / "a" / "b" / "f2.txt").read_text() == "file 2\n" * 100
    assert run("rm", "-r", str(tree), str(d / "tree2")).returncode == 0
    assert not tree.exists() and not client.exists(f"{remote}/tree2")
    assert sorted(p.name for p in d.iterdir()) == ["moved.bin"]


def test_in_place_writes_are_refused_and_logged(
    area: tuple[Path, str], client: sector.Client, mnt: Mount
) -> None:
    d, remote = area
    f = d / "keep.txt"
    f.write_bytes(b"original\n")
    for flags in (os.O_WRONLY, os.O_RDWR, os.O_WRONLY | os.O_APPEND):
        with pytest.raises(OSError) as info:
            os.close(os.open(f, flags))
        assert info.value.errno == errno.EPERM
    with pytest.raises(OSError) as info:
        os.truncate(f, 3)
    assert info.value.errno == errno.EPERM
    sh = run("sh", "-c", f"echo more >> '{f}'")
    assert sh.returncode != 0 and "not permitted" in sh.stderr
    assert client.read(f"{remote}/keep.txt") == b"original\n"  # nothing was lost or half done
    assert f"refused (EPERM): open {remote}/keep.txt for writing in place" in mnt.log_text()
    assert f"refused (EPERM): open {remote}/keep.txt for appending" in mnt.log_text()

    # Replacing the file whole (O_TRUNC, what `>` and cp do) is Sector's model: allowed.
    f.write_bytes(b"replaced\n")
    assert client.read(f"{remote}/keep.txt") == b"replaced\n"


def test_truncate_of_a_file_being_written(area: tuple[Path, str], client: sector.Client) -> None:
    d, remote = area
    fd = os.open(d / "t.bin", os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    try:
        os.write(fd, b"x" * 1000)
        os.ftruncate(fd, 10)
        assert os.stat(d / "t.bin").st_size == 10  # seen while it is still being written
        os.truncate(d / "t.bin", 5)  # by path, too
        os.write(fd, b"y")  # the offset is 1000: a hole up to it
    finally:
        os.close(fd)
    assert client.read(f"{remote}/t.bin") == b"x" * 5 + b"\0" * 995 + b"y"


def test_reads_are_lazy(
    area: tuple[Path, str], client: sector.Client, mnt: Mount, tmp_path: Path
) -> None:
    """Reading the head of a file fetches its first blocks, not the file; reading it
    all fetches the rest (the cache holds blocks by blob and index)."""
    d, remote = area
    src = tmp_path / "five.bin"
    src.write_bytes(os.urandom(18 << 20))  # 5 blocks of 4 MiB, the last one partial
    client.put(str(src), f"{remote}/five.bin")
    blob = client.stat(f"{remote}/five.bin")["blob"]
    blocks = next((mnt.path.parent / f"{mnt.path.name}.cache").glob("blocks-*"))

    def cached() -> set[int]:
        return {int(p.name.rsplit(".", 1)[1]) for p in blocks.glob(f"{blob}.*")}

    # A block is handed to the reader first and written to the cache just after.
    with open(d / "five.bin", "rb") as f:
        assert f.read(100) == src.read_bytes()[:100]
    wait_for(lambda: 0 in cached(), 10, what="block 0 in the cache")
    assert cached() <= {0, 1}  # block 0, perhaps 1 read ahead
    assert (d / "five.bin").read_bytes() == src.read_bytes()
    wait_for(lambda: cached() == {0, 1, 2, 3, 4}, 10, what="every block in the cache")


def test_a_replaced_file_is_read_afresh(area: tuple[Path, str], client: sector.Client) -> None:
    """Cached blocks are keyed by blob: a new version of the same size never shows old bytes."""
    d, remote = area
    (d / "v.bin").write_bytes(b"a" * 100_000)
    assert (d / "v.bin").read_bytes() == b"a" * 100_000  # now in the cache and page cache
    local = d.parent.parent / f"{d.name}-v2.bin"
    local.write_bytes(b"b" * 100_000)
    client.put(str(local), f"{remote}/v.bin")  # replaced by another client
    wait_for(lambda: (d / "v.bin").read_bytes() == b"b" * 100_000, 10, what="the new version")


def test_tar_of_a_tree_in_and_out(area: tuple[Path, str], tmp_path: Path) -> None:
    d, _ = area
    src = tmp_path / "src"
    for i in range(4):
        sub = src / f"dir{i}" / "deeper"
        sub.mkdir(parents=True)
        for j in range(4):
            (sub.parent / f"f{j}.txt").write_bytes(os.urandom(j * 7000))
        (sub / "empty").write_bytes(b"")
    (src / "big.bin").write_bytes(os.urandom(5 << 20))
    archive = tmp_path / "t.tar"
    with tarfile.open(archive, "w") as t:
        t.add(src, arcname=".")
    assert run("tar", "-C", str(d), "-xf", str(archive)).returncode == 0
    cmp = filecmp.dircmp(src, d)
    assert _same_tree(cmp), f"differ: {cmp.diff_files} only: {cmp.left_only} {cmp.right_only}"
    back = tmp_path / "back"
    back.mkdir()
    out = run("sh", "-c", f"tar -C '{d}' -cf - . | tar -C '{back}' -xf -")
    assert out.returncode == 0, out.stderr
    assert _same_tree(filecmp.dircmp(src, back))


def _same_tree(c: filecmp.dircmp[str]) -> bool:
    _, mismatch, errors = filecmp.cmpfiles(c.left, c.right, c.common_files, shallow=False)
    if c.left_only or c.right_only or mismatch or errors:
        return False
    return all(_same_tree(s) for s in c.subdirs.values())


def test_a_python_package_imports_from_the_mount(
    area: tuple[Path, str], client: sector.Client, tmp_path: Path
) -> None:
    d, remote = area
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from .calc import answer\n")
    (pkg / "calc.py").write_text("def answer():\n    return 6 * 7\n")
    client.mkdir(f"{remote}/pkg")
    for f in pkg.iterdir():
        client.put(str(f), f"{remote}/pkg/{f.name}")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    code = "import pkg; print(pkg.answer(), pkg.__file__)"
    for _ in range(2):  # the second run reads the bytecode the first one wrote there
        out = run(sys.executable, "-c", code, env={**env, "PYTHONPATH": str(d)}, cwd="/")
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["42", str(d / "pkg" / "__init__.py")]
    assert any(e["name"] == "__pycache__" for e in client.ls(f"{remote}/pkg"))


def test_df_shows_the_cluster(mnt: Mount, client: sector.Client) -> None:
    out = run("df", "-B1", "--output=source,size,avail", str(mnt.path))
    assert out.returncode == 0, out.stderr
    source, size, avail = out.stdout.splitlines()[1].split()
    assert source == f"sector:{client.address}" or source.startswith("sector:")
    nodes = [n for n in client.status()["nodes"] if n["state"] == "up"]
    total = sum(n["bytes_used"] + n["bytes_free"] for n in nodes)
    assert abs(int(size) - total) < total * 0.05 and 0 < int(avail) <= int(size)


def test_mount_and_umount_errors_are_one_line(
    mnt: Mount, cluster: ProcCluster, tmp_path: Path, sector_cli: Callable
) -> None:
    cases = [
        (("mount", str(tmp_path / "missing")), "no such directory"),
        (("mount", str(mnt.path)), "already a mount point"),
        (("umount", str(tmp_path)), "is not mounted"),
    ]
    for args, words in cases:
        res = sector_cli(*args, cluster=cluster.address)
        err = res.stderr.decode()
        assert res.returncode == 1 and words in err and err.count("\n") == 1, err
    dead = tmp_path / "dead"
    dead.mkdir()
    res = sector_cli("mount", str(dead), cluster="127.0.0.1:1")
    assert res.returncode == 1 and res.stderr.decode().count("\n") == 1
    assert not _mounted(dead)


# ---------------------------------------------------------------- faults


def test_a_lost_cluster_gives_eio_then_recovers(tmp_path: Path, random_file: Callable) -> None:
    with ProcCluster(tmp_path / "cl", replicas=1, node_args=NODE_ARGS) as cl:
        node = cl.add()
        with cl.connect() as c:
            for name in ("seen", "unseen"):
                random_file(tmp_path / name, 300_000)
                c.put(str(tmp_path / name), f"/{name}")
        m = do_mount(node.address, tmp_path / "m", "--timeout", "3")
        try:
            seen = open(m.path / "seen", "rb")  # noqa: SIM115 - open across the outage
            assert seen.read() == (tmp_path / "seen").read_bytes()
            fd = os.open(m.path / "written", os.O_CREAT | os.O_WRONLY | os.O_TRUNC)
            os.write(fd, b"not stored yet")

            # A node that hangs (stopped, its sockets open): bounded by --timeout, not a hang.
            assert node.proc is not None
            node.proc.send_signal(signal.SIGSTOP)
            t0 = time.monotonic()
            with pytest.raises(OSError) as info:
                (m.path / "unseen").stat()
            assert info.value.errno == errno.EIO and time.monotonic() - t0 < 8
            node.proc.send_signal(signal.SIGCONT)
            wait_for(lambda: (m.path / "unseen").stat().st_size == 300_000, 20, what="no hang")

            cl.kill(node)
            t0 = time.monotonic()
            with pytest.raises(OSError) as info:
                (m.path / "unseen").read_bytes()
            assert info.value.errno == errno.EIO and time.monotonic() - t0 < 8
            with pytest.raises(OSError) as info:
                os.close(fd)  # the put on close fails: close says so
            assert info.value.errno == errno.EIO
            assert "cannot store /written" in m.log_text()
            # A file opened before goes on reading what it had read (a new open must ask
            # the cluster for the current version, and gets EIO).
            seen.seek(0)
            assert seen.read() == (tmp_path / "seen").read_bytes()
            seen.close()

            # The node comes back on the same port: the mount works again.
            node.args[node.args.index("--listen") + 1] = node.address
            cl._launch(node)
            cl._wait_ready(node)
            want = (tmp_path / "unseen").read_bytes()
            wait_for(lambda: (m.path / "unseen").read_bytes() == want, 30, what="recovery")
            (m.path / "after").write_bytes(b"stored")
            assert c_read(node.address, "/after") == b"stored"
        finally:
            do_umount(m)


def c_read(address: str, path: str) -> bytes:
    with sector.connect(address) as c:
        return c.read(path)


def _fuse_holders(m: Mount) -> str:
    """What keeps a mount alive after its process was killed, for the failure message:
    the processes holding /dev/fuse, the fusermount3 helpers, the mount's log."""
    held = []
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        with contextlib.suppress(OSError):
            if any(os.readlink(fd) == "/dev/fuse" for fd in fd_dir.iterdir()):
                cmd = (fd_dir.parent / "cmdline").read_bytes().replace(b"\0", b" ")
                held.append(f"{fd_dir.parent.name}: {cmd.decode(errors='replace')[:200]}")
    ps = subprocess.run(["ps", "-eo", "pid,ppid,stat,args"], capture_output=True, text=True)
    helpers = [ln for ln in ps.stdout.splitlines() if "fusermount" in ln]
    log = m.log.read_text(errors="replace")[-2000:] if m.log.exists() else "(no log)"
    return f"/dev/fuse held by: {held}\nfusermount3: {helpers}\nmount log tail:\n{log}"


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_mount_leaves_no_stale_mount_point(
    cluster: ProcCluster, tmp_path: Path, sig: signal.Signals
) -> None:
    m = do_mount(cluster.address, tmp_path / "m")
    try:
        assert (m.path / "..").exists()
        os.kill(m.pid, sig)
        try:
            wait_for(lambda: not _mounted(m.path), 30, what="the mount point to be released")
        except TimeoutError as exc:  # a rare flake in CI: say what held it
            raise AssertionError(f"{exc}\n{_fuse_holders(m)}") from None
        assert list(m.path.iterdir()) == []  # a plain empty directory again, not ENOTCONN
        wait_for(lambda: _gone(m.pid), 10, what="the mount process to exit")
    finally:
        do_umount(m)


def test_a_foreground_mount_serves_until_ctrl_c(cluster: ProcCluster, tmp_path: Path) -> None:
    mp = tmp_path / "fg"
    mp.mkdir()
    cmd = [sys.executable, "-m", "sector", "--cluster", cluster.address, "mount", "--foreground"]
    proc = subprocess.Popen(
        [*cmd, str(mp), "--cache", str(tmp_path / "c")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: _mounted(mp) or proc.poll() is not None, 30, what="the mount")
        assert _mounted(mp)
        (mp / "fg.txt").write_text("in the foreground\n")
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0 and b"unmounted" in out
        assert not _mounted(mp)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        subprocess.run(["fusermount3", "-uz", str(mp)], capture_output=True, check=False)
    with cluster.connect() as c:
        assert c.read("/fg.txt") == b"in the foreground\n"


# ---------------------------------------------------------------- security


def test_anonymous_mount_is_read_only_and_a_credential_is_held_to_its_grant(
    tmp_path: Path,
) -> None:
    with ProcCluster(tmp_path / "cl", replicas=1, secure=True, node_args=NODE_ARGS) as cl:
        node = cl.add()
        with cl.connect() as admin:
            admin.mkdir("/pub")
            admin.mkdir("/alice")
            (tmp_path / "a.txt").write_bytes(b"public\n")
            admin.put(str(tmp_path / "a.txt"), "/pub/a.txt")
        anon = do_mount(node.address, tmp_path / "anon", "--anonymous")
        alice = do_mount(
            node.address,
            tmp_path / "alice",
            env={"SECTOR_TOKEN": cl.token("alice", write=["/alice"])},
        )
        try:
            assert (anon.path / "pub" / "a.txt").read_bytes() == b"public\n"
            for attempt in (
                lambda: (anon.path / "pub" / "new").write_bytes(b"x"),
                lambda: (anon.path / "pub" / "d").mkdir(),
                lambda: (anon.path / "pub" / "a.txt").unlink(),
            ):
                with pytest.raises(OSError) as info:
                    attempt()
                assert info.value.errno == errno.EROFS

            (alice.path / "alice" / "mine.txt").write_bytes(b"hers\n")
            assert (anon.path / "alice" / "mine.txt").read_bytes() == b"hers\n"
            with pytest.raises(OSError) as info:
                (alice.path / "pub" / "theirs.txt").write_bytes(b"x")
            assert info.value.errno == errno.EACCES
            assert "alice may write only under /alice" in alice.log_text()
        finally:
            do_umount(anon)
            do_umount(alice)


def test_a_busy_file_is_read_through_the_local_nodes_swarm(
    tmp_path: Path, random_file: Callable
) -> None:
    """A file two other readers want now is read through the mount's node (its swarm
    cache), not from the replica: the node's swarm counters show it."""
    with ProcCluster(tmp_path / "cl", replicas=1, node_args=NODE_ARGS) as cl:
        cl.start(2)
        with cl.connect() as c:
            for i in range(8):  # a file on one node: the mount goes through the other
                random_file(tmp_path / "src", 3 << 20)
                st = c.put(str(tmp_path / "src"), f"/busy{i}.bin")
                holder = st["replicas"][0]["address"]
                if holder != cl.nodes[1].address:
                    break
            mine = next(n.address for n in cl.nodes if n.address != holder)
            for reader in ("other-1", "other-2"):  # two readers elsewhere, right now
                args = {"path": st["path"], "blob": st["blob"], "reader": reader}
                c._run(c._aio.pool.call(mine, "swarm.want", args))
            before = c._run(c._aio.pool.call(mine, "node.info", {}))["swarm"]
            # (the mount daemon starts in /: it must import this checkout's sector)
            here = {"PYTHONPATH": str(Path(__file__).resolve().parents[2])}
            m = do_mount(mine, tmp_path / "m", env=here)
            try:
                got = run("cmp", str(tmp_path / "src"), str(m.path / st["path"][1:]))
                assert got.returncode == 0, got.stdout + got.stderr
            finally:
                do_umount(m)
            after = c._run(c._aio.pool.call(mine, "node.info", {}))["swarm"]
            assert after["local_gets"] > before["local_gets"]
            assert after["bytes_from_holders"] - before["bytes_from_holders"] >= 3 << 20
            assert after["local_get_bytes"] - before["local_get_bytes"] >= 3 << 20
