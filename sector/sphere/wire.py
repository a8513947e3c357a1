"""The words a Sphere job's driver and the nodes share: ops, message shapes, constants.

Both sides import this module and nothing of each other: the driver (client side,
``driver.py``) sends these messages, the node's Sphere service (``node/sphere.py``)
answers them. The requests are ``Request`` structs (``sector.wire.messages``): the driver
builds them and sends them as maps (``to_args``), the node decodes and checks them
against the same declaration (types, ranges, the job id's form; what msgspec cannot say,
such as a segment's range within its file, the node checks after). A field added on one
side is found on the other. Commit items and the replies stay ``TypedDict``s (plain
msgpack maps); the driver reads poll replies through ``outcomes`` and ``alive``.

A job's life on the wire::

    sphere.info                          -> InfoReply          (engines, host, topology)
    sphere.run      Run                  -> {accepted[, duplicate]}
    sphere.poll     Poll                 -> PollReply          (long poll: outcomes)
    sphere.cancel   Cancel               -> {cancelled}        (a backup's loser)
    sphere.resend   Resend               -> {undelivered}      (a lost bucket node's parts)
    sphere.commit   Commit               -> {files}            (staged output -> files)
    sphere.cleanup  Cleanup              -> {ok}
    sphere.stop     Stop                 -> {known, stopped}   (cancel a whole job)
    sphere.push     Push                 (bulk, node to node: an attempt's parts for one node)
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, NotRequired, TypedDict, cast, get_args

import msgspec
from msgspec import UNSET, Meta, UnsetType

from sector.wire.messages import Request, to_args

__all__ = [
    "CANCEL",
    "CLEANUP",
    "COMMIT",
    "DATA_SEGMENTS",
    "INFO",
    "KINDS",
    "MAX_BUCKETS",
    "MAX_ID",
    "MAX_REQUIRED",
    "MODES",
    "POLL",
    "PUSH",
    "RESEND",
    "RUN",
    "STAGING",
    "STOP",
    "Cancel",
    "Cleanup",
    "Commit",
    "CommitItem",
    "DataSegment",
    "InfoReply",
    "Outcome",
    "Poll",
    "PollReply",
    "Push",
    "Reduce",
    "Required",
    "Resend",
    "Run",
    "Segment",
    "Stop",
    "TaskSegment",
    "alive",
    "outcomes",
    "staging_owner",
    "to_args",
]

INFO = "sphere.info"
RUN = "sphere.run"
POLL = "sphere.poll"
CANCEL = "sphere.cancel"
RESEND = "sphere.resend"
COMMIT = "sphere.commit"
CLEANUP = "sphere.cleanup"
PUSH = "sphere.push"
STOP = "sphere.stop"

Kind = Literal["file", "lines", "fixed", "idx", "task"]
KINDS: tuple[str, ...] = get_args(Kind)
"""Segment kinds: whole files, text lines, fixed-size records, ``.idx`` records, and
generator tasks (no input)."""

Mode = Literal["client", "files", "buckets", "none"]
MODES: tuple[str, ...] = get_args(Mode)
"""Where a job's output goes: back to the client, files on the node that ran the
segment, N buckets, or nowhere (side effects only)."""

MAX_BUCKETS = 1 << 16
MAX_ID = 1 << 40  # attempt and segment ids

# Where jobs stage output, ``STAGING/<user>/<job>``. The security layer guards the same
# path (``sector.security.guard.STAGING``, a test keeps the two equal): this module
# imports nothing of Sector but the wire layer's requests, as the engine processes load
# it (via ``batch``) at spawn.
STAGING = "/.sphere"


def staging_owner(user: str | None) -> str:
    """The directory under STAGING of a user's jobs ("_" on an open cluster)."""
    return user or "_"


