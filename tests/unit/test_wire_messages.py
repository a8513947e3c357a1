"""Typed requests (``sector.wire.messages``): a handler declares what it takes, and the
map it is called with is decoded and checked before its body runs."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import msgspec
import pytest

from sector.errors import BadRequest
from sector.sphere import wire
from sector.storage import messages as blobmsg
from sector.wire.messages import Request, decode, to_args, typed


class Mkdir(Request, frozen=True):
    """A request as a service declares one."""

    op = "fs.mkdir"
    path: str
    parents: bool = False
    rf: Annotated[int, msgspec.Meta(ge=1, le=16)] | None = None


class Service:
    def __init__(self) -> None:
        self.seen: list[Mkdir] = []

    @typed(Mkdir)
    async def h_mkdir(self, req: Mkdir) -> dict[str, Any]:
        self.seen.append(req)
        return {"path": req.path, "parents": req.parents}

    @typed(Mkdir)
    async def h_bulk(self, req: Mkdir, chan: str) -> str:
        return f"{req.path} on {chan}"


def call(args: dict[str, Any]) -> Any:
    return asyncio.run(Service().h_mkdir(args))


def test_a_wrong_type_is_a_bad_request_naming_the_op_and_the_field() -> None:
    with pytest.raises(BadRequest) as ei:
        call({"path": 5})
    assert str(ei.value) == "fs.mkdir: Expected `str`, got `int` - at `$.path`"


def test_types_are_strict() -> None:
    for args in (
        {"path": "/a", "parents": 1},  # no int for a bool
        {"path": "/a", "rf": True},  # no bool for an int
        {"path": "/a", "rf": "3"},  # no str for a number
        {"path": "/a", "rf": 3.0},
        {"path": b"/a"},
    ):
        with pytest.raises(BadRequest, match=r"^fs\.mkdir: Expected"):
            call(args)


class Blob(Request, frozen=True):
    op = "blob.put_small"
    data: bytes


def test_a_str_is_not_bytes() -> None:
    """msgpack keeps bytes and str apart: a str is refused, even one that is base64."""
    assert decode(Blob, {"data": b"abc"}) == Blob(data=b"abc")
    for data in ("YWJj", "not base64!"):
        with pytest.raises(BadRequest, match=r"^blob\.put_small: Expected `bytes`, got `str`"):
            decode(Blob, {"data": data})


def test_a_missing_required_field_is_a_bad_request() -> None:
    with pytest.raises(BadRequest, match=r"^fs\.mkdir: Object missing required field `path`$"):
        call({"parents": True})


def test_a_constraint_is_checked() -> None:
    with pytest.raises(BadRequest, match=r"Expected `int` <= 16 - at `\$\.rf`"):
        call({"path": "/a", "rf": 17})


def test_unknown_fields_are_ignored_and_defaults_fill_in() -> None:
    svc = Service()
    got = asyncio.run(svc.h_mkdir({"path": "/a", "from_a_newer_peer": [1, 2]}))
    assert got == {"path": "/a", "parents": False}
    assert svc.seen == [Mkdir(path="/a", parents=False, rf=None)]


def test_the_handler_gets_a_frozen_struct() -> None:
    svc = Service()
    asyncio.run(svc.h_mkdir({"path": "/a", "parents": True, "rf": 2}))
    (req,) = svc.seen
    assert (req.path, req.parents, req.rf) == ("/a", True, 2)
    with pytest.raises(AttributeError):
        req.path = "/b"  # type: ignore[misc]


def test_further_arguments_pass_through() -> None:
    assert asyncio.run(Service().h_bulk({"path": "/a"}, "chan")) == "/a on chan"


def test_decode_alone() -> None:
    assert decode(Mkdir, {"path": "/x"}) == Mkdir(path="/x")
    with pytest.raises(BadRequest, match=r"^fs\.mkdir: Expected `object`, got `array`$"):
        decode(Mkdir, ["/x"])


# ---------------------------------------------------------------- senders: to_args


def test_to_args_is_the_map_the_struct_stands_for() -> None:
    args = to_args(Mkdir(path="/a", parents=True))
    assert args == {"path": "/a", "parents": True, "rf": None}
    assert decode(Mkdir, args) == Mkdir(path="/a", parents=True)


def test_sphere_messages_travel_as_the_maps_they_always_were() -> None:
    """The driver builds sphere.wire's structs; the node sees the same maps as before
    (a task segment carries only id, kind and param; unsent fields stay unsent)."""
    task = wire.TaskSegment(id=3, param=b"p")
    run = wire.Run(
        job="ab" * 8,
        attempt=7,
        seg=task,
        udf=b"u",
        digest="d",
        mode="buckets",
        nbuckets=2,
        buckets={"0": "h:1", "1": "h:2"},
    )
    assert to_args(run) == {
        "job": "ab" * 8,
        "attempt": 7,
        "seg": {"id": 3, "kind": "task", "param": b"p"},
        "udf": b"u",
        "digest": "d",
        "mode": "buckets",
        "nbuckets": 2,
        "buckets": {"0": "h:1", "1": "h:2"},
    }
    data = dict(path="/f", blob="b" * 32, offset=0, length=8, size=8, checksum=None)
    seg = wire.DATA_SEGMENTS["lines"](id=1, **data)  # type: ignore[arg-type]
    assert to_args(seg) == {
        "id": 1,
        "kind": "lines",
        **data,
        "record_size": 0,
        "first": 0,
        "holders": [],
    }
    idx = wire.DATA_SEGMENTS["idx"](id=1, index=b"\0" * 16, **data)  # type: ignore[arg-type]
    assert to_args(idx)["index"] == b"\0" * 16
    got = decode(wire.Run, {**to_args(run), "seg": to_args(idx)})
    assert got.seg == idx and got.seg.kind == "idx"
    commit = wire.Commit(job="ab" * 8, items=[{"path": "/p", "attempt": 1}])
    assert to_args(commit) == {
        "job": "ab" * 8,
        "items": [{"path": "/p", "attempt": 1}],
        "rf": None,
        "durable": True,
    }
    reduce = wire.Reduce(udf=b"r", digest="d", kind="fixed", record_size=100)
    assert to_args(msgspec.structs.replace(commit, reduce=reduce))["reduce"] == {
        "udf": b"r",
        "digest": "d",
        "kind": "fixed",
        "record_size": 100,
    }


@pytest.mark.parametrize(
    "seg",
    [
        {"id": 0, "kind": "bogus"},
        {"id": 0},
        {"id": -1, "kind": "task"},
        {"id": 0, "kind": "lines", "path": "/f", "offset": 0, "length": 1, "size": 1},  # no blob
        [0, "task"],
    ],
)
def test_a_malformed_segment_is_a_bad_request(seg: Any) -> None:
    args = {"job": "ab" * 8, "attempt": 0, "udf": b"u", "digest": "d", "mode": "none"}
    with pytest.raises(BadRequest, match=r"^sphere\.run: .* at `\$\.seg"):
        decode(wire.Run, {**args, "nbuckets": 0, "seg": seg})


def test_blob_messages_travel_as_the_maps_they_always_were() -> None:
    """Clients and nodes build storage.messages' structs; the holders see the maps they
    always got: a client's put without ``new``, a node's with it, a read without the
    offset and length it leaves out."""
    blob, chain = "ab" * 16, [["n2", "h:2"], ["n3", "h:3"]]
    client_put = blobmsg.Put(blob=blob, size=5, checksum=None, chain=chain, path="/f")
    assert to_args(client_put) == {
        "blob": blob,
        "size": 5,
        "checksum": None,
        "chain": chain,
        "path": "/f",
    }
    # A hop forwards the request it got, with the rest of the chain and ``new`` decided.
    got = decode(blobmsg.Put, to_args(client_put))
    hop = msgspec.structs.replace(got, chain=chain[1:], new=True)
    assert to_args(hop) == {**to_args(client_put), "chain": [["n3", "h:3"]], "new": True}
    small = blobmsg.PutSmall(blob=blob, data=b"abc", checksum="c", chain=[], path="/f")
    assert to_args(small) == {
        "blob": blob,
        "data": b"abc",
        "checksum": "c",
        "chain": [],
        "path": "/f",
    }
    assert to_args(blobmsg.Get(blob=blob)) == {"blob": blob}
    ranged = blobmsg.Get(blob=blob, offset=3, length=None)
    assert to_args(ranged) == {"blob": blob, "offset": 3, "length": None}
    assert to_args(blobmsg.Delete(blobs=[blob], path="/f")) == {"blobs": [blob], "path": "/f"}
    assert to_args(blobmsg.Has(blob=blob, path="/f")) == {"blob": blob, "path": "/f"}
    assert to_args(blobmsg.Verify(blob=blob, checksum="c")) == {"blob": blob, "checksum": "c"}
    assert to_args(blobmsg.Missing(blobs=[blob])) == {"blobs": [blob]}
    rep = blobmsg.Replicate(blob=blob, size=5, checksum="c", targets=chain, path="/f")
    assert to_args(rep) == {
        "blob": blob,
        "size": 5,
        "checksum": "c",
        "targets": chain,
        "path": "/f",
    }
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(blobmsg.Stored(chain, "c"))) == {
        "stored": chain,
        "checksum": "c",
    }


def test_blob_requests_are_checked_but_a_blob_id_is_left_to_check_blob_id() -> None:
    base = {"blob": "ab" * 16, "size": 5, "chain": [["n2", "h:2"]]}
    assert decode(blobmsg.Put, base).chain == [["n2", "h:2"]]
    for args, where in (
        ({**base, "size": -1}, r"\$\.size"),
        ({**base, "size": True}, r"\$\.size"),
        ({**base, "chain": [["n2"]]}, r"\$\.chain\[0\]"),
        ({**base, "chain": [["n2", 5]]}, r"\$\.chain\[0\]\[1\]"),
        ({**base, "chain": [["n", "h"]] * 17}, r"\$\.chain"),
        ({**base, "path": "/" * 4097}, r"\$\.path"),
        ({**base, "new": 1}, r"\$\.new"),
    ):
        with pytest.raises(BadRequest, match=rf"^blob\.put: .* at `{where}`$"):
            decode(blobmsg.Put, args)
    with pytest.raises(BadRequest, match=r"^blob\.put_small: .* at `\$\.data`$"):
        decode(blobmsg.PutSmall, {"data": b"x" * (blobmsg.SMALL_MAX + 1)})
    with pytest.raises(BadRequest, match=r"^blob\.missing: .* at `\$\.blobs`$"):
        decode(blobmsg.Missing, {"blobs": ["ab" * 16] * (blobmsg.MAX_AUDIT + 1)})
    # Whatever a blob id is, it reaches the handler, whose check_blob_id says "invalid
    # blob id" for every op alike.
    for bad in (5, None, b"x", ["ab" * 16]):
        assert decode(blobmsg.Has, {"blob": bad}).blob == bad
        assert decode(blobmsg.Delete, {"blobs": [bad]}).blobs == [bad]
    with pytest.raises(BadRequest, match=r"^blob\.put reply: .* at `\$\.stored\[0\]`$"):
        blobmsg.stored_reply({"stored": [["n1"]], "checksum": "c"}, "blob.put")
