"""Text for word count, made on the nodes: ``python examples/wordcount/text.py SIZE DIR``.

Each of ``--files`` generator tasks (Sphere ``tasks=``) writes its share of SIZE bytes
of text: words drawn from a fixed vocabulary of ``--vocabulary`` made-up words with
Zipf-like frequencies (the n-th word about 1/n as often as the first, as in real
text), a dozen words to a line. Seeded by the task number, so a data set is the same on
any cluster. The files land in Sector as ``DIR/part-NNNNN``, the input of
``wordcount.py``, ``../pipeline/pipeline.py`` and ``bench/disco.py``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import cloudpickle
import numpy as np

import sector

WORDS_PER_LINE = 12


def vocabulary(n: int) -> list[bytes]:
    """``n`` distinct made-up words of 2 to 10 letters (the same for every ``n``)."""
    rng = np.random.default_rng(7)
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)
    out: list[bytes] = []
    seen: set[bytes] = set()
    while len(out) < n:
        w = letters[rng.integers(0, 26, int(rng.integers(2, 11)))].tobytes()
        if w not in seen:
            seen.add(w)
            out.append(w)
    return out


def text(nbytes: int, seed: int, vocab: int = 10_000, zipf: float = 1.1) -> bytes:
    """About ``nbytes`` of text (whole lines, at least ``nbytes``), from ``seed``."""
    words = vocabulary(vocab)
    flat = np.frombuffer(b"".join(w + b" " for w in words), dtype=np.uint8)
    lens = np.array([len(w) + 1 for w in words], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
    p = 1.0 / np.arange(1, vocab + 1) ** zipf
    p /= p.sum()
    rng = np.random.default_rng(seed)
    chunks = []
    made = 0
    mean = float((lens * p).sum())  # bytes per word, on average
    while made < nbytes:
        n = min(int((nbytes - made) / mean) + WORDS_PER_LINE, 1 << 22)
        n += -n % WORDS_PER_LINE  # whole lines
        idx = rng.choice(vocab, size=n, p=p)
        ln = lens[idx]
        ends = np.cumsum(ln)
        # out[j] for the j-th byte of token t: flat[starts[idx[t]] + (j - token start)]
        offs = np.repeat(starts[idx] - (ends - ln), ln)
        out = flat[np.arange(int(ends[-1])) + offs]
        out[ends[WORDS_PER_LINE - 1 :: WORDS_PER_LINE] - 1] = ord("\n")
        chunks.append(out.tobytes())
        made += len(chunks[-1])
    return b"".join(chunks)


def generate(seg: Any) -> bytes:
    """One task: ``seg.param`` = (seed, bytes, vocabulary size)."""
    seed, nbytes, vocab = seg.param
    return text(nbytes, seed, vocab)


def make(c: sector.Client, size: int, out: str, *, files: int = 8, vocab: int = 10_000) -> None:
    """Write about ``size`` bytes of text to ``out`` (which must not exist) in ``files``."""
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # nodes need not have it
    share = [size // files + (i < size % files) for i in range(files)]
    tasks = [(2000 + i, m, vocab) for i, m in enumerate(share) if m]
    c.sphere.run(generate, tasks=tasks, output=out).wait(progress=False)


def main() -> None:
    from sector.cli.args import parse_size

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("size", type=parse_size, help="bytes of text, e.g. 100M")
    ap.add_argument("dir", help="Sector directory to create")
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--vocabulary", type=int, default=10_000)
    ap.add_argument("--cluster", default=None, help="a node's HOST:PORT (default: the local one)")
    args = ap.parse_args()
    with sector.connect(args.cluster) as c:
        make(c, args.size, args.dir, files=args.files, vocab=args.vocabulary)
    print(f"{args.size} bytes of text in {args.dir}", file=sys.stderr)


if __name__ == "__main__":
    main()