# The values a message may carry (``msgspec.Meta``: a value outside is a BadRequest).
JobId = Annotated[str, Meta(pattern=r"^[0-9a-f]{8,32}\Z")]  # hex, no path in it
Id = Annotated[int, Meta(ge=0, le=MAX_ID)]  # of an attempt or a segment
BucketId = Annotated[int, Meta(ge=0, le=MAX_BUCKETS)]
Size = Annotated[int, Meta(ge=0, le=1 << 62)]  # bytes, offsets, record counts
RecordSize = Annotated[int, Meta(ge=0, le=1 << 30)]
Digest = Annotated[str, Meta(max_length=128)]
UserName = Annotated[str, Meta(pattern=r"^[a-z_][a-z0-9_.-]{0,63}\Z")]  # as credentials name them


class InfoReply(TypedDict, total=False):
    engines: int
    engines_busy: int
    host: str
    topology: str


# ------------------------------------------------------------------ segments
# One segment as ``sphere.run`` carries it: a map whose ``kind`` says which struct it is.


class _Segment(msgspec.Struct, kw_only=True, frozen=True, tag_field="kind"):
    id: Id

    @property
    def kind(self) -> str:
        """One of KINDS."""
        return str(self.__struct_config__.tag)


class TaskSegment(_Segment, frozen=True, tag="task"):
    """A generator task: no input, only its own parameter."""

    param: bytes | None = None  # cloudpickled


class DataSegment(_Segment, frozen=True):
    """A byte range of one file (its records, by kind); ``FileSegment`` and the others
    below are its kinds."""

    path: str
    blob: str
    offset: Size
    length: Size
    size: Size  # of the whole file
    record_size: RecordSize = 0
    first: Size = 0  # index of the segment's first record in its file
    checksum: str | None = None
    holders: list[str] = []  # addresses of the file's replicas
    index: bytes | UnsetType = UNSET  # idx: int64 offsets relative to the segment, N+1


class FileSegment(DataSegment, frozen=True, tag="file"):
    """A whole file."""


class LinesSegment(DataSegment, frozen=True, tag="lines"):
    """Text lines."""


class FixedSegment(DataSegment, frozen=True, tag="fixed"):
    """Fixed-size records of ``record_size`` bytes."""


class IdxSegment(DataSegment, frozen=True, tag="idx"):
    """Records delimited by an ``.idx`` index (``index``)."""


Segment = TaskSegment | FileSegment | LinesSegment | FixedSegment | IdxSegment
DATA_SEGMENTS: dict[str, type[FileSegment | LinesSegment | FixedSegment | IdxSegment]] = {
    "file": FileSegment,
    "lines": LinesSegment,
    "fixed": FixedSegment,
    "idx": IdxSegment,
}


# ------------------------------------------------------------------ required files


class Required(msgspec.Struct, kw_only=True, frozen=True):
    """A job's required file (``required_files``) as the driver resolved it: the node
    fetches ``path`` at ``blob`` (every node the same version, or the job fails) and
    shows it to the job's engines as ``name``, relative to their working directory. A
    required directory is an entry of its own (``dir``: made, nothing fetched), its
    files follow with names below its name."""

    path: str
    name: Annotated[str, Meta(min_length=1, max_length=4096)]
    blob: str = ""
    size: Size = 0
    dir: bool = False


MAX_REQUIRED = 4096  # entries of a job's required files
Requireds = Annotated[list[Required], Meta(max_length=MAX_REQUIRED)]


# ------------------------------------------------------------------ requests


