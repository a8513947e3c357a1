"""Bad input to the `sector` command against a live cluster: one error line, no traceback.

The contract (sector/cli/main.py): a failure exits non-zero and prints exactly one line
on stderr, ``sector: error: <message>``, and never a traceback. Each case also checks
that the failed command changed nothing on the cluster.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import sector
from sector.errors import InvalidPath
from sector.testing.cluster import ProcCluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcCluster]:
    with ProcCluster(tmp_path_factory.mktemp("bad-input-cluster")) as cl:
        cl.start(3)
        yield cl


@pytest.fixture(scope="module")
def client(cluster: ProcCluster) -> Iterator[sector.Client]:
    with sector.connect(cluster.address) as c:
        yield c


@pytest.fixture(scope="module")
def tree(client: sector.Client, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """A few files the failing commands must leave alone."""
    d = tmp_path_factory.mktemp("bad-input-tree")
    files = {"/bad/f.txt": b"a file\n", "/bad/full/inside.txt": b"keep me\n"}
    for remote, data in files.items():
        local = d / "x"
        local.write_bytes(data)
        client.put(local, remote)
    client.mkdir("/bad/empty")
    return files


def assert_one_error_line(r: Any, *, mentions: str = "") -> str:
    """Non-zero exit, one line on stderr starting `sector: error:`, no traceback."""
    err = r.stderr.decode("utf-8", errors="replace")
    assert r.returncode not in (0, None) and r.returncode > 0, f"exit {r.returncode}: {err!r}"
    assert "Traceback" not in err, err
    assert err.endswith("\n") and err.count("\n") == 1, f"not exactly one line: {err!r}"
    assert err.startswith("sector: error: "), err
    assert mentions.lower() in err.lower(), f"{mentions!r} not in {err!r}"
    return err


def free_port() -> int:
    """A port nothing listens on (bound, then released; nothing else binds it here)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


Cli = Callable[..., Any]


