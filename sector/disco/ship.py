"""What travels to the nodes with a Disco job, and how it is unpacked there.

A job's resolved ``Worker`` (its functions, readers, ``params``; often bound methods of
the ``Job`` instance, or ``partial``s) is cloudpickled once, on the client, at
``run()``. Code of the user's own modules -- a script, a test file, a module next to
the program -- cannot be imported on the nodes, so it travels *by value*: every
module the job's objects come from (the job's class and its bases, each function, a
``partial``'s function and arguments, ``Params`` values, and the globals those
functions use, transitively) that is not installed (stdlib, site-packages) and is not
``sector`` itself is registered with ``cloudpickle.register_pickle_by_value`` while the
job is pickled. This is what Disco's ``modutil`` guessed and shipped as source.

``required_modules`` are imported on the nodes and made globals of the job's functions,
as Disco does; a local one (not installed) travels as source, as does ``(name,
path)``. ``required_files`` (paths, or a dict of name -> bytes) are written to a
directory that is the task's working directory, and on ``sys.path``. An entry of the
list that is a ``sector://`` URL (``sector:///models/m.bin``; a host in it is ignored:
the job's cluster holds the file) does not travel with the job: it becomes the Sphere
job's ``required_files`` (``sector_files``), fetched by each node through its swarm
and cache, and shown in the task's working directory under its base name all the same.

On a node, ``Unpacked`` (a context manager) installs the modules, writes the files,
unpickles the worker -- a fresh copy per task, so each task has its own ``params`` --
and puts everything back afterwards: an engine runs tasks of many jobs.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import os
import pickle
import shutil
import sys
import sysconfig
import tempfile
import types
from collections.abc import Iterator
from typing import Any

import cloudpickle

from sector.disco import util
from sector.disco.error import DiscoError
from sector.disco.util import flatten

__all__ = ["Unpacked", "local_modules", "pack", "sector_files"]

SECTOR = "sector://"

_ROOTS: list[str] | None = None
_WALK_MAX = 10_000  # items of a container that local_modules looks into


def _installed(mod: types.ModuleType) -> bool:
    global _ROOTS
    f = getattr(mod, "__file__", None)
    if f is None:
        return True  # builtin, or a namespace package
    if _ROOTS is None:
        keys = ("stdlib", "platstdlib", "purelib", "platlib")
        _ROOTS = [os.path.realpath(sysconfig.get_paths()[k]) + os.sep for k in keys]
    f = os.path.realpath(f)
    return any(f.startswith(r) for r in _ROOTS) or "-packages" + os.sep in f


def _is_local(name: str | None) -> bool:
    if not name or name == "__main__" or name == "sector" or name.startswith("sector."):
        return False
    mod = sys.modules.get(name)
    return mod is not None and not _installed(mod)


def local_modules(*objs: Any) -> set[str]:
    """Names of the local (not installed) modules that ``objs`` need, transitively."""
    found: set[str] = set()
    seen: set[int] = set()
    todo = list(objs)
    while todo:
        obj = todo.pop()
        if id(obj) in seen or obj is None or isinstance(obj, str | bytes | int | float | bool):
            continue
        seen.add(id(obj))
        if isinstance(obj, types.ModuleType):
            if _is_local(obj.__name__):
                found.add(obj.__name__)
            continue
        if isinstance(obj, dict):
            if len(obj) <= _WALK_MAX:  # big containers are data, not code
                todo.extend(obj.keys())
                todo.extend(obj.values())
            continue
        if isinstance(obj, list | tuple | set | frozenset):
            if len(obj) <= _WALK_MAX:
                todo.extend(obj)
            continue
        if isinstance(obj, functools.partial):
            todo += [obj.func, obj.args, obj.keywords]
            continue
        if inspect.ismethod(obj):
            todo += [obj.__func__, obj.__self__]
            continue
        if isinstance(obj, staticmethod | classmethod):
            todo.append(obj.__func__)
            continue
        if inspect.isfunction(obj):
            mod = obj.__module__
            if _is_local(mod):
                found.add(mod)
            if mod == "__main__" or _is_local(mod):
                # What the function uses: globals named in its code (and nested code).
                g = obj.__globals__
                todo += [g[n] for n in _names(obj.__code__) if n in g]
                todo += [c.cell_contents for c in obj.__closure__ or () if _filled(c)]
                todo += list(obj.__defaults__ or ())
            continue
        if isinstance(obj, type):
            for klass in obj.__mro__:
                if _is_local(klass.__module__) or klass.__module__ == "__main__":
                    if _is_local(klass.__module__):
                        found.add(klass.__module__)
                    todo += list(vars(klass).values())
            continue
        # An instance (a Job, Params, ...): its class and its attributes.
        todo.append(type(obj))
        d = getattr(obj, "__dict__", None)
        if isinstance(d, dict):
            todo.append(d)
    return found


def _filled(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018
    except ValueError:
        return False
    return True


def _names(code: types.CodeType) -> set[str]:
    out = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            out |= _names(const)
    return out


def _module_source(name: str, path: str | None) -> str | None:
    """The source a required module travels as (None: the nodes import it)."""
    if path is not None:
        with open(path) as f:
            return f.read()
    try:
        mod = importlib.import_module(name)
    except ImportError as exc:
        raise DiscoError(f"required module {name} cannot be imported here: {exc}") from None
    if _installed(mod) or name == "sector" or name.startswith("sector."):
        return None
    try:
        return inspect.getsource(mod)
    except (OSError, TypeError) as exc:
        raise DiscoError(f"required module {name}: cannot read its source ({exc})") from None


def _files(spec: Any) -> dict[str, bytes]:
    if not spec:
        return {}
    if isinstance(spec, dict):
        return {str(k): v if isinstance(v, bytes) else str(v).encode() for k, v in spec.items()}
    out = {}
    for path in spec:
        if isinstance(path, str) and path.startswith(SECTOR):
            continue  # the Sphere job's (``sector_files``)
        with open(path, "rb") as f:
            out[os.path.basename(path)] = f.read()
    return out


def sector_files(spec: Any) -> list[str]:
    """The Sector paths of a job's ``required_files`` (its ``sector://`` entries)."""
    if not spec or isinstance(spec, dict | str):
        return []
    out = []
    for url in spec:
        if isinstance(url, str) and url.startswith(SECTOR):
            rest = url[len(SECTOR) :]
            path = rest[rest.find("/") :] if "/" in rest else ""
            if len(path) < 2:
                raise DiscoError(f"required file {url!r}: no path (sector:///dir/file)")
            out.append(path)
    return out


