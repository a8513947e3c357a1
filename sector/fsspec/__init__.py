"""``sector://``: Sector as an fsspec file system (issue 16); see ``core`` for the
file system, ``errors`` for how Sector's errors look to fsspec users and ``local`` for
reads of a replica on the node a Sphere UDF runs on.

The entry point ``fsspec.specs`` names ``sector.fsspec:SectorFileSystem``."""

from sector.fsspec.core import SectorFileSystem
from sector.fsspec.errors import WriteOnceError, _oserror

__all__ = ["SectorFileSystem", "WriteOnceError", "_oserror"]
