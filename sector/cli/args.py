"""Validation of command-line values: addresses, sizes, topology paths.

Each parser raises ``ValueError`` with a one-line message; argparse turns that into a
usage error (exit 2) through :func:`arg_type`, and code that reads the environment
turns it into a :class:`~sector.errors.UsageError` (exit 1).
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from sector.errors import UsageError

T = TypeVar("T")

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgtp]?)(?:i?b)?", re.IGNORECASE)
_UNITS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}


def parse_address(text: str, *, allow_port_zero: bool = False) -> str:
    """Check ``HOST:PORT`` (``[v6addr]:PORT`` for IPv6) and return it unchanged.

    Port 0 is only meaningful to ``--listen`` (let the OS choose); a client or a
    joining node must name a real port.
    """
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"invalid address {text!r}: expected HOST:PORT")
    if host.startswith("[") != host.endswith("]") or (":" in host and not host.startswith("[")):
        raise ValueError(f"invalid address {text!r}: write IPv6 hosts as [ADDR]:PORT")
    low = 0 if allow_port_zero else 1
    if not low <= int(port) <= 65535:
        raise ValueError(f"invalid port in {text!r}: must be {low}..65535")
    return text


def parse_listen(text: str) -> str:
    return parse_address(text, allow_port_zero=True)


def parse_http(text: str) -> str:
    """``--http``: HOST:PORT (port 0 = any) or "off"."""
    return text if text in ("", "off") else parse_address(text, allow_port_zero=True)


def add_http_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--http",
        metavar="HOST:PORT|off",
        type=arg_type(parse_http),
        default="",
        help="serve /metrics, /api/ and a web page here (default: the --listen host, any port)",
    )


def parse_size(text: str) -> int:
    """'1073741824', '10G', '512MiB', '1.5t' -> bytes (binary units, as `df -h`)."""
    m = _SIZE.fullmatch(text.strip())
    if not m:
        raise ValueError(f"invalid size {text!r}: expected BYTES or a number with K/M/G/T/P")
    try:
        return int(float(m.group(1)) * 1024 ** _UNITS[m.group(2).lower()])
    except OverflowError:  # "1e400" digits: float infinity has no int
        raise ValueError(f"invalid size {text!r}: too large") from None


def parse_topology(text: str) -> str:
    if not text.startswith("/") or "//" in text or any(c.isspace() for c in text):
        raise ValueError(f"invalid topology {text!r}: expected a path such as /dc1/rack2")
    return text.rstrip("/") or "/"


def positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise ValueError(f"invalid number {text!r}") from None
    if n < 1:
        raise ValueError(f"must be at least 1, got {n}")
    return n


def arg_type(fn: Callable[[str], T]) -> Callable[[str], T]:
    """Adapt a parser for argparse ``type=`` so its own message is what the user sees."""

    def convert(text: str) -> T:
        try:
            return fn(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = fn.__name__
    return convert


def import_named(spec: str, noun: str, shape: str) -> tuple[str, str, Any]:
    """``MODULE:NAME`` -> (module, name, the object or None), the current directory on
    the path (as for ``python -m``); ``UsageError`` if it is not that shape or the
    module does not import. ``noun`` and ``shape`` word the message ("UDF", "FUNCTION")."""
    mod_name, _, name = spec.partition(":")
    if not mod_name or not name:
        raise UsageError(f"the {noun} must be given as MODULE:{shape}, not {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        mod = importlib.import_module(mod_name)
    except Exception as exc:
        raise UsageError(f"cannot import {mod_name}: {type(exc).__name__}: {exc}") from None
    return mod_name, name, getattr(mod, name, None)


class Unbuilt:
    """Stands in for the parser of a command that was not asked for: takes any call
    (``add_argument``, ``add_subparsers``, ...) and any attribute, and builds nothing."""

    def __getattr__(self, name: str) -> Any:
        return self._nothing

    def _nothing(self, *args: Any, **kwargs: Any) -> Unbuilt:
        return self


# The options before the command word that take a value (``--cluster HOST:PORT``).
_VALUED = ("--cluster", "--token")


def command_index(argv: Sequence[str]) -> int | None:
    """Where the command word of ``argv`` is (its first word that is not an option or
    an option's value), or None."""
    for i, word in enumerate(argv):
        if word == "--":
            return i + 1 if i + 1 < len(argv) else None
        if word.startswith("-") or (i and argv[i - 1] in _VALUED):
            continue
        return i
    return None


def command_word(argv: Sequence[str]) -> str | None:
    """The command ``argv`` names, or None."""
    i = command_index(argv)
    return None if i is None else argv[i]
