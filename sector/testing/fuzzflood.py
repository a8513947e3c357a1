"""A flood of fuzz frames at live nodes on raw sockets, counted (issue 11): one *lane*
(a cluster, plain or TLS, anonymous or after a real ``auth.hello``) per process,
``python -m sector.testing.fuzzflood SPEC.json`` printing its tally as JSON.

How 10^6 frames fit in minutes: a node closes a connection at its first malformed
frame or ``BadRequest``, so a flood of one frame per connection is bounded by
connection set-up (a TLS handshake costs ~ms). Instead each connection pipelines many
frames. A *round* draws a pool of random requests (``FrameGen.request``: near-valid
templates and random arguments) and *calibrates* it: pipelined on a connection, each
request's answer says whether it closes the connection (``BadRequest``) or not. The
ones answered without a close are the *survivors* (a few thousand per round, ROUNDS
rounds). Then connections run steps: B survivors drawn from the pool, pipelined in one
write and answered, then one *probe* of the connection's *kind*: a fresh random
request, a request (half the time a survivor) mutated (``MUTATIONS``), random bytes,
random bytes behind a right length, an envelope of the wrong shape, or a plain
connection to a TLS port and the reverse. A connection goes on to its next step only
while its probes are answered and leave the framing whole.

What is counted, per kind (see ``Tally``): *written* (frames; for a probe, one per
probe, though "twice", "many" and "splice" probes hold several frames); *answered*
(replies: the node read, decoded and handled that many frames); probes after which the
node *closed* the connection without an answer (it read them and refused them);
probes *held* (no answer, no close within ``QUIET`` s: a cut frame the node still
waits for, or a bulk header waiting for its data). Frames the node read but whose
answer was lost in a close (a closer cancels what is in flight with it) are not
counted: "read" (answered + closed) is a lower bound. Each kind connects from a
loopback address of its own (127.<lane>.<kind>.1), so the nodes' logs, which name the
peer of each frame they refuse, can be tallied per kind too: ``refusals_in_log``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import ssl
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sector.errors import ProtocolError
from sector.security import pki
from sector.testing.fuzzframes import BULK_OPS, MUTATIONS, FrameGen, templates
from sector.wire import codec
from sector.wire.codec import FrameDecoder

# The kinds of connection (each throws probes of one kind). "request": fresh random
# requests; the mutations of ``MUTATIONS``; "random": bytes; "framed": random bytes
# behind a right length; "envelope": msgpack of the wrong shape; "mismatch": plain to a
# TLS node, or TLS to a plain one (no frame is read: the handshake fails).
# "calibrate": the calibration's requests (see ``Lane.calibrate``), not drawn at random.
KINDS = ("request", *MUTATIONS, "random", "framed", "envelope", "mismatch", "calibrate")
WEIGHTS = {"request": 6, "flip": 4, "mismatch": 0.5}  # the rest: 1 each
LANES = ("open", "tls-anon", "tls-user")
SURVIVOR_BASE = 1 << 56  # survivors' request ids: SURVIVOR_BASE + index in the pool
# Operator ops start whole background passes; blob.verify hashes a whole blob;
# fs.status asks every member for node.info (each scanning its metadata store). They
# are thrown as probes, not replayed as survivors (the flood measures the nodes' input
# handling, not their scrubber or how many status pages they can draw).
NOT_REPLAYED = frozenset(
    {"scrub.now", "gc.now", "repair.audit", "blob.verify", "fs.status", "auth.hello"}
)
QUIET = 0.5  # seconds without a byte from the node after which a step ends
HELLO_TIMEOUT = 10.0  # for the answer to a valid auth.hello
MAX_FAILED = 1000
CONNECT_TIMEOUT = 10.0
POOL = 1500  # requests drawn per round
ROUNDS = 8  # pools drawn and calibrated per lane
CALIBRATE_BATCH = 8
CALIBRATE_CONNS = 8
BATCHES = (1, 8, 32, 64, 128)  # survivors per step
ANY = 1 << 30  # replies to wait for: as many as come


@dataclass
class Spec:
    """One lane: where to flood, as whom, how much."""

    lane: str
    addresses: list[str]
    tls: bool
    token: str | None
    frames: int  # stop once this many frames were answered or refused
    seconds: float  # ... or after this long
    seed: int
    conns: int = 24
    files: dict[str, Any] = field(default_factory=dict)  # blob, size, checksum, node_id

    def source(self, kind: str) -> str:
        return f"127.{LANES.index(self.lane) + 1}.{KINDS.index(kind) + 1}.1"


class Tally:
    """Counters per kind of frame: ``written``, ``answered``, ``closed`` (the node hung up
    after it, with no answer), ``held``; replies per error type; connections."""

    def __init__(self) -> None:
        self.c: dict[str, Counter[str]] = {
            k: Counter() for k in ("written", "answered", "closed", "held")
        }
        self.errors: Counter[str] = Counter()  # replies by error type ("ok": a result)
        self.ops: Counter[str] = Counter()  # survivors written, by op
        self.ops_answered: Counter[str] = Counter()
        self.connections: Counter[str] = Counter()
        self.calibrated: Counter[str] = Counter()  # survivors, closers; left out: closed, silent

    def read(self) -> int:
        """Frames the node is known to have read: answered, or refused with a close (but
        "mismatch": bytes on the wrong transport are refused before any frame)."""
        return sum(
            n
            for c in (self.c["answered"], self.c["closed"])
            for k, n in c.items()
            if k != "mismatch"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            **{k: dict(v) for k, v in self.c.items()},
            "errors": dict(self.errors),
            "survivor_ops": {op: [n, self.ops_answered[op]] for op, n in self.ops.items()},
            "connections": dict(self.connections),
            "calibrated": dict(self.calibrated),
        }


class Conn:
    """One raw connection: write bytes, read the node's reply frames as they come."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.dec = FrameDecoder(codec.DEFAULT_MAX_FRAME)
        self.closed = False  # by the node (EOF or reset)
        self.raw = False  # bytes that are no frame came (a bulk reply's data)
        self.refused = False  # a BadRequest answer came: the node closes after it

    @classmethod
    async def open(cls, addr: str, ctx: ssl.SSLContext | None, source: str) -> Conn:
        host, port = addr.rsplit(":", 1)
        r, w = await asyncio.wait_for(
            asyncio.open_connection(host, int(port), ssl=ctx, local_addr=(source, 0)),
            CONNECT_TIMEOUT,
        )
        return cls(r, w)

    def send(self, data: bytes) -> None:
        if not self.closed:
            self.writer.write(data)

    async def replies(self, want: int, quiet: float = QUIET) -> list[codec.Envelope]:
        """Reply frames until ``want`` came, the node closed, or it was quiet for QUIET s.
        After a ``BadRequest`` answer, until the close that follows it."""
        out: list[codec.Envelope] = []
        while not self.closed and (len(out) < want or self.refused):
            try:
                data = await asyncio.wait_for(self.reader.read(1 << 16), quiet)
            except TimeoutError:
                break
            except (OSError, ssl.SSLError, EOFError):
                data = b""
            if not data:
                self.closed = True
                break
            if self.raw:
                continue
            try:
                got = self.dec.feed(data)
            except ProtocolError:
                self.raw = True
                continue
            out += got
            self.refused = self.refused or any(
                env.e is not None and env.e.get("type") == "BadRequest" for env in got
            )
        return out

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), 1.0)


