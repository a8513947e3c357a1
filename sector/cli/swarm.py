"""``sector distribute PATH... [--to all|TOPOLOGY_PREFIX]`` (issue 14): every matching
node fetches the files into its cache through the swarm, ahead of the jobs that read
them. Prints, per node, what it got (files, bytes, seconds) or why it failed, with a
progress bar on a terminal; ``--json`` gives ``{"files": [...], "nodes": [{"address",
"files", "bytes", "fetched", "seconds", "error"}]}``. Exits 1 if any node failed."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, Protocol

from sector.cli import output
from sector.cli.progress import Transfers


class Distributes(Protocol):
    def distribute(
        self, paths: list[str], *, to: str = ..., progress: Any = ...
    ) -> dict[str, Any]: ...


def add_parsers(cmd: Callable[[str, str], argparse.ArgumentParser], common: Any) -> None:
    s = cmd("distribute", "fetch files into every node's cache through the swarm")
    s.add_argument("paths", nargs="+", metavar="PATH", help="files, or directories (every file)")
    s.add_argument(
        "--to",
        metavar="all|/DC/RACK",
        default="all",
        help="every node (default), or the nodes under a topology prefix such as /dc1",
    )


def run(client: Distributes, args: argparse.Namespace) -> int:
    from sector.cli.commands import remote_path

    paths = [remote_path(p) for p in args.paths]
    with Transfers(enabled=None if not args.json else False) as bars:
        res = client.distribute(paths, to=args.to, progress=bars.callback("distribute"))
    failed = [n for n in res["nodes"] if n.get("error")]
    if args.json:
        output.emit_json(res)
    else:
        rows = [("node", "files", "bytes", "fetched", "seconds", "error")]
        for n in res["nodes"]:
            rows.append(
                (
                    str(n["address"]),
                    str(n["files"]),
                    output.fmt_bytes(n["bytes"]),
                    output.fmt_bytes(n.get("fetched", 0)),
                    f"{n['seconds']:.2f}",
                    str(n.get("error") or ""),
                )
            )
        for line in output.columns(rows, right=frozenset({1, 2, 3, 4})):
            output.echo(line.rstrip())
        n = len(res["files"])
        output.echo(
            f"{n} file{'s' if n != 1 else ''} on {len(res['nodes']) - len(failed)} of "
            f"{len(res['nodes'])} nodes"
        )
    if failed:
        import sys

        sys.stderr.write(f"sector: error: {len(failed)} of {len(res['nodes'])} nodes failed\n")
        return 1
    return 0