def pack(worker: Any, meta: dict[str, Any]) -> bytes:
    """The job as it travels: plain pickle of ``meta``, the required modules and files,
    and the cloudpickled worker. Raises ``DiscoError`` if something cannot travel."""
    modules = []
    for m in worker.get("required_modules") or ():
        name, path = (m[0], m[1]) if isinstance(m, tuple) and len(m) == 2 else (m, None)
        modules.append((str(name), _module_source(str(name), path)))
    files = _files(worker.get("required_files"))
    local = local_modules(worker)
    shipped = {name for name, src in modules if src is not None}
    registered = []
    try:
        for name in sorted(local - shipped):
            cloudpickle.register_pickle_by_value(sys.modules[name])
            registered.append(name)
        body = cloudpickle.dumps(worker)
    except Exception as exc:
        raise DiscoError(
            f"the job cannot be sent to the nodes: {type(exc).__name__}: {exc}"
        ) from None
    finally:
        for name in registered:
            with contextlib.suppress(Exception):
                cloudpickle.unregister_pickle_by_value(sys.modules[name])
    return pickle.dumps({**meta, "modules": modules, "files": files, "worker": body})


class Unpacked:
    """On a node: ``with Unpacked(blob) as (worker, meta):`` -- a task's own worker."""

    def __init__(
        self,
        blob: bytes,
        names: dict[str, Any] | None = None,
        required: dict[str, str] | None = None,
    ) -> None:
        self.meta: dict[str, Any] = pickle.loads(blob)
        self.names = dict(names or {})  # globals every job function gets
        # The Sphere job's required files (``seg.required``): the engine's working
        # directory holds them; a task that makes a directory of its own links them in.
        self.required = dict(required or {})
        self._saved_modules: dict[str, types.ModuleType | None] = {}
        self._cwd: str | None = None
        self._home: str | None = None

    def __enter__(self) -> tuple[Any, dict[str, Any]]:
        try:
            return self._enter()
        except BaseException:
            self.__exit__()
            raise

    def _enter(self) -> tuple[Any, dict[str, Any]]:
        meta = self.meta
        if meta["files"]:
            self._home = tempfile.mkdtemp(prefix="sector-disco-")
            here = os.getcwd()
            for local in self.required.values():
                if os.path.dirname(local) == here:
                    os.symlink(local, os.path.join(self._home, os.path.basename(local)))
            for name, data in meta["files"].items():
                target = os.path.join(self._home, os.path.basename(name))
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(target)  # (a Sector file of that name: the shipped one wins)
                with open(target, "wb") as f:
                    f.write(data)
            self._cwd = os.getcwd()
            os.chdir(self._home)
            sys.path.insert(0, self._home)
        mods: dict[str, types.ModuleType] = {}
        for name, src in meta["modules"]:
            if src is None:
                mods[name] = importlib.import_module(name)
                continue
            self._saved_modules[name] = sys.modules.get(name)
            mod = types.ModuleType(name)
            mod.__file__ = f"<{name} shipped with job {meta.get('name')}>"
            sys.modules[name] = mod
            exec(compile(src, mod.__file__, "exec"), mod.__dict__)
            mods[name] = mod
        worker = cloudpickle.loads(meta["worker"])
        _globalize(worker, {**self.names, **{n.rsplit(".", 1)[-1]: m for n, m in mods.items()}})
        return worker, meta

    def __exit__(self, *exc: object) -> None:
        for name, old in self._saved_modules.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old
        self._saved_modules.clear()
        if self._cwd is not None:
            with contextlib.suppress(OSError):
                os.chdir(self._cwd)
            self._cwd = None
        if self._home is not None:
            with contextlib.suppress(ValueError):
                sys.path.remove(self._home)
            shutil.rmtree(self._home, ignore_errors=True)
            self._home = None


def _globalize(worker: Any, names: dict[str, Any]) -> None:
    """Disco's globals of job functions (the classic ``func`` names and the required
    modules), set where not already set in the globals of the job's own functions --
    those that travelled by value, never an installed module's."""
    for obj in _callables(worker):
        target = obj.func if isinstance(obj, functools.partial) else obj
        target = getattr(target, "__func__", target)
        g = getattr(target, "__globals__", None)
        home = sys.modules.get(getattr(target, "__module__", "") or "")
        if isinstance(g, dict) and (home is None or g is not vars(home)):
            util.globalize(target, names)


def _callables(worker: Any) -> Iterator[Any]:
    for v in worker.values():
        for obj in flatten([v]) if isinstance(v, list | tuple) else [v]:
            if callable(obj):
                yield obj
        if hasattr(v, "__dict__") and not callable(v):  # Params: functions inside
            yield from (x for x in vars(v).values() if callable(x))
