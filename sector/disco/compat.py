"""``disco.compat`` on Sector: the Python 2/3 helpers Disco programs import.

Disco 0.5 ran on Python 2 and 3 and its programs imported these names to stay neutral;
on Sector only the Python 3 meanings exist. ``persistent_hash`` is Disco's md5 of the
key (as UTF-8 text), the hash behind ``default_partition``: stable across processes and
runs, unlike ``hash()``.
"""

from __future__ import annotations

import pickle
from hashlib import md5
from io import BytesIO, StringIO
from itertools import zip_longest
from typing import Any

__all__ = [
    "BytesIO",
    "StringIO",
    "UnpicklingError",
    "basestring",
    "bytes_of_int",
    "bytes_to_str",
    "force_ascii",
    "force_utf8",
    "int_of_byte",
    "integer_types",
    "persistent_hash",
    "pickle_dump",
    "pickle_dumps",
    "pickle_load",
    "pickle_loads",
    "str_to_bytes",
    "zip_longest",
]

basestring = str
integer_types = (int,)
pickle_loads, pickle_dumps = pickle.loads, pickle.dumps
pickle_load, pickle_dump = pickle.load, pickle.dump
UnpicklingError = pickle.UnpicklingError


def bytes_of_int(i: int) -> bytes:
    return bytes([i])


def int_of_byte(b: int) -> int:
    return b


def str_to_bytes(s: Any) -> Any:
    """``s`` as UTF-8 bytes (bytes pass through)."""
    if isinstance(s, bytes):
        return s
    return s.encode("utf-8")


def bytes_to_str(b: Any) -> Any:
    """``b`` decoded as UTF-8 (str passes through)."""
    if isinstance(b, str):
        return b
    return bytes(b).decode("utf-8")


def force_utf8(s: str) -> str:
    return s


def force_ascii(s: str) -> str:
    return s


def persistent_hash(key: Any) -> int:
    """Disco's key hash: md5 of the key's UTF-8 bytes, as an int.

    As in Disco, a key that is neither str nor bytes hashes as its ``str()``, so the
    int 7 and the string "7" fall in the same partition."""
    if not isinstance(key, bytes | str):
        key = str(key)
    return int.from_bytes(md5(str_to_bytes(key)).digest(), "big")
