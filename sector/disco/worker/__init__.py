"""``disco.worker`` on Sector: ``Params``, the parameter object of classic jobs.

Disco's ``disco.worker`` also held the base ``Worker`` and its protocol with the
Erlang master; on Sector a task is a Sphere UDF and there is no such protocol, so
only what programs import is here (the classic worker is ``worker.classic.worker``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["Params"]


class Params:
    """A container of a job's parameters: ``Params(x=5, f=fun)`` gives every task
    ``params.x`` and ``params.f``. Each task gets its own copy (it may change it)."""

    def __init__(self, **kwargs: Any) -> None:
        self.__dict__.update(kwargs)

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in sorted(self.__dict__.items()))
        return f"Params({inner})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.__dict__ == self.__dict__

    __hash__ = None  # type: ignore[assignment]