class Lane:
    """Calibration and flood of one lane (see the module docstring)."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.rng = random.Random(spec.seed)
        f = spec.files
        self.gen = FrameGen(spec.seed, templates(f["blob"], f["size"], f["checksum"], f["node_id"]))
        self.ctx = pki.user_client_context() if spec.tls else None
        self.tally = Tally()
        self.survivors: list[tuple[str, list[bytes]]] = []  # (op, frames)
        self.op_of: dict[int, str] = {}  # a survivor's request id -> its op
        self.kinds = [k for k in KINDS if k != "calibrate"]
        self.weights = [WEIGHTS.get(k, 1.0) for k in self.kinds]
        self.deadline = 0.0

    def failed(self) -> None:
        """A connection that could not be opened (or a hello refused): counted; too many
        and the lane gives up (the node is gone)."""
        self.tally.connections["failed"] += 1
        if self.tally.connections["failed"] > MAX_FAILED:
            raise RuntimeError(f"{MAX_FAILED} connections failed: is the node down?")

    def done(self) -> bool:
        return self.tally.read() >= self.spec.frames or time.monotonic() > self.deadline

    async def connect(self, kind: str) -> Conn:
        addr = self.rng.choice(self.spec.addresses)
        ctx = self.ctx
        if kind == "mismatch":  # the other transport than the node speaks
            ctx = None if self.spec.tls else pki.user_client_context()
        conn = await Conn.open(addr, ctx, self.spec.source(kind))
        self.tally.connections[kind] += 1
        if self.spec.token and kind != "mismatch":
            conn.send(codec.request(0, "auth.hello", {"token": self.spec.token}))
            got = await conn.replies(1, HELLO_TIMEOUT)
            self.count("hello", 1, got)
            if not got or got[0].e is not None:
                # A valid credential refused, or no answer: counted (the test wants none).
                self.tally.connections["hello-refused"] += 1
                await conn.close()
                raise ConnectionError(f"auth.hello refused: {got[0].e if got else 'no answer'}")
        return conn

    def count(self, kind: str, written: int, replies: Iterable[codec.Envelope]) -> int:
        n = 0
        for env in replies:
            n += 1
            self.tally.errors["ok" if env.e is None else str(env.e.get("type"))] += 1
        self.tally.c["written"][kind] += written
        self.tally.c["answered"][kind] += n
        return n

    # ------------------------------------------------------------------ calibration

    async def calibrate(self) -> None:
        """Draw a pool of requests and keep those answered without a close.

        Pipelined by CALIBRATE_BATCH first; a request left unanswered (a closer in its
        batch cancelled it) is tried again alone, and left out if still unanswered."""
        pool = [self.gen.request() for _ in range(POOL)]
        frames = [codec.request(SURVIVOR_BASE + i, op, a) for i, (op, a) in enumerate(pool)]
        first = [i for i, (op, _) in enumerate(pool) if op not in BULK_OPS | NOT_REPLAYED]
        again: list[int] = []
        keep: list[int] = []

        async def worker() -> None:
            conn: Conn | None = None
            try:
                while first or again:
                    if first:
                        batch = first[:CALIBRATE_BATCH]
                        del first[:CALIBRATE_BATCH]
                    else:
                        batch = [again.pop()]
                    if conn is None or conn.closed:
                        try:
                            conn = await self.connect("calibrate")
                        except (OSError, TimeoutError, ssl.SSLError):
                            self.failed()
                            first.extend(batch)
                            continue
                    conn.send(b"".join(frames[i] for i in batch))
                    replies = await conn.replies(len(batch))
                    self.count("calibrate", len(batch), replies)
                    got = {env.i - SURVIVOR_BASE: env for env in replies}
                    for i in batch:
                        env = got.get(i)
                        if env is None and len(batch) > 1:
                            again.append(i)
                        elif env is None:
                            self.tally.calibrated["closed" if conn.closed else "silent"] += 1
                        elif env.e is not None and env.e.get("type") == "BadRequest":
                            self.tally.calibrated["closers"] += 1
                        else:
                            keep.append(i)
                    if len(got) < len(batch) and not conn.closed:
                        await conn.close()  # something still runs there: start afresh
                        conn = None
            finally:
                if conn is not None:
                    await conn.close()

        await asyncio.gather(*(worker() for _ in range(CALIBRATE_CONNS)))
        self.tally.calibrated["survivors"] += len(keep)
        if not keep:
            raise RuntimeError("no request of the pool was answered without a close")
        # Replayed by op, each op as often as the next: the pool has more survivors of
        # the ops whose templates are easy to keep valid.
        by_op: dict[str, list[bytes]] = {}
        for i in keep:
            by_op.setdefault(pool[i][0], []).append(frames[i])
        self.survivors = list(by_op.items())
        self.op_of = {SURVIVOR_BASE + i: pool[i][0] for i in keep}

    # ------------------------------------------------------------------ the flood

    def probe(self, kind: str) -> tuple[bytes, int]:
        """A probe of ``kind`` and how many replies to wait for: a step ends at that
        many, or at a close, or after QUIET s of silence (``ANY``: no count ends it)."""
        g = self.gen
        if kind == "request":
            return g.frame(), 1
        if kind in MUTATIONS:
            if self.rng.random() < 0.5:
                base = self.rng.choice(self.rng.choice(self.survivors)[1])
            else:
                base = g.frame()
            return g.mutate(base, kind), 1 if kind == "flip" else ANY
        if kind == "random":
            return g.random_bytes(), ANY
        if kind == "framed":
            return g.random_framed(), ANY
        if kind == "envelope":
            return g.envelope(), ANY
        return g.frame(), ANY  # mismatch: a request on the wrong transport

    async def step(self, conn: Conn, kind: str) -> bool:
        """One step on ``conn``: survivors, answered, then a probe. True if the
        connection may go on."""
        t, rng = self.tally, self.rng
        b = 0 if kind == "mismatch" else rng.choice(BATCHES)
        if b:
            # The survivors' answers first: a probe that closes the connection cancels
            # what is still in flight on it, and its answers would be lost.
            picks = [rng.choice(self.survivors) for _ in range(b)]
            conn.send(b"".join(rng.choice(frames) for _, frames in picks))
            for op, _ in picks:
                t.ops[op] += 1
            got = await conn.replies(b)
            self.count("survivor", b, got)
            for env in got:
                t.ops_answered[self.op_of.get(env.i, "?")] += 1
            if len(got) < b or conn.closed or conn.refused:
                return False
        probe, most = self.probe(kind)
        conn.send(probe)
        n = self.count(kind, 1, await conn.replies(most))
        if n == 0 and conn.closed:
            t.c["closed"][kind] += 1
        elif n == 0:
            t.c["held"][kind] += 1
        # Go on only while the framing is known whole and nothing is left in flight: the
        # probe was one request, answered.
        return kind == "request" and n == 1 and not (conn.closed or conn.refused or conn.raw)

    async def connection_loop(self, until: int) -> None:
        while not self.done() and self.tally.read() < until:
            kind = self.rng.choices(self.kinds, self.weights)[0]
            try:
                conn = await self.connect(kind)
            except (OSError, TimeoutError, EOFError, ssl.SSLError):
                if kind == "mismatch" and self.ctx is None:
                    # TLS at a plain node: its ClientHello is refused at the first bytes.
                    self.tally.c["written"][kind] += 1
                    self.tally.c["closed"][kind] += 1
                else:
                    self.failed()
                continue
            try:
                while not self.done() and await self.step(conn, kind):
                    pass
            finally:
                await conn.close()

    async def run(self) -> dict[str, Any]:
        start = time.monotonic()
        self.deadline = start + self.spec.seconds
        rounds = 0
        # A new pool every ROUNDS-th of the budget: more distinct requests.
        per_round = max(1, self.spec.frames // ROUNDS)
        while not self.done():
            await self.calibrate()
            rounds += 1
            until = self.tally.read() + per_round
            await asyncio.gather(*(self.connection_loop(until) for _ in range(self.spec.conns)))
        return {
            "lane": self.spec.lane,
            "seconds": time.monotonic() - start,
            "rounds": rounds,
            "read": self.tally.read(),
            **self.tally.to_dict(),
        }


# ---------------------------------------------------------------------- the nodes' logs

_REFUSAL = re.compile(
    r"sector\.rpc: (?:closing \('([\d.]+)', \d+\): (.*)|bad request .* from \('([\d.]+)', \d+\))"
)


def refusals_in_log(text: str) -> dict[str, Counter[str]]:
    """The frames a node's log says it refused, by lane and kind (from the peer's
    address, see ``Spec.source``): {"lane/kind": Counter(reason)}."""
    out: dict[str, Counter[str]] = {}
    for m in _REFUSAL.finditer(text):
        host = m.group(1) or m.group(3)
        reason = "bad request" if m.group(3) else _reason(m.group(2))
        lane, kind = (int(x) - 1 for x in host.split(".")[1:3])
        if 0 <= lane < len(LANES) and 0 <= kind < len(KINDS):
            name = f"{LANES[lane]}/{KINDS[kind]}"
        else:  # 127.0.0.1: a node (or a client of the test's own)
            name = f"other/{host}"
        out.setdefault(name, Counter())[reason] += 1
    return out


def _reason(text: str) -> str:
    for word in ("undecodable", "malformed", "exceeds", "reply frame", "stalled", "auth.hello"):
        if word in text:
            return word
    return text[:40]


def tracebacks(text: str, known: Iterable[tuple[str, str]] = ()) -> list[str]:
    """Each traceback of a node's log (with the line that announced it), but those of
    ``known``: (exception, a function it escaped from), bugs reported to be fixed in
    their own modules, tolerated only there."""
    lines = text.splitlines()
    known = list(known)
    out = []
    for i, line in enumerate(lines):
        if not line.startswith("Traceback"):
            continue
        end = next((j for j in range(i + 1, len(lines)) if not lines[j].startswith(" ")), i)
        tb = "\n".join(lines[max(0, i - 1) : end + 1])
        if not any(lines[end].startswith(exc) and where in tb for exc, where in known):
            out.append(tb)
    return out


def main(argv: list[str]) -> None:
    spec = Spec(**json.loads(Path(argv[0]).read_text()))
    print(json.dumps(asyncio.run(Lane(spec).run())), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
