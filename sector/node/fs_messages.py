"""The requests of the namespace operations (``fs.*``, served by ``node/fs.py``).

Paths are ``str`` here and normalised by the handler: a bad path is InvalidPath, naming
the fault. Sizes and replica targets are left loose and checked by the handler: out of
range or of the wrong type they have always been the caller's misuse (UsageError), not
a malformed message.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from sector.storage.messages import SMALL_MAX
from sector.wire.messages import Request


class Stat(Request, frozen=True):
    """fs.stat: a path's description."""

    op = "fs.stat"
    path: str


class Ls(Request, frozen=True):
    """fs.ls: a directory's entries (a file's own). With ``limit``, a page of them:
    ``{"entries", "next"}``, the entries after the name ``after`` (``listing.py``).
    ``detail`` False: only each entry's name, path and type, from the directory's own
    record (as ``ls`` without ``-l`` needs), with no look-up of the entries' records."""

    op = "fs.ls"
    path: str
    after: str | None = None
    limit: int | None = None
    detail: bool = True


class Mkdir(Request, frozen=True):
    """fs.mkdir: make a directory; ``parents`` as ``mkdir -p``."""

    op = "fs.mkdir"
    path: str
    parents: bool = False


class BeginPut(Request, frozen=True):
    """fs.begin_put: plan a put (``node/put.py`` step 1); with ``name``, a ``path`` that
    is a directory means the file ``name`` in it."""

    op = "fs.begin_put"
    path: str
    size: Any = None  # required: _opt_int
    rf: Any = None  # _opt_int
    name: str | None = None
    client_host: str | None = None


class CommitPut(Request, frozen=True):
    """fs.commit_put: record a file whose blob is durable on ``replicas`` (step 4)."""

    op = "fs.commit_put"
    path: str
    checksum: str
    replicas: Annotated[list[tuple[str, str]], msgspec.Meta(min_length=1)]  # [node id, address]
    blob: Any = None  # check_blob_id: "invalid blob id", whatever the type
    size: Any = None  # required: _opt_int
    rf: Any = None  # _opt_int
    owner: str | None = None  # taken from a node only


class Rm(Request, frozen=True):
    """fs.rm: remove a file, or a directory (its contents with ``recursive``)."""

    op = "fs.rm"
    path: str
    recursive: bool = False


class Mv(Request, frozen=True):
    """fs.mv: rename ``src`` to ``dst`` (into it if a directory); ``replace``: onto a file."""

    op = "fs.mv"
    src: str
    dst: str
    replace: bool = False


class SetRf(Request, frozen=True):
    """fs.setrf: change a file's replica target."""

    op = "fs.setrf"
    path: str
    rf: Any = None  # required: _opt_int


class PutSmall(Request, frozen=True):
    """fs.put_small: a whole small file in one call to its path's owner (issue 17). The
    owner plans it, writes its blob down the chain itself and records it: the three
    steps of a put in one round trip, and no holder asked to confirm what it told the
    owner itself. ``name``, ``rf`` and ``client_host`` as for ``fs.begin_put``;
    ``checksum``: the bytes' own, which every holder checks before sealing its copy."""

    op = "fs.put_small"
    path: str
    data: Annotated[bytes, msgspec.Meta(max_length=SMALL_MAX)]
    checksum: str
    rf: Any = None  # _opt_int
    name: str | None = None
    client_host: str | None = None
