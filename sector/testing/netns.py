"""Emulated hosts for tests: Linux network namespaces on one bridge (root only).

``Hosts(n)`` makes n namespaces, each with one veth interface on a private /24 behind
a bridge in the root namespace, which also gets an address so the test process can
reach every host. Each host has its own IP address, so to Sector they are separate
machines (placement's "never two copies on one host" keys on the IP). Everything is
removed by ``close()``; names carry the creating pid so parallel test workers do not
collide.
"""

from __future__ import annotations

import contextlib
import os
import subprocess


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


class Hosts:
    def __init__(self, n: int) -> None:
        tag = os.getpid() % 100000
        self.subnet = f"10.{200 + os.getpid() % 50}.{os.getpid() % 250}"
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
