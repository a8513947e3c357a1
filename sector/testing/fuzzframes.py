"""Fuzz frames made fast (issue 11's flood): the nodes' ops, argument templates that get
a request past its first checks, random msgpack values, and cheap byte mutations.

``tests/integration/test_fuzz.py`` draws its frames with hypothesis (~10 ms each, and it
shrinks); a flood of 10^6 frames needs ~30 µs each, so ``FrameGen`` draws them with
``random`` from one seed instead: the same ideas (near-valid templates, random
arguments, hostile strings, mutated and pipelined frames), no shrinking. Bytes only:
nothing here opens a socket (``sector.testing.fuzzflood`` throws the frames).

Every frame is safe to send to a cluster holding files the test means to keep: the
templates name nothing that exists (see ``templates``), and no random value is a path
that names something (random text never starts with "/", the hostile strings name
nothing) or a word that would make a template a real change (``VERBS``).
"""

from __future__ import annotations

import random
import struct
from typing import Any

import msgspec

from sector.wire import codec

# Every handler a node serves (sector/node/server.py and the services it composes), and
# a few it does not: unknown ops must be refused like the rest.
OPS = [
    *("fs.stat", "fs.ls", "fs.mkdir", "fs.begin_put", "fs.commit_put", "fs.rm", "fs.mv"),
    *("fs.status", "fs.setrf", "fs.put_small"),
    *("blob.put", "blob.get", "blob.put_small", "blob.replicate", "blob.delete", "blob.has"),
    *("blob.verify", "blob.missing", "blob.alias", "blob.get_small", "blob.pieces"),
    *("meta.op", "meta.replicate", "meta.fetch", "meta.absorb", "meta.horizon"),
    *("meta.digest",),
    *("chord.next_hop", "chord.state", "chord.notify", "chord.ping", "chord.leaving"),
    *("node.gossip", "node.info", "node.ping"),
    *("repair.report", "repair.audit", "scrub.now", "gc.now"),
    *("sphere.info", "sphere.run", "sphere.poll", "sphere.resend", "sphere.commit"),
    *("sphere.cancel", "sphere.stop"),
    *("sphere.cleanup", "sphere.push"),
    *("auth.hello", "sec.policy", "sec.policy_put"),
    *("swarm.announce", "swarm.leave", "swarm.interest", "swarm.forget", "swarm.pieces"),
    *("swarm.piece", "swarm.want", "swarm.get", "swarm.fetch", "swarm.job", "cache.drop"),
    *("", "no.such.op", "fs.", "blob.put\x00", "fs.stat "),
]
# Ops served as a bulk stream (the connection carries raw bytes after the header, then
# closes): never pipelined with other frames, only thrown last.
BULK_OPS = frozenset({"blob.put", "blob.get", "sphere.push", "swarm.piece", "swarm.get"})
# Argument names the handlers read: random values under them reach past the first check.
KEYS = [
    *("path", "src", "dst", "name", "parents", "recursive", "size", "rf", "client_host"),
    *("blob", "blobs", "data", "checksum", "chain", "targets", "offset", "length", "replicas"),
    *("op", "args", "hops", "record", "records", "paths", "moved_to", "key", "exclude"),
    *("peer", "pred", "successors", "entries", "node_id", "job", "attempt", "seg", "udf"),
    *("digest", "mode", "nbuckets", "buckets", "bucket", "items", "wait", "ack", "durable"),
    *("token", "credential", "policy", "cancel"),
]
# Strings meant to hurt: paths that climb out, NUL and control characters, ids of the
# wrong shape. None is a path that names something (no valid mkdir, rm or mv).
HOSTILE = [
    *("../../../etc/passwd", "/../../etc/passwd", "/a/../../b", "/a/./b", "a/b", ""),
    *("/a\x00b", "\x00", "/a\nb", "/\x7f", "..", ".", "/" + "n" * 300, "/" + "x" * 5000),
    *("../" * 50, "a" * 32 + "\n", "A" * 32, "ab/../../..", "0" * 31, "0" * 33, "%2e%2e/"),
    *("127.0.0.1:1", "127.0.0.1:0", "nohost", ":99999", "[::1]:1", "x" * 70_000),
    *("blake3:", "blake3:" + "0" * 64),
]
# Words that would turn a template into a real change (meta.op's operations).
VERBS = frozenset(
    {"put_file", "mkdir", "add_child", "remove_child", "delete", "set_replicas", "set_rf"}
)
INTS = [*range(-3, 4), 2**31, 2**32, 2**62, 2**63 - 1, 2**64 - 1, -(2**63), 1 << 40]
FLOATS = [float("nan"), float("inf"), float("-inf"), 0.0, -0.0, 1e308, 5e-324, 0.05]
# Characters of random text: ASCII, controls, a BOM, right-to-left, astral, combining.
ALPHABET = "abcxyz019_-.:/ \x00\x01\t\n\x7f\u00e9\ufeff\u202e\U0001f600\u0301%"

# How a request frame is mutated (``FrameGen.mutate``).
MUTATIONS = ("flip", "cut", "length", "twice", "garbage", "bulk", "many", "splice")


