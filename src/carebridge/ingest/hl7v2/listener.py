"""Running the MLLP listener with the HTTP server.

The listener joins the ASGI application's lifespan: it starts in uvicorn's own event loop
once the application is up and stops before the application's shutdown closes the database.
One process, one event loop; the blocking database work of each message runs in the
listener's thread pool and commits through the group committer thread, so neither the HTTP
requests nor the MLLP connections wait on an fsync in the loop. No second loop or
process has to be coordinated, and a SIGTERM stops both in order.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette

from carebridge.ingest.hl7v2.committer import GroupCommitter
from carebridge.ingest.hl7v2.mllp import DEFAULT_MAX_FRAME, MllpServer
from carebridge.ingest.hl7v2.processor import Hl7Processor
from carebridge.ingest.hl7v2.store import MessageCipher, MessageStore
from carebridge.services.resources import ResourceService


@dataclass(frozen=True, slots=True)
class MllpSettings:
    port: int
    host: str = "127.0.0.1"
    max_frame_bytes: int = DEFAULT_MAX_FRAME
    idle_timeout: float = 300.0
    tls_cert: str | None = None  # PEM; with tls_key, connections must use TLS
    tls_key: str | None = None
    workers: int = 32  # connections served at once (each waits in a thread for its commit)


def ssl_context(cert: str, key: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


class Hl7Listener:
    """Processor + group committer + MLLP server, started and stopped together."""

    def __init__(self, service: ResourceService, settings: MllpSettings,
                 cipher: MessageCipher | None = None) -> None:
        self.settings = settings
        self.processor = Hl7Processor(service, MessageStore(service.repository, cipher))
        self.committer = GroupCommitter(self.processor)
        context = ssl_context(settings.tls_cert, settings.tls_key) if settings.tls_cert else None
        self.server = MllpServer(self.processor.handle_frame, settings.host, settings.port,
                                 max_frame_bytes=settings.max_frame_bytes,
                                 idle_timeout=settings.idle_timeout, ssl_context=context,
                                 workers=settings.workers)

    async def start(self) -> None:
        self.committer.start()
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop()
        self.committer.stop()


def attach_listener(asgi: Starlette, service: ResourceService, settings: MllpSettings,
                    cipher: MessageCipher | None = None) -> Hl7Listener:
    """Run an :class:`Hl7Listener` inside ``asgi``'s lifespan (see module doc)."""
    listener = Hl7Listener(service, settings, cipher)
    original: Callable[[Any], AbstractAsyncContextManager[Any]] = asgi.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[Any]:
        async with original(app) as state:
            await listener.start()
            try:
                yield state
            finally:
                await listener.stop()

    asgi.router.lifespan_context = lifespan
    return listener
