"""The cluster commands of `sector`: status, put, get, cat, ls, stat, mkdir, rm, mv.

Each ``cmd_*`` takes a connected client and the parsed arguments and writes its
result; errors are raised (``SectorError`` / ``OSError``) and ``main`` prints them as
one line. The commands speak to the client only through :class:`ClientLike`, the
contract of ``sector.Client``, so tests can drive them with an in-memory fake.

Remote paths are absolute; a relative one ('data/x') is taken from the root, since a
cluster has no working directory. Where a command copies *into* a directory it
follows `cp`: the target is a directory if it exists as one, ends with '/', or there
are several sources.
"""

from __future__ import annotations

import argparse
import os
import posixpath
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from sector.cli import output
from sector.cli.progress import Transfers
from sector.errors import AlreadyExists, ClusterError, NotADirectory, NotFound, UsageError

CHUNK = 1 << 20  # cat: big enough to amortise calls, small enough to stream promptly


class ClientLike(Protocol):
    """The part of ``sector.Client`` the CLI uses (see DESIGN §3)."""

    def put(
        self, local: str, remote: str, *, replicas: int | None = ..., progress: Any = ...
    ) -> dict[str, Any]: ...
    def get(self, remote: str, local: str, *, progress: Any = ...) -> dict[str, Any]: ...
    def put_many(
        self,
        items: list[tuple[str, str]],
        *,
        replicas: int | None = ...,
        concurrency: int = ...,
        on_done: Any = ...,
    ) -> Any: ...
    def get_many(
        self, items: list[tuple[str, str]], *, concurrency: int = ..., on_done: Any = ...
    ) -> Any: ...
    def mkdir_many(self, paths: list[str], *, concurrency: int = ...) -> Any: ...
    def open(self, remote: str, mode: str = ...) -> Any: ...
    def ls(self, path: str) -> list[dict[str, Any]]: ...
    def ls_page(
        self, path: str = ..., *, after: str | None = ..., limit: int = ..., detail: bool = ...
    ) -> tuple[list[dict[str, Any]], str | None]: ...
    def stat(self, path: str, *, verify: bool = ...) -> dict[str, Any]: ...
    def mkdir(self, path: str, *, parents: bool = ...) -> Any: ...
    def rm(self, path: str, *, recursive: bool = ...) -> Any: ...
    def mv(self, src: str, dst: str) -> Any: ...
    def status(self) -> dict[str, Any]: ...
    def drain(self, address: str, *, cancel: bool = ...) -> dict[str, Any]: ...
    def close(self) -> None: ...


Command = Callable[[ClientLike, argparse.Namespace], None]


def connect(
    address: str | None, *, token: str | None = None, anonymous: bool = False
) -> ClientLike:
    """Connect to the cluster named by ``--cluster``, ``SECTOR_CLUSTER`` or `sector up`."""
    import sector
    from sector.cli.args import parse_address
    from sector.config import resolve_address

    addr = resolve_address(address)
    try:
        parse_address(addr)
    except ValueError as e:
        # --cluster was checked by argparse; this one came from the environment or
        # from cluster.json, so say where to look.
        origin = "SECTOR_CLUSTER" if os.environ.get("SECTOR_CLUSTER") == addr else "cluster file"
        raise UsageError(f"{e} (from {origin})") from None
    client: ClientLike = sector.connect(addr, token=token, anonymous=anonymous)
    return client


# ---- paths -----------------------------------------------------------------------


def remote_path(p: str) -> str:
    """'data/x/' -> '/data/x'. The trailing-slash intent is read before this, by callers."""
    p = "/" + p.lstrip("/")
    return p.rstrip("/") or "/"


def _remote_is_dir(c: ClientLike, path: str) -> bool:
    if path == "/":
        return True
    try:
        return c.stat(path).get("type") == "dir"
    except NotFound:
        return False