def test_put_of_a_missing_local_file(
    cluster: ProcCluster, client: sector.Client, sector_cli: Cli, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-file.bin"
    r = sector_cli("put", str(missing), "/bad/new.bin", cluster=cluster.address)
    assert_one_error_line(r, mentions="no-such-file.bin")
    assert not client.exists("/bad/new.bin")


@pytest.mark.parametrize(
    "args",
    [
        ("get", "/bad/missing.bin", "{tmp}/out.bin"),
        ("cat", "/bad/missing.bin"),
        ("stat", "/bad/missing.bin"),
        ("rm", "/bad/missing.bin"),
        ("ls", "/bad/missing-dir"),
        ("mv", "/bad/missing.bin", "/bad/elsewhere.bin"),
    ],
    ids=["get", "cat", "stat", "rm", "ls", "mv"],
)
def test_missing_remote_file(
    cluster: ProcCluster,
    client: sector.Client,
    sector_cli: Cli,
    tree: dict[str, bytes],
    tmp_path: Path,
    args: tuple[str, ...],
) -> None:
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    r = sector_cli(*argv, cluster=cluster.address)
    assert_one_error_line(r, mentions="missing")
    assert r.stdout == b""
    assert not (tmp_path / "out.bin").exists()
    assert not list(tmp_path.glob(".*sector-part")), "a temp file of the get was left behind"
    assert not client.exists("/bad/elsewhere.bin")


def test_rm_of_a_non_empty_directory_without_r(
    cluster: ProcCluster, client: sector.Client, sector_cli: Cli, tree: dict[str, bytes]
) -> None:
    r = sector_cli("rm", "/bad/full", cluster=cluster.address)
    assert_one_error_line(r, mentions="/bad/full")
    assert client.read("/bad/full/inside.txt") == tree["/bad/full/inside.txt"]
    assert [e["name"] for e in client.ls("/bad/full")] == ["inside.txt"]


@pytest.mark.parametrize(
    "args",
    [
        ("stat", "/bad/../etc/passwd"),
        ("ls", "/bad/.."),
        ("mkdir", "-p", "/bad/x/../y"),
        ("put", "{local}", "/bad/../escape.txt"),
        ("get", "/bad/../f.txt", "{tmp}/out"),
        ("mv", "/bad/f.txt", "/bad/../f.txt"),
        ("rm", "-r", "/bad/.."),
    ],
    ids=["stat", "ls", "mkdir", "put", "get", "mv", "rm"],
)
def test_path_with_dot_dot(
    cluster: ProcCluster,
    client: sector.Client,
    sector_cli: Cli,
    tree: dict[str, bytes],
    tmp_path: Path,
    args: tuple[str, ...],
) -> None:
    local = tmp_path / "local.txt"
    local.write_bytes(b"local\n")
    argv = [a.replace("{local}", str(local)).replace("{tmp}", str(tmp_path)) for a in args]
    r = sector_cli(*argv, cluster=cluster.address)
    assert_one_error_line(r, mentions="..")
    assert not client.exists("/escape.txt")
    assert not client.exists("/y")
    assert not client.exists("/bad/y")
    assert client.read("/bad/f.txt") == tree["/bad/f.txt"]
    assert not (tmp_path / "out").exists()


def test_path_with_nul_is_refused_by_the_api(client: sector.Client, tree: dict[str, bytes]) -> None:
    # A command-line argument cannot hold a NUL byte, so this one is for the API.
    for call in (
        lambda: client.stat("/a\x00b"),
        lambda: client.ls("/bad\x00"),
        lambda: client.mkdir("/bad/x\x00y"),
        lambda: client.rm("/bad/f.txt\x00"),
    ):
        with pytest.raises(InvalidPath, match="NUL"):
            call()
    assert client.exists("/bad/f.txt")


@pytest.mark.parametrize(
    "args",
    [
        ("mkdir", "-p", "/bad/{long}"),
        ("put", "{local}", "/bad/{long}"),
        ("stat", "/bad/{long}"),
        ("mkdir", "-p", "/bad/ok/{long}/deeper"),
    ],
    ids=["mkdir", "put", "stat", "mkdir-nested"],
)
def test_name_too_long(
    cluster: ProcCluster,
    client: sector.Client,
    sector_cli: Cli,
    tree: dict[str, bytes],
    tmp_path: Path,
    args: tuple[str, ...],
) -> None:
    long = "n" * 300
    local = tmp_path / "local.txt"
    local.write_bytes(b"local\n")
    argv = [a.replace("{long}", long).replace("{local}", str(local)) for a in args]
    r = sector_cli(*argv, cluster=cluster.address)
    err = assert_one_error_line(r, mentions="255")
    assert len(err) < 600, "the error line repeats the whole 300-char name (or more)"
    names = {e["name"] for e in client.ls("/bad")}
    assert long not in names
    assert "ok" not in names


def test_put_onto_a_path_under_an_existing_file(
    cluster: ProcCluster,
    client: sector.Client,
    sector_cli: Cli,
    tree: dict[str, bytes],
    tmp_path: Path,
) -> None:
    local = tmp_path / "x"
    local.write_bytes(b"would be under a file\n")
    r = sector_cli("put", str(local), "/bad/f.txt/x", cluster=cluster.address)
    assert_one_error_line(r, mentions="/bad/f.txt")
    st = client.stat("/bad/f.txt")
    assert st["type"] == "file"
    assert client.read("/bad/f.txt") == tree["/bad/f.txt"]

    r = sector_cli("mkdir", "-p", "/bad/f.txt/sub", cluster=cluster.address)
    assert_one_error_line(r, mentions="/bad/f.txt")
    assert client.stat("/bad/f.txt")["type"] == "file"


def test_cluster_address_where_nothing_listens(sector_cli: Cli) -> None:
    addr = f"127.0.0.1:{free_port()}"
    r = sector_cli("ls", "/", cluster=addr)
    assert_one_error_line(r, mentions=addr)
    assert r.stdout == b""


def test_cluster_address_where_nothing_listens_from_the_environment(sector_cli: Cli) -> None:
    addr = f"127.0.0.1:{free_port()}"
    r = sector_cli("stat", "/", env={"SECTOR_CLUSTER": addr})
    assert_one_error_line(r, mentions=addr)
    r = sector_cli("status", "--json", env={"SECTOR_CLUSTER": addr})
    assert_one_error_line(r, mentions=addr)
    assert r.stdout == b""


def test_explicit_address_never_falls_over_to_another_cluster(
    cluster: ProcCluster, sector_cli: Cli, tmp_path: Path
) -> None:
    """--cluster names a dead node while a `sector up` cluster runs on this machine.

    The command must fail: answering from the local cluster instead would read (or
    write!) another cluster than the one the user named.
    """
    home = tmp_path / "home"
    local = home / "cluster"
    local.mkdir(parents=True)
    (local / "cluster.json").write_text(
        json.dumps({"address": cluster.address, "addresses": cluster.addresses(), "replicas": 3})
    )
    (home / "current").write_text(f"{local}\n")
    dead = f"127.0.0.1:{free_port()}"
    r = sector_cli("ls", "/", cluster=dead, env={"SECTOR_HOME": str(home)})
    assert_one_error_line(r, mentions=dead)
    assert r.stdout == b""


@pytest.mark.parametrize(
    ("args", "mentions"),
    [
        (("mv", "/bad/full", "/bad/full/sub"), "into itself"),
        (("mkdir", "/bad/empty"), "exists"),
        (("mkdir", "/bad/f.txt"), "file"),
        (("get", "/bad/full", "{tmp}/out"), "directory"),
        (("cat", "/bad/full"), "directory"),
        (("put", "{tmp}", "/bad/dir-without-r"), "directory"),
        (("rm", "-r", "/"), "/"),
        (("mv", "/bad/f.txt", "/bad/nowhere/f.txt"), "/bad/nowhere"),
    ],
    ids=[
        "mv-into-itself",
        "mkdir-exists",
        "mkdir-over-file",
        "get-dir",
        "cat-dir",
        "put-dir",
        "rm-root",
        "mv-no-parent",
    ],
)
def test_other_refused_commands_change_nothing(
    cluster: ProcCluster,
    client: sector.Client,
    sector_cli: Cli,
    tree: dict[str, bytes],
    tmp_path: Path,
    args: tuple[str, ...],
    mentions: str,
) -> None:
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    r = sector_cli(*argv, cluster=cluster.address)
    assert_one_error_line(r, mentions=mentions)
    for path, data in tree.items():
        assert client.read(path) == data
    assert {e["name"] for e in client.ls("/bad")} >= {"f.txt", "full", "empty"}
    assert not client.exists("/bad/dir-without-r")
    assert not client.exists("/bad/nowhere")
    assert client.ls("/bad/empty") == []
    assert not (tmp_path / "out").exists()


def test_a_path_too_deep_is_refused_in_one_line_and_a_deep_mkdir_p_works(
    cluster: ProcCluster, client: sector.Client, sector_cli: Cli
) -> None:
    """mkdir -p of 1,500 levels in a 3 KB path raised RecursionError on the node and
    logged hundreds of tracebacks (issue 11, point 5): paths are bounded (1,000
    levels, as HDFS) and mkdir -p walks the levels in a loop."""
    before = [n.log.read_text(errors="replace").count("Traceback") for n in cluster.nodes]
    too_deep = "/deep" + "/d" * 1500
    r = sector_cli("mkdir", "-p", too_deep, cluster=cluster.address)
    assert_one_error_line(r, mentions="deeper than 1000 levels")
    deep = "/deep" + "/d" * 998  # 999 levels: allowed, made one level at a time
    client.mkdir(deep, parents=True)
    assert client.stat(deep)["type"] == "dir"
    assert client.stat("/deep/d/d")["type"] == "dir"
    after = [n.log.read_text(errors="replace").count("Traceback") for n in cluster.nodes]
    assert after == before, "a node logged a traceback"
    assert all(n.alive for n in cluster.nodes)


def test_a_failed_mkdir_p_takes_back_every_directory_it_made(
    cluster: ProcCluster, client: sector.Client, tree: dict[str, bytes]
) -> None:
    """A mkdir -p that fails part way (here: an ancestor is a file, found only when the
    last missing level is linked) leaves none of the directories it made."""
    with pytest.raises(sector.NotADirectory):
        client.mkdir("/bad/f.txt/x/y/z", parents=True)
    for p in ("/bad/f.txt/x", "/bad/f.txt/x/y", "/bad/f.txt/x/y/z"):
        with pytest.raises((sector.NotFound, sector.NotADirectory)):
            client.stat(p)
    assert client.stat("/bad/f.txt")["type"] == "file"
