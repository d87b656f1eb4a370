"""Open alerts to clients as Server-Sent Events (https://html.spec.whatwg.org/#server-sent-events).

The stream starts with every open alert, then sends each new Flag version as it commits
(event ``alert``; ``id`` is ``Flag/{id}/_history/{version}``). Flags reach it through the
in-process event bus after the commit; listeners are asyncio queues fed thread-safely.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import orjson

from carebridge.events.bus import ResourceChanged
from carebridge.services.resources import ResourceService

Event = tuple[str, int, bytes]  # flag id, version, body


@dataclass(eq=False)
class _Listener:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Event]


class AlertStream:
    def __init__(self, service: ResourceService, *, heartbeat: float = 15.0) -> None:
        self.service = service
        self.heartbeat = heartbeat
        self._listeners: set[_Listener] = set()
        self._lock = threading.Lock()
        service.events.subscribe(self._on_events)

    def _on_events(self, events: Sequence[ResourceChanged]) -> None:
        flags = [e for e in events if e.resource_type == "Flag" and e.method != "DELETE"]
        with self._lock:
            listeners = list(self._listeners)
        if not flags or not listeners:
            return
        with self.service.repository.session() as session:
            found = [session.vread("Flag", e.resource_id, e.version) for e in flags]
        for version in found:
            if version is None or version.body is None:
                continue
            event = (version.id, version.version, version.body)
            for listener in listeners:
                listener.loop.call_soon_threadsafe(listener.queue.put_nowait, event)

    async def events(self, snapshot: list[bytes]) -> AsyncIterator[bytes]:
        """The SSE byte stream: the open alerts, then every alert change."""
        listener = _Listener(asyncio.get_running_loop(), asyncio.Queue())
        with self._lock:
            self._listeners.add(listener)
        try:
            yield b"retry: 2000\n\n"
            for body in snapshot:
                flag = orjson.loads(body)
                yield _frame(flag["id"], int(flag["meta"]["versionId"]), body)
            while True:
                try:
                    flag_id, version, body = await asyncio.wait_for(listener.queue.get(),
                                                                    self.heartbeat)
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                yield _frame(flag_id, version, body)
        finally:
            with self._lock:
                self._listeners.discard(listener)


def _frame(flag_id: str, version: int, body: bytes) -> bytes:
    compact = orjson.dumps(orjson.loads(body))  # one line: data fields end at a newline
    return (f"id: Flag/{flag_id}/_history/{version}\nevent: alert\n".encode()
            + b"data: " + compact + b"\n\n")