def _mkdirs(c: ClientLike, path: str) -> None:
    try:
        c.mkdir(path, parents=True)
    except AlreadyExists:
        pass  # `mkdir -p` semantics, whether or not the client already gives them


def _replica_count(info: dict[str, Any]) -> int:
    reps = info.get("replicas")
    return len(reps) if isinstance(reps, list) else int(reps or 0)


# ---- status ----------------------------------------------------------------------


def cmd_status(c: ClientLike, args: argparse.Namespace) -> None:
    st = c.status()
    if args.json:
        output.emit_json(st)
        return
    from rich.table import Table

    nodes = st.get("nodes") or []
    table = Table(box=None, header_style="bold", pad_edge=False)
    for name in ("id", "address", "pid", "state", "topology", "used", "free", "files", "http"):
        right = name in ("pid", "used", "free", "files")
        table.add_column(name, justify="right" if right else "left", no_wrap=True)
    for n in nodes:
        state = str(n.get("state", "?"))
        colour = (
            "green"
            if state == "up"
            else "yellow"
            if state in ("joining", "leaving", "draining")
            else "cyan"
            if state == "drained"
            else "red"
        )
        table.add_row(
            str(n.get("id", ""))[:8],
            str(n.get("address", "")),
            str(n["pid"]) if n.get("pid") is not None else "-",
            f"[{colour}]{state}[/]",
            str(n.get("topology") or "-"),
            output.fmt_bytes(n.get("bytes_used")),
            output.fmt_bytes(n.get("bytes_free")),
            "-" if n.get("files") is None else str(n["files"]),
            str(n.get("http") or "-"),
        )
    output.print_rich(table)
    for n in nodes:
        if n.get("state") == "draining":
            left = n.get("drain_remaining")
            output.echo(
                f"{n.get('address')}: draining, {'?' if left is None else left} files to move"
            )
    for n in nodes:
        if n.get("sandbox") in ("none", "unavailable"):
            output.echo(
                f"{n.get('address')}: UDFs run unsandboxed (sandbox: {n['sandbox']}): "
                "the compute right is the node's own there"
                if n["sandbox"] == "none"
                else f"{n.get('address')}: the UDF sandbox cannot be set up: no job runs there"
            )
    workers = [(n, w) for n in nodes for w in n.get("workers") or [] if isinstance(w, dict)]
    for n, w in workers:
        # Scrub progress is a cluster figure of the issue: shown even without --workers.
        if getattr(args, "workers", False) or w.get("name") == "scrub":
            output.echo(f"{n.get('address')} {_worker_line(w)}")
    sec = st.get("security") or {}
    if sec.get("tls"):
        output.echo(
            f"secure cluster {sec.get('cluster')} (TLS), policy v{sec.get('policy_version')}"
        )
    else:
        output.echo("open cluster (no TLS, no credentials)")
    if st.get("split"):
        far = sorted(
            {a for n in nodes for a in ((n.get("partition") or {}).get("unreachable") or [])}
        )
        output.echo(
            "SPLIT: the cluster is partitioned or its ring is still merging"
            + (f" (out of reach somewhere: {', '.join(far)})" if far else "")
        )
    if st.get("quorum") is False:
        output.echo("no quorum at this node: it refuses writes until it reaches a majority")
    up = sum(1 for n in nodes if n.get("state") == "up")
    output.echo(
        f"{up}/{len(nodes)} nodes up, {st.get('files', 0)} files"
        f" ({output.fmt_bytes(st.get('bytes', 0))}), {st.get('under_replicated', 0)} under-replicated,"
        f" {st.get('repair_queue', 0)} queued for repair"
    )


def _worker_line(w: dict[str, Any]) -> str:
    """``repair: idle queue=0 done=12 ...``: a worker's name, state and counters."""
    rest = " ".join(
        f"{k}={v}"
        for k, v in w.items()
        if k not in ("name", "state", "last_error") and isinstance(v, int | float | str)
    )
    err = f" last_error={w['last_error']!r}" if w.get("last_error") else ""
    return f"{w.get('name', '?')}: {w.get('state', '?')} {rest}{err}".rstrip()


