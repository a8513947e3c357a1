"""How Sector's errors and entries look to fsspec users: the builtin exceptions they
expect (``_oserror``), the write-once refusal (``WriteOnceError``) and fsspec's entry
of a stat or listing entry (``_info``)."""

from __future__ import annotations

import contextlib
import errno
import io
from collections.abc import Iterator
from typing import Any

from sector.errors import (
    AlreadyExists,
    ConnectError,
    CredentialError,
    DirectoryNotEmpty,
    IsADirectory,
    NoSpace,
    NotADirectory,
    NotFound,
    PermissionDenied,
    SectorError,
    Timeout,
    UsageError,
)

__all__ = ["WriteOnceError", "_errors", "_info", "_oserror"]


class WriteOnceError(io.UnsupportedOperation, NotImplementedError):
    """A mode Sector's write-once files cannot give (append, update).

    ``io.UnsupportedOperation`` is both an ``OSError`` and a ``ValueError``, and fsspec
    implementations refuse modes with ``NotImplementedError``: whichever a caller
    catches, this is it."""


def _oserror(exc: SectorError) -> Exception:
    """The builtin exception fsspec users expect for a Sector error (one line)."""
    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    for cls, builtin, code in (
        (NotFound, FileNotFoundError, errno.ENOENT),
        (AlreadyExists, FileExistsError, errno.EEXIST),
        (IsADirectory, IsADirectoryError, errno.EISDIR),
        (NotADirectory, NotADirectoryError, errno.ENOTDIR),
        (DirectoryNotEmpty, OSError, errno.ENOTEMPTY),
        (PermissionDenied, PermissionError, errno.EACCES),
        (CredentialError, PermissionError, errno.EACCES),
        (NoSpace, OSError, errno.ENOSPC),
        (Timeout, TimeoutError, errno.ETIMEDOUT),
    ):
        if isinstance(exc, cls):
            return builtin(code, msg)
    if isinstance(exc, ConnectError):
        return ConnectionError(f"cannot reach the Sector cluster: {msg}")
    if isinstance(exc, UsageError):  # bad paths and arguments: no I/O happened
        return ValueError(msg)
    return OSError(errno.EIO, msg)


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except SectorError as exc:
        raise _oserror(exc) from None


def _info(e: dict[str, Any]) -> dict[str, Any]:
    """fsspec's entry for a Sector stat or listing entry: the same keys from either
    (checksum included), so ``checksum()``/``ukey()`` agree whichever it came from."""
    is_dir = e["type"] == "dir"
    reps = e.get("replicas", 0)
    if isinstance(reps, list):
        reps = sum(1 for r in reps if r.get("state") == "up")
    return {
        "name": e["path"],
        "size": 0 if is_dir else int(e["size"]),
        "type": "directory" if is_dir else "file",
        "checksum": None if is_dir else e.get("checksum"),
        "mtime": e.get("mtime"),
        "replicas": reps,
        "rf": e.get("rf"),
    }
