"""Two tables for the join: ``python examples/join/tables.py USERS ORDERS DIR``.

Writes ``DIR/users.csv`` (``user_id,name,country``) and ``DIR/orders.csv``
(``order_id,user_id,amount``) into Sector, made from a seed: every user id is unique,
orders point at random user ids, some of which have no user (they drop out of an
inner join), and some users have no orders.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile

import sector

COUNTRIES = ["fr", "de", "jp", "br", "ke", "ca", "in", "nz"]


def tables(users: int, orders: int, seed: int = 1) -> tuple[str, str]:
    """The two CSV texts (no header lines)."""
    rng = random.Random(seed)
    u = [f"{i},user{i:06d},{rng.choice(COUNTRIES)}\n" for i in range(users)]
    o = [
        f"{j},{rng.randrange(int(users * 1.1) + 1)},{rng.randrange(1, 100_000) / 100:.2f}\n"
        for j in range(orders)
    ]
    return "".join(u), "".join(o)


def make(c: sector.Client, users: int, orders: int, out: str, seed: int = 1) -> None:
    for name, data in zip(("users.csv", "orders.csv"), tables(users, orders, seed), strict=True):
        fd, tmp = tempfile.mkstemp()
        try:
            with os.fdopen(fd, "w") as f:
                f.write(data)
            c.put(tmp, f"{out}/{name}")
        finally:
            os.unlink(tmp)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("users", type=int)
    ap.add_argument("orders", type=int)
    ap.add_argument("dir", help="Sector directory")
    ap.add_argument("--cluster", default=None, help="a node's HOST:PORT (default: the local one)")
    args = ap.parse_args()
    with sector.connect(args.cluster) as c:
        make(c, args.users, args.orders, args.dir)
    print(f"{args.dir}/users.csv and {args.dir}/orders.csv", file=sys.stderr)


if __name__ == "__main__":
    main()
