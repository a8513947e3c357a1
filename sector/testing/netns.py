"""Emulated hosts for tests: Linux network namespaces on one bridge (root only).

``Hosts(n)`` makes n namespaces, each with one veth interface on a private /24 behind
a bridge in the root namespace, which also gets an address so the test process can
reach every host. Each host has its own IP address, so to Sector they are separate
machines (placement's "never two copies on one host" keys on the IP). Everything is
removed by ``close()``; names carry a prefix (``sec`` unless told) and the creating
pid, so parallel test workers do not collide, and ``remove_stale(prefix)`` can clear
what a killed run of one user left behind (namespaces whose creator is gone, with the
processes still in them) without touching anyone else's.

Link speed: ``shape(rate)`` puts a token-bucket filter (``tc tbf``) on both ends of
each host's veth, so every host has a full-duplex link of ``rate`` bits/s into the
bridge: egress of the host's side shapes what it sends, egress of the bridge's side
what it receives (no ifb needed). ``iperf(a, b)`` measures one TCP stream between two
hosts (iperf3 must be installed). ``kill(i)`` SIGKILLs every process in host i: a
host that dies at once.

Network faults are nftables rules *inside* the hosts' namespaces (one table,
``inet sectorpart``, per namespace, replaced atomically by each call):
``partition(groups)`` drops every packet, both ways, between hosts of different
groups; ``one_way(src, dst)`` stops ``src`` hosts from opening new connections to
``dst`` hosts (established flows, and connections ``dst`` opens, keep working);
``heal()`` removes the rules. The bridge's own address (the test process) is never
cut, so the test can always reach every host. ``probe(port)`` says which host can
open a TCP connection to which, to prove a fault is in place (and gone).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence

from sector.node.localcluster import pid_alive

TABLE = "sectorpart"  # the nftables table (family inet) that holds a host's fault rules
# Token bucket of shape(): the burst lets a 100 Mbit/s link take a few packets at line
# speed (32 KB is 2.6 ms at 100 Mbit/s, ~3% of a 1 MB transfer); the 20 ms of queue
# absorb the bursts of a veth (which sends GSO packets at memory speed) without drops.
# Measured here, one TCP stream over a 100 Mbit/s link then gets 95.6 Mbit/s with no
# retransmits (10 ms: 95.3 with ~2,000 retransmits in 5 s; 1448 bytes of payload in
# 1514 on the wire cap it at 95.7).
TBF_BURST = 32 * 1024
TBF_LATENCY = 0.020


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def _tc(*args: str, wrap: list[str] | None = None) -> str:
    out = subprocess.run(
        [*(wrap or []), "tc", *args], check=True, capture_output=True, text=True, timeout=30
    )
    return out.stdout


def _netns_pids(name: str) -> list[int]:
    out = subprocess.run(
        ["ip", "netns", "pids", name], capture_output=True, text=True, check=False, timeout=30
    )
    return [int(p) for p in out.stdout.split() if p.isdigit()]


def run_iperf(cmd: list[str], seconds: float) -> dict[str, float]:
    """Run an iperf3 client (``-J``; its server takes a moment to listen, so it is
    retried for 15 s): bits/s received, the sender's retransmits, seconds."""
    deadline = time.monotonic() + 15
    while True:
        client = subprocess.run(
            cmd, capture_output=True, text=True, timeout=seconds + 60, check=False
        )
        with contextlib.suppress(ValueError, KeyError, TypeError):
            end = json.loads(client.stdout)["end"]
            return {
                "bits_per_second": float(end["sum_received"]["bits_per_second"]),
                "retransmits": float(end["sum_sent"].get("retransmits", 0)),
                "seconds": float(end["sum_received"]["seconds"]),
            }
        if time.monotonic() > deadline:
            raise RuntimeError(f"iperf3 failed: {(client.stdout + client.stderr)[-500:]}")
        time.sleep(0.1)


