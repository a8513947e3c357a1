"""`make check`'s layout rule (issue 10): every module of ``sector/`` is at most
MAX_LINES lines and opens with a docstring saying what it owns. Prints one line per
offender and exits 1 if there is any."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

MAX_LINES = 600


def offences(root: Path) -> list[str]:
    out = []
    for p in sorted(root.rglob("*.py")):
        text = p.read_text()
        n = text.count("\n")
        if n > MAX_LINES:
            out.append(f"{p}: {n} lines (at most {MAX_LINES}: split it)")
        if text.strip() and ast.get_docstring(ast.parse(text)) is None:
            out.append(f"{p}: no opening docstring (say what the module owns)")
    return out


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "sector")
    bad = offences(root)
    for line in bad:
        print(line)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
