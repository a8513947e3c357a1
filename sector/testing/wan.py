"""An emulated long fat link between two hosts, for tests and ``bench/wan.py`` (root).

``WanLink(rtt_ms=200, rate_mbit=1000, loss_pct=1)`` makes two network namespaces,
sides ``a`` and ``b``, joined by ``wanemd`` (the userspace WAN emulator of
``../shared/wanem``: one-way delay of half the RTT, a rate limit with a drop-tail
queue, Bernoulli loss, per direction). Each side has one ``wan0`` TUN device with the
address ``ip("a")`` / ``ip("b")``; ``wrap(side)`` is the command prefix that runs a
program there (a node, a client, iperf3). Nothing is configured in the host's own
namespace: the addresses exist only inside the namespaces made here.

``wanemd`` is compiled with ``cc`` from its source (``$SECTOR_WANEM``, else
``../shared/wanem`` beside the repository) into a cache directory, never next to the
source; ``available()`` says whether it can be (the tests skip, saying why, if not).

Names carry a prefix, the creating pid and a letter (``wan1234a-a``): ``close()``
removes the emulator, both namespaces and every process left in them, and
``remove_stale(prefix)`` clears what a killed run left (instances whose creator is
gone), never a live run's.

``tcp_max``: the namespaces' ``tcp_rmem``/``tcp_wmem`` maxima in bytes. None (the
default) keeps what the host has (a new namespace copies it), i.e. the hosts are not
tuned; ``wanem`` itself raises both to 256 MB (as its ``ANCHORS.md`` was measured).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from sector.node.localcluster import pid_alive
from sector.testing.cluster import wait_for
from sector.testing.netns import run_iperf

DEV = "wan0"
ANCHOR_TCP_MAX = 256 << 20  # what wanem's `up` sets (its ANCHORS.md figures)


def wanem_source() -> Path | None:
    """The directory of ``wanemd.c``: ``$SECTOR_WANEM``, else ``../shared/wanem``."""
    env = os.environ.get("SECTOR_WANEM")
    cands = [Path(env)] if env else []
    cands.append(Path(__file__).resolve().parents[3] / "shared" / "wanem")
    return next((c for c in cands if (c / "wanemd.c").is_file()), None)


def available() -> str | None:
    """None if a link can be made here, else why not (for a test's skip)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun"
    if wanem_source() is None:
        return "no wanemd.c (set SECTOR_WANEM to the wanem directory)"
    if shutil.which("cc") is None:
        return "no C compiler (cc) to build wanemd"
    return None


def build() -> Path:
    """``wanemd`` compiled from its source into the cache (once per source version)."""
    src = wanem_source()
    if src is None:
        raise RuntimeError(available() or "no wanemd.c")
    code = (src / "wanemd.c").read_bytes()
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sector"
    out = cache / f"wanemd-{hashlib.sha256(code).hexdigest()[:12]}"
    if not out.exists():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".{os.getpid()}")
        subprocess.run(
            ["cc", "-O2", "-Wall", "-pthread", "-o", str(tmp), str(src / "wanemd.c")],
            check=True,
            capture_output=True,
            timeout=120,
        )
        os.replace(tmp, out)
    return out


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def _netns_pids(name: str) -> list[int]:
    out = subprocess.run(
        ["ip", "netns", "pids", name], capture_output=True, text=True, check=False, timeout=30
    )
    return [int(p) for p in out.stdout.split() if p.isdigit()]