class Hosts:
    _made_here = 0  # Hosts made by this process so far: a fresh name and subnet each

    def __init__(self, n: int, prefix: str = "sec") -> None:
        if not re.fullmatch(r"[a-z]{1,3}", prefix):
            raise ValueError(f"a host prefix is 1 to 3 lower-case letters, not {prefix!r}")
        # A namespace's veth pair goes away some time after ``netns del`` returns:
        # a second Hosts in the same process must not reuse the first one's names.
        seq = Hosts._made_here
        Hosts._made_here += 1
        # The pid in every name is how remove_stale() knows a leftover from a live run.
        tag = f"{prefix}{os.getpid()}{chr(ord('a') + seq % 26)}"
        self.subnet = f"10.{200 + os.getpid() % 50}.{(os.getpid() + 7 * seq) % 250}"
        self.bridge = f"{tag}br"
        self.names = [f"{tag}h{i}" for i in range(n)]
        self.ips = [f"{self.subnet}.{i + 1}" for i in range(n)]
        # (bridge side, host side) of each host's veth pair
        self.links = [(f"{tag}o{i}", f"{tag}i{i}") for i in range(n)]
        self._made: list[str] = []
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            self._made.append("bridge")
            _ip("addr", "add", f"{self.subnet}.254/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for i, (ns, ip) in enumerate(zip(self.names, self.ips, strict=True)):
                outside, inside = self.links[i]
                _ip("netns", "add", ns)
                self._made.append(ns)
                _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
                _ip("link", "set", inside, "netns", ns)
                _ip("link", "set", outside, "master", self.bridge)
                _ip("link", "set", outside, "up")
                _ip("-n", ns, "addr", "add", f"{ip}/24", "dev", inside)
                _ip("-n", ns, "link", "set", inside, "up")
                _ip("-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise

    def wrap(self, i: int) -> list[str]:
        """The command prefix that runs a program on host i."""
        return ["ip", "netns", "exec", self.names[i]]

    # ------------------------------------------------------------------ links

    def shape(self, rate: float, burst: int = TBF_BURST, latency: float = TBF_LATENCY) -> None:
        """Give every host a full-duplex link of ``rate`` bits/s: a tbf qdisc on the
        egress of both ends of its veth (the host's end shapes what it sends, the
        bridge's end what it receives). ``burst`` bytes may pass at once; a packet
        waits at most ``latency`` seconds in the queue, then is dropped. Replaces any
        shaping in place."""
        spec = [
            "tbf",
            *("rate", f"{int(rate)}bit"),
            *("burst", str(int(burst))),
            *("latency", f"{int(latency * 1e6)}us"),
        ]
        for i, (outside, inside) in enumerate(self.links):
            _tc("qdisc", "replace", "dev", outside, "root", *spec)
            _tc("qdisc", "replace", "dev", inside, "root", *spec, wrap=self.wrap(i))

    def unshape(self) -> None:
        """Remove the links' qdiscs (back to the veth's default: no limit)."""
        for i, (outside, inside) in enumerate(self.links):
            with contextlib.suppress(subprocess.CalledProcessError):
                _tc("qdisc", "del", "dev", outside, "root")
            with contextlib.suppress(subprocess.CalledProcessError):
                _tc("qdisc", "del", "dev", inside, "root", wrap=self.wrap(i))

    def qdiscs(self, i: int) -> str:
        """What ``tc -s qdisc`` says of host i's link, both ends (drops, backlog)."""
        outside, inside = self.links[i]
        out = _tc("-s", "qdisc", "show", "dev", outside)
        return out + _tc("-s", "qdisc", "show", "dev", inside, wrap=self.wrap(i))

    def iperf(self, src: int, dst: int, seconds: float = 5.0, port: int = 5201) -> dict[str, float]:
        """One TCP stream from host ``src`` to host ``dst`` with iperf3 (installed):
        bits/s received, and the sender's retransmits."""
        server = subprocess.Popen(
            [*self.wrap(dst), "iperf3", "-s", "-B", self.ips[dst], "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            cmd = ["iperf3", "-J", "-c", self.ips[dst], "-p", str(port), "-t", f"{seconds:g}"]
            return run_iperf([*self.wrap(src), *cmd], seconds)
        finally:
            if server.poll() is None:
                server.kill()
            server.wait(10)

    # ------------------------------------------------------------------ processes

    def pids(self, i: int) -> list[int]:
        """Every process running in host i's namespace."""
        return _netns_pids(self.names[i])

    def kill(self, i: int) -> list[int]:
        """SIGKILL every process in host i (the host dies at once); the pids killed."""
        pids = self.pids(i)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return pids

    @staticmethod
    def remove_stale(prefix: str) -> list[str]:
        """Remove what Hosts(prefix=...) of processes no longer alive left behind (a run
        that was SIGKILLed): their namespaces, after SIGKILLing every process still in
        them, and their bridges. Names of live creators are left alone. Returns the
        names removed."""
        pattern = re.compile(rf"{re.escape(prefix)}(\d+)[a-z](?:h\d+|br)")
        removed: list[str] = []

        def stale(name: str) -> bool:
            m = pattern.fullmatch(name)
            return m is not None and not pid_alive(int(m.group(1)))

        netns = subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True, check=False, timeout=30
        )
        for line in netns.stdout.splitlines():
            name = line.split()[0] if line.split() else ""
            if stale(name):
                for pid in _netns_pids(name):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.SubprocessError, OSError):
                    _ip("netns", "del", name)
                    removed.append(name)
        links = subprocess.run(
            ["ip", "-o", "link", "show", "type", "bridge"],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        for line in links.stdout.splitlines():
            parts = line.split(":")
            name = parts[1].strip().split("@")[0] if len(parts) > 1 else ""
            if stale(name):
                with contextlib.suppress(subprocess.SubprocessError, OSError):
                    _ip("link", "del", name)
                    removed.append(name)
        return removed

    # ------------------------------------------------------------------ faults

    def _nft(self, i: int, script: str) -> None:
        """Run an nft script in host i's namespace (one transaction: all or nothing)."""
        subprocess.run(
            [*self.wrap(i), "nft", "-f", "-"],
            input=script.encode(),
            check=True,
            capture_output=True,
            timeout=30,
        )

    def _apply(self, rules: dict[int, tuple[list[str], list[str]]]) -> None:
        """Replace every host's table: ``{host: (IPs cut both ways, IPs it may not open
        connections to)}``; a host with nothing to cut gets no table."""
        for i in range(len(self.names)):
            cut, new_out = rules.get(i, ([], []))
            # Declaring the table then deleting it makes the delete safe when none
            # exists; the new table follows in the same transaction.
            script = f"table inet {TABLE}\ndelete table inet {TABLE}\n"
            if cut or new_out:
                lines = [f"table inet {TABLE} {{"]
                lines.append("  chain input { type filter hook input priority 0; policy accept;")
                if cut:
                    lines.append(f"    ip saddr {{ {', '.join(cut)} }} drop")
                lines.append("  }")
                lines.append("  chain output { type filter hook output priority 0; policy accept;")
                if cut:
                    lines.append(f"    ip daddr {{ {', '.join(cut)} }} drop")
                if new_out:
                    lines.append(f"    ip daddr {{ {', '.join(new_out)} }} ct state new drop")
                lines.append("  }")
                lines.append("}")
                script += "\n".join(lines) + "\n"
            self._nft(i, script)

    def partition(self, groups: Sequence[Iterable[int]]) -> None:
        """Cut the hosts into ``groups`` (lists of host indices): every packet between
        hosts of different groups is dropped, in and out. A host in no group is cut
        from nobody. Replaces any fault in place."""
        sets = [set(g) for g in groups]
        rules: dict[int, tuple[list[str], list[str]]] = {}
        for k, g in enumerate(sets):
            others = sorted(j for m, h in enumerate(sets) if m != k for j in h)
            for i in g:
                rules[i] = ([self.ips[j] for j in others], [])
        self._apply(rules)

    def one_way(self, src: Iterable[int], dst: Iterable[int]) -> None:
        """Hosts ``src`` cannot open new connections to hosts ``dst`` (their first
        packets are dropped on the way out); flows already established, and
        connections opened by ``dst`` hosts, keep working. Replaces any fault."""
        targets = [self.ips[j] for j in sorted(set(dst))]
        self._apply({i: ([], targets) for i in set(src)})

    def heal(self) -> None:
        """Remove every fault rule from every host."""
        self._apply({})

    def rules(self, i: int) -> str:
        """Host i's fault table as nft prints it ("" when none)."""
        out = subprocess.run(
            [*self.wrap(i), "nft", "list", "ruleset"], check=True, capture_output=True, timeout=30
        )
        return out.stdout.decode()

    def probe(self, port: int, timeout: float = 1.0) -> set[tuple[int, int]]:
        """Which host can open a TCP connection to which: the pairs (i, j), i != j,
        for which a connect from host i's namespace to ``ips[j]:port`` succeeded
        (something must listen there). All hosts probe at once."""
        procs = []
        for i in range(len(self.names)):
            targets = [ip for j, ip in enumerate(self.ips) if j != i]
            procs.append(
                subprocess.Popen(
                    [
                        *self.wrap(i),
                        sys.executable,
                        "-c",
                        _PROBE,
                        str(port),
                        str(timeout),
                        *targets,
                    ],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                )
            )
        ok: set[tuple[int, int]] = set()
        for i, p in enumerate(procs):
            out, err = p.communicate(timeout=30 + 5 * timeout)
            if p.returncode != 0:
                raise RuntimeError(f"probe from host {i} failed: {err.decode()[-500:]}")
            for ip in json.loads(out):
                ok.add((i, self.ips.index(ip)))
        return ok

    def close(self) -> None:
        for ns in reversed(self._made):
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                if ns == "bridge":
                    _ip("link", "del", self.bridge)
                else:
                    # A process left in a namespace would keep it (and its veth) alive
                    # after ``netns del``: whatever still runs in a host goes with it.
                    for pid in _netns_pids(ns):
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                    _ip("netns", "del", ns)  # takes its veth pair with it
        self._made.clear()

    def __enter__(self) -> Hosts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# Run inside a namespace: connect to every target at once, print those that answered.
_PROBE = """
import asyncio, json, sys
port, timeout, targets = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
async def one(ip):
    try:
        _, w = await asyncio.wait_for(asyncio.open_connection(ip, port), timeout)
    except (OSError, asyncio.TimeoutError):
        return None
    w.close()
    return ip
async def main():
    return [ip for ip in await asyncio.gather(*(one(t) for t in targets)) if ip]
print(json.dumps(asyncio.run(main())))
"""