# ---- put / get / cat -------------------------------------------------------------


def _local_sources(paths: list[str], recursive: bool) -> None:
    for p in paths:
        if not os.path.lexists(p):
            raise UsageError(f"no such local file: {p}")
        if os.path.isdir(p) and not recursive:
            raise UsageError(f"{p} is a directory (use -r)")
        if not os.path.isdir(p) and not os.path.isfile(p):
            raise UsageError(f"not a regular file: {p}")


def _walk_local(root: str) -> Iterator[tuple[str, list[str]]]:
    """(relative dir, file names) for every directory under ``root``, parents first."""
    for dirpath, dirnames, filenames in os.walk(root, onerror=_raise):
        dirnames.sort()
        rel = os.path.relpath(dirpath, root)
        files = sorted(f for f in filenames if os.path.isfile(os.path.join(dirpath, f)))
        yield ("" if rel == "." else rel), files


def _raise(e: OSError) -> None:
    raise e


def _transfer_many(
    bars: Transfers,
    verb: str,
    items: list[tuple[str, str]],
    run: Callable[[list[tuple[str, str]], Any], Any],
) -> list[dict[str, Any]]:
    """Many files through ``run`` (``put_many`` / ``get_many``) with one bar counting
    them; a file that fails is one line on stderr and the others go on. Raises once
    at the end if any failed, so the exit code says so."""
    advance = bars.files(verb, len(items))

    def on_done(src: str, dst: str, res: dict[str, Any] | None, exc: BaseException | None) -> None:
        if exc is not None:
            bars.note(f"sector: error: {verb} {src} -> {dst}: {output.error_message(exc)}")
            return
        assert res is not None
        advance(int(res.get("size") or 0))
        if verb == "put" and res.get("under_replicated"):
            n, rf = _replica_count(res), res.get("rf", "?")
            bars.note(f"warning: {dst} stored on {n} of {rf} replicas")

    batch = run(items, on_done)
    if batch.failed:
        raise ClusterError(f"{len(batch.failed)} of {len(items)} files failed ({verb})")
    done: list[dict[str, Any]] = batch.done
    return done


def cmd_put(c: ClientLike, args: argparse.Namespace) -> None:
    _local_sources(args.local, args.recursive)
    dest = remote_path(args.remote)
    explicit_dir = len(args.local) > 1 or args.remote.endswith("/")
    if explicit_dir:
        _mkdirs(c, dest)  # asked for a directory: create it like `mkdir -p`
    into = explicit_dir or _remote_is_dir(c, dest)
    dirs: list[str] = []  # parents first (the walk's order), also the empty ones
    files: list[tuple[str, str]] = []
    for local in args.local:
        base = os.path.basename(os.path.normpath(local))
        target = posixpath.join(dest, base) if into else dest
        if not os.path.isdir(local):
            files.append((local, target))
            continue
        for rel, names in _walk_local(local):
            rdir = posixpath.join(target, *Path(rel).parts) if rel else target
            dirs.append(rdir)
            files += [(os.path.join(local, rel, f), posixpath.join(rdir, f)) for f in names]
    done: list[dict[str, Any]] = []
    with Transfers() as bars:
        if not dirs and len(files) == 1:
            local, remote = files[0]
            res = c.put(local, remote, replicas=args.replicas, progress=bars.callback(remote))
            if res.get("under_replicated"):
                n, rf = _replica_count(res), res.get("rf", args.replicas or "?")
                output.warn(f"{remote} stored on {n} of {rf} replicas")
            done = [{**res, "path": res.get("path", remote)}]
        else:
            made = c.mkdir_many(dirs, concurrency=args.jobs)
            if made.failed:
                f = made.failed[0]
                raise ClusterError(f"mkdir {f.target}: {output.error_message(f.error)}")
            done = _transfer_many(
                bars,
                "put",
                files,
                lambda items, cb: c.put_many(
                    items, replicas=args.replicas, concurrency=args.jobs, on_done=cb
                ),
            )
    if args.json:
        output.emit_json({"files": done, "bytes": sum(int(d.get("size") or 0) for d in done)})


