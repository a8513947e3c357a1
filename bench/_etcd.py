"""The etcd anchor of ``metadata.py`` (issue 17): the same work through a 3-member etcd
cluster on the same machine, at the same client concurrency.

etcd is the store Kubernetes trusts with its metadata: every put is a Raft round
(the leader and a majority fsync their WAL before it is acknowledged), which is the
same durability contract as a Sector metadata write (durable on a majority of k = 3
copies). The members run on loopback (Debian's ``etcd-server``; ports picked free,
data in a temp dir, stopped with SIGTERM). The clients speak etcd's JSON gateway
(``/v3/kv/put``, ``/v3/kv/range`` with ``serializable``: a local read on the member,
as a Sector stat is a read at the owner) over aiohttp, one session per client
process, N coroutines in flight: what ``metadata.py`` does with ``AsyncClient``.

The phases map as: ``mkdir`` and ``create`` -> a put of a new key (an empty value for
``create``, as the Sector phase puts empty files; a small directory-like value for
``mkdir``), ``stat`` -> a serializable get of a random key this client put.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

MEMBERS = 3
PHASES = ("mkdir", "create", "stat")


def available() -> str | None:
    """Why etcd cannot run here, or None."""
    if shutil.which("etcd") is None:
        return "etcd not installed (Debian: apt-get install etcd-server)"
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        return "aiohttp not installed"
    return None


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class EtcdCluster:
    """Three etcd members on loopback, in a temp dir; ``urls`` are their client URLs."""

    def __init__(self, base: Path) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="etcd-", dir=base))
        ports = _free_ports(2 * MEMBERS)
        self.urls = [f"http://127.0.0.1:{p}" for p in ports[:MEMBERS]]
        self.peers = [f"http://127.0.0.1:{p}" for p in ports[MEMBERS:]]
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> EtcdCluster:
        initial = ",".join(f"m{i}={u}" for i, u in enumerate(self.peers))
        for i in range(MEMBERS):
            log = open(self.dir / f"m{i}.log", "wb")
            self.procs.append(
                subprocess.Popen(
                    [
                        "etcd",
                        f"--name=m{i}",
                        f"--data-dir={self.dir / f'm{i}'}",
                        f"--listen-client-urls={self.urls[i]}",
                        f"--advertise-client-urls={self.urls[i]}",
                        f"--listen-peer-urls={self.peers[i]}",
                        f"--initial-advertise-peer-urls={self.peers[i]}",
                        f"--initial-cluster={initial}",
                        "--initial-cluster-state=new",
                        "--initial-cluster-token=sector-bench",
                        "--quota-backend-bytes=8589934592",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        self._wait_healthy(60.0)
        return self

    def _wait_healthy(self, timeout: float) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ok = 0
            for u in self.urls:
                with (
                    contextlib.suppress(OSError, ValueError),
                    urllib.request.urlopen(f"{u}/health", timeout=1) as r,
                ):
                    ok += b"true" in r.read()
            if ok == MEMBERS:
                return
            if any(p.poll() is not None for p in self.procs):
                break
            time.sleep(0.2)
        self.__exit__()
        raise RuntimeError(f"etcd did not become healthy (logs in {self.dir})")

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def _b64(s: str | bytes) -> str:
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()


async def _session(inflight: int) -> Any:
    """An aiohttp session (made on the loop that uses it) with a connection per caller."""
    import aiohttp

    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=inflight))


def client(k: int, url: str, cmds: Any, results: Any, barrier: Any) -> None:
    """One etcd client process (as ``metadata._client``): phases on command."""
    import aiohttp
    from _common import timed_async

    rng = random.Random(k)
    made: list[str] = []
    loop = asyncio.new_event_loop()
    session: aiohttp.ClientSession | None = None
    dir_value = _b64(b'{"type":"dir","children":0}')

    async def put(key: str, value: str) -> None:
        assert session is not None
        body = {"key": _b64(key), "value": value}
        async with session.post(f"{url}/v3/kv/put", json=body) as r:
            if r.status != 200:
                raise OSError(f"etcd put: HTTP {r.status}")
            await r.read()
        made.append(key)

    async def mkdir(name: str, i: int) -> None:
        await put(f"/bench/c{k}/s{i % 8}/d{name}", dir_value)

    async def create(name: str, i: int) -> None:
        await put(f"/bench/c{k}/s{i % 8}/f{name}", "")

    async def stat(name: str, i: int) -> None:
        assert session is not None
        body = {"key": _b64(rng.choice(made)), "serializable": True}
        async with session.post(f"{url}/v3/kv/range", json=body) as r:
            got = await r.json()
            if r.status != 200 or not got.get("kvs"):
                raise OSError(f"etcd range: HTTP {r.status}, {len(got.get('kvs') or [])} keys")

    ops = {"mkdir": mkdir, "create": create, "stat": stat}
    try:
        for run_no in itertools.count():
            if (cmd := cmds.get()) is None:
                break
            phase, seconds, inflight = cmd
            if session is None:
                session = loop.run_until_complete(_session(inflight))
            res = loop.run_until_complete(
                timed_async(
                    ops[phase],
                    seconds,
                    inflight,
                    f"r{run_no}-",
                    barrier,
                    (OSError, aiohttp.ClientError, asyncio.TimeoutError),
                )
            )
            res["sample"] = []
            results.put((k, phase, res))
    except BaseException:
        results.put((k, "error", traceback.format_exc()))
        barrier.abort()
    finally:
        if session is not None:
            loop.run_until_complete(session.close())
        loop.close()


def environment() -> dict[str, str]:
    """etcd's version, for the results."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["etcd", "--version"], capture_output=True, text=True, timeout=10)
        return {"etcd": out.stdout.splitlines()[0] if out.stdout else "?"}
    return {"etcd": "?"}


__all__ = ["PHASES", "EtcdCluster", "available", "client", "environment"]
