"""The one exception tree of Sector.

    SectorError                      base of everything raised on purpose
    ├── UsageError                   local misuse: bad arguments, bad paths (no I/O happened)
    │   └── InvalidPath              '..', NUL, empty segment, name too long
    ├── ClusterError                 something on the cluster answered badly
    │   ├── NotFound                 no such file or directory
    │   ├── AlreadyExists            the target exists
    │   ├── NotADirectory            a path component is a file
    │   ├── IsADirectory             a file operation on a directory
    │   ├── DirectoryNotEmpty        rm of a non-empty directory without recursive
    │   ├── NoSpace                  no node can take the data
    │   ├── ChecksumMismatch         bytes read do not match the recorded checksum
    │   ├── ReplicationError         fewer replicas than needed answered ("1 of 3 ...")
    │   ├── BadRequest               the node refused a malformed message
    │   ├── Unavailable              a node could not reach another one it needed
    │   ├── JobFailed                a Sphere job failed (a UDF raised: carries its traceback)
    │   ├── PermissionDenied         the caller's identity lacks the right (write, compute, admin)
    │   ├── CredentialError          a user credential or policy is forged, expired, revoked
    │   └── RemoteError              an unexpected failure on a node (carries its type)
    └── TransportError               the network: cannot connect, timeout, connection lost
        ├── ConnectError
        ├── Timeout
        ├── ProtocolError            garbage, oversize or malformed frames
        └── CertificateError         a peer's certificate does not prove cluster membership

Remote failures travel as typed error replies (``{"type": name, "msg": ..., "data": ...}``)
and are raised again at the caller as the same class (see ``from_wire``), except
transport errors: a node that failed to reach a *third* node answers ``Unavailable``,
so the caller never mistakes a live peer for a dead one.
"""

from __future__ import annotations

from typing import Any


class SectorError(Exception):
    """Base class of every error Sector raises on purpose."""

    def __init__(self, message: str, **data: Any) -> None:
        super().__init__(message)
        self.message = message
        self.data = data

    def __str__(self) -> str:
        return self.message


class UsageError(SectorError):
    pass


class InvalidPath(UsageError):
    pass


class ClusterError(SectorError):
    pass


class NotFound(ClusterError):
    pass


class AlreadyExists(ClusterError):
    pass


class NotADirectory(ClusterError):
    pass


class IsADirectory(ClusterError):
    pass


class DirectoryNotEmpty(ClusterError):
    pass


class NoSpace(ClusterError):
    pass


class ChecksumMismatch(ClusterError):
    pass


class ReplicationError(ClusterError):
    pass


class BadRequest(ClusterError):
    pass


class Unavailable(ClusterError):
    pass


class RemoteError(ClusterError):
    pass


class JobFailed(ClusterError):
    """A Sphere job failed; ``data["traceback"]`` has the UDF's traceback if it raised."""


class JobCancelled(JobFailed):
    """A Sphere job was cancelled by its user or an admin (``sphere.stop``): its
    driver stops at once instead of retrying its segments elsewhere."""


class PermissionDenied(ClusterError):
    """The caller is who it says, but may not do this ("alice cannot write /data/x")."""


class CredentialError(ClusterError):
    """A credential or policy blob was refused: forged, expired, revoked or malformed."""


class TransportError(SectorError):
    pass


class ConnectError(TransportError):
    pass


class Timeout(TransportError):
    pass


class ProtocolError(TransportError):
    pass


class CertificateError(TransportError):
    """A peer's TLS certificate was not issued by the cluster CA, or is out of date.

    A transport error, not a cluster one: the peer is not (provably) part of the
    cluster, so nothing it said can be trusted, like garbage on the wire.
    """


# Error types that may cross the wire, by name. Anything else arrives as RemoteError.
_WIRE_TYPES: dict[str, type[SectorError]] = {
    cls.__name__: cls
    for cls in (
        UsageError,
        InvalidPath,
        NotFound,
        AlreadyExists,
        NotADirectory,
        IsADirectory,
        DirectoryNotEmpty,
        NoSpace,
        ChecksumMismatch,
        ReplicationError,
        BadRequest,
        Unavailable,
        RemoteError,
        JobFailed,
        JobCancelled,
        PermissionDenied,
        CredentialError,
    )
}


def to_wire(exc: BaseException) -> dict[str, Any]:
    """The typed error reply for an exception raised by a handler."""
    if isinstance(exc, TransportError):
        return {"type": "Unavailable", "msg": exc.message, "data": _plain(exc.data)}
    if isinstance(exc, SectorError):
        name = type(exc).__name__
        if name not in _WIRE_TYPES:
            name = "RemoteError"
        return {"type": name, "msg": exc.message, "data": _plain(exc.data)}
    return {"type": "RemoteError", "msg": f"{type(exc).__name__}: {exc}", "data": {}}


def from_wire(err: Any) -> SectorError:
    """Rebuild the exception carried by an error reply."""
    if not isinstance(err, dict):
        return ProtocolError(f"malformed error reply: {err!r:.80}")
    cls = _WIRE_TYPES.get(str(err.get("type")), RemoteError)
    raw = err.get("data")
    data: dict[str, Any] = {str(k): v for k, v in raw.items()} if isinstance(raw, dict) else {}
    return cls(str(err.get("msg", "remote error")), **data)


def _plain(data: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in data.items():
        out[k] = v if isinstance(v, str | int | float | bool | type(None) | list) else str(v)
    return out