def templates(blob: str, size: int, checksum: str, node_id: str) -> dict[str, dict[str, Any]]:
    """Plausible arguments for each op, so that a few replaced values get a request past
    its first checks and into the handler's body. None of them changes the namespace or
    the files as it is (paths that do not exist, mkdir of an existing directory, commit
    without replicas, peers that are not ids), and the replacements cannot make them:
    no random value is a path that names something."""
    job = "abcdef0123456789"
    dead = "127.0.0.1:1"
    orphan = "f" * 32  # a blob id no file uses
    return {
        "fs.stat": {"path": "/keep"},
        "fs.ls": {"path": "/keep"},
        "fs.mkdir": {"path": "/keep/dir", "parents": True},
        "fs.begin_put": {"path": "/fuzz/none", "size": 10, "rf": 2, "client_host": "127.0.0.1"},
        "fs.commit_put": {
            "path": "/fuzz/none",
            "blob": orphan,
            "size": 10,
            "checksum": checksum,
            "replicas": [],
            "rf": 2,
        },
        "fs.put_small": {"path": "/fuzz/small", "data": b"x" * 10, "checksum": checksum},
        "fs.rm": {"path": "/fuzz/none", "recursive": True},
        "fs.mv": {"src": "/fuzz/none", "dst": "/fuzz/none2"},
        "fs.setrf": {"path": "/fuzz/none", "rf": 3},
        "blob.get": {"blob": blob, "offset": 0, "length": size},
        "blob.get_small": {"blob": blob},
        "blob.pieces": {"blob": blob, "piece_size": 0},
        "swarm.piece": {"blob": blob, "piece_size": 16384, "size": size, "pieces": [0, 1]},
        "swarm.pieces": {"blob": blob, "piece_size": 0},
        "swarm.announce": {
            "path": "/fuzz/none",
            "blob": orphan,
            "pieces": 4,
            "have": b"\x01",
            "me": [node_id, dead, ""],
            "holders": [[node_id, dead]],
        },
        "swarm.interest": {"blob": orphan, "reader": "r"},
        "swarm.leave": {"blob": orphan, "peer": node_id},
        "swarm.want": {"path": "/fuzz/none", "blob": orphan, "reader": "r"},
        "swarm.get": {"path": "/fuzz/none", "blob": orphan},
        "swarm.fetch": {"paths": ["/fuzz/none"]},
        "swarm.job": {"job": job},
        "cache.drop": {"blobs": [orphan]},
        "blob.put": {"blob": orphan, "size": 64, "checksum": None, "chain": [], "path": ""},
        "blob.put_small": {"blob": orphan, "data": b"x" * 64, "checksum": None, "chain": []},
        "blob.replicate": {
            "blob": blob,
            "size": size,
            "checksum": checksum,
            "targets": [[node_id, dead]],
        },
        "blob.delete": {"blobs": [orphan], "path": "/fuzz/none"},
        "blob.has": {"blob": blob},
        "blob.verify": {"blob": blob, "checksum": checksum},
        "blob.missing": {"blobs": [blob, orphan]},
        "blob.alias": {"blob": orphan, "path": "/fuzz/none"},
        "meta.op": {"path": "/keep", "op": "get", "args": {}, "hops": 0},
        "meta.fetch": {"paths": ["/keep", "/fuzz/none"]},
        "meta.replicate": {"records": []},
        "meta.absorb": {"records": [], "sender": node_id},
        "meta.digest": {"lo": "0" * 40, "hi": "8" * 40, "buckets": [["000", 1, 2, 3]]},
        "chord.next_hop": {"key": "0" * 40, "exclude": []},
        "chord.notify": {"peer": ["zz" * 20, dead]},
        "chord.leaving": {"peer": ["zz" * 20, dead], "pred": None, "successors": []},
        "node.gossip": {"entries": []},
        "repair.report": {"path": "/fuzz/none", "node_id": node_id, "hops": 0},
        "sphere.run": {
            "job": job,
            "attempt": 0,
            "seg": {"id": 0, "kind": "task", "param": b""},
            "udf": b"not a pickle",
            "digest": "d" * 32,
            "mode": "bogus",  # refused last: everything before it is checked
            "nbuckets": 0,
            "buckets": {},
        },
        "sphere.poll": {"job": job, "ack": [0], "wait": 0.05},
        "sphere.resend": {"job": job, "attempt": 0, "buckets": {"0": dead}},
        "sphere.commit": {"job": job, "items": [{"path": f"/.sphere/{job}/x", "attempt": 0}]},
        "sphere.cleanup": {"job": job},
        "sphere.stop": {"job": job},
        "sphere.push": {"job": job, "bucket": 0, "attempt": 0, "size": 64},
        "auth.hello": {"token": "junk"},
        "sec.policy_put": {"token": "junk"},
    }