class Run(Request, frozen=True):
    """sphere.run: start attempt ``attempt`` of a job on one segment."""

    op = RUN
    job: JobId
    attempt: Id
    seg: Segment
    udf: bytes  # cloudpickled (function, job parameter)
    digest: Digest
    mode: Mode
    nbuckets: Annotated[int, Meta(ge=0, le=MAX_BUCKETS)]
    buckets: dict[str, str] = {}  # "<bucket>" -> address of the node holding it
    # Fixed-size records only: the UDF is called on batches of at most this many bytes
    # of the segment, their outputs appended (0: the whole segment at once).
    batch: Annotated[int, Meta(ge=0, le=1 << 40)] | UnsetType = UNSET  # sent only if set
    # shuffle_compress: the bucket parts are written as zstd frames (``packed``)
    compress: bool | UnsetType = UNSET  # sent only if set
    # The job's required files: fetched once per node and job, before its first task.
    required: Requireds | UnsetType = UNSET  # sent only if the job has some
    # A backup of a straggling attempt (speculation): counted in the node's metrics.
    speculative: bool | UnsetType = UNSET  # sent only if true
    # The job's segment count: the web page's progress is done/total from the start.
    total: Annotated[int, Meta(ge=0, le=MAX_ID)] | UnsetType = UNSET


class Poll(Request, frozen=True):
    """sphere.poll: the job's finished attempts (a long poll of up to ``wait`` s)."""

    op = POLL
    job: JobId
    ack: list[int] = []  # attempts whose outcome the driver has (the node drops the report)
    wait: Annotated[float, Meta(ge=0, le=30)] = 0.0  # seconds to hold the reply


class Cancel(Request, frozen=True):
    """sphere.cancel: stop an attempt that lost its segment to another."""

    op = CANCEL
    job: JobId
    attempt: Id


class Resend(Request, frozen=True):
    """sphere.resend: push a finished attempt's parts to these bucket nodes again."""

    op = RESEND
    job: JobId
    attempt: Id
    buckets: dict[str, str]


class Cleanup(Request, frozen=True):
    """sphere.cleanup: forget the job and remove its files."""

    op = CLEANUP
    job: JobId
    # The job was cancelled (``Stop``) and this says by whom: a node that has not heard
    # of the cancel yet cancels the job too, rather than forget it.
    cancelled: str | UnsetType = UNSET


class Stop(Request, frozen=True):
    """sphere.stop: cancel a whole job (its user or an admin): its running attempts are
    killed, its staged files removed, and its runs, polls and commits refused with
    ``JobCancelled`` from then on (a job not seen here yet is refused when it comes)."""

    op = STOP
    job: JobId


class Push(Request, frozen=True):
    """sphere.push (bulk, node to node): one bucket part of ``size`` bytes follows, then
    each of ``more`` (bucket, size) right behind it: an attempt's parts for one node go
    down one stream (one connection and one TLS handshake, not one per bucket)."""

    op = PUSH
    job: JobId
    bucket: BucketId
    attempt: Id
    size: Size
    more: Annotated[list[tuple[BucketId, Size]], Meta(max_length=MAX_BUCKETS)] = []
    # The user whose job it is (None on an open cluster): a node that first hears of a
    # job from a push stages it with that user's other jobs (``node/sphere.py``).
    owner: UserName | None = None


class CommitItem(TypedDict):
    path: str
    # Either one attempt's output ("part" of mode files) ...
    attempt: NotRequired[Id]
    # ... or a bucket: the winning attempts' parts, in segment order.
    bucket: NotRequired[BucketId]
    attempts: NotRequired[list[Id]]


class Reduce(msgspec.Struct, kw_only=True, frozen=True):
    """A commit's reduce: a UDF run over each bucket's parts, reading them as ``kind``."""

    udf: bytes  # cloudpickled (reduce, job parameter)
    digest: Digest
    kind: Literal["file", "lines", "fixed", "stream"]  # stream: the parts, not loaded
    record_size: RecordSize = 0  # fixed: at least 1
    compress: bool | UnsetType = UNSET  # the parts are zstd frames (``packed``)


class Commit(Request, frozen=True):
    """sphere.commit: make Sector files of staged output."""

    op = COMMIT
    job: JobId
    items: list[CommitItem]
    rf: Annotated[int, Meta(ge=1, le=16)] | None = None
    durable: bool = True
    reduce: Reduce | UnsetType | None = UNSET  # sent only with buckets to reduce
    required: Requireds | UnsetType = UNSET  # the job's required files, for its reduce


# ------------------------------------------------------------------ replies


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
