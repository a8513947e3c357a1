"""Malformed input on a live node's port: that connection closes, the node goes on.

Raw sockets speak to one node of a 3-node cluster. For each kind of bad input the node
must (1) close that connection within a deadline, (2) write a line about it in its
``node.log``, naming the peer, and (3) keep serving everybody else: a client that was
connected before keeps working *during* the attack (a prober thread), a fresh client
can stat and put afterwards, and the node process is still alive.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import msgspec
import pytest

import sector
from sector.ids import key_id
from sector.testing.cluster import NodeProc, ProcCluster, wait_for

STALL_TIMEOUT = 4.0  # set on the nodes with --stall-timeout (the default is 10 s)
CLOSE_DEADLINE = 5.0  # for input that is wrong at once, not merely slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcCluster]:
    with ProcCluster(
        tmp_path_factory.mktemp("hardening-cluster"),
        node_args=["--stall-timeout", str(STALL_TIMEOUT)],
    ) as cl:
        cl.start(3)
        yield cl


@pytest.fixture(scope="module")
def target(cluster: ProcCluster) -> NodeProc:
    return cluster.nodes[1]


# ---------------------------------------------------------------- helpers


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def connect_raw(node: NodeProc) -> socket.socket:
    host, port = node.address.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=CLOSE_DEADLINE)


def read_until_closed(sock: socket.socket, deadline: float) -> bytes:
    """Everything the node sends until it closes the connection; fails at the deadline."""
    got = bytearray()
    end = time.monotonic() + deadline
    while True:
        left = end - time.monotonic()
        if left <= 0:
            raise AssertionError(f"the node kept the connection open for {deadline:g} s")
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return bytes(got)
        except TimeoutError:
            continue
        if not chunk:
            return bytes(got)
        got += chunk


def peer_tag(sock: socket.socket) -> str:
    """How the node's log names this connection: its peername tuple."""
    host, port = sock.getsockname()[:2]
    return f"('{host}', {port})"


def wait_for_log(node: NodeProc, tag: str, *words: str) -> str:
    """The line of node.log that names ``tag`` and contains every one of ``words``."""

    def find() -> str | None:
        for line in node.log.read_text(errors="replace").splitlines():
            if tag in line and all(w.lower() in line.lower() for w in words):
                return line
        return None

    return wait_for(find, 10, what=f"a log line about {tag} with {words}")


class Prober(threading.Thread):
    """A well-behaved client of the target node, busy the whole time: stat and put."""

    def __init__(self, address: str, scratch: Path) -> None:
        super().__init__(name="prober", daemon=True)
        self.client = sector.connect(address, timeout=15)
        self.scratch = scratch
        self.ok = 0
        self.errors: list[BaseException] = []
        self._halt = threading.Event()

    def run(self) -> None:
        i = 0
        while not self._halt.is_set():
            try:
                if i % 4 == 0:
                    local = self.scratch / "probe"
                    local.write_bytes(f"probe {i}".encode())
                    self.client.put(local, f"/probe/{self.name}-{i}")
                    assert self.client.read(f"/probe/{self.name}-{i}") == f"probe {i}".encode()
                else:
                    self.client.stat("/")
                self.ok += 1
            except BaseException as exc:
                self.errors.append(exc)
            i += 1

    def wait_ops(self, n: int) -> None:
        """Until n more operations succeeded; fails on the first one that did not."""
        start = self.ok
        wait_for(lambda: self.ok >= start + n or self.errors, 30, what=f"{n} prober ops")
        assert not self.errors, f"a well-behaved client failed: {self.errors[0]!r}"

    def __enter__(self) -> Prober:
        self.start()
        self.wait_ops(2)  # connected and serving before the attack starts
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._halt.set()
        self.join(30)
        self.client.close()


@pytest.fixture
def prober(target: NodeProc, tmp_path: Path) -> Iterator[Prober]:
    with Prober(target.address, tmp_path) as p:
        yield p


def assert_still_serving(node: NodeProc, tmp_path: Path) -> None:
    assert node.alive, "the node process died"
    with sector.connect(node.address) as c:
        local = tmp_path / "after"
        local.write_bytes(b"after the attack")
        name = f"/after/{uuid.uuid4().hex}"
        c.put(local, name)
        assert c.stat(name)["size"] == len(b"after the attack")
        assert c.read(name) == b"after the attack"


