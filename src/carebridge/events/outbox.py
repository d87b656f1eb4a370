"""Transactional outbox: every stored version is also recorded in ``event_outbox`` inside
the same database transaction, so a trigger (alert rule, NEWS2, Subscription) can never miss
a committed write, even when the process dies right after the commit.

:class:`OutboxRepository` wraps any :class:`~carebridge.storage.base.Repository`: its write
sessions add the outbox rows whenever versions are written. Consumers claim rows with
:func:`claim` inside their own write transaction and the claimed rows disappear only when
that transaction commits (PostgreSQL: ``FOR UPDATE SKIP LOCKED``, so several workers share
the queue; SQLite: the single writer lock). Claiming deletes rather than moving a cursor, so
PostgreSQL's out-of-order identity values (a lower id committing later) cannot be skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from carebridge.events.bus import ResourceChanged
from carebridge.events.sqltext import insert_many, run
from carebridge.storage.base import (
    HistoryPage,
    HistoryQuery,
    Session,
    StoredVersion,
    Write,
)
from carebridge.storage.wrapper import RepositoryWrapper

_COLUMNS = ("resource_type", "resource_id", "version", "method")


class OutboxSession:
    """A session that records each written version in the outbox as it stores it."""

    def __init__(self, inner: Session, dialect: str) -> None:
        self.inner = inner
        self.dialect = dialect

    def write(self, writes: Sequence[Write]) -> None:
        self.inner.write(writes)
        rows = [(w.version.resource_type, w.version.id, w.version.version, w.version.method)
                for w in writes]
        insert_many(self.inner, self.dialect, "event_outbox", _COLUMNS, rows)

    def read(self, resource_type: str, resource_id: str) -> StoredVersion | None:
        return self.inner.read(resource_type, resource_id)

    def read_many(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], StoredVersion]:
        return self.inner.read_many(keys)

    def vread(self, resource_type: str, resource_id: str, version: int) -> StoredVersion | None:
        return self.inner.vread(resource_type, resource_id, version)

    def history(self, query: HistoryQuery) -> HistoryPage:
        return self.inner.history(query)

    def count_current(self, resource_type: str | None = None) -> dict[str, int]:
        return self.inner.count_current(resource_type)

    def query(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        return self.inner.query(sql, params)

    def lock(self, key: str) -> None:
        self.inner.lock(key)


class OutboxRepository(RepositoryWrapper):
    """A repository whose writes also fill the outbox (see the module docstring)."""

    def wrap(self, session: Session, write: bool) -> Session:
        return OutboxSession(session, self.inner.dialect) if write else session


def claim(session: Session, dialect: str, limit: int) -> list[ResourceChanged]:
    """Take up to ``limit`` outbox rows, oldest first; they are gone once ``session`` commits
    (and back if it rolls back)."""
    skip = " FOR UPDATE SKIP LOCKED" if dialect == "postgresql" else ""
    rows = run(session, dialect,
               "DELETE FROM event_outbox WHERE id IN (SELECT id FROM event_outbox ORDER BY id"
               f" LIMIT ?{skip}) RETURNING id, resource_type, resource_id, version, method",
               (limit,))
    rows.sort(key=lambda row: int(row[0]))
    return [ResourceChanged(row[1], row[2], int(row[3]), row[4]) for row in rows]


def pending(session: Session, dialect: str) -> int:
    return int(run(session, dialect, "SELECT count(*) FROM event_outbox")[0][0])
