"""Emulated hosts for tests: Linux network namespaces on one bridge (root only).

``Hosts(n)`` makes n namespaces, each with one veth interface on a private /24 behind
a bridge in the root namespace, which also gets an address so the test process can
reach every host. Each host has its own IP address, so to Sector they are separate
machines (placement's "never two copies on one host" keys on the IP). Everything is
removed by ``close()``; names carry the creating pid so parallel test workers do not
collide.

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
import subprocess
import sys
from collections.abc import Iterable, Sequence

TABLE = "sectorpart"  # the nftables table (family inet) that holds a host's fault rules


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


class Hosts:
    _made_here = 0  # Hosts made by this process so far: a fresh name and subnet each

    def __init__(self, n: int) -> None:
        # A namespace's veth pair goes away some time after ``netns del`` returns:
        # a second Hosts in the same process must not reuse the first one's names.
        seq = Hosts._made_here
        Hosts._made_here += 1
        tag = f"{os.getpid() % 100000}{chr(ord('a') + seq % 26)}"
        self.subnet = f"10.{200 + os.getpid() % 50}.{(os.getpid() + 7 * seq) % 250}"
        self.bridge = f"sbr{tag}"
        self.names = [f"sec{tag}h{i}" for i in range(n)]
        self.ips = [f"{self.subnet}.{i + 1}" for i in range(n)]
        self._made: list[str] = []
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            self._made.append("bridge")
            _ip("addr", "add", f"{self.subnet}.254/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for i, (ns, ip) in enumerate(zip(self.names, self.ips, strict=True)):
                outside, inside = f"sv{tag}o{i}", f"sv{tag}i{i}"
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
