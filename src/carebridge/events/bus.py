"""The event bus: what changed, told to subscribers after the database commit.

The in-process bus is the embedded default. Cross-process fan-out (Redis, NATS) and durable
delivery queues plug in behind the same :class:`EventBus` protocol.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ResourceChanged:
    resource_type: str
    resource_id: str
    version: int
    method: str  # POST, PUT, PATCH, DELETE


Subscriber = Callable[[Sequence[ResourceChanged]], None]


class EventBus(Protocol):
    def publish(self, events: Sequence[ResourceChanged]) -> None: ...

    def subscribe(self, subscriber: Subscriber) -> None: ...


class InProcessEventBus:
    """Calls subscribers synchronously; a failing subscriber is logged, never the writer's
    problem (the write has already committed)."""

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []
        self._lock = threading.Lock()

    def subscribe(self, subscriber: Subscriber) -> None:
        with self._lock:
            self._subscribers.append(subscriber)

    def publish(self, events: Sequence[ResourceChanged]) -> None:
        if not events:
            return
        for subscriber in list(self._subscribers):
            try:
                subscriber(events)
            except Exception:
                log.exception("event subscriber %r failed", subscriber)
