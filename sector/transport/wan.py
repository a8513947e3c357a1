"""Bulk sockets fitted to long fat links (issue 15): congestion control, buffers, streams.

Measured over ``../shared/wanem`` (1 Gbit/s, 200 ms RTT, 1 % loss; README "WAN
transfer"): the kernel's cubic gets ~0 there (every random loss halves its window),
BBR does not read loss as congestion and gets most of the link, if its window can
grow to the bandwidth-delay product (25 MB here). So every bulk socket, both ends:

- **congestion control** (``auto``): ``bbr`` on a long stream when the kernel has it
  (the module ``tcp_bbr`` is loaded if missing and this process may), else the
  kernel's default, silently; a short stream (loopback, a LAN) keeps the kernel's
  default, where it fills the path and shares it fairly with other TCP flows;
  ``configure("cubic")`` (``sector node --bulk-cc``, ``SECTOR_BULK_CC``) pins one for
  every stream, and fails if the kernel does not have it;
  ``SECTOR_BULK_STREAMS=N`` pins the streams of a striped read likewise (on any
  path, loopback too; 1: never striped);
- **buffers**: on a long stream (smoothed RTT of at least ``LONG_RTT``, read from the
  kernel's ``TCP_INFO``) the send and receive buffers are raised to ``LONG_BUF``
  (``SO_SNDBUFFORCE``, which needs CAP_NET_ADMIN; else as far as ``net.core.*mem_max``
  lets ``SO_SNDBUF`` go), and so is the window clamp, which stays where the first
  buffer size (``tcp.tune`` at accept) put it otherwise. Short streams (loopback, a
  LAN) keep ``tcp.SOCK_BUF``: the loopback path is unchanged;
- **streams**: ``streams_for(rtt, size)``: a large read over a long stream is split into
  ``STREAMS`` ranges fetched at once (``stripe.py``): each stream's window is capped by
  what the host lets one socket have, and several windows fill the link sooner after
  a loss. Four, by measurement: eight overflowed the emulator's queue in start-up.
  With several live replicas the streams go to several holders (at least one each,
  nearest most: ``spans.allot``), and fail over per span.

Cost, said plainly: BBR (v1, what this kernel has) takes most of a link from a cubic
flow sharing it (README "WAN transfer" has the figures). So ``auto`` uses it only on
long streams, where cubic cannot fill the link anyway (one cubic stream gets ~0 of a
200 ms, 1 % loss path); ``--bulk-cc cubic`` is the way out where even that matters
more than the long links, ``--bulk-cc bbr`` puts every stream on BBR.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import socket
import struct
import subprocess
import time
from typing import Any

AVAILABLE = "/proc/sys/net/ipv4/tcp_available_congestion_control"
DEFAULT = "/proc/sys/net/ipv4/tcp_congestion_control"
LONG_RTT = 0.002  # s: a stream with a longer smoothed RTT is on a long link
LONG_BUF = 64 << 20  # bytes: 2.5 x the BDP of 1 Gbit/s x 200 ms
STREAMS = 4  # streams of a striped read on a long link (measured: README "WAN transfer")
STRIPE_MIN = 32 << 20  # a smaller read is not striped
# Striping over replicas on short paths (loopback, a LAN): on, by measurement (README
# "Striped reads over replicas": not slower than one stream on loopback, paired).
STRIPE_SHORT = True
FAR_FACTOR = 4  # a holder this many times farther than the nearest is not striped over
_TCP_INFO_RTT = 68  # offset of tcpi_rtt (us) in struct tcp_info
_SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def available() -> list[str]:
    return _read(AVAILABLE).split()


def _load(name: str) -> None:
    """Load ``tcp_<name>`` if this process may (root, modprobe there); quietly not."""
    if os.geteuid() == 0 and shutil.which("modprobe") and name.isalnum():
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(["modprobe", f"tcp_{name}"], capture_output=True, timeout=10)


def resolve(want: str) -> str:
    """The congestion control bulk sockets use: a name, or "" for the kernel's default.
    ``auto``: bbr if the kernel has (or can load) it; a name: that one, or ValueError."""
    if want == "auto":
        if "bbr" not in available():
            _load("bbr")
        return "bbr" if "bbr" in available() else ""
    if want not in available():
        _load(want)
        if want not in available():
            raise ValueError(
                f"congestion control {want!r} not in this kernel "
                f"(available: {' '.join(available()) or 'unknown'})"
            )
    return want


def _int_env(name: str) -> int:
    try:
        return max(0, int(os.environ.get(name, "0")))
    except ValueError:
        return 0


class _Settings:
    wanted = os.environ.get("SECTOR_BULK_CC", "auto")
    streams = _int_env("SECTOR_BULK_STREAMS")  # 0 = by the path (streams_for)
    cc: str | None = None  # resolved on first use


def configure(want: str) -> str:
    """Pin the congestion control of bulk sockets (``auto``, ``bbr``, ``cubic``...);
    returns what is used ("" = the kernel's default). Raises ValueError."""
    cc = resolve(want)
    _Settings.wanted, _Settings.cc = want, cc
    return cc


def congestion() -> str:
    if _Settings.cc is None:
        try:
            _Settings.cc = resolve(_Settings.wanted)
        except ValueError:  # a bad SECTOR_BULK_CC: the kernel's default, as auto would
            _Settings.cc = ""
    return _Settings.cc


def describe() -> dict[str, Any]:
    """For ``node.info`` / ``sector status --json``: what bulk sockets use here."""
    cc = congestion()
    return {
        "cc": cc or _read(DEFAULT),  # on long streams
        "cc_short": cc_for(0.0) or _read(DEFAULT),  # on loopback and LAN streams
        "cc_wanted": _Settings.wanted,
        "cc_available": available(),
        "long_rtt_ms": LONG_RTT * 1e3,
        "streams": _Settings.streams or STREAMS,
    }


def rtt(sock: socket.socket | None) -> float | None:
    """The kernel's smoothed RTT of a TCP socket in seconds (None if unknown yet)."""
    if sock is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    except (OSError, AttributeError):
        return None
    if len(info) < _TCP_INFO_RTT + 4:
        return None
    (us,) = struct.unpack_from("I", info, _TCP_INFO_RTT)
    return us / 1e6 if us else None


def cc_for(rtt_s: float | None) -> str:
    """The congestion control for a stream of this RTT ("" = leave the kernel's).
    ``auto`` gives BBR to long streams only; a pinned one applies to every stream."""
    cc = congestion()
    if _Settings.wanted == "auto" and (rtt_s is None or rtt_s < LONG_RTT):
        return ""
    return cc


def fit(sock: socket.socket | None) -> float | None:
    """Fit a bulk socket to its path (see the module's text); returns its RTT."""
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    r = rtt(sock)
    cc = cc_for(r)
    if cc:
        with contextlib.suppress(OSError):  # not allowed to this user: the default
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, cc.encode())
    if r is not None and r >= LONG_RTT:
        for force, plain in (
            (_SO_SNDBUFFORCE, socket.SO_SNDBUF),
            (_SO_RCVBUFFORCE, socket.SO_RCVBUF),
        ):
            try:
                sock.setsockopt(socket.SOL_SOCKET, force, LONG_BUF)
            except OSError:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, plain, LONG_BUF)
        # The receive window stays clamped where the buffer first set (``tcp.tune``, at
        # accept) put it, 5.5 MB here: raised with the buffer, or a put over a long link
        # crawls at 12 MB/s (``ss -ti``: rwnd_limited).
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_WINDOW_CLAMP, LONG_BUF)
    return r


