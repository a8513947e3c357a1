"""The Python client: ``AsyncClient`` (asyncio) and ``Client``/``connect`` (blocking)."""

from sector.client.aio import AsyncClient
from sector.client.sync import Client, connect

__all__ = ["AsyncClient", "Client", "connect"]