class FrameGen:
    """Random frames from one seed. ``request()`` returns ``(op, args)``; the other
    methods return bytes (whole frames, or not frames at all)."""

    def __init__(self, seed: int, tmpl: dict[str, dict[str, Any]]) -> None:
        self.rng = random.Random(seed)
        self.tmpl = tmpl
        self.tmpl_ops = sorted(tmpl)

    # ------------------------------------------------------------------ values

    def text(self) -> str:
        rng = self.rng
        if rng.random() < 0.4:
            return rng.choice(HOSTILE)
        s = "".join(rng.choices(ALPHABET, k=rng.randrange(41)))
        # A random path could name something, a verb could make a template a change.
        return s if not s.startswith("/") and s not in VERBS else "x" + s

    def integer(self) -> int:
        rng = self.rng
        return rng.choice(INTS) if rng.random() < 0.6 else rng.randint(-(2**63), 2**64 - 1)

    def scalar(self) -> Any:
        rng = self.rng
        k = rng.randrange(7)
        if k == 0:
            return None
        if k == 1:
            return rng.random() < 0.5
        if k == 2:
            return self.integer()
        if k == 3:
            return rng.choice(FLOATS) if rng.random() < 0.7 else rng.uniform(-1e9, 1e9)
        if k == 4:
            return rng.randbytes(rng.randrange(65))
        return self.text()

    def key(self) -> Any:
        r = self.rng.random()
        return self.rng.choice(KEYS) if r < 0.6 else self.text()[:12] if r < 0.9 else self.integer()

    def value(self, depth: int = 0) -> Any:
        """msgpack of every kind: scalars of the wrong type, nested lists and maps."""
        r = self.rng.random()
        if depth < 3 and r < 0.12:
            return [self.value(depth + 1) for _ in range(self.rng.randrange(7))]
        if depth < 3 and r < 0.22:
            return {self.key(): self.value(depth + 1) for _ in range(self.rng.randrange(6))}
        return self.scalar()

    # ------------------------------------------------------------------ requests

    def request(self) -> tuple[str, dict[str, Any]]:
        """An op and its arguments: three in four near a template (some values replaced,
        some keys dropped, some added), the others any op with random arguments."""
        rng = self.rng
        if rng.random() < 0.25:
            args = {self.key(): self.value() for _ in range(rng.randrange(7))}
            return rng.choice(OPS), {k: v for k, v in args.items() if isinstance(k, str)}
        op = rng.choice(self.tmpl_ops)
        args = {}
        for k, v in self.tmpl[op].items():
            how = rng.randrange(4)  # keep, keep, replace, drop
            if how < 2:
                args[k] = v
            elif how == 2:
                args[k] = self.value()
        for _ in range(rng.choice((0, 0, 1, 2))):
            args[rng.choice(KEYS)] = self.value()
        return op, args

    def request_id(self) -> int:
        return self.integer()

    def frame(self, rid: int | None = None) -> bytes:
        op, args = self.request()
        return codec.request(self.request_id() if rid is None else rid, op, args)

    # ------------------------------------------------------------------ not requests

    def random_bytes(self) -> bytes:
        """Bytes with no frame in them, as a port scanner or a confused client sends."""
        return self.rng.randbytes(self.rng.randrange(1, 2049))

    def random_framed(self) -> bytes:
        """Random bytes behind a length prefix that is right: a frame that is not msgpack
        (or is msgpack of some other shape)."""
        body = self.rng.randbytes(self.rng.randrange(513))
        return struct.pack(">I", len(body)) + body

    def envelope(self) -> bytes:
        """msgpack that is no request: a map of the envelope's keys with random values
        (replies, requests with an op of the wrong type, ids that are text), or any value."""
        rng = self.rng
        if rng.random() < 0.2:
            body = msgspec.msgpack.encode(self.value())
        else:
            keys = rng.sample(["i", "op", "a", "r", "e", "x"], rng.randrange(1, 5))
            body = msgspec.msgpack.encode({k: self.value() for k in keys})
        return struct.pack(">I", len(body)) + body

    # ------------------------------------------------------------------ mutations

    def mutate(self, frame: bytes, how: str) -> bytes:
        """``frame`` (a request) changed in one of the ways of ``MUTATIONS``."""
        rng = self.rng
        f = bytearray(frame)
        if how == "flip":
            for _ in range(rng.randrange(1, 9)):
                f[rng.randrange(len(f))] ^= 1 << rng.randrange(8)
        elif how == "cut":
            del f[rng.randrange(len(f)) :]
        elif how == "length":
            n = rng.randrange(2**32) if rng.random() < 0.5 else rng.randrange(len(f) + 8)
            f[:4] = struct.pack(">I", n)
        elif how == "twice":
            f += frame
        elif how == "garbage":
            f += rng.randbytes(rng.randrange(1, 257))
        elif how == "bulk":  # a header, then raw bytes as if they were a blob's
            f += rng.randbytes(rng.randrange(4097))
        elif how == "many":  # pipelined requests, the last maybe cut
            for _ in range(rng.randrange(1, 5)):
                f += self.frame()
            if rng.random() < 0.5:
                del f[len(f) - rng.randrange(1, 9) :]
        elif how == "splice":  # the head of one frame on the tail of another
            other = self.frame()
            f = f[: rng.randrange(len(f) + 1)] + other[rng.randrange(len(other)) :]
        else:
            raise ValueError(f"no mutation {how!r}")
        return bytes(f)
