"""A local cluster of node processes on loopback: the logic of `sector up` / `sector down`.

Layout of a cluster directory::

    DIR/cluster.json          {"address", "addresses", "nodes": [{"data", "address", "pid", "id"}], "replicas"}
    DIR/node-<i>/             the data directory of node i (kept across down/up: same node ids, same files)
    DIR/node-<i>/node.json    written by the node once it listens: {"id", "address", "pid"}
    DIR/node-<i>/node.log     its stdout and stderr, appended to on every start

Nodes are started as ``python -m sector node`` in their own sessions, so they outlive
the `sector up` process and a Ctrl-C in its terminal does not reach them. Node 0
starts first; the others join it and start concurrently. A failed `up` stops every
node it started, so it never leaves half a cluster behind.

Stopping sends SIGTERM to every node at once (each leaves gracefully) and SIGKILLs
whatever is still running after the grace period. A pid is only signalled if it
still runs a node of this directory (checked through /proc where there is one), so a
stale cluster.json after a reboot cannot make us kill an unrelated process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sector.config import read_cluster_file, sector_home
from sector.errors import ClusterError, SectorError, UsageError
from sector.security import local as local_security

START_TIMEOUT = 45.0  # per wave of nodes, until each has written node.json (a busy host)
READY_TIMEOUT = 30.0  # until status() reports every node "up"
STOP_TIMEOUT = 15.0  # grace for a graceful leave before SIGKILL
POLL = 0.1


@dataclass(slots=True)
class _Started:
    index: int
    data: Path
    proc: subprocess.Popen[bytes]

    @property
    def log(self) -> Path:
        return self.data / "node.log"


def start_cluster(
    directory: Path,
    nodes: int = 3,
    replicas: int = 3,
    *,
    python: str = sys.executable,
    engines: int | None = None,
    secure: bool = True,
    start_timeout: float = START_TIMEOUT,
    ready_timeout: float = READY_TIMEOUT,
) -> dict[str, Any]:
    """Start ``nodes`` nodes in ``directory``, wait for the ring, return cluster.json.

    ``secure`` (the default): a cluster CA and node certificates are made in the
    directory (once), nodes serve TLS only and check every request, and the admin
    credential is stored for this user (``sector.security.local``)."""
    if nodes < 1 or replicas < 1:
        raise UsageError("a cluster needs at least 1 node and a replica target of at least 1")
    directory = directory.expanduser().resolve()
    if _live_nodes(directory):
        raise UsageError(f"a cluster is already running in {directory} (sector down first)")
    directory.mkdir(parents=True, exist_ok=True)
    _unlink(directory / "cluster.json")  # stale: its nodes are gone
    started: list[_Started] = []
    extra = ["--engines", str(engines)] if engines else []
    cluster_id = None
    if secure:
        ca = local_security.ensure_ca(directory)
        local_security.ensure_admin(ca, directory)
        cluster_id = ca.cluster_id

    def node_args(i: int) -> list[str]:
        # UDFs of a node see nothing of the cluster directory: not the other nodes'
        # data and keys beside its own, nor the admin key in security/.
        hide = ["--udf-hide", str(directory)]
        if not secure:
            return [*extra, *hide]
        tls = local_security.ensure_node_cert(ca, directory / f"node-{i}", f"local-{i}")
        return [*extra, *hide, "--tls", str(tls)]

    try:
        started.append(_spawn(directory, 0, replicas, None, python, node_args(0)))
        (first,) = _wait_listening(started, start_timeout)
        rest = [
            _spawn(directory, i, replicas, first["address"], python, node_args(i))
            for i in range(1, nodes)
        ]
        started += rest
        infos = [first, *_wait_listening(rest, start_timeout)]
        addresses = [str(i["address"]) for i in infos]
        cluster = {
            "address": addresses[0],
            "addresses": addresses,
            "http": infos[0].get("http"),  # the first node's web page (issue 16)
            "nodes": [
                {
                    "data": str(s.data),
                    "address": i["address"],
                    "pid": i.get("pid", s.proc.pid),
                    "id": i.get("id"),
                    "http": i.get("http"),
                }
                for s, i in zip(started, infos, strict=True)
            ],
            "replicas": replicas,
            "secure": secure,
            "cluster": cluster_id,
        }
        # Written before the readiness wait so that a `sector down` from another
        # terminal can stop a cluster whose ring never converges.
        _write_atomic(directory / "cluster.json", json.dumps(cluster, indent=2) + "\n")
        _wait_ready(addresses[0], started, ready_timeout, directory)
    except BaseException:
        _terminate(started)
        _unlink(directory / "cluster.json")
        raise
    home = sector_home()
    home.mkdir(parents=True, exist_ok=True)
    _write_atomic(home / "current", f"{directory}\n")
    return cluster


def stop_cluster(directory: Path, timeout: float = STOP_TIMEOUT) -> int:
    """Stop the nodes of the cluster in ``directory``; return how many were running."""
    directory = directory.expanduser().resolve()
    has_file = (directory / "cluster.json").exists()
    live = _live_nodes(directory)
    if not has_file and not live:
        read_cluster_file(directory)  # raises the standard "no local cluster in DIR"
    for pid in live:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while (left := [p for p in live if pid_alive(p)]) and time.monotonic() < deadline:
        time.sleep(POLL)
    for pid in left:
        # Its own session (start_new_session): the group also holds any worker
        # processes the node started, which must not outlive it.
        _signal(pid, signal.SIGKILL, group=True)
    deadline = time.monotonic() + 5.0
    while any(pid_alive(p) for p in left) and time.monotonic() < deadline:
        time.sleep(POLL)
    _unlink(directory / "cluster.json")
    pointer = sector_home() / "current"
    try:
        if Path(pointer.read_text().strip()).resolve() == directory:
            pointer.unlink()
    except OSError:
        pass
    return len(live)


# ---- starting --------------------------------------------------------------------


def _spawn(
    directory: Path,
    i: int,
    replicas: int,
    join: str | None,
    python: str,
    extra: list[str] | None = None,
) -> _Started:
    data = directory / f"node-{i}"
    data.mkdir(parents=True, exist_ok=True)
    # A node.json left by the previous run must not be taken for this one's.
    _unlink(data / "node.json")
    cmd = [python, "-m", "sector", "node", "--data", str(data), "--listen", "127.0.0.1:0"]
    cmd += ["--replicas", str(replicas)] + (["--join", join] if join else []) + (extra or [])
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # The package may be run from a source tree rather than installed.
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    with open(data / "node.log", "ab") as log:
        log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=data,
            env=env,
            start_new_session=True,
        )
    return _Started(i, data, proc)


def _wait_listening(started: list[_Started], timeout: float) -> list[dict[str, Any]]:
    """The node.json of each node, in order, once all are listening."""
    deadline = time.monotonic() + timeout
    found: dict[int, dict[str, Any]] = {}
    while len(found) < len(started):
        for s in started:
            if s.index in found:
                continue
            info = _read_json(s.data / "node.json")
            if info and info.get("address"):
                found[s.index] = info
            elif (rc := s.proc.poll()) is not None:
                raise ClusterError(
                    f"node {s.index} exited with code {rc} before listening{_tail(s.log)}"
                )
        if len(found) < len(started):
            if time.monotonic() > deadline:
                late = next(s for s in started if s.index not in found)
                raise ClusterError(
                    f"node {late.index} did not start listening within {timeout:.0f} s (see {late.log})"
                )
            time.sleep(POLL)
    return [found[s.index] for s in started]


def _wait_ready(address: str, started: list[_Started], timeout: float, directory: Path) -> None:
    """Poll status() until every node is "up": the ring has converged."""
    import sector

    deadline = time.monotonic() + timeout
    why = "no answer yet"
    while True:
        for s in started:
            if (rc := s.proc.poll()) is not None:
                raise ClusterError(f"node {s.index} exited with code {rc}{_tail(s.log)}")
        try:
            client = sector.connect(address)
            try:
                nodes = client.status().get("nodes") or []
            finally:
                client.close()
            up = sum(1 for n in nodes if n.get("state") == "up")
            if up >= len(started):
                return
            why = f"{up} of {len(started)} nodes up"
        except SectorError as e:
            why = str(e)
        if time.monotonic() > deadline:
            raise ClusterError(
                f"cluster not ready after {timeout:.0f} s: {why} (logs: {directory}/node-*/node.log)"
            )
        time.sleep(0.2)


def _terminate(started: list[_Started]) -> None:
    for s in started:
        if s.proc.poll() is None:
            s.proc.terminate()
    deadline = time.monotonic() + STOP_TIMEOUT
    for s in started:
        try:
            s.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal(s.proc.pid, signal.SIGKILL, group=True)
            s.proc.wait()


def _tail(log: Path) -> str:
    """': <last log line> (see LOG)' — the line that usually says why a node died."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines()]
    except OSError:
        return f" (see {log})"
    last = next((ln for ln in reversed(lines) if ln and not ln.startswith("---")), "")
    last = last.removeprefix("sector: error: ")  # a node's own CLI error, already one line
    return f": {last[:200]} (see {log})" if last else f" (see {log})"


