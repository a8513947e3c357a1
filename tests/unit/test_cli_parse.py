"""The `sector` command without a cluster: parsing, address resolution, error lines,
and the file commands driven against an in-memory client that follows the contract."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import posixpath
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import sector
from sector.cli import commands
from sector.cli.args import command_word, parse_address, parse_size, parse_topology
from sector.cli.main import build_parser, error_message, main
from sector.client.many import Batch, Failure
from sector.errors import (
    AlreadyExists,
    ConnectError,
    DirectoryNotEmpty,
    IsADirectory,
    NoSpace,
    NotADirectory,
    NotFound,
    SectorError,
)
from sector.node import localcluster

# ---- parsing ---------------------------------------------------------------------


def parse(*argv: str) -> Any:
    """As `main` parses: the parser of the command named alone (and checked against
    the parser of every command)."""
    one = build_parser(command_word(argv)).parse_args(list(argv))
    assert one == build_parser().parse_args(list(argv))
    return one


@pytest.mark.parametrize(
    "argv, word",
    [
        (["ls", "/x"], "ls"),
        (["--cluster", "h:1", "--json", "get", "/a", "b"], "get"),
        (["--token", "t", "sphere", "run", "m:f", "/in"], "sphere"),
        (["--cluster=h:1", "stat", "/x"], "stat"),
        (["--json"], None),
        (["--", "ls"], "ls"),
    ],
)
def test_the_command_word_is_found_past_the_global_options(
    argv: list[str], word: str | None
) -> None:
    assert command_word(argv) == word


def test_one_command_parser_knows_only_that_command_and_an_unknown_word_gets_all() -> None:
    one = build_parser("get")
    sub = next(a for a in one._actions if isinstance(a, argparse._SubParsersAction))
    assert list(sub.choices) == ["get"]
    full = build_parser("no-such-command")
    sub = next(a for a in full._actions if isinstance(a, argparse._SubParsersAction))
    assert {"get", "put", "ls", "sphere", "cluster", "mount"} <= set(sub.choices)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code == 2
    assert "invalid choice: 'no-such-command'" in err.getvalue() and "'put'" in err.getvalue()


def test_a_client_and_the_get_parser_do_not_import_numpy() -> None:
    """Sphere (numpy, ~0.2 s of CPU) is made on first use, not for every command."""
    code = (
        "import sys\n"
        "from sector.cli.main import build_parser\n"
        "from sector.client.aio import AsyncClient\n"
        "c = AsyncClient('127.0.0.1:1')\n"
        "build_parser('get').parse_args(['get', '/a', 'b'])\n"
        "assert 'numpy' not in sys.modules, 'numpy imported'\n"
        "assert type(c.sphere).__name__ == 'AsyncSphere' and 'numpy' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    "argv",
    [
        ["--cluster", "h:1", "ls", "/x"],
        ["ls", "--cluster", "h:1", "/x"],
        ["ls", "/x", "--cluster", "h:1"],
    ],
)
def test_cluster_before_or_after_command(argv: list[str]) -> None:
    assert parse(*argv).cluster == "h:1"


def test_cluster_defaults_to_none_and_after_wins() -> None:
    assert parse("status").cluster is None
    assert parse("--cluster", "a:1", "status", "--cluster", "b:2").cluster == "b:2"


def test_json_before_or_after() -> None:
    assert parse("status").json is False
    assert parse("--json", "status").json is True
    assert parse("stat", "--json", "/a").json is True


def test_put_get_positionals() -> None:
    a = parse("put", "-r", "--replicas", "2", "a", "b", "/dst")
    assert (a.local, a.remote, a.recursive, a.replicas) == (["a", "b"], "/dst", True, 2)
    a = parse("get", "/x", "/y", "out")
    assert (a.remote, a.local, a.recursive) == (["/x", "/y"], "out", False)
    assert parse("put", "f", "/d").replicas is None


def test_defaults() -> None:
    a = parse("up")
    assert (a.nodes, a.replicas, a.dir) == (3, 3, None)
    assert parse("ls").path == "/"
    assert parse("ls", "-l", "/d").long is True
    assert parse("mkdir", "-p", "/a/b").parents is True


def test_node_options() -> None:
    a = parse(
        "node", "--data", "d", "--listen", "127.0.0.1:0", "--join", "h:7000",
        "--topology", "/dc1/rack2/", "--quota", "10G",
    )  # fmt: skip
    assert (a.listen, a.join, a.topology, a.quota) == (
        "127.0.0.1:0",
        "h:7000",
        "/dc1/rack2",
        10 << 30,
    )
    assert a.data == Path("d")
    a = parse("node", "--data", "d", "--listen", "h:1")
    assert (a.join, a.topology, a.replicas, a.quota) == (None, None, 3, None)
    assert (a.cache_size, a.piece_size, a.swarm_upload_rate) == (None, None, None)
    a = parse(
        "node", "--data", "d", "--listen", "h:1", "--cache-size", "2G", "--piece-size", "1M",
        "--swarm-upload-rate", "100M",
    )  # fmt: skip
    assert (a.cache_size, a.piece_size, a.swarm_upload_rate) == (2 << 30, 1 << 20, 100 << 20)


def test_distribute_options() -> None:
    a = parse("distribute", "/a", "/b/c", "--to", "/dc1", "--json")
    assert (a.command, a.paths, a.to, a.json) == ("distribute", ["/a", "/b/c"], "/dc1", True)
    assert parse("distribute", "/a").to == "all"


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["ls", "--cluster", "nohost"],
        ["ls", "--cluster", "h:0"],
        ["put", "only-one"],
        ["get", "/only-one"],
        ["up", "-n", "0"],
        ["node", "--data", "d"],
        ["node", "--data", "d", "--listen", "h"],
        ["node", "--data", "d", "--listen", "h:0", "--join", "h:0"],
        ["node", "--data", "d", "--listen", "h:0", "--topology", "dc1/rack"],
        ["node", "--data", "d", "--listen", "h:0", "--quota", "lots"],
        ["node", "--data", "d", "--listen", "h:0", "--cache-size", "lots"],
        ["distribute"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ei:
        main(argv)
    assert ei.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("sector: error: ") and err.count("\n") == 1


def test_parse_address() -> None:
    assert parse_address("[::1]:6000") == "[::1]:6000"
    for bad in ("h", ":1", "h:", "h:x", "h:70000", "::1:6000", "[::1:6000"):
        with pytest.raises(ValueError):
            parse_address(bad)
    assert parse_address("h:0", allow_port_zero=True) == "h:0"


def test_parse_size_and_topology() -> None:
    assert parse_size("123") == 123
    assert parse_size("1.5k") == 1536
    assert parse_size("2MiB") == 2 << 20
    assert parse_topology("/") == "/"
    for bad in ("dc", "/a//b", "/a b"):
        with pytest.raises(ValueError):
            parse_topology(bad)


# ---- errors and address resolution --------------------------------------------------


def test_error_message_is_one_line() -> None:
    assert error_message(NotFound("no such file: /x")) == "no such file: /x"
    assert error_message(NotFound("two\nlines")) == "two lines"
    assert error_message(FileNotFoundError(2, "No such file or directory", "a.txt")) == (
        "a.txt: No such file or directory"
    )
    assert error_message(RuntimeError("boom")) == "internal error: RuntimeError: boom"


def test_failure_prints_one_line_and_exits_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def refuse(address: str | None, **kw: Any) -> Any:
        raise ConnectError(f"cannot connect to {address}: connection refused")

    monkeypatch.setattr(sector, "connect", refuse, raising=False)
    monkeypatch.delenv("SECTOR_DEBUG", raising=False)
    assert main(["--cluster", "127.0.0.1:1", "ls", "/"]) == 1
    err = capsys.readouterr().err
    assert err == "sector: error: cannot connect to 127.0.0.1:1: connection refused\n"


def test_debug_shows_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def boom(address: str | None, **kw: Any) -> Any:
        raise RuntimeError("bug")

    monkeypatch.setattr(sector, "connect", boom, raising=False)
    monkeypatch.setenv("SECTOR_DEBUG", "1")
    assert main(["--cluster", "h:1", "status"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.endswith("sector: error: internal error: RuntimeError: bug\n")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty SECTOR_HOME and no SECTOR_CLUSTER."""
    monkeypatch.setenv("SECTOR_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SECTOR_CLUSTER", raising=False)
    return tmp_path / "home"


