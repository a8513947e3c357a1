"""Shared pieces of the integration suite: real node processes on loopback.

Every cluster here is a ``ProcCluster`` of ``python -m sector node`` processes on
ephemeral ports, killed with SIGKILL at teardown. Nothing of ours is mocked, and no
test sleeps and hopes: waiting is ``wait_for`` against a deadline.

Tests run under pytest-xdist (``-n 2``, load scheduling), so a module-scoped cluster
may be started once per worker; tests never rely on what another test wrote, each
works under a directory of its own.

The helpers are fixtures (this directory is not a package, so test modules cannot
import from here): ``sector_cli`` runs the real command in a subprocess,
``random_file`` writes random bytes and returns their digests.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import blake3
import pytest

CHUNK = 8 << 20
CLI_TIMEOUT = 180.0


@pytest.fixture(scope="session", autouse=True)
def _isolated_sector_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """No test may see (or fall over to) a cluster of the machine's own `sector up`.

    The client adds the addresses of ``$SECTOR_HOME/current`` as fall-back entries, so
    a developer's running local cluster would otherwise answer for an address where
    nothing listens. ProcCluster copies os.environ, so the nodes inherit this too.
    """
    home = tmp_path_factory.mktemp("sector-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SECTOR_HOME", str(home))
        mp.delenv("SECTOR_CLUSTER", raising=False)
        mp.delenv("SECTOR_DEBUG", raising=False)
        yield home


@dataclass(frozen=True)
class Digests:
    size: int
    sha256: str
    blake3: str  # in the form of the stat "checksum" field: "blake3:<hex>"


def write_random(path: Path, size: int) -> Digests:
    """``size`` random bytes into ``path`` (in chunks, so 200 MiB is not held in memory)."""
    sha, b3 = hashlib.sha256(), blake3.blake3()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(CHUNK, left))
            f.write(chunk)
            sha.update(chunk)
            b3.update(chunk)
            left -= len(chunk)
    return Digests(size, sha.hexdigest(), "blake3:" + b3.hexdigest())


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


@pytest.fixture(scope="session")
def random_file() -> Callable[[Path, int], Digests]:
    return write_random


@pytest.fixture(scope="session")
def file_sha256() -> Callable[[Path], str]:
    return sha256_of


CliRunner = Callable[..., subprocess.CompletedProcess[bytes]]


@pytest.fixture(scope="session")
def sector_cli() -> CliRunner:
    """``sector_cli(*args, cluster=ADDR, env={...})``: the real `sector` command.

    ``cluster`` is passed as ``--cluster`` before the command; ``env`` is added to the
    test process's environment (which holds the isolated SECTOR_HOME). Output is bytes:
    tests decode it themselves, so `cat` output is compared byte for byte.
    """

    def run(
        *args: str,
        cluster: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float = CLI_TIMEOUT,
    ) -> subprocess.CompletedProcess[bytes]:
        cmd = [sys.executable, "-m", "sector"]
        if cluster is not None:
            cmd += ["--cluster", cluster]
        cmd += list(args)
        return subprocess.run(
            cmd,
            capture_output=True,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONIOENCODING": "utf-8", **(env or {})},
            timeout=timeout,
            check=False,
        )

    return run
