"""``sector://``: Sector as an fsspec file system, for pandas, pyarrow, dask and friends.

Installing the package registers the protocol (entry point ``fsspec.specs``), so
``pd.read_csv("sector:///data/x.csv")`` works with nothing imported first.

URLs
    ``sector:///path``            the cluster of the ``cluster=`` option, else
                                  ``SECTOR_CLUSTER``, else the local cluster that
                                  ``sector up`` started last (as ``sector.connect()``)
    ``sector://HOST:PORT/path``   the cluster entered through that node
    anything else after ``//``    a ``ValueError`` (one line), never a guess
Credentials are the client's: ``token=``, else ``SECTOR_TOKEN``, else what ``sector
login`` stored for the cluster; ``anonymous=True`` presents none.

Semantics are fsspec's where Sector's own differ: entries are named by full path with
``type`` "file" or "directory"; Sector's errors surface as the builtin
``FileNotFoundError``, ``FileExistsError``, ``IsADirectoryError``,
``NotADirectoryError`` (``_oserror``); ``mv`` onto a file replaces it (one step on the
node, as ``rename``); ``mkdir`` of an existing path raises. Writing is write-once: a
file opened "wb" is spooled to a local temp file and put when closed (it appears whole
or not at all; an exception inside ``with`` discards it); append mode is refused.

Connections: the filesystem holds no socket when pickled (fsspec rebuilds it from its
options) and makes its ``AsyncClient`` lazily, once per process and event loop: a
forked dask worker, or fsspec's own loop thread started again after a fork, gets a
client of its own rather than the parent's sockets.

Reads are ranged: a file object fetches the blocks it is asked for (``read_range``
on the nearest replica, ``block_size`` of readahead), from the version the file had
when it was opened. In a Sphere UDF on a node that holds the file, ``open``/``cat``
read the node's replica directly, checked as the node would serve it (``local``;
``fs.local.reads`` counts them).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import errno
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

from fsspec.asyn import AsyncFileSystem, sync
from fsspec.spec import AbstractBufferedFile
from fsspec.utils import stringify_path

from sector.client.aio import AsyncClient
from sector.config import resolve_address
from sector.errors import (
    AlreadyExists,
    NotFound,
    SectorError,
    Timeout,
    TransportError,
    UsageError,
)
from sector.fsspec.errors import WriteOnceError, _errors, _info, _oserror
from sector.fsspec.local import LocalReplicas

__all__ = ["SectorFileSystem", "WriteOnceError"]

PROTOCOL = "sector"
BLOCK_SIZE = 4 << 20  # readahead of a file object: the sync client's READ_AHEAD
_ADDR = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):[0-9]{1,5}")
# Clients a fork or a loop change left behind: kept referenced, never used or closed
# (their sockets are the parent's; collecting them would warn about unclosed transports).
_ABANDONED: list[AsyncClient] = []


class SectorFileSystem(AsyncFileSystem):
    """``fsspec.filesystem("sector", cluster="HOST:PORT")``: files of a Sector cluster.

    Options: ``cluster`` (default: ``SECTOR_CLUSTER``, then the local cluster),
    ``token``/``anonymous`` (credentials, as ``sector.connect``), ``timeout`` (seconds
    a request may take), ``connect_timeout`` (seconds the first node has to answer:
    an address where something listens but no node answers fails then, not later).
    """

    protocol = PROTOCOL
    root_marker = "/"
    _pid: int  # (AsyncFileSystem's: the process that made the instance)
    cachable = True
    _BLOCK_SIZE = BLOCK_SIZE

    def __init__(
        self,
        cluster: str | None = None,
        *,
        token: str | None = None,
        anonymous: bool = False,
        timeout: float = 60.0,
        connect_timeout: float = 10.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if cluster is not None and not _ADDR.fullmatch(cluster):
            raise ValueError(f"cluster must be HOST:PORT, not {cluster!r}")
        self.cluster = cluster
        self._token = token
        self._anonymous = anonymous
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._aio: AsyncClient | None = None
        self._aio_key: tuple[int, int, str] | None = None
        self._ready: asyncio.Future[None] | None = None
        # Reads served from the node's own replica in a Sphere UDF (``local``).
        self.local = LocalReplicas()

    # ------------------------------------------------------------------ connection

    @property
    def loop(self) -> Any:
        # fsspec's own property refuses to work after a fork; fsspec starts its loop
        # thread again in the child (reset_after_fork), so take that one instead.
        if self._pid != os.getpid() and not self.asynchronous:
            from fsspec.asyn import get_loop

            self._pid = os.getpid()
            self._loop = get_loop()
        return self._loop

    async def _client(self) -> AsyncClient:
        """This process's (and this loop's) client, made and checked on first use.

        Without ``cluster=`` the address is looked up again on every call (an
        environment variable, a small file): fsspec caches instances by their options,
        so ``sector:///`` must follow SECTOR_CLUSTER or a new ``sector up``."""
        try:
            address = resolve_address(self.cluster)
        except UsageError:
            raise ValueError(
                "no Sector cluster given: pass cluster='HOST:PORT' or a "
                "sector://HOST:PORT/ URL, set SECTOR_CLUSTER, or start one with `sector up`"
            ) from None
        key = (os.getpid(), id(asyncio.get_running_loop()), address)
        if self._aio_key != key:
            old = self._aio
            if old is not None and self._aio_key is not None and self._aio_key[:2] == key[:2]:
                _ABANDONED.append(old)  # this loop's: close it (it was for another cluster)
                asyncio.ensure_future(old.close()).add_done_callback(
                    lambda _f: _ABANDONED.remove(old)
                )
            elif old is not None:
                _ABANDONED.append(old)  # another process's or loop's: leave it alone
            with _errors():
                self._aio = AsyncClient(
                    address,
                    timeout=self._timeout,
                    token=self._token,
                    anonymous=self._anonymous,
                )
            self._aio_key, self._ready = key, None
        assert self._aio is not None
        if self._ready is None:
            bounded = _bounded(self._aio.connect(), self._connect_timeout)
            self._ready = asyncio.ensure_future(bounded)
        try:
            await asyncio.shield(self._ready)
        except TransportError as exc:
            self._ready = None  # the next call tries again
            raise ConnectionError(
                f"cannot reach a Sector cluster at {self._aio.address}: {exc}"
            ) from None
        except SectorError as exc:
            self._ready = None
            raise _oserror(exc) from None
        except BaseException:
            self._ready = None
            raise
        return self._aio

    def close(self) -> None:
        """Close this process's connections (the next call opens new ones)."""
        aio, self._aio, self._aio_key, self._ready = self._aio, None, None, None
        if aio is not None and not self.asynchronous:
            with contextlib.suppress(Exception):
                sync(self.loop, aio.close, timeout=10)

    # ------------------------------------------------------------------ paths

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        path = stringify_path(path)
        if path.startswith(f"{PROTOCOL}://"):
            path = _split_url(path)[1]
        path = re.sub("/+", "/", path).strip("/")
        return "/" + path

    @staticmethod
    def _get_kwargs_from_urls(path: str) -> dict[str, Any]:
        if isinstance(path, str) and path.startswith(f"{PROTOCOL}://"):
            netloc = _split_url(path)[0]
            if netloc:
                return {"cluster": netloc}
        return {}

    def unstrip_protocol(self, name: str) -> str:
        return f"{PROTOCOL}://{self.cluster or ''}{self._strip_protocol(name)}"

    # ------------------------------------------------------------------ namespace

    async def _stat(self, path: str) -> dict[str, Any]:
        """Sector's own stat (blob, replicas): what a read needs."""
        c = await self._client()
        with _errors():
            return await c.stat(self._strip_protocol(path))

    async def _info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        st = await self._stat(path)
        out = _info(st)
        out["created"] = st.get("ctime")
        if st["type"] == "file":
            out["blob"] = st["blob"]
            out["locations"] = [r["address"] for r in st["replicas"]]
        return out

    async def _ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        c = await self._client()
        with _errors():
            entries = await c.ls(self._strip_protocol(path))
        out = sorted((_info(e) for e in entries), key=lambda e: e["name"])
        return out if detail else [e["name"] for e in out]

    async def _mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        c, p = await self._client(), self._strip_protocol(path)
        with _errors():
            try:
                res = await c.mkdir(p)
            except NotFound:  # a parent is missing
                if not create_parents:
                    raise
                await c.mkdir(self._parent(p), parents=True)
                res = await c.mkdir(p)
            if p == "/" or (isinstance(res, dict) and res.get("created") is False):
                raise AlreadyExists(f"{p} already exists")

    async def _makedirs(self, path: str, exist_ok: bool = False) -> None:
        try:
            await self._mkdir(path, create_parents=True)
        except FileExistsError:
            if not exist_ok or (await self._info(path))["type"] != "directory":
                raise

    async def _rm_file(self, path: str, **kwargs: Any) -> None:
        c = await self._client()
        with _errors():
            await c.rm(self._strip_protocol(path))

    async def _rm(
        self,
        path: Any,
        recursive: bool = False,
        batch_size: int | None = None,
        maxdepth: int | None = None,
        **kwargs: Any,
    ) -> None:
        if recursive and maxdepth is not None:  # only so deep: file by file
            found = await self._expand_path(path, recursive=True, maxdepth=maxdepth)
            for p in sorted(found, key=lambda p: -p.count("/")):
                await self._rm_file(p)
            return
        # One request per named tree: the node removes a directory's contents itself.
        paths = sorted(await self._expand_path(path, recursive=False))
        tops = [p for i, p in enumerate(paths) if not any(_under(p, q) for q in paths[:i])]
        c = await self._client()
        with _errors():
            await asyncio.gather(*(c.rm(p, recursive=recursive) for p in tops))

    def rmdir(self, path: str) -> None:
        if self.info(path)["type"] != "directory":
            raise NotADirectoryError(errno.ENOTDIR, f"{path} is not a directory")
        self.rm_file(path)

    async def _mv(self, path1: str, path2: str, **kwargs: Any) -> None:
        c = await self._client()
        with _errors():
            await c.mv(self._strip_protocol(path1), self._strip_protocol(path2), replace=True)

    _mv_file = _mv

    def mv(
        self, path1: Any, path2: Any, recursive: bool = False, maxdepth: Any = None, **kw: Any
    ) -> None:
        """Rename on the cluster (no bytes move); onto an existing file: replace it.
        Lists and globs go the generic way (copy, then remove)."""
        if isinstance(path1, str) and isinstance(path2, str) and not _magic(path1):
            if self._strip_protocol(path1) != self._strip_protocol(path2):
                sync(self.loop, self._mv, path1, path2)
            return
        super().mv(path1, path2, recursive=recursive, maxdepth=maxdepth, **kw)

    # ------------------------------------------------------------------ identity

    def checksum(self, path: str) -> int:
        """From the content's BLAKE3 (the record's checksum): the same whether the
        info came from a listing or a stat, and equal for equal content."""
        return int(self.ukey(path)[:32], 16)

    def ukey(self, path: str) -> str:
        info = self.info(path)
        if info["type"] == "file" and info.get("checksum"):
            return str(info["checksum"]).partition(":")[2] or str(info["checksum"])
        return hashlib.sha256(f"{info['type']}:{info['name']}".encode()).hexdigest()

    def created(self, path: str) -> datetime.datetime:
        return _when(self.info(path).get("created"))

    def modified(self, path: str) -> datetime.datetime:
        return _when(self.info(path).get("mtime"))

    # ------------------------------------------------------------------ data

    async def _read_range(self, st: dict[str, Any], start: int, end: int) -> bytes:
        """Bytes [start, end) of the version ``st`` names (whole: checksum-verified)."""
        if end <= start:
            return b""
        if self.local.root() is not None:  # in a Sphere engine: its node's replica?
            got = await asyncio.to_thread(self.local.read, st, start, end)
            if got is not None:
                return got
        c = await self._client()
        length = None if start == 0 and end >= st["size"] else end - start
        try:
            with _errors():
                return await c.read_range(st, start, length)
        except OSError as exc:
            # An overwrite deletes the old version's copies at once: say so, rather
            # than "every replica failed", and never mix bytes of two versions.
            if exc.errno != errno.EIO:
                raise
            with contextlib.suppress(SectorError):
                if (await c.stat(st["path"])).get("blob") != st["blob"]:
                    raise OSError(
                        errno.ESTALE, f"{st['path']} was replaced while open: open it again"
                    ) from None
            raise

    async def _cat_file(
        self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any
    ) -> bytes:
        st = await self._stat(path)
        if st["type"] == "dir":
            raise IsADirectoryError(errno.EISDIR, f"{st['path']} is a directory")
        size = st["size"]
        a = 0 if start is None else (max(0, size + start) if start < 0 else min(start, size))
        b = size if end is None else (max(0, size + end) if end < 0 else min(end, size))
        return await self._read_range(st, a, b)

    async def _get_file(self, rpath: str, lpath: str, **kwargs: Any) -> None:
        c = await self._client()
        try:
            with _errors():
                await c.get(self._strip_protocol(rpath), lpath)
        except IsADirectoryError:
            os.makedirs(lpath, exist_ok=True)  # a directory of a recursive get

    async def _put_file(
        self, lpath: str, rpath: str, mode: str = "overwrite", **kwargs: Any
    ) -> None:
        rpath = self._strip_protocol(rpath)
        if os.path.isdir(lpath):
            await self._makedirs(rpath, exist_ok=True)
            return
        if not os.path.exists(lpath):
            raise FileNotFoundError(errno.ENOENT, f"no such local file: {lpath}")
        if mode == "create" and await self._exists(rpath):
            raise FileExistsError(errno.EEXIST, f"{rpath} already exists")
        c = await self._client()
        with _errors():
            await c.put(lpath, rpath, into_dir=False)

    async def _pipe_file(
        self, path: str, value: bytes, mode: str = "overwrite", **kwargs: Any
    ) -> None:
        with _spooled() as tmp:
            await asyncio.to_thread(_write_file, tmp, value)
            await self._put_file(tmp, path, mode=mode)

    async def _cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        """Sector has no copy on the nodes: the bytes come here and go back."""
        st = await self._stat(path1)
        if st["type"] == "dir":
            await self._makedirs(path2, exist_ok=True)
            return
        c = await self._client()
        with _spooled() as tmp, _errors():
            await c.get(st["path"], tmp)
            await c.put(tmp, self._strip_protocol(path2), into_dir=False)

    def _open(
        self,
        path: str,
        mode: str = "rb",
        block_size: int | None = None,
        autocommit: bool = True,
        cache_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> SectorFile:
        path = self._strip_protocol(path)
        if mode not in ("rb", "wb", "xb"):
            raise WriteOnceError(
                f"mode {mode!r} is not supported on {path}: Sector files are write-once "
                "(read with 'rb', replace whole with 'wb')"
            )
        try:
            st: dict[str, Any] | None = sync(self.loop, self._stat, path)
        except FileNotFoundError:
            if mode == "rb":
                raise
            st = None
        if st is not None and st["type"] == "dir":
            raise IsADirectoryError(errno.EISDIR, f"{path} is a directory")
        if st is not None and mode == "xb":
            raise FileExistsError(errno.EEXIST, f"{path} already exists")
        return SectorFile(
            self,
            path,
            mode,
            block_size=block_size or self._BLOCK_SIZE,
            autocommit=autocommit,
            cache_options=cache_options,
            stat=st,
            **kwargs,
        )


class SectorFile(AbstractBufferedFile):
    """A file object: ranged reads of one version, or a spool put whole on close."""

    def __init__(
        self, fs: SectorFileSystem, path: str, mode: str, *, stat: Any = None, **kwargs: Any
    ) -> None:
        self._st = stat
        self._spool: Any = None
        self._spool_name = ""
        if mode == "rb":
            kwargs["size"] = stat["size"]
        super().__init__(fs, path, mode, **kwargs)
        if mode == "rb":
            self.details = _info(stat)

    def _fetch_range(self, start: int, end: int) -> bytes:
        data: bytes = sync(self.fs.loop, self.fs._read_range, self._st, start, end)
        return data

    def _initiate_upload(self) -> None:
        fd, self._spool_name = tempfile.mkstemp(prefix=".sector-spool-")
        self._spool = os.fdopen(fd, "wb")

    def _upload_chunk(self, final: bool = False) -> bool:
        self.buffer.seek(0)
        shutil.copyfileobj(self.buffer, self._spool)
        if final:
            self._spool.close()
            if self.autocommit:
                self.commit()
        return True

    def commit(self) -> None:
        """Put the spooled bytes: the file appears whole (or not at all)."""
        try:
            sync(self.fs.loop, self.fs._put_file, self._spool_name, self.path)
        finally:
            self.discard()

    def discard(self) -> None:
        if self._spool is not None:
            self._spool.close()
            with contextlib.suppress(OSError):
                os.unlink(self._spool_name)
            self._spool = None

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        if exc_type is not None and self.mode != "rb" and not getattr(self, "closed", True):
            # A failure while writing publishes nothing: the file stays as it was.
            self.discard()
            self.closed = True
            return
        self.close()

    def __del__(self) -> None:
        # io.IOBase would close (and so publish) a half-written file being collected.
        if getattr(self, "mode", "rb") != "rb" and not getattr(self, "closed", True):
            self.discard()
            self.closed = True


@contextlib.contextmanager
def _spooled() -> Iterator[str]:
    fd, name = tempfile.mkstemp(prefix=".sector-spool-")
    os.close(fd)
    try:
        yield name
    finally:
        with contextlib.suppress(OSError):
            os.unlink(name)


def _write_file(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


async def _bounded(coro: Any, timeout: float) -> None:
    try:
        await asyncio.wait_for(coro, timeout)
    except TimeoutError:
        raise Timeout(f"no answer within {timeout:g} s") from None


def _split_url(url: str) -> tuple[str, str]:
    """``sector://NETLOC/path`` -> (NETLOC, path); NETLOC is empty or HOST:PORT."""
    netloc, _, rest = url[len(PROTOCOL) + 3 :].partition("/")
    if netloc and not _ADDR.fullmatch(netloc):
        raise ValueError(f"bad Sector URL {url!r}: write sector:///path or sector://HOST:PORT/path")
    return netloc, rest


def _under(p: str, top: str) -> bool:
    return top == "/" or p.startswith(top + "/")


def _magic(path: str) -> bool:
    return any(ch in path for ch in "*?[")


def _when(t: Any) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(float(t or 0), tz=datetime.UTC)
