"""Input expansion: a job's input (paths, directories, globs) -> the files it reads.

``expand`` walks the namespace through the client: a directory is walked recursively
(``.idx`` companions and dot files are not input), a glob matches name by name as a
shell does ("*" never crosses a "/"), and with ``records="idx"`` each file's index is
read and checked. The result, ``Inputs``, holds what the segment planner needs
(``InputFile``: size, blob, holders) and what ``sphere.run`` carries besides: the file's
checksum, its replicas' addresses and, for idx segments, their slice of the index.

``required`` resolves a job's ``required_files`` the same way, to what ``sphere.run``
carries for them (``wire.Required``): a file is shown to the engines under its base
name; a directory under its base name too, with every file below it (dot files and
``.idx`` included: a Python package is copied whole). Two entries under one name, and a
path that is not there, are refused before the job starts.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any

import cloudpickle
import msgspec
import numpy as np

from sector.errors import NotFound, UsageError
from sector.meta import records as rec
from sector.sphere import wire
from sector.sphere.ports import JobClient
from sector.sphere.segments import InputFile, Segment, check_index


@dataclass(slots=True)
class Inputs:
    """The files of a job's input (none for a job of generator tasks)."""

    files: list[InputFile] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)
    checksums: dict[str, str] = field(default_factory=dict)
    replicas: dict[str, list[str]] = field(default_factory=dict)  # path -> addresses
    index: dict[str, np.ndarray] = field(default_factory=dict)  # path -> offsets (idx)

    def segment_args(self, seg: Segment) -> wire.Segment:
        """The segment as ``sphere.run`` carries it."""
        if seg.kind == "task":
            return wire.TaskSegment(id=seg.id, param=bytes(cloudpickle.dumps(seg.param)))
        index: bytes | msgspec.UnsetType = msgspec.UNSET
        if seg.kind == "idx":
            idx = self.index[seg.path][seg.first : seg.first + seg.count + 1]
            index = (idx - idx[0]).astype(np.int64).tobytes()
        return wire.DATA_SEGMENTS[seg.kind](
            id=seg.id,
            path=seg.path,
            blob=seg.blob,
            offset=seg.offset,
            length=seg.length,
            size=self.sizes[seg.path],
            record_size=seg.record_size,
            first=seg.first,
            checksum=self.checksums.get(seg.path),
            holders=self.replicas.get(seg.path, []),
            index=index,
        )


async def expand(c: JobClient, spec: Any, records: Any) -> Inputs:
    """The files of ``spec`` (a path, directory or glob, or a list of them), in order."""
    if spec is None:
        raise UsageError("a job needs an input (files, a directory or a glob) or tasks")
    specs = [spec] if isinstance(spec, str) else list(spec)
    stats: list[dict[str, Any]] = []
    for s in specs:
        if not isinstance(s, str):
            raise UsageError(f"input paths must be strings, not {type(s).__name__}")
        stats += await _expand(c, s)
    if not stats:
        raise NotFound(f"the input {spec} has no files")
    out = Inputs()
    for st in stats:
        path = st["path"]
        holders = tuple(r["id"] for r in st["replicas"] if r["state"] == "up")
        index = None
        if records == "idx":
            index = await _index(c, path, st["size"])
            out.index[path] = index
        out.files.append(InputFile(path, st["size"], st["blob"], holders, index))
        out.sizes[path] = st["size"]
        out.checksums[path] = st["checksum"]
        out.replicas[path] = [r["address"] for r in st["replicas"]]
    return out


async def _index(c: JobClient, path: str, size: int) -> np.ndarray:
    try:
        raw = await c.read(path + ".idx")
    except NotFound:
        raise UsageError(f"{path} has no index file {path}.idx") from None
    if len(raw) % 8:
        raise UsageError(
            f"{path}: the index {path}.idx has {len(raw)} bytes, "
            "not a whole number of 8-byte offsets (int64)"
        )
    return check_index(np.frombuffer(raw, dtype=np.int64), size, path)


async def _expand(c: JobClient, spec: str) -> list[dict[str, Any]]:
    if any(ch in spec for ch in "*?["):
        base = rec.parent(rec.normalize(spec.split("*")[0].split("?")[0].split("[")[0] + "x"))
        # Matched name by name, as a shell does: "*" never crosses a "/".
        pattern = rec.normalize(spec).split("/")
        found = [
            st
            for st in await _walk(c, base)
            if len(parts := st["path"].split("/")) == len(pattern)
            and all(fnmatch.fnmatchcase(n, p) for n, p in zip(parts, pattern, strict=True))
        ]
        return sorted(found, key=lambda s: s["path"])
    st = await c.stat(spec)
    if st["type"] == "dir":
        return await _walk(c, st["path"])
    return [st]


async def _walk(c: JobClient, path: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for e in sorted(await c.ls(path), key=lambda e: e["name"]):
        if e["type"] == "dir":
            out += await _walk(c, e["path"])
        elif not e["name"].endswith(".idx") and not e["name"].startswith("."):
            out.append(await c.stat(e["path"]))
    return out


async def required(c: JobClient, paths: list[str]) -> list[wire.Required]:
    """A job's ``required_files``, resolved (module doc); NotFound names a missing one."""
    out: list[wire.Required] = []
    names: dict[str, str] = {}
    for p in paths:
        try:
            st = await c.stat(p)
        except NotFound:
            raise NotFound(f"required file {p}: no such file or directory") from None
        name = rec.basename(st["path"])
        if not name:
            raise UsageError("required_files cannot name the root directory")
        if name in names:
            raise UsageError(
                f"required files {names[name]} and {st['path']} would both be {name!r} on the nodes"
            )
        names[name] = st["path"]
        if st["type"] == "dir":
            out.append(wire.Required(path=st["path"], name=name, dir=True))
            out += await _required_tree(c, st["path"], name)
        else:
            out.append(_required_file(st, name))
    if len(out) > wire.MAX_REQUIRED:
        raise UsageError(f"a job may require at most {wire.MAX_REQUIRED} files, not {len(out)}")
    return out


def _required_file(st: dict[str, Any], name: str) -> wire.Required:
    return wire.Required(path=st["path"], name=name, blob=st["blob"], size=st["size"])


async def _required_tree(c: JobClient, path: str, name: str) -> list[wire.Required]:
    out: list[wire.Required] = []
    for e in sorted(await c.ls(path), key=lambda e: e["name"]):
        sub = f"{name}/{e['name']}"
        if e["type"] == "dir":
            out.append(wire.Required(path=e["path"], name=sub, dir=True))
            out += await _required_tree(c, e["path"], sub)
        else:
            out.append(_required_file(await c.stat(e["path"]), sub))
        if len(out) > wire.MAX_REQUIRED:
            raise UsageError(f"required directory {path}: more than {wire.MAX_REQUIRED} entries")
    return out