# ---------------------------------------------------------------- the cases


BAD_INPUT = {
    # name: (bytes to send, words the node's log line must contain)
    "http-request": (b"GET / HTTP/1.1\r\nHost: sector\r\n\r\n", ("exceeds the limit",)),
    "garbage-body": (frame(b"\xc1" * 32), ("undecodable",)),
    "binary-noise": (b"\x00\x00\x00\x20" + bytes(range(200, 232)), ("closing",)),
    "oversize-header": (b"\xff\xff\xff\xff", ("exceeds the limit",)),
    "msgpack-list": (frame(msgspec.msgpack.encode([1, 2, 3])), ("malformed",)),
    "id-is-a-string": (
        frame(msgspec.msgpack.encode({"i": "one", "op": "fs.stat", "a": {"path": "/"}})),
        ("malformed",),
    ),
    "args-not-a-map": (
        frame(msgspec.msgpack.encode({"i": 1, "op": "fs.stat", "a": [1, 2]})),
        ("malformed",),
    ),
    "reply-not-request": (frame(msgspec.msgpack.encode({"i": 1, "r": 5})), ("reply frame",)),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_malformed_frame_closes_only_that_connection(
    target: NodeProc, prober: Prober, tmp_path: Path, case: str
) -> None:
    data, words = BAD_INPUT[case]
    with connect_raw(target) as s:
        tag = peer_tag(s)
        s.sendall(data)
        read_until_closed(s, CLOSE_DEADLINE)
    wait_for_log(target, tag, *words)
    prober.wait_ops(2)
    assert_still_serving(target, tmp_path)


@pytest.mark.parametrize(
    "request_",
    [
        {"i": 7, "op": "fs.stat", "a": {"path": 12345}},
        {"i": 7, "op": "no.such.op", "a": {}},
    ],
    ids=["ill-typed-argument", "unknown-op"],
)
def test_well_framed_bad_request_gets_an_error_reply_then_close(
    target: NodeProc, prober: Prober, tmp_path: Path, request_: dict[str, Any]
) -> None:
    with connect_raw(target) as s:
        tag = peer_tag(s)
        s.sendall(frame(msgspec.msgpack.encode(request_)))
        got = read_until_closed(s, CLOSE_DEADLINE)
    (n,) = struct.unpack(">I", got[:4])
    assert len(got) == 4 + n, "more than one frame came back"
    reply = msgspec.msgpack.decode(got[4:])
    assert reply["i"] == 7
    assert reply["e"]["type"] == "BadRequest"
    wait_for_log(target, tag, "bad request")
    assert_still_serving(target, tmp_path)


def test_bad_request_comes_back_typed_to_a_sector_client(target: NodeProc) -> None:
    """What the raw cases above mean for our own client: a typed error, not a lost node."""
    with sector.connect(target.address) as c:
        with pytest.raises(sector.errors.BadRequest, match=r"no\.such\.op"):
            c._run(c._aio.pool.call(target.address, "no.such.op", {}))
        assert c.stat("/")["type"] == "dir"


@pytest.mark.parametrize(
    "op_args",
    [("bogus", {}), ("put_file", {"record": 5})],
    ids=["unknown-op", "bad-record"],
)
def test_a_bad_meta_op_forwarded_to_its_owner_costs_the_forwarder_nothing(
    cluster: ProcCluster,
    target: NodeProc,
    prober: Prober,
    tmp_path: Path,
    op_args: tuple[str, dict[str, Any]],
) -> None:
    """Found by the fuzz flood (tests/slow/test_fuzz_flood.py): the target forwards a
    meta.op of a path it does not own to the owner, which refused a malformed one as
    BadRequest, closing the node-to-node connection it came on: what else was in flight
    there was cancelled and the target took the owner for failed (a client looping such
    requests cost the target its quorum: writes through it refused for seconds). Now the
    client still gets its BadRequest, and the owner's link to the target stays up."""
    ring = sorted(cluster.nodes, key=lambda n: int(n.node_id, 16))

    def owner(path: str) -> NodeProc:
        k = key_id(path)
        return next((n for n in ring if int(n.node_id, 16) >= k), ring[0])

    path = next(p for p in (f"/fwd/{i}" for i in range(1000)) if owner(p) is not target)
    others = [n for n in cluster.nodes if n is not target]
    before = {n.index: n.log.stat().st_size for n in others}
    op, args = op_args
    for i in range(50):
        body = {"i": i, "op": "meta.op", "a": {"path": path, "op": op, "args": args, "hops": 0}}
        with connect_raw(target) as s:
            s.sendall(frame(msgspec.msgpack.encode(body)))
            got = read_until_closed(s, CLOSE_DEADLINE)
        assert msgspec.msgpack.decode(got[4:])["e"]["type"] == "BadRequest"
    prober.wait_ops(8)  # puts through the target among them: it has its quorum
    for n in others:
        with open(n.log, "rb") as f:
            f.seek(before[n.index])
            assert b"bad request" not in f.read(), f"node {n.index} refused the forwarder"
    assert_still_serving(target, tmp_path)


def test_a_request_pipelined_before_a_bulk_get_leaves_no_traceback(
    target: NodeProc, tmp_path: Path
) -> None:
    """Found by the fuzz flood (tests/slow/test_fuzz_flood.py): node.info (answered
    from a thread, so a little later) then blob.get, in one write. The node answers the
    first before the blob's stream takes the connection (a reply written during its
    sendfile raised RuntimeError in Cork._flush)."""
    local = tmp_path / "big"
    local.write_bytes(os.urandom(32 << 20))
    with sector.connect(target.address) as c:
        blob = c.put(local, f"/sendfile/{uuid.uuid4().hex}")["blob"]
    before = target.log.stat().st_size
    get = {"i": 2, "op": "blob.get", "a": {"blob": blob, "offset": 0, "length": 32 << 20}}
    for _ in range(5):
        with connect_raw(target) as s:
            s.sendall(
                frame(msgspec.msgpack.encode({"i": 1, "op": "node.info", "a": {}}))
                + frame(msgspec.msgpack.encode(get))
            )
            read_until_closed(s, 30)
    with open(target.log, "rb") as f:
        f.seek(before)
        assert b"Traceback" not in f.read()


JOB = "f1" * 8  # a Sphere job id nobody runs: pushes and cleanups of it change nothing


def push_header(size: int) -> bytes:
    args = {"job": JOB, "bucket": 0, "attempt": 0, "size": size}
    return frame(msgspec.msgpack.encode({"i": 1, "op": "sphere.push", "a": args}))


def parts_arriving(node: NodeProc, n: int) -> bool:
    # (a job stages under its user's directory: sphere/open/<job> on an open cluster)
    return len(list((node.data / "sphere").glob(f"**/{JOB}/recv/.*part"))) >= n


def reply_of(got: bytes) -> dict[str, Any]:
    (n,) = struct.unpack(">I", got[:4])
    reply: dict[str, Any] = msgspec.msgpack.decode(got[4 : 4 + n])
    return reply


def test_one_part_pushed_twice_at_once_is_received_twice(target: NodeProc) -> None:
    """Found by the fuzz flood: both pushes wrote one temporary file, and the second to
    finish found it gone (moved by the first): FileNotFoundError, a traceback."""
    before = target.log.stat().st_size
    with connect_raw(target) as a, connect_raw(target) as b:
        a.sendall(push_header(64) + b"a" * 32)
        b.sendall(push_header(64) + b"b" * 32)
        wait_for(lambda: parts_arriving(target, 2), 10, what="both pushes receiving")
        a.sendall(b"a" * 32)
        assert "e" not in reply_of(read_until_closed(a, CLOSE_DEADLINE))
        b.sendall(b"b" * 32)
        assert "e" not in reply_of(read_until_closed(b, CLOSE_DEADLINE))
    with open(target.log, "rb") as f:
        f.seek(before)
        assert b"Traceback" not in f.read()


def test_a_part_of_a_job_dropped_while_it_arrives_is_refused_typed(target: NodeProc) -> None:
    """Found by the fuzz flood: a sphere.cleanup while a part of the job was arriving
    moved the job's directory away, and the part's rename failed (a traceback)."""
    before = target.log.stat().st_size
    with connect_raw(target) as a:
        a.sendall(push_header(64) + b"a" * 32)
        wait_for(lambda: parts_arriving(target, 1), 10, what="the push receiving")
        with sector.connect(target.address) as c:
            c._run(c._aio.pool.call(target.address, "sphere.cleanup", {"job": JOB}))
        a.sendall(b"a" * 32)
        assert reply_of(read_until_closed(a, CLOSE_DEADLINE))["e"]["type"] == "NotFound"
    with open(target.log, "rb") as f:
        f.seek(before)
        assert b"Traceback" not in f.read()


def test_stalled_frame_is_closed_after_the_stall_timeout(
    target: NodeProc, prober: Prober, tmp_path: Path
) -> None:
    with connect_raw(target) as s:
        tag = peer_tag(s)
        s.sendall(struct.pack(">I", 100) + b"x" * 10)  # promises 100 bytes, sends 10
        opened = time.monotonic()
        # Meanwhile, others are served: the stall holds nothing up.
        assert_still_serving(target, tmp_path)
        prober.wait_ops(3)
        assert time.monotonic() - opened < STALL_TIMEOUT, "the checks took the whole stall"
        read_until_closed(s, STALL_TIMEOUT + 10)
    wait_for_log(target, tag, "stalled")


def test_many_bad_connections_at_once(target: NodeProc, prober: Prober, tmp_path: Path) -> None:
    socks = [connect_raw(target) for _ in range(100)]
    try:
        cases = list(BAD_INPUT.values())
        for i, s in enumerate(socks):
            s.sendall(cases[i % len(cases)][0])
        for s in socks:
            read_until_closed(s, CLOSE_DEADLINE * 2)
    finally:
        for s in socks:
            s.close()
    prober.wait_ops(3)
    assert_still_serving(target, tmp_path)


def test_client_that_connects_and_leaves_silently(target: NodeProc, prober: Prober) -> None:
    for _ in range(50):
        s = connect_raw(target)
        s.close()  # no bytes at all: not an error, nothing to serve
    with connect_raw(target) as s:
        s.sendall(b"\x00\x00")  # half a header, then gone
    prober.wait_ops(3)
    assert target.alive


# ---------------------------------------------------------------- bulk uploads


def bulk_put_header(blob: str, size: int) -> bytes:
    args = {"blob": blob, "size": size, "checksum": None, "chain": []}
    return frame(msgspec.msgpack.encode({"i": 1, "op": "blob.put", "a": args}))


def part_files(node: NodeProc, blob: str) -> list[Path]:
    """The temp files of an upload of ``blob`` in progress (the prober makes others)."""
    return list((node.data / "tmp").glob(f"{blob}.*part"))


def test_upload_cut_off_midway_leaves_no_partial_blob(
    target: NodeProc, prober: Prober, tmp_path: Path
) -> None:
    blob = uuid.uuid4().hex
    with connect_raw(target) as s:
        tag = peer_tag(s)
        s.sendall(bulk_put_header(blob, 1 << 20) + os.urandom(1000))
        wait_for(lambda: part_files(target, blob), 10, what="the upload to start")
    # Closed by us after 1000 of 1 MiB bytes: the node drops the partial file.
    wait_for(lambda: not part_files(target, blob), 10, what="the partial upload to be removed")
    assert not (target.data / "blobs" / blob[:2] / blob).exists()
    wait_for_log(target, tag, "blob.put")
    assert_still_serving(target, tmp_path)


def test_upload_larger_than_the_disk_is_refused_before_any_byte(
    target: NodeProc, prober: Prober, tmp_path: Path
) -> None:
    blob = uuid.uuid4().hex
    with connect_raw(target) as s:
        s.sendall(bulk_put_header(blob, 1 << 62))
        got = read_until_closed(s, CLOSE_DEADLINE)
    reply = msgspec.msgpack.decode(got[4:])
    assert reply["e"]["type"] == "NoSpace"
    assert not part_files(target, blob)
    assert_still_serving(target, tmp_path)
