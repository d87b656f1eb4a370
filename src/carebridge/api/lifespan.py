"""Run more parts of a deployment inside an ASGI application's lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from starlette.applications import Starlette


def extend_lifespan(asgi: Starlette, start: Callable[[], Awaitable[None]],
                    stop: Callable[[], Awaitable[None]]) -> None:
    """``start`` once the application is up, ``stop`` before its own shutdown (which closes
    the database)."""
    original: Callable[[Any], AbstractAsyncContextManager[Any]] = asgi.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[Any]:
        async with original(app) as state:
            await start()
            try:
                yield state
            finally:
                await stop()

    asgi.router.lifespan_context = lifespan
