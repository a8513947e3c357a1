"""A job's required files inside an engine (``required_files=[...]``; issue 14).

The node fetches a job's required files once (``node/sphere_files.py``) into a
directory of the job, ``<job>/files/``, which no UDF may write, and names it in every
task of the job (``files_dir``, with ``required``: Sector path -> name below it). Around
each task (``use``) the engine:

- makes that directory its working directory (Disco's rule: ``open("model.bin")``
  works) and puts it first on ``sys.path`` (a required ``helper.py`` imports); both go
  back after the task;
- hands the UDF the mapping Sector path -> local path (``seg.required``);
- keeps modules imported from it while the tasks that follow are of the same job (a
  module that loads a model at import does so once per engine and job), and drops
  them from ``sys.modules`` when a task of another job (or none) comes: an engine runs
  tasks of many jobs, and two jobs may require different ``helper.py``.

Imported by the engines at spawn: the standard library only.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Iterator
from typing import Any

__all__ = ["local_paths", "use"]

_current: str | None = None  # the files directory of the last task's job, on sys.path


def local_paths(files_dir: str, required: dict[str, str]) -> dict[str, str]:
    """Sector path -> local path of each required file (and directory)."""
    return {path: os.path.join(files_dir, name) for path, name in required.items()}


def _switch(new: str | None) -> None:
    """Another job's files (or none): the last job's modules and path entry go."""
    global _current
    if new == _current:
        return
    old, _current = _current, new
    if old is not None:
        prefix = old.rstrip("/") + "/"
        for name, mod in list(sys.modules.items()):
            f = getattr(mod, "__file__", None)
            if isinstance(f, str) and f.startswith(prefix):
                del sys.modules[name]
        with contextlib.suppress(ValueError):
            sys.path.remove(old)
    if new is not None:
        sys.path.insert(0, new)
    importlib.invalidate_caches()


@contextlib.contextmanager
def use(task: dict[str, Any]) -> Iterator[dict[str, str]]:
    """The task's required files as its working directory and first import path; yields
    the mapping for ``seg.required`` (empty for a job without required files)."""
    files_dir = task.get("files_dir") or None
    _switch(files_dir)
    if files_dir is None:
        yield {}
        return
    if sys.path[:1] != [files_dir]:  # (a UDF may have moved it)
        with contextlib.suppress(ValueError):
            sys.path.remove(files_dir)
        sys.path.insert(0, files_dir)
    try:
        before: str | None = os.getcwd()
    except OSError:  # the old working directory is gone (a dropped job's)
        before = None
    os.chdir(files_dir)
    try:
        yield local_paths(files_dir, dict(task.get("required") or {}))
    finally:
        with contextlib.suppress(OSError):
            os.chdir(before or "/")
