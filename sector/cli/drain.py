"""`sector drain ADDRESS` (also `sector node drain ADDRESS`): empty a node before removal.

The node is told to drain (``node.drain``); from then on it gossips the state
"draining", placement skips it and the files' owners copy its replicas elsewhere and
drop them (``repair_policy`` rule 5). This command only watches ``fs.status``: the
node is "drained" when no owner's record lists it, i.e. every replica it held is at
its replica target elsewhere. It is then safe to stop the node (SIGTERM: a graceful
leave also hands its metadata records to its successor).

Exit codes: 0 drained (or, with ``--no-wait``/``--cancel``, the request accepted);
1 the node is unknown or unreachable, or ``--timeout`` passed first.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from sector.cli import output
from sector.errors import NotFound, Unavailable

POLL = 0.5  # seconds between status polls: a drain takes seconds to hours


def _member(st: dict[str, Any], address: str) -> dict[str, Any]:
    for m in st.get("nodes") or []:
        if m.get("address") == address:
            return dict(m)
    raise NotFound(f"no node {address} in the cluster")


def run(args: argparse.Namespace) -> int:
    from sector.cli import commands

    c = commands.connect(args.cluster, token=args.token, anonymous=args.anonymous)
    try:
        rep = c.drain(args.address, cancel=args.cancel)
        if args.cancel or args.no_wait:
            if args.json:
                output.emit_json({**rep, "waited": False})
            else:
                output.echo(f"{args.address}: {rep.get('state')}")
            return 0
        deadline = time.monotonic() + args.timeout if args.timeout > 0 else None
        last = ""
        t0 = time.monotonic()
        while True:
            m = _member(c.status(), args.address)
            state, left = m.get("state"), m.get("drain_remaining")
            if state == "drained":
                break
            if state not in ("draining", "up"):
                # "up" only until our own entry node hears the gossip.
                raise Unavailable(f"{args.address} is {state}: cannot finish its drain")
            line = f"{args.address}: draining, {'?' if left is None else left} files to move"
            if line != last and not args.json:
                sys.stderr.write(line + "\n")
                sys.stderr.flush()
                last = line
            if deadline is not None and time.monotonic() > deadline:
                raise Unavailable(
                    f"{args.address} not drained after {args.timeout:g} s ({left} files left)"
                )
            time.sleep(POLL)
        took = time.monotonic() - t0
        if args.json:
            output.emit_json({**m, "waited": True, "seconds": round(took, 2)})
        else:
            output.echo(f"{args.address}: drained in {took:.1f} s, safe to remove")
        return 0
    finally:
        c.close()
