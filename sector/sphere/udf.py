"""Shipping a UDF to the nodes: the function and its job parameter as cloudpickle bytes.

This module owns how a user's function travels. A function from an installed module
(the standard library, site-packages, ``sector`` itself) is pickled by reference: the
nodes import the same module. One from the user's own module -- a script, a test file,
a notebook's ``__main__`` -- is pickled *by value*, code and all, since the nodes
cannot import it. Pickling happens once, when the job is made, so a UDF that cannot
be shipped is a ``UsageError`` before anything starts.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from collections.abc import Callable
from typing import Any

import cloudpickle

from sector.errors import UsageError

__all__ = ["pickle_udf"]


def _installed(mod: Any) -> bool:
    """Is the module importable on the nodes as it is (stdlib or site-packages)?"""
    f = getattr(mod, "__file__", None)
    if f is None:
        return True  # builtin
    f = os.path.realpath(f)
    roots = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    return any(f.startswith(os.path.realpath(r) + os.sep) for r in roots) or "-packages" in f


def pickle_udf(fn: Callable[..., Any], param: Any) -> bytes:
    """cloudpickle the UDF with its parameter. A UDF from the user's own module (a
    script, a test file) is pickled *by value*: the nodes cannot import that module."""
    if not callable(fn):
        raise UsageError(f"the UDF must be a function, not {type(fn).__name__}")
    name = getattr(fn, "__module__", None) or "__main__"
    mod = sys.modules.get(name)
    by_value = (
        mod is not None
        and name != "__main__"
        and not name.startswith("sector.")
        and not _installed(mod)
    )
    if by_value:
        cloudpickle.register_pickle_by_value(mod)
    try:
        return bytes(cloudpickle.dumps((fn, param)))
    except Exception as exc:
        raise UsageError(f"cannot pickle the UDF or its parameter: {exc}") from None
    finally:
        if by_value:
            cloudpickle.unregister_pickle_by_value(mod)
