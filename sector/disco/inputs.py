"""A Disco job's inputs on Sector: what each input is and which Sector file holds it.

Disco's ``input`` is a list; each item is one input, and one map task (duplicates
included): a URL, or a list of URLs that are replicas of the same data. On Sector an
item is

- a Sector path (``/data/x.txt``) or URL (``sector:///data/x.txt``; a URL may name
  the cluster, ``sector://host:port/data/x.txt``, which only says where it lives): a
  file is one input; a directory is every file under it, a glob (``/logs/*.txt``)
  every file it matches (names starting with "." and ``.idx`` indexes are not inputs,
  as in Sphere), each file one input;
- ``raw://data``: the data itself, which the map sees as str (as on Disco);
- a list of replicas ``[url1, url2]``: the first that exists.

A job's results are Sector files too (``/disco/<job>/map/bucket-NNNNN`` for a map-only
job, ``/disco/<job>/reduce/bucket-NNNNN`` after a reduce); the output of a map-only job
is *partitioned*: bucket N holds partition N, and a reduce-only job over such inputs
runs one reduce per partition (``label_of``).
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Any

from sector.disco.error import DataError, DiscoError
from sector.errors import NotFound, SectorError

__all__ = ["ROOT", "Input", "job_of", "label_of", "resolve", "to_path", "url_of"]

ROOT = "/disco"  # every job's directory is ROOT/<name>

_RESULT = re.compile(r"^/disco/([^/]+)/(map|reduce)/bucket-(\d+)$")
_JOB = re.compile(r"^/disco/([^/]+)(/|$)")


@dataclass(frozen=True, slots=True)
class Input:
    """One input of a job: ``url`` as the program named it (or the file's URL, for
    files a directory or glob gave), and either the Sector ``path`` of its data or the
    ``raw`` data itself."""

    url: str
    path: str | None = None
    raw: str | None = None

    @property
    def label(self) -> int | None:
        """Its partition, if it is a partition of a map-only job's results."""
        return label_of(self.path) if self.path else None


def url_of(path: str, master: str | None = None) -> str:
    """The URL of a Sector path (``sector:///path``, or with the cluster's address)."""
    return f"sector://{master or ''}{path}"


def to_path(url: str) -> str | None:
    """The Sector path a URL or path names; None for ``raw://``.

    Raises ``DiscoError`` for schemes that do not exist on Sector."""
    if url.startswith("raw://"):
        return None
    if url.startswith("/"):
        return url
    if url.startswith("sector://"):
        rest = url[len("sector://") :]
        i = rest.find("/")
        return rest[i:] if i >= 0 else "/"
    scheme = url.split("://", 1)[0] if "://" in url else ""
    raise DiscoError(
        f"input {url!r}: Sector reads Sector paths, sector:// URLs and raw:// data"
        + (f", not {scheme}://" if scheme else "")
        + " (copy the data in first: sector put)"
    )


def label_of(path: str) -> int | None:
    """The partition a map-only job's result file holds, else None."""
    m = _RESULT.match(path)
    if m is None or m.group(2) != "map":
        return None
    return int(m.group(3))


def job_of(url: str) -> str | None:
    """The name of the job whose directory holds ``url``, else None."""
    try:
        path = to_path(url)
    except DiscoError:
        return None
    m = _JOB.match(path or "")
    return m.group(1) if m else None


def resolve(c: Any, items: Any, master: str | None = None) -> list[Input]:
    """The inputs of a job, in order, from its ``input`` list (``c``: a sync client).

    Raises ``DataError`` naming an input that does not exist."""
    if isinstance(items, str | bytes):
        items = [items]
    out: list[Input] = []
    for item in items:
        if isinstance(item, bytes):
            item = item.decode()
        if isinstance(item, list | tuple):
            out.extend(_replicas(c, [str(u) for u in item], master))
        elif isinstance(item, str):
            out.extend(_one(c, item, master))
        else:
            raise DiscoError(f"an input is a URL or a list of replica URLs, not {item!r:.80}")
    return out


def _replicas(c: Any, urls: list[str], master: str | None) -> list[Input]:
    if not urls:
        raise DiscoError("an input's list of replicas is empty")
    errors = []
    for url in urls:
        try:
            return _one(c, url, master)
        except DataError as exc:
            errors.append(str(exc))
    raise DataError(f"no replica of this input can be read ({'; '.join(errors)})", urls)


def _one(c: Any, url: str, master: str | None) -> list[Input]:
    if url.startswith("raw://"):
        return [Input(url, raw=url[len("raw://") :])]
    path = to_path(url)
    assert path is not None
    if any(ch in path for ch in "*?["):
        found = _glob(c, path)
        if not found:
            raise DataError("no file matches this pattern", url)
        return [Input(url_of(p, master), path=p) for p in found]
    try:
        st = c.stat(path)
    except NotFound:
        raise DataError("no such file or directory", url) from None
    except SectorError as exc:
        raise DataError(str(exc), url) from None
    if st["type"] == "dir":
        return [Input(url_of(p, master), path=p) for p in _walk(c, st["path"])]
    return [Input(url, path=st["path"])]


def _walk(c: Any, path: str) -> list[str]:
    out: list[str] = []
    for e in sorted(c.ls(path), key=lambda e: e["name"]):
        if e["name"].startswith("."):
            continue
        if e["type"] == "dir":
            out += _walk(c, e["path"])
        elif not e["name"].endswith(".idx"):
            out.append(e["path"])
    return out


def _glob(c: Any, pattern: str) -> list[str]:
    parts = pattern.rstrip("/").split("/")
    fixed = []
    for p in parts[1:]:
        if any(ch in p for ch in "*?["):
            break
        fixed.append(p)
    base = "/" + "/".join(fixed)
    try:
        files = _walk(c, base)
    except NotFound:
        return []
    return [
        f
        for f in files
        if len(fp := f.split("/")) == len(parts)
        and all(fnmatch.fnmatchcase(n, p) for n, p in zip(fp, parts, strict=True))
    ]