def test_address_resolution(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str | None] = []

    def fake_connect(address: str | None, **kw: Any) -> FakeClient:
        seen.append(address)
        return FakeClient()

    monkeypatch.setattr(sector, "connect", fake_connect, raising=False)
    cdir = home / "c"
    cdir.mkdir(parents=True)
    (cdir / "cluster.json").write_text(
        json.dumps({"address": "127.0.0.1:5001", "addresses": ["127.0.0.1:5001"]})
    )
    (home / "current").write_text(str(cdir))
    assert main(["ls", "/"]) == 0  # the `sector up` cluster
    monkeypatch.setenv("SECTOR_CLUSTER", "10.0.0.1:6000")
    assert main(["ls", "/"]) == 0  # the environment beats it
    assert main(["--cluster", "10.0.0.2:6000", "ls", "/"]) == 0  # the flag beats both
    assert seen == ["127.0.0.1:5001", "10.0.0.1:6000", "10.0.0.2:6000"]


def test_no_cluster_or_bad_env(
    home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["ls", "/"]) == 1
    assert "no cluster given" in capsys.readouterr().err
    monkeypatch.setenv("SECTOR_CLUSTER", "nohost")
    assert main(["ls", "/"]) == 1
    assert "(from SECTOR_CLUSTER)" in capsys.readouterr().err


