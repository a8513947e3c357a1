"""Word count, the classic Disco job: ``python examples/wordcount/wordcount.py DIR``.

    python examples/wordcount/text.py 100M /wc/text       # the input, made on the nodes
    python examples/wordcount/wordcount.py /wc/text --top 10
    sector disco run wordcount:WordCount /wc/text --wait   # the same, from examples/wordcount

One map task per file of DIR (on a node that holds it): each line's words, each with
a 1; ``sum_combiner`` adds them up within the map task, per partition, so a map sends
one record per distinct word instead of one per word; the reduce of each partition adds
the partial counts. The job is a ``Job`` subclass, so ``sector disco run`` can run it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from typing import Any

from sector.disco.core import Job, result_iterator
from sector.disco.util import kvgroup
from sector.disco.worker.classic.func import sum_combiner


def words(line: bytes, params: Any) -> Iterator[tuple[bytes, int]]:
    """The map: each word of a line (bytes, as Disco gives lines of files), with a 1."""
    for word in line.split():
        yield word, 1


def add_counts(iter: Any, params: Any) -> Iterator[tuple[bytes, int]]:
    """The reduce: the total of each word's counts."""
    for word, counts in kvgroup(sorted(iter)):
        yield word, sum(counts)


class WordCount(Job):
    map = staticmethod(words)
    combiner = staticmethod(sum_combiner)
    reduce = staticmethod(add_counts)
    partitions = 4


def count(inputs: list[str], master: str | None = None, partitions: int = 4) -> dict[bytes, int]:
    """Run the job over ``inputs``; every word's count. The job is purged after."""
    job = WordCount(master=master).run(input=inputs, partitions=partitions)
    try:
        return dict(result_iterator(job.wait()))
    finally:
        job.purge()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("input", nargs="+", help="Sector files, directories or globs")
    ap.add_argument("--top", type=int, default=20, help="print the N most frequent words")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--cluster", default=None, help="a node's HOST:PORT (default: the local one)")
    args = ap.parse_args()
    got = count(args.input, args.cluster, args.partitions)
    for word, n in sorted(got.items(), key=lambda kv: (-kv[1], kv[0]))[: args.top]:
        print(f"{n}\t{word.decode()}")
    print(f"{len(got)} distinct words, {sum(got.values())} in all", file=sys.stderr)


if __name__ == "__main__":
    main()
