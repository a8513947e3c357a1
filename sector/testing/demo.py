"""`make demo`: a local cluster doing real work, through the real CLI.

Starts 5 node processes on loopback (`sector up`), stores sample files (small,
unicode-named, and 64 MiB), lists and reads them back byte for byte, shows `stat` and
`status`, then runs Sphere's hello world -- TeraSort of 1M records generated on the
nodes, sorted in two stages where the data lives, validated -- and a shell-command
job (`sphere stream`), shows the write ACL (a user who may write only /alice;
anonymous reads), SIGKILLs one node and reads everything again, then stops the
cluster (`KEEP=1` leaves it running for you to play with).
"""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path


def sector(*args: str, capture: bool = False) -> str:
    cmd = [sys.executable, "-m", "sector", *args]
    print("$ sector " + " ".join(a if len(a) < 40 else a[:12] + "..." for a in args), flush=True)
    if capture:
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
        return out
    subprocess.run(cmd, check=True)
    return ""


def refused(args: list[str]) -> None:
    """A command that must fail with a one-line permission error."""
    print("$ sector " + " ".join(a if len(a) < 40 else a[:12] + "..." for a in args), flush=True)
    cmd = [sys.executable, "-m", "sector", *args]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 1 and "permission denied" in r.stderr, r
    print(r.stderr.strip(), flush=True)


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="sector-demo-"))
    home = work / "home"
    os.environ["SECTOR_HOME"] = str(home)
    cluster = work / "cluster"
    try:
        sector("up", "-n", "5", "--dir", str(cluster))
        src = work / "samples"
        src.mkdir()
        (src / "hello.txt").write_text("hello, sector\n")
        (src / "données à trier.csv").write_text("".join(f"{i},{i * i}\n" for i in range(10000)))
        (src / "big.bin").write_bytes(os.urandom(64 << 20))
        sector("mkdir", "-p", "/demo/in")
        sector(
            "put",
            str(src / "hello.txt"),
            str(src / "données à trier.csv"),
            str(src / "big.bin"),
            "/demo/in",
        )
        sector("ls", "-l", "/demo/in")
        sector("stat", "/demo/in/big.bin")
        sector("cat", "/demo/in/hello.txt")
        back = work / "back"
        back.mkdir()
        sector("get", "-r", "/demo/in", str(back))
        for f in src.iterdir():
            assert filecmp.cmp(f, back / "in" / f.name, shallow=False), f"{f.name} differs"
        print("read back byte for byte: ok", flush=True)
        sector("status")
        print("\nSphere: TeraSort, generated on the nodes, sorted where the data lives", flush=True)
        sector("terasort", "gen", "--records", "1000000", "--files", "5", "/demo/ts")
        sector("terasort", "sort", "/demo/ts", "/demo/sorted")
        sector("terasort", "validate", "/demo/sorted", "--input", "/demo/ts")
        out = sector(
            "sphere",
            "stream",
            "-c",
            "wc -l",
            "/demo/in/données à trier.csv",
            "--records",
            "lines",
            capture=True,
        )
        lines = sum(int(x) for x in out.split())
        assert lines == 10000, f"sphere stream counted {lines} lines"
        print(f"sphere stream -c 'wc -l': {lines} lines, counted on the nodes: ok", flush=True)
        print("\nSecurity: anyone reads, only the write ACL writes", flush=True)
        cred = sector("user", "add", "alice", "--write", "/alice", capture=True).strip()
        refused(["--anonymous", "put", str(src / "hello.txt"), "/demo/in/x.txt"])
        sector("--anonymous", "cat", "/demo/in/hello.txt")
        sector("--token", cred, "put", str(src / "hello.txt"), "/alice/hello.txt")
        refused(["--token", cred, "rm", "/demo/in/hello.txt"])
        info = json.loads((cluster / "cluster.json").read_text())
        victim = info["nodes"][-1]
        print(f"\nkill -9 node at {victim['address']} (pid {victim['pid']})", flush=True)
        os.kill(victim["pid"], signal.SIGKILL)
        back2 = work / "back2"
        back2.mkdir()
        sector("get", "-r", "/demo/in", str(back2))
        for f in src.iterdir():
            assert filecmp.cmp(f, back2 / "in" / f.name, shallow=False), (
                f"{f.name} differs after kill"
            )
        print("every file still readable after SIGKILL of a node: ok", flush=True)
        sector("ls", "/demo/in")
        sector("status")
        return 0
    finally:
        if os.environ.get("KEEP") != "1":
            subprocess.run(
                [sys.executable, "-m", "sector", "down", "--dir", str(cluster)], check=False
            )
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"cluster left running: SECTOR_HOME={home} sector status", flush=True)


if __name__ == "__main__":
    sys.exit(main())
