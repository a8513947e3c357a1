"""The node's HTTP face (issue 16): ``/metrics`` for Prometheus, a JSON API under
``/api/`` and a landing page, served with aiohttp on the port ``--http`` names.

Reads are public as in the rest of Sector, and no more: the API answers through an
anonymous client of the node's own RPC port, so an HTTP caller sees exactly what an
anonymous ``sector`` client sees (private paths stay private on a secure cluster).
Every error is a JSON body ``{"error": ...}`` with a 4xx/5xx status, never a
traceback page; malformed HTTP gets aiohttp's 400 and the node serves on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from importlib import resources
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from sector.client.aio import AsyncClient
from sector.errors import (
    ClusterError,
    CredentialError,
    IsADirectory,
    NotFound,
    PermissionDenied,
    SectorError,
    TransportError,
    Unavailable,
    UsageError,
)
from sector.meta.records import normalize
from sector.node import jobview, status
from sector.node.metrics import CONTENT_TYPE, NodeMetrics
from sector.sphere.api import cancel_job
from sector.transport.rpc import split_addr

log = logging.getLogger("sector.node.http")
CHUNK = 4 << 20  # bytes per ranged read of a download
MAX_REQUEST = 64 << 10  # no route takes a body: a bigger request is refused (413)
ASK_TIMEOUT = 3.0  # seconds a node has to answer for the job view
DISCO_SHOWN = 50  # Disco job records the job view reads (the newest names first)
# The web page: static files shipped in the package (no build step, no CDN).
WEB = resources.files("sector.node") / "web"
STATIC = {"app.js": "text/javascript", "app.css": "text/css", "index.html": "text/html"}


class _QuietBadInput(logging.Filter):
    """Malformed HTTP is answered 400 by aiohttp, which also logs it as an error with a
    traceback: a flood of garbage would flood the log. It becomes one debug line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and 400 <= exc.code < 500:
            log.debug("bad HTTP request: %s", str(exc.message).splitlines()[0][:200])
            return False
        return True


logging.getLogger("aiohttp.server").addFilter(_QuietBadInput())


def http_address(spec: str | None, listen: str) -> tuple[str, int] | None:
    """Where to serve: ``spec`` "HOST:PORT", "" (the listen host, any port) or "off"."""
    if spec is None or spec == "off":
        return None
    if spec == "":
        return split_addr(listen)[0], 0
    return split_addr(spec)


def _status_of(exc: SectorError) -> int:
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, PermissionDenied | CredentialError):
        return 403
    if isinstance(exc, UsageError | IsADirectory):
        return 400
    if isinstance(exc, Unavailable | TransportError):
        return 503
    return 409 if isinstance(exc, ClusterError) else 500


def _error(status_code: int, message: str) -> web.Response:
    return web.json_response({"error": message, "status": status_code}, status=status_code)


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        resp: web.StreamResponse = await handler(request)
        return resp
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.status, exc.reason)
    except SectorError as exc:
        return _error(_status_of(exc), str(exc))
    except Exception as exc:  # a bug of ours: a clean 500, the node serves on
        log.exception("http %s %s", request.method, request.path)
        return _error(500, f"internal error: {type(exc).__name__}")


def _path(request: web.Request) -> str:
    raw = request.query.get("path")
    if raw is None:
        raise UsageError("missing query parameter 'path'")
    return normalize(raw)


