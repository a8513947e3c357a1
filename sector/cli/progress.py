"""Transfer progress bars for put/get: rich, on stderr, only where a person is watching.

A bar appears only when stderr is a terminal and the file is larger than
:data:`MIN_BAR_BYTES`; below that a transfer is over before a bar is readable, and
in scripts the bars would only litter logs. A transfer of many files (``-r``, several
sources) shows one bar instead, counting files (:meth:`Transfers.files`), and its
per-file errors are printed above it (:meth:`Transfers.note`). The client may call a progress callback
from its I/O thread; rich's ``Progress`` takes a lock around updates, so that is safe.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import TracebackType
from typing import Any

MIN_BAR_BYTES = 4 << 20

ProgressFn = Callable[[int, int], None]


class Transfers:
    """Context manager handing out one progress callback per file."""

    def __init__(self, enabled: bool | None = None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._progress: Any = None  # rich.progress.Progress, created on first big file

    def __enter__(self) -> Transfers:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def files(self, verb: str, total: int) -> Callable[[int], None]:
        """A bar counting ``total`` files (when shown at all); call the returned
        function with each file's size as it finishes."""
        if not self.enabled or total < 2:
            return lambda size: None
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = bars = Progress(
            TextColumn("{task.description}", style="bold"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("files, {task.fields[bytes]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        bars.start()
        task = bars.add_task(verb, total=total, bytes="0 B")
        done = [0]

        def advance(size: int) -> None:
            from sector.cli.output import fmt_bytes

            done[0] += size
            bars.update(task, advance=1, bytes=fmt_bytes(done[0]))

        return advance

    def note(self, line: str) -> None:
        """One line on stderr, above the bars while they are shown."""
        if self._progress is not None:
            self._progress.console.print(line, markup=False, highlight=False)
        else:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()

    def callback(self, label: str) -> ProgressFn | None:
        """A ``progress(done, total)`` for one file, or None when no bar will be shown.

        The total is learnt from the first call (a download does not know it before),
        so the bar is created lazily and only if the file turns out to be big. Its
        ``note(text)`` says how the transfer runs ("4 streams, 3 holders"), shown
        beside the rate.
        """
        if not self.enabled:
            return None
        return _Bar(self, label)

    def _bars(self) -> Any:
        if self._progress is None:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}", style="bold"),
                BarColumn(),
                DownloadColumn(binary_units=True),
                TransferSpeedColumn(),
                TextColumn("{task.fields[via]}"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            self._progress.start()
        return self._progress


class _Bar:
    """One file's bar: ``progress(done, total)``, and ``note`` of its streams/holders."""

    def __init__(self, owner: Transfers, label: str) -> None:
        self.owner, self.label = owner, label
        self.task: Any = None  # the rich task id, once created
        self.via = ""

    def note(self, text: str) -> None:
        self.via = text
        if self.task is not None:
            self.owner._bars().update(self.task, via=text)

    def __call__(self, done: int, total: int) -> None:
        if self.task is None:
            if total <= MIN_BAR_BYTES:
                return
            self.task = self.owner._bars().add_task(self.label, total=total, via=self.via)
        self.owner._bars().update(self.task, completed=done, total=total)