# ---- the file commands against an in-memory client -----------------------------------


class FakeClient:
    """A one-node cluster in a dict, following the client contract of DESIGN §3."""

    def __init__(self, rf: int = 3, stored: int = 3) -> None:
        self.files: dict[str, bytes] = {}
        self.dirs: set[str] = {"/"}
        self.rf, self.stored = rf, stored
        self.closed = False

    def _parent_ok(self, path: str) -> None:
        parent = posixpath.dirname(path)
        if parent in self.files:
            raise NotADirectory(f"not a directory: {parent}")
        if parent not in self.dirs:
            raise NotFound(f"no such directory: {parent}")

    def stat(self, path: str) -> dict[str, Any]:
        if path in self.dirs:
            return {"path": path, "type": "dir", "mtime": 0.0}
        if path not in self.files:
            raise NotFound(f"no such file or directory: {path}")
        reps = [
            {"id": f"{i:040x}", "address": f"127.0.0.1:{7000 + i}", "state": "up"}
            for i in range(self.stored)
        ]
        return {
            "path": path, "type": "file", "size": len(self.files[path]), "checksum": "b3:00",
            "rf": self.rf, "mtime": 0.0, "ctime": 0.0, "version": 1, "replicas": reps,
            "under_replicated": self.stored < self.rf,
        }  # fmt: skip

    def put(
        self, local: str, remote: str, *, replicas: int | None = None, progress: Any = None
    ) -> dict[str, Any]:
        if remote in self.dirs:
            raise IsADirectory(f"is a directory: {remote}")
        self._parent_ok(remote)
        self.files[remote] = Path(local).read_bytes()
        return self.stat(remote)

    def get(self, remote: str, local: str, *, progress: Any = None) -> dict[str, Any]:
        info = self.stat(remote)
        if info["type"] == "dir":
            raise IsADirectory(f"is a directory: {remote}")
        Path(local).write_bytes(self.files[remote])
        return info

    def _many(self, fn: Any, items: list[tuple[str, str]], on_done: Any) -> Batch:
        out = Batch()
        for src, dst in items:
            try:
                res = fn(src, dst)
            except (SectorError, OSError) as exc:
                out.failed.append(Failure(src, dst, exc))
                if on_done is not None:
                    on_done(src, dst, None, exc)
                continue
            out.done.append(res)
            if on_done is not None:
                on_done(src, dst, res, None)
        return out

    def put_many(
        self, items: list[tuple[str, str]], *, replicas: int | None = None, **kw: Any
    ) -> Batch:
        return self._many(self.put, items, kw.get("on_done"))

    def get_many(self, items: list[tuple[str, str]], **kw: Any) -> Batch:
        return self._many(self.get, items, kw.get("on_done"))

    def mkdir_many(self, paths: list[str], **kw: Any) -> Batch:
        def one(p: str, _: str) -> dict[str, Any]:
            if p not in self.dirs:
                self.mkdir(p, parents=True)
            return {"path": p}

        return self._many(one, [(p, p) for p in paths], None)

    def open(self, remote: str, mode: str = "rb") -> io.BytesIO:
        if remote not in self.files:
            raise NotFound(f"no such file: {remote}")
        return io.BytesIO(self.files[remote])

    def ls(self, path: str) -> list[dict[str, Any]]:
        if path in self.files:
            raise NotADirectory(f"not a directory: {path}")
        if path not in self.dirs:
            raise NotFound(f"no such directory: {path}")
        out = []
        for p in sorted(self.dirs | set(self.files)):
            if p != "/" and posixpath.dirname(p) == path:
                st = self.stat(p)
                reps = len(st.get("replicas", []))
                out.append({"name": posixpath.basename(p), "path": p, "type": st["type"],
                            "size": st.get("size", 0), "mtime": 0.0, "replicas": reps, "rf": self.rf})  # fmt: skip
        return out

    def ls_page(
        self, path: str = "/", *, after: str | None = None, limit: int = 1000, detail: bool = True
    ) -> tuple[list[dict[str, Any]], str | None]:
        rest = [e for e in self.ls(path) if after is None or e["name"] > after]
        return rest[:limit], (rest[limit - 1]["name"] if len(rest) > limit else None)

    def mkdir(self, path: str, *, parents: bool = False) -> None:
        if path in self.dirs or path in self.files:
            raise AlreadyExists(f"already exists: {path}")
        if parents and posixpath.dirname(path) not in self.dirs:
            self.mkdir(posixpath.dirname(path), parents=True)
        self._parent_ok(path)
        self.dirs.add(path)

    def rm(self, path: str, *, recursive: bool = False) -> None:
        self.stat(path)
        inside = [p for p in self.dirs | set(self.files) if p.startswith(path.rstrip("/") + "/")]
        if inside and not recursive:
            raise DirectoryNotEmpty(f"directory not empty: {path}")
        for p in [*inside, path]:
            self.files.pop(p, None)
            self.dirs.discard(p)

    def mv(self, src: str, dst: str) -> None:
        self.stat(src)
        self.files[dst] = self.files.pop(src)

    def status(self) -> dict[str, Any]:
        node = {"id": "ab" * 20, "address": "127.0.0.1:7000", "pid": 42, "state": "up", "topology": "/dc/r",
                "host": "h", "bytes_used": 3 << 20, "bytes_free": 5 << 30, "files": len(self.files)}  # fmt: skip
        return {"nodes": [node], "files": len(self.files), "under_replicated": 0, "bytes": 3 << 20}

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeClient:
    client = FakeClient()
    monkeypatch.setattr(commands, "connect", lambda address, **kw: client)
    return client


