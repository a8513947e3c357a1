"""Sector: a peer-to-peer storage cloud (and, soon, Sphere, its compute cloud).

import sector
with sector.connect() as c:          # the local cluster started by `sector up`
    c.put("local.bin", "/data/a.bin")
"""

from sector.client import AsyncClient, Client, connect
from sector.errors import (
    AlreadyExists,
    ChecksumMismatch,
    ClusterError,
    ConnectError,
    DirectoryNotEmpty,
    InvalidPath,
    IsADirectory,
    NoSpace,
    NotADirectory,
    NotFound,
    ProtocolError,
    SectorError,
    Timeout,
    TransportError,
    UsageError,
)

__version__ = "0.1.0"

__all__ = [
    "AlreadyExists",
    "AsyncClient",
    "ChecksumMismatch",
    "Client",
    "ClusterError",
    "ConnectError",
    "DirectoryNotEmpty",
    "InvalidPath",
    "IsADirectory",
    "NoSpace",
    "NotADirectory",
    "NotFound",
    "ProtocolError",
    "SectorError",
    "Timeout",
    "TransportError",
    "UsageError",
    "connect",
]
