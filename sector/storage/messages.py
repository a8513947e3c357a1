"""The ``blob.*`` requests (``sector.wire.messages``), served by ``transfer.py``: the
chain writes ``blob.put`` (bulk) and ``blob.put_small``, the read ``blob.get`` (bulk)
and its piece list ``blob.pieces``, and the holders' ``blob.delete``, ``blob.has``, ``blob.verify``, ``blob.missing`` and
``blob.replicate``; with the reply of a chain write (``Stored``), which a hop reads
from the next.

Clients and nodes build the same structs and send them as maps (``to_args``). Fields a
sender may leave out that it has always left out are ``UNSET``, so every sender's map
is the one it sent before. A blob id is ``Any`` here and checked by
``blobs.check_blob_id`` in the handler: whatever its type, a bad one is "invalid blob
id", as callers and tests expect.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import UNSET, Meta, UnsetType

from sector.errors import BadRequest
from sector.wire.messages import Request

__all__ = [
    "MAX_AUDIT",
    "MAX_CHAIN",
    "SMALL_MAX",
    "Delete",
    "Get",
    "GetPieces",
    "GetSmall",
    "Has",
    "Missing",
    "Put",
    "PutSmall",
    "Replicate",
    "Stored",
    "Verify",
    "stored_reply",
]

MAX_CHAIN = 16  # targets of one chain write
SMALL_MAX = 256 << 10  # blobs up to this size travel inline in control frames
MAX_AUDIT = 20_000  # blob ids in one blob.missing request
MAX_DELETE = 10_000  # blob ids in one blob.delete request

Size = Annotated[int, Meta(ge=0)]  # bytes, offsets
Holder = Annotated[list[str], Meta(min_length=2, max_length=2)]  # [node id, address]
Chain = Annotated[list[Holder], Meta(max_length=MAX_CHAIN)]  # first target first
FilePath = Annotated[str, Meta(max_length=4096)]  # the file a blob is written for
BlobId = Any  # check_blob_id: "invalid blob id", whatever the type


class Put(Request, frozen=True):
    """blob.put (bulk): ``size`` bytes of ``blob`` follow; store them and pass them on
    to the rest of the ``chain``. ``checksum``: verified before the copy is sealed.
    ``new``: the blob must not exist on any node of the chain (a user's write)."""

    op = "blob.put"
    size: Size
    blob: BlobId = None
    checksum: str | None = None
    chain: Chain = []
    path: FilePath = ""  # the inventory's key
    new: bool | UnsetType = UNSET  # sent by nodes only: a user's write is always new
    # False: this hop does not hash pieces (a later hop of a chain; the first one's
    # list is the record's, and the others make theirs when first asked: issue 14).
    pieces: bool | UnsetType = UNSET


class PutSmall(Request, frozen=True):
    """blob.put_small: ``blob.put`` with the bytes inline (``data``)."""

    op = "blob.put_small"
    data: Annotated[bytes, Meta(max_length=SMALL_MAX)]
    blob: BlobId = None
    checksum: str | None = None
    chain: Chain = []
    path: FilePath = ""
    new: bool | UnsetType = UNSET


class Stored(msgspec.Struct, frozen=True):
    """The reply of ``blob.put`` and ``blob.put_small``: the nodes where the blob is
    durable now, the answering hop first, and its checksum as that hop computed it."""

    stored: Chain = []
    checksum: str | None = None


def stored_reply(rep: Any, op: str) -> Stored:
    """A next hop's reply to ``op`` as a ``Stored``; BadRequest if it is not one."""
    try:
        return msgspec.convert(rep, Stored, builtin_types=(bytes,))
    except msgspec.ValidationError as exc:
        raise BadRequest(f"{op} reply: {exc}") from None


class Get(Request, frozen=True):
    """blob.get (bulk): ``length`` bytes of ``blob`` from ``offset`` (by default all of
    it), after a header frame ``{size, total}``; with ``keep``, then the next request."""

    op = "blob.get"
    blob: BlobId = None
    offset: Size | UnsetType = UNSET  # 0
    length: Size | UnsetType | None = UNSET  # None: to the end
    # True: after the bytes the stream stays open for the next blob.get (a striped
    # read's chunks, asked for one ahead: issue 15), until the reader closes it.
    keep: bool | UnsetType = UNSET


class GetSmall(Request, frozen=True):
    """blob.get_small: a whole blob of at most ``SMALL_MAX`` bytes inline in the reply
    ``{data, total}`` over a pooled connection (``blob.get`` opens a stream of its
    own: for a 4 KiB file, a connection per file cost more than the file)."""

    op = "blob.get_small"
    blob: BlobId = None


class GetPieces(Request, frozen=True):
    """blob.pieces: the piece list of the copy here (of ``piece_size``; 0: whichever it
    keeps), in the reply ``{size, piece_size, digests}``: a reader of a striped get
    checks each piece as it arrives (issue 15) rather than the whole file after it."""

    op = "blob.pieces"
    blob: BlobId = None
    piece_size: Size = 0
    # True: only a list kept beside the copy (NotFound if none), never one computed
    # from it: a read of the whole copy while the reader's streams read it as well.
    kept: bool | UnsetType = UNSET


class Delete(Request, frozen=True):
    """blob.delete: remove these blobs; with ``path``, only those no other path claims;
    with ``paths`` (one per blob: many files' blobs in one request), each as with its
    own ``path``."""

    op = "blob.delete"
    blobs: Annotated[list[BlobId], Meta(max_length=MAX_DELETE)]
    path: str | None = None
    # Sent only if set: a one-file delete travels as the map it always was.
    paths: Annotated[list[str], Meta(max_length=MAX_DELETE)] | UnsetType = UNSET


class Has(Request, frozen=True):
    """blob.has: the size of the copy here; with ``path``, also whether it was written
    for that path, and with ``pieces`` its piece list's size and root."""

    op = "blob.has"
    blob: BlobId = None
    path: str | None = None
    pieces: bool | UnsetType = UNSET  # False


class Verify(Request, frozen=True):
    """blob.verify: re-hash the copy here against the record's ``checksum``."""

    op = "blob.verify"
    checksum: str
    blob: BlobId = None


class Missing(Request, frozen=True):
    """blob.missing: which of these blobs this node does not hold (a repair audit)."""

    op = "blob.missing"
    blobs: Annotated[list[BlobId], Meta(max_length=MAX_AUDIT)]


class Replicate(Request, frozen=True):
    """blob.replicate: push the copy here down the chain ``targets`` (a repair), each
    target verifying it against the record's ``checksum``."""

    op = "blob.replicate"
    size: Size
    checksum: str
    targets: Chain
    blob: BlobId = None
    path: FilePath = ""
