"""Group commit: one thread takes the messages waiting from all connections and commits
them in one database transaction (see :mod:`carebridge.ingest.hl7v2.processor`).

No artificial delay: while one group commits, the next one gathers, so under load groups
grow to what the fsync rate requires and a lone message is committed at once.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections import defaultdict
from concurrent.futures import Future

from carebridge.ingest.hl7v2.processor import Hl7Processor, Item, Outcome

log = logging.getLogger(__name__)


# Where an outcome goes: a thread waiting on a concurrent future, or a coroutine awaiting an
# asyncio future of its event loop.
Waiter = Future[Outcome] | asyncio.Future[Outcome]


def _settle(waiters: list[tuple[asyncio.Future[Outcome], Outcome | BaseException]]) -> None:
    """On an event loop: hand a group's outcomes to the coroutines still waiting for them."""
    for waiter, result in waiters:
        if waiter.done():  # given up meanwhile (the connection closed, a timeout)
            continue
        if isinstance(result, BaseException):
            waiter.set_exception(result)
        else:
            waiter.set_result(result)


class GroupCommitter:
    def __init__(self, processor: Hl7Processor, *, max_group: int = 64) -> None:
        self.processor = processor
        self.max_group = max_group
        self._queue: queue.SimpleQueue[tuple[Item, Waiter] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="hl7v2-commit", daemon=True)
        self._stopping = False

    def start(self) -> GroupCommitter:
        self._thread.start()
        self.processor.submit = self.submit
        self.processor.enqueue = self.enqueue_async
        return self

    def submit(self, item: Item) -> Outcome:
        """Blocks until the item's group is committed (or failed) and returns its outcome."""
        return self.enqueue(item).result()

    def enqueue(self, item: Item) -> Future[Outcome]:
        """The item's outcome, once its group is committed (or failed), without waiting."""
        done: Future[Outcome] = Future()
        self._queue.put((item, done))
        return done

    def enqueue_async(self, item: Item) -> asyncio.Future[Outcome]:
        """:meth:`enqueue` for a coroutine (call it on its event loop). A group's outcomes
        reach each loop in one ``call_soon_threadsafe``, not one wake-up per message as
        ``asyncio.wrap_future`` of each concurrent future would make them."""
        done: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
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

    def _take(self, batch: list[tuple[Item, Waiter]]) -> list[Item]:
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

    def _commit(self, batch: list[tuple[Item, Waiter]]) -> None:
        try:
            # Messages that arrive while the group waits for the write turn may join it.
            outcomes = self.processor.commit_group([item for item, _ in batch],
                                                   more=lambda: self._take(batch))
        except BaseException as exc:  # the database failed: nobody gets an ACK
            log.exception("HL7 v2 group commit failed")
            self._deliver([(done, exc) for _, done in batch])
            return
        self._deliver([(done, outcome) for (_, done), outcome in zip(batch, outcomes,
                                                                      strict=True)])

    @staticmethod
    def _deliver(results: list[tuple[Waiter, Outcome | BaseException]]) -> None:
        loops: dict[asyncio.AbstractEventLoop,
                    list[tuple[asyncio.Future[Outcome], Outcome | BaseException]]]
        loops = defaultdict(list)
        for done, result in results:
            if isinstance(done, asyncio.Future):
                loops[done.get_loop()].append((done, result))
            elif isinstance(result, BaseException):
                done.set_exception(result)
            else:
                done.set_result(result)
        for loop, waiters in loops.items():
            try:
                loop.call_soon_threadsafe(_settle, waiters)
            except RuntimeError:  # the loop has closed: nobody is waiting any more
                log.warning("HL7 v2 outcomes for %d message(s) after their event loop closed",
                            len(waiters))
