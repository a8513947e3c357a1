"""Bulk sockets on long links (issue 15): how a read is striped, when, and what a
socket is given (``transport/stripe.py``, ``transport/wan.py``)."""

from __future__ import annotations

import socket

import pytest

from sector.transport import stripe, wan


@pytest.mark.parametrize(
    "size,streams",
    [(0, 4), (1, 4), (5 << 20, 4), ((64 << 20) + 17, 4), (100 << 20, 8), (3 << 20, 1)],
)
def test_first_ranges_are_contiguous_on_mib_boundaries(size: int, streams: int) -> None:
    """The streams' first chunks: in order from 0, aligned, the whole file when it is
    small enough to be all taken at once, else one chunk per stream."""
    parts = stripe.ranges(size, streams)
    assert 1 <= len(parts) <= max(1, streams)
    pos = 0
    for off, n in parts:
        assert off == pos and n >= 0
        assert off % stripe.ALIGN == 0
        pos += n
    assert pos == size or (len(parts) == streams and pos < size)


def test_streams_only_for_large_reads_on_long_paths() -> None:
    big = wan.STRIPE_MIN
    assert wan.streams_for(None, big) == 1  # RTT unknown
    assert wan.streams_for(0.0001, big) == 1  # loopback: one stream is at the disk's speed
    assert wan.streams_for(0.05, big - 1) == 1  # too small to be worth it
    assert wan.streams_for(0.05, big) == wan.STREAMS > 1


def test_several_replicas_stripe_on_any_path_one_stream_each_at_least() -> None:
    big = wan.STRIPE_MIN
    assert wan.STRIPE_SHORT  # measured not slower on loopback (README "WAN transfer")
    assert wan.streams_for(0.0001, big, holders=3) == 3  # one per holder on a short path
    assert wan.streams_for(None, big, holders=2) == 2
    assert wan.streams_for(0.05, big, holders=2) == wan.STREAMS
    assert wan.streams_for(0.05, big, holders=wan.STREAMS + 2) == wan.STREAMS + 2
    assert wan.streams_for(0.0001, big - 1, holders=3) == 1  # too small


def test_only_holders_about_as_near_as_the_nearest_are_striped_over() -> None:
    assert wan.near(0.0003, 0.00005)  # a LAN holder beside one on this host: both short
    assert not wan.near(0.04, 0.00005)  # a WAN holder beside a LAN one: a slow tail
    assert wan.near(0.2, 0.05) and not wan.near(0.21, 0.05)  # within FAR_FACTOR x
    assert not wan.near(None, 0.01)  # no RTT: not reachable just now


def test_a_congestion_control_the_kernel_lacks_is_refused() -> None:
    with pytest.raises(ValueError, match="not in this kernel"):
        wan.resolve("nosuchcc")
    assert wan.resolve("auto") in ("", "bbr")


def _pair() -> tuple[socket.socket, socket.socket, socket.socket]:
    ls = socket.create_server(("127.0.0.1", 0))
    c = socket.create_connection(ls.getsockname())
    s, _ = ls.accept()
    return ls, c, s


def test_fit_keeps_the_kernels_cc_and_buffers_on_a_short_path() -> None:
    """``auto``: a loopback stream keeps the kernel's congestion control (fair to other
    TCP flows where it fills the path anyway) and its buffers."""
    ls, c, s = _pair()
    try:
        if "cubic" in wan.available():  # differ from bbr even where bbr is the default
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, b"cubic")
        kernel = wan.used(c)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        before = c.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        rtt = wan.fit(c)
        assert rtt is not None and rtt < wan.LONG_RTT  # the kernel's own RTT of loopback
        assert wan.used(c) == kernel
        # a short path keeps its buffers (the loopback path is unchanged)
        assert c.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == before
    finally:
        for x in (c, s, ls):
            x.close()


def test_auto_gives_bbr_to_long_paths_only_and_a_pinned_cc_to_every_path() -> None:
    wanted = wan._Settings.wanted
    try:
        assert wan.configure("auto") in ("", "bbr")
        assert wan.cc_for(0.0001) == "" and wan.cc_for(None) == ""
        assert wan.cc_for(0.2) == wan.congestion()
        if "bbr" in wan.available():
            assert wan.cc_for(0.2) == "bbr"
            wan.configure("bbr")
            assert wan.cc_for(0.0001) == "bbr"
            ls, c, s = _pair()
            try:
                wan.fit(c)
                assert wan.used(c) == "bbr"  # pinned: loopback too
            finally:
                for x in (c, s, ls):
                    x.close()
        wan.configure("cubic")
        assert wan.cc_for(0.2) == wan.cc_for(0.0) == "cubic"
    finally:
        wan.configure(wanted)


def test_loopback_addresses_are_never_probed_as_long_paths() -> None:
    assert wan.loopback("127.0.0.1") and wan.loopback("::1") and wan.loopback("localhost")
    assert not wan.loopback("10.200.1.2") and not wan.loopback("example.org")


def test_streams_ask_ahead_only_on_long_paths() -> None:
    """On a long path a stream asks for its next chunk before the current one is in
    (its holder would wait a round trip), on a short one one at a time, in smaller
    chunks (a slow holder is never left holding a chunk it was given in advance)."""
    assert wan.chunking(0.2) == (8 << 20, 2)
    assert wan.chunking(0.0001) == wan.chunking(None) == (2 << 20, 1)
