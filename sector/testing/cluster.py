"""Real clusters for tests, benchmarks and the demo: node *processes* on loopback.

``ProcCluster`` starts ``python -m sector node`` processes on ephemeral ports (port 0:
a node writes its real address into ``<data>/node.json`` when it is ready), and gives
fault hooks: ``kill`` (SIGKILL), ``stop`` (SIGTERM: graceful leave), ``restart``,
``add``. ``wait_for`` polls a condition against a deadline, never sleeps and hopes.

``ProcCluster(root, secure=True)`` makes a *secure* cluster (issue 5): a cluster CA is
created and saved in ``root/security``, each node gets a certificate of it in
``<data>/tls`` and is started with ``--tls``; ``token(user, ...)`` issues credentials
and ``admin_token`` is an admin's. The cluster's own checks (``status``, ``wait_ring``)
present the admin credential, so they never depend on ``$SECTOR_HOME``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from sector.client import Client
    from sector.security.pki import ClusterCA

T = TypeVar("T")


def wait_for(
    cond: Callable[[], T | None],
    timeout: float = 30.0,
    interval: float = 0.1,
    what: str = "condition",
) -> T:
    """Poll ``cond`` until it returns a truthy value; fail with a message at the deadline."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            v = cond()
            if v:
                return v
        except Exception as exc:  # the condition may fail while the cluster settles
            last_exc = exc
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"timed out after {timeout:g} s waiting for {what}"
                + (f" (last error: {last_exc})" if last_exc else "")
            )
        time.sleep(interval)


@dataclass
class NodeProc:
    index: int
    data: Path
    args: list[str]
    proc: subprocess.Popen[bytes] | None = None
    address: str = ""
    node_id: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def log(self) -> Path:
        return self.data / "node.log"


