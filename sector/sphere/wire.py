"""The words a Sphere job's driver and the nodes share: ops, message shapes, constants.

Both sides import this module and nothing of each other: the driver (client side,
``driver.py``) sends these messages, the node's Sphere service (``node/sphere.py``)
answers them. The shapes are ``TypedDict``s: they name every field as it travels (plain
msgpack maps, unchanged by this module), so a field added on one side is found on the
other. The node validates what it receives; the driver reads poll replies through
``outcomes`` and ``alive``.

A job's life on the wire::

    sphere.info                          -> InfoReply          (engines, host, topology)
    sphere.run      RunArgs              -> {accepted[, duplicate]}
    sphere.poll     PollArgs             -> PollReply          (long poll: outcomes)
    sphere.cancel   {job, attempt}       -> {cancelled}        (a backup's loser)
    sphere.resend   ResendArgs           -> {undelivered}      (a lost bucket node's parts)
    sphere.commit   CommitArgs           -> {files}            (staged output -> files)
    sphere.cleanup  {job}                -> {ok}
    sphere.push     (bulk, node to node: one bucket part)
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict, cast

__all__ = [
    "CANCEL",
    "CLEANUP",
    "COMMIT",
    "INFO",
    "KINDS",
    "MAX_BUCKETS",
    "MODES",
    "POLL",
    "PUSH",
    "RESEND",
    "RUN",
    "STAGING",
    "CommitArgs",
    "CommitItem",
    "InfoReply",
    "Outcome",
    "PollArgs",
    "PollReply",
    "ReduceSpec",
    "ResendArgs",
    "RunArgs",
    "SegmentArgs",
    "alive",
    "outcomes",
    "staging_owner",
]

INFO = "sphere.info"
RUN = "sphere.run"
POLL = "sphere.poll"
CANCEL = "sphere.cancel"
RESEND = "sphere.resend"
COMMIT = "sphere.commit"
CLEANUP = "sphere.cleanup"
PUSH = "sphere.push"

KINDS = ("file", "lines", "fixed", "idx", "task")
"""Segment kinds: whole files, text lines, fixed-size records, ``.idx`` records, and
generator tasks (no input)."""

MODES = ("client", "files", "buckets", "none")
"""Where a job's output goes: back to the client, files on the node that ran the
segment, N buckets, or nowhere (side effects only)."""

MAX_BUCKETS = 1 << 16

# Where jobs stage output, ``STAGING/<user>/<job>``. The security layer guards the same
# path (``sector.security.guard.STAGING``, a test keeps the two equal): this module
# imports nothing of Sector, as the engine processes load it (via ``batch``) at spawn.
STAGING = "/.sphere"


def staging_owner(user: str | None) -> str:
    """The directory under STAGING of a user's jobs ("_" on an open cluster)."""
    return user or "_"


class InfoReply(TypedDict, total=False):
    engines: int
    engines_busy: int
    host: str
    topology: str


class SegmentArgs(TypedDict, total=False):
    """One segment as ``sphere.run`` carries it (a task has only id, kind and param)."""

    id: int
    kind: str  # one of KINDS
    param: bytes  # task: the cloudpickled task parameter
    path: str
    blob: str
    offset: int
    length: int
    size: int  # of the whole file
    record_size: int
    first: int  # index of the segment's first record in its file
    checksum: str | None
    holders: list[str]  # addresses of the file's replicas
    index: bytes  # idx: int64 offsets relative to the segment, N records -> N+1


class RunArgs(TypedDict):
    job: str
    attempt: int
    seg: SegmentArgs
    udf: bytes
    digest: str
    mode: str  # one of MODES
    nbuckets: int
    buckets: dict[str, str]  # "<bucket>" -> address of the node holding it


class PollArgs(TypedDict):
    job: str
    ack: list[int]  # attempts whose outcome the driver has (the node drops the report)
    wait: float  # seconds to hold the reply while nothing is new


class Outcome(TypedDict, total=False):
    """A finished attempt, as the engine (and the node) report it."""

    attempt: int
    seg: int
    ok: bool
    error: str
    traceback: str
    retryable: bool
    records_out: int
    bytes_in: int
    bytes_out: int
    seconds: float
    data: bytes  # mode "client": the output records
    parts: dict[str, int]  # mode "buckets": "<bucket>" -> bytes of its part
    undelivered: list[int]  # buckets whose node did not take the part


class PollReply(TypedDict):
    done: list[Outcome]
    running: list[int]


class ResendArgs(TypedDict):
    job: str
    attempt: int
    buckets: dict[str, str]


class CommitItem(TypedDict):
    path: str
    # Either one attempt's output ("part" of mode files) ...
    attempt: NotRequired[int]
    # ... or a bucket: the winning attempts' parts, in segment order.
    bucket: NotRequired[int]
    attempts: NotRequired[list[int]]


class ReduceSpec(TypedDict):
    udf: bytes
    digest: str
    kind: str  # file | lines | fixed
    record_size: int


class CommitArgs(TypedDict):
    job: str
    rf: int | None
    items: list[CommitItem]
    durable: bool
    reduce: NotRequired[ReduceSpec]


def outcomes(reply: Any) -> list[Outcome]:
    """The well-formed outcomes of a ``sphere.poll`` reply (a map with an int attempt);
    anything else in its ``done`` list is skipped."""
    done = reply.get("done", []) if isinstance(reply, dict) else []
    return [
        cast(Outcome, r) for r in done if isinstance(r, dict) and isinstance(r.get("attempt"), int)
    ]


def alive(reply: Any) -> set[int]:
    """The attempts a ``sphere.poll`` reply says still run."""
    running = reply.get("running", []) if isinstance(reply, dict) else []
    return set(running)
