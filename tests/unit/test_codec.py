"""The sans-I/O frame codec: round trips over a fake link, and every way a peer can lie.

No sockets here (h11's habit): an encoder and a decoder are joined by a ``FakeLink``
that hands the decoder the encoded bytes in whatever pieces a test chooses, one byte
at a time or at random split points drawn by hypothesis. A real TCP stream may cut a
frame anywhere, so the decoder must give the same messages however the bytes arrive.
"""

from __future__ import annotations

import itertools
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sector.errors import ProtocolError
from sector.wire import codec
from sector.wire.codec import DEFAULT_MAX_FRAME, HEADER, Envelope, FrameDecoder


class FakeLink:
    """One direction of a connection: envelopes in at one end, bytes out in chosen pieces."""

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.wire = bytearray()
        self.decoder = FrameDecoder(max_frame)

    def send(self, env: Envelope) -> None:
        self.wire += codec.encode(env)

    def deliver(self, cuts: list[int]) -> list[Envelope]:
        """Feed everything sent so far, cut at the given offsets; return what was decoded."""
        data = bytes(self.wire)
        self.wire.clear()
        bounds = [0, *sorted({c for c in cuts if 0 < c < len(data)}), len(data)]
        out: list[Envelope] = []
        for lo, hi in itertools.pairwise(bounds):
            out += self.decoder.feed(data[lo:hi])
        return out


def raw_frame(body: bytes) -> bytes:
    return HEADER.pack(len(body)) + body


def msgpack_frame(obj: Any) -> bytes:
    return raw_frame(msgspec.msgpack.encode(obj))


# -- strategies -----------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=40)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=5,
)
ids = st.integers(min_value=0, max_value=2**63 - 1)
requests = st.builds(
    Envelope,
    i=ids,
    op=st.text(min_size=1, max_size=16),
    a=st.dictionaries(st.text(max_size=10), values, max_size=5),
)
replies = st.builds(Envelope, i=ids, r=values)
errors = st.builds(
    Envelope,
    i=ids,
    e=st.fixed_dictionaries(
        {"type": st.sampled_from(["NotFound", "BadRequest"]), "msg": st.text(max_size=30)}
    ),
)
envelopes = requests | replies | errors


# -- round trips ----------------------------------------------------------------------


def test_request_reply_and_error_helpers_round_trip() -> None:
    frames = (
        codec.request(7, "fs.stat", {"path": "/a", "n": [1, 2.5, b"\x00"]})
        + codec.reply(7, {"size": 3})
        + codec.error(8, {"type": "NotFound", "msg": "no /a", "data": {"path": "/a"}})
    )
    req, rep, err = FrameDecoder().feed(frames)
    assert (req.i, req.op, req.a, req.is_request) == (
        7,
        "fs.stat",
        {"path": "/a", "n": [1, 2.5, b"\x00"]},
        True,
    )
    assert (rep.i, rep.r, rep.e, rep.is_request) == (7, {"size": 3}, None, False)
    assert (err.i, err.r, err.e) == (
        8,
        None,
        {"type": "NotFound", "msg": "no /a", "data": {"path": "/a"}},
    )


def test_a_request_without_arguments_decodes_with_an_empty_dict() -> None:
    (env,) = FrameDecoder().feed(codec.encode(Envelope(i=1, op="node.ping")))
    assert env.a == {}
    assert env.is_request


def test_a_reply_of_none_round_trips() -> None:
    (env,) = FrameDecoder().feed(codec.reply(3, None))
    assert env == Envelope(i=3)
    assert not env.is_request


def test_a_frame_of_exactly_the_limit_is_accepted() -> None:
    body = msgspec.msgpack.encode({"i": 1, "r": "x" * 50})
    dec = FrameDecoder(max_frame=len(body))
    assert dec.feed(raw_frame(body)) == [Envelope(i=1, r="x" * 50)]


# No deadline: the machines running the suite are small and shared; a slow example
# is not a wrong one.
@settings(max_examples=40, deadline=None)
@given(st.lists(envelopes, max_size=8))
def test_envelopes_round_trip_whole(envs: list[Envelope]) -> None:
    link = FakeLink()
    for env in envs:
        link.send(env)
    assert link.deliver([]) == [_normal(e) for e in envs]


def test_one_byte_at_a_time() -> None:
    link = FakeLink()
    sent = [
        Envelope(i=1, op="fs.put", a={"path": "/x", "data": b"\xff" * 300}),
        Envelope(i=1, r=[1, 2, 3]),
        Envelope(i=2, e={"type": "NotFound", "msg": "gone"}),
        Envelope(i=3, op="node.ping", a={}),
    ]
    ends = []
    for env in sent:
        link.send(env)
        ends.append(len(link.wire))
    data = bytes(link.wire)
    link.wire.clear()
    got: list[Envelope] = []
    for k in range(len(data)):
        got += link.decoder.feed(data[k : k + 1])
        # A message comes out exactly when its last byte arrives, never earlier.
        assert len(got) == sum(end <= k + 1 for end in ends)
        assert link.decoder.pending == (k + 1 not in ends)
    assert got == sent


@settings(max_examples=40, deadline=None)
@given(st.lists(envelopes, min_size=1, max_size=6), st.lists(st.integers(0, 5000), max_size=30))
def test_random_splits_give_the_same_messages(envs: list[Envelope], cuts: list[int]) -> None:
    link = FakeLink()
    for env in envs:
        link.send(env)
    assert link.deliver(cuts) == [_normal(e) for e in envs]
    assert not link.decoder.pending