def used(sock: socket.socket | None) -> str:
    """The congestion control a socket actually runs ("" if unknown)."""
    if sock is None:
        return ""
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16)
    except (OSError, AttributeError):
        return ""
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e3, 3)


def timed(res: dict[str, Any], t0: float) -> None:
    """A transfer's seconds and rate (bytes/s, of ``res["size"]``) into
    ``res["transfer"]`` (what get/put return; ``--json``)."""
    took = max(time.monotonic() - t0, 1e-9)
    res.setdefault("transfer", {"streams": 1})
    res["transfer"].update(seconds=round(took, 3), rate=round(int(res.get("size") or 0) / took))


def loopback(host: str) -> bool:
    """Whether ``host`` (an address) is this machine's loopback: never a long path."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def near(rtt_s: float | None, nearest: float) -> bool:
    """Whether a holder at ``rtt_s`` is worth reading beside the nearest one: within
    ``FAR_FACTOR`` times its RTT, or both on short paths. A holder across a WAN beside
    one on the LAN adds a slow tail, not speed (README "Striped reads over replicas")."""
    return rtt_s is not None and rtt_s <= max(LONG_RTT, FAR_FACTOR * nearest)


def chunking(rtt_s: float | None) -> tuple[int, int]:
    """How a striped read's streams ask for chunks on a path of this RTT
    (``stripe.fetch``): the least a chunk holds, and how many a stream asks for at
    once. On a long path two, so its holder never waits a round trip for the next
    request, and 8 MiB; on a short one (a round trip costs nothing) one at a time and
    2 MiB, so a slower holder is never left holding a chunk it was given in advance
    while a faster one has nothing left to read."""
    if rtt_s is not None and rtt_s >= LONG_RTT:
        return 8 << 20, 2
    return 2 << 20, 1


def streams_for(rtt_s: float | None, size: int, holders: int = 1) -> int:
    """Streams for a read of ``size`` bytes over a path of this RTT (the nearest
    holder's) from ``holders`` live replicas: on a short path one per holder
    (``STRIPE_SHORT``), so one from a single holder (whose one stream already runs at
    the disk's speed); ``STREAMS`` (at least one per holder) on a long one."""
    if size < STRIPE_MIN:
        return 1
    if _Settings.streams:  # pinned (SECTOR_BULK_STREAMS), for experiments
        return _Settings.streams
    if rtt_s is None or rtt_s < LONG_RTT:
        return holders if STRIPE_SHORT and holders > 1 else 1
    return max(STREAMS, holders)
