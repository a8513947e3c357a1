"""The async client: enters the cluster through any node.

Namespace operations go to the entry node (``fs.*``), which routes them to the owners
of the records. File bytes never pass through the entry node: a put streams straight
to the first node of the replica chain chosen for it, a get straight from the nearest
healthy replica (failing over to the next on error or checksum mismatch).

The checksum is end to end: the client hashes the file while the kernel sends it
(``sendfile`` on one side, a BLAKE3 of the same file in a thread on the other), every
replica hashes what it received, and a replica whose hash differs is left out; the
put fails if the first one differs. A get hashes what it receives and only then
renames the temp file into place.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import functools
import ipaddress
import os
import random
import secrets
import socket
import time
from collections.abc import Callable
from pathlib import Path
from ssl import SSLContext
from typing import TYPE_CHECKING, Any

import blake3

from sector.client import fetch, many
from sector.config import local_cluster_addresses, resolve_address
from sector.errors import (
    ChecksumMismatch,
    ConnectError,
    IsADirectory,
    NotFound,
    SectorError,
    TransportError,
    Unavailable,
    UsageError,
)
from sector.ids import key_id
from sector.meta import records as rec
from sector.security.client import ClientAuth
from sector.storage.blobs import checksum_of
from sector.storage.messages import SMALL_MAX, Get, Put, Verify, stored_reply
from sector.storage.transfer import open_get
from sector.swarm.messages import SwarmGet
from sector.transport import bulk, wan
from sector.transport.chain import first_live
from sector.transport.rpc import RpcPool, split_addr
from sector.wire.messages import to_args

if TYPE_CHECKING:
    from sector.sphere.api import AsyncSphere

Progress = Callable[[int, int], None]
RING_TTL = 5.0  # seconds a client trusts its view of who owns which keys
LS_PAGE = 1000  # entries a page of a listing asks for (the node's own page size)


def _local_ip(addr: str) -> str:
    host, port = split_addr(addr)
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((host, port))
        return str(s.getsockname()[0])
    return "127.0.0.1"


class AsyncClient:
    """``async with AsyncClient("host:port") as c: await c.put(...)``."""

    def __init__(
        self,
        address: str | None = None,
        *,
        timeout: float = 60.0,
        token: str | None = None,
        anonymous: bool = False,
        ssl: SSLContext | None = None,
    ) -> None:
        """``token``: a credential to present (default: ``SECTOR_TOKEN``, then the one
        ``sector login`` stored for the cluster); ``anonymous``: present none. ``ssl``:
        a context with a node certificate (a node's own client), TLS only."""
        self.address = resolve_address(address)
        try:
            split_addr(self.address)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if ssl is not None:
            self.auth = None
            self.pool = RpcPool(timeout=timeout, connect_timeout=5.0, ssl=ssl, tls="on")
        else:
            self.auth = ClientAuth(token=token, anonymous=anonymous, address=self.address)
            self.pool = RpcPool(
                timeout=timeout,
                connect_timeout=5.0,
                ssl=self.auth.context(),
                # A client holding a credential for this address expects a secure
                # cluster: no fallback to plain TCP, which a man in the middle could
                # otherwise force.
                tls="on" if self.auth.expect is not None else "auto",
                on_open=self.auth.on_open,
            )
        self._entries = [self.address, *local_cluster_addresses(self.address)]
        self._client_host = _local_ip(self.address)
        self._ring: list[tuple[int, str]] = []
        self._ring_ids: list[int] = []
        self._ring_at = 0.0
        self._reader = secrets.token_hex(8)  # this client, to a file's tracker

    @functools.cached_property
    def sphere(self) -> AsyncSphere:
        """Sphere jobs: ``c.sphere.run(udf, input=...)``. Made on first use: Sphere
        needs numpy, whose import (~0.2 s of CPU) a `get` or an `ls` should not pay."""
        from sector.sphere.api import AsyncSphere

        return AsyncSphere(self)

    async def __aenter__(self) -> AsyncClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        """Check that the entry node answers (and learn the others for fail-over)."""
        info = await self._call("node.ping", {})
        self._learn_ring(info)

    def _learn_ring(self, info: Any) -> None:
        if not isinstance(info, dict):
            return
        for addr in info.get("members", []):
            if isinstance(addr, str) and addr not in self._entries:
                self._entries.append(addr)
        ring = []
        for x in info.get("ring", []):
            with contextlib.suppress(ValueError, TypeError, IndexError):
                ring.append((int(x[0], 16), str(x[1])))
        self._ring = sorted(ring)
        self._ring_ids = [i for i, _ in self._ring]
        self._ring_at = time.monotonic()

    def _owner(self, path: str) -> str | None:
        """The node that most likely owns the record of ``path`` (successor of its key)."""
        if not self._ring:
            return None
        i = bisect.bisect_left(self._ring_ids, key_id(path))
        return self._ring[i % len(self._ring)][1]

    async def _call_owner(self, path: str, op: str, args: dict[str, Any]) -> Any:
        """A single-record request sent to the path's owner; through the entry on failure.

        Zero routing hops in the common case. A stale guess costs one forwarding hop
        (a node that does not own the key routes the request on), a dead guess a retry
        through the entry node, and the ring view is refreshed every few seconds.
        """
        if time.monotonic() - self._ring_at > RING_TTL:
            with contextlib.suppress(SectorError):
                self._learn_ring(await self._call("node.ping", {}))
        addr = self._owner(path)
        if addr is not None:
            try:
                return await self.pool.call(addr, op, args)
            except ConnectError:
                self.pool.forget(addr)
                self._ring_at = 0.0
            except Unavailable:
                self._ring_at = 0.0  # it could not reach the record's owner: ask the entry
        return await self._call(op, args)

    async def close(self) -> None:
        await self.pool.close()

    async def _call(self, op: str, args: dict[str, Any]) -> Any:
        """Call the entry node; if it is gone, enter through another known node."""
        last: TransportError | None = None
        for addr in list(self._entries):
            try:
                res = await self.pool.call(addr, op, args)
            except ConnectError as exc:
                last = exc
                self.pool.forget(addr)
                continue
            if addr != self._entries[0]:
                self._entries.remove(addr)
                self._entries.insert(0, addr)
            return res
        assert last is not None
        if len(self._entries) > 1:
            raise ConnectError(
                f"no node of the cluster answers (tried {len(self._entries)}): {last}"
            )
        raise last

    # ------------------------------------------------------------------ namespace

    async def stat(self, path: str, *, verify: bool = False) -> dict[str, Any]:
        """A file's record; with ``verify`` every replica re-hashes its copy and each
        gets a ``health``: ok, corrupt, missing, down or unreachable (a bad copy found
        this way is reported to the file's owner, which replaces it)."""
        p = rec.normalize(path)
        res: dict[str, Any] = await self._call_owner(p, "fs.stat", {"path": p})
        if verify and res.get("type") == "file":
            await asyncio.gather(*(self._verify(res, r) for r in res["replicas"]))
        return res

    async def _verify(self, st: dict[str, Any], r: dict[str, Any]) -> None:
        if r["state"] == "down":
            r["health"] = "down"
            return
        try:
            rep = await self.pool.call(
                r["address"],
                "blob.verify",
                to_args(Verify(blob=st["blob"], checksum=st["checksum"])),
                timeout=max(30.0, st["size"] / (50 << 20)),
            )
            r["health"] = str(rep.get("health"))
        except SectorError:
            r["health"] = "unreachable"
        if r["health"] == "corrupt":
            await self._report_bad(st, r["address"], ChecksumMismatch("corrupt"))
        elif r["health"] == "missing":
            await self._report_bad(st, r["address"], NotFound("missing"))

    async def exists(self, path: str) -> bool:
        try:
            await self.stat(path)
            return True
        except NotFound:
            return False

    async def ls(self, path: str = "/") -> list[dict[str, Any]]:
        """Every entry of a directory (a file: its own), in name order, a page at a time."""
        return await many.ls_all(self, path)

    async def ls_page(
        self,
        path: str = "/",
        *,
        after: str | None = None,
        limit: int = LS_PAGE,
        detail: bool = True,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """A page of a directory's entries in name order (at most ``limit``, 1 to
        10,000, after ``after``) and the ``after`` of the next (None: the last)."""
        p = rec.normalize(path)
        args = {"path": p, "after": after, "limit": limit, "detail": detail}
        res = await self._call_owner(p, "fs.ls", args)
        return list(res["entries"]), res.get("next")

    async def mkdir(self, path: str, *, parents: bool = False) -> dict[str, Any] | None:
        p = rec.normalize(path)  # at its owner: the new record is made there, no hop
        res: dict[str, Any] | None = await self._call_owner(
            p, "fs.mkdir", {"path": p, "parents": parents}
        )
        return res

    async def rm(self, path: str, *, recursive: bool = False) -> int:
        res = await self._call("fs.rm", {"path": rec.normalize(path), "recursive": recursive})
        return int(res.get("removed", 0))

    async def mv(self, src: str, dst: str, *, replace: bool = False) -> dict[str, Any]:
        """Rename ``src`` (into ``dst`` if that is a directory); ``replace``: a file
        moved onto an existing file replaces it in one step (POSIX rename)."""
        args: dict[str, Any] = {"src": rec.normalize(src), "dst": rec.normalize(dst)}
        if replace:
            args["replace"] = True
        res: dict[str, Any] = await self._call("fs.mv", args)
        return res

    async def status(self) -> dict[str, Any]:
        res: dict[str, Any] = await self._call("fs.status", {})
        return res

    # ------------------------------------------------------------------ security

    def whoami(self) -> dict[str, Any]:
        """Who the cluster takes this client for: user (None = anonymous), cluster, tls."""
        a = self.auth
        return {
            "user": a.user if a else None,
            "cluster": a.cluster if a else None,
            "tls": bool(a and a.secure),
        }

    async def policy(self) -> dict[str, Any]:
        """The cluster policy as the entry node has it: version, revoked users, private
        prefixes, the signed document and the cluster CA (``cluster`` None: open)."""
        res: dict[str, Any] = await self._call("sec.policy", {"have": -1})
        return res

    async def put_policy(self, signed: str) -> dict[str, Any]:
        """Hand a policy signed by the admin key to the cluster; it spreads to every node."""
        res: dict[str, Any] = await self._call("sec.policy_put", {"policy": signed})
        return res

    async def drain(self, address: str, *, cancel: bool = False) -> dict[str, Any]:
        """Ask the node at ``address`` to drain (or stop draining); progress is in status()."""
        res: dict[str, Any] = await self.pool.call(address, "node.drain", {"cancel": cancel})
        return res

    async def setrf(self, path: str, rf: int) -> dict[str, Any]:
        """Change a file's replica target; the cluster adds or trims copies in the background."""
        p = rec.normalize(path)
        res: dict[str, Any] = await self._call_owner(p, "fs.setrf", {"path": p, "rf": rf})
        return res

    async def distribute(
        self, paths: list[str], *, to: str = "all", progress: Progress | None = None
    ) -> dict[str, Any]:
        """Have every node (``to``: "all", or a topology prefix such as ``/dc1``) fetch
        these files (directories: every file under them) into its cache through the
        swarm (``sector distribute``); ``{"files": [...], "nodes": [{"address",
        "files", "bytes", "fetched", "seconds", "error"}]}``."""
        from sector.client.distribute import distribute

        return await distribute(self, paths, to=to, progress=progress)

    # ------------------------------------------------------------------ data

    async def put(
        self,
        local: str | os.PathLike[str],
        remote: str,
        *,
        replicas: int | None = None,
        progress: Progress | None = None,
        into_dir: bool = True,
    ) -> dict[str, Any]:
        """Upload one local file; returns the stored file's stat (+ ``under_replicated``).

        ``into_dir``: a ``remote`` that is a directory means the file of the local
        name in it (cp semantics); False: it is refused (``IsADirectory``), as an
        fsspec write to a directory's path must be."""
        lpath = os.fspath(local)
        try:
            st = os.stat(lpath)
        except FileNotFoundError:
            raise UsageError(f"no such local file: {lpath}") from None
        if not Path(lpath).is_file():
            raise UsageError(f"not a regular file: {lpath} (use -r for directories)")
        if replicas is not None and not 1 <= replicas <= 16:
            raise UsageError("replicas must be from 1 to 16")
        path = rec.normalize(remote)
        name = rec.check_name(Path(lpath).name)
        if remote.endswith("/") and path != "/":
            path = rec.join(path, name)
        size = st.st_size
        t0, sent = time.monotonic(), {"streams": 1}
        # ``name``: if ``path`` is a directory, the node puts the file into it. Every
        # step goes to the path's owner (issue 17): its record is then written where it
        # lives, and many puts at once spread over the nodes instead of all passing
        # through the entry (any node serves them; the entry if the owner fails).
        args: dict[str, Any] = {
            "path": path,
            "rf": replicas,
            "client_host": self._client_host,
            "name": name if into_dir else None,
        }
        if size <= SMALL_MAX:
            # A small file in one call: the owner writes its copies and records it.
            data = Path(lpath).read_bytes()
            args.update(data=data, checksum=checksum_of(data))
            res: dict[str, Any] = await self._call_owner(path, "fs.put_small", args)
            res["transfer"] = sent
            wan.timed(res, t0)
            return res
        plan = await self._call_owner(path, "fs.begin_put", {**args, "size": size})
        blob, targets, path = plan["blob"], plan["targets"], plan["path"]
        loop = asyncio.get_running_loop()
        hashing = loop.run_in_executor(None, fetch.hash_file, lpath)
        try:
            stored, their_sum = await self._send(lpath, size, blob, targets, progress, path, sent)
        finally:
            checksum = await hashing
        if their_sum != checksum:
            raise ChecksumMismatch(
                f"upload of {path} was corrupted in transit ({their_sum} != {checksum})"
            )
        res = await self._call_owner(
            path,
            "fs.commit_put",
            {
                "path": path,
                "blob": blob,
                "size": size,
                "checksum": checksum,
                "replicas": stored,
                "rf": plan["rf"],
            },
        )
        res["transfer"] = sent
        wan.timed(res, t0)
        return res

    async def _send(
        self,
        lpath: str,
        size: int,
        blob: str,
        targets: list[list[str]],
        progress: Progress | None,
        path: str,
        sent: dict[str, Any],
    ) -> tuple[list[list[str]], str | None]:
        async def send(addr: str, rest: list[list[str]]) -> Any:
            # ``path``: what the nodes' inventories file the blob under.
            req = Put(blob=blob, size=size, checksum=None, chain=rest, path=path)
            chan = await self.pool.open_bulk(addr, "blob.put", to_args(req))
            sent.update(rtt_ms=wan.ms(chan.rtt), to=addr, holders=[addr])
            fetch.tell(progress, 1, 1)
            try:
                with open(lpath, "rb") as f:
                    await bulk.send_file(chan, f, 0, size, progress=progress)
                return await chan.read_reply()
            finally:
                await chan.close()

        rep = stored_reply(await first_live(targets, send), "blob.put")
        return rep.stored, rep.checksum

    async def put_many(
        self,
        items: list[tuple[str, str]],
        *,
        replicas: int | None = None,
        concurrency: int = many.CONCURRENCY,
        on_done: many.OnDone | None = None,
    ) -> many.Batch:
        """Upload many (local, remote) files, ``concurrency`` at a time; each fails on
        its own (``Batch.failed``), ``on_done`` is told of each (``client/many.py``)."""
        return await many.put_many(
            self, items, replicas=replicas, concurrency=concurrency, on_done=on_done
        )

    async def get_many(
        self,
        items: list[tuple[str, str]],
        *,
        concurrency: int = many.CONCURRENCY,
        on_done: many.OnDone | None = None,
    ) -> many.Batch:
        """Download many (remote, local) files, ``concurrency`` at a time (as put_many)."""
        return await many.get_many(self, items, concurrency=concurrency, on_done=on_done)

    def _order(self, replicas: list[dict[str, Any]]) -> list[str]:
        """Replica addresses, nearest and healthy first."""
        reps = list(replicas)
        random.shuffle(reps)

        def rank(r: dict[str, Any]) -> tuple[int, int]:
            same_host = split_addr(r["address"])[0] == self._client_host
            return (0 if r["state"] == "up" else 1, 0 if same_host else 1)

        return [r["address"] for r in sorted(reps, key=rank)]

    async def get(
        self, remote: str, local: str | os.PathLike[str], *, progress: Progress | None = None
    ) -> dict[str, Any]:
        """Download one file; ``local`` may be a directory. Returns the file's stat."""
        st = await self.stat(remote)
        if st["type"] == "dir":
            raise IsADirectory(f"{st['path']} is a directory (use -r)")
        lpath = Path(local)
        if lpath.is_dir():
            lpath = lpath / st["name"]
        if not lpath.parent.is_dir():
            raise UsageError(f"no such local directory: {lpath.parent}")
        tmp = lpath.with_name(f".{lpath.name}.sector-part")
        errors: list[str] = []
        # Readers need no flag (issue 14): a file the entry node on this host has
        # cached, or one busy enough, is served by that node (fetched through the
        # swarm into its cache); any failure there falls back to the replicas.
        entry = [self._entries[0]] if await self.swarm_serves(st) else []
        t0 = time.monotonic()
        try:  # several live replicas: striped over them (then one at a time if it fails)
            if not entry and await fetch.striped(self.pool, st, tmp, progress):
                os.replace(tmp, lpath)
                wan.timed(st, t0)
                return st
        except SectorError as exc:
            errors.append(f"striped: {exc}")
        for i, addr in enumerate(entry + self._order(st["replicas"])):
            try:
                t0 = time.monotonic()
                await fetch.download(self.pool, addr, st, tmp, progress, swarm=i < len(entry))
            except asyncio.CancelledError:
                with contextlib.suppress(OSError):
                    tmp.unlink()
                raise
            except (SectorError, OSError) as exc:
                errors.append(f"{addr}: {exc}")
                with contextlib.suppress(OSError):
                    tmp.unlink()
                await self._report_bad(st, addr, exc)
                if isinstance(exc, OSError) and not isinstance(exc, ConnectionError):
                    raise
                continue
            os.replace(tmp, lpath)
            wan.timed(st, t0)
            return st
        if not st["replicas"]:
            raise NotFound(f"{st['path']} has no replicas")
        raise SectorError(f"cannot read {st['path']}: every replica failed ({'; '.join(errors)})")

    async def swarm_serves(self, st: dict[str, Any], *, large: int | None = None) -> bool:
        """Whether the entry node, on this host, would serve this get from its cache or
        the swarm (``swarm.want``: cached there, or read by enough others now; or the
        file has at least ``large`` bytes)."""
        if st["size"] <= SMALL_MAX or not self._entry_local():
            return False  # a file that travels inline is not worth a swarm
        if large is not None and st["size"] >= large:
            return True
        args: dict[str, Any] = {
            "path": st["path"],
            "blob": st["blob"],
            "reader": self._reader,
            "size": st["size"],
            "replicas": len(st["replicas"]),
        }
        try:
            rep = await self.pool.call(self._entries[0], "swarm.want", args)
        except SectorError:
            return False
        return isinstance(rep, dict) and rep.get("serve") is True

    async def read_swarm(self, st: dict[str, Any], offset: int, length: int) -> bytes:
        """Bytes of a file through the entry node's cache, which it fills through the
        swarm (``swarm.get`` of a range: sent as its pieces arrive, each verified by
        the node). The FUSE mount's reads of busy or large files."""
        req = SwarmGet(path=st["path"], blob=st["blob"], offset=offset, length=length)
        wait = max(60.0, st["size"] / fetch.SWARM_FLOOR)
        chan, n = await open_get(self.pool, self._entries[0], req, stall_timeout=wait)
        try:
            return await chan.read_exactly(n)
        finally:
            await chan.close()

    def _entry_local(self) -> bool:
        host = split_addr(self._entries[0])[0]
        with contextlib.suppress(ValueError):
            if ipaddress.ip_address(host).is_loopback:
                return True
        return host in ("localhost", self._client_host)

    async def _report_bad(self, st: dict[str, Any], addr: str, exc: BaseException) -> None:
        """A replica's copy is rotten or missing: tell the file's owner (best effort),
        whose repair worker replaces it (issue 3). A replica that is merely unreachable
        is not reported: the owner sees that by itself."""
        if not isinstance(exc, ChecksumMismatch | NotFound):
            return
        nid = next((r["id"] for r in st["replicas"] if r["address"] == addr), None)
        if nid is None:
            return
        with contextlib.suppress(SectorError):
            # The blob read: a report about a version the owner has since replaced (a
            # stale stat, an overwrite racing the read) is then told apart and ignored.
            args = {"path": st["path"], "node_id": nid, "blob": st.get("blob")}
            await self._call_owner(st["path"], "repair.report", args)

    async def read(self, remote: str, offset: int = 0, length: int | None = None) -> bytes:
        """Bytes of a file (a range of it with offset/length), verified when whole."""
        st = await self.stat(remote)
        if st["type"] == "dir":
            raise IsADirectory(f"{st['path']} is a directory")
        return await self.read_range(st, offset, length)

    async def read_range(self, st: dict[str, Any], offset: int, length: int | None) -> bytes:
        errors: list[str] = []
        for addr in self._order(st["replicas"]):
            try:
                req = Get(blob=st["blob"], offset=offset, length=length)
                chan, n = await open_get(self.pool, addr, req)
                try:
                    data = await chan.read_exactly(n)
                finally:
                    await chan.close()
            except SectorError as exc:
                errors.append(f"{addr}: {exc}")
                await self._report_bad(st, addr, exc)
                continue
            whole = offset == 0 and len(data) == st["size"]
            if whole and "blake3:" + blake3.blake3(data).hexdigest() != st["checksum"]:
                errors.append(f"{addr}: checksum mismatch")
                await self._report_bad(st, addr, ChecksumMismatch("checksum mismatch"))
                continue
            return data
        raise SectorError(f"cannot read {st['path']}: every replica failed ({'; '.join(errors)})")
