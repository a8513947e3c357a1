"""``disco.error`` on Sector: the errors Disco programs catch.

    SectorError (sector.errors)
    └── DiscoError            base of every Disco error (a bad job, an unknown job name)
        ├── JobError          a job failed or cannot be run: ``.job``, ``.message``
        │                     (a task's traceback is in the message and ``.traceback``)
        └── DataError         an input cannot be read: ``.msg``, ``.url``
            └── CommError     ... because the cluster could not be reached

They sit under ``sector.SectorError`` so a program that catches Sector's errors also
catches these; their constructors and ``str()`` are Disco's.
"""

from __future__ import annotations

from typing import Any

from sector.errors import SectorError

__all__ = ["CommError", "DataError", "DiscoError", "JobError"]


class DiscoError(SectorError):
    """The base class of all Disco errors."""

    def __init__(self, message: str = "", **data: Any) -> None:
        super().__init__(message, **data)


class JobError(DiscoError):
    """A job failed (or cannot be submitted): ``job`` (the ``Job``, or its name) and
    ``message``; ``traceback`` is the failing task's, when a task raised."""

    def __init__(self, job: Any, message: str, traceback: str | None = None) -> None:
        self.job = job
        self.traceback = traceback
        super().__init__(message)
        self.message = message

    @property
    def name(self) -> str:
        return str(getattr(self.job, "name", self.job))

    def __str__(self) -> str:
        return f"Job {self.name} failed: {self.message}"

    def __reduce__(self) -> Any:
        return (type(self), (self.name, self.message, self.traceback))


class DataError(DiscoError):
    """An input (``url``) could not be read."""

    def __init__(self, msg: str, url: Any, code: Any = None) -> None:
        self.msg = msg
        self.url = url
        self.code = code
        super().__init__(msg)

    def __str__(self) -> str:
        msg = self.msg if self.code is None else f"{self.msg} ({self.code})"
        return f"Unable to access resource ({self.url}): {msg}"

    def __reduce__(self) -> Any:
        return (type(self), (self.msg, self.url, self.code))


class CommError(DataError):
    """An input could not be read because the cluster could not be reached."""
