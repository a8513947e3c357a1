"""A pipeline of two Disco jobs: the most frequent words of a text, and their ranks.

    python examples/wordcount/text.py 100M /wc/text     # the input
    python examples/pipeline/pipeline.py /wc/text --top 10

Job 1 counts words (the word count of ``../wordcount``, partitioned 4 ways). Job 2
reads job 1's results as they are -- its ``input`` is job 1's result URLs and its
``map_reader`` is ``chain_reader``, which reads the records a job wrote, with their
Python types -- and keeps each map task's ``--top`` most frequent words (a combiner
holding a small heap), then one reduce ranks the survivors. Output: ``(rank, (word,
count))`` for ranks 1..top. The first job's results stay in Sector until the pipeline
has read them, then both jobs are purged.
"""

from __future__ import annotations

import argparse
import heapq
from collections.abc import Iterator
from typing import Any

from sector.disco.core import Job, result_iterator
from sector.disco.util import kvgroup
from sector.disco.worker import Params
from sector.disco.worker.classic.func import chain_reader, sum_combiner


def words(line: bytes, params: Any) -> Iterator[tuple[bytes, int]]:
    for word in line.split():
        yield word, 1


def add_counts(iter: Any, params: Any) -> Iterator[tuple[bytes, int]]:
    for word, counts in kvgroup(sorted(iter)):
        yield word, sum(counts)


class CountWords(Job):
    map = staticmethod(words)
    combiner = staticmethod(sum_combiner)
    reduce = staticmethod(add_counts)
    partitions = 4


def as_candidate(record: tuple[bytes, int], params: Any) -> Iterator[tuple[str, Any]]:
    word, n = record
    yield "top", (n, word)


def keep_top(key: Any, value: Any, buf: dict[Any, Any], done: bool, params: Any) -> Any:
    """Per map task, only the ``params.top`` largest (count, word) pairs go on."""
    heap = buf.setdefault("heap", [])
    if not done:
        if len(heap) < params.top:
            heapq.heappush(heap, value)
        else:
            heapq.heappushpop(heap, value)
        return None
    return [("top", v) for v in heap]


def rank(iter: Any, params: Any) -> Iterator[tuple[int, tuple[bytes, int]]]:
    best = heapq.nlargest(params.top, (v for _k, v in iter), key=lambda v: (v[0], v[1]))
    for i, (n, word) in enumerate(best, start=1):
        yield i, (word, n)


class TopWords(Job):
    map_reader = staticmethod(chain_reader)
    map = staticmethod(as_candidate)
    combiner = staticmethod(keep_top)
    reduce = staticmethod(rank)
    partitions = 1
    params = Params(top=10)


def top_words(inputs: list[str], top: int = 10, master: str | None = None) -> list[Any]:
    """``[(rank, (word, count))]`` of the ``top`` most frequent words of ``inputs``."""
    counts = CountWords(master=master).run(input=inputs)
    try:
        ranks = TopWords(master=master).run(input=counts.wait(), params=Params(top=top))
        try:
            return sorted(result_iterator(ranks.wait()))
        finally:
            ranks.purge()
    finally:
        counts.purge()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("input", nargs="+", help="Sector files, directories or globs")
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--cluster", default=None, help="a node's HOST:PORT (default: the local one)")
    args = ap.parse_args()
    for r, (word, n) in top_words(args.input, args.top, args.cluster):
        print(f"{r}\t{n}\t{word.decode()}")


if __name__ == "__main__":
    main()