def run(*argv: str) -> int:
    return main(["--cluster", "127.0.0.1:6000", *argv])


def test_put_file_into_dir_and_json(
    fake: FakeClient, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a.txt").write_bytes(b"hello")
    fake.dirs.add("/d")
    assert run("put", str(tmp_path / "a.txt"), "/d") == 0  # existing dir -> /d/a.txt
    assert run("put", str(tmp_path / "a.txt"), "/new/") == 0  # trailing slash -> created dir
    assert run("put", "--json", str(tmp_path / "a.txt"), "/b.txt") == 0
    assert fake.files == {"/d/a.txt": b"hello", "/new/a.txt": b"hello", "/b.txt": b"hello"}
    out = json.loads(capsys.readouterr().out)
    assert out["bytes"] == 5 and out["files"][0]["path"] == "/b.txt"
    assert fake.closed


def test_put_errors(fake: FakeClient, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("put", str(tmp_path / "missing"), "/x") == 1
    assert capsys.readouterr().err == f"sector: error: no such local file: {tmp_path / 'missing'}\n"
    assert run("put", str(tmp_path), "/x") == 1
    assert "is a directory (use -r)" in capsys.readouterr().err


def test_put_recursive_mirrors_tree(fake: FakeClient, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub" / "empty").mkdir(parents=True)
    (src / "top.bin").write_bytes(b"1")
    (src / "sub" / "deep.bin").write_bytes(b"22")
    assert run("put", "-r", str(src), "/up") == 0  # /up does not exist: becomes the copy
    assert run("put", "-r", str(src), "/up") == 0  # now it does: goes inside, like cp -r
    assert fake.files.keys() == {
        "/up/top.bin",
        "/up/sub/deep.bin",
        "/up/src/top.bin",
        "/up/src/sub/deep.bin",
    }
    assert "/up/sub/empty" in fake.dirs


def test_put_recursive_goes_on_past_a_failed_file(
    fake: FakeClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A tree goes up as one batch: a file that fails is one line naming it, the
    others still go up, and the exit code says that something failed."""
    src = tmp_path / "src"
    src.mkdir()
    for n in ("a", "bad", "c"):
        (src / n).write_bytes(n.encode())
    put = fake.put

    def flaky(local: str, remote: str, **kw: Any) -> dict[str, Any]:
        if remote.endswith("/bad"):
            raise NoSpace(f"no node can take 3 bytes for {remote}")
        return put(local, remote, **kw)

    monkeypatch.setattr(fake, "put", flaky)
    assert run("put", "-r", str(src), "/t") == 1
    assert fake.files.keys() == {"/t/a", "/t/c"}
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"sector: error: put {src / 'bad'} -> /t/bad: no node can take 3 bytes for /t/bad",
        "sector: error: 1 of 3 files failed (put)",
    ]


def test_put_under_replicated_warns_but_succeeds(
    fake: FakeClient, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.stored = 1
    (tmp_path / "f").write_bytes(b"x")
    assert run("put", str(tmp_path / "f"), "/f") == 0
    assert capsys.readouterr().err == "warning: /f stored on 1 of 3 replicas\n"


def test_get_file_and_recursive(
    fake: FakeClient, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.dirs |= {"/d", "/d/e"}
    fake.files |= {"/d/a": b"A", "/d/e/b": b"B"}
    assert run("get", "/d/a", str(tmp_path / "copy")) == 0
    assert (tmp_path / "copy").read_bytes() == b"A"
    assert run("get", "/d", str(tmp_path)) == 1
    assert "/d is a directory (use -r)" in capsys.readouterr().err
    assert run("get", "-r", "/d", str(tmp_path)) == 0
    assert (tmp_path / "d" / "e" / "b").read_bytes() == b"B"
    assert run("get", "/d/a", "/d/e/b", str(tmp_path / "copy")) == 1  # several -> needs a dir
    assert "not a local directory" in capsys.readouterr().err


def test_cat_streams_bytes(fake: FakeClient, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    fake.files["/blob"] = bytes(range(256)) * 10_000
    assert run("cat", "/blob") == 0
    assert capsysbinary.readouterr().out == fake.files["/blob"]


def test_stdout_closed_is_quiet(
    fake: FakeClient, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    class ClosedPipe(io.RawIOBase):
        def write(self, b: Any) -> int:
            raise BrokenPipeError(32, "Broken pipe")

        def writable(self) -> bool:
            return True

        def fileno(self) -> int:
            raise io.UnsupportedOperation("no fd")

    fake.files["/blob"] = b"x" * 10
    pipe = io.TextIOWrapper(ClosedPipe())  # type: ignore[arg-type]
    monkeypatch.setattr(sys, "stdout", pipe)
    assert run("cat", "/blob") == 141
    assert run("ls", "/") == 141
    with contextlib.suppress(BrokenPipeError):
        pipe.close()  # now, rather than complaining from the garbage collector later
    assert capsys.readouterr().err == ""


def test_ls_forms(fake: FakeClient, capsys: pytest.CaptureFixture[str]) -> None:
    fake.dirs.add("/d")
    fake.files |= {"/z.bin": b"123", "/d/in": b""}
    assert run("ls", "/") == 0
    assert capsys.readouterr().out == "d/\nz.bin\n"
    assert run("ls", "-l", "/") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("d") and lines[0].endswith(" d/")
    assert lines[1].split()[:4] == ["-", "3", "B", "3/3"] and lines[1].endswith(" z.bin")
    assert run("ls", "--json", "z.bin") == 0  # a file lists itself; relative = from the root
    (entry,) = json.loads(capsys.readouterr().out)
    assert entry["path"] == "/z.bin" and entry["replicas"] == 3
    assert run("ls", "/nope") == 1
    assert capsys.readouterr().err == "sector: error: no such directory: /nope\n"


def test_stat_human_and_json(fake: FakeClient, capsys: pytest.CaptureFixture[str]) -> None:
    fake.files["/f"] = b"abc"
    assert run("stat", "/f") == 0
    out = capsys.readouterr().out
    assert "3 of 3 (ok)" in out and "127.0.0.1:7002" in out and "b3:00" in out
    assert run("stat", "--json", "/f") == 0
    assert json.loads(capsys.readouterr().out)["checksum"] == "b3:00"


def test_namespace_commands(fake: FakeClient, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("mkdir", "/a/b") == 1
    assert run("mkdir", "-p", "/a/b") == 0
    assert run("mkdir", "-p", "/a/b") == 0  # -p: existing is fine
    assert run("mkdir", "/a/b") == 1
    fake.files["/f"] = b"1"
    assert run("--json", "mv", "/f", "/a") == 0  # into an existing directory
    assert json.loads(capsys.readouterr().out)["dst"] == "/a/f"
    assert run("rm", "/a") == 1
    assert run("rm", "-r", "/a") == 0
    assert fake.dirs == {"/"} and not fake.files


def test_status_table_and_json(fake: FakeClient, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("status") == 0
    out = capsys.readouterr().out
    assert "abababab" in out and "127.0.0.1:7000" in out and "/dc/r" in out
    assert out.splitlines()[-1] == (
        "1/1 nodes up, 0 files (3.0 MiB), 0 under-replicated, 0 queued for repair"
    )
    assert run("status", "--json") == 0
    assert json.loads(capsys.readouterr().out)["nodes"][0]["pid"] == 42


# ---- up / down without a real node ---------------------------------------------------


def test_down_without_cluster(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["down", "--dir", str(tmp_path / "none")]) == 1
    assert capsys.readouterr().err.startswith("sector: error: no local cluster in ")


def test_up_refuses_running_cluster_and_down_stops_it(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cdir = tmp_path / "c"
    data = cdir / "node-0"
    data.mkdir(parents=True)
    # A stand-in node: any process whose argv names the data directory.
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", str(data)])
    try:
        (data / "node.json").write_text(
            json.dumps({"id": "00", "address": "127.0.0.1:1", "pid": proc.pid})
        )
        assert main(["up", "--dir", str(cdir)]) == 1
        assert f"a cluster is already running in {cdir}" in capsys.readouterr().err
        assert main(["down", "--dir", str(cdir)]) == 0
        assert capsys.readouterr().out == "stopped 1 node\n"
        assert proc.wait(10) is not None
    finally:
        proc.kill()
        proc.wait()


def test_up_reports_a_node_that_dies(home: Path, tmp_path: Path) -> None:
    script = tmp_path / "fake-python"
    script.write_text("#!/bin/sh\necho 'cannot bind 127.0.0.1:0: permission denied'\nexit 3\n")
    script.chmod(0o755)
    with pytest.raises(
        Exception,
        match=r"node 0 exited with code 3 before listening: cannot bind .* \(see .*node.log\)",
    ):
        localcluster.start_cluster(tmp_path / "c", 2, python=str(script))
    assert not (tmp_path / "c" / "cluster.json").exists()
    assert not (home / "current").exists()


def test_dunder_main_is_the_cli() -> None:
    env = dict(os.environ, PYTHONPATH=str(Path(sector.__file__).parents[1]))
    r = subprocess.run(
        [sys.executable, "-m", "sector", "ls", "--cluster", "bad"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 2 and "invalid address 'bad'" in r.stderr


def test_node_drain_is_spelled_as_drain_only_at_the_command_word() -> None:
    from sector.cli.main import _alias

    assert _alias(["node", "drain", "h:1"]) == ["drain", "h:1"]
    assert _alias(["--token", "t", "--json", "node", "drain", "h:1"]) == [
        "--token",
        "t",
        "--json",
        "drain",
        "h:1",
    ]
    assert _alias(["--cluster", "node", "ls", "drain"]) == ["--cluster", "node", "ls", "drain"]
    assert _alias(["ls", "node", "drain"]) == ["ls", "node", "drain"]
