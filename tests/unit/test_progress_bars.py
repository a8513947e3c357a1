"""Transfer bars (``cli/progress.py``): a bar says how its transfer runs, streams and
holders (issue 15), beside the rate; small files get no bar."""

from __future__ import annotations

from sector.cli.progress import MIN_BAR_BYTES, Transfers
from sector.client import fetch


def test_a_bar_shows_the_streams_and_holders_it_was_told() -> None:
    with Transfers(enabled=True) as bars:
        cb = bars.callback("/big")
        assert cb is not None
        fetch.tell(cb, 3, 3)  # as the client does, before the first byte: kept
        cb(1 << 20, MIN_BAR_BYTES * 4)
        task = bars._progress.tasks[0]
        assert task.fields["via"] == "3 streams, 3 holders"
        fetch.tell(cb, 1, 1)
        assert task.fields["via"] == "1 stream, 1 holder"
        small = bars.callback("/small")
        assert small is not None
        small(10, 100)
        assert len(bars._progress.tasks) == 1


def test_no_bars_where_nobody_watches() -> None:
    with Transfers(enabled=False) as bars:
        assert bars.callback("/big") is None
