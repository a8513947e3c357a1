"""An inner join of two tables stored in Sector, as one Disco job.

    python examples/join/tables.py 10000 50000 /jn
    python examples/join/join.py /jn/users.csv /jn/orders.csv | head

A reduce-side join: the map reader tags each line with its table (from the input's
URL: a reader sees it, the map does not), the map keys every row by ``user_id``, the
default partition sends both tables' rows of a user to the same reduce, and the reduce
(with ``sort=True``: the rows of a key arrive together) pairs each user with each of
its orders. Output: ``(user_id, (name, country, order_id, amount))``; users without
orders and orders without a user drop out.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from typing import Any

from sector.disco.core import Job, result_iterator
from sector.disco.util import kvgroup
from sector.disco.worker import Params


def tagged_lines(fd: Any, size: int, url: str, params: Any) -> Iterator[tuple[str, bytes]]:
    """The map reader: each line of the input with the name of its table."""
    table = url.rsplit("/", 1)[-1].split(".")[0]  # "users" or "orders"
    for line in fd:
        yield table, line


def by_user(entry: tuple[str, bytes], params: Any) -> Iterator[tuple[int, tuple[Any, ...]]]:
    table, line = entry
    cols = line.decode().rstrip("\n").split(",")
    if table == params.left:  # user_id, name, country
        yield int(cols[0]), ("u", cols[1], cols[2])
    else:  # order_id, user_id, amount
        yield int(cols[1]), ("o", int(cols[0]), float(cols[2]))


def pair(iter: Any, params: Any) -> Iterator[tuple[int, tuple[Any, ...]]]:
    for user_id, rows in kvgroup(iter):  # sort=True: a key's rows are together
        users, orders = [], []
        for row in rows:
            (users if row[0] == "u" else orders).append(row[1:])
        for name, country in users:
            for order_id, amount in sorted(orders):
                yield user_id, (name, country, order_id, amount)


class Join(Job):
    map_reader = staticmethod(tagged_lines)
    map = staticmethod(by_user)
    reduce = staticmethod(pair)
    sort = True
    partitions = 4
    params = Params(left="users")  # the table whose rows are users


def join(users: str, orders: str, master: str | None = None) -> list[tuple[int, tuple[Any, ...]]]:
    """The joined rows, sorted. The job is purged after."""
    job = Join(master=master).run(input=[users, orders])
    try:
        return sorted(result_iterator(job.wait()))
    finally:
        job.purge()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("users", help="Sector path of users.csv")
    ap.add_argument("orders", help="Sector path of orders.csv")
    ap.add_argument("--cluster", default=None, help="a node's HOST:PORT (default: the local one)")
    args = ap.parse_args()
    for user_id, (name, country, order_id, amount) in join(args.users, args.orders, args.cluster):
        print(f"{user_id},{name},{country},{order_id},{amount:.2f}")


if __name__ == "__main__":
    main()