def _walk_remote(c: ClientLike, remote_dir: str, dest: str, files: list[tuple[str, str]]) -> None:
    """Make the local mirror of a remote tree's directories; list its files in ``files``."""
    os.makedirs(dest, exist_ok=True)
    for e in c.ls(remote_dir):
        rp = e.get("path") or posixpath.join(remote_dir, e["name"])
        target = os.path.join(dest, _safe_name(e["name"]))
        if e.get("type") == "dir":
            _walk_remote(c, rp, target, files)
        else:
            files.append((rp, target))


def cmd_get(c: ClientLike, args: argparse.Namespace) -> None:
    local: str = args.local
    if local.endswith(("/", os.sep)) and not os.path.exists(local):
        os.makedirs(local)
    local_is_dir = os.path.isdir(local)
    if len(args.remote) > 1 and not local_is_dir:
        raise UsageError(f"not a local directory: {local} (needed for several sources)")
    files: list[tuple[str, str]] = []
    tree = False
    for r in args.remote:
        remote = remote_path(r)
        info = c.stat(remote)
        base = _safe_name(posixpath.basename(remote)) if remote != "/" else ""
        dest = os.path.join(local, base) if local_is_dir else local
        if info.get("type") == "dir":
            if not args.recursive:
                raise UsageError(f"{remote} is a directory (use -r)")
            _walk_remote(c, remote, dest, files)
            tree = True
        else:
            files.append((remote, dest))
    with Transfers() as bars:
        if not tree and len(files) == 1:
            remote, dest = files[0]
            res = c.get(remote, dest, progress=bars.callback(remote))
            done = [{**res, "path": remote, "local": dest}]
        else:
            got = _transfer_many(
                bars,
                "get",
                files,
                lambda items, cb: c.get_many(items, concurrency=args.jobs, on_done=cb),
            )
            done = [{**res, "local": dst} for res, (_, dst) in zip(got, files, strict=False)]
    if args.json:
        output.emit_json({"files": done, "bytes": sum(int(d.get("size") or 0) for d in done)})


def _safe_name(name: str) -> str:
    # A name from the cluster becomes a local path component: never let it climb out.
    if name in ("", ".", "..") or "/" in name or os.sep in name or "\0" in name:
        raise UsageError(f"refusing unsafe remote name {name!r}")
    return name


def cmd_cat(c: ClientLike, args: argparse.Namespace) -> None:
    with c.open(remote_path(args.remote), "rb") as f:
        while chunk := f.read(CHUNK):
            output.write_bytes(chunk)
    output.flush_stdout()


# ---- ls / stat -------------------------------------------------------------------


def _entry_of(info: dict[str, Any]) -> dict[str, Any]:
    """A stat dict in the shape of an ls entry (for `ls FILE`)."""
    path = str(info.get("path", ""))
    return {
        "name": posixpath.basename(path) or "/",
        "path": path,
        "type": info.get("type"),
        "size": info.get("size"),
        "mtime": info.get("mtime"),
        "replicas": _replica_count(info),
        "rf": info.get("rf"),
    }


def cmd_ls(c: ClientLike, args: argparse.Namespace) -> None:
    """A page at a time on a terminal (the first page of a huge directory shows at
    once); ``--json`` prints the whole listing as one list."""
    path = remote_path(args.path)
    after: str | None = None
    every: list[dict[str, Any]] = []
    while True:
        try:
            # Names and types only, unless -l or --json need each entry's record.
            entries, after = c.ls_page(path, after=after, detail=args.long or args.json)
        except NotADirectory:
            entries, after = [_entry_of(c.stat(path))], None
        if args.json:
            every += entries
        else:
            _print_entries(entries, long=args.long)
        if after is None:
            break
    if args.json:
        output.emit_json(every)


