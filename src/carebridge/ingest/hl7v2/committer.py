"""Group commit: one thread takes the messages waiting from all connections and commits
them in one database transaction (see :mod:`carebridge.ingest.hl7v2.processor`).

No artificial delay: while one group commits, the next one gathers, so under load groups
grow to what the fsync rate requires and a lone message is committed at once.
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future

from carebridge.ingest.hl7v2.processor import Hl7Processor, Item, Outcome

log = logging.getLogger(__name__)


class GroupCommitter:
    def __init__(self, processor: Hl7Processor, *, max_group: int = 64) -> None:
        self.processor = processor
        self.max_group = max_group
        self._queue: queue.SimpleQueue[tuple[Item, Future[Outcome]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="hl7v2-commit", daemon=True)
        self._stopping = False

    def start(self) -> GroupCommitter:
        self._thread.start()
        self.processor.submit = self.submit
        self.processor.enqueue = self.enqueue
        return self

    def submit(self, item: Item) -> Outcome:
        """Blocks until the item's group is committed (or failed) and returns its outcome."""
        return self.enqueue(item).result()

    def enqueue(self, item: Item) -> Future[Outcome]:
        """The item's outcome, once its group is committed (or failed), without waiting."""
        done: Future[Outcome] = Future()
        self._queue.put((item, done))
        return done

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stopping:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            self._take(batch)
            self._commit(batch)

    def _take(self, batch: list[tuple[Item, Future[Outcome]]]) -> list[Item]:
        """Move what is queued into ``batch`` (up to ``max_group``); the items moved."""
        taken: list[Item] = []
        while len(batch) < self.max_group and not self._stopping:
            try:
                more = self._queue.get_nowait()
            except queue.Empty:
                break
            if more is None:
                self._stopping = True  # after this group
                break
            batch.append(more)
            taken.append(more[0])
        return taken

    def _commit(self, batch: list[tuple[Item, Future[Outcome]]]) -> None:
        try:
            # Messages that arrive while the group waits for the write turn may join it.
            outcomes = self.processor.commit_group([item for item, _ in batch],
                                                   more=lambda: self._take(batch))
        except BaseException as exc:  # the database failed: nobody gets an ACK
            log.exception("HL7 v2 group commit failed")
            for _, done in batch:
                done.set_exception(exc)
            return
        for (_, done), outcome in zip(batch, outcomes, strict=True):
            done.set_result(outcome)
