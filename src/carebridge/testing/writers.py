"""A write session held open by another thread, for tests of what waits for a writer."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from carebridge.storage import Repository


@contextmanager
def write_session_elsewhere(repository: Repository, *,
                            release_after: float | None = None) -> Iterator[None]:
    """Hold a write session of ``repository`` in another thread until the block ends (or,
    with ``release_after``, that many seconds after it began)."""
    holding, release = threading.Event(), threading.Event()

    def writer() -> None:
        with repository.session(write=True):
            holding.set()
            release.wait(30)

    thread = threading.Thread(target=writer, name="test-writer", daemon=True)
    thread.start()
    if not holding.wait(30):
        raise TimeoutError("the other writer never got its write session")
    timer = threading.Timer(release_after, release.set) if release_after is not None else None
    if timer is not None:
        timer.start()
    try:
        yield
    finally:
        release.set()
        if timer is not None:
            timer.cancel()
        thread.join(30)
