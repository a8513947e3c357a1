"""The UDF sandbox's decisions (``sector.sphere.sandbox``, ``sector.node.sandbox``), and
the ``userns`` mode of ``sector.sphere.jail`` in a real engine process.

The ``full`` mode is checked on real nodes (``tests/integration/test_sandbox.py``); the
``userns`` mode is meant for nodes not running as root, which this suite cannot start
(its Python lives under /root here): a root test process asks for it instead, and its
engines drop to the UDF user before they make the user namespace, as a root node would.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import pwd
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sector.config import NodeConfig
from sector.errors import UsageError
from sector.node import sandbox as node_sandbox
from sector.node.engines import EnginePool
from sector.node.sandbox import Setup, default_limits, own_dir, udf_identity
from sector.sphere import spe
from sector.sphere.sandbox import (
    INSIDE,
    Limits,
    Spec,
    binds,
    check_spec,
    cpu_hard,
    cpu_soft,
    death,
    failure_message,
    modes_to_try,
    mount_plan,
    reach_pairs,
    retire,
    temp_code,
    translate,
)
from sector.sphere.udf import pickle_udf

DATA = "/srv/sector/n0"


def spec(**kw: Any) -> Spec:
    base: dict[str, Any] = {"mode": "full", "uid": 999, "gid": 999, "user": "u", "data": DATA}
    return Spec(**{**base, **kw})


# ---------------------------------------------------------------- the view


def test_modes_strongest_first_and_full_only_for_root() -> None:
    assert modes_to_try("auto", 0) == ("full", "userns", "none")
    assert modes_to_try("auto", 1000) == ("userns", "none")
    assert modes_to_try("userns", 0) == ("userns",)
    with pytest.raises(ValueError, match="auto, full, userns or none"):
        modes_to_try("chroot", 0)


def test_mount_plan_covers_then_binds_and_ends_read_only() -> None:
    s = spec(
        hide=(f"{DATA}/tls", "/etc/sector", "/tmp/sector-home"),
        shared=("/srv/shared",),
        stage=f"{DATA}/sphere/u/ana",
        reach=(("/root", "/root/.pyenv/3.11"),),
    )
    plan = mount_plan(s)
    assert plan[0] == ("private", "/")
    kinds = [p[0] for p in plan]
    # The installation under /root first, then what is hidden (a hidden path may lie
    # in a bind), the private tmpfs, the given directories, and INSIDE made read-only.
    assert plan[1:5] == [
        ("tmpfs", "/root", "mode=0755,size=64k"),
        ("mkdir", "/root/.pyenv/3.11"),
        ("bind", "/root/.pyenv/3.11", "/root/.pyenv/3.11", "ro", "optional"),
        ("ro", "/root"),
    ]
    hides = [p[1] for p in plan if p[0] == "hide"]
    assert hides == ["/etc/sector", DATA]  # tls is in DATA; /tmp is a tmpfs of its own
    assert kinds.index("hide") < kinds.index("tmpfs", 5)
    assert ("bind", f"{DATA}/blobs", f"{INSIDE}/blobs", "ro") in plan
    assert ("bind", f"{DATA}/sphere/cache", f"{INSIDE}/cache", "ro") in plan
    assert ("bind", f"{DATA}/sphere/u/ana", f"{INSIDE}/stage", "rw") in plan
    assert ("bind", "/srv/shared", "/srv/shared", "rw") in plan
    assert plan[-1] == ("ro", INSIDE)
    # No staging at all for an engine that serves no user yet (the probe).
    assert not any(p[0] == "bind" and p[2] == f"{INSIDE}/stage" for p in mount_plan(spec()))


def test_a_spec_that_would_undo_itself_is_refused() -> None:
    for shared in (f"{DATA}/blobs", "/srv", f"{INSIDE}/x", "relative"):
        with pytest.raises(ValueError, match="--udf-bind"):
            check_spec(spec(shared=(shared,)))
    with pytest.raises(ValueError, match="--udf-bind"):
        check_spec(spec(hide=("/etc/keys",), shared=("/etc",)))
    with pytest.raises(ValueError, match="--udf-memory must be at least"):
        check_spec(spec(limits=Limits(memory=1 << 20)))
    check_spec(spec(shared=("/srv/shared",), limits=Limits(memory=1 << 30)))


def test_task_paths_are_rewritten_into_the_view() -> None:
    where = binds(spec(stage=f"{DATA}/sphere/u/ana"))
    task = {
        "file": f"{DATA}/blobs/ab/abcd",
        "cached": f"{DATA}/sphere/cache/abcd",
        "out": f"{DATA}/sphere/u/ana/j1/a0",
        "parts": [f"{DATA}/sphere/u/ana/j1/recv/b0.a1", "/elsewhere/x"],
        "near": f"{DATA}/blobsX/ab",  # a sibling with the same prefix is not inside
        "n": 3,
    }
    assert translate(task, where) == {
        "file": f"{INSIDE}/blobs/ab/abcd",
        "cached": f"{INSIDE}/cache/abcd",
        "out": f"{INSIDE}/stage/j1/a0",
        "parts": [f"{INSIDE}/stage/j1/recv/b0.a1", "/elsewhere/x"],
        "near": f"{DATA}/blobsX/ab",
        "n": 3,
    }
    assert translate(7, where) == 7


def test_python_below_a_closed_directory_is_reached_through_a_cover() -> None:
    closed = {"/root", "/home/op/.local"}

    def enterable(d: str) -> bool:
        return d not in closed

    got = reach_pairs(
        [
            "/root/.pyenv/versions/3.11",
            "/root/.pyenv/versions/3.11/lib/python3.11",  # inside the one above
            "/usr/lib/python3.11",  # reachable as it is
            "/home/op/.local/lib/site",
            "/tmp/venv",  # /tmp is the UDFs' own
            "",
        ],
        enterable,
    )
    assert got == [
        ("/root", "/root/.pyenv/versions/3.11"),
        ("/home/op/.local", "/home/op/.local/lib/site"),
    ]


def test_code_in_a_temporary_directory_is_bound_back_unless_it_would_show_a_secret() -> None:
    got = temp_code(
        [
            "/tmp/ci/.venv/lib/python3.11/site-packages",
            "/tmp/ci",  # a clean checkout under /tmp: holds the one above
            "/tmp",  # the tmpfs itself
            "/var/tmp/lib",
            "/tmp/run",  # holds a node's data directory: never shown
            "/tmp/run/node-0/data/lib",  # in it
            "/tmp/sector/x",  # the view's own
            "/usr/lib/python3.11",  # not temporary: there as it is
            "",
        ],
        hidden=["/tmp/run/node-0/data"],
    )
    assert got == ["/tmp/ci", "/var/tmp/lib"]
    spec = Spec(mode="full", uid=1, gid=1, user="u", data="/d", code=tuple(got))
    plan = mount_plan(spec)
    tmpfs = plan.index(("tmpfs", "/tmp", "mode=1777,size=25%"))
    bind = plan.index(("bind", "/tmp/ci", "/tmp/ci", "ro", "optional"))
    assert tmpfs < plan.index(("mkdir", "/tmp/ci")) < bind  # into the fresh /tmp


# ---------------------------------------------------------------- limits and messages


def test_cpu_allowance_per_task_under_a_fixed_hard_limit() -> None:
    assert cpu_hard(600) == 1205
    assert cpu_soft(0.3, 600) == 601
    assert cpu_soft(1000, 600) == 1205  # never past the hard limit
    assert not retire(599.5, 600)  # 600 + 1 + 600 <= 1205: the next task has its all
    assert retire(605.0, 600)
    assert not retire(10_000, 0)  # no limit


def test_a_limits_failure_is_said_plainly() -> None:
    lim = Limits(memory=512 << 20, cpu=2, nproc=64)
    msg = failure_message("the UDF raised MemoryError: ", lim)
    assert msg is not None and msg.startswith("UDF exceeded its memory limit (512.0 MiB)")
    msg = failure_message("the reduce raised BlockingIOError: [Errno 11] ...", lim)
    assert msg is not None and "its user may have only 64 (--udf-nproc)" in msg
    assert failure_message("the UDF raised KeyError: 'x'", lim) is None
    assert failure_message("the UDF raised MemoryError: ", Limits()) is None
    assert death(-signal.SIGXCPU, lim) == ("UDF exceeded its CPU time limit (2 s)", False)
    why, retry = death(-signal.SIGKILL, lim)
    assert retry and "SIGKILL" in why and "CPU time limit (2 s)" in why
    assert death(3, lim) == ("the engine process exited with code 3 (did the UDF exit?)", True)
    assert (
        death(-signal.SIGSEGV, lim)[0] == "the engine process died of SIGSEGV (did the UDF crash?)"
    )


def test_default_limits_share_the_ram_out() -> None:
    cfg = NodeConfig(data=Path("/d"))
    lim = default_limits(cfg, engines=4, ram=16 << 30, cores=4)
    assert lim == Limits(memory=3 << 30, cpu=600, nofile=4096, nproc=256 + 4 * 20)
    assert default_limits(cfg, engines=8, ram=2 << 30, cores=8).memory == 1 << 30  # floor
    cfg = NodeConfig(data=Path("/d"), udf_memory=5 << 30, udf_nproc=99, udf_cpu_seconds=7)
    assert default_limits(cfg, engines=4, ram=16 << 30, cores=4) == Limits(
        memory=5 << 30, cpu=7, nofile=4096, nproc=99
    )


# ---------------------------------------------------------------- the UDF user


def _pw(name: str, uid: int) -> pwd.struct_passwd:
    return pwd.struct_passwd((name, "x", uid, uid, "", "/nonexistent", "/usr/sbin/nologin"))


def test_the_udf_user_is_made_once_or_nobody_is_used() -> None:
    users = {"nobody": _pw("nobody", 65534)}

    def lookup(name: str) -> pwd.struct_passwd:
        return users[name]

    def create(name: str) -> None:
        users[name] = _pw(name, 990)

    assert udf_identity("sector-udf", euid=0, lookup=lookup, create=create)[:3] == (
        990,
        990,
        "sector-udf",
    )
    assert udf_identity("sector-udf", euid=0, lookup=lookup, create=create)[3] == ""

    def broken(name: str) -> None:
        raise OSError("useradd: not found")

    del users["sector-udf"]
    uid, _, name, note = udf_identity("sector-udf", euid=0, lookup=lookup, create=broken)
    assert (uid, name) == (65534, "nobody") and "useradd: not found" in note
    with pytest.raises(UsageError, match="--udf-user alice: no such user"):
        udf_identity("alice", euid=0, lookup=lookup, create=create)
    users["toor"] = _pw("toor", 0)
    with pytest.raises(UsageError, match="is root"):
        udf_identity("toor", euid=0, lookup=lookup)
    me = os.geteuid()
    if me != 0:
        assert udf_identity("sector-udf", euid=me)[0] == me  # cannot change uid


def test_no_sandbox_is_a_warning_and_the_status_says_none(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = NodeConfig(data=tmp_path, udf_sandbox="none")
    with caplog.at_level(logging.WARNING, logger="sector.sphere"):
        setup = node_sandbox.prepare(cfg, tmp_path, 2)
    assert setup.mode == "none"
    assert any("UDFs run unsandboxed" in r.getMessage() for r in caplog.records)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_a_directory_an_engine_writes_is_the_udf_users(tmp_path: Path) -> None:
    s = spec(uid=4321, gid=4321)
    own_dir(tmp_path / "a0", s)
    st = (tmp_path / "a0").stat()
    assert (st.st_uid, st.st_gid) == (4321, 4321)
    (tmp_path / "link").symlink_to("/etc")
    with pytest.raises(OSError, match="not a directory"):
        own_dir(tmp_path / "link", s)
    assert Path("/etc").stat().st_uid == 0  # not followed


# ---------------------------------------------------------------- userns, for real


def peek(seg: Any) -> Any:
    """What the UDF is, and sees (``os`` only: in this mode it may import nothing new)."""
    key, blob = seg.param
    out = [f"uid={os.getuid()}", f"pids={sorted(os.listdir('/proc'))[:4]}"]
    for p in (key, blob):
        try:
            with open(p, "rb") as f:
                out.append(f"read {f.read(6)!r}")
        except OSError as exc:
            out.append(type(exc).__name__)
    try:
        with open(f"{INSIDE}/blobs/ab/{'ab' * 16}", "r+b") as f:
            f.write(b"EVIL")
        out.append("wrote")
    except OSError as exc:
        out.append(type(exc).__name__)
    out.append(",".join(sorted(os.listdir(f"{INSIDE}/stage"))))
    return " ".join(out).encode()


@pytest.fixture
def data() -> Iterator[Path]:
    """A data directory the UDF user may enter (pytest's own is below a 0700 one)."""
    top = Path(tempfile.mkdtemp(prefix="sector-sandbox-", dir="/var/tmp"))
    top.chmod(0o755)
    d = top / "data"
    (d / "tls").mkdir(parents=True)
    (d / "tls" / "node.key").write_text("-----BEGIN PRIVATE KEY-----")
    (d / "tls" / "node.key").chmod(0o600)
    (d / "blobs" / "ab").mkdir(parents=True)
    (d / "blobs" / "ab" / ("ab" * 16)).write_bytes(b"BLOB BYTES")
    (d / "sphere" / "cache").mkdir(parents=True)
    for u in ("ana", "bob"):
        (d / "sphere" / "u" / u / f"job-of-{u}").mkdir(parents=True)
    try:
        yield d
    finally:
        import shutil

        shutil.rmtree(top, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="drops to the UDF user first: needs root")
def test_userns_mode_hides_the_key_and_other_staging(data: Path) -> None:
    pw = pwd.getpwnam("nobody")
    s = spec(mode="userns", uid=pw.pw_uid, gid=pw.pw_gid, user="nobody", data=str(data))
    blob = data / "blobs" / "ab" / ("ab" * 16)
    udf = pickle_udf(peek, [str(data / "tls" / "node.key"), str(blob)])
    task = {
        "udf": udf,
        "digest": hashlib.sha256(udf).hexdigest(),
        "kind": "task",
        "segment": 0,
        "param": None,
        "node": "n",
        "mode": "client",
        "nbuckets": 0,
    }

    async def main() -> str:
        pool = EnginePool(1, lambda: Setup(s, "userns"))
        try:
            res = await pool.run(spe.run_task, task, stage=data / "sphere" / "u" / "ana")
            assert res.get("ok"), res
            return bytes(res["data"]).decode()
        finally:
            await pool.close()

    got = asyncio.run(main())
    assert got.startswith(f"uid={pw.pw_uid} pids=['1', '2'"), got
    # The key is not there; the outside blob path is not either; writing the blob
    # where the engine reads it is refused; only ana's staging is in the view.
    assert got.endswith("FileNotFoundError FileNotFoundError PermissionError job-of-ana"), got
    assert (data / "blobs" / "ab" / ("ab" * 16)).read_bytes() == b"BLOB BYTES"


# ---------------------------------------------------------------- outputs written anew


def test_outputs_are_written_anew_never_through_a_sealed_blobs_link(tmp_path: Path) -> None:
    """A reduce's output (engine) and a joined bucket (node) are sealed as blobs by a
    link; a commit made again after a lost bucket node writes them again. The second
    write makes a new file: the blob sealed the first time keeps its bytes (and a UDF
    could not open the sealed one for writing anyway: it is the node's by then)."""
    from sector.node import bulkfile

    for write in (
        lambda p: spe._write(p, b"second"),
        lambda p: bulkfile.concat([tmp_path / "part"], p),
    ):
        (tmp_path / "part").write_bytes(b"second")
        out, blob = tmp_path / "f0", tmp_path / "blob"
        out.write_bytes(b"first")
        os.link(out, blob)
        write(out)
        assert out.read_bytes() == b"second"
        assert blob.read_bytes() == b"first"
        out.unlink()
        blob.unlink()