def _kill_all(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _emulators(ns: str) -> list[int]:
    """Pids of the wanemd processes that serve namespace ``ns`` (side a's name)."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError):
                cmd = (d / "cmdline").read_bytes().split(b"\0")
                if b"--ns-a" in cmd and f"/run/netns/{ns}".encode() in cmd:
                    found.append(int(d.name))
    return found


class WanLink:
    _made_here = 0

    def __init__(
        self,
        rtt_ms: float,
        rate_mbit: float,
        loss_pct: float = 0.0,
        *,
        seed: int | None = None,
        queue_kb: int | None = None,
        tcp_max: int | None = None,
        prefix: str = "wan",
    ) -> None:
        if not re.fullmatch(r"[a-z]{1,4}", prefix):
            raise ValueError(f"a link prefix is 1 to 4 lower-case letters, not {prefix!r}")
        seq = WanLink._made_here
        WanLink._made_here += 1
        self.tag = f"{prefix}{os.getpid()}{chr(ord('a') + seq % 26)}"
        self.names = {"a": f"{self.tag}-a", "b": f"{self.tag}-b"}
        self.net = f"10.200.{1 + (os.getpid() + seq) % 250}"
        self.rtt_ms, self.rate_mbit, self.loss_pct = rtt_ms, rate_mbit, loss_pct
        if queue_kb is None:  # wanem's default: max(256 KB, rate x RTT)
            queue_kb = max(256, round(rate_mbit * 1e6 / 8 * rtt_ms / 1e3 / 1024))
        self.state = Path(tempfile.mkdtemp(prefix=f"{self.tag}-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self._made: list[str] = []
        try:
            daemon = build()
            for side, ns in self.names.items():
                _ip("netns", "add", ns)
                self._made.append(ns)
                _ip("-n", ns, "link", "set", "lo", "up")
                sysctl = ["net.ipv4.tcp_no_metrics_save=1", "net.ipv6.conf.all.disable_ipv6=1"]
                if tcp_max is not None:
                    sysctl += [
                        f"net.ipv4.tcp_rmem=4096 131072 {tcp_max}",
                        f"net.ipv4.tcp_wmem=4096 65536 {tcp_max}",
                    ]
                for kv in sysctl:
                    subprocess.run(
                        [*self.wrap(side), "sysctl", "-qw", kv], capture_output=True, check=False
                    )
            cmd = [
                str(daemon),
                *("--ns-a", f"/run/netns/{self.names['a']}"),
                *("--ns-b", f"/run/netns/{self.names['b']}"),
                *("--dev", DEV, "--delay-ms", f"{rtt_ms / 2:.6f}"),
                *("--rate-mbit", f"{rate_mbit:g}", "--queue-kb", str(queue_kb)),
                *("--loss-pct-ab", f"{loss_pct:g}", "--loss-pct-ba", f"{loss_pct:g}"),
                *("--stats", str(self.state / "stats")),
                *("--pidfile", str(self.state / "pid")),
            ]
            if seed is not None:
                cmd += ["--seed", str(seed)]
            log = open(self.state / "log", "wb")  # noqa: SIM115 (the daemon's for its life)
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
            log.close()
            wait_for(
                lambda: (self.state / "pid").exists() or self.proc.poll() is not None,  # type: ignore[union-attr]
                10,
                what="wanemd to start",
            )
            if self.proc.poll() is not None:
                raise RuntimeError(f"wanemd failed: {(self.state / 'log').read_text()[-500:]}")
            for i, ns in enumerate(self.names.values()):
                _ip("-n", ns, "addr", "add", f"{self.net}.{i + 1}/24", "dev", DEV)
                _ip("-n", ns, "link", "set", DEV, "mtu", "1500", "txqueuelen", "20000", "up")
        except BaseException:
            self.close()
            raise

    def ip(self, side: str) -> str:
        return f"{self.net}.{1 if side == 'a' else 2}"

    def wrap(self, side: str) -> list[str]:
        """The command prefix that runs a program on side ``a`` or ``b``."""
        return ["ip", "netns", "exec", self.names[side]]

    def stats(self) -> dict[str, str]:
        """The emulator's counters (``ab_drop_loss``, ``ab_rx_pkts``, ...)."""
        out: dict[str, str] = {}
        with contextlib.suppress(OSError):
            for line in (self.state / "stats").read_text().splitlines():
                k, _, v = line.partition("=")
                out[k.strip()] = v.strip()
        return out

    # ------------------------------------------------------------------ checks

    def ping(self, src: str = "a", count: int = 5) -> float:
        """The smallest round-trip time in ms from side ``src`` to the other one."""
        dst = self.ip("b" if src == "a" else "a")
        out = subprocess.run(
            [*self.wrap(src), "ping", "-n", "-q", "-c", str(count), "-i", "0.2", dst],
            capture_output=True,
            text=True,
            timeout=30 + count,
            check=True,
        ).stdout
        m = re.search(r"= ([\d.]+)/", out)
        if m is None:
            raise RuntimeError(f"ping said: {out[-300:]}")
        return float(m.group(1))

    def iperf_server(self, side: str = "b", port: int = 5201) -> subprocess.Popen[bytes]:
        """An iperf3 server on ``side`` (one test at a time; the caller kills it)."""
        return subprocess.Popen(
            [*self.wrap(side), "iperf3", "-s", "-B", self.ip(side), "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def iperf(
        self,
        seconds: float = 5.0,
        *,
        cc: str = "cubic",
        streams: int = 1,
        src: str = "a",
        port: int = 5201,
        server: bool = True,
    ) -> dict[str, float]:
        """iperf3 from ``src`` to the other side: received bits/s over the whole run
        (slow start included, like a file transfer) and the sender's retransmits.
        ``server=False``: one is already listening (``iperf_server``)."""
        dst = "b" if src == "a" else "a"
        srv = self.iperf_server(dst, port) if server else None
        cmd = [*self.wrap(src), "iperf3", "-J", "-c", self.ip(dst), "-p", str(port)]
        cmd += ["-t", f"{seconds:g}", "-C", cc, "-P", str(streams)]
        try:
            return run_iperf(cmd, seconds)
        finally:
            if srv is not None:
                srv.kill()
                srv.wait(10)

    # ------------------------------------------------------------------ sector

    def sector(
        self, side: str, cluster: str, *args: str, env: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """``sector ARGS --cluster CLUSTER --json`` run on ``side``: its JSON answer;
        RuntimeError with its error line if it fails."""
        cmd = [*self.wrap(side), sys.executable, "-m", "sector", *args]
        cmd += ["--cluster", cluster, "--json"]
        run = subprocess.run(
            cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, check=False
        )
        if run.returncode != 0:
            raise RuntimeError(f"sector {' '.join(args)}: {run.stderr.strip()[-500:]}")
        out: dict[str, Any] = json.loads(run.stdout)
        return out

    # ------------------------------------------------------------------ teardown

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for ns in reversed(self._made):
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                _kill_all(_netns_pids(ns))  # a process left would keep the namespace
                _ip("netns", "del", ns)
        self._made.clear()
        shutil.rmtree(self.state, ignore_errors=True)

    def __enter__(self) -> WanLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def remove_stale(prefix: str = "wan") -> list[str]:
        """Remove what links of processes no longer alive left behind (a SIGKILLed run):
        their emulators, the processes in their namespaces, the namespaces. Names of live
        creators are left alone. Returns the namespaces removed."""
        pattern = re.compile(rf"{re.escape(prefix)}(\d+)[a-z]-[ab]")
        out = subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True, check=False, timeout=30
        )
        removed = []
        for line in out.stdout.splitlines():
            name = line.split()[0] if line.split() else ""
            m = pattern.fullmatch(name)
            if m is None or pid_alive(int(m.group(1))):
                continue
            if name.endswith("-a"):
                _kill_all(_emulators(name))
            _kill_all(_netns_pids(name))
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                _ip("netns", "del", name)
                removed.append(name)
        return removed
