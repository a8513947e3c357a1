"""What the `sector` command writes: JSON, plain lines, aligned columns, rich tables.

Everything bound for stdout goes through :func:`echo`, :func:`write_bytes` or
:func:`emit_json`, so that a reader that goes away (``sector cat /x | head``) is seen
in one place and turned into :class:`StdoutClosed`, which ``main`` ends quietly. A
``BrokenPipeError`` raised anywhere else is a socket and is reported as an error.
Rich is imported only by the functions that draw tables, to keep start-up fast.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

from sector.errors import SectorError


class StdoutClosed(Exception):
    """The process reading our stdout has gone away."""


def write_bytes(data: bytes | memoryview) -> None:
    try:
        sys.stdout.buffer.write(data)
    except BrokenPipeError:
        raise StdoutClosed from None


def echo(text: str = "") -> None:
    try:
        sys.stdout.write(text + "\n")
    except BrokenPipeError:
        raise StdoutClosed from None


def flush_stdout() -> None:
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        raise StdoutClosed from None


def emit_json(obj: Any) -> None:
    # default=str: checksums or paths a client may hand back as non-JSON types still print.
    echo(json.dumps(obj, indent=2, default=str))


def warn(message: str) -> None:
    """One line on stderr that does not change the exit code."""
    sys.stderr.write(f"warning: {message}\n")
    sys.stderr.flush()


def fmt_bytes(n: object) -> str:
    """1536 -> '1.5 KiB'. Binary units, as `ls -h` and `df -h` use."""
    if not isinstance(n, int | float) or isinstance(n, bool):
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(size) < 1024 or unit == "PiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def fmt_time(t: object) -> str:
    """Epoch seconds -> local 'YYYY-MM-DD HH:MM:SS'; '-' when the field is missing."""
    if not isinstance(t, int | float) or isinstance(t, bool):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def columns(rows: Iterable[Sequence[str]], right: frozenset[int] = frozenset()) -> list[str]:
    """Plain space-aligned columns (no box drawing) so `ls -l` output stays greppable.

    ``right`` lists the column indexes aligned to the right (numbers). The last
    column is never padded, so names with trailing spaces survive copy and paste.
    """
    table = [list(r) for r in rows]
    if not table:
        return []
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    out = []
    for r in table:
        cells = [
            c if i == len(r) - 1 else (c.rjust(widths[i]) if i in right else c.ljust(widths[i]))
            for i, c in enumerate(r)
        ]
        out.append("  ".join(cells))
    return out


def print_rich(renderable: Any) -> None:
    """Render with rich, then write through :func:`echo` (see the module docstring)."""
    from rich.console import Console

    tty = sys.stdout.isatty()
    # Off a terminal rich would assume 80 columns and fold the table; give it room
    # instead, since tables do not expand past their natural width.
    console = Console(width=None if tty else 200, force_terminal=tty, highlight=False)
    with console.capture() as cap:
        console.print(renderable)
    text = cap.get()
    echo(text[:-1] if text.endswith("\n") else text)


def error_message(exc: BaseException) -> str:
    """The one line printed for a failure."""
    if isinstance(exc, SectorError):
        msg = str(exc)
    elif isinstance(exc, OSError):
        # '[Errno 2] No such file or directory: 'x'' reads badly; say 'x: No such ...'.
        what = exc.strerror or str(exc) or type(exc).__name__
        msg = f"{exc.filename}: {what}" if exc.filename is not None else what
    else:
        msg = f"internal error: {type(exc).__name__}: {exc}"
    return " ".join(msg.split()) or type(exc).__name__
