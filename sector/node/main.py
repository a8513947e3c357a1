"""Entry point used by ``sector node`` (kept apart so the CLI imports stay light)."""

from sector.node.server import run_node

__all__ = ["run_node"]