class ProcCluster:
    def __init__(
        self,
        root: Path,
        *,
        replicas: int = 3,
        env: dict[str, str] | None = None,
        node_args: list[str] | None = None,
        secure: bool = False,
    ) -> None:
        self.root = root
        self.replicas = replicas
        self.node_args = list(node_args or [])
        self.nodes: list[NodeProc] = []
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.secure = secure
        self.ring_why = ""  # why ring_consistent last said no
        self.ca: ClusterCA | None = None
        self.admin_token: str | None = None
        if secure:
            from sector.security.pki import ClusterCA

            self.ca = ClusterCA.create("test")
            self.ca.save(root / "security")
            self.admin_token = self.token("admin", write=["/"], compute=True, admin=True)

    def token(self, user: str, **grant: Any) -> str:
        """A credential of this (secure) cluster for ``user``: ``tokens.issue`` keywords
        (``write``, ``read``, ``compute``, ``admin``, ``ttl``; ``now`` defaults to now)."""
        from sector.security import tokens

        if self.ca is None:
            raise RuntimeError("an open cluster has no credentials (ProcCluster(secure=True))")
        grant.setdefault("now", time.time())
        return tokens.issue(self.ca, user, **grant)

    def connect(self, address: str | None = None, **kw: Any) -> Client:
        """A client of this cluster; on a secure one it presents the admin credential
        unless ``token=`` or ``anonymous=True`` is given."""
        from sector.client import connect

        if self.admin_token is not None and not kw.get("anonymous"):
            kw.setdefault("token", self.admin_token)
        return connect(address or self.address, **kw)

    @property
    def address(self) -> str:
        return next(n.address for n in self.nodes if n.alive)

    def addresses(self) -> list[str]:
        return [n.address for n in self.nodes if n.alive]

    def start(self, n: int, **kw: Any) -> ProcCluster:
        first = self.add(**kw)
        rest = [self._spawn(join=first.address, **kw) for _ in range(n - 1)]
        for node in rest:
            self._wait_ready(node)
        self.wait_ring()
        return self

    def add(self, join: str | None = None, **kw: Any) -> NodeProc:
        if join is None and self.nodes:
            join = self.address
        node = self._spawn(join=join, **kw)
        self._wait_ready(node)
        return node

    def spawn(self, join: str | None = None, **kw: Any) -> NodeProc:
        """Start a node and do not wait for it: one that may never become ready (a
        rogue trying to join); ``_spawn``'s keywords. Its output is in ``node.log``."""
        return self._spawn(join=join, **kw)

    def _spawn(
        self,
        join: str | None = None,
        topology: str = "",
        quota: int | None = None,
        data: Path | None = None,
        listen: str = "127.0.0.1:0",
        wrap: list[str] | None = None,
        tls: Path | None = None,
    ) -> NodeProc:
        """``wrap``: a command prefix, e.g. ``["ip", "netns", "exec", NS]`` to run the
        node on another (emulated) host. ``tls``: a directory with ``node.crt``,
        ``node.key`` and ``ca.crt`` (default on a secure cluster: a certificate of its CA
        for ``n<i>``, issued into ``<data>/tls``)."""
        i = len(self.nodes)
        data = data or self.root / f"node-{i}"
        data.mkdir(parents=True, exist_ok=True)
        if tls is None and self.ca is not None:
            tls = data / "tls"
            if not (tls / "node.crt").exists():
                self.ca.issue_node(f"n{i}").save(tls)
        args = [
            *(wrap or []),
            sys.executable,
            "-m",
            "sector",
            "node",
            "--data",
            str(data),
            "--listen",
            listen,
            "--replicas",
            str(self.replicas),
        ]
        if join:
            args += ["--join", join]
        if topology:
            args += ["--topology", topology]
        if quota is not None:
            args += ["--quota", str(quota)]
        if tls is not None:
            args += ["--tls", str(tls)]
        args += self.node_args
        node = NodeProc(i, data, args)
        self.nodes.append(node)
        self._launch(node)
        return node

    def _launch(self, node: NodeProc) -> None:
        with contextlib.suppress(FileNotFoundError):
            (node.data / "node.json").unlink()
        logf = open(node.log, "ab")  # noqa: SIM115 - handed to the child
        node.proc = subprocess.Popen(
            node.args, stdout=logf, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )
        logf.close()

    def _wait_ready(self, node: NodeProc, timeout: float = 30.0) -> None:
        def ready() -> dict[str, Any] | None:
            if not node.alive:
                raise RuntimeError(f"node {node.index} exited: {node.log.read_text()[-2000:]}")
            with contextlib.suppress(OSError, ValueError):
                info: dict[str, Any] = json.loads((node.data / "node.json").read_text())
                return info
            return None

        found = wait_for(ready, timeout, what=f"node {node.index} to listen")
        node.address = found["address"]
        node.node_id = found["id"]

    def status(self) -> dict[str, Any]:
        with self.connect() as c:
            return c.status()

    def wait_ring(self, timeout: float = 30.0) -> None:
        """Until every live node is seen up by every live node and the ring is whole."""
        want = {n.address for n in self.nodes if n.alive}

        def ok() -> bool:
            # Every live node sees every other up: a put's placement runs on the path's
            # owner, whose view must hold R nodes for R copies.
            with self.connect() as c:
                for addr in want:
                    st = c._run(c._aio.pool.call(addr, "fs.status", {}))
                    up = {m["address"] for m in st["nodes"] if m["state"] == "up"}
                    if not want <= up:
                        return False
            return True

        wait_for(ok, timeout, interval=0.2, what=f"{len(want)} nodes up in every node's view")
        try:
            wait_for(self.ring_consistent, timeout, interval=0.2, what="a consistent ring")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; last seen: {self.ring_why}") from None

    def ring_consistent(self) -> bool:
        """Each live node's successor is the next live node by id, and predecessors agree."""
        live = sorted((n for n in self.nodes if n.alive), key=lambda n: int(n.node_id, 16))
        with self.connect() as c:
            infos: dict[str, Any] = {
                n.address: c._run(c._aio.pool.call(n.address, "node.info", {})) for n in live
            }
            for i, n in enumerate(live):
                info = infos[n.address]
                succ = live[(i + 1) % len(live)]
                pred = live[i - 1]
                if len(live) > 1 and (
                    not info["ring"]["successors"] or info["ring"]["successors"][0] != succ.address
                ):
                    self.ring_why = (
                        f"node {n.index} ({n.address}): successors {info['ring']['successors']},"
                        f" want {succ.address}; rings: {self._rings(infos)}"
                    )
                    return False
                if len(live) > 1 and info["ring"]["predecessor"] != pred.address:
                    self.ring_why = (
                        f"node {n.index} ({n.address}): predecessor {info['ring']['predecessor']},"
                        f" want {pred.address}; rings: {self._rings(infos)}"
                    )
                    return False
        return True

    @staticmethod
    def _rings(infos: dict[str, Any]) -> str:
        """Every node's ring state and chord workers, for a failure message."""
        return "; ".join(
            f"{addr}: {info['ring']} workers "
            + str([w for w in info["workers"] if str(w.get("name", "")).startswith("chord.")])
            for addr, info in infos.items()
        )

    def kill(self, node: NodeProc) -> None:
        """SIGKILL: no goodbye, no handoff."""
        if node.proc is not None and node.alive:
            node.proc.send_signal(signal.SIGKILL)
            node.proc.wait(10)

    def stop(self, node: NodeProc, timeout: float = 30.0) -> None:
        """SIGTERM: a graceful leave (handoff, then exit)."""
        if node.proc is not None and node.alive:
            node.proc.send_signal(signal.SIGTERM)
            try:
                node.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                node.proc.send_signal(signal.SIGUSR1)  # the node dumps its threads' stacks
                node.proc.send_signal(signal.SIGUSR2)  # ... and its asyncio tasks'
                time.sleep(1)
                tail = node.log.read_text(errors="replace")[-6000:]
                raise TimeoutError(
                    f"node {node.index} did not exit within {timeout:g} s of SIGTERM; "
                    f"its log ends:\n{tail}"
                ) from None

    def restart(self, node: NodeProc) -> None:
        if node.alive:
            self.kill(node)
        if self.address and "--join" not in node.args:
            node.args += ["--join", self.address]
        self._launch(node)
        self._wait_ready(node)

    def close(self) -> None:
        for n in self.nodes:
            if n.alive and n.proc is not None:
                n.proc.send_signal(signal.SIGKILL)
        for n in self.nodes:
            if n.proc is not None:
                with contextlib.suppress(Exception):
                    n.proc.wait(10)

    def __enter__(self) -> ProcCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def metric_total(nodes: list[NodeProc], name: str, **labels: str) -> float:
    """A sample of the nodes' ``/metrics`` summed over them: every sample called
    ``name`` whose labels include ``labels``."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for n in nodes:
        url = str(json.loads((n.data / "node.json").read_text())["http"]) + "metrics"
        with urllib.request.urlopen(url, timeout=30) as r:
            text = r.read().decode()
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if s.name == name and labels.items() <= s.labels.items():
                    total += s.value
    return total