class NodeHttp:
    def __init__(self, node: Any) -> None:
        self.node = node
        self.metrics = NodeMetrics(node)
        self.url: str | None = None
        self._runner: web.AppRunner | None = None
        self._client: AsyncClient | None = None
        self._client_lock = asyncio.Lock()  # concurrent first requests make one client
        app = web.Application(middlewares=[_errors], client_max_size=MAX_REQUEST)
        app["node"] = node
        app.router.add_get("/", self._index)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/api/status", self._status)
        app.router.add_get("/api/node", self._node)
        app.router.add_get("/api/ls", self._ls)
        app.router.add_get("/api/stat", self._stat)
        app.router.add_get("/api/file", self._file)
        app.router.add_get("/api/jobs", self._jobs)
        app.router.add_get("/static/{name}", self._static)
        app.router.add_post("/api/drain", self._drain)
        app.router.add_post("/api/jobs/{job}/cancel", self._cancel)
        self.app = app

    async def start(self, spec: str | None) -> str | None:
        where = http_address(spec, self.node.addr)
        if where is None:
            return None
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, where[0], where[1], backlog=128)
        await site.start()
        sock = site._server.sockets[0]  # type: ignore[union-attr]
        host, port = sock.getsockname()[:2]
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{port}/"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            with contextlib.suppress(Exception):
                await self._runner.cleanup()
            self._runner = None
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.close()
            self._client = None

    async def _anon(self) -> AsyncClient:
        """A client of this node presenting no credential: what the public may read."""
        async with self._client_lock:
            if self._client is None:
                c = AsyncClient(self.node.addr, anonymous=True, timeout=30.0)
                await c.connect()
                self._client = c
            return self._client

    async def _index(self, request: web.Request) -> web.Response:
        return _page("index.html")

    async def _static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in STATIC:
            raise NotFound(f"no such file: /static/{name}")
        return _page(name)

    async def _metrics(self, request: web.Request) -> web.Response:
        info = await self.node.info()
        return web.Response(body=self.metrics.render(info), headers={"Content-Type": CONTENT_TYPE})

    async def _status(self, request: web.Request) -> web.Response:
        return _json(await (await self._anon()).status())

    async def _node(self, request: web.Request) -> web.Response:
        return _json(status.hide_insides(await self.node.info()))

    async def _ls(self, request: web.Request) -> web.Response:
        path = _path(request)
        return _json({"path": path, "entries": await (await self._anon()).ls(path)})

    async def _stat(self, request: web.Request) -> web.Response:
        verify = request.query.get("verify") in ("1", "true")  # each replica re-hashes its copy
        return _json(await (await self._anon()).stat(_path(request), verify=verify))

    async def _jobs(self, request: web.Request) -> web.Response:
        """Every node's Sphere attempts folded into jobs, and the Disco job records."""
        c = await self._anon()
        nodes = [
            m["address"]
            for m in (await c.status())["nodes"]
            if m.get("state") in ("up", "draining", "drained")
        ]

        async def ask(addr: str) -> list[dict[str, Any]] | None:
            try:
                info = await asyncio.wait_for(
                    c.pool.call(addr, "sphere.info", {"jobs": True}), ASK_TIMEOUT
                )
            except (SectorError, TimeoutError, OSError):
                return None
            return list(info.get("job_list") or [])

        views = await asyncio.gather(*(ask(a) for a in nodes))
        return _json(
            {
                "sphere": jobview.merge(list(zip(nodes, views, strict=True))),
                "disco": await self._disco(c),
                "nodes": len(nodes),
                "unanswered": [a for a, v in zip(nodes, views, strict=True) if v is None],
            }
        )

    async def _disco(self, c: AsyncClient) -> list[dict[str, Any]]:
        """The Disco job records (``/disco/<name>/.jobinfo``) this caller may read."""
        try:
            names = sorted((e["name"] for e in await c.ls("/disco")), reverse=True)
        except SectorError:
            return []

        async def one(name: str) -> dict[str, Any] | None:
            try:
                info = json.loads(await c.read(f"/disco/{name}/.jobinfo"))
            except (SectorError, ValueError):
                return None
            return info if isinstance(info, dict) else None

        got = await asyncio.gather(*(one(n) for n in names[:DISCO_SHOWN]))
        return [g for g in got if g is not None]

    async def _cancel(self, request: web.Request) -> web.Response:
        """``POST /api/jobs/{job}/cancel`` with ``Authorization: Bearer CREDENTIAL``:
        cancel a Sphere job on every node, as the caller (its user or an admin may;
        ``sphere.api.cancel_job``). Its driver then fails with ``JobCancelled``."""
        token = _bearer(request, "cancelling a job needs its user's or an admin credential")
        async with AsyncClient(self.node.addr, token=token, timeout=30.0) as c:
            return _json(await cancel_job(c, request.match_info["job"]))

    async def _drain(self, request: web.Request) -> web.Response:
        """``POST {"address", "cancel"?}`` with ``Authorization: Bearer CREDENTIAL``: drain
        a node (or stop draining it). The credential is the caller's own: the node it
        names decides (an admin's, as ``sector node drain``); none at all is a 401."""
        token = _bearer(request, "draining a node needs an admin credential")
        try:
            body = await request.json()
        except ValueError:
            raise UsageError('the body must be JSON: {"address": "HOST:PORT"}') from None
        addr = body.get("address") if isinstance(body, dict) else None
        if not isinstance(addr, str):
            raise UsageError('missing "address": the node to drain')
        if addr not in {m["address"] for m in (await (await self._anon()).status())["nodes"]}:
            raise NotFound(f"no node {addr} in this cluster")
        async with AsyncClient(self.node.addr, token=token, timeout=30.0) as c:
            return _json(await c.drain(addr, cancel=bool(body.get("cancel"))))

    async def _file(self, request: web.Request) -> web.StreamResponse:
        c = await self._anon()
        st = await c.stat(_path(request))
        if st["type"] == "dir":
            raise IsADirectory(f"{st['path']} is a directory")
        size = int(st["size"])
        resp = web.StreamResponse(
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Length": str(size),
                "Content-Disposition": f'attachment; filename="{_ascii_name(st["path"])}"',
            }
        )
        first = await c.read_range(st, 0, min(CHUNK, size)) if size else b""
        await resp.prepare(request)  # headers go once the first bytes are in hand
        await resp.write(first)
        off = len(first)
        while off < size:
            data = await c.read_range(st, off, min(CHUNK, size - off))
            await resp.write(data)
            off += len(data)
        await resp.write_eof()
        return resp


def _bearer(request: web.Request, need: str) -> str:
    """The caller's credential (``Authorization: Bearer``) for an action: none is a 401;
    an open cluster has no credentials to check, and takes no actions over HTTP (403)."""
    auth = request.headers.get("Authorization", "")
    if not auth.startswith("Bearer ") or not auth[7:].strip():
        raise web.HTTPUnauthorized(reason=f"{need} (Authorization: Bearer)")
    if getattr(request.app["node"], "security", None) is None:
        raise web.HTTPForbidden(reason="an open cluster takes no actions over HTTP (use the CLI)")
    return auth[7:].strip()


def _ascii_name(path: str) -> str:
    name = path.rsplit("/", 1)[-1] or "file"
    return "".join(
        ch if ch.isascii() and ch.isprintable() and ch not in '"\\' else "_" for ch in name
    )


def _page(name: str) -> web.Response:
    return web.Response(
        body=(WEB / name).read_bytes(),
        content_type=STATIC[name],
        headers={"Cache-Control": "no-cache"},
    )


def _json(obj: Any) -> web.Response:
    return web.Response(text=json.dumps(obj, default=str), content_type="application/json")