# ---- processes -------------------------------------------------------------------


def _live_nodes(directory: Path) -> list[int]:
    """Pids of running nodes of ``directory``: from cluster.json and every node.json."""
    candidates: dict[int, Path] = {}
    info = _read_json(directory / "cluster.json") or {}
    for n in info.get("nodes") or []:
        if isinstance(n, dict) and isinstance(n.get("pid"), int):
            candidates[n["pid"]] = Path(str(n.get("data", "")))
    for nj in sorted(directory.glob("node-*/node.json")):
        pid = (_read_json(nj) or {}).get("pid")
        if isinstance(pid, int):
            candidates.setdefault(pid, nj.parent)
    return [pid for pid, data in candidates.items() if pid_alive(pid) and _runs_node_of(pid, data)]


def pid_alive(pid: int) -> bool:
    """Is ``pid`` a running process? A zombie is not (also used by
    ``sector.testing.netns`` to tell a killed run's leftovers from a live run's)."""
    try:
        # Reap it if it is our own child (a test calling start/stop in-process),
        # otherwise a dead node would linger as a zombie that kill(0) sees alive.
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def _runs_node_of(pid: int, data: Path) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # no /proc (macOS): trust the pid
    return os.fsencode(str(data)) in argv


def _signal(pid: int, sig: int, *, group: bool = False) -> None:
    try:
        if group and os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# ---- files -----------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # missing, or caught half-written
    return obj if isinstance(obj, dict) else None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
