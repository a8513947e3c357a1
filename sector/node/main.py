"""The node process: ``sector node`` runs ``run_node`` in the foreground (kept apart
from the server so the CLI's imports stay light), with signals for a graceful leave
(SIGTERM, SIGINT) and stack dumps (SIGUSR1: threads, SIGUSR2: asyncio tasks)."""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import io
import logging
import os
import signal

from sector.config import NodeConfig
from sector.errors import SectorError
from sector.ids import to_hex
from sector.node.server import Node

log = logging.getLogger("sector.node")


def run_node(cfg: NodeConfig) -> int:
    """Run one node in the foreground until SIGTERM/SIGINT (graceful leave)."""
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # stacks on demand, for debugging
    logging.basicConfig(
        level=os.environ.get("SECTOR_LOG", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

    async def main() -> int:
        node = Node(cfg)
        try:
            await node.start()
        except (SectorError, OSError) as exc:
            log.error("cannot start node: %s", exc)
            with contextlib.suppress(Exception):
                await node.stop()
            print(f"sector: error: cannot start node: {exc}", flush=True)
            return 1
        web = f", web page and /metrics on {node.http_url}" if node.http_url else ""
        print(
            f"sector node {to_hex(node.state.me.id)[:8]} listening on {node.addr}{web}", flush=True
        )
        loop = asyncio.get_running_loop()
        leaving: set[asyncio.Task[None]] = set()  # a strong reference to the leave task

        def on_term() -> None:
            task = asyncio.ensure_future(node.leave())
            leaving.add(task)
            task.add_done_callback(leaving.discard)

        def dump_tasks() -> None:
            for task in asyncio.all_tasks():
                buf = io.StringIO()
                task.print_stack(file=buf)
                log.warning("task %s:\n%s", task.get_name(), buf.getvalue())

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_term)
        loop.add_signal_handler(signal.SIGUSR2, dump_tasks)
        await node.wait_stopped()
        return 0

    return asyncio.run(main())


__all__ = ["run_node"]