def _normal(env: Envelope) -> Envelope:
    """What the decoder hands back for ``env`` (a request's missing args become {})."""
    if env.op is not None and env.a is None:
        return Envelope(i=env.i, op=env.op, a={}, r=env.r, e=env.e)
    return env


# -- pending and take_rest ----------------------------------------------------------


def test_pending_tracks_a_partial_frame() -> None:
    dec = FrameDecoder()
    assert not dec.pending
    frame = codec.reply(1, "ok")
    assert dec.feed(frame[:2]) == []
    assert dec.pending  # half a header
    assert dec.feed(frame[2:6]) == []
    assert dec.pending  # a header and part of the body
    assert dec.feed(frame[6:]) == [Envelope(i=1, r="ok")]
    assert not dec.pending


def test_take_rest_hands_back_raw_bytes_after_a_header_frame() -> None:
    raw = bytes(range(256)) * 4  # not frames: would be garbage if decoded
    dec = FrameDecoder()
    dec.push(codec.request(1, "blob.put", {"size": len(raw)}) + raw)
    env = dec.pop()
    assert env is not None and env.op == "blob.put"
    assert dec.take_rest() == raw
    assert not dec.pending
    assert dec.take_rest() == b""


def test_take_rest_with_nothing_past_the_frame() -> None:
    dec = FrameDecoder()
    dec.push(codec.request(1, "blob.get", {}))
    assert dec.pop() is not None
    assert dec.take_rest() == b""


def test_take_rest_in_the_middle_of_a_frame_is_a_protocol_error() -> None:
    dec = FrameDecoder()
    frame = codec.request(1, "x", {})
    dec.push(frame[:-1])
    assert dec.pop() is None
    with pytest.raises(ProtocolError, match="middle of a frame"):
        dec.take_rest()


# -- what a hostile or broken peer can send ---------------------------------------------


def test_oversize_length_is_refused_before_the_body_arrives() -> None:
    dec = FrameDecoder(max_frame=100)
    with pytest.raises(ProtocolError, match="101 bytes exceeds the limit of 100"):
        dec.feed(HEADER.pack(101))


def test_default_limit_is_enforced() -> None:
    with pytest.raises(ProtocolError, match="exceeds"):
        FrameDecoder().feed(HEADER.pack(DEFAULT_MAX_FRAME + 1))


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", id="http"),  # "GET " is a huge length
        pytest.param(b"\xff\xff\xff\xff", id="max-length"),
        pytest.param(raw_frame(b"\xc1"), id="never-used-msgpack-byte"),
        pytest.param(raw_frame(b""), id="empty-body"),
        pytest.param(raw_frame(b"\x92\x01"), id="truncated-array"),
        pytest.param(raw_frame(msgspec.msgpack.encode({"i": 1}) + b"\x00"), id="trailing-bytes"),
    ],
)
def test_garbage_is_a_protocol_error(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        FrameDecoder().feed(data)


@pytest.mark.parametrize(
    "obj",
    [
        pytest.param({"i": "1", "op": "fs.stat", "a": {}}, id="i-a-string"),
        pytest.param({"i": True, "op": "fs.stat"}, id="i-a-bool"),
        pytest.param({"i": 1.5, "r": 1}, id="i-a-float"),
        pytest.param({"op": "fs.stat", "a": {}}, id="i-missing"),
        pytest.param({"i": 1, "op": "fs.stat", "a": ["/x"]}, id="a-a-list"),
        pytest.param({"i": 1, "op": "fs.stat", "a": "/x"}, id="a-a-string"),
        pytest.param({"i": 1, "op": "fs.stat", "a": {1: "x"}}, id="a-with-int-keys"),
        pytest.param({"i": 1, "op": 5}, id="op-an-int"),
        pytest.param({"i": 1, "e": "boom"}, id="e-a-string"),
        pytest.param(5, id="bare-int"),
        pytest.param("fs.stat", id="bare-string"),
        pytest.param([1, "fs.stat", {}], id="bare-list"),
        pytest.param(None, id="nil"),
    ],
)
def test_envelope_of_the_wrong_types_is_a_protocol_error(obj: Any) -> None:
    with pytest.raises(ProtocolError, match="malformed message"):
        FrameDecoder().feed(msgpack_frame(obj))


def test_a_bad_frame_after_good_ones_still_fails() -> None:
    dec = FrameDecoder()
    good = codec.reply(1, "a")
    assert dec.feed(good) == [Envelope(i=1, r="a")]
    with pytest.raises(ProtocolError):
        dec.feed(good + msgpack_frame({"i": "x"}))


def test_decoder_is_poisoned_after_an_error() -> None:
    dec = FrameDecoder(max_frame=10)
    with pytest.raises(ProtocolError) as first:
        dec.feed(HEADER.pack(11))
    # Framing can no longer be trusted: every later use raises the same error.
    with pytest.raises(ProtocolError) as again:
        dec.feed(codec.reply(1, None))
    assert again.value is first.value
    with pytest.raises(ProtocolError):
        dec.pop()
    with pytest.raises(ProtocolError):
        dec.push(b"")


@settings(deadline=None)
@given(st.binary(max_size=200), st.lists(st.integers(0, 200), max_size=10))
def test_any_bytes_give_messages_or_a_protocol_error_never_a_crash(
    data: bytes, cuts: list[int]
) -> None:
    dec = FrameDecoder(max_frame=1000)
    bounds = [0, *sorted({c for c in cuts if 0 < c < len(data)}), len(data)]
    try:
        for lo, hi in itertools.pairwise(bounds):
            for env in dec.feed(data[lo:hi]):
                assert isinstance(env, Envelope) and isinstance(env.i, int)
    except ProtocolError:
        pass