def _print_entries(entries: list[dict[str, Any]], *, long: bool) -> None:
    entries = sorted(entries, key=lambda e: str(e.get("name", "")))
    if not long:
        for e in entries:
            output.echo(_display_name(e))
        return
    rows = []
    for e in entries:
        is_dir = e.get("type") == "dir"
        reps = "-" if is_dir else f"{e.get('replicas', '?')}/{e.get('rf', '?')}"
        size = "-" if is_dir else output.fmt_bytes(e.get("size"))
        rows.append(
            ["d" if is_dir else "-", size, reps, output.fmt_time(e.get("mtime")), _display_name(e)]
        )
    for line in output.columns(rows, right=frozenset({1, 2})):
        output.echo(line)


def _display_name(e: dict[str, Any]) -> str:
    name = str(e.get("name", ""))
    return name + "/" if e.get("type") == "dir" and not name.endswith("/") else name


def cmd_stat(c: ClientLike, args: argparse.Namespace) -> None:
    verify = getattr(args, "verify", False)
    info = c.stat(remote_path(args.path), verify=True) if verify else c.stat(remote_path(args.path))
    if args.json:
        output.emit_json(info)
        return
    rows = [["path", str(info.get("path", ""))], ["type", str(info.get("type", ""))]]
    if info.get("type") != "dir":
        size = info.get("size")
        rows.append(["size", f"{output.fmt_bytes(size)} ({size} bytes)"])
        rows.append(["checksum", str(info.get("checksum") or "-")])
        reps = [r for r in info.get("replicas") or [] if isinstance(r, dict)]
        state = "under-replicated" if info.get("under_replicated") else "ok"
        rows.append(["replicas", f"{len(reps)} of {info.get('rf', '?')} ({state})"])
        holders = [
            [str(r.get("id", ""))[:8], str(r.get("address", "")), str(r.get("state", "?"))]
            + ([str(r.get("health", "?"))] if verify else [])
            for r in reps
        ]
        rows += [["", "  " + line] for line in output.columns(holders)]
    for key in ("mtime", "ctime"):
        if key in info:
            rows.append([key, output.fmt_time(info.get(key))])
    if "version" in info:
        rows.append(["version", str(info["version"])])
    for line in output.columns(rows):
        output.echo(line)


# ---- namespace -------------------------------------------------------------------


def cmd_mkdir(c: ClientLike, args: argparse.Namespace) -> None:
    path = remote_path(args.path)
    if args.parents:
        _mkdirs(c, path)
    else:
        c.mkdir(path, parents=False)
    if args.json:
        output.emit_json({"path": path, "ok": True})


def cmd_rm(c: ClientLike, args: argparse.Namespace) -> None:
    path = remote_path(args.path)
    res = c.rm(path, recursive=args.recursive)
    if args.json:
        # The client reports how many entries went; 1 if it does not say.
        n = res if isinstance(res, int) and not isinstance(res, bool) else 1
        output.emit_json({"path": path, "removed": n})


def cmd_mv(c: ClientLike, args: argparse.Namespace) -> None:
    src = remote_path(args.src)
    dst = remote_path(args.dst)
    # `mv a DIR` moves a into DIR, like the shell; the check is one stat round trip.
    if src != "/" and (args.dst.endswith("/") or _remote_is_dir(c, dst)) and dst != src:
        dst = posixpath.join(dst, posixpath.basename(src))
    c.mv(src, dst)
    if args.json:
        output.emit_json({"src": src, "dst": dst, "ok": True})


COMMANDS: dict[str, Command] = {
    "status": cmd_status,
    "put": cmd_put,
    "get": cmd_get,
    "cat": cmd_cat,
    "ls": cmd_ls,
    "stat": cmd_stat,
    "mkdir": cmd_mkdir,
    "rm": cmd_rm,
    "mv": cmd_mv,
}
