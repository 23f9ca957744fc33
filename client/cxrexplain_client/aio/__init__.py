"""asyncio twin of the client: :class:`AsyncExplainClient` (httpx.AsyncClient and grpc.aio)."""

from .client import AsyncExplainClient

__all__ = ["AsyncExplainClient"]
