"""A background thread that can be woken and stopped: the delivery queue and the monitoring
engine each run their loop in one."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod


class BackgroundWorker(ABC):
    """Subclasses implement :meth:`_run`, looping until ``self._stop`` is set and waiting on
    ``self._wake`` between passes."""

    thread_name = "worker"

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def wake(self, *_: object) -> None:
        self._wake.set()

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=self.thread_name,
                                            daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._wake.set()
            self._thread.join(timeout=30)
            self._thread = None

    @abstractmethod
    def _run(self) -> None:
        """The loop: passes until ``self._stop`` is set."""
