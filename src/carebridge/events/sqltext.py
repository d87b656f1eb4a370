"""SQL for the event tables, written once with ``?`` marks and run on either dialect.

Statements that change rows end in ``RETURNING`` so that ``Session.query`` (which fetches)
works for them on both SQLite (3.35+) and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from carebridge.storage.base import Session


def run(session: Session, dialect: str, sql: str,
        params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    if dialect == "postgresql":
        sql = sql.replace("?", "%s")
    return session.query(sql, params)


def insert_many(session: Session, dialect: str, table: str, columns: Sequence[str],
                rows: Sequence[Sequence[Any]], chunk: int = 200) -> None:
    """Insert ``rows`` with multi-row VALUES statements (one round trip per ``chunk``)."""
    one = "(" + ", ".join("?" for _ in columns) + ")"
    for start in range(0, len(rows), chunk):
        part = rows[start:start + chunk]
        sql = (f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
               + ", ".join(one for _ in part) + " RETURNING 1")
        run(session, dialect, sql, [value for row in part for value in row])


def instant_text(moment: datetime) -> str:
    """Fixed-width UTC text: sorts as time in both databases' TEXT columns."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
