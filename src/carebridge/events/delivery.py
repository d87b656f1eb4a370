"""Durable delivery queue: notifications decided at commit, delivered later, with retries.

Rows are added in the same transaction as the decision (:func:`enqueue`), so a queued
notification exists exactly when the write that caused it committed. :class:`DeliveryWorker`
takes due rows, sends them over HTTP, deletes them on a 2xx answer and otherwise reschedules
them with exponential back-off (1 s, 2 s, 4 s ... capped at 5 minutes); after ``max_attempts``
a row is kept with status ``failed`` for an operator to inspect. A row is deleted only after a
successful answer, so a crash mid-delivery repeats the call (at-least-once, as rest-hook
receivers must expect). Written by hand: the queue is three SQL statements on our own tables;
a broker would add a service to run for the embedded default.
"""

from __future__ import annotations

import logging
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

import orjson

from carebridge.events.sqltext import instant_text, run
from carebridge.events.worker import BackgroundWorker
from carebridge.storage.base import Repository, Session

log = logging.getLogger(__name__)

MAX_BACKOFF = timedelta(minutes=5)


def _text(moment: datetime) -> str:
    return instant_text(moment)


def enqueue(session: Session, dialect: str, channel: str, method: str, endpoint: str,
            headers: Sequence[str], content_type: str | None, payload: bytes | None,
            moment: datetime) -> None:
    run(session, dialect,
        "INSERT INTO delivery_queue (channel, method, endpoint, headers, content_type, payload,"
        " next_attempt) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING 1",
        (channel, method, endpoint, orjson.dumps(list(headers)).decode(), content_type, payload,
         _text(moment)))


def backoff(attempts: int) -> timedelta:
    return min(timedelta(seconds=2 ** max(0, attempts - 1)), MAX_BACKOFF)


class DeliveryWorker(BackgroundWorker):
    thread_name = "delivery"

    def __init__(self, repository: Repository, clock: Callable[[], datetime], *,
                 max_attempts: int = 12, timeout: float = 5.0, poll: float = 0.5) -> None:
        super().__init__()
        self.repository = repository
        self.clock = clock
        self.max_attempts = max_attempts
        self.timeout = timeout
        self.poll = poll

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                while self.deliver_due() and not self._stop.is_set():
                    pass
            except Exception:
                log.exception("delivery pass failed")
            self._wake.wait(self.poll)
            self._wake.clear()

    def deliver_due(self, limit: int = 50) -> int:
        """Try every due row once; returns how many were tried."""
        dialect = self.repository.dialect
        with self.repository.session() as session:
            rows = run(session, dialect,
                       "SELECT id, method, endpoint, headers, content_type, payload, attempts"
                       " FROM delivery_queue WHERE status = 'pending' AND next_attempt <= ?"
                       " ORDER BY id LIMIT ?", (_text(self.clock()), limit))
        for row_id, method, endpoint, headers, content_type, payload, attempts in rows:
            error = self._send(method, endpoint, orjson.loads(headers), content_type,
                               bytes(payload) if payload is not None else None)
            with self.repository.session(write=True) as session:
                if error is None:
                    run(session, dialect, "DELETE FROM delivery_queue WHERE id = ? RETURNING 1",
                        (row_id,))
                    continue
                tries = int(attempts) + 1
                status = "failed" if tries >= self.max_attempts else "pending"
                run(session, dialect,
                    "UPDATE delivery_queue SET attempts = ?, next_attempt = ?, last_error = ?,"
                    " status = ? WHERE id = ? RETURNING 1",
                    (tries, _text(self.clock() + backoff(tries)), error[:500], status, row_id))
        return len(rows)

    def _send(self, method: str, endpoint: str, headers: list[str], content_type: str | None,
              payload: bytes | None) -> str | None:
        request = urllib.request.Request(endpoint, data=payload, method=method)
        for line in headers:
            name, _, value = line.partition(":")
            request.add_header(name.strip(), value.strip())
        if content_type:
            request.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as reply:
                if 200 <= reply.status < 300:
                    return None
                return f"HTTP {reply.status}"
        except urllib.error.HTTPError as exc:
            return f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            return f"{type(exc).__name__}: {exc}"

    def pending(self) -> list[tuple[int, str, int, str]]:
        with self.repository.session() as session:
            rows = run(session, self.repository.dialect,
                       "SELECT id, status, attempts, endpoint FROM delivery_queue ORDER BY id")
        return [(int(r[0]), str(r[1]), int(r[2]), str(r[3])) for r in rows]
