"""Security through the real `sector` command (issue 5): `sector up` makes a secure
cluster its admin can use at once; users are added, log in from another home, are held
to their prefixes and revoked; `sector cluster init` / `add-node` make a node that runs.

Every command is ``python -m sector`` in a subprocess with ``SECTOR_HOME`` set to a
temporary directory of this module: the admin's (who ran `sector up`), a second one for
the user alice, a third for a cluster made by hand. `sector down` always runs at the end.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sector.security import pki, tokens
from sector.security.pki import ClusterCA
from sector.testing.cluster import wait_for

Cli = Callable[..., subprocess.CompletedProcess[bytes]]
DEADLINE = 20.0


@dataclass
class Up:
    home: Path
    address: str
    cli: Callable[..., subprocess.CompletedProcess[bytes]]  # as the admin, in its home


def assert_one_error_line(r: subprocess.CompletedProcess[bytes], starts: str) -> str:
    """Exit 1 and exactly one line on stderr, starting with ``starts``."""
    err = r.stderr.decode("utf-8", "replace")
    assert r.returncode == 1, f"exit {r.returncode}: {err!r}"
    assert "Traceback" not in err, err
    assert err.endswith("\n") and err.count("\n") == 1, f"not exactly one line: {err!r}"
    assert err.startswith(starts), err
    return err.rstrip("\n")


def ok(r: subprocess.CompletedProcess[bytes]) -> str:
    assert r.returncode == 0, f"exit {r.returncode}: {r.stderr.decode(errors='replace')!r}"
    return r.stdout.decode()


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory, sector_cli: Cli) -> Iterator[Up]:
    home = tmp_path_factory.mktemp("admin-home")

    def as_admin(*args: str, **kw: Any) -> subprocess.CompletedProcess[bytes]:
        return sector_cli(*args, env={"SECTOR_HOME": str(home)}, **kw)

    try:
        r = as_admin("up", "-n", "3", "--engines", "1", timeout=120)
        address = ok(r).strip()
        assert b"web page and /metrics: http://127.0.0.1:" in r.stderr  # issue 16
        yield Up(home, address, as_admin)
    finally:
        down = as_admin("down", timeout=60)
        info = home / "cluster" / "cluster.json"
        if down.returncode != 0 and info.exists():  # never leave nodes behind
            for n in json.loads(info.read_text()).get("nodes", []):
                try:
                    os.kill(int(n["pid"]), signal.SIGKILL)
                except (OSError, KeyError, ValueError):
                    pass
        assert down.returncode == 0, down.stderr


def test_up_is_secure_and_its_admin_writes_with_no_setup(up: Up, tmp_path: Path) -> None:
    cluster = json.loads((up.home / "cluster" / "cluster.json").read_text())
    assert cluster["secure"] is True
    f = tmp_path / "f.txt"
    f.write_bytes(b"from the admin\n")
    ok(up.cli("put", str(f), "/adm/f.txt"))  # no --cluster, no login: `sector up` did it
    assert ok(up.cli("cat", "/adm/f.txt")) == "from the admin\n"
    me = json.loads(ok(up.cli("whoami", "--json")))
    assert me == {"user": "admin", "cluster": cluster["cluster"], "tls": True}


def test_anonymous_put_is_refused_with_one_error_line(up: Up, tmp_path: Path) -> None:
    f = tmp_path / "f.txt"
    f.write_bytes(b"anonymous\n")
    err = assert_one_error_line(
        up.cli("--anonymous", "put", str(f), "/anon.txt"),
        "sector: error: permission denied: anonymous cannot write",
    )
    assert err == "sector: error: permission denied: anonymous cannot write /anon.txt"
    assert up.cli("stat", "/anon.txt").returncode != 0
    # Reading public data needs nothing.
    ok(up.cli("put", str(f), "/pub.txt"))
    assert ok(up.cli("--anonymous", "cat", "/pub.txt")) == "anonymous\n"


def test_user_added_logs_in_elsewhere_is_held_to_its_prefix_and_revoked(
    up: Up, tmp_path_factory: pytest.TempPathFactory, sector_cli: Cli, tmp_path: Path
) -> None:
    out = ok(up.cli("user", "add", "alice", "--write", "/a")).splitlines()
    assert len(out) == 1
    cred = out[0]
    cid = json.loads((up.home / "cluster" / "cluster.json").read_text())["cluster"]
    grant = tokens.verify(cred, ClusterCA.load(up.home / "cluster" / "security"), None, time.time())
    assert (grant.user, grant.write, grant.compute, grant.admin) == ("alice", ("/a",), False, False)

    home2 = tmp_path_factory.mktemp("alice-home")

    def as_alice(*args: str) -> subprocess.CompletedProcess[bytes]:
        return sector_cli(*args, cluster=up.address, env={"SECTOR_HOME": str(home2)})

    assert ok(as_alice("login", cred)).strip() == f"logged in as alice on {cid}"
    assert (home2 / "credentials" / f"{cid}.json").exists()
    assert json.loads(ok(as_alice("whoami", "--json"))) == {
        "user": "alice",
        "cluster": cid,
        "tls": True,
    }
    f = tmp_path / "f.txt"
    f.write_bytes(b"alice's\n")
    ok(as_alice("put", str(f), "/a/f.txt"))
    assert ok(up.cli("cat", "/a/f.txt")) == "alice's\n"
    err = assert_one_error_line(
        as_alice("put", str(f), "/b/f.txt"), "sector: error: permission denied:"
    )
    assert err == "sector: error: permission denied: alice cannot write /b/f.txt"

    assert ok(up.cli("user", "revoke", "alice")).startswith("revoked alice (policy version ")

    def refused() -> str | None:
        r = as_alice("put", str(f), "/a/g.txt")
        if r.returncode == 0:
            return None
        return assert_one_error_line(r, "sector: error: ")

    err = wait_for(refused, DEADLINE, interval=0.3, what="alice's put to be refused")
    assert err == "sector: error: credential refused: alice was revoked"
    assert up.cli("stat", "/a/g.txt").returncode != 0
    pol = json.loads(ok(up.cli("--json", "cluster", "policy")))
    assert pol["revoked"] == ["alice"]


def test_cluster_init_and_add_node_make_a_node_that_runs(tmp_path: Path, sector_cli: Cli) -> None:
    home = tmp_path / "home3"
    admin_dir, node_dir, data = tmp_path / "admin", tmp_path / "n1-tls", tmp_path / "n1-data"
    env = {"SECTOR_HOME": str(home)}
    out = ok(sector_cli("cluster", "init", "--admin-dir", str(admin_dir), env=env))
    ca = ClusterCA.load(admin_dir)
    assert ca.key is not None
    assert out.strip() == f"cluster {ca.cluster_id} in {admin_dir}"
    ok(
        sector_cli(
            "cluster",
            "add-node",
            "n1",
            "--out",
            str(node_dir),
            "--admin-dir",
            str(admin_dir),
            env=env,
        )
    )
    assert sorted(p.name for p in node_dir.iterdir()) == ["ca.crt", "node.crt", "node.key"]
    assert (node_dir / "node.key").stat().st_mode & 0o077 == 0

    data.mkdir()
    listen = ["--listen", "127.0.0.1:0", "--tls", str(node_dir)]
    with open(data / "node.log", "wb") as log:
        node = subprocess.Popen(
            [sys.executable, "-m", "sector", "node", *("--data", str(data)), *listen],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
            start_new_session=True,
        )
    try:

        def listening() -> dict[str, Any] | None:
            assert node.poll() is None, (data / "node.log").read_text()
            p = data / "node.json"
            return json.loads(p.read_text()) if p.exists() else None

        addr = wait_for(listening, DEADLINE, what="the node to listen")["address"]
        # It speaks TLS with the certificate add-node made, signed by the init'ed CA.
        host, port = addr.rsplit(":", 1)

        raw = socket.create_connection((host, int(port)), timeout=10)
        with raw, pki.user_client_context().wrap_socket(raw) as s:
            leaf = s.getpeercert(binary_form=True)
        assert leaf is not None
        assert ca.verify_leaf(leaf, time.time()) == "node:n1"
        # `cluster init` stored the admin credential in this home: it writes at once.
        me = json.loads(ok(sector_cli("whoami", "--json", cluster=addr, env=env)))
        assert me == {"user": "admin", "cluster": ca.cluster_id, "tls": True}
        f = tmp_path / "f.txt"
        f.write_bytes(b"on n1\n")
        ok(sector_cli("put", str(f), "/x.txt", cluster=addr, env=env))
        assert ok(sector_cli("--anonymous", "cat", "/x.txt", cluster=addr, env=env)) == "on n1\n"
    finally:
        if node.poll() is None:
            node.send_signal(signal.SIGTERM)
            try:
                node.wait(30)
            except subprocess.TimeoutExpired:
                node.kill()
                node.wait(10)
    assert node.returncode == 0, (data / "node.log").read_text()[-2000:]


def test_json_after_a_security_command_is_accepted_like_after_any_other(
    tmp_path: Path, sector_cli: Cli
) -> None:
    env = {"SECTOR_HOME": str(tmp_path / "home")}
    admin = str(tmp_path / "admin")
    ok(sector_cli("cluster", "init", "--admin-dir", admin, env=env))
    info = json.loads(ok(sector_cli("user", "add", "bob", "--admin-dir", admin, "--json", env=env)))
    assert info["user"] == "bob"


def test_a_logged_in_user_is_never_downgraded_to_plain_tcp_or_another_cluster(
    up: Up, tmp_path_factory: pytest.TempPathFactory, sector_cli: Cli, tmp_path: Path
) -> None:
    """Issue 11, point 1: with only a stored login (no --token), a client that found an
    open node at the address it logged in through fell back to plain TCP without a word
    (whoami "anonymous on an open cluster", a put exiting 0). A login is remembered with
    its address; there the client insists on TLS and on that cluster."""
    from sector.testing.cluster import ProcCluster

    cred = ok(up.cli("user", "add", "hana", "--write", "/h")).strip()
    cid = json.loads((up.home / "cluster" / "cluster.json").read_text())["cluster"]
    home = tmp_path_factory.mktemp("hana-home")
    env = {"SECTOR_HOME": str(home)}
    ok(sector_cli("login", cred, cluster=up.address, env=env))
    stored = home / "credentials" / f"{cid}.json"
    doc = json.loads(stored.read_text())
    assert doc["addresses"] == [up.address]

    f = tmp_path / "f.txt"
    f.write_bytes(b"secret\n")
    with ProcCluster(tmp_path / "open") as imposter:  # plain TCP, at an address ...
        imposter.start(1)
        # ... where hana once logged in (as if the host had been taken over).
        doc["addresses"].append(imposter.address)
        stored.write_text(json.dumps(doc))
        for args in (("whoami",), ("put", str(f), "/h/f.txt"), ("ls", "/")):
            r = sector_cli(*args, cluster=imposter.address, env=env)
            err = assert_one_error_line(r, "sector: error: ")
            assert "TLS" in err, err
        with imposter.connect() as c:
            assert not c.exists("/h/f.txt")
        r = sector_cli("--anonymous", "whoami", cluster=imposter.address, env=env)
        assert ok(r).strip() == "anonymous on an open cluster"

    # A node of another secure cluster at that address must prove it is of hana's.
    with ProcCluster(tmp_path / "other", secure=True) as other:
        other.start(1)
        doc["addresses"].append(other.address)
        stored.write_text(json.dumps(doc))
        err = assert_one_error_line(
            sector_cli("whoami", cluster=other.address, env=env), "sector: error: "
        )
        assert f"not {cid}" in err, err
    # Where she logged in, all is as before.
    assert (
        json.loads(ok(sector_cli("whoami", "--json", cluster=up.address, env=env)))["user"]
        == "hana"
    )
