"""Sector: a peer-to-peer storage cloud, and Sphere, its compute cloud.

import sector
with sector.connect() as c:          # the local cluster started by `sector up`
    c.put("local.bin", "/data/a.bin")
"""

from typing import TYPE_CHECKING, Any

from sector.errors import (
    AlreadyExists,
    CertificateError,
    ChecksumMismatch,
    ClusterError,
    ConnectError,
    CredentialError,
    DirectoryNotEmpty,
    InvalidPath,
    IsADirectory,
    JobCancelled,
    JobFailed,
    NoSpace,
    NotADirectory,
    NotFound,
    PermissionDenied,
    ProtocolError,
    SectorError,
    Timeout,
    TransportError,
    Unavailable,
    UsageError,
)

if TYPE_CHECKING:
    from sector.client import AsyncClient, Client, connect

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # The client pulls in asyncio and the transport; the CLI's start-up (and
    # `sector --help`) should not pay for that unless a command needs it.
    if name in ("AsyncClient", "Client", "connect"):
        import sector.client

        return getattr(sector.client, name)
    raise AttributeError(f"module 'sector' has no attribute {name!r}")


__all__ = [
    "AlreadyExists",
    "AsyncClient",
    "CertificateError",
    "ChecksumMismatch",
    "Client",
    "ClusterError",
    "ConnectError",
    "CredentialError",
    "DirectoryNotEmpty",
    "InvalidPath",
    "IsADirectory",
    "JobCancelled",
    "JobFailed",
    "NoSpace",
    "NotADirectory",
    "NotFound",
    "PermissionDenied",
    "ProtocolError",
    "SectorError",
    "Timeout",
    "TransportError",
    "Unavailable",
    "UsageError",
    "connect",
]
